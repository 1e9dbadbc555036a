"""Small synthetic images in many header variants, and tiny checkpoints, for the volume tests.

Everything here is seeded and small so the tests stay fast. Header variants cover the
geometry cases users meet: RAS, LPS, KiTS's sform-only IPL files, qform != sform,
qform only, oblique, anisotropic, NIfTI-2, uncompressed, 2D, 4D with one frame,
NRRD, MetaImage, a DICOM series and PNG.
"""

from __future__ import annotations

import locale
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813 - the name everyone uses
import torch

from medcam.models.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
from medcam.models.factory import build_model

SHAPE = (9, 11, 7)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, y, z."""
    x, y, z = (math.radians(a) for a in (ax, ay, az))
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def affine_from(rot: np.ndarray, spacing: tuple[float, ...], origin: tuple[float, ...]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def ramp(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """Values that differ at every voxel, so any transposition or flip is visible."""
    return (np.arange(int(np.prod(shape))).reshape(shape) % 251).astype(dtype)


def _nifti(
    path: Path,
    data: np.ndarray,
    *,
    sform: np.ndarray | None,
    qform: np.ndarray | None,
    scode: int,
    qcode: int,
    zooms: tuple[float, ...] | None = None,
    klass: type = nib.Nifti1Image,
) -> Path:
    img = klass(data, None)
    header = img.header
    if qform is not None:
        header.set_qform(qform, code=qcode)
    else:
        header.set_qform(np.eye(4), code=0)
    if sform is not None:
        header.set_sform(sform, code=scode)
    else:
        header.set_sform(np.eye(4), code=0)
    if zooms is not None:
        header.set_zooms(zooms)
    img = klass(data, None, header)
    nib.save(img, str(path))
    return path


def kits_affine(spacing: tuple[float, float, float] = (3.0, 0.78, 0.78)) -> np.ndarray:
    """KiTS orientation: axis 0 inferior, axis 1 posterior, axis 2 left (codes 'IPL')."""
    dz, dy, dx = spacing
    return np.array([[0, 0, -dx, 150.0], [0, -dy, 0, 170.0], [-dz, 0, 0, 40.0], [0, 0, 0, 1]])


def write_kits_like(path: Path, data: np.ndarray, spacing: tuple[float, float, float] = (3.0, 0.78, 0.78)) -> Path:
    """A NIfTI the way KiTS23 ships it: sform_code 2, qform_code 0, IPL."""
    return _nifti(path, data, sform=kits_affine(spacing), qform=None, scode=2, qcode=0, zooms=spacing)


def _itk_image(data: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose()))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return image


def write_dicom_series(folder: Path, data: np.ndarray, spacing, origin, direction) -> Path:
    """A CT-like DICOM series (one file per slice along k), written with SimpleITK.

    GDCM's writer sets the process locale to "C"; it is put back, so the tests after this
    one in the same process keep the locale they started with.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_series(folder, data, spacing, origin, direction)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(folder: Path, data: np.ndarray, spacing, origin, direction) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(_itk_image(data, spacing, origin, direction), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.99"
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000d", uid + ".1"),
            ("0020|000e", uid + ".2"),
            ("0008|0018", f"{uid}.3.{k}"),
            ("0020|0032", "\\".join(f"{v:.10g}" for v in position)),
            ("0020|0037", orientation),
            ("0020|0013", str(k + 1)),
            ("0018|0050", f"{spacing[2]:.10g}"),
            ("0028|1052", "0"),
            ("0028|1053", "1"),
        ]:
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_k)
    return folder


