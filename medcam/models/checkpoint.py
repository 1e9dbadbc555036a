"""The medcam checkpoint: weights plus JSON metadata, loadable with ``weights_only=True``.

File layout (a ``torch.save`` dict of tensors and strings only)::

    {"format": "medcam-checkpoint", "format_version": 1,
     "metadata": "<JSON text of CheckpointMeta>", "state_dict": {name: tensor}}

Nothing in it is pickled code, so :func:`load_checkpoint` never unpickles objects;
a file that needs more than tensors and plain containers is refused.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcam.errors import UserError
from medcam.models.factory import build_model

FORMAT = "medcam-checkpoint"
FORMAT_VERSION = 1


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
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"checkpoint metadata has unknown keys {unknown}; is it from a newer medcam?")
        pre = data.pop("preprocessing", {}) or {}
        pre_known = {f.name for f in fields(Preprocessing)}
        if set(pre) - pre_known:
            raise CheckpointError(f"checkpoint preprocessing has unknown keys {sorted(set(pre) - pre_known)}")
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
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass --model PATH to a medcam .pt file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} contains pickled Python objects, which medcam refuses to load (they can run code); "
            "re-save it with medcam.models.save_checkpoint"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({err}); is the file truncated?") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a medcam checkpoint (no '{FORMAT}' header); train it with medcam")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {payload.get('format_version')}, this medcam reads 1")
    return CheckpointMeta.from_json(payload["metadata"]), payload["state_dict"]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the network from a checkpoint (weights only) and put it in eval mode."""
    meta, state = read_checkpoint(path)
    arguments = dict(meta.arguments)
    if meta.task == "classification":
        arguments["pretrained"] = False  # the checkpoint's own weights replace ImageNet's
    model = build_model(meta.architecture, **arguments)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {meta.architecture} ({first})") from err
    return ModelBundle(model.to(device).eval(), meta)


DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo_unet3d.pt"


def load_demo_model(device: str | torch.device = "cpu") -> ModelBundle:
    """The shipped demo: a small 3D U-Net trained on the KiTS-like phantom (see docs/training.md)."""
    if not DEMO_CHECKPOINT.is_file():
        raise CheckpointError(f"the demo model {DEMO_CHECKPOINT} is missing; reinstall medcam (it is package data)")
    return load_checkpoint(DEMO_CHECKPOINT, device)
