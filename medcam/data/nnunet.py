"""nnU-Net v2 raw datasets: ``DatasetXXX_Name/{dataset.json, imagesTr/, labelsTr/}``.

``dataset.json`` maps label NAME -> integer (``"kidney": 1``), or for region-based
training NAME -> list of integers (``"kidney": [1, 2, 3]``) together with
``regions_class_order`` (the label each region paints when predictions are merged).
Images are ``imagesTr/{case}_{channel:04d}{file_ending}``, labels ``labelsTr/{case}{file_ending}``
(or ``labelsTr/{case}.dcm``, a DICOM SEG, as the ground truth of ``medcam evaluate``).
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

SEG_ENDING = ".dcm"  # a DICOM SEG label: the ground truth of medcam evaluate (not nnU-Net's)


class NnUNetRaw(Dataset):
    """A raw nnU-Net v2 dataset folder (NIfTI file endings); cases split with ``split_seed``."""

    name = "nnU-Net raw"
    task = "segmentation"
    spatial_dims = 3

    def __init__(self, root: str | Path, fractions: Sequence[float] = (0.8, 0.2, 0.0), split_seed: int = 0) -> None:
        super().__init__(root)
        path = self.root / "dataset.json"
        if not path.is_file():
            raise DatasetError(f"{self.root} has no dataset.json; {self.layout_hint()}")
        try:
            self.spec = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} is not valid JSON ({err})") from err
        for key in ("channel_names", "labels", "file_ending"):
            if key not in self.spec:
                raise DatasetError(
                    f"{path} has no {key!r}; is it an nnU-Net v1 or Decathlon file? (use kind: decathlon)"
                )
        self.file_ending: str = self.spec["file_ending"]
        if not self.file_ending.startswith(".nii"):
            raise DatasetError(f"{path}: file_ending {self.file_ending!r} is not supported; medcam reads NIfTI")
        self.channels = sorted(int(k) for k in self.spec["channel_names"])
        raw = self.spec["labels"]
        self.region_based = any(isinstance(v, list | tuple) for v in raw.values())
        self._regions = {
            name: tuple(int(x) for x in (v if isinstance(v, list | tuple) else [v]))
            for name, v in raw.items()
            if name != "background"
        }
        if self.region_based:
            order = self.spec.get("regions_class_order")
            if order is None or len(order) != len(self._regions):
                raise DatasetError(f"{path}: region labels need regions_class_order with one value per region")
            self._order = tuple(int(v) for v in order)
            self._labels = {"background": 0, **{name: v for name, v in zip(self._regions, self._order, strict=True)}}
        else:
            self._labels = {name: int(v) for name, v in raw.items()}
        self.allowed = sorted({0, *(v for values in self._regions.values() for v in values)})
        labels_dir = self.root / "labelsTr"
        if not labels_dir.is_dir():
            raise DatasetError(f"{self.root} has no labelsTr/ folder; {self.layout_hint()}")
        cases = {p.name[: -len(self.file_ending)] for p in labels_dir.glob(f"*{self.file_ending}")}
        cases |= {p.name[: -len(SEG_ENDING)] for p in labels_dir.glob(f"*{SEG_ENDING}")}  # DICOM SEG ground truth
        self.case_ids = sorted(cases)
        if not self.case_ids:
            raise DatasetError(f"{labels_dir} holds no *{self.file_ending} label files")
        self.fractions = tuple(fractions)
        self.split_seed = split_seed

    @classmethod
    def layout_hint(cls) -> str:
        return "point root at the DatasetXXX_Name folder holding dataset.json, imagesTr/ and labelsTr/"

    @property
    def labels(self) -> dict[str, int]:
        return dict(self._labels)

    @property
    def regions(self) -> dict[str, tuple[int, ...]]:
        return dict(self._regions) if self.region_based else {}

    @property
    def regions_class_order(self) -> tuple[int, ...]:
        return self._order if self.region_based else super().regions_class_order

    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        self.check_split(split)
        ids = self.case_ids if split is None else random_split(self.case_ids, self.fractions, self.split_seed)[split]
        out = []
        for case in sorted(ids):
            images = [self.root / "imagesTr" / f"{case}_{c:04d}{self.file_ending}" for c in self.channels]
            for image in images:
                if not image.is_file():
                    raise DatasetError(f"{image} is missing; nnU-Net needs one file per channel in channel_names")
            label = self.root / "labelsTr" / f"{case}{self.file_ending}"
            if not label.is_file():
                label = label.with_name(f"{case}{SEG_ENDING}")
            out.append({"case_id": case, "image": [str(p) for p in images], "label": str(label)})
        return out

    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        images = [Path(p) for p in entry["image"]]
        record = load_pair(images, label_file(entry), self.allowed, f"{self.root.name}/dataset.json")
        if "label" in record:
            record["label"] = record["label"].astype(np.uint8 if max(self.allowed) < 256 else np.int64)
        record["case_id"] = entry["case_id"]
        return record
