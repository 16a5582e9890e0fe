"""Pretrained face recognizers in and out of the package's backbone contract.

- `onnx_graph`: reads an ONNX file into a static description (nodes, constants), dequantizing
  `DequantizeLinear` weights and folding every constant-only node at import.
- `onnx_ops`: the ONNX operators as functions of arrays (NumPy for constants, JAX when traced).
- `onnx_import`: `import_onnx(path)`, an `nnx.Module` that runs the graph's nodes in order.
- `torch_state`: arcface_torch `.pth` state dicts read without torch, onto `IResNet`.
"""
