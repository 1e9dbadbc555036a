"""The CLI and Python agree: option names, the default device and output folder, `medcam info`'s sizes."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from volume_phantoms import tiny_unet_checkpoint

from medcam.cli import build_parser, main
from medcam.cli.explain import case_name
from medcam.errors import UserError
from medcam.models.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
from medcam.models.factory import build_model
from medcam.models.loading import check_device
from medcam.pipeline import ExplainOptions

# CLI options that say WHAT to explain and WHERE to write, not HOW (arguments of explain_case / explain_batch);
# --folds, --checkpoint, --configuration and --disable-tta belong to --model (medcam.models.loading.ModelPath)
NOT_OPTIONS = {"help", "volume", "image", "datalist", "folder", "class_name", "model", "out", "overwrite"}
MODEL_SOURCE = {"folds", "checkpoint", "configuration", "disable_tta"}
SWITCHES = {"no_relu": "relu", "no_progress": "progress"}  # --no-X is X=False


def _explain_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["explain"]


def test_every_explain_option_is_an_explain_options_field() -> None:
    names = {f.name for f in fields(ExplainOptions) if f.init}
    dests = {a.dest for a in _explain_parser()._actions} - NOT_OPTIONS - MODEL_SOURCE
    assert {SWITCHES.get(d, d) for d in dests} <= names, sorted({SWITCHES.get(d, d) for d in dests} - names)


def test_python_takes_the_cli_spellings() -> None:
    options = ExplainOptions.from_keywords(levels="enc0,bottleneck", montage_crop=True, normalize="none")
    assert options.layer == "levels:enc0,bottleneck" and options.normalization is None
    assert options.post.normalization is None and options.montage.crop
    assert ExplainOptions(levels="all").layer == "levels"
    assert ExplainOptions(levels=["dec1", "final"]).layer == "levels:dec1,final"
    with pytest.raises(UserError, match="not both"):
        ExplainOptions(levels="enc0", layer="model.0")
    assert ExplainOptions().device == "auto"


def test_device_auto_picks_cuda_when_present() -> None:
    assert check_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert check_device("cpu") == "cpu"
    with pytest.raises(UserError, match="auto, cpu or cuda"):
        check_device("tpu")


def test_default_out_is_named_after_the_case(tmp_path: Path) -> None:
    series = tmp_path / "CT_series_7"
    series.mkdir()
    assert case_name(str(series)) == "CT_series_7"  # a DICOM series folder
    assert case_name("data/kits23/dataset/case_00042/imaging.nii.gz") == "case_00042"
    assert case_name("data/kits23/dataset/case_00043/imaging.nii.gz") == "case_00043"
    assert case_name("imagesTs/liver_017_0000.nii.gz") == "liver_017"
    assert case_name("scans/patient3.nrrd") == "patient3"


def test_info_measures_a_whole_image_2d_model_at_its_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_unet_checkpoint(
        tmp_path / "whole.pt", spatial_dims=2, patch_size=None, preprocessing=Preprocessing(size=(48, 64))
    )
    assert main(["info", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "measured at input 48 x 64:" in out


def test_info_prints_anisotropic_level_scales_per_axis(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arguments = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "kernel_size": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "upsample_kernel_size": [[1, 2, 2], [2, 2, 2]],
        "filters": [4, 8, 16],
        "norm_name": "instance",
    }
    meta = CheckpointMeta(
        architecture="monai.DynUNet",
        arguments=arguments,
        task="segmentation",
        spatial_dims=3,
        in_channels=1,
        labels={"background": 0, "kidney": 1},
        patch_size=(8, 16, 16),
    )
    path = save_checkpoint(tmp_path / "dyn.pt", build_model("monai.DynUNet", **arguments), meta)
    assert main(["info", "--model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(1/2 x 1/4 x 1/4)" in out  # the bottleneck: slices halved once, rows and columns twice
    assert "1/2/1/4" not in out


def test_a_failed_batch_case_is_printed_once(tmp_path: Path, kits_model: Path) -> None:
    import os
    import subprocess
    import sys

    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "broken_case.nii.gz").write_bytes(b"not a nifti file")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "medcam", "explain", "--folder", str(folder), "--class", "tumor"]
    done = subprocess.run(
        [*command, "--model", str(kits_model), "--out", str(tmp_path / "out"), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "broken_case" in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("medcam: error: case broken_case:")
