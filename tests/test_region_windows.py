"""Region and ensemble methods over sliding windows (issue 14): exact against the sliding-window predictor.

The references here are written out independently: activations captured with a plain
forward hook per window, stitched with ``F.interpolate`` and MONAI's blending weights,
masked volumes scored with MONAI's ``sliding_window_inference`` on the whole volume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_inference import BOTTLENECK, FINAL, OUTPUT, box_mask, tiny_unet, volume

import medcam
import medcam.methods.region_windows as region_windows
from medcam.cli import main
from medcam.core.ops import finalize
from medcam.core.perturbation import blur_baseline
from medcam.core.targets import SegmentationTarget
from medcam.methods.registry import create_method
from medcam.pipeline.windows import SlidingWindow, WindowError, predict, sliding_window_cam

TOL = 1e-5
# the brute-force references below compute the paper's Score-CAM (X * H_k, probabilities); the segmentation
# defaults (masks towards air, increase of confidence) are checked against the direct computation instead
CLASSIC_SCORECAM = {"baseline": "zeros", "weights": "probability", "mask": "soft"}


def window_activations(net: torch.nn.Module, padded: torch.Tensor, layer: str, layout) -> list[torch.Tensor]:
    """The layer's output on every window (a plain forward hook)."""
    found: list[torch.Tensor] = []
    module = net.get_submodule(layer)
    handle = module.register_forward_hook(lambda _m, _i, out: found.append(out.detach()))
    try:
        with torch.no_grad():
            for w in layout.slices:
                net(padded[(slice(None), slice(None), *w)])
    finally:
        handle.remove()
    return [a[0] for a in found]


def stitched(maps: list[torch.Tensor], layout) -> torch.Tensor:
    """``sum_w imp_w U(maps_w) / norm`` cropped to the volume, ``(Q, *spatial)``."""
    total = torch.zeros(maps[0].shape[0], *layout.padded)
    for m, w in zip(maps, layout.slices, strict=True):
        up = F.interpolate(m[None].float(), size=layout.roi, mode="trilinear", align_corners=False)[0]
        total[(slice(None), *w)] += up * layout.importance
    return (total / layout.norm())[(slice(None), *layout.crop)]


def predicted_probability(net, volume_, window, cls: int, mask: torch.Tensor) -> float:
    return float(predict(net, volume_, window).softmax(dim=1)[0, cls][mask].mean())


