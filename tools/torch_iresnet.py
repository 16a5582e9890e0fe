"""A PyTorch twin of `cure_jax.models.iresnet.IResNet`: insightface arcface_torch's IResNet with
the same knobs (depth, width multiplier, input size 32/64/112, embedding dim, dropout).

Module and parameter names are arcface_torch's (`conv1`, `bn1`, `prelu`, `layerN.i.*`,
`downsample.0/1`, `bn2`, `fc`, `features`), so its `state_dict()` is an arcface_torch
`backbone.pth`. Used by the parity tests and side-by-side benchmarks; the package itself never
imports torch.

    from tools.torch_iresnet import TorchIResNet
    model = TorchIResNet("r18", width=0.25, input_size=64, embedding_dim=128)
    emb = model(images_nchw)  # [B, 3, S, S] in [-1, 1] -> [B, D]
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)
INPUT_SIZES = (32, 64, 112)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """BN, conv3x3, BN, PReLU, conv3x3(stride), BN, plus the shortcut; no activation after."""

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-05)
        self.conv1 = conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-05)
        self.prelu = nn.PReLU(cout)
        self.conv2 = conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class TorchIResNet(nn.Module):
    """IResNet mapping NCHW images [B, 3, S, S] in [-1, 1] to raw embeddings [B, D]."""

    def __init__(self, depth: str = "r18", *, width: float = 1.0, input_size: int = 112,
                 embedding_dim: int = 512, dropout: float = 0.0):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unknown IResNet depth {depth!r}; valid: {', '.join(DEPTHS)}")
        if input_size not in INPUT_SIZES:
            raise ValueError(f"input_size={input_size}; valid: {INPUT_SIZES}")
        channels = [max(8, int(round(c * width))) for c in STAGE_CHANNELS]
        self.conv1 = conv3x3(3, channels[0])
        self.bn1 = nn.BatchNorm2d(channels[0], eps=1e-05)
        self.prelu = nn.PReLU(channels[0])
        cin = channels[0]
        for stage, (cout, count) in enumerate(zip(channels, DEPTHS[depth], strict=True), 1):
            setattr(self, f"layer{stage}", self._make_layer(cin, cout, count))
            cin = cout
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        spatial = input_size // 16
        self.fc = nn.Linear(cin * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # arcface_torch freezes it
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    @staticmethod
    def _make_layer(cin: int, cout: int, count: int) -> nn.Sequential:
        downsample = nn.Sequential(conv1x1(cin, cout, 2), nn.BatchNorm2d(cout, eps=1e-05))
        blocks = [IBasicBlock(cin, cout, 2, downsample)]
        blocks += [IBasicBlock(cout, cout) for _ in range(count - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        x = self.dropout(x)
        return self.features(self.fc(x))


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameter elements (what the optimiser updates)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
