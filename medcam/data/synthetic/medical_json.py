"""The KiTS-like phantom re-packaged as an nnU-Net v2 raw dataset and as a Decathlon JSON dataset.

nnU-Net: ``Dataset220_KiTS2023/{dataset.json, imagesTr/case_XXXXX_0000.nii.gz,
labelsTr/case_XXXXX.nii.gz}`` with KiTS23's region labels (kidney = [1, 2, 3],
masses = [2, 3], tumor = 2, regions_class_order [1, 3, 2]), as nnU-Net's own KiTS23
conversion writes them. Decathlon: ``dataset.json`` with ``labels`` int-string -> name and
``training`` items whose paths are relative to the JSON (``./imagesTr/...``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcam.data.synthetic.kits import (
    DEFAULT_SHAPE,
    KITS_TRAINING_CASES,
    _save_nifti,
    case_name,
    case_seed,
    kits_phantom,
)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


def write_nnunet_dataset(
    root: str | Path,
    n_cases: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    dataset_name: str = "Dataset220_KiTS2023",
    regions: bool = True,
) -> Path:
    """Write an nnU-Net v2 raw folder under ``root``; returns ``root/dataset_name``."""
    folder = Path(root) / dataset_name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        case = case_name(KITS_TRAINING_CASES[i])
        phantom = kits_phantom(case_seed(seed, i), shape=shape)
        _save_nifti(phantom.image, phantom.affine, folder / "imagesTr" / f"{case}_0000.nii.gz")
        _save_nifti(phantom.label, phantom.affine, folder / "labelsTr" / f"{case}.nii.gz")
    labels: dict[str, Any] = (
        {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
        if regions
        else {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    )
    spec: dict[str, Any] = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    if regions:
        spec["regions_class_order"] = [1, 3, 2]
    _write_json(folder / "dataset.json", spec)
    return folder


def write_decathlon_dataset(root: str | Path, n_cases: int, seed: int, shape: Sequence[int] = DEFAULT_SHAPE) -> Path:
    """Write ``root/{dataset.json, imagesTr/, labelsTr/}`` in the Decathlon format; returns the JSON path."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n_cases):
        case = case_name(KITS_TRAINING_CASES[i])
        phantom = kits_phantom(case_seed(seed, i), shape=shape)
        _save_nifti(phantom.image, phantom.affine, root / "imagesTr" / f"{case}.nii.gz")
        _save_nifti(phantom.label, phantom.affine, root / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    spec = {
        "name": "KiTSPhantom",
        "description": "medcam synthetic KiTS-like CT phantom",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "kidney", "2": "tumor", "3": "cyst"},
        "numTraining": n_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    _write_json(root / "dataset.json", spec)
    return root / "dataset.json"
