"""KiTS23 (kidney tumour CT): 3D cases and 2D axial slices, labels and HEC regions.

Layout (``root`` is KiTS23's ``dataset/`` folder; the repository root above it works too)::

    dataset/kits23.json
    dataset/case_00000/imaging.nii.gz        float32 HU, axis 0 axial, ('I','P','L')
    dataset/case_00000/segmentation.nii.gz   uint8: 0 background, 1 kidney, 2 tumor, 3 cyst
                                             (or segmentation.dcm, a DICOM SEG: medcam evaluate only)

KiTS23 has no official validation split; cases are split at random with ``split_seed``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medcam.data.base import Dataset
from medcam.data.nifti import DatasetError, label_file, load_pair, reorient
from medcam.data.splits import random_split

KITS_LABELS: dict[str, int] = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
# hierarchical evaluation classes (HECs) of KiTS23: region -> label values
KITS_REGIONS: dict[str, tuple[int, ...]] = {"kidney_and_masses": (1, 2, 3), "masses": (2, 3), "tumor": (2,)}
_CASE = re.compile(r"case_\d{5}")


def region_masks(label: np.ndarray, regions: dict[str, tuple[int, ...]] = KITS_REGIONS) -> np.ndarray:
    """Stack one boolean mask per region along a new first axis (``label`` without channel axis)."""
    return np.stack([np.isin(label, values) for values in regions.values()])


class KiTS23(Dataset):
    """3D KiTS23 cases; ``fractions`` (train, val, test) split the case list with ``split_seed``."""

    name = "KiTS23"
    task = "segmentation"
    spatial_dims = 3

    def __init__(self, root: str | Path, fractions: Sequence[float] = (0.8, 0.2, 0.0), split_seed: int = 0) -> None:
        super().__init__(root)
        if not self._case_dirs(self.root) and (self.root / "dataset").is_dir():
            self.root = self.root / "dataset"  # the kits23 repository root was given
        self.case_ids = [p.name for p in self._case_dirs(self.root)]
        if not self.case_ids:
            raise DatasetError(f"{self.root} holds no case_XXXXX folders; {self.layout_hint()}")
        self.fractions = tuple(fractions)
        self.split_seed = split_seed

    @classmethod
    def layout_hint(cls) -> str:
        return "point root at KiTS23's dataset/ folder (the one with case_00000/imaging.nii.gz and kits23.json)"

    @staticmethod
    def _case_dirs(root: Path) -> list[Path]:
        return sorted(p for p in root.iterdir() if p.is_dir() and _CASE.fullmatch(p.name))

    @property
    def labels(self) -> dict[str, int]:
        return dict(KITS_LABELS)

    @property
    def regions(self) -> dict[str, tuple[int, ...]]:
        return dict(KITS_REGIONS)

    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        self.check_split(split)
        ids = self.case_ids if split is None else random_split(self.case_ids, self.fractions, self.split_seed)[split]
        return [self._entry(case_id) for case_id in sorted(ids)]

    def _entry(self, case_id: str) -> dict[str, Any]:
        folder = self.root / case_id
        image, label = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
        if not label.is_file() and (folder / "segmentation.dcm").is_file():
            label = folder / "segmentation.dcm"  # a DICOM SEG ground truth (medcam evaluate)
        if not image.is_file():
            raise DatasetError(
                f"{image} is missing; KiTS23's git repository ships only segmentations, "
                "fetch the images with `kits23_download_data` (see datasets/kits23/README.md)"
            )
        if not label.is_file():
            raise DatasetError(
                f"{label} is missing; every KiTS23 training case has a segmentation.nii.gz (or a DICOM SEG "
                "segmentation.dcm for medcam evaluate)"
            )
        return {"case_id": case_id, "image": str(image), "label": str(label)}

    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        record = load_pair(Path(entry["image"]), label_file(entry), KITS_LABELS.values(), "KiTS23")
        if "label" in record:
            record["label"] = record["label"].astype(np.uint8)
        record["case_id"] = entry["case_id"]
        return record

    def clinical(self) -> dict[str, dict[str, Any]]:
        """``kits23.json`` as case id -> clinical record (empty if the file is absent)."""
        path = self.root / "kits23.json"
        if not path.is_file():
            return {}
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} is not valid JSON ({err})") from err
        return {r["case_id"]: r for r in records}


class KiTS23Slices(Dataset):
    """2D axial slices of KiTS23 (axis 0 of the KiTS volume), as Rheude et al. trained on.

    Entries are (case, slice index) pairs; ``foreground_only`` keeps slices that show
    kidney, tumour or cyst. Records have ``image`` (1, rows, columns) and ``label``
    (1, rows, columns), ``spacing`` (row, column) in mm and the case's 3D ``affine``.
    """

    name = "KiTS23 slices"
    task = "segmentation"
    spatial_dims = 2

    def __init__(
        self,
        root: str | Path,
        fractions: Sequence[float] = (0.8, 0.2, 0.0),
        split_seed: int = 0,
        foreground_only: bool = True,
    ) -> None:
        self.volumes = KiTS23(root, fractions=fractions, split_seed=split_seed)
        self.root = self.volumes.root
        self.foreground_only = foreground_only
        self._load_volume = lru_cache(maxsize=2)(self._read_volume)

    @property
    def labels(self) -> dict[str, int]:
        return self.volumes.labels

    @property
    def regions(self) -> dict[str, tuple[int, ...]]:
        return self.volumes.regions

    def _read_volume(self, case_id: str) -> dict[str, Any]:
        # slices are axial only in KiTS's own IPL axes: bring any other storage order there first
        return reorient(self.volumes.load(self.volumes._entry(case_id)), "IPL")

    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        out = []
        for entry in self.volumes.entries(split):
            label = self._load_volume(entry["case_id"])["label"][0]
            keep = label.reshape(label.shape[0], -1).any(1) if self.foreground_only else np.ones(label.shape[0], bool)
            out += [{**entry, "slice": int(k)} for k in np.flatnonzero(keep)]
        return out

    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        volume = self._load_volume(entry["case_id"])
        k = int(entry["slice"])
        return {
            "image": volume["image"][:, k],
            "label": volume["label"][:, k],
            "affine": volume["affine"],
            "spacing": volume["spacing"][1:],
            "orientation": volume["orientation"],
            "spatial_shape": volume["spatial_shape"][1:],
            "case_id": entry["case_id"],
            "slice": k,
            "image_path": volume["image_path"],
        }
