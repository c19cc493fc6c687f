"""U-Nets with torchvision encoders, ensemble, GB U-Net, Mask R-CNN (bcpath.nuclei.unet).

Small inputs (64×64, batch 1-2), one CPU thread: the whole file runs in seconds.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torchvision

from bcpath.errors import BcpathError
from bcpath.nuclei.losses import combined_loss
from bcpath.nuclei.targets import encode_targets, unet_weight_map
from bcpath.nuclei.unet import (
    ENCODERS,
    GBUNet,
    UNet,
    UNetEnsemble,
    build_mask_rcnn,
    build_nuclei_model,
    nuclei_model_names,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# Encoder channels at strides (1,) 2, 4, 8, 16, 32, worked out from the torchvision architectures.
EXPECTED_CHANNELS = {
    "vgg16": [64, 128, 256, 512, 512, 512],
    "vgg19": [64, 128, 256, 512, 512, 512],
    "vgg16_bn": [64, 128, 256, 512, 512, 512],
    "vgg19_bn": [64, 128, 256, 512, 512, 512],
    "resnet18": [64, 64, 128, 256, 512],
    "resnet34": [64, 64, 128, 256, 512],
    "resnet50": [64, 256, 512, 1024, 2048],
    "resnet101": [64, 256, 512, 1024, 2048],
    "resnet152": [64, 256, 512, 1024, 2048],
    "densenet121": [64, 256, 512, 1024, 1024],
    "densenet201": [64, 256, 512, 1792, 1920],
    "inception_v3": [64, 192, 288, 768, 2048],
}


def test_every_encoder_is_covered():
    assert set(EXPECTED_CHANNELS) == set(ENCODERS)


@pytest.mark.parametrize("encoder", ["resnet34", "resnet50", "resnet101", "resnet152", "vgg19", "vgg16_bn", "vgg19_bn", "densenet201"])
def test_other_encoders_build(encoder):
    model = UNet(encoder)
    assert model.encoder.out_channels == EXPECTED_CHANNELS[encoder]
    assert model.head.out_channels == 3


@pytest.mark.parametrize(
    ("encoder", "size"),
    [("resnet18", 64), ("vgg16", 64), ("densenet121", 64), ("inception_v3", 64), ("inception_v3", 96)],
)
def test_forward_keeps_input_size(encoder, size):
    model = UNet(encoder).eval()
    assert model.encoder.out_channels == EXPECTED_CHANNELS[encoder]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = model.encoder(x)
        logits = model(x)
        probs = model.predict_proba(x)
    strides = [1, 2, 4, 8, 16, 32] if encoder.startswith("vgg") else [2, 4, 8, 16, 32]
    assert [tuple(f.shape[-2:]) for f in feats] == [(size // s, size // s) for s in strides]
    assert logits.shape == (1, 3, size, size)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, size, size))


def test_non_rgb_input_and_size_error():
    model = UNet("resnet18", n_classes=2, in_channels=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 5, 32, 64)).shape == (2, 2, 32, 64)
        with pytest.raises(BcpathError, match="multiple of 32"):
            model(torch.randn(1, 5, 48, 64))


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(BcpathError, match="resnet34"):
        UNet("resnet999")


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3"])
def test_encoder_weights_load_torchvision_state_dict(tmp_path, caplog, arch):
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    reference = torchvision.models.get_model(arch, weights=None, **kwargs)
    path = tmp_path / f"{arch}.pt"
    torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="bcpath.nuclei.unet"):
        model = UNet(arch, encoder_weights=path)
    own = model.encoder.backbone.state_dict()
    loaded = [k for k in reference.state_dict() if not k.startswith("fc.")]
    assert loaded and all(k in own for k in loaded)
    for key in loaded:
        torch.testing.assert_close(own[key], reference.state_dict()[key], rtol=0, atol=0)
    assert "fc.weight" in caplog.text  # the head is skipped, and said so


def test_encoder_weights_errors(tmp_path):
    with pytest.raises(BcpathError, match="not found"):
        UNet("resnet18", encoder_weights=tmp_path / "missing.pt")
    path = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(2)}, path)
    with pytest.raises(BcpathError, match="shares no tensor"):
        UNet("resnet18", encoder_weights=path)


def test_ensemble_of_identical_models_equals_one_model():
    model = UNet("resnet18").eval()
    ensemble = UNetEnsemble([model, copy.deepcopy(model), copy.deepcopy(model)]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        single = model.predict_proba(x)
        torch.testing.assert_close(ensemble.predict_proba(x), single)
        torch.testing.assert_close(torch.softmax(ensemble(x), dim=1), single)


def test_ensemble_is_mean_of_probabilities():
    a, b = UNet("resnet18").eval(), UNet("resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = (a.predict_proba(x) + b.predict_proba(x)) / 2
        torch.testing.assert_close(UNetEnsemble([a, b]).predict_proba(x), expected)


def test_gb_unet_shape_and_frozen_first_stage():
    first = [UNet("resnet18") for _ in range(3)]
    model = GBUNet(first, n_classes=3, freeze_first_stage=True).train()
    assert all(not m.training for m in model.first_stage)  # BN statistics frozen
    assert model.second_stage.training
    x = torch.randn(2, 3, 64, 64)
    assert model.stage_input(x).shape == (2, 3 * 3 + 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 3, 64, 64)
    logits.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.first_stage.parameters())
    assert all(p.grad is not None for p in model.second_stage.parameters())


def test_gb_unet_unfrozen_first_stage_gets_gradients():
    model = GBUNet([UNet("resnet18")], n_classes=3, freeze_first_stage=False, depth=2, base=8).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.first_stage.parameters())
    assert model.second_stage.down[0][0][0].in_channels == 3 + 3


def test_factory_names_and_error():
    assert isinstance(build_nuclei_model("unet_resnet34"), UNet)
    assert build_nuclei_model("unet_vgg16").encoder.name == "vgg16"
    ensemble = build_nuclei_model("ensemble", encoders=("resnet18", "resnet18"))
    assert isinstance(ensemble, UNetEnsemble) and len(ensemble.models) == 2
    gb = build_nuclei_model("gb_unet", encoders=("resnet18",) * 3, base=8)
    assert isinstance(gb, GBUNet) and len(gb.first_stage) == 3
    assert {"unet_resnet34", "unet_vgg16", "ensemble", "gb_unet", "mask_rcnn"} <= set(nuclei_model_names())
    with pytest.raises(BcpathError, match="valid names: .*unet_resnet18.*gb_unet"):
        build_nuclei_model("unet_foo")


def test_mask_rcnn_builds_offline():
    model = build_mask_rcnn()
    assert isinstance(model, torchvision.models.detection.MaskRCNN)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2


def _three_disks(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), dtype=np.int32)
    for lab, (cy, cx, r) in enumerate([(16, 16, 8), (40, 22, 10), (30, 46, 9)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = lab
    rng = np.random.default_rng(0)
    image = np.where(labels[None] > 0, -1.0, 1.0) + 0.1 * rng.standard_normal((3, size, size))
    return image.astype(np.float32), labels


def test_tiny_overfit_halves_the_loss():
    """50 Adam steps (lr 1e-3) on one 64×64 image of 3 disks at least halve CE·w + Dice.

    30 steps reach a ratio of ~0.45-0.49 (seeds 0-2; soft Dice falls slowly until the softmax
    saturates), too close to 0.5 to be a stable test; 50 steps give 0.35-0.43.
    """
    image, labels = _three_disks()
    x = torch.from_numpy(image)[None]
    target = torch.from_numpy(encode_targets(labels))[None]
    weights = torch.from_numpy(unet_weight_map(labels))[None]
    model = UNet("resnet18").train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(50):
        optimiser.zero_grad()
        loss = combined_loss(model(x), target, weights)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.5 * losses[0], losses


@pytest.mark.parametrize("encoder", ["plain", "resnet18"])
def test_fold_batchnorm_keeps_outputs(encoder):
    """Folding BN into the convs (inference) leaves the logits equal to float rounding and
    removes every BN that follows a conv; a model still in training mode is refused."""
    from bcpath.nuclei.unet import PlainUNet, fold_batchnorm

    torch.manual_seed(0)
    model = PlainUNet(3, 4, depth=3, base=4) if encoder == "plain" else UNet(encoder, 4, 3)
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    with pytest.raises(BcpathError, match="eval mode"):
        fold_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        fold_batchnorm(model)
        after = model(x)
    remaining = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0 and (remaining == 0 if encoder == "plain" else remaining < n_bn)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
