"""``medcam explain`` on nnU-Net v2 trained-model folders: nnU-Net's preprocessing, tiles and export.

The written prediction is compared with nnU-Net's own predictor (``nnUNetPredictor``,
same folds, mirroring off as medcam) on the same file; nnU-Net stitches logits in
float16, medcam in float32, so a few near-tie voxels may differ (tolerance 0.1 %).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from nnunet_folders import REGION_LABELS, REGION_ORDER, nnunet_prediction, write_case, write_results

from medcam.cli import main
from medcam.models.nnunet import load_nnunet
from medcam.volumes.io import load_volume
from medcam.volumes.nnunet_grid import prepare_nnunet

AGREEMENT = 0.999


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds, transpose_forward (2, 0, 1) and a target spacing other than the image's (resampling)."""
    return write_results(tmp_path_factory.mktemp("results"), transpose=(2, 0, 1), spacing=(2.0, 1.0, 1.5))


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(tmp_path_factory.mktemp("images"))


def _explain(*args: str) -> int:
    return main(["explain", *args, "--no-progress"])


def test_prediction_equals_nnunets_and_maps_are_on_the_input_grid(tmp_path: Path, model: Path, case: Path) -> None:
    out = tmp_path / "review"
    args = ["--volume", str(case), "--model", str(model.parent), "--class", "tumor", "--out", str(out)]
    assert _explain(*args, "--disable-tta") == 0
    ours = np.asarray(nib.load(out / "prediction.nii.gz").dataobj)
    theirs = nnunet_prediction(model, case, tmp_path / "nnunet", folds=(0, 1), mirroring=False)
    assert ours.shape == theirs.shape
    agreement = float((ours == theirs).mean())
    assert agreement >= AGREEMENT, agreement
    assert len(np.unique(theirs)) > 1  # the check is not between two empty label maps

    source, heatmap = nib.load(case), nib.load(out / "heatmap.nii.gz")
    assert heatmap.shape == source.shape
    np.testing.assert_allclose(heatmap.affine, source.affine, atol=1e-5)
    import SimpleITK as sitk  # noqa: N813

    a, b = sitk.ReadImage(str(case)), sitk.ReadImage(str(out / "heatmap.nii.gz"))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    values = np.asarray(heatmap.dataobj)
    assert np.isfinite(values).all() and values.max() == pytest.approx(1.0)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["architecture"] == "nnunet:PlainConvUNet"
    assert summary["sliding_window"]["overlap"] == 0.5  # nnU-Net's tile step
    assert summary["sliding_window"]["copies_summed"] == 2
    # auto = the last decoder level (docs/levels.md)
    assert summary["layers"]["explained"] == {"folds.0.decoder.stages.0": "folds.0.decoder.stages.0"}


def test_region_based_model_with_mirroring(tmp_path: Path, case: Path) -> None:
    """nnU-Net's default test-time mirroring: the prediction equals nnU-Net's with mirroring."""
    model = write_results(
        tmp_path / "results", labels=REGION_LABELS, order=REGION_ORDER, folds=(0,), deep_supervision=False
    )
    out = tmp_path / "review"
    code = _explain("--volume", str(case), "--model", str(model), "--class", "masses", "--out", str(out))
    assert code == 0
    ours = np.asarray(nib.load(out / "prediction.nii.gz").dataobj)
    theirs = nnunet_prediction(model, case, tmp_path / "nnunet", folds=(0,), mirroring=True)
    assert float((ours == theirs).mean()) >= AGREEMENT
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["activation"] == "sigmoid"
    assert summary["sliding_window"]["copies_summed"] == 8
    assert summary["layers"]["explained"] == {"mirrors.0.decoder.stages.0": "mirrors.0.decoder.stages.0"}
    assert set(summary["prediction"]["voxels_per_label"]) <= {"none", "kidney", "masses", "tumor"}


