"""The one place that loads a model for explaining: every model source goes through :func:`load_model`.

Today a source is a medcam checkpoint file (weights + JSON metadata, read with
``weights_only=True``; :mod:`medcam.models.checkpoint`), the shipped demo model when none
is given, or a model already in memory (:class:`~medcam.models.checkpoint.ModelBundle`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from medcam.errors import UserError
from medcam.models.checkpoint import DEMO_CHECKPOINT, ModelBundle, load_checkpoint


def default_model_path() -> Path:
    """The shipped demo checkpoint (:data:`~medcam.models.checkpoint.DEMO_CHECKPOINT`), used when no model is given."""
    if not DEMO_CHECKPOINT.is_file():
        raise UserError(
            f"no --model given and the demo model {DEMO_CHECKPOINT} is missing; pass --model PATH to a medcam "
            "checkpoint or reinstall medcam (the demo model is package data)"
        )
    return DEMO_CHECKPOINT


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A ready model with the checkpoint file it came from (recorded in ``summary.json``)."""

    bundle: ModelBundle
    path: Path | None = None
    sha256: str | None = None


ModelSource = str | Path | ModelBundle | LoadedModel | None


def load_model(model: ModelSource, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint (default, or ``"demo"``: the demo model) onto ``device``; bundles pass through."""
    if isinstance(model, LoadedModel):
        return LoadedModel(
            ModelBundle(model.bundle.model.to(device).eval(), model.bundle.meta), model.path, model.sha256
        )
    if isinstance(model, ModelBundle):
        return LoadedModel(ModelBundle(model.model.to(device).eval(), model.meta))
    # "demo" names the shipped model, as in evaluation configs (``model: demo``) and ``--model demo``
    path = default_model_path() if model is None or model == "demo" else Path(model)
    bundle = load_checkpoint(path, device=device)
    return LoadedModel(bundle, path, sha256(path))


def check_device(device: str) -> str:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]`` (CUDA must be present) -> the device."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
        return device
    raise UserError(f"--device must be auto, cpu or cuda[:N], got {device!r}")


def sha256(path: Path) -> str:
    """Hex digest of a file, read in blocks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
