"""A KiTS23-like abdominal CT phantom, written in KiTS23's exact on-disk layout.

Each case is ``case_XXXXX/imaging.nii.gz`` (float32 Hounsfield units) and
``case_XXXXX/segmentation.nii.gz`` (uint8: 0 background, 1 kidney, 2 tumor, 3 cyst),
with KiTS's geometry: nibabel array axis 0 is the axial slice and the axes point
Inferior, Posterior, Left (``nib.aff2axcodes == ('I', 'P', 'L')``), zooms are
(slice thickness, row spacing, column spacing), ``sform_code`` 2 and ``qform_code`` 0.
``write_kits_dataset`` also writes ``kits23.json`` with per-case clinical fields.

The anatomy is built in millimetres, so a case looks the same at any ``shape``:
skin and subcutaneous fat (-100 HU), abdominal wall muscle (~50 HU), visceral fat
(-90 HU), bowel loops (~35 HU) with gas (-950 HU), spine (cortical ~700 HU, cancellous
~220 HU, discs, canal, posterior elements), psoas and paraspinal muscles, contrast-filled
aorta and IVC, liver (~105 HU), spleen (~110 HU), and two contrast-enhanced kidneys
(150-200 HU) with renal sinus fat. Every case has at least one tumour (60-120 HU,
sometimes necrotic inside, often bulging out of the kidney) and usually cysts (0-20 HU).
Voxel sampling, a light partial-volume blur and Gaussian noise make it CT-like.
Everything is drawn from ``numpy.random.default_rng(seed)``: same seed, same bytes.

Why one module of this size: one phantom's anatomy (organs, vessels, lesions, noise),
which reads best in one place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medcam.data.kits import KITS_LABELS, KITS_REGIONS
from medcam.errors import UserError

# KiTS23's published training case numbers (the test cases 589..698 are hidden)
KITS_TRAINING_CASES: tuple[int, ...] = (*range(300), *range(400, 589))
__all__ = [
    "KITS_LABELS",
    "KITS_REGIONS",
    "KITS_TRAINING_CASES",
    "kits_phantom",
    "write_kits_case",
    "write_kits_dataset",
]

DEFAULT_SHAPE: tuple[int, int, int] = (64, 128, 128)
FULL_SHAPE: tuple[int, int, int] = (200, 512, 512)
_FOV_Z_MM = 320.0  # cranio-caudal extent at the nominal slice thickness
_FOV_XY_MM = 400.0  # nominal in-plane field of view


@dataclass(frozen=True)
class KitsPhantom:
    """One phantom case in nibabel's array order (slice, row, column) = (I, P, L)."""

    image: np.ndarray  # float32 HU
    label: np.ndarray  # uint8 0..3
    affine: np.ndarray  # 4x4 voxel -> RAS+ world (mm)
    clinical: dict[str, Any] = field(default_factory=dict)
    instances: dict[str, list[np.ndarray]] = field(default_factory=dict)  # kidney/tumor/cyst masks

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))  # type: ignore[return-value]


def case_name(case_id: int | str) -> str:
    """``case_00012`` for 12 (a string is checked and returned as is)."""
    if isinstance(case_id, str):
        if not (case_id.startswith("case_") and case_id[5:].isdigit() and len(case_id) == 10):
            raise UserError(f"case id {case_id!r} is not like KiTS's 'case_00012'; pass an int or 'case_XXXXX'")
        return case_id
    if not 0 <= int(case_id) <= 99999:
        raise UserError(f"case number {case_id} is outside 0..99999")
    return f"case_{int(case_id):05d}"


