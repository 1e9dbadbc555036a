"""OPG-like panoramic dental X-rays in Rheude et al.'s layout, with per-tooth masks.

``root/{train,validation,test}/images/opg_XXXX.jpg`` (grey JPEG) and
``.../masks/opg_XXXX.png`` (uint8): 0 background and 1..32 one value per tooth in FDI
quadrant order (see :mod:`medcam.data.opg`), or 0/255 with ``binary=True`` (UFBA-UESC
style). The picture: dark soft tissue, the bright mandible and maxilla bands along a
smile-shaped arch, and up to 32 teeth (bright enamel crowns, dimmer roots, a dark pulp
canal) along the upper and lower arches; a few teeth are missing in each image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcam.data.synthetic.io import save_jpeg, save_png
from medcam.errors import UserError

DEFAULT_SIZE: tuple[int, int] = (112, 200)  # rows x columns; the real data is resized to 560 x 992


def opg_image(seed: int, size: Sequence[int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One panoramic image (uint8 rows x columns) and its 33-class tooth mask (uint8)."""
    if len(size) != 2 or min(size) < 32:
        raise UserError(f"OPG size {tuple(size)} must be (rows, columns), each >= 32")
    rows, cols = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    u = (x - cols / 2) / (cols / 2)  # -1 (image left = patient right) .. 1
    v = y / rows
    image = 40 + 15 * np.exp(-(u**2) / 0.5)  # soft tissue, brighter in the middle
    # arch curve: the occlusal plane smiles (lower in the middle)
    smile = rng.uniform(0.04, 0.09)
    occlusal = 0.5 + smile * (1 - u**2) + rng.uniform(-0.03, 0.03)
    bone = np.exp(-(((v - occlusal) / 0.28) ** 2)) * (np.abs(u) < 0.95)
    image += 60 * bone
    mask = np.zeros((rows, cols), dtype=np.uint8)
    tooth_width = 0.95 / 8  # half-arch spans |u| < 0.95 with 8 teeth per quadrant
    missing = set(rng.choice(32, size=int(rng.integers(0, 4)), replace=False).tolist())
    for quadrant in range(4):  # FDI 1 upper right, 2 upper left, 3 lower left, 4 lower right
        upper = quadrant in (0, 1)
        side = -1 if quadrant in (0, 3) else 1  # patient right is image left
        for t in range(8):  # t = 0 central incisor .. 7 third molar
            index = quadrant * 8 + t
            if index in missing:
                continue
            centre_u = side * (t + 0.5) * tooth_width
            width = tooth_width * (0.38 if t < 3 else 0.45) * rng.uniform(0.9, 1.05)
            length = (0.30 if t < 3 else 0.26) * rng.uniform(0.9, 1.1)
            base = float(occlusal[0, int((centre_u + 1) / 2 * (cols - 1))])
            direction = -1 if upper else 1
            # tooth as a tapered shape from the occlusal plane towards the root tip
            depth = (v - base) * direction  # 0 at the biting edge, grows into the jaw
            along = np.clip(depth / length, 0, 1)
            half_w = width * (1.0 - 0.55 * along**1.5)
            shape = (depth > 0.01) & (depth < length) & (np.abs(u - centre_u) < half_w)
            crown = shape & (along < 0.35)
            pulp = shape & (np.abs(u - centre_u) < half_w * 0.25) & (along > 0.2) & (along < 0.9)
            image[shape] = 150 + 20 * rng.random()
            image[crown] = 215 + 15 * rng.random()
            image[pulp] = 110
            mask[shape] = index + 1
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_opg_dataset(
    root: str | Path,
    n_images: int | Sequence[int] = (6, 2, 2),
    seed: int = 0,
    size: Sequence[int] = DEFAULT_SIZE,
    binary: bool = False,
) -> list[Path]:
    """Write ``train/validation/test`` folders with ``n_images`` = (train, validation, test) images each.

    An int puts that many images in ``train`` only. Image ``i`` (counted over the splits)
    is drawn from ``SeedSequence([seed, i])``.
    """
    counts = (n_images, 0, 0) if isinstance(n_images, int) else tuple(n_images)
    if len(counts) != 3 or min(counts) < 0:
        raise UserError(f"n_images {n_images} must be an int or (train, validation, test) counts")
    root = Path(root)
    written, index = [], 0
    for split, count in zip(("train", "validation", "test"), counts, strict=True):
        for _ in range(count):
            image, mask = opg_image(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]), size)
            stem = f"opg_{index:04d}"
            save_jpeg(image, root / split / "images" / f"{stem}.jpg")
            stored = np.where(mask > 0, 255, 0).astype(np.uint8) if binary else mask
            save_png(stored, root / split / "masks" / f"{stem}.png")
            written.append(root / split / "images" / f"{stem}.jpg")
            index += 1
    return written
