"""PyTorch `.pth` state dicts read without torch, through a restricted unpickler.

A `torch.save` file (PyTorch >= 1.6) is a zip: `<archive>/data.pkl` holds the pickled object, and
each tensor's storage is a raw little-endian file `<archive>/data/<key>` that the pickle names by
a persistent id `("storage", storage_type, key, location, numel)`.

A pickle can name any importable callable and call it (`os.system`, `builtins.eval`, ...). This
reader admits only what a state dict needs, each replaced by a NumPy stand-in:
`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and `_rebuild_parameter`, and the
typed storage classes (`torch.FloatStorage`, ...). Any other global is refused before anything is
called, with an error naming it.
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import zipfile

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the state-dict allow-list."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for a `torch.<Type>Storage` class: only its element type matters."""

    def __init__(self, name: str):
        if name == "BFloat16Storage":
            import ml_dtypes  # a dependency of jax

            self.dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> np.ndarray:
    """A tensor as a NumPy array: `size` elements at `stride`, from `storage_offset`."""
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[storage_offset])
    needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if min(size) > 0 and needed > storage.size:
        raise pickle.UnpicklingError(f"tensor of size {size}, stride {stride} at offset "
                                     f"{storage_offset} overruns its storage of {storage.size}")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride])
    return np.array(view)  # own the memory: the storage may be shared by other tensors


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        # Protocol 2 (torch.save's) writes some modules under their Python 2 names
        # (__builtin__, commands): name the Python 3 ones, as a plain unpickler would import.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and (name in _STORAGE_DTYPES or name == "BFloat16Storage"):
            return _StorageType(name)
        raise UnsafePickleError(
            f"{self.path}: refused global {module}.{name}; a state dict needs only "
            "collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter and "
            "torch.<Type>Storage")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"{self.path}: refused persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            storage = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
            if storage.size < numel:
                raise pickle.UnpicklingError(f"{self.path}: storage {key} holds {storage.size} "
                                             f"elements, the pickle announces {numel}")
            self.storages[key] = storage.astype(storage_type.dtype)
        return self.storages[key]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state dict as NumPy arrays, without importing torch.

    Args:
      path: a `.pth` / `.pt` file written by `torch.save(model.state_dict(), path)`.

    Returns:
      {key: array} in the file's order (a leading DataParallel `module.` is kept as saved).

    Raises:
      FileNotFoundError: `path` does not exist.
      UnsafePickleError: the pickle names a global outside the allow-list (nothing it names has
        been called), or a storage of unknown form.
      ValueError: not a zip-format torch file, big-endian storages, or not a dict of tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a zip-format torch file (PyTorch < 1.6 wrote another "
                         "format; load and save it again with a newer PyTorch)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <archive>/data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode().strip()
            if order != "little":
                raise ValueError(f"{path}: storages are {order}-endian; only little is supported")
        with archive.open(pickles[0]) as file:
            state = _StateDictUnpickler(file, archive, prefix, path).load()
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got "
                         f"{type(state).__name__}")
    return dict(state)
