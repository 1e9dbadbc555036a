"""Evaluation samples from a dataset reader, prepared exactly as the model was trained.

Each entry of the chosen split goes through the training pipeline's deterministic
transforms: :class:`~medcam.data.transforms.LoadRecordd` and
:func:`~medcam.data.transforms.preprocessing_transforms` with the checkpoint's
:class:`~medcam.models.checkpoint.Preprocessing` (the code that prepared the
validation cases while the model trained). Images are interpolated and ground-truth
labels take nearest values in the same transforms, so the truth mask lies on the
model grid, which is the grid of the maps. Samples are read lazily, one at a time.
A label that is a DICOM SEG is read by :mod:`medcam.evaluate.truth`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast, overload

import numpy as np
import torch
from torch import Tensor

from medcam.core.targets import Activation, ClassTarget, Mask, Target, TargetError, parse_pixel_set
from medcam.data.base import Dataset, RecordSource
from medcam.errors import UserError
from medcam.evaluate.config import PREDICTED_CLASS, TRUE_CLASS, TRUTH_PIXELS, EvaluationConfig
from medcam.evaluate.runner import Sample
from medcam.evaluate.truth import seg_truth
from medcam.models.checkpoint import CheckpointMeta

# (the record's label, the ground-truth mask or None) -> what to explain
TargetFactory = Callable[[Any, Tensor | None], Target | None]


def truth_values(dataset: Dataset, name: str) -> tuple[int, ...]:
    """The label values of a dataset label or region name (case-insensitive)."""
    labels = {k.lower(): (v,) for k, v in dataset.labels.items()}
    regions = {k.lower(): tuple(v) for k, v in dataset.regions.items()}
    key = name.strip().lower()
    if key in labels:
        return labels[key]
    if key in regions:
        return regions[key]
    valid = ", ".join([*dataset.labels, *dataset.regions])
    raise UserError(f"target.truth {name!r} is not a label or region of {dataset.name} (valid: {valid})")


def check_model_fits(meta: CheckpointMeta, dataset: Dataset) -> None:
    """The model's task and dimensionality must be the dataset's."""
    if meta.task != dataset.task:
        raise UserError(
            f"the model is a {meta.task} network but {dataset.name} is a {dataset.task} dataset; "
            f"evaluate a {dataset.task} checkpoint on it (or choose a {meta.task} dataset in data.kind)"
        )
    if meta.spatial_dims != dataset.spatial_dims:
        raise UserError(
            f"the model is {meta.spatial_dims}D but {dataset.name} gives {dataset.spatial_dims}D images; "
            "choose a reader of the model's dimensionality (e.g. kits23_slices for a 2D KiTS model)"
        )


def target_factory(meta: CheckpointMeta, class_name: str, pixels: str) -> TargetFactory:
    """How each sample's target is made from ``target.class`` and ``target.pixels``."""
    from medcam.models.classes import resolve_class

    activation: Activation = "sigmoid" if meta.activation == "sigmoid" else "softmax"
    key = class_name.strip().lower()
    if meta.task == "classification":
        if pixels not in ("predicted", "image"):
            raise UserError(f"target.pixels applies to segmentation models; this checkpoint is a {meta.task} model")
        if key == PREDICTED_CLASS:
            return lambda label, truth: ClassTarget(None, activation=activation)
        if key == TRUE_CLASS:
            return lambda label, truth: ClassTarget(int(label), activation=activation)
        fixed = resolve_class(meta, class_name).target(meta, parse_pixel_set("image"))
        return lambda label, truth: fixed
    if key in (PREDICTED_CLASS, TRUE_CLASS):
        raise TargetError(
            f"target.class {class_name!r} is for classifiers; name a label or region of this segmentation "
            f"checkpoint ({', '.join([*meta.labels, *meta.regions])})"
        )
    choice = resolve_class(meta, class_name)
    if pixels == TRUTH_PIXELS:

        def from_truth(label: Any, truth: Tensor | None) -> Target:
            if truth is None:
                raise UserError("target.pixels 'truth' needs target.truth (the label or region whose mask is M)")
            return choice.target(meta, Mask(truth, "ground truth"))

        return from_truth
    fixed = choice.target(meta, parse_pixel_set(pixels))
    return lambda label, truth: fixed


