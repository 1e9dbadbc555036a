"""RobustCAM in the explain pipeline: sliding windows, anatomical views, outputs, CLI method options."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 - the name everyone uses
import torch
from monai.networks.nets import UNet
from test_pipeline import back_to, stored_as
from volume_phantoms import affine_from, kits_phantom, rotation, write_kits_like

import medcam
from medcam.cli import main
from medcam.cli.method_options import parse_method_options
from medcam.core.targets import SegmentationTarget
from medcam.errors import UserError
from medcam.methods.base import PostProcessing
from medcam.methods.gradient import HiResCAM
from medcam.methods.registry import create_method
from medcam.methods.robust import RobustCAM
from medcam.methods.robust.views import Flip, Rotation, parse_view
from medcam.methods.robust.windows import WindowViewTarget
from medcam.models.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
from medcam.models.factory import build_model
from medcam.pipeline import explain_case, explain_volume
from medcam.pipeline.windows import SlidingWindow, WindowError, sliding_window_cam

BOTTLENECK = "model.1.submodule"
VIEWS = ["identity", "flip:0", "rotate:10:fill=min", "intensity", "blur:1"]


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(3, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def box(shape: tuple[int, ...], start: tuple[int, ...], stop: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = True
    return mask


POINTWISE = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [1],
    "kernel_size": 1,
    "up_kernel_size": 1,
    "num_res_units": 0,
}


def pointwise_checkpoint(path: Path, patch_size: tuple[int, ...] | None = None) -> Path:
    """A U-Net of 1x1x1 convolutions and instance norms: equivariant to any flip or permutation of voxels."""
    torch.manual_seed(0)
    model = build_model("monai.UNet", **POINTWISE)
    labels = {"background": 0, "kidney": 1, "tumor": 2}
    pre = Preprocessing(a_min=-200.0, a_max=300.0)  # the file's own orientation: the model grid is the file's
    meta = CheckpointMeta(
        "monai.UNet", POINTWISE, "segmentation", 3, 1, labels, patch_size=patch_size, preprocessing=pre
    )
    return save_checkpoint(path, model, meta)


# ---------------------------------------------------------------------------------------
# Sliding-window RobustCAM (library level)


@pytest.mark.parametrize(
    ("fusion", "normalize", "relu"), [("mean", "minmax", True), ("median", "max", True), ("mean", None, False)]
)
def test_one_window_equals_direct_robustcam(fusion: str, normalize: str | None, relu: bool) -> None:
    net = tiny_unet()
    x = torch.randn(1, 1, 12, 14, 10, generator=torch.Generator().manual_seed(1))
    target = SegmentationTarget(1, pixels=box((12, 14, 10), (3, 4, 2), (9, 10, 8)))
    options = {"views": VIEWS, "fusion": fusion, "batch_size": 3}
    direct = medcam.explain(net, x, "robustcam", target, BOTTLENECK, relu=relu, normalize=normalize, **options)
    windowed = sliding_window_cam(
        net,
        x,
        create_method("robustcam", **options),
        target,
        {BOTTLENECK: BOTTLENECK},
        SlidingWindow(None),  # one window: the whole volume
        post=PostProcessing(relu, normalize),
    )
    assert windowed.stats["windows"] == 1
    torch.testing.assert_close(windowed.maps[BOTTLENECK], direct.maps[BOTTLENECK], rtol=1e-5, atol=1e-5)
    for name in ("uncertainty", "valid_views"):
        torch.testing.assert_close(windowed.extras[name][BOTTLENECK], direct.extras[name][BOTTLENECK])
    assert float(direct.extras["uncertainty"][BOTTLENECK].max()) > 0.01  # the views really differ
    ours, theirs = windowed.method_stats["stability"][BOTTLENECK], direct.stats["stability"][BOTTLENECK]
    for key in ("mean_variance", "top_iou", "spearman"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key
    assert ours["top_iou_per_view"][0] == pytest.approx(theirs["top_iou_per_view"][0])
    assert ours["spearman_per_view"][0] == pytest.approx(theirs["spearman_per_view"][0])
    assert windowed.method_stats["views"] == direct.stats["views"]


def test_identity_only_windows_equal_the_exact_sliding_window_hirescam() -> None:
    """One view: each window's map goes back to raw units and the windows add up like HiResCAM's."""
    net = tiny_unet(1)
    x = torch.randn(1, 1, 20, 18, 12, generator=torch.Generator().manual_seed(2))
    target = SegmentationTarget(2, pixels=box((20, 18, 12), (2, 3, 1), (17, 14, 10)))
    window = SlidingWindow((8, 8, 8), overlap=0.25)
    post = PostProcessing(relu=False, normalization="minmax")
    robust = sliding_window_cam(
        net, x, RobustCAM(views=["identity"]), target, {BOTTLENECK: BOTTLENECK}, window, post=post
    )
    hires = sliding_window_cam(net, x, HiResCAM(), target, {BOTTLENECK: BOTTLENECK}, window, post=post)
    assert robust.stats["windows_with_backward"] == hires.stats["windows_with_backward"] > 4
    torch.testing.assert_close(robust.maps[BOTTLENECK], hires.maps[BOTTLENECK], rtol=1e-5, atol=1e-5)
    assert float(robust.extras["uncertainty"][BOTTLENECK].abs().max()) == 0.0
    torch.testing.assert_close(robust.extras["valid_views"][BOTTLENECK], torch.ones(1, 20, 18, 12))


def test_window_target_moves_with_each_view_like_the_pixel_set() -> None:
    weights = torch.zeros(1, 3, 10, 12, 8)
    weights[0, 1, 2:6, 3:9, 1:5] = torch.rand(4, 6, 4, generator=torch.Generator().manual_seed(3)) + 0.1
    mask = weights.abs().sum(dim=1) > 0
    target = WindowViewTarget(
        classes=torch.tensor([1]), activation="softmax", mask=mask, weights=weights, description="w"
    )
    views = [Flip(0), Rotation(20.0, (0, 1)), Rotation(-15.0, (1, 2)), parse_view("blur:1")]
    moved = target.in_views([(0, view) for view in views])
    assert moved.weights is not None and moved.weights.shape == (4, 3, 10, 12, 8)
    for row, view in enumerate(views):
        assert torch.equal(moved.mask[row], view.warp_mask(mask)[0]), view  # the same voxels as M's warp
        assert torch.equal(moved.weights[row, [0, 2]], torch.zeros(2, 10, 12, 8))
    torch.testing.assert_close(moved.weights[0], weights[0].flip(1))
    # nearest neighbour: the moved weights are values of the original, never blends
    assert set(moved.weights[1].unique().tolist()) <= set(weights.unique().tolist())


def test_windows_of_a_view_invariant_model_have_zero_uncertainty_and_constant_counts() -> None:
    """A pointwise net explained over flips: every view's map warps back to the identity's, in every window."""
    net = build_model("monai.UNet", **POINTWISE).eval()
    x = torch.randn(1, 1, 20, 16, 12, generator=torch.Generator().manual_seed(4))
    target = SegmentationTarget(1, pixels=box((20, 16, 12), (1, 2, 1), (18, 14, 10)))
    window = SlidingWindow((8, 8, 8), overlap=0.25)
    flips = RobustCAM(views=["identity", "flip:0", "flip:1", "flip:2"], base="hirescam")
    result = sliding_window_cam(net, x, flips, target, {BOTTLENECK: BOTTLENECK}, window)
    assert result.stats["windows_with_backward"] > 4
    assert float(result.extras["uncertainty"][BOTTLENECK].max()) < 1e-6
    torch.testing.assert_close(result.extras["valid_views"][BOTTLENECK], torch.full((1, 20, 16, 12), 4.0))
    # signed maps (RobustCAM's ReLU comes per view and window, HiResCAM's after stitching)
    signed = PostProcessing(relu=False)
    same = sliding_window_cam(net, x, flips, target, {BOTTLENECK: BOTTLENECK}, window, post=signed)
    hires = sliding_window_cam(net, x, HiResCAM(), target, {BOTTLENECK: BOTTLENECK}, window, post=signed)
    torch.testing.assert_close(same.maps[BOTTLENECK], hires.maps[BOTTLENECK], rtol=1e-5, atol=1e-5)
    stability = result.method_stats["stability"][BOTTLENECK]
    assert stability["spearman"][0] == pytest.approx(1.0) and stability["top_iou"][0] == pytest.approx(1.0)
    # a view the model is not invariant to: positive uncertainty; a rotation: fewer valid views at corners
    varying = RobustCAM(views=["identity", "intensity:0.3,0.3", "rotate:20:fill=min"], base="hirescam")
    other = sliding_window_cam(net, x, varying, target, {BOTTLENECK: BOTTLENECK}, window)
    assert float(other.extras["uncertainty"][BOTTLENECK].max()) > 0.01
    counts = other.extras["valid_views"][BOTTLENECK]
    assert float(counts.max()) == pytest.approx(3.0) and 2.0 <= float(counts.min()) < 3.0
    assert other.method_stats["stability"][BOTTLENECK]["mean_variance"][0] > 0


def test_windows_that_miss_m_are_skipped_and_stay_zero() -> None:
    net = tiny_unet(2)
    x = torch.randn(1, 1, 24, 8, 8, generator=torch.Generator().manual_seed(5))
    target = SegmentationTarget(1, pixels=box((24, 8, 8), (1, 2, 2), (6, 6, 6)))  # in the first window only
    window = SlidingWindow((8, 8, 8), overlap=0.0)
    method = RobustCAM(views=["identity", "flip:1", "rotate:10:1,2"])
    result = sliding_window_cam(net, x, method, target, {BOTTLENECK: BOTTLENECK}, window)
    assert (result.stats["windows"], result.stats["windows_with_backward"]) == (3, 1)
    assert float(result.maps[BOTTLENECK][0, :8].max()) == pytest.approx(1.0)
    assert float(result.maps[BOTTLENECK][0, 8:].abs().max()) == 0.0
    assert float(result.extras["uncertainty"][BOTTLENECK][0, 8:].abs().max()) == 0.0
    # counts of skipped windows come from the views' geometry: 3 inside, 2 where the rotation lost the corners
    counts = result.extras["valid_views"][BOTTLENECK][0, 16:]
    _, valid = Rotation(10.0, (1, 2)).warp_back(torch.zeros(1, 8, 8, 8))
    torch.testing.assert_close(counts, 2.0 + valid[0].float())


def test_multi_window_needs_a_decomposable_base() -> None:
    class WholeOnly(HiResCAM):
        name = "whole-only"
        window_decomposable = False

    net = tiny_unet()
    x = torch.randn(1, 1, 16, 8, 8)
    target = SegmentationTarget(1, pixels="image")
    method = RobustCAM(views=["identity", "flip"], base=WholeOnly())
    with pytest.raises(WindowError, match="base method 'whole-only'"):
        sliding_window_cam(net, x, method, target, {BOTTLENECK: BOTTLENECK}, SlidingWindow((8, 8, 8)))
    one = sliding_window_cam(net, x, method, target, {BOTTLENECK: BOTTLENECK}, SlidingWindow(None))
    assert one.stats["windows"] == 1


# ---------------------------------------------------------------------------------------
# The pipeline: views follow the anatomy, outputs keep the input's geometry


def test_default_views_are_anatomical_in_any_storage_order(tmp_path: Path) -> None:
    """The same volume stored as RAS and as KiTS's IPL: the same anatomical views, the same world maps.

    The model keeps the file's orientation and is equivariant to flips and permutations,
    so only the views can make the two differ; with the IPL file's views taken as if it
    were RAS (flip inferior-superior, rotate in a coronal-like plane) they do.
    """
    ckpt = pointwise_checkpoint(tmp_path / "pointwise.pt")
    data = kits_phantom((10, 14, 12), seed=3).transpose(2, 1, 0)[::-1, ::-1, ::-1].copy()  # (L->R, P->A, I->S)
    affine = np.diag([0.9, 0.8, 2.0, 1.0])
    affine[:3, 3] = (-12.0, 30.0, -8.0)
    results = {}
    for name, codes, options in (("ras", "RAS", {}), ("ipl", "IPL", {}), ("ipl_as_ras", "IPL", {"orientation": "RAS"})):
        stored, stored_affine = stored_as(data, affine, codes)
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(stored, stored_affine), str(path))
        exp = explain_volume(
            path, class_name="kidney", model=ckpt, method="robustcam", pixels="image", layer=BOTTLENECK,
            method_options=options,
        )  # fmt: skip
        arrays = (exp.heatmap, exp.extras["uncertainty"][exp.primary], exp.extras["valid_views"][exp.primary])
        results[name] = ([back_to(a, stored_affine, affine) for a in arrays], exp.summary)
    (ras, ras_summary), (ipl, ipl_summary), (wrong, _) = results["ras"], results["ipl"], results["ipl_as_ras"]
    assert ras_summary["model"]["model_grid_orientation"] == "RAS"
    assert ipl_summary["model"]["model_grid_orientation"] == "IPL"
    assert ras_summary["method"]["stats"]["views"][1:3] == ["flip:0", "rotate:10:fill=min"]
    assert ipl_summary["method"]["stats"]["views"][1:3] == ["flip:2", "rotate:10:1,2:fill=min"]
    assert ipl_summary["method"]["options"]["orientation"] == "IPL"
    assert float(ras[1].max()) > 0.05 and float(ras[2].min()) < 7.0  # rotations lost some corners
    for ours, theirs in zip(ipl, ras, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert float(np.abs(wrong[2] - ras[2]).max()) >= 1.0  # the rotation plane decides which corners are lost
    assert float(np.abs(wrong[1] - ras[1]).max()) > 0.01


@pytest.fixture(scope="module")
def robust_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An oblique CT and a KiTS-like (IPL, sform only) CT, explained with RobustCAM over sliding windows."""
    from volume_phantoms import kits_checkpoint

    folder = tmp_path_factory.mktemp("robust")
    model = kits_checkpoint(folder / "kits.pt")  # RAS + 1.6 x 1.6 x 2.5 mm + HU window, 8^3 windows
    kits = write_kits_like(folder / "imaging.nii.gz", kits_phantom((10, 26, 22), seed=1), spacing=(2.5, 0.8, 0.8))
    oblique = folder / "oblique.nii.gz"
    tilt = affine_from(rotation(10, -5, 25), (0.9, 1.1, 2.5), (-30.0, 12.0, 7.5))
    nib.save(nib.Nifti1Image(kits_phantom((20, 16, 8), seed=2), tilt), str(oblique))
    outputs = {"model": model}
    for name, path in (("kits", kits), ("oblique", oblique)):
        outputs[f"{name}_input"] = path
        outputs[name] = explain_case(
            path, folder / f"out_{name}", class_name="kidney", model=model, method="robustcam", pixels="image",
            method_options={"batch_size": 4},
        )  # fmt: skip
    return outputs


