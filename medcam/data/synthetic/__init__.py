"""Synthetic datasets written in the exact on-disk layouts of the real ones (seeded, deterministic).

Each writer produces what the matching reader in :mod:`medcam.data` expects from the
real download, so tests and the demo exercise the real code paths.
"""

from medcam.data.synthetic.cityscapes import street_scene, write_cityscapes_dataset
from medcam.data.synthetic.iqothnccd import lung_slice, write_iqothnccd_dataset
from medcam.data.synthetic.kits import (
    KITS_LABELS,
    KITS_REGIONS,
    KITS_TRAINING_CASES,
    KitsPhantom,
    case_seed,
    kits_phantom,
    write_kits_case,
    write_kits_dataset,
)
from medcam.data.synthetic.medical_json import write_decathlon_dataset, write_nnunet_dataset
from medcam.data.synthetic.opg import opg_image, write_opg_dataset

__all__ = [
    "KITS_LABELS",
    "KITS_REGIONS",
    "KITS_TRAINING_CASES",
    "KitsPhantom",
    "case_seed",
    "kits_phantom",
    "lung_slice",
    "opg_image",
    "street_scene",
    "write_cityscapes_dataset",
    "write_decathlon_dataset",
    "write_iqothnccd_dataset",
    "write_kits_case",
    "write_kits_dataset",
    "write_nnunet_dataset",
    "write_opg_dataset",
]
