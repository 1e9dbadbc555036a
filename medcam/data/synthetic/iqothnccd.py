"""IQ-OTH/NCCD-like lung CT slices whose class is decided by a visible lesion.

Folders ``Normal cases``, ``Bengin cases`` (the real dataset's spelling) and
``Malignant cases`` with JPEGs ``Normal case (1).jpg``, ``Bengin case (1).jpg``,
``Malignant case (1).jpg``. Every slice shows the body, both lungs with vessels, the
heart and the spine in a lung window; benign slices add a small smooth round nodule,
malignant ones a larger lobulated, spiculated mass. Most images are square; every
fifth is not (the real set is "mostly 512 x 512"), so readers must resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcam.data.iqothnccd import IQOTH_FOLDERS
from medcam.data.synthetic.io import save_jpeg
from medcam.errors import UserError

DEFAULT_SIZE: tuple[int, int] = (128, 128)
_FILE_PREFIX = {0: "Normal case", 1: "Bengin case", 2: "Malignant case"}


def lung_slice(seed: int, cls: int, size: Sequence[int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A lung-window slice (uint8 rows x columns) of class ``cls`` and its lesion mask (bool)."""
    if cls not in (0, 1, 2):
        raise UserError(f"IQ-OTH/NCCD class {cls} is not 0 (normal), 1 (benign) or 2 (malignant)")
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (x - w / 2) / (w / 2), (y - h / 2) / (h / 2)
    image = np.zeros((h, w), dtype=np.float32)
    body = (u / rng.uniform(0.85, 0.95)) ** 2 + ((v - 0.02) / rng.uniform(0.62, 0.72)) ** 2 <= 1
    image[body] = 105
    lungs = np.zeros_like(body)
    centres = []
    for side in (-1, 1):
        cu, cv = side * rng.uniform(0.36, 0.44), rng.uniform(-0.08, 0.02)
        au, av = rng.uniform(0.27, 0.33), rng.uniform(0.42, 0.5)
        lung = ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1
        lungs |= lung
        centres.append((cu, cv, au, av))
    image[lungs] = 18
    # vessels: small bright dots, denser near the hila
    for _ in range(int(rng.integers(25, 45))):
        cu, cv, au, av = centres[int(rng.integers(2))]
        r = np.sqrt(rng.random())
        a = rng.uniform(0, 2 * np.pi)
        pu, pv = cu + 0.9 * au * r * np.cos(a), cv + 0.9 * av * r * np.sin(a)
        size_v = rng.uniform(0.006, 0.018) * (1.6 - r)
        image[((u - pu) ** 2 + (v - pv) ** 2 <= size_v**2) & lungs] = 85
    heart = ((u - 0.08) / 0.22) ** 2 + ((v + 0.12) / 0.2) ** 2 <= 1
    image[heart & body] = 125
    spine = (u**2 + (v - 0.45) ** 2) <= 0.1**2
    image[spine] = 235
    image[(u**2 + (v - 0.45) ** 2) <= 0.05**2] = 140
    lesion = np.zeros((h, w), dtype=bool)
    if cls > 0:
        cu, cv, au, av = centres[int(rng.integers(2))]
        r = np.sqrt(rng.uniform(0, 0.35))
        a = rng.uniform(0, 2 * np.pi)
        pu, pv = cu + au * r * np.cos(a), cv + av * r * np.sin(a)
        angle = np.arctan2(v - pv, u - pu)
        dist = np.sqrt((u - pu) ** 2 + (v - pv) ** 2)
        if cls == 1:  # benign: small, smooth, round
            radius = rng.uniform(0.035, 0.055)
        else:  # malignant: larger, lobulated outline with spicules
            phase = rng.uniform(0, 2 * np.pi, 3)
            radius = rng.uniform(0.08, 0.13) * (
                1 + 0.18 * np.sin(3 * angle + phase[0]) + 0.1 * np.sin(5 * angle + phase[1])
            )
            radius = radius * (1 + 0.35 * (np.sin(13 * angle + phase[2]) > 0.85))
        lesion = (dist <= radius) & body
        image[lesion] = rng.uniform(115, 140)
    image += rng.normal(0, 5, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), lesion


def write_iqothnccd_dataset(
    root: str | Path, counts: Sequence[int] = (10, 5, 10), seed: int = 0, size: Sequence[int] = DEFAULT_SIZE
) -> list[Path]:
    """Write (normal, benign, malignant) slices into the three class folders (RGB JPEG, grey content)."""
    if len(counts) != 3 or min(counts) < 0:
        raise UserError(f"counts {tuple(counts)} must be (normal, benign, malignant) image counts")
    root = Path(root)
    written = []
    for cls, count in enumerate(counts):
        folder = root / IQOTH_FOLDERS[cls][0]
        for k in range(1, count + 1):
            shape = tuple(size) if k % 5 else (int(size[0]) * 3 // 4, int(size[1]))
            grey, _ = lung_slice(int(np.random.SeedSequence([seed, cls, k]).generate_state(1)[0]), cls, shape)
            path = folder / f"{_FILE_PREFIX[cls]} ({k}).jpg"
            save_jpeg(np.repeat(grey[..., None], 3, axis=-1), path)
            written.append(path)
    return written
