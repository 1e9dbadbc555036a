"""The shipped demo 3D U-Net: small, self-describing, and accurate on phantoms it never saw."""

from __future__ import annotations

import pytest
import torch

from medcam.data.synthetic import case_seed, kits_phantom
from medcam.models.checkpoint import DEMO_CHECKPOINT, load_demo_model
from medcam.models.levels import discover_levels
from medcam.train.validation import evaluate_cases

HELD_OUT_SEED = 1000  # the training phantoms were written with dataset seed 0


def test_demo_checkpoint_is_small_and_describes_itself():
    assert DEMO_CHECKPOINT.stat().st_size <= 5_000_000
    bundle = load_demo_model()
    meta = bundle.meta
    assert meta.labels == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    assert meta.regions == {"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]}
    assert meta.spatial_dims == 3 and meta.activation == "softmax" and meta.patch_size is not None
    assert meta.preprocessing.orientation == "IPL" and meta.preprocessing.spacing is not None
    # the last decoder level, the level layers="auto" explains (docs/levels.md)
    last_decoder = next(level.path for level in discover_levels(bundle.model) if level.name == "dec1")
    assert meta.cam_layers == [last_decoder]


@pytest.mark.slow
def test_demo_model_dice_on_20_held_out_phantoms():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bundle = load_demo_model()
        cases = (
            (p.image[None], p.label, p.affine) for p in (kits_phantom(case_seed(HELD_OUT_SEED, i)) for i in range(20))
        )
        # one window covering the resampled volume (~64 x 125..138 x 125..138): same result as
        # sliding windows for this batch-norm network, and several times faster
        result = evaluate_cases(bundle, cases, roi_size=(64, 144, 144))
    finally:
        torch.set_num_threads(threads)
    mean = result.mean
    assert len(result.per_case) == 20
    assert mean["kidney"] >= 0.85, result.table()
    assert mean["tumor"] >= 0.6, result.table()
