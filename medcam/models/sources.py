"""Model sources besides medcam checkpoints: nnU-Net v2 trained-model folders and MONAI bundle folders.

:func:`load_source` recognises the folder kind and loads it; it returns ``None`` for a
path that is neither (a medcam checkpoint, loaded by
:func:`medcam.models.checkpoint.load_checkpoint`). :class:`ModelSource` carries the
nnU-Net options (``--folds``, ``--checkpoint``, ``--configuration``) with the path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from medcam.errors import UserError
from medcam.models.checkpoint import ModelBundle


@dataclass(frozen=True)
class ModelSource:
    """A model path with the options of nnU-Net folders (``None``: the folder's defaults)."""

    path: Path
    folds: tuple[str, ...] | None = None
    checkpoint: str | None = None
    configuration: str | None = None

    @property
    def has_options(self) -> bool:
        return self.folds is not None or self.checkpoint is not None or self.configuration is not None


def kind_of(path: Path) -> str | None:
    """``"nnunet"``, ``"monai-bundle"`` or ``None`` (anything else)."""
    from medcam.models.monai_bundle import is_monai_bundle
    from medcam.models.nnunet import is_nnunet_folder

    if is_nnunet_folder(path):
        return "nnunet"
    if is_monai_bundle(path):
        return "monai-bundle"
    return None


def load_source(source: ModelSource, device: str | torch.device = "cpu") -> ModelBundle | None:
    """Load an nnU-Net folder or a MONAI bundle folder; ``None`` if ``source.path`` is neither."""
    kind = kind_of(source.path)
    if kind == "nnunet":
        from medcam.models.nnunet import load_nnunet

        return load_nnunet(
            source.path,
            folds=source.folds,
            checkpoint=source.checkpoint,
            configuration=source.configuration,
            device=device,
        )
    if source.has_options:
        raise UserError(
            f"--folds, --checkpoint and --configuration apply to nnU-Net trained-model folders; "
            f"{source.path} is not one"
        )
    if kind == "monai-bundle":
        from medcam.models.monai_bundle import load_monai_bundle

        return load_monai_bundle(source.path, device=device)
    if source.path.is_dir():
        raise UserError(
            f"--model {source.path} is a folder but neither an nnU-Net trained-model folder (plans.json, dataset.json, "
            "fold_K/) nor a MONAI bundle (configs/inference.json, models/model.pt)"
        )
    return None


def weights_digest(bundle: ModelBundle) -> str:
    """sha256 over the weight files a folder model was built from, in load order."""
    from medcam.models.monai_bundle import MonaiBundle
    from medcam.models.nnunet import CHECKPOINTS, NNUNetBundle

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
