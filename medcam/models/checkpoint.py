"""The medcam checkpoint: weights plus JSON metadata, loadable with ``weights_only=True``.

File layout (a ``torch.save`` dict of tensors and strings only)::

    {"format": "medcam-checkpoint", "format_version": 1,
     "metadata": "<JSON text of CheckpointMeta>", "state_dict": {name: tensor}}

Nothing in it is pickled code, so :func:`load_checkpoint` never unpickles objects;
a file that needs more than tensors and plain containers is refused.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcam.core.hooks import SCRIPTED_FIX, is_torchscript_file
from medcam.errors import UserError
from medcam.models.factory import build_model

logger = logging.getLogger(__name__)

FORMAT = "medcam-checkpoint"
FORMAT_VERSION = 1
# more input channels than any imaging network takes: a larger number is a corrupt header
MAX_CHANNELS = 4096
# a network may hold at most this many times the parameters its file stores (plus a margin)
PARAMETER_SLACK = 64


class CheckpointError(UserError):
    """A checkpoint is missing, unsafe, of another format or does not fit its architecture."""


@dataclass(frozen=True)
class Preprocessing:
    """What was done to an image before the network saw it (inverted for the maps).

    ``orientation``: axis codes the volume is reoriented to (MONAI ``Orientationd``),
    or ``None`` to keep the file's. ``spacing``: target voxel size in mm (``Spacingd``)
    or ``None``. Intensities are windowed from ``[a_min, a_max]`` to ``[b_min, b_max]``
    (``ScaleIntensityRanged``), clipped if ``clip``; ``None`` for ``a_min`` skips it.
    ``size``: 2D images are resized to this (H, W); ``None`` keeps their size.
    ``mean``/``std``: per-channel normalisation after scaling (classifiers).
    """

    orientation: str | None = None
    spacing: tuple[float, ...] | None = None
    a_min: float | None = None
    a_max: float | None = None
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    size: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything needed to rebuild, run and explain the network, as plain JSON."""

    architecture: str
    arguments: dict[str, Any]
    task: str  # "segmentation" | "classification"
    spatial_dims: int
    in_channels: int
    labels: dict[str, int]  # name -> output channel
    activation: str = "softmax"  # "softmax" | "sigmoid" (multi-label region heads)
    regions: dict[str, list[int]] = field(default_factory=dict)  # e.g. KiTS HECs, label values
    patch_size: tuple[int, ...] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    cam_layers: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    medcam_version: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        """The metadata of a checkpoint; anything malformed is a :class:`CheckpointError` naming the field."""
        if not isinstance(text, str):
            raise CheckpointError(f"checkpoint metadata is a {type(text).__name__}, not JSON text")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            raise CheckpointError(f"checkpoint metadata is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint metadata is a JSON {type(data).__name__}, not an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"checkpoint metadata has unknown keys {unknown}; is it from a newer medcam?")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {missing}; re-save it with medcam.models.save_checkpoint")
        pre = data.pop("preprocessing", {}) or {}
        if not isinstance(pre, dict):
            raise CheckpointError("checkpoint metadata: 'preprocessing' must be an object")
        pre_known = {f.name for f in fields(Preprocessing)}
        if set(pre) - pre_known:
            raise CheckpointError(f"checkpoint preprocessing has unknown keys {sorted(set(pre) - pre_known)}")
        check_metadata(data, pre)
        pre = {k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()}
        if data.get("patch_size") is not None:
            data["patch_size"] = tuple(data["patch_size"])
        return cls(preprocessing=Preprocessing(**pre), **data)


