"""Every script in tools/ imports: a name the package no longer has fails here, not when a
user runs the script. Optional frameworks a script needs (torch, faiss, ...) may be absent."""

import importlib
import pathlib

import pytest

TOOLS_DIR = pathlib.Path(__file__).resolve().parents[1] / "tools"
TOOLS = sorted(p.stem for p in TOOLS_DIR.glob("*.py"))
OPTIONAL = {"torch", "faiss", "onnxruntime", "cv2", "onnx", "tensorflow", "tensorflow_datasets"}


@pytest.mark.parametrize("name", TOOLS)
def test_the_tool_imports(name, monkeypatch):
    # Scripts import their siblings by bare name, as `python tools/x.py` puts tools/ on the path.
    monkeypatch.syspath_prepend(str(TOOLS_DIR))
    try:
        importlib.import_module(f"tools.{name}")
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"tools/{name}.py needs {error.name}, an optional extra")
