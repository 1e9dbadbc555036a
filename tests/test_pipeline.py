"""The explain pipeline: maps back on the ORIGINAL grid, input-index pixel sets, classes, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nets import InputMapMethod
from volume_phantoms import (
    KITS_LABELS,
    KITS_PREPROCESSING,
    kits_checkpoint,
    kits_phantom,
    ramp,
    tiny_unet_checkpoint,
    write_kits_like,
)

import medcam
from medcam.core.ops import finalize
from medcam.core.targets import SegmentationTarget, TargetError
from medcam.errors import UserError
from medcam.models.checkpoint import CheckpointMeta, Preprocessing, load_checkpoint
from medcam.pipeline import explain_case, explain_volume, resolve_class

ORIENTATIONS = ("RAS", "LPS", "IPL", "ASL")


def stored_as(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same world content stored with index axes along ``codes`` (a permutation and flips)."""
    start = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(codes))
    stored = nib.orientations.apply_orientation(data, transform)
    return stored, affine @ nib.orientations.inv_ornt_aff(transform, data.shape)


def back_to(data: np.ndarray, affine: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Reorder ``data`` (grid ``affine``) onto the index order of the ``reference`` affine."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(reference)
    )
    return nib.orientations.apply_orientation(data, transform)


@pytest.fixture(scope="module")
def ras_volume() -> tuple[np.ndarray, np.ndarray]:
    data = kits_phantom((14, 12, 10), seed=3).transpose(2, 1, 0)[::-1, ::-1, ::-1].copy()  # (L->R, P->A, I->S)
    affine = np.diag([0.9, 0.8, 2.0, 1.0])
    affine[:3, 3] = (-12.0, 30.0, -8.0)
    return data, affine


def test_same_world_content_in_any_storage_order_gives_the_same_world_maps(
    tmp_path: Path, ras_volume: tuple[np.ndarray, np.ndarray], kits_model: Path
) -> None:
    """Orientation + spacing are inverted exactly: a flipped or transposed file gets the flipped map."""
    data, affine = ras_volume
    results = {}
    for codes in ORIENTATIONS:
        stored, stored_affine = stored_as(data, affine, codes)
        path = tmp_path / f"{codes}.nii.gz"
        nib.save(nib.Nifti1Image(stored, stored_affine), str(path))
        exp = explain_volume(path, class_name="kidney", model=kits_model, pixels="image")
        assert exp.heatmap.shape == stored.shape
        results[codes] = (
            back_to(exp.heatmap, stored_affine, affine),
            back_to(exp.prediction, stored_affine, affine),
        )
    reference_map, reference_labels = results["RAS"]
    assert reference_map.max() == pytest.approx(1.0) and reference_map.min() == pytest.approx(0.0)
    assert len(np.unique(reference_labels)) > 1
    for codes in ORIENTATIONS[1:]:
        np.testing.assert_allclose(results[codes][0], reference_map, atol=1e-5, err_msg=codes)
        np.testing.assert_array_equal(results[codes][1], reference_labels, err_msg=codes)


def test_identity_preprocessing_equals_explain_on_the_raw_array(tmp_path: Path) -> None:
    """No hidden transposition: heatmap.nii.gz (read by nibabel) is medcam.explain on the file's array."""
    data = kits_phantom((16, 16, 8), seed=5)
    path = write_kits_like(tmp_path / "img.nii.gz", data)
    ckpt = tiny_unet_checkpoint(tmp_path / "m.pt", patch_size=None, preprocessing=Preprocessing())
    out = explain_case(path, tmp_path / "out", class_name="tumor", model=ckpt, pixels="image")
    written = np.asarray(nib.load(str(out / "heatmap.nii.gz")).dataobj)
    model = load_checkpoint(ckpt).model
    x = torch.from_numpy(data)[None, None]
    raw = medcam.explain(
        model, x, "hirescam", SegmentationTarget(2, pixels="image"), "auto", relu=False, normalize=None
    )
    expected = finalize(raw.map, data.shape, relu=True, normalization="minmax")[0].numpy()
    np.testing.assert_allclose(written, expected, atol=1e-5)
    labels = np.asarray(nib.load(str(out / "prediction.nii.gz")).dataobj)
    np.testing.assert_array_equal(labels, raw.output.argmax(1)[0].numpy())


def test_voxel_and_box_are_input_indices_in_any_storage_order(
    tmp_path: Path, ras_volume: tuple[np.ndarray, np.ndarray], kits_model: Path
) -> None:
    data, affine = ras_volume
    point_ras = (3, 8, 6)
    maps, sizes = [], []
    for codes in ("RAS", "IPL"):
        stored, stored_affine = stored_as(data, affine, codes)
        path = tmp_path / f"{codes}.nii.gz"
        nib.save(nib.Nifti1Image(stored, stored_affine), str(path))
        index = np.rint(np.linalg.inv(stored_affine) @ affine @ np.array([*point_ras, 1.0]))[:3].astype(int)
        exp = explain_volume(path, class_name="kidney", model=kits_model, pixels=f"voxel:{','.join(map(str, index))}")
        assert exp.summary["pixel_set"]["voxels_model_grid"] == 1
        assert exp.pixels is not None and exp.pixels[tuple(index)]
        maps.append(back_to(exp.heatmap, stored_affine, affine))
        box = explain_volume(path, class_name="kidney", model=kits_model, pixels="box:0,0,0:4,4,4")
        sizes.append(box.summary["pixel_set"]["voxels_input_grid"])
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5)
    assert all(s >= 4 * 4 * 4 for s in sizes)


