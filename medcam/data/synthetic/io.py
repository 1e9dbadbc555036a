"""Atomic PNG/JPEG writers for the synthetic 2D datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(array: np.ndarray, path: Path, **options: object) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    Image.fromarray(array).save(tmp, format=options.pop("format"), **options)  # type: ignore[arg-type]
    tmp.replace(path)


def save_png(array: np.ndarray, path: Path) -> None:
    """Lossless PNG (masks keep their exact values)."""
    _save(np.ascontiguousarray(array), Path(path), format="PNG")


def save_jpeg(array: np.ndarray, path: Path, quality: int = 92) -> None:
    """8-bit JPEG (grey for 2D arrays, RGB for (rows, columns, 3))."""
    _save(np.ascontiguousarray(array), Path(path), format="JPEG", quality=quality)
