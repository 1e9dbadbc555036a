"""Sliding-window prediction and CAM: MONAI's stitching, exact window gradients, one-window equality."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet
from nets import InputMapMethod

import medcam
from medcam.core.hooks import LayerCapture
from medcam.core.ops import finalize, upsample
from medcam.core.targets import SegmentationTarget
from medcam.methods.base import PostProcessing
from medcam.methods.registry import create_method
from medcam.pipeline.windows import SlidingWindow, WindowError, predict, sliding_window_cam, window_combine

BOTTLENECK = "model.1.submodule"
FINAL = "model.1"  # the last feature map before the up-convolution, at half resolution
OUTPUT = "model.2"  # the output up-convolution, at full resolution


def tiny_unet(seed: int = 0, out_channels: int = 3) -> UNet:
    torch.manual_seed(seed)
    net = UNet(3, 1, out_channels, channels=(4, 8), strides=(2,), num_res_units=0)
    return net.eval()


def volume(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(1, 1, *shape)


def box_mask(shape: tuple[int, ...], start: tuple[int, ...], stop: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = True
    return mask


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_window_layout_reproduces_monai_stitching(mode: str, overlap: float) -> None:
    net = tiny_unet()
    x = volume((20, 18, 6))  # the last axis is smaller than the window: padded
    window = SlidingWindow((8, 8, 8), overlap=overlap, mode=mode)
    monai_out = predict(net, x, window)
    layout = window.layout(tuple(x.shape[2:]))
    padded = layout.pad_input(x)
    total = torch.zeros(1, 3, *layout.padded)
    with torch.no_grad():
        for w in layout.slices:
            total[(slice(None), slice(None), *w)] += net(padded[(slice(None), slice(None), *w)]) * layout.importance
    ours = (total / layout.norm())[(slice(None), slice(None), *layout.crop)]
    assert len(layout.slices) > 4
    torch.testing.assert_close(ours, monai_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["hirescam", "gradcam", "gradcam++", "xgradcam"])
def test_one_window_equals_direct_explain(method: str) -> None:
    net = tiny_unet()
    x = volume((16, 16, 16))
    mask = box_mask((16, 16, 16), (3, 4, 5), (11, 9, 14))
    target = SegmentationTarget(1, pixels=mask)
    layers = {"bottleneck": BOTTLENECK, "final": FINAL}
    window = SlidingWindow((16, 16, 16))
    raw = sliding_window_cam(
        net, x, create_method(method), target, layers, window, post=PostProcessing(relu=False, normalization=None)
    )
    direct = medcam.explain(net, x, method, target, layers, relu=False, normalize=None)
    assert raw.stats["windows"] == 1
    for alias in layers:
        scale = direct.maps[alias].abs().max()
        torch.testing.assert_close(raw.maps[alias], direct.maps[alias], rtol=1e-4, atol=1e-5 * float(scale))
    # default post-processing: ReLU and min-max after stitching, i.e. applied to the direct raw map
    default = sliding_window_cam(net, x, create_method(method), target, layers, window)
    for alias in layers:
        expected = finalize(direct.maps[alias], (16, 16, 16), relu=True, normalization="minmax")
        torch.testing.assert_close(default.maps[alias], expected, rtol=1e-4, atol=1e-4)
    # at a full-resolution layer (the output convolution) ReLU and upsampling commute: equal to explain()
    full = medcam.explain(net, x, method, target, {"out": OUTPUT})
    ours = sliding_window_cam(net, x, create_method(method), target, {"out": OUTPUT}, window)
    torch.testing.assert_close(ours.maps["out"], full.maps["out"], rtol=1e-4, atol=1e-4)


def test_one_window_region_target_equals_direct() -> None:
    net = tiny_unet(out_channels=4)
    x = volume((16, 16, 16), seed=3)
    target = SegmentationTarget((2, 3), pixels="image")
    raw = sliding_window_cam(
        net,
        x,
        create_method("hirescam"),
        target,
        {"b": BOTTLENECK},
        SlidingWindow((16, 16, 16)),
        post=PostProcessing(False, None),
    )
    direct = medcam.explain(net, x, "hirescam", target, {"b": BOTTLENECK}, relu=False, normalize=None)
    torch.testing.assert_close(raw.maps["b"], direct.maps["b"], rtol=1e-4, atol=1e-6)


def _reference_hirescam(
    net: torch.nn.Module, x: torch.Tensor, window: SlidingWindow, layer: str, score_fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd through the whole stitched score: independent of the per-window linear targets."""
    layout = window.layout(tuple(x.shape[2:]))
    padded = layout.pad_input(x)
    norm = layout.norm()
    acts, outs = [], []
    for w in layout.slices:
        with LayerCapture(net, [layer]) as cap:
            outs.append(net(padded[(slice(None), slice(None), *w)].clone().requires_grad_(True)))
        acts.append(cap.activations[layer])
    stitched = torch.zeros(1, outs[0].shape[1], *layout.padded)
    for w, y in zip(layout.slices, outs, strict=True):
        stitched = stitched + torch.nn.functional.pad(
            y * layout.importance,
            [p for a, b in reversed(list(zip(w, layout.padded, strict=True))) for p in (a.start, b - a.stop)],
        )
    stitched = (stitched / norm)[(slice(None), slice(None), *layout.crop)]
    grads = torch.autograd.grad(score_fn(stitched), acts)
    total = torch.zeros(1, *layout.padded)
    for w, a, g in zip(layout.slices, acts, grads, strict=True):
        total[(slice(None), *w)] += upsample((a * g).sum(1), layout.roi).detach()
    return total[(slice(None), *layout.crop)], stitched.detach()