def header_variants() -> dict[str, Callable[[Path], Path]]:
    """name -> writer(folder) returning the written image path."""
    data = ramp(SHAPE)
    oblique = affine_from(rotation(10, -5, 25), (0.9, 1.1, 2.5), (-30.0, 12.0, 7.5))
    lps = np.diag([-0.7, -0.8, 3.0, 1.0])
    lps[:3, 3] = (100.0, 80.0, -20.0)
    aniso = affine_from(np.diag([1.0, -1.0, 1.0]), (0.5, 0.9, 5.0), (3.0, 4.0, 5.0))

    def ras(d: Path) -> Path:
        a = affine_from(np.eye(3), (0.8, 0.8, 2.5), (-4.0, -5.0, -6.0))
        return _nifti(d / "ras.nii.gz", data, sform=a, qform=a, scode=1, qcode=1)

    def lps_(d: Path) -> Path:
        return _nifti(d / "lps.nii.gz", data, sform=lps, qform=lps, scode=1, qcode=1)

    def kits(d: Path) -> Path:
        return write_kits_like(d / "imaging.nii.gz", data)

    def q_ne_s(d: Path) -> Path:
        q = affine_from(np.eye(3), (1.0, 1.2, 2.0), (0.0, 0.0, 0.0))
        s = affine_from(rotation(0, 0, 90), (1.0, 1.2, 2.0), (10.0, -3.0, 4.0))
        return _nifti(d / "q_ne_s.nii.gz", data, sform=s, qform=q, scode=2, qcode=1)

    def q_only(d: Path) -> Path:
        q = affine_from(rotation(0, 15, 0), (1.5, 1.5, 1.5), (1.0, 2.0, 3.0))
        return _nifti(d / "q_only.nii.gz", data, sform=None, qform=q, scode=0, qcode=1)

    def obl(d: Path) -> Path:
        return _nifti(d / "oblique.nii.gz", data, sform=oblique, qform=oblique, scode=1, qcode=1)

    def anis(d: Path) -> Path:
        return _nifti(d / "aniso.nii.gz", data, sform=aniso, qform=aniso, scode=2, qcode=1)

    def nifti2(d: Path) -> Path:
        return _nifti(d / "two.nii.gz", data, sform=oblique, qform=oblique, scode=1, qcode=1, klass=nib.Nifti2Image)

    def plain(d: Path) -> Path:
        return _nifti(d / "plain.nii", data, sform=lps, qform=lps, scode=1, qcode=1)

    def flat(d: Path) -> Path:
        a = affine_from(rotation(0, 0, 30), (0.6, 0.7, 1.0), (5.0, 6.0, 0.0))
        return _nifti(d / "flat.nii.gz", ramp(SHAPE[:2]), sform=a, qform=a, scode=1, qcode=1)

    def frame(d: Path) -> Path:
        raw = ramp((*SHAPE, 1), np.int16)
        img = nib.Nifti1Image(raw, aniso)
        img.header.set_slope_inter(2.0, -1024.0)
        img.header.set_sform(aniso, code=2)
        img.header.set_qform(aniso, code=1)
        nib.save(img, str(d / "frame.nii.gz"))
        return d / "frame.nii.gz"

    def nrrd(d: Path) -> Path:
        image = _itk_image(data, (0.9, 1.1, 2.5), (-30.0, 12.0, 7.5), rotation(10, -5, 25))
        sitk.WriteImage(image, str(d / "image.nrrd"))
        return d / "image.nrrd"

    def mha(d: Path) -> Path:
        image = _itk_image(data, (0.7, 0.8, 3.0), (-100.0, -80.0, -20.0), np.diag([1.0, 1.0, 1.0]))
        sitk.WriteImage(image, str(d / "image.mha"))
        return d / "image.mha"

    def dicom(d: Path) -> Path:
        return write_dicom_series(d / "series", data, (0.7, 0.7, 2.5), (-90.0, -100.0, 30.0), rotation(0, 0, 8))

    def png(d: Path) -> Path:
        from PIL import Image

        pixels = (ramp((13, 17)) % 200).astype(np.uint8)  # (H, W)
        Image.fromarray(pixels).save(d / "image.png")
        return d / "image.png"

    return {
        "ras": ras,
        "lps": lps_,
        "kits_ipl_sform_only": kits,
        "qform_ne_sform": q_ne_s,
        "qform_only": q_only,
        "oblique": obl,
        "anisotropic": anis,
        "nifti2": nifti2,
        "uncompressed": plain,
        "nifti_2d": flat,
        "one_frame_4d_scaled": frame,
        "nrrd": nrrd,
        "metaimage": mha,
        "dicom_series": dicom,
        "png": png,
    }