def kits_affine(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """KiTS-style affine: axis 0 -> Inferior, axis 1 -> Posterior, axis 2 -> Left (RAS+ world)."""
    sz, sy, sx = (float(s) for s in spacing)
    affine = np.zeros((4, 4))
    affine[2, 0] = -sz  # +slice index = -S (inferior)
    affine[1, 1] = -sy  # +row index = -A (posterior)
    affine[0, 2] = -sx  # +column index = -R (patient left)
    affine[3, 3] = 1.0
    # put the volume centre at the world origin, like a scanner iso-centre
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


class _Grid:
    """Voxel-centre coordinates in mm: z inferior, y posterior, x patient-left (centred)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape = shape
        self.spacing = spacing
        self.axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]

    def box(self, centre: np.ndarray, half: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index box covering centre +- half (mm), or None if it misses the volume."""
        out = []
        for axis, c, h in zip(self.axes, centre, half, strict=True):
            lo = int(np.searchsorted(axis, c - h, side="left"))
            hi = int(np.searchsorted(axis, c + h, side="right"))
            if hi <= lo:
                return None
            out.append(slice(lo, hi))
        return out[0], out[1], out[2]

    def local(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, y, x = (a[s] for a, s in zip(self.axes, box, strict=True))
        return z[:, None, None], y[None, :, None], x[None, None, :]


def _rotation(yaw: float, tilt: float) -> np.ndarray:
    """Rotation about the z axis by ``yaw`` then about the y axis by ``tilt`` (radians); columns in (z, y, x)."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    ct, st = math.cos(tilt), math.sin(tilt)
    # axes order (z, y, x); yaw turns y into x (axial plane), tilt turns z into x (coronal plane)
    r_yaw = np.array([[1, 0, 0], [0, cy, -sy], [0, sy, cy]])
    r_tilt = np.array([[ct, 0, -st], [0, 1, 0], [st, 0, ct]])
    return r_tilt @ r_yaw


@dataclass(frozen=True)
class _Ellipsoid:
    centre: np.ndarray  # (z, y, x) mm
    half: np.ndarray  # half axes (mm) along the rotated axes
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    def extent(self) -> np.ndarray:
        return np.sqrt(((self.rotation * self.half[None, :]) ** 2).sum(1))

    def level(self, grid: _Grid) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Box and normalised radius (<1 inside) of the ellipsoid in that box."""
        box = grid.box(self.centre, self.extent() + 1e-6)
        if box is None:
            return None
        z, y, x = grid.local(box)
        dz, dy, dx = z - self.centre[0], y - self.centre[1], x - self.centre[2]
        r = self.rotation
        q = np.zeros(np.broadcast_shapes(dz.shape, dy.shape, dx.shape))
        for k in range(3):
            u = r[0, k] * dz + r[1, k] * dy + r[2, k] * dx
            q = q + (u / self.half[k]) ** 2
        return box, np.sqrt(q)


def _paint(volume: np.ndarray, box: tuple[slice, slice, slice], mask: np.ndarray, value: np.ndarray | float) -> None:
    region = volume[box]
    if isinstance(value, np.ndarray):
        region[mask] = value[mask]
    else:
        region[mask] = value


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: tuple[int, ...]) -> np.ndarray:
    """Smooth unit-variance-ish noise: coarse Gaussian noise, (tri)linearly up-sampled to ``shape``."""
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(rng.standard_normal(cells).astype(np.float32))[None, None]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    fine = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return fine[0, 0].numpy()


def kits_phantom(
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    noise_hu: float | None = None,
) -> KitsPhantom:
    """Build one KiTS-like case in memory (see the module docstring for the anatomy).

    ``shape`` is (slices, rows, columns). ``spacing`` (mm, same order) defaults to a
    320 mm cranio-caudal and 360-440 mm in-plane field of view drawn per case, so zooms
    are anisotropic like KiTS's (e.g. (5.0, 3.1, 3.1) at the default shape).
    ``noise_hu`` is the CT noise standard deviation (default 8-15 HU, drawn per case).
    """
    if len(shape) != 3 or min(shape) < 8:
        raise UserError(f"phantom shape {tuple(shape)} must be 3 sizes >= 8 (slices, rows, columns)")
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    rng = np.random.default_rng(seed)
    if spacing is None:
        fov = rng.uniform(360.0, 440.0)
        spacing3 = (_FOV_Z_MM / shape3[0], fov / shape3[1], fov / shape3[2])
    else:
        if len(spacing) != 3 or min(spacing) <= 0:
            raise UserError(f"phantom spacing {tuple(spacing)} must be 3 positive sizes in mm")
        spacing3 = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    grid = _Grid(shape3, spacing3)
    z, y, x = grid.axes
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]

    image = np.full(shape3, -1000.0, dtype=np.float32)
    label = np.zeros(shape3, dtype=np.uint8)

    # body: elliptic cylinder, slightly wider inferiorly (flanks), shifted per case
    a = rng.uniform(140.0, 175.0)
    b = rng.uniform(100.0, 125.0)
    y0 = rng.uniform(-10.0, 10.0)
    z_shift = rng.uniform(-15.0, 15.0)
    widen = 1.0 + 0.06 * np.clip((zz - z_shift) / 160.0, -1, 1)
    rho = np.sqrt((xx / (a * widen)) ** 2 + ((yy - y0) / b) ** 2)  # (D, H, W) normalised radius
    body = rho <= 1.0
    fat = rng.uniform(12.0, 32.0)  # subcutaneous fat thickness (mm)
    wall = 12.0
    inner = rho <= 1.0 - fat / b
    cavity = rho <= 1.0 - (fat + wall) / b
    image[body] = -100.0
    image[inner] = 50.0
    image[cavity] = -90.0

    # bowel loops with gas: a thresholded smooth field inside the cavity
    cells = tuple(max(2, round(n * s / 35.0)) for n, s in zip(shape3, spacing3, strict=True))
    loops = _smooth_field(rng, shape3, cells)
    gas = _smooth_field(rng, shape3, cells)
    bowel = cavity & (loops > 0.35)
    image[bowel] = 35.0
    image[bowel & (gas > 1.3)] = -950.0

    # spine and back muscles (cylinders along z): vertebral body centre yb
    yb = y0 + b - rng.uniform(48.0, 60.0)
    plane_y, plane_x = yy[0], xx[0]  # (H, 1), (1, W)

    def disc(cy: float, cx: float, r: float) -> np.ndarray:
        return (plane_y - cy) ** 2 + (plane_x - cx) ** 2 <= r * r

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((plane_y - cy) / ry) ** 2 + ((plane_x - cx) / rx) ** 2 <= 1.0

    for side in (-1, 1):
        paraspinal = ellipse(yb + 42.0, side * 38.0, 18.0, 26.0)
        image[:, paraspinal] = 55.0
    vert_r = rng.uniform(15.0, 19.0)
    vertebral_body = disc(yb, 0.0, vert_r)
    cortex = vertebral_body & ~disc(yb, 0.0, vert_r - 2.5)
    arch = disc(yb + vert_r + 9.0, 0.0, 14.0)
    canal = disc(yb + vert_r + 9.0, 0.0, 8.0)
    spinous = (np.abs(plane_x) <= 4.0) & (plane_y > yb + vert_r + 20.0) & (plane_y < yb + vert_r + 48.0)
    discs = (np.mod(z - z_shift, 32.0) < 7.0)[:, None, None]  # intervertebral discs every 32 mm
    posterior = (arch & ~canal) | spinous
    image[:, posterior] = 500.0
    image[:, canal] = 10.0
    image[:, vertebral_body] = np.where(discs[:, :, 0], 90.0, 220.0)  # (D, 1) against (D, n)
    image[:, cortex] = np.where(discs[:, :, 0], 90.0, 700.0)

    # psoas: grows from nothing superiorly to ~25 mm inferiorly, beside the vertebral body
    grow = np.clip((z - z_shift + 40.0) / 200.0, 0.0, 1.0)
    for k in range(shape3[0]):
        if grow[k] > 0.05:
            for side in (-1, 1):
                psoas = ellipse(yb - 2.0, side * (vert_r + 14.0 * grow[k] + 4.0), 8 + 14 * grow[k], 6 + 16 * grow[k])
                image[k][psoas & ~vertebral_body] = 50.0

    # great vessels
    aorta_c = (yb - vert_r - 13.0, rng.uniform(8.0, 18.0))
    ivc_c = (yb - vert_r - 12.0, -rng.uniform(22.0, 30.0))
    aorta_hu = rng.uniform(160.0, 220.0)
    image[:, disc(*aorta_c, 11.0)] = aorta_hu
    image[:, ellipse(*ivc_c, 9.0, 13.0)] = rng.uniform(110.0, 140.0)

    texture = _smooth_field(rng, shape3, tuple(2 * c for c in cells))

    # liver (right upper quadrant) and spleen (left, posterior, superior), clipped to the cavity
    organs = [
        (
            _Ellipsoid(
                np.array([z_shift - 95.0, y0 - 15.0, -0.42 * a]),
                np.array([rng.uniform(80, 100), rng.uniform(75, 95), rng.uniform(80, 100)]),
                _rotation(0.0, 0.2),
            ),
            rng.uniform(95.0, 115.0),
        ),
        (
            _Ellipsoid(
                np.array([z_shift - 85.0, yb - 10.0, 0.62 * a]),
                np.array([rng.uniform(45, 60), rng.uniform(38, 50), rng.uniform(22, 30)]),
                _rotation(0.6, -0.2),
            ),
            rng.uniform(100.0, 120.0),
        ),
    ]
    for organ, hu in organs:
        hit = organ.level(grid)
        if hit is not None:
            box, q = hit
            mask = (q <= 1.0) & cavity[box]
            _paint(image, box, mask, hu + 6.0 * texture[box])

    # kidneys: bean-shaped (ellipsoid minus a medial sinus), upper pole tilted medially,
    # hilum turned antero-medially; the right kidney sits lower than the left
    instances: dict[str, list[np.ndarray]] = {"kidney": [], "tumor": [], "cyst": []}
    kidneys: list[tuple[_Ellipsoid, int]] = []
    z_left = z_shift + rng.uniform(-10.0, 10.0)
    for side in (1, -1):  # +1 = patient left
        zc = z_left + (rng.uniform(10.0, 25.0) if side < 0 else 0.0)
        centre = np.array([zc, yb - rng.uniform(2.0, 12.0), side * rng.uniform(62.0, 78.0)])
        half = np.array([rng.uniform(48.0, 60.0), rng.uniform(20.0, 25.0), rng.uniform(25.0, 31.0)])
        rot = _rotation(side * rng.uniform(0.35, 0.6), -side * rng.uniform(0.15, 0.3))
        kidneys.append((_Ellipsoid(centre, half, rot), side))

    kidney_hu = rng.uniform(150.0, 200.0)
    for kidney, side in kidneys:
        hit = kidney.level(grid)
        if hit is None:
            continue
        box, q = hit
        inside = q <= 1.0
        # renal sinus: a smaller ellipsoid shifted towards the hilum (medial, anterior)
        hilum_dir = kidney.rotation @ np.array([0.0, -0.45, -side * 0.9])
        sinus_centre = kidney.centre + hilum_dir * kidney.half[2] * 0.75
        sinus = _Ellipsoid(sinus_centre, kidney.half * np.array([0.5, 0.55, 0.45]), kidney.rotation)
        s_hit = sinus.level(grid)
        kidney_mask = inside.copy()
        sinus_mask = np.zeros_like(inside)
        if s_hit is not None:
            s_full = np.zeros(shape3, dtype=bool)
            s_full[s_hit[0]] = s_hit[1] <= 1.0
            sinus_mask = s_full[box] & inside
            kidney_mask &= ~sinus_mask
        _paint(image, box, kidney_mask, kidney_hu + 8.0 * texture[box])
        _paint(image, box, sinus_mask, -60.0)
        label[box][kidney_mask] = KITS_LABELS["kidney"]
        full = np.zeros(shape3, dtype=bool)
        full[box] = kidney_mask
        instances["kidney"].append(full)

    def inside_point(kidney: _Ellipsoid, depth: tuple[float, float], side: int) -> np.ndarray:
        # a random direction away from the hilum, at a normalised depth in the kidney
        while True:
            u = rng.standard_normal(3)
            u /= np.linalg.norm(u)
            if u[2] * side > -0.2:  # not pointing into the sinus
                break
        return kidney.centre + kidney.rotation @ (u * kidney.half * rng.uniform(*depth))

    # cysts first, tumours painted over them (KiTS labels do not overlap)
    masses: list[tuple[str, _Ellipsoid, float, bool]] = []
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        kidney, side = kidneys[int(rng.integers(2))]
        r = rng.uniform(5.0, 14.0)
        cyst = _Ellipsoid(inside_point(kidney, (0.35, 0.9), side), np.array([r, r, r]) * rng.uniform(0.9, 1.1, 3))
        masses.append(("cyst", cyst, rng.uniform(0.0, 20.0), False))
    n_tumors = 1 if rng.random() < 0.85 else 2
    tumor_sizes = []
    for _ in range(n_tumors):
        kidney, side = kidneys[int(rng.integers(2))]
        r = rng.uniform(11.0, 27.0)
        tumor = _Ellipsoid(
            inside_point(kidney, (0.45, 0.95), side),
            np.array([r, r, r]) * rng.uniform(0.85, 1.15, 3),
            _rotation(rng.uniform(0, math.pi), rng.uniform(-0.4, 0.4)),
        )
        tumor_sizes.append(2 * float(tumor.half.max()))
        masses.append(("tumor", tumor, rng.uniform(60.0, 120.0), bool(rng.random() < 0.3)))

    for name, mass, hu, necrotic in masses:
        hit = mass.level(grid)
        if hit is None:
            continue
        box, q = hit
        mask = (q <= 1.0) & body[box]
        if name == "tumor":
            value = hu + 15.0 * texture[box] + 10.0 * q  # brighter rim
            if necrotic:
                value = np.where(q < 0.5, 25.0 + 5.0 * texture[box], value)
        else:
            value = np.full(mask.shape, hu, dtype=np.float32)
        _paint(image, box, mask, value)
        label[box][mask] = KITS_LABELS[name]
        full = np.zeros(shape3, dtype=bool)
        full[box] = mask
        instances[name].append(full)
    # instance masks keep only the voxels whose final label is theirs
    for name, masks in instances.items():
        instances[name] = [m & (label == KITS_LABELS[name]) for m in masks]

    # partial-volume blur (~1 mm) and CT noise
    sigma = [max(0.0, min(1.0, 1.0 / s)) * 0.8 for s in spacing3]
    image = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")
    noise = rng.uniform(8.0, 15.0) if noise_hu is None else float(noise_hu)
    image += rng.standard_normal(shape3, dtype=np.float32) * np.float32(noise)
    image = np.clip(image, -1024.0, 3071.0).astype(np.float32)

    clinical = {
        "gender": str(rng.choice(["male", "female"], p=[0.62, 0.38])),
        "age_at_nephrectomy": int(rng.integers(25, 85)),
        "bmi": round(float(rng.uniform(19.0, 40.0)), 2),
        "radiographic_size": round(max(tumor_sizes) / 10.0, 1),
        "malignant": bool(rng.random() < 0.9),
        "tumor_histologic_subtype": str(
            rng.choice(["clear_cell_rcc", "papillary_rcc", "chromophobe_rcc", "oncocytoma"], p=[0.7, 0.15, 0.1, 0.05])
        ),
    }
    return KitsPhantom(image, label, kits_affine(spacing3, shape3), clinical, instances)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=2)  # "aligned", as in KiTS23
    img.set_qform(None, code=0)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(".tmp-" + path.name)
    nib.save(img, tmp)
    tmp.replace(path)


