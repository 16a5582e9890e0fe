"""Pretrained face recognizers in and out of the package's backbone contract.

- `onnx_graph`: reads an ONNX file into a static description (nodes, constants), dequantizing
  `DequantizeLinear` weights and folding every constant-only node at import.
- `onnx_ops`: the ONNX operators as functions of arrays (NumPy for constants, JAX when traced).
- `onnx_nhwc`: channels-last execution of the image ops (XLA's fast layout).
- `onnx_import`: `import_onnx(path)`, an `nnx.Module` that runs the graph's nodes in order.
- `torch_pickle`: `.pth` state dicts read without torch, through a restricted unpickler.
- `torch_state`: arcface_torch IResNet state dicts onto `IResNet` and back.

The way back out (ONNX, `.pth`) is `cure_jax.export`.
"""
