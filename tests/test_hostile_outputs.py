"""Outputs stay inside ``--out``: case ids, ``--overwrite``, leftovers of killed runs, generated scripts.

Each test is a hostile or careless use that once escaped ``--out``, deleted a folder that
was not medcam's, left debris, or ran code from a file name.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from medcam.cli import main
from medcam.errors import UserError
from medcam.pipeline import Case, explain_case
from medcam.pipeline.batch import check_case_ids
from medcam.review.folders import MARKER, atomic_folder


def explain(argv: list[str], kits_model: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["explain", *argv, "--model", str(kits_model), "--class", "kidney", "--pixels", "image",
                 "--no-progress"])  # fmt: skip
    return code, capsys.readouterr().err.strip().splitlines()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "case_id",
    ["../../escaped", "../escaped", "/ABSOLUTE/victim", "a/b", "..", ".", "", ".hidden", "line\nbreak", "tab\x1b[2J"],
)
def test_a_case_id_that_would_leave_out_is_refused(
    case_id: str, tmp_path: Path, kits_case: Path, kits_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    case_id = case_id.replace("/ABSOLUTE", str(tmp_path))
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps([{"image": str(kits_case), "id": case_id}]))
    before = tree(tmp_path)
    code, lines = explain(["--datalist", str(datalist), "--out", str(tmp_path / "out" / "run"), "--overwrite"],
                          kits_model, capsys)  # fmt: skip
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("medcam: error: "), lines
    assert "case id" in lines[0]
    assert tree(tmp_path) == before  # nothing written anywhere, nothing deleted


def test_duplicate_case_ids_are_refused(tmp_path: Path, kits_case: Path, kits_model: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps({"training": [{"image": str(kits_case), "id": "a"}],
                                    "test": [{"image": str(kits_case), "id": "A"}]}))  # fmt: skip
    code, lines = explain(["--datalist", str(datalist), "--out", str(tmp_path / "out")], kits_model, capsys)
    assert code == 2 and len(lines) == 1 and "appears twice" in lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="appears twice"):
        check_case_ids([Case("x", kits_case), Case("x", kits_case)])


@pytest.mark.parametrize(("content", "message"), [
    ({"training": 5}, "'training' must be a list of cases, not int"),
    ({"training": "abc"}, "'training' must be a list of cases, not str"),
    ([{"id": "a"}], "has no image path"),
    ([{"image": "x.nii.gz", "id": ["a"]}], "'id' must be a text or a number"),
])  # fmt: skip
def test_malformed_datalists_are_one_line(content: object, message: str, tmp_path: Path, kits_model: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps(content))
    code, lines = explain(["--datalist", str(datalist), "--out", str(tmp_path / "out")], kits_model, capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_empty_out_is_refused(tmp_path: Path, kits_case: Path, kits_model: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, lines = explain(["--volume", str(kits_case), "--out", ""], kits_model, capsys)
    assert code == 2 and len(lines) == 1 and "--out is empty" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_out_through_a_missing_folder_leaves_no_trace_of_it(tmp_path: Path, kits_case: Path, kits_model: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code, _ = explain(["--volume", str(kits_case), "--out", f"{tmp_path}/missing/../res"], kits_model, capsys)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    assert (tmp_path / "res" / "summary.json").is_file()


def test_overwrite_never_deletes_the_folder_holding_the_input(tmp_path: Path, kits_case: Path, kits_model: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "out"
    assert explain(["--volume", str(kits_case), "--out", str(out)], kits_model, capsys)[0] == 0
    inside = out / "input.nii.gz"
    shutil.copy(kits_case, inside)  # a user keeps an input inside an earlier result
    code, lines = explain(["--volume", str(inside), "--out", str(out), "--overwrite"], kits_model, capsys)
    assert code == 2 and len(lines) == 1 and "would delete the input" in lines[0], lines
    assert inside.is_file()


def test_overwrite_never_follows_a_symbolic_link(tmp_path: Path, kits_case: Path, kits_model: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    real = tmp_path / "real"
    real.mkdir()
    (real / MARKER).write_text("{}")
    (real / "data.txt").write_text("keep")
    (tmp_path / "link").symlink_to(real)
    code, lines = explain(["--volume", str(kits_case), "--out", str(tmp_path / "link"), "--overwrite"],
                          kits_model, capsys)  # fmt: skip
    assert code == 2 and len(lines) == 1 and "symbolic link" in lines[0]
    assert (real / "data.txt").read_text() == "keep"


def test_a_batch_never_writes_through_a_linked_case_folder(tmp_path: Path, kits_case: Path, kits_model: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MARKER).write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case_00000").symlink_to(elsewhere)
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps([str(kits_case)]))
    code = main(["explain", "--datalist", str(datalist), "--out", str(out), "--overwrite", "--model", str(kits_model),
                 "--class", "kidney", "--pixels", "image", "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "case case_00000" in lines[0] and "symbolic link" in lines[0]  # each failure once
    assert "1 failed" in captured.out
    assert sorted(p.name for p in elsewhere.iterdir()) == [MARKER]


def test_leftovers_of_a_killed_run_are_removed_by_the_next_run(
    tmp_path: Path, kits_case: Path, kits_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    killed = tmp_path / ".res.abcd1234.partial"  # what a run killed while writing leaves
    killed.mkdir()
    (killed / MARKER).write_text(json.dumps({"writer": "medcam", "pid": 2**22 + 7, "host": os.uname().nodename}))
    (killed / "heatmap.nii.gz").write_bytes(b"half")
    foreign = tmp_path / ".res.zzzz9999.partial"  # same name pattern but no marker: not ours
    foreign.mkdir()
    other = tmp_path / ".other.abcd1234.partial"  # another output's leftover: not this run's business
    other.mkdir()
    (other / MARKER).write_text("{}")
    assert explain(["--volume", str(kits_case), "--out", str(out)], kits_model, capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abcd1234.partial", ".res.zzzz9999.partial", "res"]


def test_a_failed_write_leaves_no_partial_folder(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "x", overwrite=False) as tmp:
        assert (tmp / MARKER).is_file()  # marked from the start, so a killed run's folder is recognisable
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_volume_file_failing_on_the_writer_thread_fails_the_run_and_leaves_nothing(
    tmp_path: Path, kits_case: Path, kits_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NIfTI and NRRD files are written on two threads; an error there must reach the run."""
    from medcam.review import bundle

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    out = tmp_path / "res"
    with mock.patch.object(bundle, "write_segmentation", disk_full), pytest.raises(OSError, match="No space"):
        explain(["--volume", str(kits_case), "--out", str(out)], kits_model, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


HOSTILE = 'x";__import__("os").system("touch PWNED");"y'


def test_generated_script_runs_no_code_from_file_names(tmp_path: Path, kits_case: Path, kits_model: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    image = data / f"{HOSTILE}.nii.gz"
    shutil.copy(kits_case, image)
    out = tmp_path / f"out{HOSTILE.replace('y', 'z')}'''\"\"\"\nnext"
    explain_case(image, out, class_name="kidney", model=kits_model, pixels="image")
    script = out / "load_in_slicer.py"
    fake = mock.MagicMock(name="slicer")
    monkeypatch.setitem(sys.modules, "slicer", fake)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    runpy.run_path(str(script))
    assert not list(tmp_path.rglob("PWNED"))
    loaded = [call.args[0] for call in fake.util.loadVolume.call_args_list]
    assert Path(loaded[0]) == image  # the name arrives as data, intact
    assert Path(loaded[1]) == out / "heatmap.nii.gz"
    compile(script.read_text(), str(script), "exec")
    assert len(script.read_text().splitlines()[2]) < 400  # the usage comment stays one line


def test_loose_scene_refers_to_the_input_by_a_relative_path(tmp_path: Path, kits_case: Path, kits_model: Path) -> None:
    out = explain_case(kits_case, tmp_path / "out", class_name="kidney", model=kits_model, pixels="image")
    scene = (out / "scene.mrml").read_text()
    relative = os.path.relpath(kits_case, out)
    assert f'fileName="{relative}"' in scene and str(kits_case) not in scene
    assert (out / relative).resolve() == kits_case.resolve()


def test_evaluate_overwrite_keeps_inputs_and_foreign_folders(tmp_path: Path) -> None:
    from medcam.evaluate.command import prepare_folder

    fresh = tmp_path / "evaluation"
    prepare_folder(fresh, overwrite=False)
    assert (fresh / MARKER).is_file()  # marked, so a later --overwrite recognises it
    (fresh / "data").mkdir()
    with pytest.raises(UserError, match="would delete the input"):
        prepare_folder(fresh, overwrite=True, inputs=[str(fresh / "data")])
    assert (fresh / "data").is_dir()
    prepare_folder(fresh, overwrite=True, inputs=[str(tmp_path / "elsewhere")])
    assert sorted(p.name for p in fresh.iterdir()) == [MARKER]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    prepare_folder(mine, overwrite=False)  # resuming into a foreign folder does not mark it as medcam's
    assert not (mine / MARKER).exists()
    with pytest.raises(UserError, match="not an evaluation folder"):
        prepare_folder(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"


def test_a_single_slice_may_have_zero_thickness(tmp_path: Path) -> None:
    from hostile_files import dims, write_nifti

    from medcam.volumes.io import VolumeError, load_volume

    flat = np.arange(64, dtype=np.float32).reshape(8, 8, 1)
    one = write_nifti(tmp_path / "one.nii", data=flat, sform_code=0, pixdim=(1, 1.5, 1.5, 0, 1, 1, 1, 1))
    assert load_volume(one).spatial_shape == (8, 8, 1)  # 2D stored as 3D: nothing is placed by the thickness
    two = write_nifti(tmp_path / "two.nii", data=flat, sform_code=0, pixdim=(1, 0, 1.5, 1, 1, 1, 1, 1))
    with pytest.raises(VolumeError, match="pixdim"):
        load_volume(two)
    assert dims(8, 8) == (2, 8, 8, 1, 1, 1, 1, 1)