def test_grid_coordinates_round_trip(model: Path, case: Path) -> None:
    bundle = load_nnunet(model, folds="0")
    volume = load_volume(case)
    grid = prepare_nnunet(volume, bundle.source)
    assert grid.image.shape[1] == 1 and grid.grid == tuple(grid.image.shape[2:])
    # model-grid coordinates sent back through nnU-Net's export equal the affine's mapping of input voxels
    inside = (15, 12, 10)
    for axis in range(3):
        shape = [-1 if a == axis else 1 for a in range(3)]
        ramp = torch.arange(grid.grid[axis], dtype=torch.float32).reshape(shape).expand(grid.grid)[None]
        back = grid.to_source(ramp)[0]
        assert back.shape == volume.spatial_shape
        assert back[inside] == pytest.approx(grid._model_index(inside)[axis], abs=1e-3)
    spot = torch.zeros((1, *grid.grid))
    spot[(0, *grid.voxel_to_model(inside))] = 1.0
    back = grid.to_source(spot)[0]
    assert np.unravel_index(int(back.argmax()), back.shape) == inside
    # a mask moved to the model grid and back covers the same voxels (up to the resampling at its border)
    mask = np.zeros(volume.spatial_shape, bool)
    mask[8:20, 6:18, 6:16] = True
    moved = grid.mask_to_model(mask)
    again = grid.to_source(moved.float()[None], mode="nearest")[0] > 0.5
    assert (again == mask).mean() > 0.97
    lo, hi = grid.box_to_model((8, 6, 6), (20, 18, 16))
    in_box = torch.zeros_like(moved)
    in_box[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    assert bool(moved.any()) and not bool((moved & ~in_box).any())  # the box covers the moved mask


def test_two_channel_case_and_its_errors(tmp_path: Path) -> None:
    model = write_results(tmp_path / "results", folds=(0,), channels=2)
    case = write_case(tmp_path / "images", channels=2)
    out = tmp_path / "review"
    args = ["--volume", str(case), "--model", str(model), "--class", "kidney", "--disable-tta"]
    assert _explain(*args, "--out", str(out)) == 0
    ours = np.asarray(nib.load(out / "prediction.nii.gz").dataobj)
    theirs = nnunet_prediction(model, case, tmp_path / "nnunet", folds=(0,), mirroring=False)
    assert float((ours == theirs).mean()) >= AGREEMENT
    (case.parent / "case_0001.nii.gz").unlink()
    assert _explain(*args, "--out", str(out / "x")) == 2
    assert not (out / "x").exists()


def test_cli_refusals_exit_2(tmp_path: Path, model: Path, case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--volume", str(case), "--class", "tumor", "--out", str(tmp_path / "o")]
    assert _explain(*base, "--model", str(model), "--folds", "7") == 2
    assert "no fold_7/checkpoint_final.pth" in capsys.readouterr().err
    assert _explain(*base, "--model", str(model), "--checkpoint", "best") == 2
    assert "no fold_K/checkpoint_best.pth" in capsys.readouterr().err
    assert _explain(*base, "--model", str(model), "--class", "liver") == 2
    assert not (tmp_path / "o").exists()


def test_info_lists_classes_folds_configuration_levels(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(model), "--folds", "1"]) == 0
    text = capsys.readouterr().out
    assert "classes (--class NAME): background (0), kidney (1), tumor (2)" in text
    assert "nnU-Net: configuration 3d_fullres, folds 1 (checkpoint_final.pth)" in text
    assert "test-time mirroring: axes [0, 1, 2]" in text
    assert "bottleneck     8 ch  4 x 4 x 4    (1/4, 8 x 4 x 6 mm)" in text  # spacing (2, 1, 1.5) x 4
    assert "bottleneck     8 ch  4 x 4 x 4" in text and "encoder.stages.2" in text


def test_fold_cam_sums_every_folds_copy_of_the_layer(model: Path) -> None:
    """Two folds: the map of the fold-mean logit is fold 0's plus fold 1's (gradient methods, before ReLU)."""
    from medcam.core.targets import SegmentationTarget
    from medcam.methods.base import PostProcessing
    from medcam.methods.registry import create_method
    from medcam.pipeline.nnunet import NNUNetWindow, fold_cam, predict_nnunet
    from medcam.pipeline.windows import sliding_window_cam

    bundle = load_nnunet(model, mirroring=False)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 20, 18, 16)
    window = NNUNetWindow((16, 16, 16))
    prediction = predict_nnunet(bundle.model, x, window)
    bound = SegmentationTarget(2, pixels="image").bind(prediction)
    cam = create_method("hirescam")
    raw = PostProcessing(relu=False, normalization=None)
    layer = "encoder.stages.1"
    both = fold_cam(bundle.model, x, cam, bound, {"l": f"folds.0.{layer}"}, window, post=raw, prediction=prediction)
    per_fold = [
        sliding_window_cam(
            bundle.model, x, cam, bound, {"l": f"folds.{k}.{layer}"}, window, post=raw, prediction=prediction
        )
        for k in (0, 1)
    ]
    assert both.stats["copies_summed"] == 2 and both.stats["windows"] == 4
    torch.testing.assert_close(both.maps["l"], per_fold[0].maps["l"] + per_fold[1].maps["l"])
    assert not torch.allclose(both.maps["l"], per_fold[0].maps["l"])


