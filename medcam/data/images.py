"""2D photographs and masks (JPEG/PNG) as channel-first arrays in (row, column) order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcam.data.nifti import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# 16/32-bit grey modes, whose values PIL's conversion to "L" or "RGB" would clip at 255
_DEEP_GREY = ("I", "I;16", "I;16B", "I;16L", "F")


def read_image(path: str | Path, mode: str = "L") -> np.ndarray:
    """Pixels as float32 (C, rows, columns); ``mode`` "L" gives one channel, "RGB" three.

    8-bit images keep 0..255 (colour to grey by PIL's ITU-R 601 luma, grey to RGB by
    replication); 16/32-bit grey images keep their values. ``medcam explain`` feeds a
    picture to a 2D network through this same function.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            if img.mode in _DEEP_GREY and mode in ("L", "RGB"):
                grey = np.asarray(img, dtype=np.float32)
                array = grey if mode == "L" else np.repeat(grey[..., None], 3, axis=-1)
            else:
                array = np.asarray(img.convert(mode), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"cannot read {path} as an image ({err})") from err
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def read_mask(path: str | Path) -> np.ndarray:
    """Integer mask (1, rows, columns) exactly as stored (palette indices, not colours)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file {path} is missing; every image needs its mask")
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "1"):
                raise DatasetError(f"{path} is a {img.mode} image; a label mask must be single-channel")
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"cannot read {path} as a mask ({err})") from err
    return array.astype(np.int64)[None]


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    if image.shape[1:] != mask.shape[1:]:
        raise DatasetError(
            f"{mask_path.name} is {mask.shape[1]}x{mask.shape[2]} but {image_path.name} is "
            f"{image.shape[1]}x{image.shape[2]} (rows x columns); a mask must match its image"
        )


def flat_geometry(shape: tuple[int, ...]) -> dict[str, Any]:
    """Geometry entries of a 2D photograph: unit pixels, no patient orientation."""
    return {"affine": np.eye(3), "spacing": (1.0, 1.0), "orientation": None, "spatial_shape": tuple(shape)}