def sphere(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    """A boolean ball in index space."""
    grids = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2


def tiny_unet_checkpoint(
    path: Path,
    *,
    spatial_dims: int = 3,
    labels: dict[str, int] | None = None,
    regions: dict[str, list[int]] | None = None,
    patch_size: tuple[int, ...] | None = (16, 16, 16),
    preprocessing: Preprocessing | None = None,
    activation: str = "softmax",
    in_channels: int = 1,
    seed: int = 0,
) -> Path:
    """A seeded 2-level MONAI UNet saved as a medcam checkpoint."""
    labels = labels or {"background": 0, "kidney": 1, "tumor": 2}
    arguments = {
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "out_channels": len(labels),
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    }
    torch.manual_seed(seed)
    model = build_model("monai.UNet", **arguments)
    meta = CheckpointMeta(
        architecture="monai.UNet",
        arguments=arguments,
        task="segmentation",
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        labels=labels,
        activation=activation,
        regions=regions or {},
        patch_size=patch_size,
        preprocessing=preprocessing or Preprocessing(),
    )
    return save_checkpoint(path, model, meta)


KITS_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
KITS_REGIONS = {"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]}
KITS_PREPROCESSING = Preprocessing(orientation="RAS", spacing=(1.6, 1.6, 2.5), a_min=-200.0, a_max=300.0)


def kits_phantom(shape: tuple[int, int, int] = (12, 32, 28), seed: int = 0) -> np.ndarray:
    """A small abdomen-like CT in KiTS index order (I, P, L): a kidney with a tumour, in HU."""
    rng = np.random.default_rng(seed)
    ct = np.full(shape, -80.0, dtype=np.float32) + rng.normal(0, 10, shape).astype(np.float32)
    centre = (shape[0] / 2, shape[1] * 0.55, shape[2] * 0.35)
    ct[sphere(shape, centre, radius=min(shape) * 0.35)] = 30.0
    ct[sphere(shape, (centre[0], centre[1] + 2, centre[2] + 3), radius=min(shape) * 0.15)] = 120.0
    return ct


def write_kits_case(folder: Path, shape: tuple[int, int, int] = (12, 32, 28), seed: int = 0) -> Path:
    """``folder/imaging.nii.gz`` as KiTS23 stores it (sform only, IPL, 2.5 x 0.8 x 0.8 mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_kits_like(folder / "imaging.nii.gz", kits_phantom(shape, seed), spacing=(2.5, 0.8, 0.8))


def kits_checkpoint(path: Path, *, bias: dict[int, float] | None = None, **overrides) -> Path:
    """A tiny 4-class KiTS-like U-Net checkpoint with regions and KiTS-style preprocessing.

    ``bias`` adds to the output layer's bias per channel (e.g. ``{2: -100.0}``: never tumour).
    """
    options = {
        "labels": KITS_LABELS,
        "regions": KITS_REGIONS,
        "patch_size": (8, 8, 8),
        "preprocessing": KITS_PREPROCESSING,
    }
    options.update(overrides)
    tiny_unet_checkpoint(path, **options)
    if bias:
        import torch as _torch

        from medcam.models.checkpoint import read_checkpoint

        meta, state = read_checkpoint(path)
        key = [k for k, v in state.items() if k.endswith(".bias") and v.numel() == len(meta.labels)][-1]
        for channel, value in bias.items():
            state[key][channel] += value
        model = build_model(meta.architecture, **meta.arguments)
        model.load_state_dict(state)
        save_checkpoint(path, model, meta)
        del _torch
    return path
