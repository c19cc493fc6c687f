"""Losses for the 3-class nuclei U-Nets (background / interior / boundary).

- :func:`weighted_cross_entropy`: per-pixel cross-entropy times a weight map (e.g.
  :func:`bcpath.nuclei.targets.unet_weight_map`), averaged over pixels;
- :func:`soft_dice_loss`: 1 − mean over the foreground classes of the soft Dice coefficient;
- :func:`combined_loss`: their sum.

Shapes: logits (N, C, H, W) float, target (N, H, W) int64 class indices in 0..C-1,
weight map (N, H, W) float (dimensionless).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["combined_loss", "soft_dice_loss", "weighted_cross_entropy"]


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits (N, C, H, W) and target (N, H, W); got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    if target.dtype != torch.long:
        raise TypeError(f"target must hold int64 class indices, got {target.dtype}")


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None
) -> torch.Tensor:
    """mean over pixels of weight_map · (−log softmax(logits)[target]); scalar.

    With ``weight_map`` all ones (or None) this is ``F.cross_entropy(logits, target)``. The
    weights are not renormalised: a gap pixel of weight 10 counts ten times a pixel of weight 1.
    """
    _check(logits, target)
    ce = F.cross_entropy(logits, target, reduction="none")  # (N, H, W)
    if weight_map is None:
        return ce.mean()
    if weight_map.shape != ce.shape:
        raise ValueError(f"weight_map must have shape {tuple(ce.shape)}, got {tuple(weight_map.shape)}")
    return (ce * weight_map.to(ce.dtype)).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − mean over classes c = 1..C-1 of (2·Σ p_c g_c + eps) / (Σ p_c + Σ g_c + eps); scalar.

    p = softmax(logits) over dim 1, g = one-hot target; sums run over the batch and all pixels
    (one Dice per class for the whole batch). Class 0 (background) is left out. ``eps`` (in
    pixels) smooths the ratio and makes a class absent from both prediction and target score 1.
    """
    _check(logits, target)
    n_classes = logits.shape[1]
    if n_classes < 2:
        raise ValueError("soft Dice needs at least one foreground class (C ≥ 2)")
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + eps) / (probs.sum(dims) + onehot.sum(dims) + eps)
    return 1 - dice.mean()


def combined_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight_map: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    eps: float = 1.0,
) -> torch.Tensor:
    """weighted_cross_entropy(logits, target, weight_map) + dice_weight · soft_dice_loss; scalar."""
    return weighted_cross_entropy(logits, target, weight_map) + dice_weight * soft_dice_loss(logits, target, eps)
