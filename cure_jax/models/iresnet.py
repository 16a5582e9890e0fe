"""IResNet backbones (insightface arcface_torch `iresnet.py`) in Flax NNX.

Structure, as in arcface_torch: stem conv3x3(64, stride 1, no bias), BN, PReLU; four stages of
64, 128, 256, 512 channels (times `width`), each opening with stride 2; pre-activation-style block
BN, conv3x3, BN, PReLU, conv3x3(stride), BN, added to the shortcut (conv1x1 + BN when the shape
changes) with no activation after the sum; head BN, dropout, flatten, dense to the embedding, BN
with its scale fixed at 1. Images are NHWC in [-1, 1].

With `dtype=jnp.bfloat16` (mixed precision, for GPUs and TPUs) the convolutions, the dense layer,
the batch norms' outputs and the PReLUs compute in bfloat16; the parameters, the batch-norm
statistics (reduced in float32) and the returned embeddings stay float32. `dtype=None` is plain
float32.

Train / eval behaviour (batch statistics vs running averages, dropout) is a static attribute of the
modules: `nnx.view(model, use_running_average=True, deterministic=True)` gives the eval view that
shares the same arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cure_jax.models import strided_conv
from cure_jax.models.channel_ops import BatchNorm, broadcast_channels

DEPTHS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)
INPUT_SIZES = (32, 64, 112)  # 32 is for tests only; 112 is the insightface standard

CONV_INIT_STDDEV = 0.1  # arcface_torch: nn.init.normal_(conv.weight, 0, 0.1)
_conv_init = nnx.initializers.normal(CONV_INIT_STDDEV)
_PAD1 = ((1, 1), (1, 1))  # explicit, to match PyTorch's padding=1 for stride-2 convolutions too


def _bn(features: int, rngs: nnx.Rngs, *, use_scale: bool = True,
        dtype: jnp.dtype | None = None) -> BatchNorm:
    # PyTorch momentum 0.1 is Flax momentum 0.9; arcface_torch uses eps 1e-5. BatchNorm is
    # nnx.BatchNorm with its per-channel sums as matrix products (no XLA:CPU reduce-window loops).
    return BatchNorm(features, momentum=0.9, epsilon=1e-5, use_scale=use_scale, dtype=dtype,
                     rngs=rngs)


def _conv(cin: int, cout: int, kernel: int, stride: int, rngs: nnx.Rngs,
          init: nnx.Initializer = _conv_init, dtype: jnp.dtype | None = None) -> nnx.Conv:
    padding = _PAD1 if kernel == 3 else ((0, 0), (0, 0))
    # strided_conv: lax's convolution with a faster stride-2 input gradient on XLA:CPU.
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=padding, use_bias=False,
                    kernel_init=init, dtype=dtype, rngs=rngs,
                    conv_general_dilated=strided_conv.conv_general_dilated)


class PReLU(nnx.Module):
    """PReLU with one slope per channel, initialised at 0.25 (PyTorch `nn.PReLU(C)`)."""

    def __init__(self, channels: int):
        self.slope = nnx.Param(jnp.full((channels,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        # In the input's dtype: a float32 slope would lift bfloat16 activations to float32.
        # broadcast_channels: the slope's gradient is a matrix product, not a reduction.
        slope = broadcast_channels(self.slope[...], x.shape, x.dtype)
        return jnp.where(x >= 0, x, slope * x)


def _conv_of_batch_norm(bn: BatchNorm, conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(bn(x))` for a float32 batch norm, the normalisation moved into the convolution.

    A batch norm is `bn(x) = x * a + c` per input channel (`a`, `c` from the batch's statistics
    in training, from the running ones otherwise), so `conv(bn(x)) = conv(x, W * a) + conv(c, W)`:
    the second term is one convolution of a single image that is `c` everywhere (not a constant
    map: the zero padding leaves the border taps out). Autodiff through `a` and `c` gives the
    statistics' share of the gradient, as through the batch norm itself. Why: XLA:CPU transposes
    a convolution's input for its weight gradient, and when that input is a batch norm's output
    it recomputes the normalisation inside the transpose, whose per-channel operands take the
    transpose off its fast path (about 4x slower; the 64 px layer's took a tenth of the CURE
    step on one core). Here the weight gradient reads `x`, an array already in memory. Equal to
    the plain form to float32 rounding (tests/test_models.py, tests/test_channel_ops.py).

    Args:
      bn: the batch norm (float32, `_folds`).
      conv: the convolution after it (no bias, no mask, float32), [kh, kw, C, C'] kernel.
      x: [B, H, W, C] float32.

    Returns:
      [B, H', W', C'].
    """
    multiplier_C, shift_C = bn.affine(x)
    kernel = conv.kernel[...]
    strides = (conv.strides,) * 2 if isinstance(conv.strides, int) else tuple(conv.strides)

    def convolve(inputs, kernel):
        return jax.lax.conv_general_dilated(inputs, kernel, strides, conv.padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=conv.precision)

    scaled = convolve(x, kernel * multiplier_C[None, None, :, None])
    # broadcast_channels: the shift's gradient is a matrix product, not a reduction.
    constant_image = broadcast_channels(shift_C, (1, *x.shape[1:]), x.dtype)
    return scaled + convolve(constant_image, kernel)