def test_mask_file_must_share_the_input_grid(tmp_path: Path, kits_case: Path, kits_model: Path) -> None:
    image = nib.load(str(kits_case))
    mask = np.zeros(image.shape, np.uint8)
    mask[4:8, 10:20, 8:16] = 2
    mask[0:2, 0:2, 0:2] = 1
    nib.save(nib.Nifti1Image(mask, image.affine, image.header), str(tmp_path / "mask.nii.gz"))
    exp = explain_volume(kits_case, class_name="tumor", model=kits_model, pixels=f"mask:{tmp_path / 'mask.nii.gz'}:2")
    assert exp.summary["pixel_set"]["definition"].endswith("mask.nii.gz:2")
    assert exp.pixels is not None
    inside = exp.pixels[4:8, 10:20, 8:16].mean()
    assert inside > 0.8 and exp.pixels.sum() < 2 * mask.astype(bool).sum()
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "moved.nii.gz"))
    with pytest.raises(UserError, match="give a mask on the input's voxel grid"):
        explain_volume(kits_case, class_name="tumor", model=kits_model, pixels=f"mask:{tmp_path / 'moved.nii.gz'}")
    with pytest.raises(UserError, match="has no label 7"):
        explain_volume(kits_case, class_name="tumor", model=kits_model, pixels=f"mask:{tmp_path / 'mask.nii.gz'}:7")


def test_classes_and_regions_resolve_from_the_checkpoint() -> None:
    meta = CheckpointMeta(
        "monai.UNet", {}, "segmentation", 3, 1, dict(KITS_LABELS), regions={"masses": [2, 3], "tumor": [2]}
    )
    assert resolve_class(meta, "Kidney").channels == (1,)
    assert resolve_class(meta, "tumor").kind == "label"  # a label wins over a region of the same name
    masses = resolve_class(meta, "masses")
    assert (masses.kind, masses.channels) == ("region", (2, 3))
    with pytest.raises(TargetError, match=r"labels: background, kidney, tumor, cyst; regions: masses, tumor"):
        resolve_class(meta, "liver")
    sigmoid = CheckpointMeta(
        "monai.UNet",
        {},
        "segmentation",
        3,
        1,
        {"kidney_and_masses": 0, "masses": 1},
        activation="sigmoid",
        regions={"x": [1, 2]},
    )
    with pytest.raises(TargetError, match="softmax"):
        resolve_class(sigmoid, "x")


def test_region_class_explains_the_merged_logit(kits_case: Path, kits_model: Path) -> None:
    exp = explain_volume(kits_case, class_name="masses", model=kits_model, pixels="image")
    assert exp.summary["class"] == {"name": "masses", "kind": "region", "channels": [2, 3]}
    assert np.isfinite(exp.heatmap).all() and exp.heatmap.max() == pytest.approx(1.0)


def test_empty_predicted_set_says_how_to_choose_pixels(tmp_path: Path, kits_case: Path) -> None:
    ckpt = kits_checkpoint(tmp_path / "never_tumour.pt", bias={2: -1000.0})
    with pytest.raises(TargetError, match=r"predicts no tumor voxels.*--pixels"):
        explain_volume(kits_case, class_name="tumor", model=ckpt)


def test_extras_and_levels_are_written_with_the_input_geometry(tmp_path: Path, kits_case: Path) -> None:
    ckpt = kits_checkpoint(tmp_path / "whole.pt", patch_size=None, preprocessing=Preprocessing(orientation="RAS"))
    out = explain_case(
        kits_case,
        tmp_path / "out",
        class_name="kidney",
        model=ckpt,
        pixels="image",
        layer="levels",
        method=InputMapMethod(uncertainty_offset=1.0),
    )
    source = nib.load(str(kits_case))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"]["primary"] == "final"  # the level layers="auto" explains (no decM level here)
    assert summary["outputs"]["extras"] == {"uncertainty": "uncertainty.nii.gz"}
    for name in ["heatmap.nii.gz", "uncertainty.nii.gz", *summary["outputs"]["levels"].values()]:
        image = nib.load(str(out / name))
        assert image.shape == source.shape, name
        np.testing.assert_array_equal(image.affine, source.affine)
    assert "levels/enc0_uncertainty.nii.gz" in summary["outputs"]["levels"].values()
    uncertainty = np.asarray(nib.load(str(out / "uncertainty.nii.gz")).dataobj)
    expected = np.abs(np.asarray(source.dataobj)) + 1.0  # orientation only: exact inverse of a permutation
    np.testing.assert_allclose(uncertainty, expected, rtol=1e-6)
    scene = (out / "scene.mrml").read_text()
    assert 'name="uncertainty"' in scene and "colormap_GnBu.ctbl" in scene  # its own colour map
    # any method returning an uncertainty gets the side-by-side preview
    assert summary["outputs"]["preview_uncertainty"] == "preview_uncertainty.png"
    assert (out / "preview_uncertainty.png").stat().st_size > 1000


