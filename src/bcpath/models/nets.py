"""bcpath's own small architectures (registry kinds other than torchvision classifiers).

- :class:`LocNet` (kind ``tumor_locnet``): the fully convolutional tumour localiser of Shah et
  al.'s proliferation pipeline: a few conv/pool blocks, any input size, one tumour logit per
  ``2**depth`` input pixels.
- :class:`MitosNet` (kind ``mitosis_classifier``): a small CNN classifying a crop centred on a
  nucleus as mitotic figure or not (2 logits), with a second head for "atypical" mitoses and a
  penultimate embedding used for the bag-of-words slide features.

Both take float inputs (N, 3, H, W) normalised with the registry entry's mean/std.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class LocNet(nn.Module):
    """Fully convolutional tumour localiser.

    Input (N, 3, H, W) with H, W multiples of ``2**depth``; output (N, 1, H / 2**depth,
    W / 2**depth) tumour logits (one per output cell; sigmoid gives p(tumour)).
    """

    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for level in range(depth):
            c_out = width * 2**level
            layers += [_conv_block(c_in, c_out), nn.MaxPool2d(2)]
            c_in = c_out
        layers += [_conv_block(c_in, c_in)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, 1, 1)
        self.downsample = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class MitosNet(nn.Module):
    """Mitotic-figure classifier on a nucleus-centred crop (any size ≥ 16 px).

    ``forward(x)`` → (N, 2) logits (non-mitosis, mitosis); ``embed(x)`` → (N, embed_dim)
    penultimate features; ``atypical_logit(features)`` → (N,) logit of an atypical figure
    (meaningful only for mitoses).
    """

    def __init__(self, width: int = 32, embed_dim: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(3, width),
            nn.MaxPool2d(2),
            _conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embedding = nn.Sequential(nn.Linear(4 * width, embed_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.classifier = nn.Linear(embed_dim, 2)
        self.atypical = nn.Linear(embed_dim, 1)
        self.embed_dim = embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.embedding(self.features(x))
        return out

    def atypical_logit(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.atypical(features).squeeze(1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.embed(x))
        return out

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mitosis logits (N, 2), atypical logit (N,), embedding (N, embed_dim))."""
        features = self.embed(x)
        return self.classifier(features), self.atypical_logit(features), features


NETS: dict[str, dict[str, Any]] = {
    "tumor_locnet": {"locnet": LocNet},
    "mitosis_classifier": {"mitosnet": MitosNet},
}
"""Registry kind → architecture name → class, for the kinds built here."""


def build_net(kind: str, architecture: str, arguments: dict[str, Any] | None = None) -> nn.Module:
    """Build ``architecture`` of registry ``kind`` with ``arguments`` (constructor kwargs).

    Raises:
        KeyError: kind or architecture not in :data:`NETS` (the caller words the message).
        TypeError: an argument the constructor does not take.
    """
    return NETS[kind][architecture](**(arguments or {}))  # type: ignore[no-any-return]
