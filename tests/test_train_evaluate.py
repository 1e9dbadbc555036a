"""Whole-volume prediction inverts the preprocessing back onto the original voxel grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medcam.data.synthetic import kits_phantom
from medcam.metrics.dice import dice
from medcam.models.checkpoint import CheckpointMeta, ModelBundle, Preprocessing
from medcam.train.validation import segment


class Threshold(nn.Module):
    """Two-class 'network' whose argmax is (windowed intensity > 0.5), i.e. HU > 50 for [-200, 300]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 10 * (x - 0.5)], dim=1)


def bundle(pre: Preprocessing, patch: tuple[int, ...] | None) -> ModelBundle:
    meta = CheckpointMeta(
        architecture="none",
        arguments={},
        task="segmentation",
        spatial_dims=3,
        in_channels=1,
        labels={"background": 0, "bright": 1},
        patch_size=patch,
        preprocessing=pre,
    )
    return ModelBundle(Threshold().eval(), meta)


@pytest.fixture(scope="module")
def case():
    return kits_phantom(4, shape=(24, 48, 48))


def test_native_grid_round_trip_is_exact(case):
    pre = Preprocessing(orientation="IPL", a_min=-200.0, a_max=300.0)
    labels = segment(bundle(pre, (16, 32, 32)), case.image[None], case.affine)
    np.testing.assert_array_equal(labels, (case.image > 50).astype(np.int64))


def test_reorientation_and_resampling_are_inverted():
    from medcam.data.synthetic.kits import kits_affine

    image = np.full((24, 48, 48), -1000.0, dtype=np.float32)
    image[2:10, 5:25, 30:46] = 500.0  # an off-centre block: any unflipped axis would misplace it
    affine = kits_affine((5.0, 3.0, 3.0), image.shape)  # IPL, anisotropic
    pre = Preprocessing(orientation="RAS", spacing=(6.0, 6.0, 6.0), a_min=-1000.0, a_max=1000.0)
    labels = segment(bundle(pre, None), image[None], affine)
    assert labels.shape == image.shape
    truth = torch.as_tensor(image > 0)
    assert dice(torch.as_tensor(labels == 1), truth) > 0.9  # only the edges move (6 mm grid)
    for axis in range(3):
        flipped = np.flip(labels, axis=axis) == 1
        assert dice(torch.as_tensor(flipped.copy()), truth) < 0.5


def test_labels_from_logits_softmax_and_region_order() -> None:
    from medcam.train.validation import labels_from_logits

    logits = torch.tensor([[[0.0, 2.0, -1.0], [1.0, 0.0, 3.0]]])  # (N, C, 3 pixels)
    assert labels_from_logits(logits, "softmax", {}).tolist() == [[[1, 0, 1]]]
    # KiTS regions from broad to narrow: kidney+masses -> 1, masses -> 3 (cyst), tumor -> 2
    regions = {"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]}
    on, off = 5.0, -5.0
    region_logits = torch.tensor(
        [[on, on, on, off], [off, on, on, off], [off, off, on, off]]  # region channels x 4 pixels
    ).reshape(1, 3, 4)
    assert labels_from_logits(region_logits, "sigmoid", regions).tolist() == [[[1, 3, 2, 0]]]