def test_two_dimensional_images_keep_their_pixel_grid(tmp_path: Path) -> None:
    from PIL import Image

    pixels = (ramp((24, 32)) % 200).astype(np.uint8)  # (H, W)
    Image.fromarray(pixels).save(tmp_path / "xray.png")
    ckpt = tiny_unet_checkpoint(
        tmp_path / "m2d.pt", spatial_dims=2, patch_size=(16, 16), labels={"background": 0, "tooth": 1}
    )
    out = explain_case(tmp_path / "xray.png", tmp_path / "out", class_name="tooth", model=ckpt, pixels="image")
    heat = nib.load(str(out / "heatmap.nii.gz"))
    assert heat.shape == (32, 24)  # (W, H), as ITK and Slicer index the PNG
    assert Image.open(out / "heatmap.png").size == (32, 24)
    png = np.asarray(Image.open(out / "heatmap.png"))
    np.testing.assert_array_equal(png, np.rint(np.clip(np.asarray(heat.dataobj).T, 0, 1) * 255).astype(np.uint8))
    assert (out / "prediction.seg.nrrd").is_file() and (out / "review.mrb").is_file()


def test_explanations_are_deterministic(tmp_path: Path, kits_case: Path, kits_model: Path) -> None:
    first = explain_case(kits_case, tmp_path / "a", class_name="kidney", model=kits_model, pixels="image")
    second = explain_case(kits_case, tmp_path / "b", class_name="kidney", model=kits_model, pixels="image")
    for name in (
        "heatmap.nii.gz",
        "prediction.nii.gz",
        "prediction.seg.nrrd",
        "review.mrb",
        "scene.mrml",
        "preview.png",
    ):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_a_failed_write_leaves_nothing_and_keeps_the_old_folder(
    tmp_path: Path, kits_case: Path, kits_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medcam.review.bundle as review

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(review, "render_preview", broken)
    target = tmp_path / "nested" / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        explain_case(kits_case, target, class_name="kidney", model=kits_model, pixels="image")
    assert not (tmp_path / "nested").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / ".medcam-output").write_text("{}")  # an earlier medcam output, which --overwrite may replace
    (old / "keep.txt").write_text("previous result")
    with pytest.raises(RuntimeError):
        explain_case(kits_case, old, class_name="kidney", model=kits_model, pixels="image", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert (old / "keep.txt").read_text() == "previous result"


def test_preprocessing_settings_reach_the_model_grid(kits_case: Path, kits_model: Path) -> None:
    exp = explain_volume(kits_case, class_name="kidney", model=kits_model, pixels="image")
    grid_affine = np.array(exp.summary["model"]["model_grid_affine"])
    assert "".join(nib.aff2axcodes(grid_affine)) == "RAS"
    np.testing.assert_allclose(np.linalg.norm(grid_affine[:3, :3], axis=0), KITS_PREPROCESSING.spacing)
    assert exp.summary["sliding_window"]["windows"] > 1
    assert exp.summary["input"]["orientation"] == "IPL"


def test_classifier_on_a_jpeg_gets_a_map_on_its_pixels(tmp_path: Path) -> None:
    from PIL import Image

    from medcam.models.checkpoint import save_checkpoint
    from medcam.models.factory import build_model

    Image.fromarray((np.random.default_rng(0).random((50, 70)) * 255).astype(np.uint8)).save(tmp_path / "ct.jpg")
    torch.manual_seed(0)
    model = build_model("torchvision.resnet18", num_classes=3, pretrained=False)
    imagenet = Preprocessing(
        size=(64, 64), a_min=0.0, a_max=255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    labels = {"normal": 0, "benign": 1, "malignant": 2}
    meta = CheckpointMeta(
        "torchvision.resnet18", {"num_classes": 3}, "classification", 2, 3, labels, preprocessing=imagenet
    )
    save_checkpoint(tmp_path / "cls.pt", model, meta)
    out = explain_case(
        tmp_path / "ct.jpg", tmp_path / "out", class_name="malignant", model=tmp_path / "cls.pt", method="gradcam"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["prediction"]["probabilities"]) == {"normal", "benign", "malignant"}
    assert summary["layers"]["explained"] == {"layer4": "layer4"}
    assert nib.load(str(out / "heatmap.nii.gz")).shape == (70, 50)  # (W, H) of the JPEG, not the 64 x 64 model grid
    assert not (out / "prediction.nii.gz").exists()
    with pytest.raises(UserError, match="applies to segmentation models"):
        explain_volume(tmp_path / "ct.jpg", class_name="benign", model=tmp_path / "cls.pt", pixels="box:0,0:5,5")
