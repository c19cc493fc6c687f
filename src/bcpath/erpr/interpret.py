"""Interpretability of the ER/PR/HER2 patch classifiers (Gamble et al. 2021, Commun. Med. 1:14).

Three methods, as in the paper's figures 4-6:

1. **SmoothGrad** (Smilkov et al. 2017) on the patches a model is most confident about:
   :func:`top_patches` picks them from a predictions table, :func:`smoothgrad` gives one
   saliency map per patch, :func:`saliency_montage` shows each patch next to its map.
2. **TCAV** (Kim et al. 2018) at the layer before the classifier (:func:`embed`): a concept
   (a folder of example patches, :func:`concept_patches_from_folder`) becomes a concept
   activation vector (CAV), the normal of a linear classifier separating the concept's
   activations from random patches' activations; the TCAV score of a class is the fraction of
   that class's patches whose target logit increases along the CAV. :func:`tcav` repeats this
   over ``n_runs`` random subsamples and tests the scores against CAVs of random-vs-random
   splits (two-sided t-test).
3. **Clustering** of patch embeddings (:func:`cluster_patches`, k-means) and an average-linkage
   hierarchy of the clusters by how alike their p(positive) distributions are for each
   biomarker (:func:`cluster_hierarchy`, 1-D earth mover's distance); :func:`cluster_montage`
   shows a cluster's patches.

Patches are (N, 3, P, P) uint8 RGB (a torch tensor or a numpy array), the form
:class:`bcpath.erpr.inference.PatchDataset` yields; P = ``spec.patch_px``. They are normalised
as the model expects (``(x / 255 − mean) / std``, :func:`bcpath.models.registry.preprocess`)
on the model's device. Class order of the 3-class models: 0 = biomarker-positive tumour,
1 = biomarker-negative tumour, 2 = non-tumour.

torch, scikit-learn and scipy are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bcpath.errors import BcpathError
from bcpath.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from bcpath.models.registry import ModelSpec

logger = logging.getLogger(__name__)

HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
"""Attribute names of the final classifier module, looked up in this order (torchvision:
``fc`` for resnet*/inception_v3/googlenet/regnet, ``classifier`` for densenet/vgg/mobilenet/
efficientnet/convnext, ``heads`` for vit, ``head`` for swin)."""


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _patches_tensor(patches: Any, patch_px: int | None, what: str = "patches") -> torch.Tensor:
    """(N, 3, P, P) uint8 CPU tensor from a tensor or array, checked."""
    import torch

    tensor = torch.as_tensor(patches).detach().cpu()
    if tensor.ndim != 4 or tensor.shape[1] != 3 or tensor.shape[2] != tensor.shape[3]:
        raise BcpathError(
            f"{what}: expected shape (N, 3, P, P) (RGB, channels first), got {tuple(tensor.shape)}; "
            "pass patches as PatchDataset yields them, stacked"
        )
    if tensor.dtype != torch.uint8:
        raise BcpathError(
            f"{what}: expected uint8 pixels (0-255), got {tensor.dtype}; pass the raw patches, "
            "not normalised tensors (normalisation happens here)"
        )
    if patch_px is not None and tensor.shape[2] != patch_px:
        raise BcpathError(
            f"{what}: patches are {tensor.shape[2]} px but the model expects {patch_px} px "
            "(spec.patch_px); read them at the model's patch size"
        )
    return tensor


def _patches_array(patches: Any, what: str = "patches") -> np.ndarray:
    """(N, 3, P, P) uint8 numpy array from a tensor or array, checked."""
    if hasattr(patches, "detach"):
        patches = patches.detach().cpu().numpy()
    array = np.asarray(patches)
    if array.ndim != 4 or array.shape[1] != 3:
        raise BcpathError(f"{what}: expected shape (N, 3, P, P), got {array.shape}; pass RGB patches channels first")
    if array.dtype != np.uint8:
        raise BcpathError(f"{what}: expected uint8 pixels, got {array.dtype}; pass the raw patches")
    return array


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU when it has none)."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _normalise(batch: torch.Tensor, spec: ModelSpec, device: torch.device) -> torch.Tensor:
    """(B, 3, P, P) uint8 → float32 ``(x / 255 − mean) / std`` on ``device``."""
    import torch

    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (batch.to(device).float() / 255.0 - mean) / std


def _logits(output: Any) -> torch.Tensor:
    """Logits of a model output (InceptionOutputs / GoogLeNetOutputs carry them in .logits)."""
    return getattr(output, "logits", output)  # type: ignore[no-any-return]


def _check_class(target_class: int, n_outputs: int, spec: ModelSpec) -> None:
    if not 0 <= target_class < n_outputs:
        raise BcpathError(
            f"model {spec.model_id}: target_class {target_class} out of range; the model has "
            f"{n_outputs} outputs ({', '.join(spec.classes)}), pick 0..{n_outputs - 1}"
        )


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block; restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise BcpathError(f"{name} must be at least 1, got {value}")


# --------------------------------------------------------------------------------------------
# 1. SmoothGrad
# --------------------------------------------------------------------------------------------


def smoothgrad(
    model: torch.nn.Module,
    patches_uint8: Any,
    spec: ModelSpec,
    target_class: int,
    n_samples: int = 8,
    sigma: float = 0.15,
    seed: int = 0,
    batch_size: int = 16,
) -> np.ndarray:
    """SmoothGrad saliency maps of one class's logit (Smilkov et al. 2017).

    For each patch x (normalised as the model expects), ``n_samples`` noisy copies
    ``x + ε``, ε ~ N(0, (sigma · (max x − min x))²) per pixel and channel, are differentiated:
    saliency = mean over copies of |∂ logit_target / ∂ input|, then the maximum over the three
    channels, then each map min-max scaled to [0, 1] (a constant map becomes all zeros).

    Args:
        model: (B, 3, P, P) normalised float → (B, K) logits; used in eval mode (its training
            flag is restored afterwards) on the device of its parameters.
        patches_uint8: (N, 3, P, P) uint8 RGB, P = ``spec.patch_px``.
        spec: the model's registry entry (mean/std, patch_px).
        target_class: index of the logit to explain (0 = biomarker-positive tumour).
        n_samples: noisy copies per patch (≥ 1).
        sigma: noise level as a fraction of each patch's normalised value range (≥ 0; 0 gives
            plain gradient magnitudes).
        seed: seed of the noise (torch.Generator on CPU; same seed, same maps).
        batch_size: patches per backward pass.

    Returns:
        (N, P, P) float32 in [0, 1].

    Raises:
        BcpathError: patches of the wrong shape/dtype/size, target_class out of range,
            n_samples < 1 or sigma < 0.
    """
    import torch

    patches = _patches_tensor(patches_uint8, spec.patch_px)
    _check_positive("smoothgrad n_samples", n_samples)
    _check_positive("smoothgrad batch_size", batch_size)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise BcpathError(f"smoothgrad sigma must be a finite number ≥ 0 (fraction of the input range), got {sigma}")
    n, _, size, _ = patches.shape
    maps = np.zeros((n, size, size), dtype=np.float32)
    device = _model_device(model)
    generator = torch.Generator().manual_seed(int(seed))
    with _eval_mode(model), torch.enable_grad():
        for start in range(0, n, batch_size):
            x = _normalise(patches[start : start + batch_size], spec, device)
            b = x.shape[0]
            spread = (x.reshape(b, -1).amax(dim=1) - x.reshape(b, -1).amin(dim=1)).view(b, 1, 1, 1)
            total = torch.zeros_like(x)
            for _ in range(n_samples):
                noise = torch.randn(x.shape, generator=generator).to(device) * (sigma * spread)
                noisy = (x + noise).requires_grad_(True)
                logits = _logits(model(noisy))
                _check_class(target_class, int(logits.shape[1]), spec)
                (grad,) = torch.autograd.grad(logits[:, target_class].sum(), noisy)
                total += grad.abs()
            saliency = (total / n_samples).amax(dim=1)  # (b, P, P)
            low = saliency.reshape(b, -1).amin(dim=1).view(b, 1, 1)
            high = saliency.reshape(b, -1).amax(dim=1).view(b, 1, 1)
            span = high - low
            scaled = torch.where(span > 0, (saliency - low) / span.clamp_min(1e-30), torch.zeros_like(saliency))
            maps[start : start + b] = scaled.detach().cpu().numpy().astype(np.float32)
    return maps


def top_patches(predictions_df: pd.DataFrame, class_index: int, k: int) -> pd.DataFrame:
    """The ``k`` patches with the highest probability of one class.

    Args:
        predictions_df: ``predict_slide`` / ``read_predictions`` output (columns p_0, p_1, ...).
        class_index: the class (0 = biomarker-positive tumour).
        k: number of rows (≥ 1; fewer when the table is shorter).

    Returns:
        Those rows, all columns kept, sorted by ``p_{class_index}`` descending (ties: table
        order); ``attrs`` are kept.

    Raises:
        BcpathError: no column ``p_{class_index}`` or k < 1.
    """
    column = f"p_{class_index}"
    if column not in predictions_df.columns:
        have = [c for c in predictions_df.columns if str(c).startswith("p_")]
        raise BcpathError(
            f"predictions have no column {column} (probability columns: {have or 'none'}); "
            "pass predict_slide / read_predictions output and a class index the model has"
        )
    _check_positive("top_patches k", k)
    top = predictions_df.sort_values(column, ascending=False, kind="stable").head(k)
    top.attrs = dict(predictions_df.attrs)
    return top


def _colormap_jet(values: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] → (H, W, 3) uint8 RGB (OpenCV's JET)."""
    import cv2

    scaled = np.clip(np.nan_to_num(values) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB))


