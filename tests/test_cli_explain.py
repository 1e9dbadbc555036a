"""``medcam explain`` end to end (a subprocess) and every bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from volume_phantoms import kits_checkpoint, kits_phantom, write_kits_case, write_kits_like

import medcam
from medcam.cli import main
from medcam.models.checkpoint import CheckpointMeta, save_checkpoint
from medcam.models.factory import build_model

REPO = Path(medcam.__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), environment.get("PYTHONPATH", "")])
    environment.setdefault("OMP_NUM_THREADS", "1")  # tiny tensors: threads only add contention
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "medcam", *args], capture_output=True, text=True, env=environment, timeout=300
    )


def test_explain_end_to_end_in_a_subprocess(tmp_path: Path, kits_case: Path, kits_model: Path) -> None:
    out = tmp_path / "result"
    done = run_cli(
        "explain", "--volume", str(kits_case), "--model", str(kits_model), "--class", "masses",
        "--pixels", "box:2,6,4:10,26,24", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"medcam: wrote {out}"
    assert "Traceback" not in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class"]["kind"] == "region" and summary["method"]["name"] == "hirescam"
    assert summary["sliding_window"]["windows_with_backward"] >= 1
    heat = nib.load(str(out / "heatmap.nii.gz"))
    np.testing.assert_array_equal(heat.affine, nib.load(str(kits_case)).affine)
    assert float(np.asarray(heat.dataobj).max()) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    good = write_kits_case(d / "good")
    (d / "corrupt.nii.gz").write_bytes(b"\x1f\x8b garbage that is not gzip" * 10)
    (d / "truncated.nii.gz").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(d / "four_d.nii.gz"))
    nan = kits_phantom()
    nan[3, 4, 5] = np.nan
    write_kits_like(d / "nan.nii.gz", nan)
    never = kits_checkpoint(d / "never_tumour.pt", bias={2: -1000.0})
    torch.manual_seed(0)
    unet = build_model(
        "monai.UNet", spatial_dims=3, in_channels=1, out_channels=4, channels=[4, 8], strides=[2], num_res_units=0
    )
    other = CheckpointMeta(
        "monai.BasicUNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "features": [4, 4, 8, 8, 16, 4]},
        "segmentation", 3, 1, {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3},
    )  # fmt: skip
    save_checkpoint(d / "other_architecture.pt", unet, other)
    (d / "a_file").write_text("not a folder")
    return {"good": good, "never": never, "other": d / "other_architecture.pt", "file": d / "a_file", "dir": d}


BAD = [
    ("missing", ["--volume", "{dir}/missing.nii.gz"], "does not exist"),
    ("corrupt", ["--volume", "{dir}/corrupt.nii.gz"], "truncated or corrupt"),
    ("truncated", ["--volume", "{dir}/truncated.nii.gz"], "truncated or corrupt"),
    ("four_d", ["--volume", "{dir}/four_d.nii.gz"], "4D image"),
    ("nan", ["--volume", "{dir}/nan.nii.gz"], "NaN or infinite"),
    ("class", ["--volume", "{good}", "--class", "liver"], "labels: background, kidney, tumor, cyst; regions:"),
    ("empty_m", ["--volume", "{good}", "--model", "{never}"], "predicts no tumor voxels"),
    ("box", ["--volume", "{good}", "--pixels", "box:0,0,0:13,5,5"], "lies outside the volume of shape (12, 32, 28)"),
    ("voxel", ["--volume", "{good}", "--pixels", "voxel:1,2"], "has 2 coordinates"),
    ("pixels", ["--volume", "{good}", "--pixels", "everywhere"], "pixel set 'everywhere' is not known"),
    ("architecture", ["--volume", "{good}", "--model", "{other}"], "weights do not fit monai.BasicUNet"),
    ("model", ["--volume", "{good}", "--model", "{dir}/none.pt"], "does not exist"),
    ("unwritable", ["--volume", "{good}", "--out", "{file}/out"], "is a file, not a folder"),
    ("method", ["--volume", "{good}", "--method", "gradcamm"], "method 'gradcamm' is not known"),
    ("layer", ["--volume", "{good}", "--layer", "model.9"], "layer 'model.9' does not exist"),
    ("device", ["--volume", "{good}", "--device", "tpu"], "--device must be auto, cpu or cuda"),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: str, args: list[str], message: str, bad_inputs: dict[str, Path], kits_model: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    values = {k: str(v) for k, v in bad_inputs.items()}
    argv = ["explain", *[a.format(**values) for a in args]]
    if "--class" not in argv:
        argv += ["--class", "tumor"]
    if "--model" not in argv:
        argv += ["--model", str(kits_model)]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    before = sorted(bad_inputs["dir"].rglob("*"))
    code = main([*argv, "--no-progress"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("medcam: error: "), captured.err
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []
    assert sorted(bad_inputs["dir"].rglob("*")) == before


def test_unwritable_folder_is_refused_before_any_work(tmp_path: Path, kits_case: Path, kits_model: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    if os.geteuid() == 0:
        pytest.skip("root may write into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        code = main(["explain", "--volume", str(kits_case), "--model", str(kits_model), "--class", "tumor",
                     "--out", str(locked / "out")])  # fmt: skip
    finally:
        locked.chmod(0o755)
    assert code == 2
    assert "choose a writable --out folder" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_overwrite_replaces_and_its_absence_protects(tmp_path: Path, kits_case: Path, kits_model: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    base = ["explain", "--volume", str(kits_case), "--model", str(kits_model), "--class", "kidney", "--pixels", "image",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(base) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    # --overwrite replaces only a medcam output folder (marker file), never the user's own folder
    assert main([*base, "--overwrite"]) == 2
    assert "replaces only medcam output folders" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    assert main([*base, "--overwrite"]) == 0  # an empty folder may be replaced
    assert (out / "heatmap.nii.gz").is_file() and (out / ".medcam-output").is_file()
    stamp = (out / "summary.json").stat().st_mtime_ns
    assert main([*base, "--overwrite"]) == 0  # and medcam's own output
    assert (out / "summary.json").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    for index in range(3):
        write_kits_case(root / f"case_{index:05d}", seed=index)
    return root


def test_batch_over_a_folder_skips_finished_cases(tmp_path: Path, case_folder: Path, kits_model: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "batch"
    argv = ["explain", "--folder", str(case_folder), "--model", str(kits_model), "--class", "kidney",
            "--pixels", "image", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "3 explained, 0 already done, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["case_00000", "case_00001", "case_00002"]
    stamp = (out / "case_00001" / "summary.json").stat().st_mtime_ns
    (out / "case_00002" / "summary.json").unlink()  # as if that case had been removed
    import shutil

    shutil.rmtree(out / "case_00002")
    assert main(argv) == 0
    assert "1 explained, 2 already done" in capsys.readouterr().out
    assert (out / "case_00001" / "summary.json").stat().st_mtime_ns == stamp


def test_batch_shards_cases_across_torchrun_ranks(tmp_path: Path, case_folder: Path, kits_model: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps([{"image": str(p / "imaging.nii.gz")} for p in sorted(case_folder.iterdir())]))
    out = tmp_path / "sharded"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["explain", "--datalist", str(datalist), "--model", str(kits_model), "--class", "kidney",
                 "--pixels", "image", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    assert "medcam[1/2]: 1 explained" in capsys.readouterr().out
    assert [p.name for p in out.iterdir()] == ["case_00001"]  # ids from KiTS case folders; rank 1 of 2


def test_batch_reports_failed_cases_and_continues(tmp_path: Path, kits_model: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    root = tmp_path / "data"
    write_kits_case(root / "case_a")
    (root / "broken.nii.gz").write_bytes(b"not an image")
    code = main(["explain", "--folder", str(root), "--model", str(kits_model), "--class", "kidney", "--pixels", "image",
                 "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    assert "1 explained, 0 already done, 1 failed" in captured.out
    assert captured.err.strip().startswith("medcam: error: case broken:")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["case_a"]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_ranks_share_the_cases(tmp_path: Path, case_folder: Path, kits_model: Path) -> None:
    """Two ranks under the real launcher: each case written once, by one rank, no process group needed."""
    out = tmp_path / "ranks"
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), environment.get("PYTHONPATH", "")])
    environment["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "medcam",
         "explain", "--folder", str(case_folder), "--model", str(kits_model), "--class", "kidney", "--pixels", "image",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, env=environment, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "medcam[0/2]: 2 explained" in done.stdout and "medcam[1/2]: 1 explained" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["case_00000", "case_00001", "case_00002"]
