"""Per-level outputs: levels/<name>.nii.gz on the input grid, the montage, per-level numbers, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from volume_phantoms import _nifti, affine_from, kits_checkpoint, kits_phantom, rotation, sphere

from medcam.cli import main
from medcam.errors import UserError
from medcam.models.checkpoint import CheckpointMeta, save_checkpoint
from medcam.models.factory import build_model
from medcam.pipeline import explain_case
from medcam.review.montage import Montage, render_montage, slice_positions

SHAPE = (14, 24, 20)
# oblique, anisotropic, and a qform that differs from the sform (which wins, code 2)
SFORM = affine_from(rotation(8, -4, 20), (2.4, 1.1, 0.9), (-30.0, 12.0, 7.5))
QFORM = affine_from(np.eye(3), (2.4, 1.1, 0.9), (0.0, 0.0, 0.0))


def _write(path: Path, data: np.ndarray, sform: np.ndarray = SFORM) -> Path:
    return _nifti(path, data, sform=sform, qform=QFORM, scode=2, qcode=1)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("levels_case")
    reference = np.zeros(SHAPE, np.int16)
    reference[sphere(SHAPE, (7, 14, 8), 3.5)] = 3  # label 3 inside, 0 outside
    reference[0, 0, 0] = 1  # another label, excluded by ":3"
    return {
        "image": _write(d / "ct.nii.gz", kits_phantom(SHAPE, seed=2)),
        "reference": _write(d / "reference.nii.gz", reference),
        "moved": _write(d / "moved.nii.gz", reference, sform=SFORM + np.pad(np.full((3, 1), 5.0), ((0, 1), (3, 0)))),
        "model": kits_checkpoint(d / "kits.pt", patch_size=(16, 16, 16)),
        "dir": d,
    }


@pytest.fixture(scope="module")
def levels_folder(case: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("levels_out") / "review"
    return explain_case(
        case["image"],
        out,
        class_name="kidney",
        model=case["model"],
        layer="levels",
        reference=f"{case['reference']}:3",
        progress=False,
    )


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_level_maps_keep_the_input_geometry(levels_folder: Path, case: dict[str, Path]) -> None:
    source = nib.load(str(case["image"]))
    summary = json.loads((levels_folder / "summary.json").read_text())
    files = summary["outputs"]["levels"]
    assert files == {name: f"levels/{name}.nii.gz" for name in ("enc0", "bottleneck", "final")}
    for name, file in files.items():
        image = nib.load(str(levels_folder / file))
        assert image.shape == source.shape, name
        np.testing.assert_array_equal(image.affine, source.affine)
        np.testing.assert_array_equal(image.header.get_sform(), source.header.get_sform())
        np.testing.assert_array_equal(image.header.get_qform(), source.header.get_qform())
        assert int(image.header["sform_code"]) == 2 and int(image.header["qform_code"]) == 1
        data = _array(levels_folder / file)
        assert data.dtype == np.float32 and np.isfinite(data).all()
        assert data.min() == pytest.approx(0.0) and data.max() == pytest.approx(1.0), name  # min-max on the input grid


def test_per_level_numbers_match_a_hand_computation(levels_folder: Path, case: dict[str, Path]) -> None:
    """energy inside M, pointing game and Dice recomputed with numpy from the written files."""
    summary = json.loads((levels_folder / "summary.json").read_text())
    levels = summary["levels"]
    reference = _array(case["reference"]) == 3
    region = _array(levels_folder / "prediction.nii.gz") == 1  # M = predicted kidney, on the input grid
    assert region.sum() == summary["pixel_set"]["voxels_input_grid"] > 0
    assert levels["order"] == ["enc0", "bottleneck", "final"]
    assert levels["reference"] == {"definition": f"{case['reference']}:3", "voxels": int(reference.sum())}
    for name, scores in levels["scores"].items():
        cam = _array(levels_folder / f"levels/{name}.nii.gz").astype(np.float64)
        hot = cam > 0.1 * cam.max()
        peaks = cam == cam.max()
        assert scores["energy_in_region"] == pytest.approx((cam * region).sum() / cam.sum(), abs=1e-4)
        assert scores["energy_in_reference"] == pytest.approx((cam * reference).sum() / cam.sum(), abs=1e-4)
        assert scores["dice"] == pytest.approx(2 * (hot & reference).sum() / (hot.sum() + reference.sum()), abs=1e-4)
        assert scores["pointing_game"] == float(not (peaks & ~reference).any())
        assert 0.0 <= scores["box_iou"] <= 1.0
    ranking = levels["ranking"]
    dice = {name: s["dice"] for name, s in levels["scores"].items()}
    assert ranking["order"][0] == ranking["recommended"] == max(dice, key=lambda n: (round(dice[n], 3), -ord(n[0])))
    assert [round(dice[n], 3) for n in ranking["order"]] == sorted((round(v, 3) for v in dice.values()), reverse=True)
    assert "Dice of the thresholded map" in ranking["rule"]


def test_the_montage_has_one_row_per_level(levels_folder: Path) -> None:
    summary = json.loads((levels_folder / "summary.json").read_text())
    assert summary["outputs"]["montage"] == "montage.png"
    with Image.open(levels_folder / "montage.png") as picture:
        width, height = picture.size
    # 1.9 in of labels + 5 panels of 2.3 in + 1 in colour bar, by 0.95 + 3 rows x 2.3 + 0.15 in, at 90 dpi
    assert (width, height) == (round((1.9 + 5 * 2.3 + 1.0) * 90), round((0.95 + 3 * 2.3 + 0.15) * 90))


def test_a_reference_on_another_grid_is_rejected_before_the_model_runs(case: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"moved\.nii\.gz has shape .* give a mask on the input's voxel grid"):
        explain_case(
            case["image"],
            tmp_path / "out",
            class_name="kidney",
            model=tmp_path / "no_model_needed_yet.pt",
            layer="levels",
            reference=case["moved"],
        )
    with pytest.raises(UserError, match="has no label 7"):
        label7 = f"{case['reference']}:7"
        explain_case(case["image"], tmp_path / "out", class_name="kidney", model=case["model"], reference=label7)
    assert not (tmp_path / "out").exists()


def test_explain_cli_levels_subset(case: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "subset"
    code = main(
        ["explain", "--volume", str(case["image"]), "--model", str(case["model"]), "--class", "kidney",
         "--levels", "final,enc0", "--montage-scale", "per-level", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"]["choice"] == "levels: final, enc0"
    assert sorted(p.name for p in (out / "levels").iterdir()) == ["enc0.nii.gz", "final.nii.gz"]
    assert summary["levels"]["order"] == ["enc0", "final"]  # montage rows in data-flow order
    assert summary["levels"]["reference"] is None and summary["levels"]["ranking"] is None
    assert set(summary["levels"]["scores"]["enc0"]) == {
        "path", "energy_in_region", "pointing_game", "dice", "energy_in_reference", "box_iou"
    }  # fmt: skip
    assert summary["levels"]["scores"]["enc0"]["dice"] is None  # needs a reference
    with Image.open(out / "montage.png") as picture:
        assert picture.size[1] == round((0.95 + 2 * 2.3 + 0.15) * 90)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--levels", "enc0", "--layer", "model.0"], "give --levels or --layer, not both"),
        (["--levels", ","], "--levels needs level names"),
        (["--levels", "enc9"], "level 'enc9' does not exist"),
        (["--montage-slices", "0"], "montage slices must be between 1 and 20"),
    ],
)
def test_explain_cli_level_mistakes_are_one_line(
    case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = ["explain", "--volume", str(case["image"]), "--model", str(case["model"]), "--class", "kidney"]
    assert main([*args, "--out", str(tmp_path / "x"), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists()


def test_a_reference_is_for_one_image_not_a_batch(
    case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["explain", "--folder", str(case["dir"]), "--model", str(case["model"]), "--class", "kidney"]
    assert main([*args, "--out", str(tmp_path / "b"), "--reference", str(case["reference"])]) == 2
    assert "--reference is one mask for one image" in capsys.readouterr().err


def test_medcam_levels_ranks_and_recommends(
    case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ranked"
    code = main(
        ["levels", "--volume", str(case["image"]), "--model", str(case["model"]), "--class", "kidney",
         "--reference", f"{case['reference']}:3", "--rank-by", "energy_in_reference", "--out", str(out),
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads((out / "summary.json").read_text())
    ranking = summary["levels"]["ranking"]
    assert ranking["by"] == "energy_in_reference"
    energy = {n: s["energy_in_reference"] for n, s in summary["levels"]["scores"].items()}
    ranked = [round(energy[n], 3) for n in ranking["order"]]
    assert ranked == sorted(ranked, reverse=True) and set(ranking["order"]) == set(energy)
    table = lines[1:5]
    assert table[0].split()[:3] == ["rank", "level", "Dice"]
    assert [row.split()[1] for row in table[1:]] == ranking["order"]
    best = ranking["recommended"]
    path = summary["levels"]["scores"][best]["path"]
    assert lines[-2] == f"recommended: {best} ({path}); explain with --levels {best}"
    assert lines[-1] == f"medcam: wrote {out}"
    assert (out / "montage.png").is_file() and (out / f"levels/{best}.nii.gz").is_file()


def test_medcam_levels_needs_a_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["levels", "--volume", "x.nii.gz", "--class", "kidney"]) == 2  # argparse: one line, no exit
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--reference" in lines[0] and "medcam levels --help" in lines[0]


# ------------------------------------------------------------------ montage drawing


def _coloured(picture: np.ndarray) -> int:
    """Pixels of the heat colour map (grey image pixels have R = G = B)."""
    rgb = picture[..., :3].astype(int)
    return int((np.abs(rgb[..., 0] - rgb[..., 2]) > 40).sum())


def test_shared_scale_hides_a_weak_level_and_per_level_shows_it(tmp_path: Path) -> None:
    shape = (20, 20, 12)
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    blob = sphere(shape, (10, 10, 6), 4).astype(np.float32)
    maps = {"strong": blob, "weak": 0.05 * blob}  # the weak level stays below a tenth of the shared range
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    rows = {}
    for scale in ("shared", "per-level"):
        path = render_montage(tmp_path / f"{scale}.png", image, maps, affine, style=Montage(scale, 3))
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        height, width = pixels.shape[:2]
        panels = pixels[:, : int(width * 0.75)]  # leave the colour bars out
        rows[scale] = (_coloured(panels[: height // 2]), _coloured(panels[height // 2 :]))
    assert rows["shared"][0] > 100 and rows["shared"][1] == 0
    assert rows["per-level"][0] > 100 and rows["per-level"][1] > 100


def test_slices_go_through_the_region() -> None:
    region = np.zeros((8, 8, 30), bool)
    region[2:5, 2:5, 10:20] = True
    # the 10th, 30th, ..., 90th percentiles of the region's slices 10..19
    assert slice_positions(30, region, 5) == [11, 13, 14, 16, 18]
    assert slice_positions(30, None, 4) == [6, 12, 17, 23]
    assert slice_positions(3, None, 5) == [0, 1, 2]


def test_two_dimensional_montage_has_one_column(tmp_path: Path) -> None:
    image = np.random.default_rng(0).normal(size=(24, 16)).astype(np.float32)
    maps = {"enc0": np.ones((24, 16), np.float32), "final": np.zeros((24, 16), np.float32)}
    path = render_montage(tmp_path / "m.png", image, maps, np.eye(4), style=Montage("shared", 5))
    with Image.open(path) as picture:
        assert picture.size == (round((1.9 + 2.3 + 1.0) * 90), round((0.95 + 2 * 2.3 + 0.15) * 90))


# ------------------------------------------------------------------ medcam info


def test_info_lists_levels_with_channels_and_resolution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]}
    torch.manual_seed(0)
    model = build_model("monai.BasicUNet", **arguments)
    meta = CheckpointMeta(
        "monai.BasicUNet", arguments, "segmentation", 2, 1, {"background": 0, "tooth": 1}, patch_size=(64, 64)
    )
    path = save_checkpoint(tmp_path / "basic2d.pt", model, meta)
    assert main(["info", "--model", str(path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and " ch " in line]
    # name, channels, grid and scale, measured at the 64 x 64 patch
    assert [(r[0], r[1], r[3], r[5], r[6].strip("()")) for r in rows] == [
        ("enc0", "4", "64", "64", "x1"),
        ("enc1", "4", "32", "32", "1/2"),
        ("enc2", "8", "16", "16", "1/4"),
        ("enc3", "8", "8", "8", "1/8"),
        ("bottleneck", "16", "4", "4", "1/16"),
        ("dec0", "8", "8", "8", "1/8"),
        ("dec1", "8", "16", "16", "1/4"),
        ("dec2", "4", "32", "32", "1/2"),
        ("final", "4", "64", "64", "x1"),
    ]
    assert "U-Net levels (--levels, or --levels NAME,...), measured at input 64 x 64:" in out


def test_medcam_levels_ranks_module_paths_of_any_network(
    case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(
        ["levels", "--volume", str(case["image"]), "--model", str(case["model"]), "--class", "kidney",
         "--reference", f"{case['reference']}:3", "--layer", "model.0,model.1", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sorted(row.split()[1] for row in lines[2:4]) == ["model.0", "model.1"]
    assert lines[-1].startswith("recommended: model.") and "explain with --layer model." in lines[-1]
    assert not any(tmp_path.iterdir())  # no --out: nothing written (not even in the working folder)


def test_crop_keeps_the_target_and_its_surroundings() -> None:
    from medcam.review.montage import _crop_box

    panel = np.zeros((100, 80), bool)
    panel[40:50, 30:34] = True  # 10 rows, 4 columns: both below CROP_MARGIN = 16, so 16 on each side
    other = np.zeros((100, 80), bool)
    other[52, 70] = True  # a second slice widens the box: rows 40-52 (margin 16), columns 30-70 (margin 41)
    assert _crop_box([panel, None]) == (slice(24, 66), slice(14, 50))
    assert _crop_box([panel, other]) == (slice(24, 69), slice(0, 80))
    assert _crop_box([None, np.zeros((4, 4), bool)]) is None


def test_a_bad_threshold_stops_before_the_model_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["levels", "--volume", str(tmp_path / "missing.nii.gz"), "--class", "kidney",
         "--reference", "x.nii.gz", "--threshold", "1.5"]
    )  # fmt: skip
    assert code == 2 and "threshold is a fraction of the map's maximum in [0, 1), got 1.5" in capsys.readouterr().err
