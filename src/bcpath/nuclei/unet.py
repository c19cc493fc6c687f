"""U-Nets with torchvision encoders for nuclei segmentation (Lagree et al. 2021, Sci Rep 11:8025).

Lagree et al. compare U-Nets whose encoders are ImageNet classifiers (VGG16, VGG19, ResNet18
to 152, DenseNet121 / 201, Inception-v3), an ensemble of them, a two-stage "GB U-Net" and
Mask R-CNN, all predicting background / nucleus interior / nucleus boundary
(:mod:`bcpath.nuclei.targets`). This module builds them, offline: every torchvision model is
built with ``weights=None`` and a local state_dict (``encoder_weights``) is the only way to start
from pretrained weights. Nothing is downloaded.

Shapes: inputs are float (N, in_channels, H, W), normalised RGB (e.g. ImageNet mean / std);
outputs are (N, n_classes, H, W) logits at input resolution; softmax is left to the caller, the
loss (:mod:`bcpath.nuclei.losses`) or :meth:`UNet.predict_proba`. H and W must be multiples of
32 (five ×2 downsamplings); pad a tile (e.g. reflect) and crop the output otherwise.

Decisions:

- **Encoder taps.** The encoder yields feature maps at strides 2, 4, 8, 16 and 32 (and 1 for
  VGG, whose first block runs at full resolution); the stride-32 map is the bottleneck.
  ResNet: relu after conv1 (2), layer1 (4), layer2 (8), layer3 (16), layer4 (32). DenseNet:
  relu0 (2), denseblock1 (4), denseblock2 (8), denseblock3 (16), relu(norm5) (32). VGG: the
  last conv block output before each max-pool (1, 2, 4, 8, 16) and the fifth pool (32).
- **VGG variant.** ``vgg16`` / ``vgg19`` are the plain networks, as the Keras applications the
  paper's U-Nets were built on; ``vgg16_bn`` / ``vgg19_bn`` (batch norm) are accepted too and
  train more easily from scratch. Only the convolutional ``features`` are built (the 100 M
  parameter classifier is never allocated); state_dict keys stay ``features.N.*``.
- **Inception-v3.** torchvision's network uses unpadded ("valid") 3×3 convs and pools, so its
  maps are not H/2^k. Here the valid layers are made "same": ``Conv2d_1a_3x3``,
  ``Conv2d_2a_3x3`` and ``Conv2d_4a_3x3`` get padding 1, ``maxpool1`` / ``maxpool2`` get
  padding 1, and the inputs of ``Mixed_6a`` / ``Mixed_7a`` (whose stride-2 branches and
  functional max-pool cannot be re-padded) are zero-padded by 1 pixel on each side (inputs
  there are ReLU outputs ≥ 0, so the pool is unaffected). Weights keep their shapes, so
  torchvision state_dicts load unchanged; only the borders see padding the pretrained network
  did not. Taps: Conv2d_2b_3x3 (2, 64 ch), Conv2d_4a_3x3 (4, 192), Mixed_5d (8, 288),
  Mixed_6e (16, 768), Mixed_7c (32, 2048). With that, the output is exactly H × W for every
  H, W divisible by 32 (the smallest is 32 × 32), as for the other encoders.
- **Decoder.** Per level, bilinear ×2 upsampling (``align_corners=False``; no transposed
  convolution, hence no checkerboard artefacts), concatenation of the encoder map of that
  scale, then two blocks of 3×3 conv + BN + ReLU. Widths 256, 128, 64, 32, 16 (stride 16 → 1),
  then a 1×1 conv to ``n_classes`` logits. Encoders without a stride-1 map (all but VGG) have no
  skip at the last level.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bcpath.errors import BcpathError

__all__ = [
    "DEFAULT_GB_FIRST_STAGE",
    "ENCODERS",
    "Encoder",
    "GBUNet",
    "PlainUNet",
    "UNet",
    "UNetEnsemble",
    "build_mask_rcnn",
    "fold_batchnorm",
    "build_nuclei_model",
    "nuclei_model_names",
]

logger = logging.getLogger(__name__)

ENCODERS: tuple[str, ...] = (
    "vgg16",
    "vgg19",
    "vgg16_bn",
    "vgg19_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "densenet121",
    "densenet201",
    "inception_v3",
)
DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)
# First-stage encoders of the default GB U-Net / ensemble. An assumption, not taken from the
# paper's text: one of each encoder family. Pass ``encoders=`` to choose others.
DEFAULT_GB_FIRST_STAGE: tuple[str, str, str] = ("vgg16", "resnet34", "densenet121")
_VGG_CFG = {"vgg16": "D", "vgg19": "E"}


def _check_size(x: torch.Tensor, multiple: int) -> None:
    if x.dim() != 4:
        raise BcpathError(f"expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple or h == 0 or w == 0:
        raise BcpathError(
            f"input size {h}×{w} px is not a multiple of {multiple}; pad the tile (e.g. "
            f"reflect) to {-(-h // multiple) * multiple}×{-(-w // multiple) * multiple} and crop "
            "the output"
        )


def _conv_bn_relu(c_in: int, c_out: int, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential``
    into that conv (weights and bias rescaled, the BN replaced by ``nn.Identity``), in place.

    For inference only: same outputs to float rounding, about 15 % less time on one CPU thread
    for the plain U-Nets (the BN pass over each activation map disappears); the state_dict
    loses the BN entries, so fold a copy, never a model to train or to save.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise BcpathError("fold_batchnorm: put the model in eval mode first (it is for inference only)")
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return model


class _VGGBackbone(nn.Module):
    """torchvision VGG ``features`` only (same state_dict keys, no classifier)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        batch_norm = name.endswith("_bn")
        self.features = make_layers(cfgs[_VGG_CFG[name.removesuffix("_bn")]], batch_norm=batch_norm)
        for m in self.features.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """A torchvision classifier cut into stages; returns maps at strides 1?, 2, 4, 8, 16, 32.

    ``self.backbone`` keeps torchvision's module names, so a torchvision state_dict (without its
    head) loads into it. ``out_channels[i]`` is the channel count of the i-th returned map;
    ``has_full_res`` says whether the first map is at stride 1 (VGG) rather than 2.
    """

    def __init__(self, name: str, in_channels: int = 3) -> None:
        super().__init__()
        if name not in ENCODERS:
            raise BcpathError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")
        self.name = name
        self.backbone: nn.Module
        self.stages: list[list[str]]
        if name.startswith("vgg"):
            self.backbone = _VGGBackbone(name)
            feats = self.backbone.features
            assert isinstance(feats, nn.Sequential)
            pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
            bounds = [0, *pools, len(feats)]
            # stage k: layers up to (not including) the k-th pool; the last stage is the 5th pool
            self.stages = [[f"features.{j}" for j in range(bounds[k], bounds[k + 1])] for k in range(5)]
            self.stages.append([f"features.{pools[-1]}"])
            self.has_full_res = True
        elif name.startswith("resnet"):
            model = torchvision.models.get_model(name, weights=None)
            model.fc = nn.Identity()
            self.backbone = model
            self.stages = [["conv1", "bn1", "relu"], ["maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]
            self.has_full_res = False
        elif name.startswith("densenet"):
            model = torchvision.models.get_model(name, weights=None)
            model.classifier = nn.Identity()
            self.backbone = model
            f = "features."
            self.stages = [
                [f + "conv0", f + "norm0", f + "relu0"],
                [f + "pool0", f + "denseblock1"],
                [f + "transition1", f + "denseblock2"],
                [f + "transition2", f + "denseblock3"],
                [f + "transition3", f + "denseblock4", f + "norm5", "@relu"],
            ]
            self.has_full_res = False
        else:  # inception_v3
            model = torchvision.models.get_model(
                name, weights=None, aux_logits=False, init_weights=False, transform_input=False
            )
            model.fc = nn.Identity()
            for conv in (model.Conv2d_1a_3x3, model.Conv2d_2a_3x3, model.Conv2d_4a_3x3):
                conv.conv.padding = (1, 1)
            model.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
            model.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)
            self.backbone = model
            self.stages = [
                ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"],
                ["maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3"],
                ["maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d"],
                ["@pad", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
                ["@pad", "Mixed_7a", "Mixed_7b", "Mixed_7c"],
            ]
            self.has_full_res = False
        if in_channels != 3:
            self._replace_first_conv(in_channels)
        self.in_channels = in_channels
        self.out_channels = self._probe_channels()

    def _first_conv_name(self) -> str:
        for name, module in self.backbone.named_modules():
            if isinstance(module, nn.Conv2d):
                return name
        raise AssertionError("encoder without a convolution")

    def _replace_first_conv(self, in_channels: int) -> None:
        name = self._first_conv_name()
        old = self.backbone.get_submodule(name)
        assert isinstance(old, nn.Conv2d)
        new = nn.Conv2d(
            in_channels,
            old.out_channels,
            old.kernel_size,  # type: ignore[arg-type]
            stride=old.stride,  # type: ignore[arg-type]
            padding=old.padding,  # type: ignore[arg-type]
            bias=old.bias is not None,
        )
        parent_name, _, child = name.rpartition(".")
        parent = self.backbone.get_submodule(parent_name) if parent_name else self.backbone
        setattr(parent, child, new)

    @torch.no_grad()
    def _probe_channels(self) -> list[int]:
        was_training = self.training
        self.eval()
        out = self.forward(torch.zeros(1, self.in_channels, 32, 32))
        self.train(was_training)
        return [int(t.shape[1]) for t in out]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, C, H, W) → maps at strides (1,) 2, 4, 8, 16, 32 (finest first)."""
        outs: list[torch.Tensor] = []
        for stage in self.stages:
            for name in stage:
                if name == "@relu":
                    x = F.relu(x)
                elif name == "@pad":  # 1 px of zeros before a valid stride-2 Inception block
                    x = F.pad(x, (1, 1, 1, 1))
                else:
                    x = self.backbone.get_submodule(name)(x)
            outs.append(x)
        return outs

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a local torchvision state_dict into the encoder (strict=False; never downloads).

        Tensors whose names and shapes match are loaded; the others (the classifier head, a first
        conv with a different channel count) are skipped and logged, as are encoder tensors the
        file does not hold.

        Raises:
            BcpathError: the file is missing, not a state_dict of tensors, or shares no tensor
                with the encoder.
        """
        from bcpath.models.registry import _load_state_dict

        file = Path(path).expanduser()
        what = f"encoder {self.name}: encoder_weights"
        if not file.is_file():
            raise BcpathError(f"{what} not found: {file}; give the path of a local state_dict file (nothing is downloaded)")
        state = _load_state_dict(file, what)
        own = self.backbone.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise BcpathError(
                f"{what} {file} shares no tensor (name and shape) with torchvision's {self.name}; "
                "give a state_dict of the same architecture (torch.save(model.state_dict(), path))"
            )
        result = self.backbone.load_state_dict(usable, strict=False)
        skipped = sorted(k for k in state if k not in usable)
        logger.info("encoder %s: loaded %d/%d tensors from %s", self.name, len(usable), len(own), file)
        if skipped:
            logger.info("encoder %s: skipped (not in the encoder or shape differs): %s", self.name, ", ".join(skipped))
        if result.missing_keys:
            logger.info("encoder %s: left at initialisation: %s", self.name, ", ".join(result.missing_keys))


class _DecoderBlock(nn.Module):
    """Bilinear ×2 upsampling, concatenation with the skip map, two 3×3 conv + BN + ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(c_in + c_skip, c_out, dropout)
        self.conv2 = _conv_bn_relu(c_out, c_out, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class _SegmentationModel(nn.Module):
    """Shared helpers: ``predict_proba`` = softmax over classes of ``forward``'s logits."""

    n_classes: int

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, n_classes, H, W), summing to 1 over dim 1."""
        return torch.softmax(self(x), dim=1)


class UNet(_SegmentationModel):
    """U-Net with a torchvision encoder (see the module docstring for taps and decoder).

    Args:
        encoder: one of :data:`ENCODERS`.
        n_classes: output channels (3: background, interior, boundary).
        in_channels: input channels; other than 3, the encoder's first conv is re-initialised.
        encoder_weights: optional local state_dict file of the torchvision classifier, loaded
            into the encoder (see :meth:`Encoder.load_weights`). Never downloaded.
    """

    def __init__(
        self,
        encoder: str,
        n_classes: int = 3,
        in_channels: int = 3,
        encoder_weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(encoder, in_channels)
        if encoder_weights is not None:
            self.encoder.load_weights(encoder_weights)
        self.n_classes = n_classes
        chans = self.encoder.out_channels
        skips = chans[:-1][::-1]  # strides 16, 8, 4, 2 (, 1)
        if not self.encoder.has_full_res:
            skips = [*skips, 0]
        blocks = []
        c_in = chans[-1]
        for c_skip, c_out in zip(skips, DECODER_CHANNELS, strict=True):
            blocks.append(_DecoderBlock(c_in, c_skip, c_out))
            c_in = c_out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c_in, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W), H and W multiples of 32 → (N, n_classes, H, W) logits."""
        _check_size(x, 32)
        feats = self.encoder(x)
        y = feats[-1]
        skips: list[torch.Tensor | None] = list(feats[:-1][::-1])
        if not self.encoder.has_full_res:
            skips.append(None)
        for block, skip in zip(self.decoder, skips, strict=True):
            y = block(y, skip)
        return self.head(y)


