"""Synthetic datasets written in the exact on-disk layouts of the real ones (seeded, deterministic)."""

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

__all__ = [
    "KITS_LABELS",
    "KITS_REGIONS",
    "KITS_TRAINING_CASES",
    "KitsPhantom",
    "case_seed",
    "kits_phantom",
    "write_kits_case",
    "write_kits_dataset",
]
