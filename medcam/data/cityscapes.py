"""Cityscapes: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine/.../*_gtFine_labelIds.png``.

The 34 label ids (0..33) become the 19 training ids on the fly; every other id becomes
255, which the loss and the metrics ignore. ``*_labelTrainIds.png`` is not needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcam.data.base import Dataset
from medcam.data.images import check_same_size, flat_geometry, read_image, read_mask
from medcam.data.nifti import DatasetError, check_label_values

IGNORE = 255
# labelId -> (trainId, name) for the 19 evaluated classes
_TRAIN_IDS: dict[int, tuple[int, str]] = {
    7: (0, "road"),
    8: (1, "sidewalk"),
    11: (2, "building"),
    12: (3, "wall"),
    13: (4, "fence"),
    17: (5, "pole"),
    19: (6, "traffic light"),
    20: (7, "traffic sign"),
    21: (8, "vegetation"),
    22: (9, "terrain"),
    23: (10, "sky"),
    24: (11, "person"),
    25: (12, "rider"),
    26: (13, "car"),
    27: (14, "truck"),
    28: (15, "bus"),
    31: (16, "train"),
    32: (17, "motorcycle"),
    33: (18, "bicycle"),
}
CITYSCAPES_LABELS: dict[str, int] = {name: train_id for train_id, name in _TRAIN_IDS.values()}
LABEL_TO_TRAIN = np.full(256, IGNORE, dtype=np.uint8)
for _label_id, (_train_id, _) in _TRAIN_IDS.items():
    LABEL_TO_TRAIN[_label_id] = _train_id


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes label ids (0..33) to training ids (0..18, 255 = ignore)."""
    return LABEL_TO_TRAIN[label_ids]


class Cityscapes(Dataset):
    """Fine annotations of Cityscapes; splits are the official train/val/test folders."""

    name = "Cityscapes"
    task = "segmentation"
    spatial_dims = 2
    ignore_index = IGNORE

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        for folder in ("leftImg8bit", "gtFine"):
            if not (self.root / folder).is_dir():
                raise DatasetError(f"{self.root} has no {folder}/ folder; {self.layout_hint()}")

    @classmethod
    def layout_hint(cls) -> str:
        return (
            "point root at the folder holding leftImg8bit/ and gtFine/ "
            "(unpacked leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip)"
        )

    @property
    def labels(self) -> dict[str, int]:
        return dict(CITYSCAPES_LABELS)

    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        self.check_split(split)
        out = []
        for name in [split] if split is not None else ["train", "val", "test"]:
            folder = self.root / "leftImg8bit" / name
            if not folder.is_dir():
                continue
            for image in sorted(folder.glob("*/*_leftImg8bit.png")):
                stem = image.name[: -len("_leftImg8bit.png")]
                label = self.root / "gtFine" / name / image.parent.name / f"{stem}_gtFine_labelIds.png"
                if not label.is_file():
                    raise DatasetError(f"{image} has no label file {label}; is gtFine unpacked next to leftImg8bit?")
                out.append({"case_id": stem, "split": name, "image": str(image), "label": str(label)})
        return out

    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        image_path, label_path = Path(entry["image"]), Path(entry["label"])
        image = read_image(image_path, "RGB")
        label_ids = read_mask(label_path)
        check_same_size(image, label_ids, image_path, label_path)
        check_label_values(label_ids, range(34), label_path, "Cityscapes labelIds")
        return {
            "image": image,
            "label": to_train_ids(label_ids),
            "case_id": entry["case_id"],
            "image_path": str(image_path),
            "label_path": str(label_path),
            **flat_geometry(image.shape[1:]),
        }