def top_voxels(a: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 on the ``fraction`` highest voxels of ``a`` (ties kept, never its minimum), else 0: a sort."""
    keep = max(1, round(fraction * a.numel()))
    threshold = a.flatten().sort(descending=True).values[keep - 1]
    return ((a >= threshold) & (a > a.min())).float()


def brute_scorecam(net, x, layer, cls, mask, window, top: float | None = None) -> torch.Tensor:
    layout = window.layout(tuple(x.shape[2:]))
    maps = stitched(window_activations(net, layout.pad_input(x), layer, layout), layout)
    raw = torch.zeros(x.shape[2:])
    for a in maps:
        low, high = a.min(), a.max()
        if high == low:
            continue
        h = (a - low) / (high - low) if top is None else top_voxels(a, top)
        score = predicted_probability(net, x * h, window, cls, mask)
        raw += score * a
    return finalize(raw[None], tuple(x.shape[2:]), relu=True, normalization="minmax")


def stitched_gradcam_weights(net, x, layer, cls, mask, window) -> torch.Tensor:
    """Grad-CAM weights of the stitched logit score: its gradient summed over every window's activations,
    divided by one window's feature positions (autograd through a hand-written stitched prediction)."""
    layout = window.layout(tuple(x.shape[2:]))
    padded = layout.pad_input(x)
    acts: list[torch.Tensor] = []

    def keep(_m, _i, out):
        out.retain_grad()
        acts.append(out)

    handle = net.get_submodule(layer).register_forward_hook(keep)
    total = torch.zeros(1, 3, *layout.padded)
    try:
        for w in layout.slices:
            total[(slice(None), slice(None), *w)] += net(padded[(slice(None), slice(None), *w)]) * layout.importance
    finally:
        handle.remove()
    logits = (total / layout.norm())[(slice(None), slice(None), *layout.crop)]
    logits[0, cls][mask].sum().backward()
    grads = [a.grad[0] for a in acts]
    return sum(g.flatten(1).sum(dim=1) for g in grads) / grads[0][0].numel()


def brute_groupcam(net, x, layer, cls, mask, window, groups) -> torch.Tensor:
    layout = window.layout(tuple(x.shape[2:]))
    weights = stitched_gradcam_weights(net, x, layer, cls, mask, window)
    per_window = []
    for a in window_activations(net, layout.pad_input(x), layer, layout):
        chunks = torch.tensor_split(weights.view(-1, 1, 1, 1) * a, groups, dim=0)
        per_window.append(torch.stack([c.sum(dim=0) for c in chunks]).clamp_min(0))
    maps = stitched(per_window, layout)
    blurred = blur_baseline(x)
    base = predicted_probability(net, blurred, window, cls, mask)
    raw = torch.zeros(x.shape[2:])
    gains = []
    for g in maps:
        low, high = g.min(), g.max()
        if high == low:
            continue
        h = (g - low) / (high - low)
        gains.append((predicted_probability(net, blurred + h * (x - blurred), window, cls, mask) - base, h))
    assert any(gain > 0 for gain, _ in gains), "the test case must not need Group-CAM's fallback"
    for gain, h in gains:
        raw += max(gain, 0.0) * h
    return finalize(raw[None], tuple(x.shape[2:]), relu=True, normalization="minmax")


@pytest.mark.parametrize(
    ("method", "layer", "options"),
    [
        ("scorecam", BOTTLENECK, {}),
        ("scorecam", FINAL, {"max_channels": 5}),
        ("groupcam", BOTTLENECK, {"groups": 3}),
        # the ensembles' gradient part is stitched like the gradient methods' raw maps (ReLU after upsampling),
        # which equals the direct computation where upsampling is the identity
        ("unioncam", OUTPUT, {}),
        ("scorecam", BOTTLENECK, {"mask": "binary", "mask_top": 0.1}),
        ("groupcam", BOTTLENECK, {"groups": 3, "mask": "binary"}),
        ("fusioncam", OUTPUT, {}),  # the segmentation variant, its guard included
        ("fusioncam", OUTPUT, {"mask": "binary", "mask_top": 0.2, "tolerance": 0.0}),
        ("fusioncam", OUTPUT, {"variant": "normalised"}),
        ("fusioncam", OUTPUT, {"variant": "normalised", "region": "groupcam", "groups": 2, "baseline": "mean"}),
    ],
)
def test_one_window_equals_the_direct_computation(method: str, layer: str, options: dict) -> None:
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume((16, 16, 16))
    target = SegmentationTarget(1, pixels=box_mask((16, 16, 16), (3, 4, 5), (11, 9, 14)))
    windowed = sliding_window_cam(
        net, x, create_method(method, **options), target, {"l": layer}, SlidingWindow((16, 16, 16))
    )
    direct = medcam.explain(net, x, method, target, {"l": layer}, **options)
    assert windowed.stats["windows"] == 1 and windowed.method_stats["masked_window_passes"] > 0
    # Score-CAM's segmentation weights are probability increases over the baseline, differences of
    # nearly equal float32 numbers: the stitched and the direct map agree to 5e-5 after normalisation
    # (so are Union-CAM's and Fusion-CAM's region parts: 8.1e-6 with PyTorch's convolutions, up to
    # 1.3e-5 with oneDNN's, medcam.core.fast_conv)
    tolerance = 5e-5 if method in ("scorecam", "unioncam", "fusioncam") else TOL
    torch.testing.assert_close(windowed.maps["l"], direct.maps["l"], rtol=0, atol=tolerance)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_scorecam_over_windows_equals_the_sliding_window_predictor_by_brute_force(mode: str, overlap: float) -> None:
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume((20, 16, 6))  # the last axis is padded to the window
    mask = box_mask((20, 16, 6), (2, 3, 1), (9, 10, 5))
    window = SlidingWindow((8, 8, 8), overlap=overlap, mode=mode)
    result = sliding_window_cam(
        net,
        x,
        create_method("scorecam", **CLASSIC_SCORECAM),
        SegmentationTarget(1, pixels=mask),
        {"b": BOTTLENECK},
        window,
    )
    expected = brute_scorecam(net, x, BOTTLENECK, 1, mask, window)
    assert result.stats["windows"] > result.stats["windows_with_backward"] > 1
    torch.testing.assert_close(result.maps["b"][0], expected[0], rtol=0, atol=TOL)


def test_binary_masks_over_windows_rank_each_channel_over_the_whole_volume() -> None:
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume((20, 16, 6))
    mask = box_mask((20, 16, 6), (2, 3, 1), (9, 10, 5))
    window = SlidingWindow((8, 8, 8), overlap=0.5)
    method = create_method("scorecam", **{**CLASSIC_SCORECAM, "mask": "binary", "mask_top": 0.2})
    result = sliding_window_cam(net, x, method, SegmentationTarget(1, pixels=mask), {"b": BOTTLENECK}, window)
    expected = brute_scorecam(net, x, BOTTLENECK, 1, mask, window, top=0.2)
    assert result.stats["windows"] > result.stats["windows_with_backward"] > 1
    torch.testing.assert_close(result.maps["b"][0], expected[0], rtol=0, atol=TOL)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_groupcam_over_windows_equals_the_sliding_window_predictor_by_brute_force(mode: str) -> None:
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume((20, 16, 12))
    mask = box_mask((20, 16, 12), (2, 3, 1), (12, 10, 7))
    window = SlidingWindow((8, 8, 8), overlap=0.5, mode=mode)
    method = create_method("groupcam", groups=4, baseline="groupcam-blur", mask="soft")
    result = sliding_window_cam(net, x, method, SegmentationTarget(1, pixels=mask), {"b": BOTTLENECK}, window)
    expected = brute_groupcam(net, x, BOTTLENECK, 1, mask, window, groups=4)
    # Group-CAM weights groups by p_g - p_blur, here 2e-4..9e-4 of probabilities near 0.3: float32 rounding of
    # the scores (~3e-8) becomes ~1e-4 of a weight, so the maps agree to 1e-4, not 1e-5
    torch.testing.assert_close(result.maps["b"][0], expected[0], rtol=0, atol=1e-4)


def test_windows_that_miss_m_are_never_rerun_and_the_cost_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume((24, 16, 16))
    mask = box_mask((24, 16, 16), (1, 1, 1), (5, 6, 4))  # one corner: few windows meet M
    window = SlidingWindow((8, 8, 8), overlap=0.25)
    layout = window.layout((24, 16, 16))
    meeting = sum(bool(mask[w].any()) for w in layout.slices)
    rows: list[int] = []
    handle = net.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    caplog.set_level(logging.INFO, logger=region_windows.COST_LOGGER)
    try:
        result = sliding_window_cam(
            net,
            x,
            create_method("scorecam", batch_size=5, **CLASSIC_SCORECAM),
            SegmentationTarget(1, pixels=mask),
            {"b": BOTTLENECK},
            window,
        )
    finally:
        handle.remove()
    stats = result.method_stats
    scored = stats["layers"]["b"]["scored"]
    assert 0 < meeting < len(layout.slices) and stats["windows_meeting_M"] == [meeting]
    assert stats["masked_window_passes"] == scored * meeting
    # every forward row: the prediction and the clean pass (every window once each), then only masked windows meeting M
    assert sum(rows) == 2 * len(layout.slices) + scored * meeting
    assert max(rows) == 5  # masked windows of several channels share batches
    announced = [r.getMessage() for r in caplog.records if r.name == region_windows.COST_LOGGER]
    assert announced[0].startswith(f"scorecam: {scored * meeting} masked window passes")
    assert "per masked window on the first batch" in announced[1]


def test_small_memory_budgets_give_the_same_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channel chunks (re-captured when the cache is full) and one-map stitching change nothing."""
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume((20, 16, 12))
    target = SegmentationTarget(1, pixels=box_mask((20, 16, 12), (2, 3, 1), (12, 10, 7)))
    window = SlidingWindow((8, 8, 8), overlap=0.25)
    layers = {"b": BOTTLENECK, "f": FINAL}
    for method in ("scorecam", "groupcam"):
        roomy = (
            sliding_window_cam(net, x, create_method(method, groups=3), target, layers, window)
            if method == "groupcam"
            else sliding_window_cam(net, x, create_method(method), target, layers, window)
        )
        with monkeypatch.context() as patch:
            patch.setattr(region_windows, "CACHE_BYTES", 2000)
            patch.setattr(region_windows, "STITCH_BYTES", 1)
            options = {"groups": 3} if method == "groupcam" else {}
            tight = sliding_window_cam(net, x, create_method(method, **options), target, layers, window)
        assert tight.method_stats["clean_window_passes"] > roomy.method_stats["clean_window_passes"]
        for alias in layers:
            torch.testing.assert_close(tight.maps[alias], roomy.maps[alias], rtol=0, atol=TOL)


def test_a_large_feature_cache_is_kept_in_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past EXACT_CACHE_BYTES the windows' activations are cached in float16 (half the memory), unless a
    window exceeds float16's range; the map moves by float16 rounding only."""
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume((20, 16, 12))
    target = SegmentationTarget(1, pixels=box_mask((20, 16, 12), (2, 3, 1), (12, 10, 7)))
    window = SlidingWindow((8, 8, 8), overlap=0.25)
    layers = {"b": BOTTLENECK}
    exact = sliding_window_cam(net, x, create_method("scorecam"), target, layers, window)
    assert exact.method_stats["feature_cache"] == "float32"
    with monkeypatch.context() as patch:
        patch.setattr(region_windows, "EXACT_CACHE_BYTES", 0)
        half = sliding_window_cam(net, x, create_method("scorecam"), target, layers, window)
        patch.setattr(region_windows, "HALF_MAX", 0.0)  # every window out of range: kept in float32
        kept = sliding_window_cam(net, x, create_method("scorecam"), target, layers, window)
    assert half.method_stats["feature_cache"] == "float16"
    assert not torch.equal(half.maps["b"], exact.maps["b"])
    torch.testing.assert_close(half.maps["b"], exact.maps["b"], rtol=0, atol=2e-3)
    torch.testing.assert_close(kept.maps["b"], exact.maps["b"], rtol=0, atol=0)


def test_softmax_over_channels_stays_a_whole_input_variant() -> None:
    net, x = tiny_unet(), volume((24, 16, 16))
    with pytest.raises(WindowError, match="window by window"):
        sliding_window_cam(
            net,
            x,
            create_method("scorecam", weights="softmax_over_channels"),
            SegmentationTarget(1, pixels="image"),
            {"b": BOTTLENECK},
            SlidingWindow((8, 8, 8)),
        )


@pytest.mark.parametrize("method", ["scorecam", "groupcam", "unioncam", "fusioncam"])
def test_medcam_explain_runs_region_methods_on_a_volume_larger_than_the_window(
    method: str, kits_case: Path, kits_model: Path, tmp_path: Path
) -> None:
    import json

    out = tmp_path / method
    argv = ["explain", "--volume", str(kits_case), "--model", str(kits_model), "--class", "kidney"]
    code = main([*argv, "--method", method, "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sliding_window"]["windows"] > 1
    assert summary["method"]["stats"]["masked_window_passes"] > 0
    assert (out / "heatmap.nii.gz").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method-option", "weights=softmax_over_channels"], "window by window"),
        (["--method-option", "batch_size=0"], "batch_size must be a positive integer"),
        (["--method-option", "precision=fp8"], "precision='fp8' is not known"),
    ],
)
def test_bad_region_options_are_one_line_exit_2(
    options: list[str], message: str, kits_case: Path, kits_model: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    argv = ["explain", "--volume", str(kits_case), "--model", str(kits_model), "--class", "kidney"]
    code = main([*argv, "--method", "scorecam", *options, "--out", str(tmp_path / "out"), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_robustcam_with_a_region_base_fuses_views_of_the_whole_volume() -> None:
    torch.set_num_threads(1)
    net = tiny_unet()
    opts = {"base": "scorecam", "views": ["identity", "flip:0", "intensity:0.1,0.1", "rotate:10"]}
    x = volume((16, 16, 16))
    target = SegmentationTarget(1, pixels=box_mask((16, 16, 16), (3, 4, 5), (11, 9, 14)))
    one = sliding_window_cam(
        net, x, create_method("robustcam", **opts), target, {"b": BOTTLENECK}, SlidingWindow((16, 16, 16))
    )
    direct = medcam.explain(net, x, "robustcam", target, {"b": BOTTLENECK}, **opts)
    # the Score-CAM base weighs channels by probability increases (see the one-window test): 5e-5
    torch.testing.assert_close(one.maps["b"], direct.maps["b"], rtol=0, atol=5e-5)
    torch.testing.assert_close(one.extras["uncertainty"]["b"], direct.extras["uncertainty"]["b"], rtol=0, atol=5e-5)
    torch.testing.assert_close(one.extras["valid_views"]["b"], direct.extras["valid_views"]["b"])
    big = volume((24, 16, 16))
    on_big = SegmentationTarget(1, pixels=box_mask((24, 16, 16), (3, 4, 5), (11, 9, 14)))
    many = sliding_window_cam(
        net, big, create_method("robustcam", **opts), on_big, {"b": BOTTLENECK}, SlidingWindow((8, 8, 8))
    )
    assert many.stats["windows"] > 1 and len(many.method_stats["views"]) == 4
    assert many.maps["b"].shape == (1, 24, 16, 16) and bool(torch.isfinite(many.maps["b"]).all())


def test_levels_and_folder_batches_run_region_methods_over_windows(
    kits_case: Path, kits_model: Path, tmp_path: Path
) -> None:
    import json

    levels = tmp_path / "levels"
    argv = ["explain", "--model", str(kits_model), "--class", "kidney", "--method", "scorecam", "--no-progress"]
    assert main([*argv, "--volume", str(kits_case), "--levels", "--out", str(levels)]) == 0
    stats = json.loads((levels / "summary.json").read_text())["method"]["stats"]
    assert len(stats["layers"]) > 1 and all(layer["scored"] > 0 for layer in stats["layers"].values())
    assert len(list((levels / "levels").glob("*.nii.gz"))) == len(stats["layers"])
    batch = tmp_path / "batch"
    code = main(
        [
            *argv[:-1],
            "--method-option",
            "batch_size=4",
            "--folder",
            str(kits_case.parent.parent),
            "--out",
            str(batch),
            "--no-progress",
        ]
    )
    assert code == 0
    summaries = list(batch.rglob("summary.json"))
    assert len(summaries) == 1
    assert json.loads(summaries[0].read_text())["method"]["options"]["batch_size"] == 4


def test_fusioncam_segmentation_variant_over_windows_scores_its_guard_with_the_predictor() -> None:
    """The guard's clean and keep-top-k scores are the sliding-window predictor's on the masked volumes."""
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume((20, 16, 12))
    mask = box_mask((20, 16, 12), (2, 3, 1), (12, 10, 7))
    window = SlidingWindow((8, 8, 8), overlap=0.25)
    target = SegmentationTarget(1, pixels=mask)
    found = sliding_window_cam(net, x, create_method("fusioncam", tolerance=0.0), target, {"l": OUTPUT}, window)
    stats = found.method_stats
    assert found.stats["windows"] > found.stats["windows_with_backward"] > 1 and stats["variant"] == "segmentation"
    clean = predicted_probability(net, x, window, 1, mask)
    betas = stats["betas"]["l"]
    assert betas["clean"][0] == pytest.approx(clean, abs=TOL)
    # the segmentation masking shows voxels over air (the "min" baseline) ...
    base = torch.full_like(x, float(x.min()))
    # ... and keep-top-k keeps k = 1 and 4 x |M| voxels of a map: the final map is the kept one
    reason = stats["fallback"]["l"][0]
    assert reason in ("fused", "fused map scores below the gradient map")
    keeps = []
    for k in (1.0, 4.0):
        h = top_voxels(found.maps["l"][0], k * float(mask.sum()) / mask.numel())
        keeps.append(predicted_probability(net, base + h * (x - base), window, 1, mask))
    kept = betas["keep_fused" if reason == "fused" else "keep_gradient"][0]
    assert kept == pytest.approx(sum(keeps) / 2, abs=TOL)
    assert bool(torch.isfinite(found.maps["l"]).all()) and float(found.maps["l"].max()) == pytest.approx(1.0)


def test_fusioncam_paper_variant_runs_on_whole_inputs_only() -> None:
    net, x = tiny_unet(), volume((24, 16, 16))
    target = SegmentationTarget(1, pixels="image")
    paper = create_method("fusioncam", variant="paper")
    with pytest.raises(WindowError, match="variant='paper' is not computed over sliding windows"):
        sliding_window_cam(net, x, paper, target, {"l": OUTPUT}, SlidingWindow((8, 8, 8)))
    fits = sliding_window_cam(net, x, paper, target, {"l": OUTPUT}, SlidingWindow(None))
    assert fits.stats["windows"] == 1 and not fits.stats["decomposed"]
