"""The medcam checkpoint: a round trip keeps weights and metadata; pickled code is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from medcam.models.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointMeta,
    Preprocessing,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from medcam.models.factory import build_model

ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8, 16], "strides": [2, 2]}


def kits_meta() -> CheckpointMeta:
    return CheckpointMeta(
        architecture="monai.UNet",
        arguments=dict(ARGS),
        task="segmentation",
        spatial_dims=3,
        in_channels=1,
        labels={"background": 0, "kidney": 1, "tumor": 2, "cyst": 3},
        regions={"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]},
        patch_size=(16, 32, 32),
        preprocessing=Preprocessing(orientation="IPL", spacing=(5.0, 3.2, 3.2), a_min=-200.0, a_max=300.0),
        cam_layers=["model.1.submodule"],
        training={"epoch": 3, "val": {"dice_kidney": 0.9}},
    )


def test_round_trip_keeps_weights_outputs_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = build_model("monai.UNet", **ARGS).eval()
    path = save_checkpoint(tmp_path / "model.pt", model, kits_meta())
    meta, state = read_checkpoint(path)
    assert dataclasses.replace(meta, medcam_version="") == kits_meta()
    assert meta.medcam_version  # stamped on save
    assert meta.preprocessing.spacing == (5.0, 3.2, 3.2) and meta.patch_size == (16, 32, 32)
    bundle = load_checkpoint(path)
    assert not bundle.model.training
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), model(x), rtol=0, atol=0)
    assert set(state) == set(model.state_dict())
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


class _CreatesAFile:
    """Unpickling this object calls open(path, "w"): a stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


def test_a_checkpoint_with_pickled_code_is_refused_and_the_code_never_runs(tmp_path):
    model = build_model("monai.UNet", **ARGS)
    marker = tmp_path / "pwned.txt"
    payload = {
        "format": FORMAT,
        "format_version": 1,
        "metadata": kits_meta().to_json(),
        "state_dict": model.state_dict(),
        "extra": _CreatesAFile(marker),
    }
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)
    assert not marker.exists()
    # the file really is malicious: an unsafe load runs the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_other_files_are_refused_with_a_reason(tmp_path):
    model = build_model("monai.UNet", **ARGS)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a medcam checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "truncated.pt")
    wrong = dataclasses.replace(kits_meta(), arguments={**ARGS, "channels": [8, 16, 32]})
    save_checkpoint(tmp_path / "wrong.pt", model, wrong)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(tmp_path / "wrong.pt")


def test_unknown_metadata_keys_are_named():
    text = kits_meta().to_json().replace('"task"', '"future_field": 1, "task"')
    with pytest.raises(CheckpointError, match="future_field"):
        CheckpointMeta.from_json(text)
