"""Reading `.pth` state dicts without torch: the restricted unpickler and the IResNet mapping."""

import builtins
import collections
import io
import os
import pickle
import subprocess
import sys
import types
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cure_jax.models.convert.torch_pickle import UnsafePickleError, load_state_dict
from cure_jax.models.convert.torch_state import (
    infer_iresnet_config,
    iresnet_from_state_dict,
    iresnet_state_dict,
)
from cure_jax.models.iresnet import IResNet


def write_pth(path, pickle_bytes: bytes, storages: dict[str, bytes] = ()) -> str:
    """A zip laid out as torch.save writes it."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        for key, raw in dict(storages).items():
            archive.writestr(f"archive/data/{key}", raw)
    return str(path)


class _Payload:
    """Pickles as a call of `function(*args)`, as a crafted checkpoint would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _marker_code(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


@pytest.mark.parametrize("function, args, refused", [
    (os.system, ("touch {marker}",), f"{os.system.__module__}.system"),
    (builtins.exec, ("{code}",), "builtins.exec"),
    (builtins.eval, ("{code}",), "builtins.eval"),
    (subprocess.call, (["touch", "{marker}"],), "subprocess.call"),
])
def test_code_running_pickles_are_refused_and_run_nothing(tmp_path, function, args, refused):
    marker = tmp_path / "marker"

    def fill(arg):
        if isinstance(arg, list):
            return [fill(a) for a in arg]
        return arg.format(marker=marker, code=_marker_code(marker))

    payload = {"conv1.weight": _Payload(function, *[fill(a) for a in args])}
    path = write_pth(tmp_path / "evil.pth", pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafePickleError, match=rf"refused global {refused}"):
        load_state_dict(path)
    assert not marker.exists()


def test_the_refused_payload_is_live(tmp_path):
    """The same kind of file, read by a plain unpickler, does run its code: the test above would
    notice if the restricted reader let it through."""
    marker = tmp_path / "marker"
    payload = pickle.dumps({"w": _Payload(builtins.exec, _marker_code(marker))}, protocol=2)
    with zipfile.ZipFile(write_pth(tmp_path / "evil.pth", payload)) as archive:
        pickle.loads(archive.read("archive/data.pkl"))
    assert marker.read_text() == "ran"


def _state_dict_pickle(tensors: dict[str, tuple[str, int, tuple, tuple]]) -> bytes:
    """Pickle bytes of an OrderedDict of `torch._utils._rebuild_tensor_v2` calls on float32
    storages, as torch.save writes them, made without torch: stand-in modules named `torch` and
    `torch._utils` sit in sys.modules while pickling (pickle records names, not code)."""
    fake_torch = types.ModuleType("torch")
    fake_utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    fake_torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

    class Tensor:
        def __init__(self, key, offset, size, stride):
            storage = ("storage", fake_torch.FloatStorage, key, "cpu", 64)
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj and obj[0] == "storage" else None

    buffer = io.BytesIO()
    state = collections.OrderedDict((name, Tensor(*spec)) for name, spec in tensors.items())
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch", fake_torch)
        patch.setitem(sys.modules, "torch._utils", fake_utils)
        Pickler(buffer, protocol=2).dump(state)
    return buffer.getvalue()


def test_reads_tensors_with_offsets_and_strides(tmp_path):
    storage = np.arange(64, dtype=np.float32)
    data = _state_dict_pickle({"a": ("0", 0, (2, 3), (3, 1)),
                               "b_transposed": ("0", 4, (3, 2), (1, 3)),
                               "scalar": ("0", 7, (), ())})
    state = load_state_dict(write_pth(tmp_path / "ok.pth", data, {"0": storage.tobytes()}))
    np.testing.assert_array_equal(state["a"], storage[:6].reshape(2, 3))
    np.testing.assert_array_equal(state["b_transposed"], storage[4:10].reshape(2, 3).T)
    assert state["scalar"] == 7 and state["a"].dtype == np.float32


def test_not_a_zip_is_a_clear_error(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a zip-format torch file"):
        load_state_dict(path)


def random_iresnet(depth="r18", *, seed=0, **kwargs) -> IResNet:
    """An IResNet with random NumPy values in every variable (BN variances positive). Built
    abstractly and filled: eager initialisation compiles one XLA program per shape, slow here."""
    model = nnx.eval_shape(lambda: IResNet(depth, rngs=nnx.Rngs(0), **kwargs))
    rng = np.random.default_rng(seed)
    for _, variable in nnx.to_flat_state(nnx.state(model)):
        variable.set_value(jnp.asarray(rng.normal(0, 0.1, variable.shape), jnp.float32))
    for module in (model.stem_bn, model.final_bn, model.features,
                   *[bn for b in model.blocks for bn in (b.bn1, b.bn2, b.bn3, b.down_bn) if bn]):
        module.var.set_value(jnp.asarray(rng.uniform(0.5, 1.5, module.var.shape), jnp.float32))
    return model


def small_model(**kwargs) -> IResNet:
    return random_iresnet(**{**dict(width=0.125, input_size=32, embedding_dim=8), **kwargs})


def test_state_dict_round_trip_and_inferred_settings():
    model = small_model()
    state = iresnet_state_dict(model)
    assert list(state)[:5] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                               "bn1.running_var"]
    assert state["conv1.weight"].shape == (8, 3, 3, 3)  # OIHW
    assert state["layer2.0.downsample.0.weight"].shape == (16, 8, 1, 1)
    assert state["fc.weight"].shape == (8, 64 * 2 * 2)
    assert infer_iresnet_config(state) == {"depth": "r18", "width": 0.125, "input_size": 32,
                                           "embedding_dim": 8}
    back = iresnet_state_dict(iresnet_from_state_dict(state))
    assert list(back) == list(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key], err_msg=key)


def test_fc_rows_follow_pytorch_flatten_order():
    """Column c*H*W + h*W + w of fc.weight must meet channel c at (h, w) of our NHWC map."""
    state = iresnet_state_dict(small_model())
    fc = np.zeros_like(state["fc.weight"])
    c, h, w = 5, 1, 0
    fc[3, c * 4 + h * 2 + w] = 1.0
    model = iresnet_from_state_dict({**state, "fc.weight": fc})
    kernel = np.asarray(model.fc.kernel[...]).reshape(2, 2, 64, 8)  # (h, w, c, out)
    assert kernel[h, w, c, 3] == 1.0 and kernel.sum() == 1.0


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"layer1.0.extra.weight": np.ones(3, np.float32)}),
     r"unknown keys \['layer1.0.extra.weight'\]"),
    (lambda s: s.pop("layer3.1.bn2.running_var"), r"missing keys \['layer3.1.bn2.running_var'\]"),
    (lambda s: s.update({"layer1.1.prelu.weight": np.ones(5, np.float32)}),
     r"layer1.1.prelu.weight: shape \(5,\)"),
    (lambda s: s.update({"features.weight": np.full(8, 2.0, np.float32)}),
     "features.weight is not all ones"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("layer4.1.")],
     r"blocks per stage \(2, 2, 2, 1\) match no IResNet depth"),
])
def test_bad_state_dicts_name_the_key(change, message):
    state = iresnet_state_dict(small_model())
    change(state)
    with pytest.raises(ValueError, match=message):
        iresnet_from_state_dict(state)


def test_dataparallel_prefix_is_removed():
    state = iresnet_state_dict(small_model())
    model = iresnet_from_state_dict({f"module.{k}": v for k, v in state.items()})
    np.testing.assert_array_equal(iresnet_state_dict(model)["conv1.weight"],
                                  state["conv1.weight"])
