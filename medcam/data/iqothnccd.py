"""IQ-OTH/NCCD lung CT slices for 3-class classification.

Layout: ``Normal cases/``, ``Bengin cases/`` (sic: the real folder's spelling) and
``Malignant cases/`` with JPEGs named like ``Normal case (1).jpg``. Classes: 0 normal,
1 benign, 2 malignant. The RobustCAM protocol splits each class 60/20/20 with seed 42
(:func:`~medcam.data.splits.stratified_split`) and weights the cross-entropy by
``max_count / count`` of the training split (benign about 4.5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcam.data.base import Dataset
from medcam.data.images import IMAGE_SUFFIXES, flat_geometry, read_image
from medcam.data.nifti import DatasetError
from medcam.data.splits import stratified_split

# class -> accepted folder names (the dataset's own spelling first)
IQOTH_FOLDERS: dict[int, tuple[str, ...]] = {
    0: ("Normal cases",),
    1: ("Bengin cases", "Benign cases"),
    2: ("Malignant cases",),
}
IQOTH_CLASSES: dict[str, int] = {"normal": 0, "benign": 1, "malignant": 2}
_NUMBER = re.compile(r"\((\d+)\)")


def _natural_key(path: Path) -> tuple[int, str]:
    """``Normal case (10).jpg`` after ``(9)``: sort by the number in parentheses, then by name."""
    match = _NUMBER.search(path.name)
    return (int(match.group(1)) if match else -1, path.name)


class IQOTHNCCD(Dataset):
    """The three class folders, split per class with ``split_seed`` (60/20/20, seed 42 by default)."""

    name = "IQ-OTH/NCCD"
    task = "classification"
    spatial_dims = 2

    def __init__(self, root: str | Path, fractions: Sequence[float] = (0.6, 0.2, 0.2), split_seed: int = 42) -> None:
        super().__init__(root)
        self.folders = self._find_folders(self.root)
        self.fractions = tuple(fractions)
        self.split_seed = split_seed
        self._all: list[dict[str, Any]] = []
        for cls, folder in self.folders.items():
            files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
            if not files:
                raise DatasetError(f"{folder} holds no images; expected files like '{folder.name[:-1]} (1).jpg'")
            self._all += [{"case_id": p.stem, "image": str(p), "label": cls} for p in files]
        self._splits = stratified_split(self._all, [e["label"] for e in self._all], self.fractions, split_seed)

    @classmethod
    def layout_hint(cls) -> str:
        return "point root at the folder holding 'Normal cases', 'Bengin cases' (sic) and 'Malignant cases'"

    @classmethod
    def _find_folders(cls, root: Path) -> dict[int, Path]:
        # the Kaggle archive nests the three folders one level down: accept that too
        for base in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
            found = {}
            for cls_index, names in IQOTH_FOLDERS.items():
                for name in names:
                    if (base / name).is_dir():
                        found[cls_index] = base / name
                        break
            if len(found) == 3:
                return found
            if found and base == root:
                missing = [IQOTH_FOLDERS[c][0] for c in IQOTH_FOLDERS if c not in found]
                raise DatasetError(f"{root} lacks the folder(s) {missing}; {cls.layout_hint()}")
        raise DatasetError(f"{root} holds none of the IQ-OTH/NCCD class folders; {cls.layout_hint()}")

    @property
    def labels(self) -> dict[str, int]:
        return dict(IQOTH_CLASSES)

    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        self.check_split(split)
        return list(self._all) if split is None else list(self._splits[split])

    def class_counts(self, split: str | None = "train") -> list[int]:
        counts = [0] * len(IQOTH_CLASSES)
        for entry in self.entries(split):
            counts[entry["label"]] += 1
        return counts

    def class_weights(self, split: str | None = "train") -> list[float]:
        """Cross-entropy weights ``max(count) / count`` per class (the rarest class weighs most)."""
        counts = self.class_counts(split)
        if min(counts) == 0:
            raise DatasetError(f"the {split} split has no image of some class (counts {counts}); add images")
        return [max(counts) / c for c in counts]

    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        # slices are stored as 8-bit JPEG (mostly 512 x 512, not all); RGB for ImageNet-style backbones
        image = read_image(entry["image"], "RGB")
        return {
            "image": image,
            "label": int(entry["label"]),
            "case_id": entry["case_id"],
            "image_path": entry["image"],
            **flat_geometry(image.shape[1:]),
        }
