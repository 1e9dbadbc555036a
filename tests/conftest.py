"""Shared fixtures of the volume and explain tests (small phantoms, tiny checkpoints)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# the tests use tiny tensors, for which extra threads only add contention (3x faster on 2 shared cores)
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))

from volume_phantoms import kits_checkpoint, write_kits_case  # noqa: E402


@pytest.fixture(scope="session")
def kits_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KiTS-layout phantom: ``case_00000/imaging.nii.gz`` (IPL, sform only)."""
    return write_kits_case(tmp_path_factory.mktemp("kits") / "case_00000")


@pytest.fixture(scope="session")
def kits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-class U-Net checkpoint with KiTS labels, regions, preprocessing and an 8^3 patch."""
    return kits_checkpoint(tmp_path_factory.mktemp("model") / "kits_tiny.pt")


@pytest.fixture(scope="session")
def explained_case(tmp_path_factory: pytest.TempPathFactory, kits_case: Path, kits_model: Path) -> Path:
    """One finished review folder (tumour over a box), shared by the output and Slicer tests."""
    from medcam.pipeline import explain_case

    out = tmp_path_factory.mktemp("explained") / "review"
    return explain_case(kits_case, out, class_name="tumor", model=kits_model, pixels="box:3,8,5:9,24,20")