def saliency_montage(patches_uint8: Any, saliency_maps: npt.ArrayLike, alpha: float = 0.5) -> np.ndarray:
    """Each patch beside its saliency overlay, one row per patch.

    Args:
        patches_uint8: (N, 3, P, P) uint8 RGB.
        saliency_maps: (N, P, P) in [0, 1] (:func:`smoothgrad`).
        alpha: weight of the colour-mapped saliency (JET: blue 0 → red 1) in the overlay.

    Returns:
        (N · P, 2 · P, 3) uint8: columns [0, P) the patch, [P, 2P) the overlay
        ``(1 − alpha) · patch + alpha · jet(saliency)``.

    Raises:
        BcpathError: shapes that do not match, or no patches.
    """
    patches = _patches_array(patches_uint8)
    maps = np.asarray(saliency_maps, dtype=np.float32)
    n, _, size, width = patches.shape
    if maps.shape != (n, size, width):
        raise BcpathError(
            f"saliency_montage: {n} patches of {size}×{width} px but saliency maps of shape "
            f"{maps.shape}; pass smoothgrad's output for the same patches"
        )
    if n == 0:
        raise BcpathError("saliency_montage: no patches; pass at least one patch")
    rows = []
    for patch, saliency in zip(patches, maps, strict=True):
        rgb = np.transpose(patch, (1, 2, 0)).astype(np.float32)
        overlay = (1.0 - alpha) * rgb + alpha * _colormap_jet(saliency).astype(np.float32)
        rows.append(np.concatenate([rgb, overlay], axis=1))
    return np.clip(np.concatenate(rows, axis=0) + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# 2. Embeddings and TCAV
# --------------------------------------------------------------------------------------------


def _head_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose input is the penultimate activation (the final classifier).

    ``model.fc`` / ``.classifier`` / ``.heads`` / ``.head`` (first present); a Sequential
    there stands for its last Linear layer (vgg, mobilenet, efficientnet, convnext, vit).
    """
    import torch

    for name in HEAD_ATTRIBUTES:
        head = getattr(model, name, None)
        if not isinstance(head, torch.nn.Module):
            continue
        if isinstance(head, torch.nn.Sequential):
            linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
            if linears:
                return linears[-1]
            continue
        return head
    raise BcpathError(
        f"{type(model).__name__}: no final classifier module found (looked for attributes "
        f"{', '.join(HEAD_ATTRIBUTES)}; a Sequential there must end in a Linear layer); use a "
        "torchvision classifier such as resnet*, inception_v3, densenet* or vgg*, or give the "
        "model an `fc` attribute holding its last layer"
    )


@contextlib.contextmanager
def _capture_head_input(model: torch.nn.Module, as_leaf: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Record the head's input in ``store["a"]`` on each forward pass.

    With ``as_leaf`` the activation is detached and made a leaf that requires grad, so the
    logits can be differentiated with respect to it (and not beyond it).
    """
    head = _head_module(model)
    store: dict[str, torch.Tensor] = {}

    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        activation = args[0]
        if as_leaf:
            activation = activation.detach().requires_grad_(True)
        store["a"] = activation
        return (activation, *args[1:])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def embed(model: torch.nn.Module, spec: ModelSpec, patches_uint8: Any, batch_size: int = 32) -> np.ndarray:
    """Penultimate activations: the input of the model's final classifier layer.

    Args:
        model: a torchvision classifier (resnet*, inception_v3, googlenet, densenet*, vgg*,
            mobilenet, efficientnet, convnext, vit, swin) or any model with an ``fc`` /
            ``classifier`` / ``heads`` / ``head`` attribute; used in eval mode.
        spec: the model's registry entry.
        patches_uint8: (N, 3, P, P) uint8 RGB, P = ``spec.patch_px``.
        batch_size: patches per forward pass.

    Returns:
        (N, D) float32, D = the classifier's input width (512 for resnet18, 2048 for
        inception_v3 and resnet50, 1024 for densenet121, 4096 for vgg16).

    Raises:
        BcpathError: no classifier module found, or patches of the wrong shape/dtype/size.
    """
    import torch

    patches = _patches_tensor(patches_uint8, spec.patch_px)
    _check_positive("embed batch_size", batch_size)
    device = _model_device(model)
    chunks: list[np.ndarray] = []
    with _eval_mode(model), _capture_head_input(model, as_leaf=False) as store, torch.no_grad():
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size]
            model(_normalise(batch, spec, device))
            chunks.append(store["a"].reshape(len(batch), -1).float().cpu().numpy())
    if not chunks:
        with _eval_mode(model), _capture_head_input(model, as_leaf=False) as store, torch.no_grad():
            size = spec.patch_px
            model(torch.zeros((1, 3, size, size), device=device))
            width = int(store["a"].reshape(1, -1).shape[1])
        return np.zeros((0, width), dtype=np.float32)
    return np.concatenate(chunks, axis=0).astype(np.float32)


