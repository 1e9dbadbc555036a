"""OPG panoramic dental X-rays: ``{train,validation,test}/{images/*.jpg, masks/*.png}``.

Masks hold 0 (background) and 1..32 (one value per tooth, FDI-numbered datasets such
as DNS) or a binary tooth mask (0/1 or 0/255, like UFBA-UESC). ``mode="teeth"`` keeps
the 33 classes; ``mode="binary"`` merges every tooth into one class. Values 1..32 are
read as FDI teeth in quadrant order: 1..8 -> 11..18, 9..16 -> 21..28, 17..24 -> 31..38,
25..32 -> 41..48.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcam.data.base import Dataset
from medcam.data.images import IMAGE_SUFFIXES, check_same_size, flat_geometry, read_image, read_mask
from medcam.data.nifti import DatasetError, check_label_values

OPG_SPLITS = {"train": "train", "val": "validation", "test": "test"}
OPG_TEETH: dict[str, int] = {
    "background": 0,
    **{f"tooth_{k // 8 + 1}{k % 8 + 1}": k + 1 for k in range(32)},
}
OPG_BINARY: dict[str, int] = {"background": 0, "tooth": 1}


class OPG(Dataset):
    """OPG images and tooth masks in Rheude et al.'s split folders."""

    name = "OPG"
    task = "segmentation"
    spatial_dims = 2

    def __init__(self, root: str | Path, mode: str = "teeth") -> None:
        super().__init__(root)
        if mode not in ("teeth", "binary"):
            raise DatasetError(f"OPG mode {mode!r} is not 'teeth' (33 classes) or 'binary'")
        self.mode = mode
        if not (self.root / "train" / "images").is_dir():
            raise DatasetError(f"{self.root} has no train/images folder; {self.layout_hint()}")

    @classmethod
    def layout_hint(cls) -> str:
        return "point root at the folder holding train/, validation/ and test/, each with images/*.jpg and masks/*.png"

    @property
    def labels(self) -> dict[str, int]:
        return dict(OPG_TEETH if self.mode == "teeth" else OPG_BINARY)

    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        self.check_split(split)
        splits = [split] if split is not None else list(OPG_SPLITS)
        out = []
        for name in splits:
            folder = self.root / OPG_SPLITS[name]
            if not folder.is_dir():
                continue
            for image in sorted((folder / "images").iterdir()):
                if image.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                mask = folder / "masks" / f"{image.stem}.png"
                if not mask.is_file():
                    raise DatasetError(f"{image} has no mask {mask}; masks are PNGs named like their image")
                out.append({"case_id": image.stem, "split": name, "image": str(image), "label": str(mask)})
        return out

    def load(self, entry: dict[str, Any]) -> dict[str, Any]:
        image_path, mask_path = Path(entry["image"]), Path(entry["label"])
        image = read_image(image_path, "L")
        mask = read_mask(mask_path)
        check_same_size(image, mask, image_path, mask_path)
        values = set(np.unique(mask).tolist())
        if self.mode == "binary":
            if not (values <= {0, 1} or values <= {0, 255} or values <= set(range(33))):
                raise DatasetError(f"{mask_path} holds values {sorted(values)}; a binary tooth mask is 0/1 or 0/255")
            mask = (mask > 0).astype(np.uint8)
        else:
            if values <= {0, 255} and 255 in values:
                raise DatasetError(f"{mask_path} is a binary 0/255 mask; set dataset.mode: binary for it")
            check_label_values(mask, range(33), mask_path, "OPG (33 classes)")
            mask = mask.astype(np.uint8)
        return {
            "image": image,
            "label": mask,
            "case_id": entry["case_id"],
            "image_path": str(image_path),
            "label_path": str(mask_path),
            **flat_geometry(image.shape[1:]),
        }