def write_kits_case(
    root: str | Path,
    case_id: int | str,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    instances: bool = False,
) -> Path:
    """Write ``root/case_XXXXX/{imaging,segmentation}.nii.gz`` (and ``instances/`` if asked).

    Returns the case folder. ``root`` plays the role of KiTS23's ``dataset/`` folder.
    """
    return _write_case(Path(root), case_name(case_id), kits_phantom(seed, shape=shape, spacing=spacing), instances)


def _write_case(root: Path, name: str, phantom: KitsPhantom, instances: bool) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    _save_nifti(phantom.image, phantom.affine, folder / "imaging.nii.gz")
    _save_nifti(phantom.label, phantom.affine, folder / "segmentation.nii.gz")
    if instances:
        (folder / "instances").mkdir(exist_ok=True)
        for kind, masks in phantom.instances.items():
            for i, mask in enumerate(masks, start=1):
                out = folder / "instances" / f"{kind}_instance-{i}_annotation-1.nii.gz"
                _save_nifti(mask.astype(np.uint8), phantom.affine, out)
    return folder


def case_seed(dataset_seed: int, index: int) -> int:
    """The phantom seed of the ``index``-th case of a dataset written with ``dataset_seed``."""
    return int(np.random.SeedSequence([dataset_seed, index]).generate_state(1)[0])


def write_kits_dataset(
    root: str | Path,
    n_cases: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    instances: bool = False,
    first_case: int = 0,
) -> list[Path]:
    """Write ``n_cases`` phantom cases plus ``kits23.json`` under ``root`` (KiTS23's ``dataset/``).

    Cases are numbered like KiTS23's training cases (00000..00299, then 00400..00588),
    starting at the ``first_case``-th of them; case ``i`` uses ``case_seed(seed, i)``.
    """
    if n_cases < 1 or first_case < 0 or first_case + n_cases > len(KITS_TRAINING_CASES):
        raise UserError(f"n_cases={n_cases} from first_case={first_case} exceeds KiTS23's 489 training case ids")
    root = Path(root)
    folders, clinical = [], []
    for i in range(first_case, first_case + n_cases):
        name = case_name(KITS_TRAINING_CASES[i])
        phantom = kits_phantom(case_seed(seed, i), shape=shape, spacing=spacing)
        folders.append(_write_case(root, name, phantom, instances))
        clinical.append({"case_id": name, **phantom.clinical})
    tmp = root / ".tmp-kits23.json"
    tmp.write_text(json.dumps(clinical, indent=2), encoding="utf-8")
    tmp.replace(root / "kits23.json")
    return folders
