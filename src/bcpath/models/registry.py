"""The model registry: model ids tied to architecture, classes, resolution and checked weights.

``models/registry.yaml`` is data (like torchvision's weight recipes or timm's pretrained cfgs):
each entry says which torchvision architecture to build, the class names in output order, the
µm/px and patch size the model expects, the input normalisation, the weights file with its
sha256, the licence and the exact command that produced the weights. Nothing is downloaded:
weights come from the registry's folder or from a local file a user names.

torch and torchvision are imported inside the functions that need them so that reading the
registry (e.g. in a Snakemake dry run) stays fast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bcpath.errors import BcpathError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_ARCHITECTURE = "inception_v3"

MODEL_KINDS: tuple[str, ...] = ("patch_classifier", "tumor_locnet", "mitosis_classifier")
"""Registry kinds: torchvision patch classifiers (ER/PR/HER2 stage 1) and bcpath's own nets
(:mod:`bcpath.models.nets`): the proliferation system's tumour LocNet and mitosis classifier."""


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes:
        model_id: the entry's id (key in registry.yaml), used in output paths and messages.
        architecture: torchvision classification model name, e.g. ``"inception_v3"``.
        classes: class names in the order of the model's outputs.
        mpp: input resolution in µm/px.
        patch_px: input patch side in pixels at ``mpp``.
        mean: per-channel (R, G, B) normalisation mean for inputs in [0, 1].
        std: per-channel (R, G, B) normalisation standard deviation.
        weights: weights file relative to the models folder; None until a training rule makes it.
        sha256: sha256 of the weights file; None exactly when ``weights`` is None.
        licence: licence of the weights.
        training_command: the exact command that produced the weights.
        description: one line on what the model does ("" when not given).
        kind: one of :data:`MODEL_KINDS` (default ``patch_classifier``).
        arguments: constructor arguments of the architecture (bcpath's own nets), e.g.
            ``{"width": 32}``; empty for torchvision classifiers.
        card: model card file relative to the models folder (None when not given).
    """

    model_id: str
    architecture: str
    classes: tuple[str, ...]
    mpp: float
    patch_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str | None
    sha256: str | None
    licence: str
    training_command: str
    description: str = ""
    kind: str = "patch_classifier"
    arguments: dict[str, Any] = field(default_factory=dict)
    card: str | None = None

    @property
    def num_classes(self) -> int:
        """Number of outputs of the classifier head."""
        return len(self.classes)


def _error_location(error: Any) -> tuple[str | None, str]:
    """(entry id, field) named by a jsonschema error on the registry document."""
    path = [str(p) for p in error.absolute_path]
    entry = path[1] if len(path) >= 2 and path[0] == "models" else None
    if error.validator == "required":
        missing = [p for p in error.validator_value if p not in (error.instance or {})]
        field = ", ".join(missing) if missing else "?"
    elif error.validator == "additionalProperties" and len(path) == 2:
        allowed = set(error.schema.get("properties", {}))
        field = ", ".join(sorted(k for k in error.instance if k not in allowed)) or "?"
    elif error.validator == "propertyNames":
        field = "id"
    else:
        field = ".".join(path[2:]) if len(path) > 2 else "/".join(path) or "document"
    return entry, field


def load_registry(path: str | os.PathLike[str]) -> dict[str, ModelSpec]:
    """Read and validate a model registry (``models/registry.yaml``).

    Args:
        path: the registry YAML file.

    Returns:
        Model id → :class:`ModelSpec`, in file order.

    Raises:
        BcpathError: the file is missing or not YAML, or an entry breaks the schema
            (``src/bcpath/schemas/registry.schema.yaml``); the message names the file, the entry
            and the field.
    """
    import jsonschema
    import yaml

    from bcpath.cohort import load_schema

    file = Path(path).expanduser()
    if not file.is_file():
        raise BcpathError(f"model registry not found: {file}; pass the path of models/registry.yaml")
    try:
        document = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise BcpathError(f"model registry {file}: not valid YAML ({exc}); fix the syntax") from exc
    schema = load_schema("registry")
    validator = jsonschema.Draft202012Validator(schema)
    # Report a field's own problem before a consequence of it (the weights ⇒ sha256 rule).
    errors = sorted(
        validator.iter_errors(document),
        key=lambda e: (
            bool({"then", "else"} & set(map(str, e.absolute_schema_path))),
            list(map(str, e.absolute_path)),
            str(e.message),
        ),
    )
    if errors:
        error = errors[0]
        entry, field = _error_location(error)
        where = f"model registry {file}" + (f", entry {entry}" if entry else "")
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise BcpathError(
            f"{where}: field {field}: {error.message}{more}; "
            f"see src/bcpath/schemas/registry.schema.yaml for what each field must hold"
        )
    specs: dict[str, ModelSpec] = {}
    for model_id, entry in document["models"].items():
        specs[model_id] = ModelSpec(
            model_id=model_id,
            architecture=entry["architecture"],
            classes=tuple(entry["classes"]),
            mpp=float(entry["mpp"]),
            patch_px=int(entry["patch_px"]),
            mean=(float(entry["mean"][0]), float(entry["mean"][1]), float(entry["mean"][2])),
            std=(float(entry["std"][0]), float(entry["std"][1]), float(entry["std"][2])),
            weights=entry["weights"],
            sha256=entry["sha256"],
            licence=entry["licence"],
            training_command=entry["training_command"],
            description=entry.get("description", ""),
            kind=entry.get("kind", "patch_classifier"),
            arguments=dict(entry.get("arguments") or {}),
            card=entry.get("card"),
        )
    return specs


def preprocess(spec: ModelSpec) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The input normalisation of a model as ``(mean, std)``.

    The model expects float tensors of shape (N, 3, H, W), RGB channels in [0, 1] (uint8 / 255),
    H = W = ``spec.patch_px`` at ``spec.mpp`` µm/px, normalised per channel as
    ``(x - mean[c]) / std[c]`` (e.g. ``torchvision.transforms.v2.Normalize(mean, std)``).

    Returns:
        (mean, std), each an (R, G, B) tuple of floats.
    """
    return spec.mean, spec.std


def _load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """torch.load a state_dict safely (weights_only=True: no arbitrary pickled objects)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise BcpathError(
            f"{what}: {path} is not a loadable state_dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); only tensors are loaded "
            "(torch.load weights_only=True) — save weights with bcpath.models.save_weights "
            "or torch.save(model.state_dict(), path)"
        ) from exc
    # Common checkpoint wrappers: {"state_dict": ...} (Lightning) or {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BcpathError(
            f"{what}: {path} holds a {type(state).__name__}, not a state_dict of tensors; "
            "save weights with torch.save(model.state_dict(), path)"
        )
    return state


def build_model(spec: ModelSpec, pretrained_path: str | os.PathLike[str] | None = None) -> torch.nn.Module:
    """Build the registry entry's architecture with a ``len(spec.classes)``-way head.

    Never downloads anything (``weights=None`` always). To start from a local checkpoint (an
    ImageNet or pathology model), pass ``pretrained_path``: tensors whose names and shapes match
    are loaded; the others (typically the classifier head, whose class count differs) are
    skipped and logged.

    Args:
        spec: the registry entry.
        pretrained_path: optional local state_dict file (torch.save) to initialise from.

    Returns:
        The model in eval mode on CPU. Input: (N, 3, H, W) float, see :func:`preprocess`;
        output: (N, num_classes) logits.

    Raises:
        BcpathError: unknown architecture, unreadable checkpoint, or a checkpoint sharing no
            tensor with the architecture.
    """
    if spec.kind != "patch_classifier":
        return _build_own_net(spec, pretrained_path)
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if spec.architecture not in available:
        raise BcpathError(
            f"model {spec.model_id}: unknown architecture {spec.architecture!r}; use a torchvision "
            f"classification model name, e.g. {DEFAULT_ARCHITECTURE}, resnet50, densenet121"
        )
    kwargs: dict[str, Any] = {}
    if spec.architecture == "inception_v3":
        # No auxiliary head (the seed paper's classifier uses the main logits only) and default
        # PyTorch init instead of the slow truncated-normal init (weights are loaded or trained).
        kwargs.update(aux_logits=False, init_weights=False)
    elif spec.architecture == "googlenet":
        kwargs.update(aux_logits=False, init_weights=False)
    model: torch.nn.Module = torchvision.models.get_model(
        spec.architecture, weights=None, num_classes=spec.num_classes, **kwargs
    )
    if pretrained_path is not None:
        checkpoint = Path(pretrained_path).expanduser()
        what = f"model {spec.model_id}: pretrained checkpoint"
        if not checkpoint.is_file():
            raise BcpathError(f"{what} not found: {checkpoint}; give the path of a local file (nothing is downloaded)")
        state = _load_state_dict(checkpoint, what)
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
        unexpected = sorted(k for k in state if k not in own)
        if not usable:
            raise BcpathError(
                f"{what} {checkpoint} shares no tensor (name and shape) with {spec.architecture}; "
                f"give a checkpoint of the same architecture"
            )
        missing = sorted(k for k in own if k not in usable)
        model.load_state_dict(usable, strict=False)
        logger.info(
            "model %s: initialised %d/%d tensors from %s", spec.model_id, len(usable), len(own), checkpoint
        )
        if mismatched:
            logger.info("model %s: skipped (shape differs, e.g. classifier head): %s", spec.model_id, ", ".join(mismatched))
        if unexpected:
            logger.info("model %s: skipped (not in %s): %s", spec.model_id, spec.architecture, ", ".join(unexpected))
        if missing:
            logger.info("model %s: left at initialisation: %s", spec.model_id, ", ".join(missing))
    return model.eval()


def _build_own_net(spec: ModelSpec, pretrained_path: str | os.PathLike[str] | None) -> torch.nn.Module:
    """Build one of bcpath's own nets (:mod:`bcpath.models.nets`) for a non-torchvision kind."""
    from bcpath.models.nets import NETS, build_net

    known = NETS.get(spec.kind, {})
    if spec.architecture not in known:
        raise BcpathError(
            f"model {spec.model_id}: kind {spec.kind} has no architecture {spec.architecture!r}; "
            f"use one of {sorted(known)}"
        )
    try:
        model = build_net(spec.kind, spec.architecture, spec.arguments)
    except TypeError as exc:
        raise BcpathError(f"model {spec.model_id}: bad arguments {spec.arguments} for {spec.architecture} ({exc})") from exc
    if pretrained_path is not None:
        state = _load_state_dict(Path(pretrained_path), f"model {spec.model_id}: initial weights")
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    return model.eval()


def load_model(
    spec: ModelSpec,
    models_dir: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    device: str | None = None,
) -> torch.nn.Module:
    """Build any registry entry and load its checked weights: the one loader for every kind.

    Args:
        spec: the entry.
        models_dir: folder the entry's ``weights`` path is relative to (registry weights).
        weights, sha256: a weights file and its expected sha256 instead (weights a training
            rule wrote; the sha256 comes from its train.json).
        device: None = CUDA when available, else CPU.

    Returns:
        The model in eval mode on the device.
    """
    from bcpath.engine import choose_device

    model = build_model(spec)
    if weights is not None:
        if sha256 is None:
            raise BcpathError(f"model {spec.model_id}: weights {weights} given without their sha256")
        load_weights_file(model, spec, weights, sha256)
    else:
        if models_dir is None:
            raise BcpathError(f"model {spec.model_id}: load_model needs models_dir or weights + sha256")
        load_weights(model, spec, models_dir)
    return model.to(choose_device(device)).eval()


def weights_file(spec: ModelSpec, models_dir: str | os.PathLike[str]) -> Path:
    """The weights file of a registry entry (``models_dir / spec.weights``).

    Raises:
        BcpathError: the entry has no weights yet (``weights: null``).
    """
    if spec.weights is None:
        raise BcpathError(
            f"model {spec.model_id}: the registry lists no weights file yet (weights: null); "
            f"produce them with `{spec.training_command}` and record the file and its sha256 "
            "in the registry"
        )
    return Path(models_dir) / spec.weights


def load_weights(model: torch.nn.Module, spec: ModelSpec, models_dir: str | os.PathLike[str]) -> torch.nn.Module:
    """Load a registry entry's weights into ``model`` after checking the file's sha256.

    Args:
        model: built with :func:`build_model` from the same ``spec``.
        spec: the registry entry.
        models_dir: the folder the entry's ``weights`` path is relative to (``models/``).

    Returns:
        ``model`` with the weights loaded (strictly: every tensor must match), in eval mode.

    Raises:
        BcpathError: no weights listed, file missing, sha256 mismatch, or a file that is not a
            state_dict of tensors; the message names the model, the file and the fix.
    """
    path = weights_file(spec, models_dir)
    fix = f"re-run the training command (`{spec.training_command}`) or update weights/sha256 in the registry"
    assert spec.sha256 is not None  # the schema requires sha256 with weights
    return load_weights_file(model, spec, path, spec.sha256, fix)


def load_weights_file(
    model: torch.nn.Module,
    spec: ModelSpec,
    path: str | os.PathLike[str],
    expected_sha256: str,
    fix: str | None = None,
) -> torch.nn.Module:
    """Load a weights file into ``model`` after checking its sha256 against ``expected_sha256``.

    Used for registry weights (:func:`load_weights`) and for weights a training rule just
    wrote (checked against the sha256 in its train.json).

    Raises:
        BcpathError: file missing, sha256 mismatch, not a state_dict of tensors, or tensors that
            do not fit the architecture; the message names the model, the file and ``fix``.
    """
    path = Path(path)
    fix = fix or f"re-run the training command (`{spec.training_command}`)"
    state = load_checked_state_dict(path, expected_sha256, f"model {spec.model_id}", fix)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BcpathError(
            f"model {spec.model_id}: weights file {path} does not fit {spec.architecture} with "
            f"{spec.num_classes} classes ({str(exc).splitlines()[0]}); {fix}"
        ) from exc
    return model.eval()


def load_checked_state_dict(
    path: str | os.PathLike[str],
    expected_sha256: str | None,
    what: str,
    fix: str = "re-run the training that wrote it",
    expected_from: str = "",
) -> dict[str, torch.Tensor]:
    """The one sha256-checked weights loader: check the file's sha256, then load it safely.

    Every model kind goes through here: registry entries (:func:`load_weights_file`), nuclei
    U-Net training folders (train.json ``best_sha256``), RAM-CNN folders (ramcnn.json
    ``sha256``) and the weights a training rule just wrote.

    Args:
        path: the weights file (a state_dict saved with torch.save).
        expected_sha256: its recorded sha256; None = no record to check against (e.g. last.pt).
        what: names the model in messages, e.g. ``"model er_demo"``.
        fix: what to do about a bad file (ends each message).
        expected_from: where ``expected_sha256`` was recorded, e.g. ``"ramcnn.json sha256"``.

    Returns:
        The state_dict on CPU (``torch.load(weights_only=True)``: tensors only).

    Raises:
        BcpathError: file missing, sha256 mismatch, or not a state_dict of tensors; the message
            names the model, the file and ``fix``.
    """
    from bcpath.wsi.reader import file_sha256

    path = Path(path)
    source = f" ({expected_from})" if expected_from else ""
    if not path.is_file():
        expected = f" (expected sha256 {expected_sha256}{source})" if expected_sha256 else ""
        raise BcpathError(f"{what}: weights file not found: {path}{expected}; {fix}")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise BcpathError(f"{what}: weights file {path} has sha256 {actual}, expected {expected_sha256}{source}; {fix}")
    return _load_state_dict(path, f"{what}: weights file")


def model_folder_inputs(
    path: str | os.PathLike[str],
    setting: str,
    hint: str = "",
    weights: str = "best.pt",
    optional: tuple[str, ...] = ("stain.json",),
) -> list[str]:
    """The files of a training-output model folder that the jobs using the model depend on.

    The one model-folder check of the rule files (``nuclei.model``, ``ihc.nuclei_model``): a
    folder written by a training command holds the weights (``best.pt``) next to the
    ``train.json`` that records their sha256; ``path`` may also name the weights file itself.

    Args:
        path: the folder, or its weights file.
        setting: the config key the path came from (names it in the message).
        hint: what to give instead (ends the message).
        weights: the weights file name in a folder.
        optional: further files the loader reads when present (listed when they exist).

    Returns:
        The weights file, train.json and the optional files present, as strings.

    Raises:
        BcpathError: the weights file or train.json is missing.
    """
    given = Path(path)
    folder, weights_path = (given.parent, given) if given.is_file() else (given, given / weights)
    files = [weights_path, folder / "train.json"]
    if not all(f.is_file() for f in files):
        raise BcpathError(
            f"{setting}: {path} is not a model folder ({weights} + train.json)" + (f"; {hint}" if hint else "")
        )
    return [str(f) for f in files] + [str(folder / name) for name in optional if (folder / name).is_file()]


def save_weights(model: torch.nn.Module, path: str | os.PathLike[str], cpu_copy: bool = False) -> str:
    """Save ``model.state_dict()`` atomically (torch.save) and return the file's sha256.

    The file loads with ``torch.load(weights_only=True)``; record the returned sha256 in the
    registry next to the path. ``cpu_copy``: save a plain dict of detached CPU copies instead
    (no state_dict metadata; the same bytes whatever the device): the nuclei U-Net's format.
    """
    import torch

    from bcpath.io import atomic_path
    from bcpath.wsi.reader import file_sha256

    # Through an open handle: given a path, torch.save names the archive's records after
    # the (random) temporary file name, so identical weights would hash differently.
    state: Any = model.state_dict()
    if cpu_copy:
        state = {k: v.detach().cpu().clone() for k, v in state.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
    return file_sha256(path)