def choose_entries(entries: list[dict[str, Any]], count: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``count`` entries drawn without replacement with ``seed``, in their original order."""
    if count is None or count >= len(entries):
        return list(entries)
    picked = np.random.default_rng(seed).choice(len(entries), size=count, replace=False)
    return [entries[int(i)] for i in sorted(picked)]


def entry_id(entry: dict[str, Any]) -> str:
    """A sample id: the case id, with the slice index for 2D slices of a volume."""
    case = str(entry.get("case_id", entry.get("image", "")))
    return f"{case}_slice{int(entry['slice']):04d}" if "slice" in entry else case


class DatasetSamples(Sequence[Sample]):
    """The chosen entries of a split as :class:`Sample` objects, prepared on access.

    ``sample_id(i)`` names a sample without reading it, so a resumed run skips
    finished samples unread.
    """

    def __init__(
        self,
        dataset: Dataset,
        entries: list[dict[str, Any]],
        meta: CheckpointMeta,
        make_target: TargetFactory,
        truth: tuple[int, ...] | None = None,
        pad_to_multiple: int | None = None,
        records: RecordSource | None = None,
    ) -> None:
        from monai.transforms import Compose, DivisiblePadd

        from medcam.data.transforms import LoadRecordd, preprocessing_transforms

        self.dataset, self.entries, self.meta = dataset, entries, meta
        self.make_target, self.truth = make_target, truth
        # as the training tasks prepare validation cases; a classifier's label stays a class index
        segmentation = meta.task == "segmentation"
        keys = ("image", "label") if segmentation else ("image",)
        pre = preprocessing_transforms(
            meta.preprocessing, meta.spatial_dims, keys=keys, label_key="label" if segmentation else None
        )
        # records: the dataset itself, or a wrapper reading DICOM SEG labels (medcam.evaluate.truth); loaded
        # outside MONAI's Compose, which would wrap a reader's one-line UserError in a RuntimeError
        self.load = LoadRecordd(records or dataset)
        steps: list[Any] = list(pre)
        if pad_to_multiple is not None:
            # zeros after the end of each axis, image and label alike: voxel (0, 0, 0) stays where it was
            steps.append(DivisiblePadd(keys=list(keys), k=pad_to_multiple, method="end"))
        self.transform = Compose(steps)
        self.ids = [entry_id(e) for e in entries]
        repeated = sorted({i for i in self.ids if self.ids.count(i) > 1})
        if repeated:
            raise UserError(f"the dataset gives repeated sample ids {repeated[:3]}; sample ids must be unique")

    def __len__(self) -> int:
        return len(self.entries)

    def sample_id(self, index: int) -> str:
        return self.ids[index]

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | Sequence[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        entry = cast(dict[Hashable, Any], dict(self.entries[index]))  # MONAI's key type
        record = self.transform(self.load(entry))
        image = _plain(record["image"]).float().contiguous()
        if image.shape[0] != self.meta.in_channels:
            raise UserError(
                f"sample {self.ids[index]} has {image.shape[0]} channel(s) after preprocessing but the model takes "
                f"{self.meta.in_channels}; the reader and the checkpoint do not fit together"
            )
        truth = None
        if self.truth is not None:
            label = _plain(record["label"])[0].round().long()
            truth = torch.isin(label, torch.tensor(self.truth))
        orientation = None
        if self.meta.spatial_dims == 3:
            from medcam.volumes.geometry import axis_codes

            orientation = axis_codes(np.asarray(record["image"].affine), 3)
        target = self.make_target(record.get("label"), truth)
        return Sample(self.ids[index], image, target, truth, orientation)


def _plain(t: Any) -> Tensor:
    """A plain tensor: MONAI's MetaTensor would carry its metadata into every result."""
    from monai.data import MetaTensor

    return t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)


def open_samples(config: EvaluationConfig, meta: CheckpointMeta) -> DatasetSamples:
    """The samples a config names, checked against the model (task, dimensions, classes, truth)."""
    from medcam.train.datasets import open_dataset

    data, section = config.data, config.target
    dataset = open_dataset(data.dataset_config())
    check_model_fits(meta, dataset)
    make_target = target_factory(meta, section.class_name, section.pixels)
    truth_name = section.truth
    if truth_name is None and meta.task == "segmentation":
        known = {k.lower() for k in [*dataset.labels, *dataset.regions]}
        truth_name = section.class_name if section.class_name.strip().lower() in known else None
    truth = truth_values(dataset, truth_name) if truth_name is not None else None
    if truth is not None and meta.task != "segmentation":
        raise UserError(f"target.truth needs ground-truth masks; {dataset.name} has class labels only")
    if "localisation" in config.evaluation.metrics and truth is None:
        raise UserError(
            "the localisation metrics need a ground-truth mask: set target.truth to a label or region of "
            f"{dataset.name}, or drop 'localisation' from evaluation.metrics"
        )
    if section.pixels == TRUTH_PIXELS and truth is None:
        raise UserError("target.pixels 'truth' needs target.truth (the label or region whose mask is M)")
    entries = dataset.entries(data.split)
    if not entries:
        split = f"split {data.split!r}" if data.split else "dataset"
        raise UserError(
            f"the {split} of {dataset.root} is empty (data.fractions {list(data.fractions)}); "
            "choose another split or fractions"
        )
    chosen = choose_entries(entries, data.samples, data.sample_seed)
    records = seg_truth(dataset, chosen, truth_name, truth)  # DICOM SEG labels: segments checked here
    return DatasetSamples(dataset, chosen, meta, make_target, truth, data.pad_to_multiple, records)