def _folds(bn: nnx.BatchNorm, conv: nnx.Conv) -> bool:
    """Whether `_conv_of_batch_norm` computes `conv(bn(x))`: the package's float32 BatchNorm
    and a plain float32 convolution with explicit padding."""
    return (isinstance(bn, BatchNorm) and bn.dtype is None and bn.axis_name is None
            and conv.dtype is None
            and conv.mask is None and not conv.use_bias and conv.feature_group_count == 1
            and conv.kernel_dilation in (None, 1, (1, 1))
            and conv.input_dilation in (None, 1, (1, 1)) and not isinstance(conv.padding, str))


class IBasicBlock(nnx.Module):
    """The insightface residual block (BN-conv-BN-PReLU-conv-BN plus shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs,
                 conv_init: nnx.Initializer = _conv_init, dtype: jnp.dtype | None = None):
        self.bn1 = _bn(cin, rngs, dtype=dtype)
        self.conv1 = _conv(cin, cout, 3, 1, rngs, conv_init, dtype)
        self.bn2 = _bn(cout, rngs, dtype=dtype)
        self.prelu = PReLU(cout)
        self.conv2 = _conv(cout, cout, 3, stride, rngs, conv_init, dtype)
        self.bn3 = _bn(cout, rngs, dtype=dtype)
        if stride != 1 or cin != cout:
            self.down_conv = _conv(cin, cout, 1, stride, rngs, conv_init, dtype)
            self.down_bn = _bn(cout, rngs, dtype=dtype)
        else:
            self.down_conv = None
            self.down_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        if _folds(self.bn1, self.conv1):
            out = _conv_of_batch_norm(self.bn1, self.conv1, x)
        else:
            out = self.conv1(self.bn1(x))
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        shortcut = x if self.down_conv is None else self.down_bn(self.down_conv(x))
        return out + shortcut


class IResNet(nnx.Module):
    """IResNet backbone mapping images [B, S, S, 3] to raw embeddings [B, embedding_dim]."""

    def __init__(self, depth: str = "r18", *, width: float = 1.0, input_size: int = 112,
                 embedding_dim: int = 512, dropout: float = 0.0, rngs: nnx.Rngs,
                 conv_init: nnx.Initializer = _conv_init, dtype: jnp.dtype | None = None):
        """`conv_init(key, shape, dtype)` draws the convolution kernels (arcface_torch's
        N(0, 0.1^2) by default); `dtype` is the compute dtype (module docstring)."""
        if depth not in DEPTHS:
            raise ValueError(f"unknown IResNet depth {depth!r}; valid: {', '.join(DEPTHS)}")
        if input_size not in INPUT_SIZES:
            raise ValueError(f"input_size={input_size}; valid: {INPUT_SIZES}")
        if width <= 0:
            raise ValueError(f"width={width} must be positive")
        channels = [max(8, int(round(c * width))) for c in STAGE_CHANNELS]
        self.stem_conv = _conv(3, channels[0], 3, 1, rngs, conv_init, dtype)
        self.stem_bn = _bn(channels[0], rngs, dtype=dtype)
        self.stem_prelu = PReLU(channels[0])
        blocks = []
        cin = channels[0]
        for cout, count in zip(channels, DEPTHS[depth], strict=True):
            for i in range(count):
                blocks.append(IBasicBlock(cin, cout, 2 if i == 0 else 1, rngs=rngs,
                                          conv_init=conv_init, dtype=dtype))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.final_bn = _bn(cin, rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout)  # its key comes with each call
        spatial = input_size // 16
        self.fc = nnx.Linear(cin * spatial * spatial, embedding_dim, dtype=dtype, rngs=rngs)
        # arcface_torch freezes this BN's weight at 1: no scale parameter is the same thing.
        # Its output, the embedding, is float32 whatever the compute dtype: losses read it.
        self.features = _bn(embedding_dim, rngs, use_scale=False,
                            dtype=None if dtype is None else jnp.float32)
        self.input_size = input_size
        self.embedding_dim = embedding_dim

    def __call__(self, images: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """Embeds a batch.

        Args:
          images: [B, S, S, 3] float in [-1, 1].
          dropout_key: PRNG key for dropout in training (unused when the rate is 0 or in eval).

        Returns:
          Raw (unnormalised) embeddings [B, D].
        """
        x = self.stem_prelu(self.stem_bn(self.stem_conv(images)))
        for block in self.blocks:
            x = block(x)
        x = self.final_bn(x)
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(x, rngs=dropout_key)
        return self.features(self.fc(x))


def in_float32(model: nnx.Module) -> nnx.Module:
    """`model` with every convolution, dense layer and batch norm computing in float32 (on the
    same arrays): a mixed-precision model as its float32 export computes."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Conv | nnx.Linear | nnx.BatchNorm):
            module.dtype = None
    return model
