"""The input gradient of the IResNets' stride-2 convolutions: lax's autodiff, cure_jax's
sub-pixel phases (`cure_jax.models.strided_conv`) and PyTorch's, layer by layer.

    python tools/bench_strided_conv.py [--rounds 5] [--no-torch]

Layers: the four stride-2 3 x 3 convolutions (and 1 x 1 shortcuts) of the default model
(IResNet-18 width 0.25, 64 px, batch 64) and of IResNet-50 at 112 px (batch 32, the CURE step
of 16 + 16). Each round times every implementation once per layer, in turn; the table gives
the median over the rounds in ms and the largest difference of ours from lax's, relative to
lax's largest value. PyTorch (optional, `pip install -e ".[torch]"`) runs
`aten.convolution_backward` for the input only, channels-last, on its default threads, with
OMP_WAIT_POLICY=PASSIVE unless the environment sets it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# Before PyTorch starts its OpenMP runtime: its threads spin after each operator by default and
# would take the cores from the XLA call timed next (a 7.6 ms gradient measured 20 ms so).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import cure_jax  # noqa: E402, F401  (sets XLA flags before the backend starts)
from cure_jax.models import strided_conv  # noqa: E402

# (label, batch, input side, input channels, output channels, kernel side)
LAYERS = (
    ("default, stage 1", 64, 64, 16, 16, 3),
    ("default, stage 2", 64, 32, 16, 32, 3),
    ("default, stage 3", 64, 16, 32, 64, 3),
    ("default, stage 4", 64, 8, 64, 128, 3),
    ("default, stage 1 shortcut", 64, 64, 16, 16, 1),
    ("IResNet-50 112 px, stage 1", 32, 112, 64, 64, 3),
    ("IResNet-50 112 px, stage 2", 32, 56, 64, 128, 3),
    ("IResNet-50 112 px, stage 3", 32, 28, 128, 256, 3),
    ("IResNet-50 112 px, stage 4", 32, 14, 256, 512, 3),
    ("IResNet-50 112 px, stage 1 shortcut", 32, 112, 64, 64, 1),
)


def _input_gradient_fn(conv, size):
    padding = ((1, 1), (1, 1)) if size == 3 else ((0, 0), (0, 0))

    def input_gradient(x, kernel, g):
        forward = lambda x: conv(x, kernel, (2, 2), padding,  # noqa: E731
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.vjp(forward, x)[1](g)[0]

    return jax.jit(input_gradient)


def _timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return 1000 * (time.perf_counter() - start)


def time_layer(batch, side, cin, cout, size, rounds, torch=None) -> tuple[dict, float]:
    """({implementation: median ms}, largest difference of ours from lax's, relative)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), jnp.float32)
    kernel = jnp.asarray(0.05 * rng.standard_normal((size, size, cin, cout)), jnp.float32)
    half = -(-side // 2)
    g = jnp.asarray(rng.standard_normal((batch, half, half, cout)), jnp.float32)
    lax_fn = _input_gradient_fn(jax.lax.conv_general_dilated, size)
    ours_fn = _input_gradient_fn(strided_conv.conv_general_dilated, size)
    expected, got = lax_fn(x, kernel, g), ours_fn(x, kernel, g)  # compiles both
    difference = float(jnp.max(jnp.abs(got - expected)) / jnp.max(jnp.abs(expected)))
    runs = {"lax": lambda: lax_fn(x, kernel, g), "ours": lambda: ours_fn(x, kernel, g)}
    if torch is not None:
        tx, tg = (torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)
                  .contiguous(memory_format=torch.channels_last) for a in (x, g))
        tw = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1).contiguous()
        pad = (size // 2, size // 2)
        runs["torch"] = lambda: torch.ops.aten.convolution_backward(
            tg, tx, tw, None, (2, 2), pad, (1, 1), False, (0, 0), 1, (True, False, False))[0]
        runs["torch"]()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(_timed(run))
    return {name: statistics.median(values) for name, values in times.items()}, difference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: its column is left out")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else "")
          + f"; median of {args.rounds} rounds, ms\n")
    print("| layer | input | lax ms | ours ms | lax / ours | torch ms | ours / torch "
          "| max difference |")
    print("|---|---|---|---|---|---|---|---|")
    for label, batch, side, cin, cout, size in LAYERS:
        ms, difference = time_layer(batch, side, cin, cout, size, args.rounds, torch)
        torch_cells = (f"{ms['torch']:.1f} | {ms['ours'] / ms['torch']:.2f}x" if torch
                       else "- | -")
        print(f"| {label} | {batch}x{side}x{side}x{cin}, {size}x{size} to {cout} "
              f"| {ms['lax']:.1f} | {ms['ours']:.1f} | {ms['lax'] / ms['ours']:.2f}x "
              f"| {torch_cells} | {difference:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
