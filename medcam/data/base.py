"""What every dataset reader offers: light index entries per split, and ``load(entry)``.

An entry is a small dict (ids and paths) that is cheap to list, shard across ranks and
cache keys on; ``load`` turns it into a MONAI-style record::

    {"image": float32 (C, *spatial), "label": (1, *spatial) ints | class index,
     "affine", "spacing", "orientation", "spatial_shape", "case_id", ...}

Arrays are channel-first and keep the file's voxel order; ``affine`` maps voxels to
RAS+ millimetres (identity-like for 2D photographs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from medcam.data.nifti import DatasetError
from medcam.data.splits import SPLITS


def regions_class_order(regions: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    """nnU-Net's ``regions_class_order`` for regions listed from broad to narrow: each region
    paints the label values it adds over the next region (their smallest), e.g. KiTS -> (1, 3, 2)."""
    sets = [set(v) for v in regions.values()]
    order = []
    for i, values in enumerate(sets):
        own = values - sets[i + 1] if i + 1 < len(sets) else values
        order.append(min(own or values))
    return tuple(order)


class RecordSource(Protocol):
    """What turns an index entry into a record: a :class:`Dataset`, or a wrapper around one."""

    def load(self, entry: dict[str, Any]) -> dict[str, Any]: ...


class Dataset(ABC):
    """A reader for one on-disk dataset layout."""

    name: ClassVar[str]
    task: ClassVar[str]  # "segmentation" | "classification"
    spatial_dims: ClassVar[int]

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root {self.root} is not a folder; {self.layout_hint()}")

    @classmethod
    def layout_hint(cls) -> str:
        """One line describing the expected layout (used in error messages)."""
        return "see datasets/<name>/README.md for the expected layout"

    @property
    @abstractmethod
    def labels(self) -> dict[str, int]:
        """Label (or class) name -> integer value in ``record["label"]``."""

    @property
    def regions(self) -> dict[str, tuple[int, ...]]:
        """Evaluation regions: name -> the label values it unites (empty if none)."""
        return {}

    @property
    def regions_class_order(self) -> tuple[int, ...]:
        """The label each region paints when region outputs become one label map."""
        return regions_class_order(self.regions)

    @abstractmethod
    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        """Index entries of ``split`` ("train", "val", "test") or of every case when ``None``."""

    @abstractmethod
    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The record (arrays and geometry) of one entry (without ``label`` when the entry's ``label`` is ``None``)."""

    @staticmethod
    def check_split(split: str | None) -> None:
        if split is not None and split not in SPLITS:
            raise DatasetError(f"split {split!r} is not one of {', '.join(SPLITS)}")

    def __len__(self) -> int:
        return len(self.entries())
