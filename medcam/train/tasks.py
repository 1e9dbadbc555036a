"""What differs between segmentation and classification training, behind one small interface.

A task builds the network, the training loader (with a distributed sampler), the loss
of one batch, the validation metrics and the checkpoint metadata. The epoch loop in
:mod:`medcam.train.loop` knows nothing else.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.data import Dataset as MonaiDataset
from monai.transforms import (
    Compose,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from torch import Tensor, nn
from torch.utils.data.distributed import DistributedSampler

from medcam.data.base import Dataset
from medcam.data.transforms import LoadRecordd, preprocessing_transforms
from medcam.metrics.dice import label_dice, nanmean, region_dice
from medcam.models.checkpoint import CheckpointMeta
from medcam.models.factory import build_model, default_cam_layers
from medcam.train.config import ConfigError, ExperimentConfig
from medcam.train.distributed import Context
from medcam.train.losses import DiceCrossEntropyLoss
from medcam.train.validation import labels_from_logits


class Task(ABC):
    """Everything task-specific about one experiment."""

    def __init__(self, config: ExperimentConfig, dataset: Dataset, ctx: Context) -> None:
        self.config = config
        self.dataset = dataset
        self.ctx = ctx
        self.all_train_entries = dataset.entries("train")
        self.train_entries = spread(self.all_train_entries, config.dataset.max_cases)
        self.val_entries = spread(dataset.entries("val"), config.training.val_max_cases)
        if not self.train_entries:
            raise ConfigError(f"{dataset.name} at {dataset.root} has no training cases for this split")
        self._train_transform: Compose | None = None
        self._val_data: MonaiDataset | None = None

    # -- model -----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_model(self.config.model.architecture, **self.config.model.arguments)

    # -- data ------------------------------------------------------------------------------
    @abstractmethod
    def train_transforms(self) -> list[Any]: ...

    @abstractmethod
    def val_transforms(self) -> list[Any]: ...

    def _dataset(self, entries: list[dict[str, Any]], transforms: list[Any]) -> MonaiDataset:
        compose = Compose(transforms)
        if self.config.training.cache:
            return CacheDataset(entries, compose, num_workers=0, progress=False)
        return MonaiDataset(entries, compose)

    def train_loader(self) -> tuple[DataLoader, DistributedSampler[Any]]:
        transforms = self.train_transforms()
        self._train_transform = Compose(transforms)
        data = self._dataset(self.train_entries, transforms)
        data.transform = self._train_transform  # one Compose whose random state the loop reseeds
        sampler: DistributedSampler[Any] = DistributedSampler(
            data, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=True, seed=self.config.training.seed
        )
        loader = DataLoader(
            data,
            batch_size=self.config.training.batch_size,
            sampler=sampler,
            num_workers=self.config.training.num_workers,
            collate_fn=list_data_collate,
        )
        return loader, sampler

    def val_dataset(self) -> MonaiDataset:
        """Validation cases after the deterministic preprocessing (cached after the first call if ``cache``)."""
        if self._val_data is None:
            self._val_data = self._dataset(self.val_entries, self.val_transforms())
        return self._val_data

    def reseed(self, epoch: int) -> None:
        """Make an epoch's augmentation a function of (seed, epoch, rank), so resuming replays it."""
        if self._train_transform is not None:
            seed = self.config.training.seed + 1000 * epoch + self.ctx.rank
            self._train_transform.set_random_state(seed=seed % (2**32))

    # -- steps -----------------------------------------------------------------------------
    def train_mode(self, model: nn.Module) -> None:
        """Put the network in training mode for an epoch."""
        model.train()

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor: ...

    @abstractmethod
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on the validation cases; ``score`` is what best-checkpoint selection maximises."""

    @abstractmethod
    def metric_names(self) -> list[str]: ...

    @abstractmethod
    def metadata(self, model: nn.Module, training: dict[str, Any]) -> CheckpointMeta: ...


class SegmentationTask(Task):
    """U-Net training: random patches around foreground, Dice + CE, sliding-window validation."""

    def __init__(self, config: ExperimentConfig, dataset: Dataset, ctx: Context) -> None:
        super().__init__(config, dataset, ctx)
        self.spatial_dims = dataset.spatial_dims
        self.regions_mode = config.dataset.label_mode == "regions"
        if self.regions_mode and not dataset.regions:
            raise ConfigError(f"dataset.label_mode 'regions' needs a dataset with regions; {dataset.name} has none")
        self.out_labels: dict[str, int] = (
            {name: i for i, name in enumerate(dataset.regions)} if self.regions_mode else dataset.labels
        )
        self.ignore_index: int | None = getattr(dataset, "ignore_index", None)
        args = config.model.arguments
        declared = args.get("out_channels", args.get("classes"))
        if declared is not None and declared != len(self.out_labels):
            raise ConfigError(
                f"model outputs {declared} channels but {dataset.name} ({config.dataset.label_mode}) needs "
                f"{len(self.out_labels)}: {', '.join(self.out_labels)}"
            )
        self.loss_fn = DiceCrossEntropyLoss(
            sigmoid=self.regions_mode,
            include_background="background" not in self.out_labels,
            ignore_index=self.ignore_index,
            dice_weight=config.training.dice_weight,
            ce_weight=config.training.ce_weight,
        ).to(ctx.device)
        patch = config.training.patch_size
        if patch is not None and len(patch) != self.spatial_dims:
            raise ConfigError(f"training.patch_size {patch} needs {self.spatial_dims} values for {dataset.name}")
        if patch is None and self.spatial_dims == 3:
            raise ConfigError("3D training needs training.patch_size (random crops and sliding-window validation)")

    def _deterministic(self) -> list[Any]:
        return [LoadRecordd(self.dataset), *preprocessing_transforms(self.config.preprocessing, self.spatial_dims)]

    def train_transforms(self) -> list[Any]:
        t = self.config.training
        out: list[Any] = self._deterministic()
        if t.patch_size is not None:
            out.append(SpatialPadd(keys=["image", "label"], spatial_size=t.patch_size))
            if t.crop_ratios is not None:
                # crop centres drawn per class with these ratios (oversampling small classes, like nnU-Net)
                if len(t.crop_ratios) != len(self.dataset.labels):
                    raise ConfigError(
                        f"training.crop_ratios has {len(t.crop_ratios)} values for {len(self.dataset.labels)} labels"
                    )
                out.append(
                    RandCropByLabelClassesd(
                        keys=["image", "label"],
                        label_key="label",
                        spatial_size=t.patch_size,
                        ratios=list(t.crop_ratios),
                        num_classes=len(self.dataset.labels),
                        num_samples=t.samples_per_image,
                        warn=False,
                    )
                )
            else:
                pos, neg = t.pos_neg
                out.append(
                    RandCropByPosNegLabeld(
                        keys=["image", "label"],
                        label_key="label",
                        spatial_size=t.patch_size,
                        pos=pos,
                        neg=neg,
                        num_samples=t.samples_per_image,
                    )
                )
        if t.intensity_augmentation:
            out += [
                RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
            ]
        for axis in t.flip_axes:
            out.append(RandFlipd(keys=["image", "label"], spatial_axis=axis, prob=0.5))
        return out

    def val_transforms(self) -> list[Any]:
        return self._deterministic()

    def _target(self, label: Tensor) -> Tensor:
        if not self.regions_mode:
            return label
        values = list(self.dataset.regions.values())
        return torch.cat([torch.isin(label, torch.as_tensor(v, device=label.device)) for v in values], dim=1).float()

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        image = plain(batch["image"]).to(self.ctx.device)
        label = plain(batch["label"]).to(self.ctx.device).long()
        return self.loss_fn(model(image), self._target(label))

    def predict(self, model: nn.Module, image: Tensor) -> Tensor:
        """Logits of one preprocessed image (1, C, *spatial), by sliding window when patches are used."""
        from medcam.core.windows import SlidingWindow, predict

        t = self.config.training
        if t.patch_size is None:
            return model(image)
        window = SlidingWindow(tuple(t.patch_size), overlap=t.sw_overlap, mode="gaussian", batch_size=t.sw_batch_size)
        return predict(model, image, window)

    def to_labels(self, logits: Tensor) -> Tensor:
        """Hard label map (1, *spatial): argmax, or for region heads the nnU-Net-style ordering."""
        return labels_from_logits(logits, "sigmoid" if self.regions_mode else "softmax", self.dataset.regions)

    def metric_names(self) -> list[str]:
        names = [f"dice_{n}" for n in self.dataset.labels if n != "background"]
        names += [f"dice_{n}" for n in self.dataset.regions if f"dice_{n}" not in names]
        return ["score", *names]

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if not self.val_entries:
            return {}
        model.eval()
        per_case: dict[str, list[float]] = {}
        data = self.val_dataset()
        for index in range(len(data)):
            record = data[index]
            image = record["image"].as_tensor()[None].to(self.ctx.device)
            truth = record["label"].as_tensor()[None].to(self.ctx.device).long()
            pred = self.to_labels(self.predict(model, image))
            scores = label_dice(pred, truth, self.dataset.labels, self.ignore_index)
            if self.dataset.regions:
                scores.update(region_dice(pred, truth, self.dataset.regions))
            for name, value in scores.items():
                per_case.setdefault(f"dice_{name}", []).append(value)
        out = {name: nanmean(values) for name, values in per_case.items()}
        class_scores = [out[f"dice_{n}"] for n in self.dataset.labels if n != "background"]
        out["score"] = nanmean(class_scores)
        if math.isnan(out["score"]):
            out["score"] = 0.0
        model.train()
        return out

    def metadata(self, model: nn.Module, training: dict[str, Any]) -> CheckpointMeta:
        c = self.config
        layers = list(c.model.cam_layers) if c.model.cam_layers else default_cam_layers(c.model.architecture, model)
        args = c.model.arguments
        return CheckpointMeta(
            architecture=c.model.architecture,
            arguments=dict(args),
            task="segmentation",
            spatial_dims=self.spatial_dims,
            in_channels=int(args.get("in_channels", 1)),
            labels=dict(self.out_labels),
            activation="sigmoid" if self.regions_mode else "softmax",
            regions={k: list(v) for k, v in self.dataset.regions.items()},
            patch_size=c.training.patch_size,
            preprocessing=c.preprocessing,
            cam_layers=layers,
            training=training,
        )


def spread(entries: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most ``limit`` entries, evenly spaced over the list (so a class-ordered list keeps every class)."""
    if limit is None or limit >= len(entries):
        return entries
    if limit < 1:
        raise ConfigError(f"a case limit must be at least 1, got {limit}")
    picks = sorted({round(i * (len(entries) - 1) / max(limit - 1, 1)) for i in range(limit)})
    return [entries[i] for i in picks]


def plain(x: Any) -> Tensor:
    """A MetaTensor's plain tensor (or the tensor itself)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