@pytest.mark.parametrize("case", ["kits", "oblique"])
def test_uncertainty_and_counts_have_the_input_geometry_for_nibabel_and_itk(
    case: str, robust_case: dict[str, Path]
) -> None:
    out, source = robust_case[case], robust_case[f"{case}_input"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["extras"] == {"uncertainty": "uncertainty.nii.gz", "valid_views": "valid_views.nii.gz"}
    assert summary["sliding_window"]["windows"] > 1  # the volume is larger than one window
    source_nib, source_itk = nib.load(str(source)), sitk.ReadImage(str(source))
    for name in ("heatmap.nii.gz", "uncertainty.nii.gz", "valid_views.nii.gz"):
        image = nib.load(str(out / name))
        assert image.shape == source_nib.shape, name
        np.testing.assert_array_equal(image.affine, source_nib.affine)
        assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (
            int(source_nib.header["sform_code"]),
            int(source_nib.header["qform_code"]),
        )
        itk = sitk.ReadImage(str(out / name))
        assert itk.GetSize() == source_itk.GetSize()
        np.testing.assert_allclose(itk.GetOrigin(), source_itk.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(itk.GetSpacing(), source_itk.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(itk.GetDirection(), source_itk.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(sitk.GetArrayFromImage(itk).transpose(), np.asarray(image.dataobj), atol=1e-6)
    uncertainty = np.asarray(nib.load(str(out / "uncertainty.nii.gz")).dataobj)
    counts = np.asarray(nib.load(str(out / "valid_views.nii.gz")).dataobj)
    assert np.isfinite(uncertainty).all() and uncertainty.min() >= 0 and uncertainty.max() > 0.01
    assert counts.min() >= 1.0 and counts.max() <= 7.0 + 1e-4 and counts.max() > 6.9


def test_review_folder_shows_the_uncertainty(robust_case: dict[str, Path]) -> None:
    out = robust_case["kits"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["preview_uncertainty"] == "preview_uncertainty.png"
    assert "colormap_GnBu.ctbl" in summary["outputs"]["colour_tables"]
    scene = (out / "scene.mrml").read_text()
    volume = scene.split('name="uncertainty"')[0].rsplit("<VolumeDisplay", 1)[1]
    assert 'applyThreshold="1"' in volume and 'lowerThreshold="0.05"' in volume and 'window="0.5"' in volume
    colour_node = volume.split('colorNodeID="')[1].split('"')[0]
    assert f'id="{colour_node}" name="medcam GnBu"' in scene
    script = (out / "load_in_slicer.py").read_text()
    assert "show('uncertainty')" in script
    # readable stability in summary.json: one number per metric and one row per view
    stats = summary["method"]["stats"]
    layer = summary["layers"]["primary"]
    stability = stats["stability"][layer]
    assert isinstance(stability["mean_variance"], float) and stability["mean_variance"] > 0
    assert 0 < stability["top_iou"] <= 1 and -1 <= stability["spearman"] <= 1
    assert [row["view"] for row in stability["per_view"]] == stats["views"]
    assert stats["views"][1:3] == ["flip:0", "rotate:10:fill=min"]  # the model grid is RAS
    assert stats["base"] == "hirescam" and summary["method"]["options"]["batch_size"] == 4


# ---------------------------------------------------------------------------------------
# The command line: --method-option


def test_method_options_parse_json_or_text() -> None:
    parsed = parse_method_options(
        ['views=["identity", "flip:0"]', "fusion=median", "batch_size=2", "stability=false", "seed=-3",
         "base_options={}", "top_fraction=0.2", "base=gradcam", "orientation=null"]
    )  # fmt: skip
    assert parsed == {
        "views": ["identity", "flip:0"],
        "fusion": "median",
        "batch_size": 2,
        "stability": False,
        "seed": -3,
        "base_options": {},
        "top_fraction": 0.2,
        "base": "gradcam",
        "orientation": None,
    }
    for bad, message in (("fusion", "is not KEY=VALUE"), ("=3", "is not KEY=VALUE"), ("a b=1", "is not KEY=VALUE")):
        with pytest.raises(UserError, match=message):
            parse_method_options([bad])
    with pytest.raises(UserError, match="given twice"):
        parse_method_options(["seed=1", "seed=2"])


def test_cli_robustcam_with_method_options(
    tmp_path: Path, robust_case: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = main(
        ["explain", "--volume", str(robust_case["kits_input"]), "--model", str(robust_case["model"]),
         "--class", "kidney", "--pixels", "image", "--method", "robustcam",
         "--method-option", 'views=["identity","flip:0","rotate:10"]', "--method-option", "fusion=median",
         "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"]["options"]["views"] == ["identity", "flip:0", "rotate:10"]
    assert summary["method"]["options"]["fusion"] == "median"
    assert summary["method"]["stats"]["fusion"] == "median"
    assert [r["view"] for r in summary["method"]["stats"]["stability"][summary["layers"]["primary"]]["per_view"]] == [
        "identity",
        "flip:0",
        "rotate:10",
    ]
    counts = np.asarray(nib.load(str(out / "valid_views.nii.gz")).dataobj)
    assert counts.max() <= 3.0 + 1e-4


BAD_OPTIONS = [
    (["--method-option", "fusoin=median"], "has no option(s) ['fusoin'] (valid options: base, views, fusion"),
    (["--method-option", "fusion=mode"], "fusion='mode' is not known"),
    (["--method-option", "batch_size=two"], "batch_size must be a positive integer"),
    (["--method-option", "views=[1, 2]"], "views must be 'default' or a list of view strings"),
    (["--method-option", 'views=["spin:3"]'], "view 'spin:3' is not known"),
    (["--method-option", "fusion"], "is not KEY=VALUE"),
    (["--method", "hirescam", "--method-option", "fusion=mean"], "method 'hirescam' has no option(s) ['fusion']"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_OPTIONS, ids=[a[-1].split("=")[0] + str(i) for i, (a, _) in enumerate(BAD_OPTIONS)]
)
def test_bad_method_options_are_one_line_exit_2_and_nothing_written(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "explain",
        "--volume",
        str(tmp_path / "never_read.nii.gz"),
        "--class",
        "kidney",
        "--out",
        str(tmp_path / "o"),
    ]
    if "--method" not in args:
        argv += ["--method", "robustcam"]
    code = main([*argv, *args, "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("medcam: error: ")
    assert message in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_unknown_option_is_a_type_error_for_python_callers() -> None:
    with pytest.raises(TypeError, match="has no option"):
        create_method("robustcam", fusoin="median")


def test_2d_classifier_flips_horizontally_and_gets_the_uncertainty_outputs(tmp_path: Path) -> None:
    from PIL import Image

    pixels = (np.random.default_rng(0).random((40, 56)) * 255).astype(np.uint8)  # (H, W)
    Image.fromarray(pixels).save(tmp_path / "xray.png")
    torch.manual_seed(0)
    model = build_model("torchvision.resnet18", num_classes=2, pretrained=False)
    pre = Preprocessing(size=(48, 48), a_min=0.0, a_max=255.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    meta = CheckpointMeta("torchvision.resnet18", {"num_classes": 2}, "classification", 2, 3, {"no": 0, "yes": 1})
    save_checkpoint(tmp_path / "cls.pt", model, replace(meta, preprocessing=pre))
    out = explain_case(
        tmp_path / "xray.png", tmp_path / "out", class_name="yes", model=tmp_path / "cls.pt", method="robustcam"
    )
    summary = json.loads((out / "summary.json").read_text())
    # the network sees a PNG as (row, column): its horizontal axis is 1, and the default flip follows it
    assert summary["model"]["model_grid_orientation"] == "PL"
    assert summary["method"]["stats"]["views"][:3] == ["identity", "flip:1", "rotate:15"]
    stability = summary["method"]["stats"]["stability"]["layer4"]
    assert [row["view"] for row in stability["per_view"]][1] == "flip:1" and isinstance(stability["top_iou"], float)
    for name in ("heatmap.nii.gz", "uncertainty.nii.gz", "valid_views.nii.gz"):
        assert nib.load(str(out / name)).shape == (56, 40), name  # (W, H) of the PNG, not the 48 x 48 grid
    assert (out / "preview_uncertainty.png").is_file()


def test_sample_stats_reads_one_sample() -> None:
    net = tiny_unet(3)
    x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(6))
    exp = medcam.explain(
        net, x, "robustcam", SegmentationTarget(1, pixels="image"), BOTTLENECK, views=["identity", "flip:1", "blur:1"]
    )
    stats = exp.stats["stability"][BOTTLENECK]
    for sample in (0, 1):
        readable = RobustCAM.sample_stats(exp.stats, sample)["stability"][BOTTLENECK]
        assert readable["top_iou"] == pytest.approx(stats["top_iou"][sample], rel=1e-5)
        assert readable["mean_variance"] == pytest.approx(stats["mean_variance"][sample], rel=1e-5)
        assert [row["spearman"] for row in readable["per_view"]] == pytest.approx(
            stats["spearman_per_view"][sample], rel=1e-5
        )
    json.dumps(RobustCAM.sample_stats(exp.stats))  # plain JSON
