"""The one place that loads a model for explaining: every model source goes through :func:`load_model`.

A source is a medcam checkpoint file (weights + JSON metadata, read with
``weights_only=True``; :mod:`medcam.models.checkpoint`), an nnU-Net v2 trained-model
folder (:mod:`medcam.models.nnunet`; its options ride along in a :class:`ModelPath`), a
MONAI bundle folder (:mod:`medcam.models.monai_bundle`), the shipped demo model when none
is given, or a model already in memory (:class:`~medcam.models.checkpoint.ModelBundle`;
TorchScript modules are refused: hooks cannot run on them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from medcam.core.hooks import refuse_scripted
from medcam.errors import UserError
from medcam.models.checkpoint import DEMO_CHECKPOINT, ModelBundle, load_checkpoint
from medcam.models.monai_bundle import MonaiBundle, is_monai_bundle, load_monai_bundle
from medcam.models.nnunet import CHECKPOINTS, NNUNetBundle, is_nnunet_folder, load_nnunet


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


@dataclass(frozen=True)
class ModelPath:
    """A model path with the options of nnU-Net folders (``None``: the folder's defaults).

    ``mirroring``: nnU-Net's test-time mirroring (off: ``nnUNetv2_predict --disable_tta``).
    """

    path: Path
    folds: tuple[str, ...] | None = None
    checkpoint: str | None = None
    configuration: str | None = None
    mirroring: bool = True

    @property
    def has_options(self) -> bool:
        given = (self.folds, self.checkpoint, self.configuration)
        return any(v is not None for v in given) or not self.mirroring


ModelSource = str | Path | ModelPath | ModelBundle | LoadedModel | None


def load_model(model: ModelSource, device: str = "cpu") -> LoadedModel:
    """Load a model (default, or ``"demo"``: the demo model) onto ``device``; bundles pass through."""
    if isinstance(model, LoadedModel):
        return LoadedModel(replace(model.bundle, model=model.bundle.model.to(device).eval()), model.path, model.sha256)
    if isinstance(model, ModelBundle):
        refuse_scripted(model.model)
        return LoadedModel(replace(model, model=model.model.to(device).eval()))
    # "demo" names the shipped model, as in evaluation configs (``model: demo``) and ``--model demo``
    if isinstance(model, ModelPath):
        source = model
    else:
        source = ModelPath(default_model_path() if model is None or model == "demo" else Path(model))
    folder = _load_folder(source, device)
    if folder is not None:
        return LoadedModel(folder, source.path, _weights_digest(folder))
    bundle = load_checkpoint(source.path, device=device)
    return LoadedModel(bundle, source.path, sha256(source.path))


def _load_folder(source: ModelPath, device: str) -> ModelBundle | None:
    """An nnU-Net trained-model folder or a MONAI bundle folder; ``None`` for anything else."""
    if is_nnunet_folder(source.path):
        return load_nnunet(
            source.path,
            folds=source.folds,
            checkpoint=source.checkpoint,
            configuration=source.configuration,
            mirroring=source.mirroring,
            device=device,
        )
    if source.has_options:
        raise UserError(
            "--folds, --checkpoint, --configuration and --disable-tta apply to nnU-Net trained-model folders; "
            f"{source.path} is not one"
        )
    if is_monai_bundle(source.path):
        return load_monai_bundle(source.path, device=device)
    if source.path.is_dir():
        raise UserError(
            f"--model {source.path} is a folder but neither an nnU-Net trained-model folder (plans.json, dataset.json, "
            "fold_K/) nor a MONAI bundle (configs/inference.json, models/model.pt)"
        )
    return None


def _weights_digest(bundle: ModelBundle) -> str:
    """sha256 over the weight files a folder model was built from, in load order."""
    files: list[Path] = []
    if isinstance(bundle, NNUNetBundle) and bundle.source is not None:
        name = CHECKPOINTS[bundle.source.checkpoint]
        files = [bundle.source.folder / f"fold_{fold}" / name for fold in bundle.source.folds]
    elif isinstance(bundle, MonaiBundle):
        files = [bundle.weights]
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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
