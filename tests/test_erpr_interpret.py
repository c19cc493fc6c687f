"""Interpretability (Gamble et al. 2021): SmoothGrad, TCAV, clustering of patch embeddings.

Most checks use tiny hand-built models whose gradients are known exactly; resnet18 (via
build_model) checks the torchvision wiring.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bcpath.erpr.interpret import (
    cluster_hierarchy,
    cluster_montage,
    cluster_patches,
    concept_patches_from_folder,
    embed,
    logit_gradients,
    saliency_montage,
    smoothgrad,
    tcav,
    top_patches,
)
from bcpath.errors import BcpathError
from bcpath.models.registry import ModelSpec, build_model
from tests.model_specs import test_spec

P = 32


def _spec(architecture: str, mean: float = 0.5, std: float = 0.5) -> ModelSpec:
    return test_spec(P, architecture=architecture, mean=(mean, mean, mean), std=(std, std, std))


TOY = _spec("toy")  # normalised value = pixel / 127.5 − 1
RESNET = test_spec(P, model_id="tiny-resnet")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model(RESNET)


def _random_patches(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, P, P), generator=generator, dtype=torch.uint8)


def _solid(colours: np.ndarray) -> torch.Tensor:
    """(N, 3) uint8 colours → (N, 3, P, P) uniform patches."""
    array = np.broadcast_to(np.asarray(colours, dtype=np.uint8)[:, :, None, None], (len(colours), 3, P, P))
    return torch.from_numpy(np.ascontiguousarray(array))


# ------------------------------------------------------------------------------------------
# Toy models
# ------------------------------------------------------------------------------------------


class CentreNet(nn.Module):
    """logit_0 = Σ over the central 8×8 pixels of tanh(3×3 box filter of the input), logit_1 =
    −logit_0, logit_2 = 0: only pixels within one pixel of the centre square matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 27.0)
        mask = torch.zeros(1, 1, P, P)
        mask[..., 12:20, 12:20] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = (torch.tanh(self.conv(x)) * self.mask).sum(dim=(1, 2, 3))
        return torch.stack([logit, -logit, torch.zeros_like(logit)], dim=1)


class LinearPixelNet(nn.Module):
    """logit_k = Σ w_k · x (a fixed weight per channel and pixel): the gradient is w_k."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", weights)  # (3 classes, 3, P, P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.w)


class ColourNet(nn.Module):
    """Penultimate activation = per-channel mean of the normalised input (D = 3); ``fc`` maps
    it to the logits."""

    def __init__(self, fc: nn.Module) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class ProductHead(nn.Module):
    """logit_0 = a_0 · a_1, logit_1 = −a_0 · a_1, logit_2 = 0: ∂logit_0/∂a_0 = a_1 varies by patch."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        product = a[:, 0] * a[:, 1]
        return torch.stack([product, -product, torch.zeros_like(product)], dim=1)


def _red_axis_fc() -> nn.Linear:
    """logit_0 = a_R, logit_1 = −a_R, logit_2 = 0."""
    fc = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    return fc


# ------------------------------------------------------------------------------------------
# SmoothGrad
# ------------------------------------------------------------------------------------------


def test_smoothgrad_of_a_linear_model_is_its_weight_magnitude() -> None:
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn((3, 3, P, P), generator=generator)
    model = LinearPixelNet(weights)
    patches = _random_patches(3, seed=2)
    maps = smoothgrad(model, patches, TOY, target_class=1, n_samples=4, sigma=0.3, seed=0)
    expected = weights[1].abs().amax(dim=0).numpy()
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert maps.shape == (3, P, P) and maps.dtype == np.float32
    for saliency in maps:  # noise does not change a linear model's gradient
        np.testing.assert_allclose(saliency, expected, atol=1e-5)


def test_smoothgrad_concentrates_on_the_pixels_the_logit_depends_on() -> None:
    model = CentreNet()
    patches = _random_patches(4, seed=3)
    maps = smoothgrad(model, patches, TOY, target_class=0, n_samples=6, sigma=0.15, seed=0)
    assert maps.shape == (4, P, P) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-6)
    support = np.zeros((P, P), dtype=bool)
    support[11:21, 11:21] = True  # the centre square dilated by the 3×3 filter
    assert np.abs(maps[:, ~support]).max() < 1e-6  # no saliency outside
    inner = np.zeros((P, P), dtype=bool)
    inner[13:19, 13:19] = True  # fully covered by the 3×3 filter over the mask
    assert maps[:, inner].mean() > 0.3
    assert maps[:, support].sum() / maps.sum() > 0.999


