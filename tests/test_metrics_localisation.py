"""Localisation metrics on hand-built maps and masks with known answers, 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from medcam.errors import UserError
from medcam.metrics import (
    BoundingBox,
    box_iou,
    box_localisation,
    box_of_mask,
    dice,
    energy_inside,
    map_boxes,
    pointing_game,
    threshold_map,
)


def blob(shape: tuple[int, ...], start: tuple[int, ...], stop: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = True
    return mask


@pytest.mark.parametrize("shape", [(16, 16), (8, 10, 12)])
def test_a_map_exactly_on_the_object_scores_one_everywhere(shape: tuple[int, ...]) -> None:
    start = tuple(2 for _ in shape)
    stop = tuple(s - 3 for s in shape)
    truth = blob(shape, start, stop)
    maps = truth.float().unsqueeze(0) * 0.8
    assert box_localisation(maps, truth).tolist() == [1.0]
    assert pointing_game(maps, truth).tolist() == [1.0]
    assert energy_inside(maps, truth).tolist() == [1.0]
    assert dice(maps, truth).tolist() == [1.0]
    assert map_boxes(maps) == [BoundingBox(start, stop)]


def test_box_iou_by_hand() -> None:
    a = BoundingBox((0, 0), (2, 2))
    b = BoundingBox((1, 1), (3, 3))
    assert box_iou(a, b) == pytest.approx(1 / 7)
    assert box_iou(a, BoundingBox((5, 5), (6, 6))) == 0.0
    assert box_iou(None, b) == 0.0
    c = BoundingBox((0, 0, 0), (2, 2, 2))
    assert box_iou(c, BoundingBox((1, 0, 0), (3, 2, 2))) == pytest.approx(4 / 12)


def test_shifted_map_gives_the_hand_computed_iou() -> None:
    truth = blob((12, 12), (2, 2), (6, 6))  # 4 x 4
    maps = blob((12, 12), (4, 2), (8, 6)).float()[None]  # shifted 2 rows: overlap 2 x 4
    assert box_localisation(maps, truth).item() == pytest.approx(8 / 24)
    assert dice(maps, truth).item() == pytest.approx(2 * 8 / 32)
    assert energy_inside(maps, truth).item() == pytest.approx(0.5)


def test_threshold_keeps_the_largest_region_only() -> None:
    maps = torch.zeros(1, 20, 20)
    maps[0, 1:4, 1:4] = 1.0  # small, strongest
    maps[0, 10:18, 5:15] = 0.5  # large, weaker but above 0.1 of the maximum
    maps[0, 0, 19] = 0.05  # below the threshold
    assert map_boxes(maps) == [BoundingBox((10, 5), (18, 15))]
    assert map_boxes(maps, 0.6) == [BoundingBox((1, 1), (4, 4))]
    truth = blob((20, 20), (10, 5), (18, 15))
    assert box_localisation(maps, truth).item() == 1.0
    # diagonal neighbours join regions by default (contour tracing), not with face connectivity
    diag = torch.zeros(1, 6, 6)
    diag[0, 0, 0] = diag[0, 1, 1] = diag[0, 2, 2] = 1
    assert map_boxes(diag) == [BoundingBox((0, 0), (3, 3))]
    assert map_boxes(diag, connectivity="face") == [BoundingBox((0, 0), (1, 1))]


def test_pointing_game_hits_and_misses() -> None:
    truth = blob((10, 10), (0, 0), (5, 5))
    maps = torch.zeros(3, 10, 10)
    maps[0, 2, 2] = 1.0  # hit
    maps[1, 7, 7] = 1.0  # miss
    maps[1, 2, 2] = 0.9
    maps[2, 6, 6] = 1.0  # miss, but within 2 voxels of the object
    assert pointing_game(maps, truth).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(maps, truth, tolerance=2).tolist() == [1.0, 0.0, 1.0]


def test_blank_or_flat_maps_find_nothing() -> None:
    truth = blob((8, 8), (2, 2), (4, 4))
    blank = torch.zeros(1, 8, 8)
    assert threshold_map(blank).sum() == 0
    assert map_boxes(blank) == [None]
    assert box_localisation(blank, truth).item() == 0.0
    assert pointing_game(blank, truth).item() == 0.0
    assert energy_inside(blank, truth).item() == 0.0
    assert dice(blank, truth).item() == 0.0
    flat = torch.ones(1, 8, 8)  # every pixel a maximum: no point, not a free hit
    assert pointing_game(flat, truth).item() == 0.0


def test_box_of_mask_and_given_boxes() -> None:
    truth = blob((6, 7, 8), (1, 2, 3), (4, 5, 6))
    assert box_of_mask(truth) == BoundingBox((1, 2, 3), (4, 5, 6))
    assert box_of_mask(torch.zeros(3, 3)) is None
    maps = truth.float()[None].repeat(2, 1, 1, 1)
    boxes = [BoundingBox((1, 2, 3), (4, 5, 6)), BoundingBox((0, 0, 0), (1, 1, 1))]
    assert box_localisation(maps, boxes).tolist() == [1.0, 0.0]


def test_bad_ground_truth_is_refused() -> None:
    maps = torch.rand(2, 8, 8)
    with pytest.raises(UserError, match=r"empty for sample\(s\) \[1\]"):
        dice(maps, torch.stack([blob((8, 8), (0, 0), (2, 2)), torch.zeros(8, 8, dtype=torch.bool)]))
    with pytest.raises(UserError, match="shape"):
        pointing_game(maps, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(UserError, match="fraction"):
        threshold_map(maps, 1.5)
    with pytest.raises(UserError, match="one per sample"):
        box_localisation(maps, [BoundingBox((0, 0), (1, 1))])