@pytest.mark.parametrize("region", [False, True])
def test_multi_window_cam_is_the_exact_gradient_of_the_stitched_score(region: bool) -> None:
    net = tiny_unet(seed=2, out_channels=4)
    x = volume((20, 14, 12), seed=4)
    window = SlidingWindow((8, 8, 8), overlap=0.5, mode="gaussian")
    prediction = predict(net, x, window)
    mask = box_mask((20, 14, 12), (2, 3, 1), (17, 12, 10))
    channels = (1, 3) if region else (2,)

    def score(y: torch.Tensor) -> torch.Tensor:
        logits = y[:, list(channels)].logsumexp(1) if region else y[:, channels[0]]
        return (logits * mask).sum()

    reference, stitched = _reference_hirescam(net, x, window, BOTTLENECK, score)
    torch.testing.assert_close(stitched, prediction, rtol=1e-5, atol=1e-6)
    target = SegmentationTarget(channels if region else channels[0], pixels=mask)
    ours = sliding_window_cam(
        net,
        x,
        create_method("hirescam"),
        target,
        {"b": BOTTLENECK},
        window,
        post=PostProcessing(False, None),
        prediction=prediction,
    )
    assert ours.stats["windows"] > 8
    torch.testing.assert_close(ours.maps["b"], reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


def test_only_windows_intersecting_m_get_a_backward_pass() -> None:
    net = tiny_unet()
    x = volume((24, 24, 16))
    window = SlidingWindow((8, 8, 8), overlap=0.25)
    mask = box_mask((24, 24, 16), (0, 0, 0), (3, 3, 3))
    layout = window.layout((24, 24, 16))
    touching = sum(bool(mask[w].any()) for w in layout.slices)
    result = sliding_window_cam(
        net, x, create_method("gradcam"), SegmentationTarget(1, pixels=mask), {"b": BOTTLENECK}, window
    )
    assert result.stats["windows"] == len(layout.slices) > touching
    assert result.stats["windows_with_backward"] == touching == 1


def test_window_batches_give_the_same_map() -> None:
    net = tiny_unet()
    x = volume((20, 16, 12))
    target = SegmentationTarget(1, pixels="image")
    one = sliding_window_cam(net, x, create_method("hirescam"), target, {"b": BOTTLENECK}, SlidingWindow((8, 8, 8)))
    three = sliding_window_cam(
        net, x, create_method("hirescam"), target, {"b": BOTTLENECK}, SlidingWindow((8, 8, 8), batch_size=3)
    )
    torch.testing.assert_close(one.maps["b"], three.maps["b"], rtol=1e-5, atol=1e-6)


def test_non_decomposable_methods_run_whole_when_the_volume_fits_one_window() -> None:
    net = tiny_unet()
    method = InputMapMethod()
    assert window_combine(method) is None
    assert window_combine(create_method("hirescam")) is not None
    x = volume((12, 14, 10))  # smaller than the window: padded, run once, cropped
    result = sliding_window_cam(
        net, x, method, SegmentationTarget(1, pixels="image"), {"b": BOTTLENECK}, SlidingWindow((16, 16, 16))
    )
    expected = finalize(x[:, 0], (12, 14, 10), relu=True, normalization="minmax")
    torch.testing.assert_close(result.maps["b"], expected)
    torch.testing.assert_close(result.extras["uncertainty"]["b"], x[:, 0].abs())
    big = volume((24, 16, 16))
    with pytest.raises(WindowError, match="window by window"):
        sliding_window_cam(
            net, big, method, SegmentationTarget(1, pixels="image"), {"b": BOTTLENECK}, SlidingWindow((16, 16, 16))
        )