class PlainUNet(_SegmentationModel):
    """A from-scratch U-Net (the GB U-Net second stage).

    Encoder: ``depth`` levels of two [3×3 conv + BN + ReLU + dropout] blocks, widths
    ``base·2^k``, each followed by 2×2 max-pool, then a bottleneck of width ``base·2^depth``;
    decoder: bilinear ×2, concatenation, two 3×3 conv + BN + ReLU (+ dropout); 1×1 conv head.
    H and W must be multiples of ``2**depth``.
    """

    def __init__(
        self, in_channels: int, n_classes: int = 3, depth: int = 4, base: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if depth < 1 or base < 1 or not 0.0 <= dropout < 1.0:
            raise BcpathError(f"PlainUNet needs depth ≥ 1, base ≥ 1 and 0 ≤ dropout < 1; got {depth}, {base}, {dropout}")
        self.n_classes = n_classes
        self.depth = depth
        widths = [base * 2**k for k in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(nn.Sequential(_conv_bn_relu(c, w, dropout), _conv_bn_relu(w, w, dropout)))
            c = w
        self.bottleneck = nn.Sequential(_conv_bn_relu(c, widths[-1], dropout), _conv_bn_relu(widths[-1], widths[-1], dropout))
        self.up = nn.ModuleList(
            _DecoderBlock(widths[k + 1], widths[k], widths[k], dropout) for k in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W), H and W multiples of 2**depth → (N, n_classes, H, W) logits."""
        _check_size(x, 2**self.depth)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = block(x, skip)
        return self.head(x)


class UNetEnsemble(_SegmentationModel):
    """Pixel-wise mean of the members' softmax probabilities.

    ``predict_proba(x)`` = mean_k softmax(model_k(x)); ``forward`` returns its log (valid logits:
    softmax(log p) = p), so the ensemble plugs into the same losses and post-processing.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise BcpathError("UNetEnsemble needs at least one model")
        self.models = nn.ModuleList(models)
        classes = {int(getattr(m, "n_classes", -1)) for m in models}
        if len(classes) != 1:
            raise BcpathError(f"ensemble members predict different class counts {sorted(classes)}; use one n_classes")
        self.n_classes = classes.pop()

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → mean class probabilities (N, n_classes, H, W)."""
        return torch.stack([torch.softmax(m(x), dim=1) for m in self.models]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean probabilities (N, n_classes, H, W), floored at 1e-12 before the log."""
        return torch.log(self.predict_proba(x).clamp_min(1e-12))


class GBUNet(_SegmentationModel):
    """Two-stage "GB U-Net": first-stage U-Nets, then a plain U-Net refining their maps.

    The second stage sees the first-stage pre-softmax maps concatenated channel-wise with the
    (normalised RGB) input: 3·n_classes + 3 channels for three first-stage U-Nets.

    Args:
        first_stage: the first-stage models (Lagree et al.: three U-Nets), each mapping the
            input to (N, n_classes, H, W) logits.
        n_classes: output classes.
        freeze_first_stage: no gradients into, and BN statistics frozen in, the first stage
            (it stays in eval mode; train it separately first).
        depth, base, dropout: the second-stage :class:`PlainUNet`.
    """

    def __init__(
        self,
        first_stage: Sequence[nn.Module],
        n_classes: int = 3,
        freeze_first_stage: bool = True,
        depth: int = 4,
        base: int = 32,
        dropout: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not first_stage:
            raise BcpathError("GBUNet needs at least one first-stage model (Lagree et al. use three)")
        self.first_stage = nn.ModuleList(first_stage)
        self.n_classes = n_classes
        self.freeze_first_stage = freeze_first_stage
        self.second_stage = PlainUNet(len(first_stage) * n_classes + in_channels, n_classes, depth, base, dropout)
        if freeze_first_stage:
            for p in self.first_stage.parameters():
                p.requires_grad_(False)
            self.first_stage.eval()

    def train(self, mode: bool = True) -> GBUNet:
        """Set train / eval mode; a frozen first stage always stays in eval mode."""
        super().train(mode)
        if self.freeze_first_stage:
            self.first_stage.eval()
        return self

    def stage_input(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) → second-stage input (N, K·n_classes + in_channels, H, W)."""
        if self.freeze_first_stage:
            with torch.no_grad():
                maps = [m(x) for m in self.first_stage]
        else:
            maps = [m(x) for m in self.first_stage]
        return torch.cat([*maps, x], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) → (N, n_classes, H, W) logits."""
        return self.second_stage(self.stage_input(x))


def build_mask_rcnn(num_classes: int = 2, **kwargs: Any) -> nn.Module:
    """torchvision Mask R-CNN (ResNet-50 FPN), untrained: ``weights=None, weights_backbone=None``.

    ``num_classes`` counts the background (2: background, nucleus). Extra keyword arguments go
    to :func:`torchvision.models.detection.maskrcnn_resnet50_fpn` (e.g. ``min_size``).
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


def nuclei_model_names() -> list[str]:
    """Names :func:`build_nuclei_model` accepts."""
    return [f"unet_{e}" for e in ENCODERS] + ["ensemble", "gb_unet", "mask_rcnn"]


def build_nuclei_model(
    name: str,
    n_classes: int = 3,
    in_channels: int = 3,
    encoder_weights: str | os.PathLike[str] | None = None,
    encoders: Sequence[str] = DEFAULT_GB_FIRST_STAGE,
    **kwargs: Any,
) -> nn.Module:
    """Build a nuclei model by name (never downloads).

    Args:
        name: ``"unet_<encoder>"`` (e.g. ``"unet_resnet34"``, ``"unet_vgg16"``), ``"ensemble"``
            (:class:`UNetEnsemble` of U-Nets on ``encoders``), ``"gb_unet"`` (:class:`GBUNet`
            with first-stage U-Nets on ``encoders``; ``kwargs`` go to :class:`GBUNet`) or
            ``"mask_rcnn"`` (:func:`build_mask_rcnn`; ``kwargs`` go to it, e.g. ``num_classes``).
        n_classes: output classes of the U-Nets.
        in_channels: input channels.
        encoder_weights: local state_dict for a single U-Net's encoder (not for the composites:
            build those from their members to load weights per member).
        encoders: encoder names of the ensemble / first-stage members.

    Raises:
        BcpathError: an unknown name (the message lists the valid ones).
    """
    if name.startswith("unet_") and name.removeprefix("unet_") in ENCODERS:
        return UNet(name.removeprefix("unet_"), n_classes, in_channels, encoder_weights)
    if name in ("ensemble", "gb_unet"):
        if encoder_weights is not None:
            raise BcpathError(
                f"model {name}: encoder_weights applies to one U-Net; build the members with "
                "UNet(..., encoder_weights=...) and pass them to UNetEnsemble / GBUNet"
            )
        members = [UNet(e, n_classes, in_channels) for e in encoders]
        if name == "ensemble":
            return UNetEnsemble(members)
        return GBUNet(members, n_classes, in_channels=in_channels, **kwargs)
    if name == "mask_rcnn":
        return build_mask_rcnn(**kwargs)
    raise BcpathError(f"unknown nuclei model {name!r}; valid names: {', '.join(nuclei_model_names())}")