@dataclass(frozen=True)
class ModelBundle:
    """A network ready to explain, with the metadata that says how to feed it."""

    model: nn.Module
    meta: CheckpointMeta


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` atomically (temporary file, then rename)."""
    from medcam.version import __version__

    path = Path(path)
    if not meta.medcam_version:
        meta = CheckpointMeta(
            **{**{f.name: getattr(meta, f.name) for f in fields(meta)}, "medcam_version": __version__}
        )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": meta.to_json(), "state_dict": state}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """Metadata and state dict of a medcam checkpoint, without building the network."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"--model {path} is a folder, not a checkpoint file; pass --model PATH to a medcam .pt file"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass --model PATH to a medcam .pt file")
    if is_torchscript_file(path):
        raise CheckpointError(f"{path} is a TorchScript archive, on which layer hooks cannot run; {SCRIPTED_FIX}")
    check_container(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise CheckpointError(
                f"{path} is not a readable checkpoint (not a PyTorch file); is it truncated?"
            ) from None
        raise CheckpointError(
            f"{path} contains pickled Python objects, which medcam refuses to load (they can run code); "
            "re-save it with medcam.models.save_checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, MemoryError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first}); is the file truncated?") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a medcam checkpoint (no '{FORMAT}' header); train it with medcam")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {str(payload.get('format_version'))[:20]}, this medcam reads 1"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no weights (its 'state_dict' is missing or empty)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: 'state_dict' must map parameter names to tensors")
    try:
        meta = CheckpointMeta.from_json(payload.get("metadata"))  # type: ignore[arg-type]
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return meta, state


def check_container(path: Path) -> None:
    """Refuse a file that is not a PyTorch checkpoint before ``torch.load`` reads (or inflates) it.

    ``torch.save`` writes an uncompressed zip with a ``data.pkl`` (older versions: a bare
    pickle). A compressed zip (a zip bomb costs GBs to inflate), a gzip file (an image
    such as ``.nii.gz``) or anything else is refused by its first bytes and zip directory.
    """
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise CheckpointError(f"{path} is empty; is the file truncated?")
    if head.startswith(b"\x1f\x8b"):
        raise CheckpointError(f"{path} is a gzip file (an image such as .nii.gz?), not a medcam checkpoint")
    if head.startswith(b"\x80"):
        return  # a pickle: torch's legacy format, read with weights_only
    if head != b"PK\x03\x04":
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (it does not start like one); pass a medcam .pt file"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({err}); is the file truncated?") from None
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise CheckpointError(f"{path} is a compressed zip archive; PyTorch checkpoints are not compressed")
    if not any(e.filename == "data.pkl" or e.filename.endswith("/data.pkl") for e in entries):
        raise CheckpointError(f"{path} is a zip archive without PyTorch's data.pkl, not a checkpoint")
    if sum(e.file_size for e in entries) > path.stat().st_size:
        raise CheckpointError(f"{path}: its zip directory claims more bytes than the file holds; it is corrupt")


def check_metadata(data: dict[str, Any], pre: dict[str, Any]) -> None:
    """The types and ranges of checkpoint metadata (before anything is built from them)."""

    def fail(name: str, rule: str) -> None:
        raise CheckpointError(f"checkpoint metadata: {name!r} {rule} (got {str(data.get(name, pre.get(name)))[:60]!r})")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(data["architecture"], str):
        fail("architecture", "must be a text")
    if not isinstance(data["arguments"], dict):
        fail("arguments", "must be an object of constructor arguments")
    if data["task"] not in ("segmentation", "classification"):
        fail("task", "must be 'segmentation' or 'classification'")
    dims = data["spatial_dims"]
    if dims not in (2, 3) or not is_int(dims):
        fail("spatial_dims", "must be 2 or 3")
    if not is_int(data["in_channels"]) or not 1 <= data["in_channels"] <= MAX_CHANNELS:
        fail("in_channels", f"must be an integer from 1 to {MAX_CHANNELS}")
    labels = data["labels"]
    if not isinstance(labels, dict) or not labels:
        fail("labels", "must be an object of label names and output channels")
    for name, value in labels.items():
        if not is_int(value) or value < 0:
            raise CheckpointError(
                f"checkpoint metadata: label {name!r} must be a non-negative integer channel, not {str(value)[:30]!r}"
            )
    if data.get("activation", "softmax") not in ("softmax", "sigmoid"):
        fail("activation", "must be 'softmax' or 'sigmoid'")
    regions = data.get("regions", {})
    if not isinstance(regions, dict) or not all(
        isinstance(v, list) and all(is_int(x) for x in v) for v in regions.values()
    ):
        fail("regions", "must map region names to lists of integer labels")
    patch = data.get("patch_size")
    if patch is not None and (
        not isinstance(patch, list) or len(patch) != dims or not all(is_int(p) and p > 0 for p in patch)
    ):
        fail("patch_size", f"must be {dims} positive integers or null")
    if not isinstance(data.get("cam_layers", []), list) or not all(
        isinstance(x, str) for x in data.get("cam_layers", [])
    ):
        fail("cam_layers", "must be a list of module names")
    orientation = pre.get("orientation")
    if orientation is not None:
        axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c) for c in str(orientation).upper()]
        if not isinstance(orientation, str) or len(orientation) != dims or None in axes or len(set(axes)) != dims:
            fail("orientation", f"must be {dims} axis codes, one of L/R, P/A (and I/S), e.g. 'RAS'")
    spacing = pre.get("spacing")
    if spacing is not None and (
        not isinstance(spacing, list) or len(spacing) != dims or not all(is_number(s) and s > 0 for s in spacing)
    ):
        fail("spacing", f"must be {dims} positive voxel sizes in mm or null")
    for name in ("a_min", "a_max", "b_min", "b_max"):
        if pre.get(name) is not None and not is_number(pre[name]):
            fail(name, "must be a finite number")
    for name in ("size", "mean", "std"):
        value = pre.get(name)
        if value is not None and (not isinstance(value, list) or not all(is_number(v) for v in value)):
            fail(name, "must be a list of numbers or null")
    if pre.get("std") is not None and any(v <= 0 for v in pre["std"]):
        fail("std", "must be positive")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the network from a checkpoint (weights only) and put it in eval mode."""
    meta, state = read_checkpoint(path)
    arguments = dict(meta.arguments)
    if meta.task == "classification":
        arguments["pretrained"] = False  # the checkpoint's own weights replace ImageNet's
    check_size(path, meta, arguments, state)
    try:
        model = build_model(meta.architecture, **arguments)
    except (RuntimeError, ValueError, MemoryError, OverflowError) as err:
        if isinstance(err, UserError):
            raise CheckpointError(f"{path}: {err}") from None
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot build {meta.architecture} from its arguments ({first})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {meta.architecture} ({first})") from err
    return ModelBundle(model.to(device).eval(), meta)


def check_size(path: str | Path, meta: CheckpointMeta, arguments: dict[str, Any], state: dict[str, Any]) -> None:
    """Refuse metadata that describes a network far larger than the weights stored (an allocation guard).

    The network is first built on PyTorch's ``meta`` device, which allocates nothing; a
    network that would hold more than :data:`PARAMETER_SLACK` times the stored weights
    (absurd channel counts in a corrupt or hostile file) is refused before it is built.
    """
    stored = sum(int(t.numel()) for t in state.values())
    try:
        with torch.device("meta"):
            probe = build_model(meta.architecture, **arguments)
    except UserError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # a constructor that cannot run on "meta": the real build decides
        logger.debug("size check of %s skipped: %s", path, err)
        return
    needed = sum(int(p.numel()) for p in probe.parameters()) + sum(int(b.numel()) for b in probe.buffers())
    if needed > PARAMETER_SLACK * stored + 10_000_000:
        raise CheckpointError(
            f"{path}: its metadata describes a {meta.architecture} of {needed:,} parameters but the file stores "
            f"{stored:,} weights; the metadata is corrupt"
        )


DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo_unet3d.pt"


def load_demo_model(device: str | torch.device = "cpu") -> ModelBundle:
    """The shipped demo: a small 3D U-Net trained on the KiTS-like phantom (see docs/training.md)."""
    if not DEMO_CHECKPOINT.is_file():
        raise CheckpointError(f"the demo model {DEMO_CHECKPOINT} is missing; reinstall medcam (it is package data)")
    return load_checkpoint(DEMO_CHECKPOINT, device)
