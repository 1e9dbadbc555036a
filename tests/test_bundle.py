"""MONAI bundle folders as --model: network by MONAI's ConfigParser, labels, window, preprocessing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from medcam.cli import main
from medcam.errors import UserError
from medcam.models.loading import ModelPath, load_model
from medcam.models.monai_bundle import BundleError, is_monai_bundle, load_monai_bundle
from medcam.volumes.io import load_volume
from medcam.volumes.preprocessing import prepare

INFERENCE: dict[str, Any] = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": "$[4, 8, 16]",  # a $ expression: evaluated by MONAI's parser, as in Model Zoo bundles
        "strides": [2, 2],
        "num_res_units": 0,
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -57,
                "a_max": 164,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1, "overlap": 0.25},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
    },
}
METADATA = {
    "name": "tiny_spleen",
    "network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16, 16]}},
        "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}},
    },
}


def _network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0)


def write_bundle(folder: Path, config: dict[str, Any] = INFERENCE, weights: Any = None) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA))
    torch.save(_network().state_dict() if weights is None else weights, folder / "models" / "model.pt")
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "tiny_spleen")


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([-1.0, -1.2, 2.5, 1.0])  # LPS-like storage: the bundle reorients to RAS
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(50, 80, (24, 20, 12)).astype(np.float32), affine), path)
    return path


def test_bundle_is_loaded_with_labels_window_and_preprocessing(bundle: Path) -> None:
    assert is_monai_bundle(bundle)
    loaded = load_monai_bundle(bundle)
    meta = loaded.meta
    assert meta.labels == {"background": 0, "spleen": 1} and meta.activation == "softmax"
    assert meta.patch_size == (16, 16, 16) and meta.in_channels == 1 and meta.spatial_dims == 3
    pre = meta.preprocessing
    assert (pre.orientation, pre.spacing, pre.a_min, pre.a_max, pre.clip) == ("RAS", (1.5, 1.5, 2.0), -57, 164, True)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), _network().eval()(x))


def test_preprocessing_equals_the_bundles_own_transforms(bundle: Path, ct: Path) -> None:
    from monai.bundle import ConfigParser

    meta = load_monai_bundle(bundle).meta
    ours = prepare(load_volume(ct), meta.preprocessing, spatial_dims=3, in_channels=1)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    theirs = parser.get_parsed_content("preprocessing")({"image": str(ct)})["image"]
    assert tuple(ours.image.shape[1:]) == tuple(theirs.shape)
    torch.testing.assert_close(ours.image[0], torch.as_tensor(theirs).float(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours.affine, np.asarray(theirs.affine), atol=1e-4)


def test_explain_a_bundle_writes_maps_on_the_input_grid(tmp_path: Path, bundle: Path, ct: Path) -> None:
    out = tmp_path / "review"
    args = ["--volume", str(ct), "--model", str(bundle), "--class", "spleen", "--pixels", "image"]
    code = main(["explain", *args, "--out", str(out), "--no-progress"])
    assert code == 0
    heatmap, source = nib.load(out / "heatmap.nii.gz"), nib.load(ct)
    assert heatmap.shape == source.shape
    np.testing.assert_allclose(heatmap.affine, source.affine, atol=1e-5)
    import SimpleITK as sitk  # noqa: N813

    a, b = sitk.ReadImage(str(ct)), sitk.ReadImage(str(out / "heatmap.nii.gz"))
    assert a.GetSize() == b.GetSize()
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(a, get)(), getattr(b, get)(), atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["architecture"] == "monai-bundle:UNet" and summary["model"]["sha256"]


def test_bundle_refusals(tmp_path: Path, bundle: Path) -> None:
    config = copy.deepcopy(INFERENCE)
    config["preprocessing"]["transforms"].insert(2, {"_target_": "NormalizeIntensityd", "keys": "image"})
    with pytest.raises(BundleError, match="preprocessing step 'NormalizeIntensityd' is not one medcam can replay"):
        load_monai_bundle(write_bundle(tmp_path / "normalised", config))

    class Hostile:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return (Path.write_text, (tmp_path / "pwned.txt", "code ran"))

    with pytest.raises(BundleError, match="refuses to load"):
        load_monai_bundle(write_bundle(tmp_path / "hostile", weights={"w": Hostile()}))
    assert not (tmp_path / "pwned.txt").exists()
    with pytest.raises(UserError, match="--folds, --checkpoint, --configuration and --disable-tta apply to nnU-Net"):
        load_model(ModelPath(bundle, folds=("0",)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither an nnU-Net trained-model folder"):
        load_model(ModelPath(tmp_path / "empty"))
