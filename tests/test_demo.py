"""``medcam demo`` end to end in a subprocess: files written, scores read back from them, refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medcam
from medcam.models.checkpoint import DEMO_CHECKPOINT, read_checkpoint

REPO = Path(medcam.__file__).resolve().parent.parent


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), environment.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "medcam", "demo", *args], capture_output=True, text=True, env=environment, timeout=600
    )


def voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_demo_explains_the_phantom_tumour_and_refuses_an_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = run_demo("--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    case, explanation = out / "phantom" / "case_00000", out / "explanation"
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):
        assert (case / name).is_file(), name
    for name in ("heatmap.nii.gz", "prediction.nii.gz", "prediction.seg.nrrd", "review.mrb", "summary.json"):
        assert (explanation / name).is_file(), name
    assert str(explanation / "preview.png") in done.stdout and (explanation / "preview.png").is_file()
    assert "load_in_slicer.py" in done.stdout

    # scores recomputed from the files, not taken from the printed text
    tumour_label = read_checkpoint(DEMO_CHECKPOINT)[0].labels["tumor"]
    truth = voxels(case / "segmentation.nii.gz") == tumour_label
    predicted = voxels(explanation / "prediction.nii.gz") == tumour_label
    heat = voxels(explanation / "heatmap.nii.gz").astype(np.float64)
    assert truth.shape == predicted.shape == heat.shape and truth.any()
    dice = 2 * (truth & predicted).sum() / (truth.sum() + predicted.sum())
    inside, outside = heat[truth].mean(), heat[~truth].mean()
    assert dice > 0.5, dice
    assert inside > 5 * outside, (inside, outside)
    assert f"{dice:.3f}" in done.stdout  # the printed Dice is the one in the files

    # an existing --out without --overwrite: one line, exit 2, nothing touched
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    stamp = (explanation / "heatmap.nii.gz").stat().st_mtime_ns
    refused = run_demo("--out", str(out), "--no-progress")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0] and "--overwrite" in lines[0], refused.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (explanation / "heatmap.nii.gz").stat().st_mtime_ns == stamp


def test_failed_overwrite_restores_the_previous_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medcam.pipeline
    from medcam.pipeline.demo import run_demo as run_in_process

    out = tmp_path / "demo"
    out.mkdir()
    (out / ".medcam-output").write_text("{}")  # an earlier demo, which --overwrite may replace
    (out / "keep.txt").write_text("previous demo")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("explain failed")

    monkeypatch.setattr(medcam.pipeline, "explain_case", broken)
    with pytest.raises(RuntimeError, match="explain failed"):
        run_in_process(out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no half-written or hidden folders left
    assert sorted(p.name for p in out.iterdir()) == [".medcam-output", "keep.txt"]
    assert (out / "keep.txt").read_text() == "previous demo"


def test_explain_without_a_model_uses_the_shipped_demo_checkpoint() -> None:
    from medcam.pipeline import default_model_path

    assert default_model_path() == DEMO_CHECKPOINT and DEMO_CHECKPOINT.is_file()