def test_folder_of_multichannel_cases_lists_each_case_once(tmp_path: Path) -> None:
    from medcam.pipeline import cases_from_folder

    write_case(tmp_path, "a", channels=2)
    write_case(tmp_path, "b", channels=1)
    (tmp_path / "scan_0001.nii.gz").write_bytes((tmp_path / "b_0000.nii.gz").read_bytes())  # no _0000 sibling
    cases = cases_from_folder(tmp_path)
    assert [(c.id, c.image.name) for c in cases] == [
        ("a", "a_0000.nii.gz"),
        ("b", "b_0000.nii.gz"),
        ("scan_0001", "scan_0001.nii.gz"),
    ]


def test_mirrored_ensemble_map_is_flip_equivariant(model: Path) -> None:
    """nnU-Net's mirror ensemble averages over every flip, so its score, and the map of all copies summed,
    turn with the input: map(flip(x)) = flip(map(x)). One copy alone does not."""
    from medcam.core.targets import SegmentationTarget
    from medcam.methods.base import PostProcessing
    from medcam.methods.registry import create_method
    from medcam.pipeline.nnunet import NNUNetWindow, fold_cam, predict_nnunet
    from medcam.pipeline.windows import sliding_window_cam

    network = load_nnunet(model, folds="0").model
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16)
    window, cam, raw = NNUNetWindow((16, 16, 16)), create_method("hirescam"), PostProcessing(False, None)
    layer = {"l": "mirrors.0.encoder.stages.1"}

    def maps(volume: torch.Tensor, summed: bool) -> torch.Tensor:
        prediction = predict_nnunet(network, volume, window)
        bound = SegmentationTarget(2, pixels="image").bind(prediction)
        run = fold_cam if summed else sliding_window_cam
        return run(network, volume, cam, bound, layer, window, post=raw, prediction=prediction).maps["l"]

    flipped = torch.flip(x, (2, 4))
    torch.testing.assert_close(torch.flip(maps(flipped, True), (1, 3)), maps(x, True), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(torch.flip(maps(flipped, False), (1, 3)), maps(x, False), atol=1e-3)


def test_levels_command_on_an_nnunet_folder(tmp_path: Path, model: Path, case: Path) -> None:
    reference = tmp_path / "reference.nii.gz"
    truth = np.zeros((30, 26, 22), np.uint8)
    truth[10:20, 8:18, 8:16] = 1
    nib.save(nib.Nifti1Image(truth, nib.load(case).affine), reference)
    args = ["--volume", str(case), "--reference", str(reference), "--model", str(model), "--folds", "0"]
    assert (
        main(["levels", *args, "--disable-tta", "--class", "tumor", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    )
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert set(summary["layers"]["explained"]) == {"enc0", "enc1", "bottleneck", "dec0", "final"}


def test_reader_axis_order_is_checked(model: Path, case: Path) -> None:
    """nnU-Net's reader array must be medcam's with the axes reversed; otherwise nothing is mapped back."""
    from dataclasses import replace

    from medcam.errors import UserError

    volume = load_volume(case)
    source = load_nnunet(model, folds="0", mirroring=False).source
    swapped = replace(volume, array=np.ascontiguousarray(volume.array[:, ::-1]))  # same shape, other order
    with pytest.raises(UserError, match=r"read case_0000\.nii\.gz in different axis orders"):
        prepare_nnunet(swapped, source)


def test_2d_configuration_runs_slice_by_slice(tmp_path: Path, case: Path) -> None:
    """A "2d" model of 3D data: nnU-Net predicts every slice; medcam runs the same network with depth-1 kernels."""
    model = write_results(tmp_path / "results", folds=(0,), configuration="2d", patch=(16, 16), spacing=(2.0, 1.5, 1.5))
    bundle = load_nnunet(model)
    assert bundle.meta.patch_size == (1, 16, 16) and bundle.source is not None
    out = tmp_path / "review"
    args = ["--volume", str(case), "--model", str(model), "--class", "tumor", "--layer", "mirrors.0.encoder.stages.1"]
    assert _explain(*args, "--out", str(out)) == 0
    ours = np.asarray(nib.load(out / "prediction.nii.gz").dataobj)
    theirs = nnunet_prediction(model, case, tmp_path / "nnunet", folds=(0,), mirroring=True)
    assert float((ours == theirs).mean()) >= AGREEMENT and len(np.unique(theirs)) > 1
    heatmap = nib.load(out / "heatmap.nii.gz")
    assert heatmap.shape == nib.load(case).shape
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sliding_window"]["copies_summed"] == 4  # mirroring over the two in-plane axes
    assert summary["sliding_window"]["roi_size"] == [1, 16, 16]
