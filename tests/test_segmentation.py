"""Seg-Grad-CAM and Seg-HiRes-Grad CAM against a hand-written reference.

Reference: a test-local hook grabs the layer's activation A, M is built here from the
logits with plain tensor code (or scipy for components), S = sum over M of logit_c,
G = torch.autograd.grad(S, A); Grad-CAM averages G spatially, HiResCAM multiplies
element-wise; ReLU -> (bi/tri)linear upsampling -> min-max. Tolerance 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import seeded_input, tiny_unet
from scipy import ndimage

import medcam

TOL = 1e-5


def _reference(model, x, layer: str, method: str, mask: torch.Tensor, score) -> torch.Tensor:
    captured = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    acts = captured["a"]
    (grads,) = torch.autograd.grad((score(logits) * mask).sum(), acts)
    dims = tuple(range(2, acts.ndim))
    weights = grads.mean(dim=dims, keepdim=True) if method == "gradcam" else grads
    raw = (weights * acts).sum(1).detach().clamp_min(0)
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    up = F.interpolate(raw[:, None], size=x.shape[2:], mode=mode, align_corners=False)[:, 0]
    flat = up.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (up.ndim - 1)
    return (up - lo.view(shape)) / (hi - lo).view(shape)


def _masks(logits: torch.Tensor, cls: int) -> dict[str, tuple[object, torch.Tensor]]:
    """pixel-set spec -> (what medcam gets, the mask built independently here)."""
    predicted = logits.argmax(1) == cls
    spatial = logits.shape[2:]
    box = torch.zeros_like(predicted)
    box[(slice(None), *(slice(2, s // 2) for s in spatial))] = True
    voxel = torch.zeros_like(predicted)
    coords = tuple(s // 3 for s in spatial)
    voxel[(slice(None), *coords)] = True
    labels, _ = ndimage.label(predicted[0].numpy())
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    given = torch.rand(spatial, generator=torch.Generator().manual_seed(5)) > 0.7
    return {
        "predicted": ("predicted", predicted),
        "prob": ("prob>0.3", logits.softmax(1)[:, cls] > 0.3),
        "mask": (given, given.expand_as(predicted)),
        "box": (medcam.Box((2,) * len(spatial), tuple(s // 2 for s in spatial)), box),
        "voxel": (f"voxel:{','.join(map(str, coords))}", voxel),
        "component": ("component", torch.from_numpy(labels == largest)[None]),
        "image": ("image", torch.ones_like(predicted)),
    }


def _most_predicted_class(model, x) -> tuple[int, torch.Tensor]:
    with torch.no_grad():
        logits = model(x)
    counts = torch.bincount(logits.argmax(1).flatten(), minlength=logits.shape[1])
    return int(counts[1:].argmax()) + 1, logits


def _models():
    import segmentation_models_pytorch as smp

    unet3d = tiny_unet(3).eval()
    torch.manual_seed(0)
    smp2d = smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=(32, 16, 8)).eval()
    return {
        "monai3d": (unet3d, seeded_input(3, size=16), medcam.discover_levels(unet3d)[2].path),
        "smp2d": (smp2d, seeded_input(2, size=32, channels=3), "decoder.blocks.1"),
    }


MODELS = _models()
KINDS = ["predicted", "prob", "mask", "box", "voxel", "component", "image"]


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_seg_cam_matches_reference(arch: str, kind: str, method: str) -> None:
    model, x, layer = MODELS[arch]
    cls, logits = _most_predicted_class(model, x)
    spec, mask = _masks(logits, cls)[kind]
    exp = medcam.explain(model, x, method, target=medcam.SegmentationTarget(cls, pixels=spec), layers=layer)
    assert torch.equal(exp.target.mask, mask), "M is the documented pixel set"
    expected = _reference(model, x, layer, method, mask.float(), lambda out: out[:, cls])
    torch.testing.assert_close(exp.map, expected, atol=TOL, rtol=0)


def test_sigmoid_head_uses_the_channel_logit_and_p_above_half() -> None:
    model, x, layer = MODELS["monai3d"]
    with torch.no_grad():
        logits = model(x)
    mask = logits[:, 2].sigmoid() > 0.5
    target = medcam.SegmentationTarget(2, activation="sigmoid")
    exp = medcam.explain(model, x, "hirescam", target=target, layers=layer)
    assert torch.equal(exp.target.mask, mask)
    torch.testing.assert_close(
        exp.map, _reference(model, x, layer, "hirescam", mask.float(), lambda out: out[:, 2]), atol=TOL, rtol=0
    )


def test_region_of_a_softmax_head_is_the_merged_class() -> None:
    model, x, layer = MODELS["monai3d"]
    with torch.no_grad():
        logits = model(x)
    mask = (logits.argmax(1) == 1) | (logits.argmax(1) == 2)
    exp = medcam.explain(model, x, "gradcam", target=medcam.SegmentationTarget((1, 2)), layers=layer)
    assert torch.equal(exp.target.mask, mask)
    expected = _reference(model, x, layer, "gradcam", mask.float(), lambda out: out[:, [1, 2]].logsumexp(1))
    torch.testing.assert_close(exp.map, expected, atol=TOL, rtol=0)


def test_background_is_a_normal_class() -> None:
    model, x, layer = MODELS["monai3d"]
    exp = medcam.explain(model, x, "hirescam", target=medcam.SegmentationTarget(0, pixels="image"), layers=layer)
    mask = torch.ones_like(exp.target.mask)
    expected = _reference(model, x, layer, "hirescam", mask.float(), lambda out: out[:, 0])
    torch.testing.assert_close(exp.map, expected, atol=TOL, rtol=0)


def test_component_rank_picks_the_kth_largest() -> None:
    probs = torch.zeros(1, 2, 12, 12)
    probs[:, 0] = 1.0
    for (r0, r1), (c0, c1) in [((0, 2), (0, 2)), ((5, 9), (5, 9)), ((0, 3), (8, 11))]:
        probs[:, 1, r0:r1, c0:c1], probs[:, 0, r0:r1, c0:c1] = 2.0, 0.0
    second = medcam.SegmentationTarget(1, pixels="component:2").bind(probs).mask
    assert second.sum() == 9 and second[0, 0:3, 8:11].all()
    with pytest.raises(medcam.TargetError, match="component 4 does not exist"):
        medcam.SegmentationTarget(1, pixels="component:4").bind(probs)
