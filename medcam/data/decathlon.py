"""Medical Segmentation Decathlon / MONAI datalist JSON.

``{"labels": {"0": "background", "1": "kidney", ...}, "training": [{"image": ..., "label": ...}]}``
with paths relative to the JSON file. Note the label map is int-string -> name, the
opposite of nnU-Net's. A label may be a DICOM SEG (``.dcm``) for ``medcam evaluate``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcam.data.base import Dataset
from medcam.data.nifti import DatasetError, label_file, load_pair
from medcam.data.splits import random_split


class DecathlonJSON(Dataset):
    """The ``training`` list of a Decathlon-style JSON (``root`` is the JSON or its folder)."""

    name = "Decathlon JSON"
    task = "segmentation"
    spatial_dims = 3

    def __init__(self, root: str | Path, fractions: Sequence[float] = (0.8, 0.2, 0.0), split_seed: int = 0) -> None:
        path = Path(root).expanduser()
        if path.is_dir():
            path = path / "dataset.json"
        if not path.is_file():
            raise DatasetError(f"{path} does not exist; {self.layout_hint()}")
        super().__init__(path.parent)
        self.json_path = path
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} is not valid JSON ({err})") from err
        if "training" not in spec or "labels" not in spec:
            raise DatasetError(f"{path} needs 'training' and 'labels'; {self.layout_hint()}")
        try:
            self._labels = {str(name): int(key) for key, name in spec["labels"].items()}
        except ValueError as err:
            raise DatasetError(
                f"{path}: labels must map integer strings to names ({{'0': 'background'}}); "
                "name -> int is nnU-Net's format (use kind: nnunet)"
            ) from err
        self._items = []
        for i, item in enumerate(spec["training"]):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise DatasetError(f"{path}: training[{i}] needs 'image' and 'label'")
            self._items.append(
                {
                    "case_id": Path(str(item["image"])).name.split(".")[0],
                    "image": str((path.parent / item["image"]).resolve()),
                    "label": str((path.parent / item["label"]).resolve()),
                }
            )
        if not self._items:
            raise DatasetError(f"{path}: the training list is empty")
        self.fractions = tuple(fractions)
        self.split_seed = split_seed

    @classmethod
    def layout_hint(cls) -> str:
        return "point root at a Decathlon dataset.json (or its folder) with 'labels' and 'training'"

    @property
    def labels(self) -> dict[str, int]:
        return dict(self._labels)

    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        self.check_split(split)
        items = self._items if split is None else random_split(self._items, self.fractions, self.split_seed)[split]
        return sorted(items, key=lambda e: e["case_id"])

    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        record = load_pair(Path(entry["image"]), label_file(entry), self._labels.values(), self.json_path.name)
        if "label" in record:
            record["label"] = record["label"].astype(np.uint8 if max(self._labels.values()) < 256 else np.int64)
        record["case_id"] = entry["case_id"]
        return record