def logit_gradients(
    model: torch.nn.Module, spec: ModelSpec, patches_uint8: Any, target_class: int, batch_size: int = 32
) -> np.ndarray:
    """Gradient of one logit with respect to the penultimate activation, per patch.

    The directional derivative of TCAV along a CAV v is ``gradients @ v``. For a plain Linear
    classifier this gradient is the class's weight row for every patch.

    Returns:
        (N, D) float32.
    """
    import torch

    patches = _patches_tensor(patches_uint8, spec.patch_px)
    _check_positive("batch_size", batch_size)
    device = _model_device(model)
    chunks: list[np.ndarray] = []
    with _eval_mode(model), _capture_head_input(model, as_leaf=True) as store, torch.enable_grad():
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size]
            logits = _logits(model(_normalise(batch, spec, device)))
            _check_class(target_class, int(logits.shape[1]), spec)
            (grad,) = torch.autograd.grad(logits[:, target_class].sum(), store["a"])
            chunks.append(grad.reshape(len(batch), -1).float().cpu().numpy())
    if not chunks:
        raise BcpathError("logit_gradients: no patches; pass at least one patch of the class")
    return np.concatenate(chunks, axis=0).astype(np.float32)


def _fit_cav(positive: np.ndarray, negative: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Unit normal of a logistic regression separating ``positive`` (1) from ``negative`` (0),
    pointing towards ``positive``; and its training accuracy."""
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate([positive, negative], axis=0).astype(np.float64)
    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    classifier = LogisticRegression(max_iter=2000, random_state=seed)
    classifier.fit(features, labels)
    coefficients = np.asarray(classifier.coef_[0], dtype=np.float64)
    norm = float(np.linalg.norm(coefficients))
    if norm == 0.0 or not math.isfinite(norm):
        logger.warning("TCAV: a linear classifier found no direction (zero coefficients); its CAV is zero")
        cav = np.zeros_like(coefficients)
    else:
        cav = coefficients / norm
    return cav, float(classifier.score(features, labels))


def tcav(
    model: torch.nn.Module,
    spec: ModelSpec,
    concept_patches: Any,
    random_patches: Any,
    class_patches: Any,
    target_class: int,
    n_runs: int = 20,
    seed: int = 0,
    batch_size: int = 32,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """TCAV score of a concept for one class, at the layer before the classifier (Kim et al. 2018).

    Activations ``a`` are :func:`embed`'s. Run r (``numpy.random.default_rng([seed, r])``):

    - concept CAV: logistic regression (scikit-learn, L2, C = 1) on the concept patches'
      activations (label 1) against as many random patches, drawn without replacement from
      ``random_patches``; CAV = its coefficient vector / its norm (points towards the concept);
    - random CAV: the same with the random patches split at random into two halves;
    - score = fraction of ``class_patches`` with ∇ₐ logit_target · CAV > 0 (strictly).

    The concept's scores are compared with the random CAVs' scores by a two-sided Student's
    (equal-variance) t-test (``scipy.stats.ttest_ind``), as in Kim et al.; the p-value is NaN
    when both sets of scores are constant and equal. Note: when the classifier is one Linear
    layer the gradient is the same for every patch, so each run's score is 0 or 1.

    Args:
        model: the classifier (see :func:`embed` for the architectures).
        spec: its registry entry.
        concept_patches: (Nc, 3, P, P) uint8 examples of the concept (≥ 2).
        random_patches: (Nr, 3, P, P) uint8 random patches, Nr ≥ max(Nc, 4).
        class_patches: (Nk, 3, P, P) uint8 patches of the class being explained (≥ 1).
        target_class: the logit whose sensitivity is measured.
        n_runs: number of CAVs (≥ 2 for a spread and a test).
        seed: base seed of the subsampling and the classifiers.
        batch_size: patches per forward pass.
        alpha: significance level of ``significant``.

    Returns:
        dict with ``target_class``, ``n_runs``, ``n_concept``, ``n_random``, ``n_class``,
        ``scores`` (n_runs floats in [0, 1]), ``mean``, ``std`` (ddof = 1; 0 for one run),
        ``ci95`` ([low, high], t-interval of the mean over runs, clipped to [0, 1]),
        ``cav_accuracy`` (training accuracy of each concept classifier), ``random_scores``,
        ``random_mean``, ``random_std``, ``t_statistic``, ``p_value`` and ``significant``
        (p < alpha). Plain Python numbers and lists.

    Raises:
        BcpathError: too few patches, patches of the wrong shape, target_class out of range.
    """
    from scipy import stats

    _check_positive("tcav n_runs", n_runs)
    concept = _patches_tensor(concept_patches, spec.patch_px, "concept patches")
    random = _patches_tensor(random_patches, spec.patch_px, "random patches")
    klass = _patches_tensor(class_patches, spec.patch_px, "class patches")
    n_concept, n_random, n_class = len(concept), len(random), len(klass)
    if n_concept < 2:
        raise BcpathError(f"TCAV: {n_concept} concept patch(es); give at least 2 (Kim et al. use ~50 or more)")
    if n_random < max(n_concept, 4):
        raise BcpathError(
            f"TCAV: {n_random} random patches for {n_concept} concept patches; give at least "
            f"{max(n_concept, 4)} (as many as the concept patches, and 4 for the random-vs-random "
            "baseline) so each run can draw a random set of the concept's size"
        )
    if n_class < 1:
        raise BcpathError("TCAV: no class patches; give patches of the class being explained")

    concept_a = embed(model, spec, concept, batch_size)
    random_a = embed(model, spec, random, batch_size)
    gradients = logit_gradients(model, spec, klass, target_class, batch_size).astype(np.float64)

    scores: list[float] = []
    random_scores: list[float] = []
    accuracies: list[float] = []
    half = n_random // 2
    for run in range(n_runs):
        rng = np.random.default_rng([int(seed), run])
        drawn = rng.choice(n_random, size=n_concept, replace=False)
        cav, accuracy = _fit_cav(concept_a, random_a[drawn], seed + run)
        scores.append(float(np.mean(gradients @ cav > 0)))
        accuracies.append(accuracy)
        order = rng.permutation(n_random)
        random_cav, _ = _fit_cav(random_a[order[:half]], random_a[order[half : 2 * half]], seed + run)
        random_scores.append(float(np.mean(gradients @ random_cav > 0)))

    values = np.asarray(scores)
    baseline = np.asarray(random_scores)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n_runs > 1 else 0.0
    if n_runs > 1:
        margin = float(stats.t.ppf(0.975, n_runs - 1)) * std / math.sqrt(n_runs)
    else:
        margin = 0.0
    ci95 = [max(0.0, mean - margin), min(1.0, mean + margin)]
    if n_runs > 1 and (values.std() > 0 or baseline.std() > 0):
        with warnings.catch_warnings():  # one constant set of scores: valid, but scipy warns
            warnings.simplefilter("ignore", RuntimeWarning)
            test = stats.ttest_ind(values, baseline)
        t_statistic, p_value = float(test.statistic), float(test.pvalue)
    elif n_runs > 1 and values.mean() != baseline.mean():
        # Both constant but different: the difference is certain (t = ±inf).
        t_statistic, p_value = math.copysign(math.inf, values.mean() - baseline.mean()), 0.0
    else:
        t_statistic, p_value = math.nan, math.nan
    return {
        "target_class": int(target_class),
        "n_runs": int(n_runs),
        "n_concept": int(n_concept),
        "n_random": int(n_random),
        "n_class": int(n_class),
        "scores": scores,
        "mean": mean,
        "std": std,
        "ci95": ci95,
        "cav_accuracy": accuracies,
        "random_scores": random_scores,
        "random_mean": float(baseline.mean()),
        "random_std": float(baseline.std(ddof=1)) if n_runs > 1 else 0.0,
        "t_statistic": t_statistic,
        "p_value": p_value,
        "significant": bool(p_value < alpha) if math.isfinite(p_value) else False,
    }


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BcpathError(f"concept image {path} could not be read; save it as an 8-bit RGB PNG, JPEG or TIFF")
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def _resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Scale the shorter side to ``size`` (area when shrinking, bilinear when enlarging), then
    take the central ``size`` × ``size`` square."""
    import cv2

    height, width = image.shape[:2]
    scale = size / min(height, width)
    if scale != 1.0:
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def concept_patches_from_folder(folder: str | os.PathLike[str], patch_px: int) -> torch.Tensor:
    """Concept example images of a folder as patches.

    Reads every ``*.png``, ``*.jpg``, ``*.jpeg``, ``*.tif``, ``*.tiff`` (any case) directly in
    ``folder``, sorted by name; each is scaled so its shorter side is ``patch_px`` and
    centre-cropped to a square. The images should already be at the model's µm/px.

    Returns:
        (N, 3, patch_px, patch_px) uint8 RGB tensor.

    Raises:
        BcpathError: folder missing, no images in it, or an unreadable image.
    """
    import torch

    _check_positive("patch_px", patch_px)
    directory = Path(folder).expanduser()
    if not directory.is_dir():
        raise BcpathError(f"concept folder not found: {directory}; give a folder of concept example images")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sum(1 for p in directory.iterdir() if p.is_file())
        raise BcpathError(
            f"concept folder {directory} holds no images ({others} other file(s)); put the "
            f"concept's example patches there as {', '.join(IMAGE_SUFFIXES)} files"
        )
    patches = [np.transpose(_resize_center_crop(_read_rgb(p), patch_px), (2, 0, 1)) for p in files]
    return torch.from_numpy(np.ascontiguousarray(np.stack(patches).astype(np.uint8)))


# --------------------------------------------------------------------------------------------
# 3. Clustering of embeddings
# --------------------------------------------------------------------------------------------


def cluster_patches(embeddings: npt.ArrayLike, n_clusters: int = 25, seed: int = 0) -> np.ndarray:
    """k-means clusters of patch embeddings (scikit-learn KMeans, n_init = 10).

    Args:
        embeddings: (N, D) e.g. :func:`embed`'s output.
        n_clusters: number of clusters; fewer than N patches clamps it to N (with a warning).
        seed: KMeans random_state.

    Returns:
        (N,) int64 labels in 0..n_clusters − 1.

    Raises:
        BcpathError: not a 2-D array, no rows, non-finite values, or n_clusters < 1.
    """
    from sklearn.cluster import KMeans

    features = np.asarray(embeddings, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] == 0:
        raise BcpathError(f"cluster_patches: expected (N, D) embeddings with N ≥ 1, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise BcpathError("cluster_patches: embeddings hold NaN or inf; check the model's outputs")
    _check_positive("cluster_patches n_clusters", n_clusters)
    k = n_clusters
    if features.shape[0] < n_clusters:
        k = features.shape[0]
        logger.warning("cluster_patches: %d patches < %d clusters; using %d clusters", k, n_clusters, k)
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed)
    return np.asarray(kmeans.fit_predict(features), dtype=np.int64)


def cluster_hierarchy(
    labels: npt.ArrayLike,
    probabilities_by_biomarker: Mapping[str, npt.ArrayLike],
    positive_class: int = 0,
    bins: int = 10,
) -> dict[str, Any]:
    """Hierarchy of clusters by how alike their p(positive) distributions are (Gamble et al. Fig. 6).

    For clusters i, j: distance = Σ over biomarkers of the 1-D earth mover's distance
    (``scipy.stats.wasserstein_distance``) between the p(positive) values of their patches.
    The clusters are joined by average linkage (``scipy.cluster.hierarchy.linkage``,
    method="average", on the condensed distance matrix).

    Args:
        labels: (N,) integer cluster label of each patch (:func:`cluster_patches`).
        probabilities_by_biomarker: biomarker name (e.g. "ER") → (N, K) class probabilities of
            the same patches from that biomarker's model (columns p_0..p_{K-1}).
        positive_class: the column holding p(positive).
        bins: histogram bins on [0, 1].

    Returns:
        dict with ``clusters`` (C sorted cluster labels; row/column i of the matrices and leaf
        i of the linkage is ``clusters[i]``), ``sizes`` (C,), ``mean_p_positive`` (biomarker →
        (C,)), ``histograms`` (biomarker → (C, bins), each row sums to 1), ``bin_edges``
        (bins + 1,), ``distance`` (C, C) symmetric with zero diagonal, ``linkage``
        (C − 1, 4) scipy linkage matrix (indices into ``clusters``; empty for C = 1) and
        ``leaf_order`` (cluster labels in dendrogram order).

    Raises:
        BcpathError: no biomarkers, or arrays whose lengths or columns do not match.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform
    from scipy.stats import wasserstein_distance

    label_array = np.asarray(labels)
    if label_array.ndim != 1 or label_array.size == 0:
        raise BcpathError(f"cluster_hierarchy: expected (N,) labels with N ≥ 1, got shape {label_array.shape}")
    if not probabilities_by_biomarker:
        raise BcpathError("cluster_hierarchy: no biomarkers; pass {name: (N, 3) probabilities}")
    _check_positive("cluster_hierarchy bins", bins)
    positives: dict[str, np.ndarray] = {}
    for name, probabilities in probabilities_by_biomarker.items():
        array = np.asarray(probabilities, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] != label_array.size or not 0 <= positive_class < array.shape[1]:
            raise BcpathError(
                f"cluster_hierarchy: biomarker {name}: probabilities of shape {array.shape} for "
                f"{label_array.size} labelled patches and positive class {positive_class}; pass "
                "(N, K) probabilities of the same patches, in the same order"
            )
        positives[name] = array[:, positive_class]
    clusters = np.unique(label_array)
    members = [label_array == c for c in clusters]
    n = len(clusters)
    edges = np.linspace(0.0, 1.0, bins + 1)
    histograms: dict[str, np.ndarray] = {}
    means: dict[str, np.ndarray] = {}
    for name, p in positives.items():
        counts = np.stack([np.histogram(np.clip(p[m], 0.0, 1.0), bins=edges)[0] for m in members]).astype(np.float64)
        histograms[name] = counts / counts.sum(axis=1, keepdims=True)
        means[name] = np.array([float(p[m].mean()) for m in members])
    distance = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            d = sum(float(wasserstein_distance(p[members[i]], p[members[j]])) for p in positives.values())
            distance[i, j] = distance[j, i] = d
    if n >= 2:
        tree = linkage(squareform(distance, checks=False), method="average")
        order = leaves_list(tree)
    else:
        tree = np.zeros((0, 4), dtype=np.float64)
        order = np.zeros(1, dtype=np.int64)
    return {
        "clusters": clusters,
        "sizes": np.array([int(m.sum()) for m in members], dtype=np.int64),
        "mean_p_positive": means,
        "histograms": histograms,
        "bin_edges": edges,
        "distance": distance,
        "linkage": np.asarray(tree, dtype=np.float64),
        "leaf_order": clusters[np.asarray(order, dtype=np.int64)],
    }


def cluster_montage(
    patches_uint8: Any, labels: npt.ArrayLike, cluster: int, max_patches: int = 16
) -> np.ndarray:
    """A grid of (the first ``max_patches``) patches of one cluster, in patch order.

    Args:
        patches_uint8: (N, 3, P, P) uint8 RGB.
        labels: (N,) cluster labels.
        cluster: the cluster to show.
        max_patches: at most this many patches.

    Returns:
        (rows · P, cols · P, 3) uint8 with cols = ceil(sqrt(n)), rows = ceil(n / cols) for the
        n patches shown, filled row by row; empty cells are white.

    Raises:
        BcpathError: lengths that differ, or a cluster without patches.
    """
    patches = _patches_array(patches_uint8)
    label_array = np.asarray(labels)
    if label_array.shape != (len(patches),):
        raise BcpathError(
            f"cluster_montage: {len(patches)} patches but labels of shape {label_array.shape}; "
            "pass one label per patch"
        )
    _check_positive("cluster_montage max_patches", max_patches)
    chosen = np.flatnonzero(label_array == cluster)[:max_patches]
    if chosen.size == 0:
        raise BcpathError(
            f"cluster_montage: cluster {cluster} has no patches (clusters: "
            f"{np.unique(label_array).tolist()}); pick one of those"
        )
    n = int(chosen.size)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    size_y, size_x = patches.shape[2], patches.shape[3]
    grid = np.full((rows * size_y, cols * size_x, 3), 255, dtype=np.uint8)
    for slot, index in enumerate(chosen):
        r, c = divmod(slot, cols)
        grid[r * size_y : (r + 1) * size_y, c * size_x : (c + 1) * size_x] = np.transpose(patches[index], (1, 2, 0))
    return grid
