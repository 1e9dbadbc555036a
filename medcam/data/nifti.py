"""Image/label NIfTI pairs read with their geometry, checked before anything trains on them.

Arrays keep nibabel's axis order (the file's voxel axes) with a leading channel axis;
geometry travels beside them as the 4x4 voxel-to-RAS affine, the voxel spacing and
the orientation codes (``"IPL"`` for KiTS23). SimpleITK would hand back the transposed
array instead; mixing the two orders is the classic bug this module avoids by using
nibabel only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcam.errors import UserError


class DatasetError(UserError):
    """A dataset folder, file or label map does not match the layout the reader expects."""


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Array (file voxel order, dtype as stored) and affine of a NIfTI file."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; check the dataset root and the file name")
    try:
        img = nib.load(path)
        array = np.asanyarray(img.dataobj)  # type: ignore[attr-defined]
    except Exception as err:  # nibabel raises several unrelated types for broken files
        raise DatasetError(f"cannot read {path} as NIfTI ({type(err).__name__}: {err})") from err
    return array, np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]


def geometry(affine: np.ndarray, shape: Sequence[int]) -> dict[str, Any]:
    """The geometry entries every record carries: affine, spacing, orientation, spatial shape."""
    import nibabel as nib

    spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    return {
        "affine": affine,
        "spacing": spacing,
        "orientation": "".join(nib.aff2axcodes(affine)),
        "spatial_shape": tuple(int(n) for n in shape),
    }


def grid_difference(
    shape: Sequence[int], affine: np.ndarray, other_shape: Sequence[int], other_affine: np.ndarray
) -> str | None:
    """How two voxel grids differ: ``"shape"``, ``"affine"`` (spacing, orientation or origin) or ``None``.

    The one grid comparison of medcam (dataset image/label pairs, masks given to explain):
    affines agree within 1e-3 of the largest voxel-axis entry (0.001 mm at 1 mm spacing).
    """
    if tuple(int(v) for v in shape) != tuple(int(v) for v in other_shape):
        return "shape"
    scale = float(np.abs(np.asarray(affine)[:3, :3]).max())
    if not np.allclose(affine, other_affine, rtol=0.0, atol=1e-3 * max(scale, 1.0)):
        return "affine"
    return None


def check_same_grid(image_path: Path, image_shape: Sequence[int], image_affine: np.ndarray,
                    label_path: Path, label_shape: Sequence[int], label_affine: np.ndarray) -> None:  # fmt: skip
    """Refuse an image/label pair whose voxel grids differ (shape, spacing, orientation or origin)."""
    difference = grid_difference(image_shape, image_affine, label_shape, label_affine)
    if difference == "shape":
        raise DatasetError(
            f"{label_path.name} has shape {tuple(label_shape)} but {image_path.name} has {tuple(image_shape)}; "
            "image and label must share one voxel grid (resample the label onto the image)"
        )
    if difference == "affine":
        raise DatasetError(
            f"{label_path} and {image_path} have different affines (spacing, orientation or origin):\n"
            f"image {np.round(image_affine, 4).tolist()}\nlabel {np.round(label_affine, 4).tolist()}; "
            "resample the label onto the image grid"
        )


def check_label_values(label: np.ndarray, allowed: Collection[int], path: Path, what: str) -> None:
    """Refuse label values outside ``allowed`` (named in the message)."""
    values = np.unique(label)
    unknown = sorted(int(v) for v in values if int(v) not in set(allowed))
    if unknown or not np.all(values == np.round(values)):
        raise DatasetError(
            f"{path} holds label values {unknown or values.tolist()} that {what} does not define "
            f"(expected {sorted(allowed)}); is this the right dataset or label map?"
        )


def label_file(entry: Mapping[str, Any]) -> Path | None:
    """The label file of a reader's entry; ``None`` when its ``label`` is ``None``.

    ``medcam evaluate`` sets ``label`` to ``None`` when it reads a DICOM SEG label itself
    (:mod:`medcam.evaluate.truth`): the reader then gives the record without ``label``.
    """
    label = entry.get("label")
    return Path(label) if label is not None else None


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file or a file with the DICOM preamble (``DICM`` at byte 128), or a folder (of DICOM files)."""
    if path.is_dir() or path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def load_pair(
    image_paths: Path | Sequence[Path],
    label_path: Path | None,
    allowed_labels: Collection[int] | None,
    what: str,
    check_labels: bool = True,
) -> dict[str, Any]:
    """Read one case: ``image`` (C, *spatial) float32, ``label`` (1, *spatial) uint8/int, plus geometry.

    Several image paths are stacked as channels (nnU-Net's ``_0000``, ``_0001``...). A 4D
    NIfTI (Decathlon multi-modal) keeps its last axis as channels.
    """
    paths = [image_paths] if isinstance(image_paths, Path) else list(image_paths)
    channels: list[np.ndarray] = []
    affine: np.ndarray | None = None
    for path in paths:
        array, aff = read_nifti(path)
        if array.ndim == 4:  # Decathlon multi-modal: (x, y, z, modality)
            channels.extend(np.moveaxis(array, -1, 0))
        elif array.ndim in (2, 3):
            channels.append(array)
        else:
            raise DatasetError(f"{path} has {array.ndim} dimensions; expected a 2D or 3D image (or 4D channels)")
        if affine is None:
            affine = aff
        else:
            check_same_grid(paths[0], channels[0].shape, affine, path, array.shape[: channels[0].ndim], aff)
    if affine is None:
        raise DatasetError(f"no image file given for {what}")
    image = np.stack([np.asarray(c, dtype=np.float32) for c in channels])
    record: dict[str, Any] = {"image": image, "image_path": str(paths[0]), **geometry(affine, image.shape[1:])}
    if label_path is not None:
        if is_dicom_file(label_path):
            raise DatasetError(
                f"the label {label_path} is DICOM: medcam reads a DICOM SEG label only as the ground truth of "
                "`medcam evaluate` on 3D images; give a label image (NIfTI) on the image's grid here"
            )
        label, label_affine = read_nifti(label_path)
        check_same_grid(paths[0], image.shape[1:], affine, label_path, label.shape, label_affine)
        if check_labels and allowed_labels is not None:
            check_label_values(label, allowed_labels, label_path, what)
        record["label"] = np.asarray(label)[None]
        record["label_path"] = str(label_path)
    return record


def reorient(record: dict[str, Any], codes: str) -> dict[str, Any]:
    """The record with ``image``/``label`` axes permuted and flipped to orientation ``codes`` (e.g. "IPL")."""
    import nibabel as nib
    from nibabel import orientations as ornt

    current = ornt.io_orientation(record["affine"])
    target = ornt.axcodes2ornt(tuple(codes))
    transform = ornt.ornt_transform(current, target)
    if np.array_equal(transform, [[i, 1] for i in range(len(codes))]):
        return record
    out = dict(record)
    for key in ("image", "label"):
        if key in record:
            out[key] = np.stack([ornt.apply_orientation(c, transform) for c in record[key]])
    shape = record["image"].shape[1:]
    affine = record["affine"] @ ornt.inv_ornt_aff(transform, shape)
    out.update(geometry(affine, out["image"].shape[1:]))
    if "".join(nib.aff2axcodes(affine)) != codes:  # pragma: no cover - nibabel guarantees this
        raise DatasetError(f"could not reorient {record.get('image_path')} to {codes}")
    return out
