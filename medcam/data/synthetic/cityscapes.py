"""Cityscapes-like street scenes in the real folder layout with ``*_gtFine_labelIds.png``.

``leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png`` (RGB) and
``gtFine/{split}/{city}/..._gtFine_labelIds.png`` holding Cityscapes label ids (not
train ids): sky (23), buildings (11), vegetation (21), road (7), sidewalks (8), terrain
(22), poles (17), traffic signs (20), cars (26), persons (24), the ego vehicle (1) and
static (4) / unlabeled (0) pixels that training must ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcam.data.synthetic.io import save_png
from medcam.errors import UserError

DEFAULT_SIZE: tuple[int, int] = (128, 256)  # rows x columns; real frames are 1024 x 2048
CITIES: dict[str, tuple[str, ...]] = {"train": ("aachen", "bochum"), "val": ("frankfurt",), "test": ("berlin",)}
_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    1: (20, 20, 25),
    4: (90, 80, 70),
    7: (128, 64, 128),
    8: (230, 190, 200),
    11: (110, 100, 95),
    17: (150, 150, 150),
    20: (220, 220, 0),
    21: (107, 142, 35),
    22: (152, 251, 152),
    23: (70, 130, 180),
    24: (220, 60, 60),
    26: (20, 20, 160),
}


def street_scene(seed: int, size: Sequence[int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One RGB scene (rows, columns, 3) uint8 and its label-id map (rows, columns) uint8."""
    if len(size) != 2 or min(size) < 32:
        raise UserError(f"Cityscapes size {tuple(size)} must be (rows, columns), each >= 32")
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    ids = np.full((h, w), 23, dtype=np.uint8)  # sky
    horizon = int(h * rng.uniform(0.38, 0.5))
    # buildings: a skyline of blocks reaching down to the horizon
    col = 0
    while col < w:
        width = int(rng.uniform(0.08, 0.2) * w)
        top = int(rng.uniform(0.05, 0.3) * h)
        label = 21 if rng.random() < 0.25 else 11
        ids[top:horizon, col : col + width] = label
        col += width
    # road: a trapezoid narrowing to a vanishing point; sidewalks and terrain beside it
    vanish = w * rng.uniform(0.4, 0.6)
    t = np.clip((y - horizon) / max(h - horizon, 1), 0, 1)
    half = 0.05 * w + t * 0.55 * w
    below = y >= horizon
    ids[below & (np.abs(x - vanish) > half * 1.25)] = 22
    ids[below & (np.abs(x - vanish) <= half * 1.25)] = 8
    ids[below & (np.abs(x - vanish) <= half)] = 7
    # poles and signs on the sidewalks
    for _ in range(int(rng.integers(1, 4))):
        side = rng.choice([-1, 1])
        base_row = int(rng.uniform(horizon + 0.15 * (h - horizon), h * 0.9))
        tb = (base_row - horizon) / max(h - horizon, 1)
        px = int(vanish + side * (0.05 * w + tb * 0.55 * w) * 1.12)
        height = int((0.15 + 0.5 * tb) * h)
        pw = max(1, int(w * 0.006 * (1 + 2 * tb)))
        ids[max(0, base_row - height) : base_row, max(0, px - pw) : px + pw] = 17
        sign = max(0, base_row - height)
        ids[sign : sign + 3 * pw + 2, max(0, px - 3 * pw) : px + 3 * pw] = 20
    # cars and persons, bigger when nearer (lower in the image)
    for _ in range(int(rng.integers(1, 5))):
        row = int(rng.uniform(horizon + 0.1 * (h - horizon), h * 0.85))
        tb = (row - horizon) / max(h - horizon, 1)
        cw, ch = int((0.06 + 0.25 * tb) * w), int((0.04 + 0.16 * tb) * h)
        cx = int(vanish + rng.uniform(-0.8, 0.8) * (0.05 * w + tb * 0.55 * w))
        box = (y > row - ch) & (y <= row) & (np.abs(x - cx) < cw / 2)
        cabin = (y > row - ch * 1.5) & (y <= row - ch) & (np.abs(x - cx) < cw / 3)
        ids[box | cabin] = 26
    for _ in range(int(rng.integers(0, 4))):
        row = int(rng.uniform(horizon + 0.1 * (h - horizon), h * 0.9))
        tb = (row - horizon) / max(h - horizon, 1)
        side = rng.choice([-1, 1])
        px = vanish + side * (0.05 * w + tb * 0.55 * w) * 1.1
        ph, half_w = (0.08 + 0.3 * tb) * h, (0.01 + 0.03 * tb) * w
        body = (y > row - ph) & (y <= row) & (np.abs(x - px) < half_w)
        head = (y - (row - ph - half_w)) ** 2 + (x - px) ** 2 < half_w**2
        ids[body | head] = 24
    # static clutter, ego vehicle bonnet and a few unlabeled pixels
    ids[(y > h * 0.93) & (np.abs(x - w / 2) < w * 0.35)] = 1
    ids[(y > horizon - 3) & (y < horizon) & (x < w * 0.03)] = 4
    ids[:2, :2] = 0
    lut = np.zeros((256, 3), dtype=np.float32)
    for label_id, colour in _COLOURS.items():
        lut[label_id] = colour
    rgb = lut[ids] * rng.uniform(0.85, 1.1) + rng.normal(0, 8, size=(h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), ids


def write_cityscapes_dataset(
    root: str | Path, n_images: Sequence[int] = (6, 2, 1), seed: int = 0, size: Sequence[int] = DEFAULT_SIZE
) -> list[Path]:
    """Write (train, val, test) scenes with their labelIds masks; frames alternate between the split's cities."""
    if len(n_images) != 3 or min(n_images) < 0:
        raise UserError(f"n_images {tuple(n_images)} must be (train, val, test) counts")
    root = Path(root)
    written, index = [], 0
    for split, count in zip(("train", "val", "test"), n_images, strict=True):
        for k in range(count):
            city = CITIES[split][k % len(CITIES[split])]
            rgb, ids = street_scene(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]), size)
            stem = f"{city}_{k:06d}_{19:06d}"
            image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            save_png(rgb, image)
            save_png(ids, root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            written.append(image)
            index += 1
    return written
