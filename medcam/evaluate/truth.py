"""A DICOM SEG as the ground truth of ``medcam evaluate``.

A dataset's label file may be a DICOM SEG instead of a label image: a Decathlon
``dataset.json`` naming a ``.dcm`` label, KiTS23's ``case_XXXXX/segmentation.dcm``,
nnU-Net's ``labelsTr/<case>.dcm``. The readers then skip the label (see
:func:`medcam.data.nifti.label_file`) and :class:`SegTruth` reads the truth's segments
onto the image's voxel grid with the one mask loader,
:func:`medcam.volumes.pixels.load_reference` (which reads a SEG with
:mod:`medcam.volumes.dicom_seg`): every SEG frame must lie on voxel centres of the image,
and, the image being NIfTI, that geometry is the whole check (a NIfTI file names no
series or frame of reference). The truth's voxels become a label map that carries the
truth's first label value, so the rest of the evaluation (preprocessing, ``isin`` with
the truth's values) is the same as for a label image.

Which segments are the truth ``target.truth`` (a dataset label or region name with label
values ``V``), first match wins:

1. the segments labelled with that name (case-insensitive);
2. for each value in ``V``, the segments labelled with the dataset's name of that value
   (a region such as KiTS ``masses`` = ``tumor`` and ``cyst``);
3. the segments numbered ``V`` (medcam's SEGs number labels 1..N as their values), with
   a warning naming the segment labels taken.

Segments are resolved for every chosen sample before any image is read, so a SEG that
lacks the truth stops the run with one line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcam.data.base import Dataset, RecordSource
from medcam.data.nifti import is_dicom_file
from medcam.errors import UserError
from medcam.volumes.dicom_seg import find_dicom_seg, segment_labels
from medcam.volumes.io import load_volume
from medcam.volumes.pixels import load_reference

logger = logging.getLogger(__name__)

_LABEL_IMAGE = (".nii", ".nii.gz")


def seg_label(entry: Mapping[str, Any]) -> Path | None:
    """The DICOM SEG an entry names as its label, else ``None`` (label images are not opened)."""
    label = entry.get("label")
    if not isinstance(label, str | Path) or str(label).lower().endswith(_LABEL_IMAGE):
        return None
    found = find_dicom_seg(Path(label))
    if found is None and is_dicom_file(Path(label)):
        raise UserError(f"the label {label} is DICOM but not a DICOM SEG; give a SEG or a label image (NIfTI)")
    return found


def truth_segments(
    path: Path, name: str, values: Sequence[int], labels: Mapping[str, int]
) -> tuple[list[int], str | None]:
    """The segment numbers of the SEG at ``path`` that are the truth ``name`` (see the module docstring).

    The second value names the segments taken by number (rule 3), else ``None``.
    """
    segments = segment_labels(path)

    def labelled(text: str) -> list[int]:
        return [n for n, label in segments.items() if label.strip().lower() == text.strip().lower()]

    if own := labelled(name):
        return own, None
    names = {value: label for label, value in labels.items()}
    per_value = [labelled(names[v]) if v in names else [] for v in values]
    if all(per_value):
        return sorted({n for group in per_value for n in group}), None
    if all(v in segments for v in values):
        return list(values), ", ".join(f"{v}={segments[v]!r}" for v in values)
    present = ", ".join(f"{n}={label}" for n, label in sorted(segments.items())) or "none"
    numbers = "/".join(str(v) for v in values)
    raise UserError(
        f"the DICOM SEG {path} has no segment for the ground truth {name!r} (segments: {present}); "
        f"label a segment {name!r} or number it {numbers}, or set target.truth to one of its segments"
    )


class SegTruth(RecordSource):
    """The records of ``dataset``; a DICOM SEG label becomes the truth mask on the image's grid.

    ``segments``: SEG path -> the truth's segment numbers, or ``None`` when no truth is
    evaluated (the SEG is then not read and the label is empty). ``value``: the label
    value the truth's voxels get (the truth's first value).
    """

    def __init__(self, dataset: RecordSource, segments: Mapping[Path, list[int] | None], value: int) -> None:
        self.dataset, self.segments, self.value = dataset, dict(segments), value

    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        seg = seg_label(entry) if self.segments else None
        if seg is None:
            return self.dataset.load(entry)
        record = self.dataset.load({**entry, "label": None})
        shape = tuple(record["image"].shape[1:])
        numbers = self.segments.get(seg)
        if numbers is None:
            truth = np.zeros(shape, dtype=bool)
        else:
            truth = self.read(seg, Path(record["image_path"]), numbers, shape)
        dtype = np.uint8 if 0 <= self.value < 256 else np.int64
        record["label"] = np.where(truth, self.value, 0).astype(dtype)[None]
        record["label_path"] = str(seg)
        return record

    @staticmethod
    def read(seg: Path, image: Path, numbers: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
        """The union of segments ``numbers`` on the voxel grid of ``image`` (an empty truth is allowed)."""
        volume = load_volume(image)
        if volume.spatial_shape != shape:
            raise UserError(f"{image} reads with shape {volume.spatial_shape} here but {shape} in the dataset reader")
        truth = np.zeros(shape, dtype=bool)
        for number in numbers:
            truth |= load_reference(f"{seg}:{number}", volume, allow_empty=True)[0]
        return truth


def seg_truth(
    dataset: Dataset, entries: Sequence[Mapping[str, Any]], name: str | None, values: Sequence[int] | None
) -> SegTruth | None:
    """A :class:`SegTruth` over ``dataset`` if an entry's label is a DICOM SEG (segments resolved now), else None."""
    segs = [seg for seg in (seg_label(entry) for entry in entries) if seg is not None]
    if not segs:
        return None
    if dataset.spatial_dims != 3:
        raise UserError(
            f"{segs[0]} is a DICOM SEG, which medcam reads as ground truth for 3D images only; "
            f"{dataset.name} gives {dataset.spatial_dims}D images"
        )
    if name is None or not values:
        return SegTruth(dataset, dict.fromkeys(segs), 0)
    segments: dict[Path, list[int] | None] = {}
    by_number: dict[str, int] = {}  # segments taken by number -> how many SEG files: one warning each
    for seg in segs:
        segments[seg], taken = truth_segments(seg, name, values, dataset.labels)
        if taken is not None:
            by_number[taken] = by_number.get(taken, 0) + 1
    for taken, count in by_number.items():
        logger.warning(
            "%d DICOM SEG file(s) have no segment labelled %r; their ground truth is segment(s) %s, by number",
            count,
            name,
            taken,
        )
    return SegTruth(dataset, segments, int(values[0]))
