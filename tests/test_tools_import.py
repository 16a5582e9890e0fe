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


def test_profile_times_an_asynchronous_op_to_its_end_event(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS_DIR))
    profile_step = importlib.import_module("tools.profile_step")

    def event(name, ts, dur):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur}

    # Microseconds over two traced steps: a convolution launched in 100 us that ends 13 ms later
    # in each, a fusion that runs where its event says, and host events that are not ops.
    events = [
        event("convolution.3", 0, 100), event("end: convolution.3", 13_000, 10),
        event("multiply_fusion", 13_020, 2_000),
        event("convolution.3", 50_000, 100), event("end: convolution.3", 61_990, 10),
        event("multiply_fusion", 62_000, 1_000),
        event("ThunkExecutor::Execute", 0, 70_000), event("PjitFunction(step)", 0, 70_000),
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2},
    ]
    times = profile_step.op_durations(events, steps=2)
    assert times == pytest.approx({"convolution.3": (13.01 + 12.0) / 2, "multiply_fusion": 1.5})