class SquareNet(nn.Module):
    """logit_0 = Σ x_R² over all pixels: |∂logit_0/∂x_R| = 2 |x_R|, zero for G and B."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = (x[:, 0] ** 2).sum(dim=(1, 2))
        return torch.stack([logit, -logit, torch.zeros_like(logit)], dim=1)


@pytest.mark.parametrize("sigma", [0.0, 0.15, 0.5])
def test_smoothgrad_noise_is_sigma_times_the_input_range(sigma: float) -> None:
    """Averaged over the noise, |2 (x + ε)| is a folded normal with mean
    s·√(2/π)·exp(−x²/2s²) + x·(1 − 2Φ(−x/s)), s = sigma · (max x − min x); region means of the
    map, relative to each other (the min-max scaling cancels), must match it."""
    from scipy.stats import norm

    grey = np.zeros((P, P), dtype=np.uint8)
    grey[:, :8], grey[:, 8:16], grey[:, 16:24], grey[:, 24:] = 255, 191, 128, 0  # range 2
    patches = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(grey, (1, 3, P, P))))
    maps = smoothgrad(SquareNet(), patches, TOY, target_class=0, n_samples=200, sigma=sigma, seed=0)
    x = np.array([255, 191, 128]) / 127.5 - 1  # normalised values of the first three regions
    s = sigma * 2.0
    if s > 0:
        folded = s * np.sqrt(2 / np.pi) * np.exp(-(x**2) / (2 * s**2)) + x * (1 - 2 * norm.cdf(-x / s))
    else:
        folded = np.abs(x)
    expected = (folded[1] - folded[2]) / (folded[0] - folded[2])
    regions = [maps[0][:, :8].mean(), maps[0][:, 8:16].mean(), maps[0][:, 16:24].mean()]
    measured = (regions[1] - regions[2]) / (regions[0] - regions[2])
    assert measured == pytest.approx(expected, abs=0.01)


def test_smoothgrad_is_deterministic_per_seed_and_uses_the_noise(resnet: nn.Module) -> None:
    patches = _random_patches(2, seed=4)
    first = smoothgrad(resnet, patches, RESNET, target_class=0, n_samples=2, sigma=0.2, seed=7)
    again = smoothgrad(resnet, patches, RESNET, target_class=0, n_samples=2, sigma=0.2, seed=7)
    other = smoothgrad(resnet, patches, RESNET, target_class=0, n_samples=2, sigma=0.2, seed=8)
    assert first.shape == (2, P, P) and np.isfinite(first).all()
    assert first.min() >= 0.0 and first.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    assert not resnet.training


def test_smoothgrad_rejects_bad_input(resnet: nn.Module) -> None:
    patches = _random_patches(1, seed=5)
    with pytest.raises(BcpathError, match="target_class 3 out of range"):
        smoothgrad(resnet, patches, RESNET, target_class=3, n_samples=1)
    with pytest.raises(BcpathError, match="n_samples"):
        smoothgrad(resnet, patches, RESNET, target_class=0, n_samples=0)
    with pytest.raises(BcpathError, match="uint8"):
        smoothgrad(resnet, patches.float(), RESNET, target_class=0)
    with pytest.raises(BcpathError, match="expects 32 px"):
        smoothgrad(resnet, torch.zeros((1, 3, 16, 16), dtype=torch.uint8), RESNET, target_class=0)


def test_top_patches_and_saliency_montage() -> None:
    df = pd.DataFrame({"patch_id": np.arange(5), "p_0": [0.1, 0.9, 0.5, 0.95, 0.2], "p_1": np.zeros(5)})
    df.attrs["bcpath"] = {"patch_px": P}
    top = top_patches(df, 0, 2)
    assert top["patch_id"].tolist() == [3, 1]
    assert top.attrs["bcpath"] == {"patch_px": P}
    assert len(top_patches(df, 0, 10)) == 5
    with pytest.raises(BcpathError, match="no column p_2"):
        top_patches(df, 2, 1)

    patches = _random_patches(3, seed=6)
    maps = np.zeros((3, P, P), dtype=np.float32)
    maps[:, :, P // 2 :] = 1.0
    montage = saliency_montage(patches, maps, alpha=0.5)
    assert montage.shape == (3 * P, 2 * P, 3) and montage.dtype == np.uint8
    np.testing.assert_array_equal(montage[P : 2 * P, :P], patches[1].permute(1, 2, 0).numpy())
    overlay = montage[:P, P:].astype(int)
    patch = patches[0].permute(1, 2, 0).numpy().astype(int)
    # JET: 0 → dark blue (0, 0, 128), 1 → dark red (128, 0, 0), blended half and half.
    np.testing.assert_allclose(overlay[:, : P // 2], (patch[:, : P // 2] + [0, 0, 128]) / 2, atol=1.01)
    np.testing.assert_allclose(overlay[:, P // 2 :], (patch[:, P // 2 :] + [128, 0, 0]) / 2, atol=1.01)
    with pytest.raises(BcpathError, match="saliency maps of shape"):
        saliency_montage(patches, maps[:2])


# ------------------------------------------------------------------------------------------
# Embeddings and TCAV
# ------------------------------------------------------------------------------------------


def test_embed_resnet18_returns_the_fc_input(resnet: nn.Module) -> None:
    patches = _random_patches(3, seed=7)
    features = embed(resnet, RESNET, patches, batch_size=2)
    assert features.shape == (3, resnet.fc.in_features) == (3, 512)
    assert features.dtype == np.float32
    x = (patches.float() / 255 - torch.tensor(RESNET.mean).view(1, 3, 1, 1)) / torch.tensor(RESNET.std).view(1, 3, 1, 1)
    with torch.no_grad():
        trunk = nn.Sequential(*list(resnet.children())[:-1])  # everything but fc
        expected = torch.flatten(trunk(x), 1).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert features.std() > 0


@pytest.mark.parametrize(
    ("architecture", "patch_px", "width"),
    [("inception_v3", 80, 2048), ("densenet121", 32, 1024), ("mobilenet_v3_small", 32, 1024)],
)
def test_embed_and_gradients_on_other_architectures(architecture: str, patch_px: int, width: int) -> None:
    import dataclasses

    spec = dataclasses.replace(RESNET, architecture=architecture, patch_px=patch_px)
    torch.manual_seed(0)
    model = build_model(spec)
    patches = torch.randint(0, 256, (2, 3, patch_px, patch_px), dtype=torch.uint8)
    assert embed(model, spec, patches).shape == (2, width)
    gradients = logit_gradients(model, spec, patches, target_class=1)
    last = model.fc if hasattr(model, "fc") else model.classifier
    last = last[-1] if isinstance(last, nn.Sequential) else last
    # A Linear head: the gradient of logit 1 is its weight row, for every patch.
    np.testing.assert_allclose(gradients, np.broadcast_to(last.weight[1].detach().numpy(), (2, width)), atol=1e-6)


def test_embed_finds_sequential_heads_and_rejects_models_without_one() -> None:
    class SequentialHeadNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = SequentialHeadNet()
    patches = _solid(np.array([[255, 0, 0], [0, 255, 255]]))
    features = embed(model, TOY, patches)
    assert features.shape == (2, 5)  # input of the last Linear (after the ReLU)
    assert features.min() >= 0.0
    headless = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten())
    with pytest.raises(BcpathError, match="no final classifier module"):
        embed(headless, TOY, patches)


def test_tcav_scores_one_along_the_logit_direction_and_zero_against_it() -> None:
    model = ColourNet(_red_axis_fc())
    rng = np.random.default_rng(0)
    n = 30
    concept = _solid(np.stack([rng.integers(200, 256, n), rng.integers(0, 256, n), rng.integers(0, 256, n)], axis=1))
    random = _solid(rng.integers(0, 256, (60, 3)))
    klass = _solid(rng.integers(0, 256, (10, 3)))
    towards = tcav(model, TOY, concept, random, klass, target_class=0, n_runs=10, seed=0)
    against = tcav(model, TOY, concept, random, klass, target_class=1, n_runs=10, seed=0)
    assert len(towards["scores"]) == 10 and len(towards["random_scores"]) == 10
    assert towards["mean"] == pytest.approx(1.0) and towards["std"] == pytest.approx(0.0)
    assert against["mean"] == pytest.approx(0.0)
    assert towards["ci95"] == pytest.approx([1.0, 1.0])
    assert min(towards["cav_accuracy"]) > 0.7  # chance is 0.5; ~20 % of random patches are red too
    # Random-vs-random CAVs point anywhere: their scores vary and sit away from 0 and 1.
    assert 0.1 < towards["random_mean"] < 0.9 and towards["random_std"] > 0.1
    assert towards["p_value"] < 1e-3 and towards["significant"]
    assert against["p_value"] < 1e-3 and against["t_statistic"] < 0
    # Same random CAVs for both classes, mirrored scores (linear head: logit_1 = −logit_0).
    np.testing.assert_allclose(np.add(towards["random_scores"], against["random_scores"]), 1.0)


def test_tcav_fraction_follows_the_per_patch_gradient() -> None:
    """logit_0 = a_R · a_G: along the red CAV the derivative is a_G, so the score is the share
    of class patches with a green channel above the normalisation mean."""
    model = ColourNet(ProductHead())
    rng = np.random.default_rng(1)
    n = 24
    green_blue = rng.integers(0, 256, (n, 2))
    concept = _solid(np.column_stack([rng.integers(220, 256, n), green_blue]))
    random = _solid(np.column_stack([rng.integers(0, 256, 2 * n), rng.integers(0, 256, (2 * n, 2))]))
    greens = np.array([230, 220, 210, 200, 190, 180, 170, 40, 30, 20])  # 7 of 10 above 127.5
    klass = _solid(np.column_stack([np.full(10, 128), greens, np.full(10, 128)]))  # a_R ≈ 0
    gradients = logit_gradients(model, TOY, klass, target_class=0)
    np.testing.assert_allclose(gradients[:, 0], greens / 127.5 - 1, atol=1e-5)  # ∂/∂a_R = a_G
    result = tcav(model, TOY, concept, random, klass, target_class=0, n_runs=6, seed=3)
    np.testing.assert_allclose(result["scores"], 0.7)
    assert all(0.0 <= s <= 1.0 for s in result["random_scores"])
    lo, hi = result["ci95"]
    assert 0.0 <= lo <= result["mean"] <= hi <= 1.0


def test_tcav_on_resnet18_and_its_errors(resnet: nn.Module) -> None:
    concept, random, klass = _random_patches(4, 10), _random_patches(8, 11), _random_patches(3, 12)
    result = tcav(resnet, RESNET, concept, random, klass, target_class=2, n_runs=3, seed=0)
    assert len(result["scores"]) == 3
    assert all(s in (0.0, 1.0) for s in result["scores"])  # linear fc: one gradient for all
    assert 0.0 <= result["ci95"][0] <= result["mean"] <= result["ci95"][1] <= 1.0
    assert result["n_concept"] == 4 and result["n_random"] == 8 and result["n_class"] == 3
    with pytest.raises(BcpathError, match="random patches for 4 concept"):
        tcav(resnet, RESNET, concept, random[:3], klass, target_class=0, n_runs=2)
    with pytest.raises(BcpathError, match="at least 2"):
        tcav(resnet, RESNET, concept[:1], random, klass, target_class=0, n_runs=2)
    with pytest.raises(BcpathError, match="out of range"):
        tcav(resnet, RESNET, concept, random, klass, target_class=5, n_runs=2)


def test_concept_patches_from_folder(tmp_path: Path) -> None:
    import cv2

    image = np.zeros((32, 64, 3), dtype=np.uint8)  # RGB: left half red, right half blue
    image[:, :32, 0] = 255
    image[:, 32:, 2] = 255
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    big = np.full((80, 60, 3), 100, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "b.JPG"), big)
    cv2.imwrite(str(tmp_path / "c.tiff"), big)
    (tmp_path / "notes.txt").write_text("not an image")
    patches = concept_patches_from_folder(tmp_path, 32)
    assert patches.shape == (3, 3, 32, 32) and patches.dtype == torch.uint8
    first = patches[0].permute(1, 2, 0).numpy()  # centre crop of a.png: columns 16..47
    np.testing.assert_array_equal(first[:, :16], np.broadcast_to([255, 0, 0], (32, 16, 3)))
    np.testing.assert_array_equal(first[:, 16:], np.broadcast_to([0, 0, 255], (32, 16, 3)))
    assert np.abs(patches[1:].numpy().astype(int) - 100).max() <= 2  # JPEG
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BcpathError, match="holds no images"):
        concept_patches_from_folder(empty, 32)
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "x.txt").write_text("x")
    with pytest.raises(BcpathError, match=r"no images \(1 other file"):
        concept_patches_from_folder(only_text, 32)
    with pytest.raises(BcpathError, match="not found"):
        concept_patches_from_folder(tmp_path / "missing", 32)


# ------------------------------------------------------------------------------------------
# Clustering
# ------------------------------------------------------------------------------------------


def test_cluster_patches_recovers_separated_groups(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    truth = np.repeat(np.arange(3), 20)
    points = centres[truth] + rng.normal(0.0, 0.3, (60, 3))
    labels = cluster_patches(points, n_clusters=3, seed=0)
    assert labels.shape == (60,) and labels.dtype == np.int64
    for group in range(3):
        assert len(set(labels[truth == group])) == 1
    assert len(set(labels)) == 3
    with caplog.at_level(logging.WARNING, logger="bcpath.erpr.interpret"):
        few = cluster_patches(points[:4], n_clusters=25, seed=0)
    assert sorted(set(few.tolist())) == [0, 1, 2, 3]
    assert "4 patches < 25 clusters" in caplog.text
    with pytest.raises(BcpathError, match="shape"):
        cluster_patches(np.zeros((0, 3)))


def test_cluster_hierarchy_merges_the_two_alike_clusters_first() -> None:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    labels = np.repeat([7, 3, 5], [40, 30, 50])  # cluster ids need not be 0..C-1
    p_er = np.concatenate([rng.uniform(0.7, 0.9, 40), rng.uniform(0.72, 0.92, 30), rng.uniform(0.0, 0.2, 50)])
    p_pr = np.concatenate([rng.uniform(0.5, 0.6, 40), rng.uniform(0.5, 0.62, 30), rng.uniform(0.1, 0.3, 50)])

    def three(p: np.ndarray) -> np.ndarray:
        return np.column_stack([p, (1 - p) / 2, (1 - p) / 2])

    result = cluster_hierarchy(labels, {"ER": three(p_er), "PR": three(p_pr)})
    assert result["clusters"].tolist() == [3, 5, 7]
    assert result["sizes"].tolist() == [30, 50, 40]
    distance = result["distance"]
    np.testing.assert_allclose(distance, distance.T)
    np.testing.assert_allclose(np.diag(distance), 0.0)
    expected = wasserstein_distance(p_er[labels == 3], p_er[labels == 5]) + wasserstein_distance(
        p_pr[labels == 3], p_pr[labels == 5]
    )
    assert distance[0, 1] == pytest.approx(expected, rel=1e-9)
    assert distance[0, 2] < 0.1 < distance[0, 1]
    linkage = result["linkage"]
    assert linkage.shape == (2, 4)
    assert sorted(linkage[0, :2].astype(int).tolist()) == [0, 2]  # clusters 3 and 7 first
    assert linkage[0, 2] == pytest.approx(distance[0, 2])
    # Average linkage: {3, 7} to 5 is the mean of the two distances.
    assert linkage[1, 2] == pytest.approx((distance[0, 1] + distance[2, 1]) / 2)
    order = result["leaf_order"].tolist()
    assert sorted(order) == [3, 5, 7] and abs(order.index(3) - order.index(7)) == 1
    np.testing.assert_allclose(result["mean_p_positive"]["ER"], [p_er[labels == c].mean() for c in (3, 5, 7)])
    histograms = result["histograms"]["PR"]
    assert histograms.shape == (3, 10)
    np.testing.assert_allclose(histograms.sum(axis=1), 1.0)
    assert histograms[1, 1:3].sum() == pytest.approx(1.0)  # cluster 5's PR in [0.1, 0.3)
    with pytest.raises(BcpathError, match="biomarker ER"):
        cluster_hierarchy(labels, {"ER": three(p_er)[:10]})


def test_cluster_montage_grid() -> None:
    patches = _random_patches(7, seed=20)
    labels = np.array([1, 0, 1, 1, 2, 1, 1])
    grid = cluster_montage(patches, labels, cluster=1, max_patches=4)
    assert grid.shape == (2 * P, 2 * P, 3) and grid.dtype == np.uint8
    members = [0, 2, 3, 5]
    for slot, index in enumerate(members):
        r, c = divmod(slot, 2)
        np.testing.assert_array_equal(grid[r * P : (r + 1) * P, c * P : (c + 1) * P], patches[index].permute(1, 2, 0).numpy())
    three = cluster_montage(patches, labels, cluster=1, max_patches=3)
    assert three.shape == (2 * P, 2 * P, 3)
    assert (three[P:, P:] == 255).all()  # empty cell is white
    with pytest.raises(BcpathError, match="cluster 9 has no patches"):
        cluster_montage(patches, labels, cluster=9)
