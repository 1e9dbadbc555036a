"""Score-CAM and Group-CAM: parity with pytorch-grad-cam, hand-written references, batching.

The references below are written out channel by channel with plain model calls, so
they share nothing with medcam's queue, batching, channel skipping or deduplication.
Tolerance 1e-5 on maps in [0, 1] (float32, different batch sizes and op order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from region_nets import small_classifier, small_input
from torch import nn

import medcam
from medcam.core.perturbation import blur_baseline
from medcam.errors import UserError
from medcam.methods.region import group_scores

TOL = 1e-5


def _capture(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations and output of one plain forward pass (a hand-made hook)."""
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        output = model(x)
    finally:
        handle.remove()
    return store["a"].detach(), output.detach()


def _mm(a: torch.Tensor) -> torch.Tensor:
    flat = a.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(a)


def _probability(model: nn.Module, x: torch.Tensor, cls: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        probs = model(x).softmax(dim=1)[:, cls]
    if mask is None:
        return probs
    return (probs * mask).flatten(1).sum(1) / mask.sum()


def _resize(a: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(a, size=size, mode=mode, align_corners=False)


def reference_scorecam(
    model: nn.Module, x: torch.Tensor, layer: str, cls: int, mask: torch.Tensor | None = None, channels=None
) -> torch.Tensor:
    """Score-CAM for one sample, channel by channel, literally METHODS.md (Wang et al. 2020):

    L = mm(ReLU(sum_k s_k U_k)), U_k the upsampled channel, s_k = p_c(X * mm(U_k)).
    """
    acts, _ = _capture(model, x, layer)
    size = tuple(x.shape[2:])
    total = torch.zeros(size)
    for k in range(acts.shape[1]) if channels is None else channels:
        up = _resize(acts[:, k : k + 1], size)[0, 0]
        if up.max() == up.min():
            continue
        h = (up - up.min()) / (up.max() - up.min())
        total += _probability(model, x * h, cls, mask)[0] * up
    return _mm(total.clamp_min(0)[None])[0]


def reference_groupcam(
    model: nn.Module, x: torch.Tensor, layer: str, cls: int, groups: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Group-CAM for one sample, group by group (Zhang et al. 2021, METHODS.md)."""
    store = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        xg = x.clone().requires_grad_(True)
        output = model(xg)
    finally:
        handle.remove()
    score = output[:, cls] if mask is None else (output[:, cls] * mask).sum()
    (grads,) = torch.autograd.grad(score.sum(), store["a"])
    acts = store["a"].detach()
    weights = grads.flatten(2).mean(-1)[0]
    size = tuple(x.shape[2:])
    blurred = blur_baseline(x)
    p_blur = _probability(model, blurred, cls, mask)[0]
    total = torch.zeros(size)
    # contiguous groups, the first K % G of them one channel larger
    sizes = [acts.shape[1] // groups + (g < acts.shape[1] % groups) for g in range(groups)]
    bounds = np.cumsum([0, *sizes])
    for g in range(groups):
        lo, hi = bounds[g], bounds[g + 1]
        group = (weights[lo:hi].view(-1, *[1] * (acts.ndim - 2)) * acts[0, lo:hi]).sum(0).clamp_min(0)
        up = _resize(group[None, None], size)[0, 0]
        if up.max() == up.min():
            continue
        m = (up - up.min()) / (up.max() - up.min())
        s = (_probability(model, x * m + blurred * (1 - m), cls, mask)[0] - p_blur).clamp_min(0)
        total += s * m
    return _mm(total[None])[0]


# ------------------------------------------------------------------------------------------
# parity with pytorch-grad-cam


def test_softmax_over_channels_matches_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))  # layer4: 2x2
    with ScoreCAM(model=model, target_layers=[model.layer4]) as cam:
        cam.batch_size = 64
        reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])
    # pytorch-grad-cam normalises with an epsilon (x / (max + 1e-7)); renormalise exactly
    reference = reference - reference.min(axis=(1, 2), keepdims=True)
    reference = reference / reference.max(axis=(1, 2), keepdims=True)
    exp = medcam.explain(
        model, x, "scorecam", target=281, layers="layer4", weights="softmax_over_channels", batch_size=64
    )
    np.testing.assert_allclose(exp.map.numpy(), reference, atol=TOL)
    layer = exp.stats["layers"]["layer4"]
    assert layer["channels"] == 512
    # every channel counts in pytorch-grad-cam's softmax: constant ones share the all-zeros input
    assert layer["scored"] < 512 - layer["constant"] + 1


# ------------------------------------------------------------------------------------------
# hand-written references


@pytest.mark.parametrize("dims", [2, 3])
def test_scorecam_matches_channel_by_channel_reference(dims: int) -> None:
    model, x = small_classifier(dims), small_input(dims, batch=2)
    exp = medcam.explain(model, x, "scorecam", target=medcam.ClassTarget([2, 0]), layers="features")
    for n, cls in enumerate([2, 0]):
        expected = reference_scorecam(model, x[n : n + 1], "features", cls)
        torch.testing.assert_close(exp.map[n], expected, atol=TOL, rtol=0)


def test_scorecam_segmentation_target_uses_the_mean_probability_over_m() -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = small_input(2, batch=2, size=16)
    # a different M per sample: scores are read inside the union of their bounding boxes
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, 2:9, 5:12] = True
    mask[1, 11:14, 0:3] = True
    layer = "model.1.submodule.0"  # the middle encoder level, 8 channels at 8x8
    # the reference is the paper's soft masks on the zeros image, not the segmentation default
    target = medcam.SegmentationTarget(2, pixels=mask)
    exp = medcam.explain(
        model, x, "scorecam", target=target, layers=layer, mask="soft", baseline="zeros", weights="probability"
    )
    for n in range(2):
        expected = reference_scorecam(model, x[n : n + 1], layer, 2, mask=mask[n].float())
        torch.testing.assert_close(exp.map[n], expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(("dims", "seed", "classes"), [(2, 3, [1, 2]), (3, 3, [0, 0])])
def test_groupcam_matches_group_by_group_reference(dims: int, seed: int, classes: list[int]) -> None:
    model, x = small_classifier(dims), small_input(dims, batch=2, size=16, seed=seed)
    exp = medcam.explain(model, x, "groupcam", target=medcam.ClassTarget(classes), layers="features", groups=4)
    assert exp.stats["layers"]["features"]["no_gain_samples"] == 0, "the paper's path, not the fallback"
    for n, cls in enumerate(classes):
        expected = reference_groupcam(model, x[n : n + 1], "features", cls, groups=4)
        torch.testing.assert_close(exp.map[n], expected, atol=TOL, rtol=0)


def test_groupcam_fallback_when_no_group_beats_the_blur() -> None:
    scores, fell_back = group_scores(torch.tensor([0.2, 0.5, 0.3]), torch.tensor(0.1))
    assert not fell_back and scores.tolist() == pytest.approx([0.1, 0.4, 0.2])
    scores, fell_back = group_scores(torch.tensor([0.2, 0.5, 0.3]), torch.tensor(0.9))
    assert fell_back and scores.tolist() == pytest.approx([0.0, 0.3, 0.1])
    scores, fell_back = group_scores(torch.tensor([0.4, 0.4]), torch.tensor(0.9))
    assert fell_back and scores.tolist() == [1.0, 1.0]


def test_constant_and_duplicate_channels_are_scored_once() -> None:
    model = small_classifier(2)
    with torch.no_grad():
        conv = model.features[2]
        conv.weight[1] = conv.weight[0] * 2.0  # channel 1 = 2 x channel 0 after ReLU: the same mask
        conv.bias[1] = conv.bias[0] * 2.0
        conv.weight[3].zero_()  # channel 3 is constant
        conv.bias[3] = -1.0
    x = small_input(2)
    exp = medcam.explain(model, x, "scorecam", target=0, layers="features")
    layer = exp.stats["layers"]["features"]
    assert layer["constant"] == 1
    assert layer["scored"] == 4  # 6 channels - 1 constant - 1 duplicate
    torch.testing.assert_close(exp.map[0], reference_scorecam(model, x, "features", 0), atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------
# batching and channel budget


@pytest.mark.parametrize("method", ["scorecam", "groupcam", "unioncam", "fusioncam"])
def test_batching_gives_the_same_maps(method: str) -> None:
    # seed 3: every group of Group-CAM beats the blur (its fallback divides tiny differences)
    model, x = small_classifier(2), small_input(2, batch=2, size=16, seed=3)
    target = medcam.ClassTarget([1, 2])
    # Group-CAM weighs groups by p(masked) - p(blur), here ~1e-3: the float32 rounding
    # of a forward pass in another batch composition (~1e-7) is amplified ~100x
    tol = 5e-5 if method == "groupcam" else TOL
    reference = medcam.explain(model, x, method, target=target, layers="features", batch_size=1)
    for batch_size in (3, 64):
        other = medcam.explain(model, x, method, target=target, layers="features", batch_size=batch_size)
        torch.testing.assert_close(other.map, reference.map, atol=tol, rtol=0)
    for n, cls in enumerate([1, 2]):
        alone = medcam.explain(model, x[n : n + 1], method, target=cls, layers="features", batch_size=5)
        torch.testing.assert_close(alone.map[0], reference.map[n], atol=tol, rtol=0)


def test_memory_layouts_give_the_same_map() -> None:
    model, x = small_classifier(2), small_input(2, batch=2)
    maps = [
        medcam.explain(model, x, "scorecam", target=1, layers="features", memory_format=fmt).map
        for fmt in ("contiguous", "channels_last")
    ]
    torch.testing.assert_close(maps[0], maps[1], atol=TOL, rtol=0)


class Flattening(nn.Module):
    """Reshapes its input with .view(), which channels-last inputs do not allow."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8 + 2 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.features(x))
        return self.fc(torch.cat([f.flatten(1), x.view(x.shape[0], -1)], dim=1))


def test_channels_last_falls_back_for_models_that_need_contiguous_inputs() -> None:
    torch.manual_seed(0)
    model, x = Flattening().eval(), torch.randn(1, 2, 8, 8)
    auto = medcam.explain(model, x, "scorecam", target=1, layers="features").map
    plain = medcam.explain(model, x, "scorecam", target=1, layers="features", memory_format="contiguous").map
    torch.testing.assert_close(auto, plain, atol=TOL, rtol=0)
    with pytest.raises(RuntimeError, match="view"):
        medcam.explain(model, x, "scorecam", target=1, layers="features", memory_format="channels_last")


def test_max_channels_keeps_the_channels_with_the_largest_gradcam_weights() -> None:
    model, x = small_classifier(3), small_input(3)
    full = medcam.explain(model, x, "scorecam", target=1, layers="features")
    same = medcam.explain(model, x, "scorecam", target=1, layers="features", max_channels=6)
    torch.testing.assert_close(same.map, full.map, atol=0, rtol=0)
    # the Grad-CAM weights, by hand
    xg = x.clone().requires_grad_(True)
    store = {}
    handle = model.features.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = model(xg)
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(out[0, 1], store["a"])
    top = grads.flatten(2).mean(-1)[0].topk(3).indices.tolist()
    budget = medcam.explain(model, x, "scorecam", target=1, layers="features", max_channels=3)
    expected = reference_scorecam(model, x, "features", 1, channels=sorted(top))
    torch.testing.assert_close(budget.map[0], expected, atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------
# options


def test_bf16_precision_runs_in_bfloat16_and_stays_close() -> None:
    model, x = small_classifier(2), small_input(2, size=16)
    fp32 = medcam.explain(model, x, "scorecam", target=1, layers="features")
    bf16 = medcam.explain(model, x, "scorecam", target=1, layers="features", precision="bf16")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert bf16.stats["precision"] == "bfloat16"
    assert torch.isfinite(bf16.map).all()
    # bfloat16 keeps ~3 significant digits of each masked score
    assert (bf16.map - fp32.map).abs().max() < 0.05


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("scorecam", {"batch_size": 0}, "batch_size must be a positive integer"),
        ("scorecam", {"weights": "softmax"}, "weights='softmax' is not known"),
        ("scorecam", {"precision": "fp16"}, "precision='fp16' is not known"),
        ("scorecam", {"mask_top": "half"}, "mask_top is the kept fraction"),
        ("scorecam", {"max_channels": 0}, "max_channels must be a positive integer"),
        ("scorecam", {"memory_format": "nhwc"}, "memory_format='nhwc' is not known"),
        ("groupcam", {"groups": 0}, "groups must be a positive integer"),
        ("groupcam", {"blur_kernel": 4}, "odd kernel"),
    ],
)
def test_bad_options_are_user_errors(method: str, options: dict, message: str) -> None:
    model, x = small_classifier(2), small_input(2)
    with pytest.raises(UserError, match=message):
        medcam.explain(model, x, method, target=1, layers="features", **options)
