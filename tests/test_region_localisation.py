"""Known-answer localisation of the region and fusion methods on a 3D segmenter.

``RegionAnswerNet``'s class-1 output inside box ``out[i]`` depends only on the input
inside region ``source[i]``, which lies elsewhere, while the input is bright
everywhere. Explaining class 1 over M = ``out[i]`` must put the map's mass inside
``source[i]`` (one eighth of the volume), and switching M must move the map.
"""

from __future__ import annotations

import pytest
import torch
from region_nets import RegionAnswerNet, TissueAnswerNet, answer_input, small_classifier, small_input, tissue_input

import medcam

METHODS = ["scorecam", "groupcam", "unioncam", "fusioncam"]


@pytest.fixture(scope="module")
def net() -> RegionAnswerNet:
    return RegionAnswerNet(size=12, block=3).eval()


def _input(batch: int = 1) -> torch.Tensor:
    return answer_input(batch=batch, size=12)


def _inside(cam: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Fraction of each sample's map mass inside ``region``."""
    return (cam * region).flatten(1).sum(1) / cam.flatten(1).sum(1)


@pytest.mark.parametrize(
    ("method", "which"), [("scorecam", 0), ("scorecam", 1), ("fusioncam", 0), ("fusioncam", 1), ("groupcam", 1)]
)
def test_segmentation_map_concentrates_on_the_explained_region(net: RegionAnswerNet, method: str, which: int) -> None:
    x = _input(batch=2 if method == "scorecam" else 1)
    target = medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out[which]))
    exp = medcam.explain(net, x, method, target=target, layers="features")
    assert (_inside(exp.map, net.source[which]) > 0.95).all()
    assert (_inside(exp.map, net.source[1 - which]) < 0.01).all()


def test_unioncam_and_fusion_agreement(net: RegionAnswerNet) -> None:
    x = _input()
    target = medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out[0]))
    exp = medcam.explain(net, x, "unioncam", target=target, layers="features")
    assert (_inside(exp.map, net.source[0]) > 0.95).all()
    exp = medcam.explain(net, x, "fusioncam", target=target, layers="features", variant="normalised")
    agreement = exp.extras["agreement"]["features"][0]
    # both parts are ~0 far from the source region (full agreement), and differ inside it
    assert agreement[net.source[1]].min() > 0.99
    assert agreement[net.source[0]].mean() < agreement[net.source[1]].mean()
    # the segmentation variant reports agreement only where either map has support
    exp = medcam.explain(net, x, "fusioncam", target=target, layers="features")
    assert exp.stats["variant"] == "segmentation"
    assert exp.extras["agreement"]["features"][0][net.source[1]].max() == 0


def test_bf16_keeps_the_answer(net: RegionAnswerNet) -> None:
    x = _input()
    target = medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out[0]))
    fp32 = medcam.explain(net, x, "scorecam", target=target, layers="features")
    bf16 = medcam.explain(net, x, "scorecam", target=target, layers="features", precision="bf16")
    assert (_inside(bf16.map, net.source[0]) > 0.95).all()
    assert (bf16.map - fp32.map).abs().max() < 0.05


def test_channel_budget_keeps_the_answer(net: RegionAnswerNet) -> None:
    x = _input()
    target = medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out[1]))
    exp = medcam.explain(net, x, "fusioncam", target=target, layers="features", max_channels=8)
    # the 8 blocks of the source region, then 4 betas and the segmentation variant's 4 guard inputs
    assert exp.stats["scored_inputs"] == 8 + 4 + 4
    assert (_inside(exp.map, net.source[1]) > 0.95).all()


def test_segmentation_fusion_is_never_below_its_gradient_part(net: RegionAnswerNet) -> None:
    x = _input()
    target = medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out[1]))
    fusion = medcam.explain(net, x, "fusioncam", target=target, layers="features")
    gradient = medcam.explain(net, x, "gradcam", target=target, layers="features")
    assert fusion.stats["variant"] == "segmentation" and len(fusion.stats["fallback"]["features"]) == 1
    betas = fusion.stats["betas"]["features"]
    kept = fusion.stats["fallback"]["features"][0] == "fused"
    assert not kept or betas["keep_fused"][0] >= betas["keep_gradient"][0]
    assert _inside(fusion.map, net.source[1]) >= _inside(gradient.map, net.source[1]) - 1e-6


def test_segmentation_default_masks_are_binary_top_one_percent_over_air(net: RegionAnswerNet) -> None:
    # chosen by measurement (docs/methods-region-fusion.md); the known answer must survive them
    target = medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out[0]))
    exp = medcam.explain(net, _input(), "scorecam", target=target, layers="features")
    expected = {"mask": "binary", "mask_top": 0.01, "baseline": "min", "weights": "increase"}
    assert exp.stats["masking"]["scorecam"] == expected
    assert (_inside(exp.map, net.source[0]) > 0.95).all()
    fusion = medcam.explain(net, _input(), "fusioncam", target=target, layers="features")
    assert fusion.stats["contributions"] == {"mask": "binary", "mask_top": 0.01, "baseline": "min"}
    assert fusion.stats["masking"]["scorecam"] == expected


def test_classifier_masks_stay_the_papers() -> None:
    model, x = small_classifier(2), small_input(2)
    exp = medcam.explain(model, x, "scorecam", target=1, layers="features")
    assert exp.stats["masking"]["scorecam"] == {"mask": "soft", "baseline": "zeros", "weights": "probability"}
    exp = medcam.explain(model, x, "scorecam", target=1, layers="features", mask="binary")
    assert exp.stats["masking"]["scorecam"]["mask_top"] == 0.05
    exp = medcam.explain(model, x, "scorecam", target=1, layers="features", mask="binary", mask_top=0.2)
    assert exp.stats["masking"]["scorecam"]["mask_top"] == 0.2


def test_binary_masks_keep_the_tissue_a_soft_mask_changes() -> None:
    # the reason for the segmentation default: a soft mask scales the lesion (1.0) by its
    # normalised activation (0.5) into 0.65, which the network does not recognise
    net, x = TissueAnswerNet().eval(), tissue_input()
    target = medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out))
    binary = medcam.explain(net, x, "scorecam", target=target, layers="features")
    assert binary.stats["masking"]["scorecam"]["mask"] == "binary"
    assert (_inside(binary.map, net.source) > 0.95).all()
    soft = medcam.explain(net, x, "scorecam", target=target, layers="features", mask="soft")
    assert soft.map.max() == 0  # no channel raises the score above the baseline's: a blank map
