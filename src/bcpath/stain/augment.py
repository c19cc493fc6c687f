"""Random stain and intensity augmentation of H&E tiles, on whatever device the batch is on.

The alternative to Vahadane normalisation (:mod:`bcpath.stain.normalise`) for robustness to
staining: instead of mapping every input onto one reference image, the network sees each
training tile under a new random staining, so at inference it takes images as they are (no
reference image). Per tile, in this order:

1. **Stain vectors and concentrations** (optical density space, Ruifrok & Johnston 2001):
   RGB → OD = −ln((I·255 + 1) / 256); concentrations = OD · M⁻¹ with M the hematoxylin,
   eosin and residual vectors of scikit-image's ``rgb_from_hed``; the H and E vectors are then
   perturbed (Gaussian noise of ``vector_sigma`` per component, renormalised), each
   concentration scaled by a log-uniform factor in [1/``conc_scale``, ``conc_scale``] and
   shifted by up to ±``conc_shift``, and the tile re-composed with the perturbed vectors.
2. **Brightness / contrast / gamma**: I ← ((I − mean)·c + mean + b)^γ, c log-uniform in
   [1/``contrast``, ``contrast``], b in ±``brightness``, γ log-uniform in [1/``gamma``, ``gamma``].
3. **Blur** with probability ``blur_p``: Gaussian, σ uniform in ``blur_sigma`` px.
4. **Noise**: Gaussian, σ uniform in [0, ``noise``].

JPEG artefacts are not made here (no JPEG codec on the GPU): the GPU training script keeps a
JPEG-recompressed copy of each image (quality 30-90) and draws tiles from it at random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["StainAugment", "RGB_FROM_HED"]

# scikit-image's rgb_from_hed (rows: hematoxylin, eosin, DAB); the DAB row serves as the
# residual direction of H&E images.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


@dataclass(frozen=True)
class StainAugment:
    """Random stain + intensity augmentation (see the module docstring); call on a
    (B, 3, H, W) float batch in [0, 1] with a :class:`torch.Generator` on the batch's device."""

    vector_sigma: float = 0.05
    conc_scale: float = 1.5
    conc_shift: float = 0.05
    brightness: float = 0.08
    contrast: float = 1.25
    gamma: float = 1.3
    blur_p: float = 0.25
    blur_sigma: tuple[float, float] = (0.4, 1.5)
    noise: float = 0.02

    def __call__(self, rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got {tuple(rgb.shape)}")
        b, dev = rgb.shape[0], rgb.device
        x = rgb.float()

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, device=dev, generator=generator)

        def logu(limit: float, *shape: int) -> torch.Tensor:
            return torch.exp((rand(*shape) * 2 - 1) * math.log(limit))

        m = torch.tensor(RGB_FROM_HED, device=dev, dtype=torch.float32)
        m = m / m.norm(dim=1, keepdim=True)
        m_inv = torch.linalg.inv(m)
        od = -torch.log((x * 255.0 + 1.0) / 256.0)  # (B, 3, H, W)
        conc = torch.einsum("bchw,cs->bshw", od, m_inv)  # (B, 3 stains, H, W)
        # perturbed stain vectors (H and E; the residual kept)
        noise = torch.randn(b, 3, 3, device=dev, generator=generator) * self.vector_sigma
        noise[:, 2] = 0
        mb = (m.unsqueeze(0) + noise).abs()
        mb = mb / mb.norm(dim=2, keepdim=True)
        scale = logu(self.conc_scale, b, 3, 1, 1)
        shift = (rand(b, 3, 1, 1) * 2 - 1) * self.conc_shift
        scale[:, 2] = 1
        shift[:, 2] = 0
        conc = conc * scale + shift
        od = torch.einsum("bshw,bsc->bchw", conc, mb)
        x = (torch.exp(-od) * 256.0 - 1.0) / 255.0
        x = x.clamp(0, 1)
        # brightness / contrast / gamma
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * logu(self.contrast, b, 1, 1, 1) + mean
        x = x + (rand(b, 1, 1, 1) * 2 - 1) * self.brightness
        x = x.clamp(1e-4, 1) ** logu(self.gamma, b, 1, 1, 1)
        # blur (per-tile sigma, separable, grouped convolution)
        if self.blur_p > 0:
            lo, hi = self.blur_sigma
            sigma = lo + rand(b) * (hi - lo)
            radius = int(math.ceil(3 * hi))
            t = torch.arange(-radius, radius + 1, device=dev, dtype=torch.float32)
            k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
            k = k / k.sum(dim=1, keepdim=True)
            on = rand(b) < self.blur_p
            delta = torch.zeros_like(k)
            delta[:, radius] = 1
            k = torch.where(on.view(-1, 1), k, delta)
            kk = k.repeat_interleave(3, dim=0)  # (B*3, K)
            h, w = x.shape[2:]
            y = x.reshape(1, b * 3, h, w)
            y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
            y = F.conv2d(y, kk.view(b * 3, 1, 1, -1), groups=b * 3)
            y = F.conv2d(y, kk.view(b * 3, 1, -1, 1), groups=b * 3)
            x = y.reshape(b, 3, h, w)
        if self.noise > 0:
            x = x + torch.randn(x.shape, device=dev, generator=generator) * (rand(b, 1, 1, 1) * self.noise)
        return x.clamp(0, 1)
