"""The prediction stitched from the CAM pass's own windows equals the separate prediction pass.

For a score linear in the output and an M that does not depend on the prediction (image,
box, mask), the sliding-window CAM takes the prediction from its own window outputs and
skips the separate pass (docs/explain.md, "Sliding-window CAM"). Compared here against
today's path, a separate MONAI ``sliding_window_inference`` pass followed by the CAM:
labels equal, logits within 1e-5 of their largest magnitude, maps within 1e-5 of their
maximum; and the shortcut is not taken where it would not be exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from torch import Tensor, nn
from volume_phantoms import kits_checkpoint, write_kits_case

from medcam.core.precision import native_bf16
from medcam.core.targets import BoundTarget, SegmentationTarget, TargetError, parse_pixel_set
from medcam.core.windows import WeightedLogits
from medcam.methods.base import PostProcessing
from medcam.methods.registry import create_method
from medcam.pipeline import volume as pipeline_volume
from medcam.pipeline.window_prediction import FROM_CAM_WINDOWS, SEPARATE_PASS, own_prediction
from medcam.pipeline.windows import SlidingWindow, predict, sliding_window_cam

SHAPE = (20, 18, 12)  # 3 x 3 x 2 windows of 8^3 at overlap 0.25
LAYERS = {"bottleneck": "model.1.submodule", "output": "model.2"}
RAW = PostProcessing(relu=False, normalization=None)


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def volume(samples: int = 1) -> Tensor:
    torch.manual_seed(1)
    return torch.randn(samples, 1, *SHAPE)


def box_mask() -> Tensor:
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[2:7, 3:9, 1:4] = True  # a corner: some windows miss it
    return mask


PIXELS = {"image": "image", "box": "box:2,3,1:7,9,4", "mask": box_mask()}


def counted(net: nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """Rows (windows) of every forward pass of ``net``."""
    rows: list[int] = []
    return rows, net.register_forward_pre_hook(lambda _m, args: rows.append(int(args[0].shape[0])))


def assert_same(new: Tensor, old: Tensor) -> None:
    """Equal within 1e-5 of the largest magnitude."""
    torch.testing.assert_close(new, old, rtol=0, atol=1e-5 * float(old.abs().max()))


def test_targets_say_whether_their_score_is_linear_and_their_m_given() -> None:
    output = torch.randn(1, 3, 4, 4)
    one, region = SegmentationTarget(1, pixels="image"), SegmentationTarget((1, 2), pixels="image")
    assert one.linear and not region.linear
    assert one.bind(output).linear and not region.bind(output).linear
    weighted = WeightedLogits(torch.tensor([1]), "softmax", torch.ones(1, 4, 4, dtype=torch.bool), weights=output)
    assert weighted.linear

    class Squared(BoundTarget):  # a score of its own: not assumed linear
        def score(self, output: Tensor) -> Tensor:
            return super().score(output) ** 2

    assert not Squared(torch.tensor([1]), "softmax", torch.ones(1, 4, 4, dtype=torch.bool)).linear
    given = {"image": True, "box:0,0:2,2": True, "voxel:1,1": True, "predicted": False, "prob>0.5": False}
    given["component"] = False
    for spec, expected in given.items():
        assert parse_pixel_set(spec).given is expected, spec
        assert own_prediction(SegmentationTarget(1, pixels=spec)) is expected, spec
    assert parse_pixel_set(torch.ones(4, 4, dtype=torch.bool)).given
    assert not own_prediction(region) and own_prediction(one.bind(output)) and not own_prediction(region.bind(output))
    # bound on the grid alone: the same target bind gives on any output of that shape
    on_grid = one.bind_on_grid(1, (4, 4), "cpu")
    assert torch.equal(on_grid.mask, one.bind(output).mask) and torch.equal(on_grid.classes, torch.tensor([1]))


@pytest.mark.parametrize("pixels", list(PIXELS))
@pytest.mark.parametrize(("method", "samples", "batch"), [("hirescam", 1, 2), ("gradcam++", 2, 1)])
def test_prediction_from_cam_windows_equals_the_separate_pass(pixels: str, method: str, samples: int, batch: int):
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume(samples)
    window = SlidingWindow((8, 8, 8), overlap=0.25, mode="gaussian", batch_size=batch)
    target = SegmentationTarget(1, pixels=PIXELS[pixels])
    windows = len(window.layout(SHAPE).slices) * samples
    # today's path: the separate prediction pass, M bound on it, then the CAM
    rows, hook = counted(net)
    try:
        prediction = predict(net, x, window)
        old = sliding_window_cam(
            net, x, create_method(method), target.bind(prediction), LAYERS, window, post=RAW, prediction=prediction
        )
        separate = sum(rows)
        rows.clear()
        new = sliding_window_cam(net, x, create_method(method), target, LAYERS, window, post=RAW)
        shortcut = sum(rows)
    finally:
        hook.remove()
    assert old.stats["prediction"] == SEPARATE_PASS and new.stats["prediction"] == FROM_CAM_WINDOWS
    meeting = new.stats["windows_with_backward"]
    assert new.stats["windows_forward_only"] == windows - meeting
    assert separate == windows + meeting
    # every window runs once; when every window meets M, one more tells the output's channels
    assert shortcut == windows + (meeting == windows)
    assert (meeting == windows) is (pixels == "image")
    assert torch.equal(new.output.argmax(1), old.output.argmax(1))
    assert_same(new.output, old.output)
    assert torch.equal(new.target.mask, old.target.mask)
    for alias in LAYERS:
        assert_same(new.maps[alias], old.maps[alias])
    assert new.prediction_seconds > 0


@pytest.mark.parametrize(
    ("target", "method"),
    [
        (SegmentationTarget(1, pixels="predicted"), "hirescam"),  # M is found on the prediction
        (SegmentationTarget(1, pixels="prob>0.3"), "hirescam"),
        (SegmentationTarget((1, 2), pixels="image"), "hirescam"),  # a region's logsumexp: df/dY depends on Y
        (SegmentationTarget(1, pixels="box:2,3,1:7,9,4"), "scorecam"),  # a region method's own passes
    ],
)
def test_the_shortcut_falls_back_to_a_separate_pass(target: SegmentationTarget, method: str) -> None:
    torch.set_num_threads(1)
    net, x = tiny_unet(), volume()
    window = SlidingWindow((8, 8, 8), overlap=0.25)
    # soft masks: the windowed computation (the segmentation default, binary masks, needs one window)
    options = {"max_channels": 2, "batch_size": 8, "mask": "soft"} if method == "scorecam" else {}
    result = sliding_window_cam(net, x, create_method(method, **options), target, {"b": LAYERS["bottleneck"]}, window)
    assert result.stats["prediction"] == SEPARATE_PASS
    assert "windows_forward_only" not in result.stats
    assert torch.equal(result.output, predict(net, x, window))


def test_a_class_the_output_lacks_is_one_line_with_a_given_m() -> None:
    net, x = tiny_unet(), volume()
    with pytest.raises(TargetError, match="class index 5 is out of range for a model with 3 output channels"):
        sliding_window_cam(
            net, x, create_method("hirescam"), SegmentationTarget(5, pixels="image"), LAYERS, SlidingWindow((8, 8, 8))
        )


@pytest.mark.parametrize("pixels", ["image", "box:2,3,1:7,9,4"])
def test_a_non_finite_output_is_refused_as_the_separate_pass_refuses_it(pixels: str) -> None:
    net, x = tiny_unet(), volume()
    x[0, 0, 15, 15, 10] = float("nan")  # a window M may miss: its forward-only pass sees it
    with pytest.raises(TargetError, match="the model output contains NaN or Inf values"):
        SegmentationTarget(1, pixels=pixels).bind(predict(net, x, SlidingWindow((8, 8, 8))))
    with pytest.raises(TargetError, match="the model output contains NaN or Inf values"):
        sliding_window_cam(
            net, x, create_method("hirescam"), SegmentationTarget(1, pixels=pixels), LAYERS, SlidingWindow((8, 8, 8))
        )


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kits")
    return write_kits_case(folder / "case_00000"), kits_checkpoint(folder / "kits_tiny.pt")


@pytest.mark.parametrize(
    ("precision", "method", "pixels"),
    [
        ("fp32", "hirescam", "image"),
        ("fp32", "robustcam", "image"),
        ("bf16", "hirescam", "box:2,4,4:6,20,14"),
        ("auto", "hirescam", "image"),
    ],
)
def test_medcam_explain_takes_the_prediction_from_the_cam_windows(
    kits: tuple[Path, Path], precision: str, method: str, pixels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    case, model = kits
    settings = {"class_name": "kidney", "model": model, "pixels": pixels, "precision": precision, "method": method}
    new = pipeline_volume.explain_volume(case, **settings)  # type: ignore[arg-type]
    with monkeypatch.context() as patch:
        patch.setattr(pipeline_volume, "own_prediction", lambda _target: False)  # today's path
        old = pipeline_volume.explain_volume(case, **settings)  # type: ignore[arg-type]
    window = new.summary["sliding_window"]
    assert window["windows"] > 1
    # with --precision auto on native bfloat16 the prediction runs in bf16, the CAM in fp32: not one pass
    two_precisions = precision == "auto" and native_bf16(torch.device("cpu"))
    assert window["prediction"] == (SEPARATE_PASS if two_precisions else FROM_CAM_WINDOWS)
    assert old.summary["sliding_window"]["prediction"] == SEPARATE_PASS
    assert new.summary["precision"] == old.summary["precision"]
    assert "predict" in new.summary["timings_s"]
    assert new.prediction is not None and old.prediction is not None
    assert np.array_equal(new.prediction, old.prediction)
    for alias, values in old.maps.items():
        np.testing.assert_allclose(new.maps[alias], values, rtol=0, atol=1e-5 * float(np.abs(values).max()))
