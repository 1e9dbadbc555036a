"""A hostile-input corpus: every broken or malicious input is one line, exit status 2, and harmless.

Each case feeds one bad file, folder, option, checkpoint or datalist to ``medcam`` (in
process, through :func:`medcam.cli.main`) and asserts: exit status 2, exactly one line on
stderr that starts with ``medcam: error: `` (also at the file-descriptor level, where C
libraries write), no traceback, nothing written outside ``--out`` and nothing changed in
the corpus folder. The files are tiny (8^3 voxels); headers do the lying
(:mod:`hostile_files`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile_files import checkpoint_cases, dicom_cases, itk_cases, nifti_cases, picture_cases
from volume_phantoms import write_dicom_series, write_kits_case

from medcam.cli import main

Args = Callable[[dict[str, Path]], list[str]]


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    argv: Args  # files of the corpus -> arguments after "medcam"
    expect: str = ""  # a piece of the message, when the case has a specific one


def explain(*extra: str, model: bool = True) -> Args:
    """``explain`` with the corpus's tiny model and a class, plus ``extra`` ({name} -> a corpus file)."""

    def argv(files: dict[str, Path]) -> list[str]:
        args = ["explain", *(a.format(**{k: str(v) for k, v in files.items()}) for a in extra)]
        if "--class" not in args:
            args += ["--class", "kidney"]
        if model and "--model" not in args:
            args += ["--model", str(files["model"])]
        if "--out" not in args:
            args += ["--out", str(files["out"])]
        return [*args, "--no-progress"]

    return argv


def file_cases(kind: str, makers: dict[str, Callable[[Path], Path]], option: str = "--volume") -> list[Case]:
    return [Case(kind, name, explain(option, "{" + name + "}"), "") for name in makers]


NIFTI = nifti_cases()
DATATYPES = {k for k in NIFTI if k.startswith("dtype_") or k.endswith("_voxels")}
PICTURES = picture_cases()
ITK = itk_cases()
DICOM = dicom_cases(write_dicom_series)

CASES: list[Case] = [
    *file_cases("headers", {k: v for k, v in NIFTI.items() if k not in DATATYPES}),
    *file_cases("datatypes", {k: v for k, v in NIFTI.items() if k in DATATYPES}),
    *file_cases("pictures", PICTURES, "--image"),
    *file_cases("nrrd_mha", ITK),
    *file_cases("dicom", DICOM),
]

OPTIONS: list[tuple[str, list[str], str]] = [
    ("seed_65_bits", ["--volume", "{good}", "--seed", str(2**64)], "--seed"),
    ("seed_negative", ["--volume", "{good}", "--seed", "-1"], "--seed"),
    ("seed_text", ["--volume", "{good}", "--seed", "1e3"], "not an integer"),
    ("overlap_two", ["--volume", "{good}", "--overlap", "2"], "overlap"),
    ("overlap_negative", ["--volume", "{good}", "--overlap", "-0.5"], "overlap"),
    ("overlap_nan", ["--volume", "{good}", "--overlap", "nan"], "overlap"),
    ("overlap_text", ["--volume", "{good}", "--overlap", "half"], "--overlap"),
    ("window_batch_zero", ["--volume", "{good}", "--window-batch", "0"], "window"),
    ("window_batch_negative", ["--volume", "{good}", "--window-batch", "-3"], "window"),
    ("montage_slices_zero", ["--volume", "{good}", "--montage-slices", "0"], "montage"),
    ("montage_slices_text", ["--volume", "{good}", "--montage-slices", "many"], "--montage-slices"),
    ("normalize_unknown", ["--volume", "{good}", "--normalize", "zscore"], "--normalize"),
    ("blend_unknown", ["--volume", "{good}", "--blend", "cubic"], "--blend"),
    ("unknown_flag", ["--volume", "{good}", "--frobnicate"], "--frobnicate"),
    ("class_empty", ["--volume", "{good}", "--class", ""], "class"),
    ("class_newline", ["--volume", "{good}", "--class", "tu\nmor"], "tu\\nmor"),
    ("class_unknown", ["--volume", "{good}", "--class", "liver"], "liver"),
    ("pixels_prob_text", ["--volume", "{good}", "--pixels", "prob>abc"], "prob>abc"),
    ("pixels_prob_two", ["--volume", "{good}", "--pixels", "prob>2"], "threshold"),
    ("pixels_box_short", ["--volume", "{good}", "--pixels", "box:1,2"], "box"),
    ("pixels_mask_missing", ["--volume", "{good}", "--pixels", "mask:{dir}/none.nii.gz"], "none.nii.gz"),
    ("pixels_voxel_outside", ["--volume", "{good}", "--pixels", "voxel:99,99,99"], "voxel"),
    ("pixels_component_negative", ["--volume", "{good}", "--pixels", "component:-1"], "component"),
    ("pixels_empty", ["--volume", "{good}", "--pixels", ""], "pixel set"),
    ("layer_empty", ["--volume", "{good}", "--layer", ""], "layer"),
    ("layer_traversal", ["--volume", "{good}", "--layer", "../../etc"], "layer"),
    ("levels_empty", ["--volume", "{good}", "--levels", ""], "--levels"),
    ("levels_unknown", ["--volume", "{good}", "--levels", "nosuch"], "nosuch"),
    ("levels_and_layer", ["--volume", "{good}", "--levels", "enc1", "--layer", "model.0"], "not both"),
    ("method_empty", ["--volume", "{good}", "--method", ""], "method"),
    ("method_unknown", ["--volume", "{good}", "--method", "gradcam\n--rm"], "gradcam\\n--rm"),
    ("method_option_no_value", ["--volume", "{good}", "--method-option", "nokey"], "nokey"),
    ("method_option_no_key", ["--volume", "{good}", "--method-option", "=1"], "=1"),
    ("method_option_unknown", ["--volume", "{good}", "--method-option", "x=1"], "x"),
    ("method_option_bad_value", ["--volume", "{good}", "--method", "robustcam", "--method-option", "views=5"], "views"),
    ("reference_missing", ["--volume", "{good}", "--reference", "{dir}/none.nii.gz"], "none.nii.gz"),
    ("reference_label_text", ["--volume", "{good}", "--reference", "{good}:abc"], "abc"),
    ("reference_wrong_grid", ["--volume", "{good}", "--reference", "{nifti_small}"], "grid"),
    ("reference_with_batch", ["--folder", "{dir}/batch_ok", "--reference", "{good}"], "--reference"),
    ("device_empty", ["--volume", "{good}", "--device", ""], "--device"),
    ("device_tpu", ["--volume", "{good}", "--device", "tpu"], "--device"),
    ("device_cuda_99", ["--volume", "{good}", "--device", "cuda:99"], "cuda"),
    ("volume_empty", ["--volume", ""], "empty"),
    ("image_empty", ["--image", ""], "empty"),
    ("model_empty", ["--volume", "{good}", "--model", ""], ""),
    ("two_sources", ["--volume", "{good}", "--image", "{good}"], "not allowed with"),
    ("no_source", [], "one of the arguments"),
    ("nul_in_path", ["--volume", "{good}\0x"], "\\x00"),
]
CASES += [Case("options", name, explain(*args), expect) for name, args, expect in OPTIONS]
CASES += [
    Case("options", "no_command", lambda f: [], "COMMAND"),
    Case("options", "unknown_command", lambda f: ["frobnicate"], "frobnicate"),
    Case(
        "options", "missing_class", lambda f: ["explain", "--volume", str(f["good"]), "--out", str(f["out"])], "--class"
    ),
    Case(
        "options",
        "evaluate_missing_config",
        lambda f: ["evaluate", "--config", str(f["dir"] / "none.yaml")],
        "none.yaml",
    ),
    Case(
        "options",
        "evaluate_samples_text",
        lambda f: ["evaluate", "--config", "x.yaml", "--samples", "all"],
        "--samples",
    ),
    Case("options", "demo_seed_huge", lambda f: ["demo", "--out", str(f["out"]), "--seed", str(2**70)], "--seed"),
]

CONFIGS = {
    "yaml_syntax": "data: {kind: kits23\ntarget: [unclosed\n  - x: :\n",
    "yaml_not_mapping": "- just\n- a list\n",
    "yaml_scalar": "42\n",
    "yaml_unknown_section": "surprise: 1\ndata: {kind: kits23, root: x}\ntarget: {class: tumor}\nevaluation: {}\n",
    "yaml_data_number": "data: 5\ntarget: {class: tumor}\nevaluation: {}\n",
    "yaml_tabs": "data:\n\t kind: kits23\n",
    "yaml_binary": "\udcff\udcfe\x00\x01",
    "yaml_python_tag": "data: !!python/object/apply:os.system ['touch PWNED']\n",
}
CASES += [
    Case("configs", name, (lambda n: lambda f: ["evaluate", "--config", str(f[n]), "--out", str(f["out"])])(name), "")
    for name in CONFIGS
]

CHECKPOINTS = [
    "ckpt_meta_not_json", "ckpt_meta_not_string", "ckpt_meta_list", "ckpt_no_state_dict", "ckpt_no_metadata",
    "ckpt_state_not_dict", "ckpt_state_empty", "ckpt_format_version_9", "ckpt_other_format",
    "ckpt_missing_architecture", "ckpt_missing_labels", "ckpt_missing_arguments", "ckpt_label_not_integer",
    "ckpt_label_float", "ckpt_label_bool", "ckpt_label_negative", "ckpt_labels_list", "ckpt_in_channels_absurd",
    "ckpt_out_channels_absurd", "ckpt_channels_text", "ckpt_spatial_dims_7", "ckpt_task_unknown",
    "ckpt_architecture_unknown", "ckpt_arguments_not_dict", "ckpt_orientation_bad", "ckpt_orientation_repeated",
    "ckpt_spacing_zero", "ckpt_spacing_text", "ckpt_patch_negative", "ckpt_patch_text", "ckpt_unknown_key",
    "ckpt_preprocessing_list", "ckpt_regions_bad", "ckpt_activation_unknown", "ckpt_torch_list",
    "ckpt_pickled_object", "ckpt_nifti_file", "ckpt_zip_bomb", "ckpt_random_zip", "ckpt_empty", "ckpt_truncated",
    "ckpt_text", "ckpt_folder",
]  # fmt: skip
CASES += [Case("checkpoints", name, explain("--volume", "{good}", "--model", "{" + name + "}")) for name in CHECKPOINTS]
INFO = ["ckpt_meta_not_json", "ckpt_in_channels_absurd", "ckpt_out_channels_absurd", "ckpt_zip_bomb", "ckpt_folder"]
CASES += [
    Case("checkpoints", f"info_{name}", (lambda n: lambda f: ["info", "--model", str(f[n])])(name)) for name in INFO
]
CASES += [
    Case("paths", "levels_out_foreign", lambda f: ["levels", "--volume", str(f["good"]), "--model", str(f["model"]),
         "--class", "kidney", "--reference", str(f["good"]), "--out", str(f["foreign"]), "--overwrite"],
         "replaces only medcam"),
]  # fmt: skip

DATALISTS: dict[str, object] = {
    "dl_training_int": {"training": 5},
    "dl_training_text": {"training": "abc"},
    "dl_cases_object": {"cases": {"a": 1}},
    "dl_null": None,
    "dl_number": 5,
    "dl_text": "cases",
    "dl_empty_list": [],
    "dl_number_entry": [5],
    "dl_image_number": [{"image": 5}],
    "dl_image_empty": [{"image": ""}],
    "dl_image_list": [{"image": ["a.nii.gz"]}],
    "dl_image_missing": [{"image": "missing.nii.gz"}],
    "dl_id_traversal": [{"image": "GOOD", "id": "../../escaped"}],
    "dl_id_absolute": [{"image": "GOOD", "id": "/tmp/medcam-escaped"}],
    "dl_id_dot": [{"image": "GOOD", "id": "."}],
    "dl_id_dotdot": [{"image": "GOOD", "id": ".."}],
    "dl_id_newline": [{"image": "GOOD", "id": "a\nb"}],
    "dl_id_bool": [{"image": "GOOD", "id": True}],
    "dl_id_object": [{"image": "GOOD", "id": {"x": 1}}],
    "dl_id_duplicate": [{"image": "GOOD", "id": "a"}, {"image": "GOOD", "id": "a"}],
    "dl_id_case_duplicate": [{"image": "GOOD", "id": "Case"}, {"image": "GOOD", "id": "case"}],
    "dl_id_backslash": [{"image": "GOOD", "id": "..\\..\\x"}],
    "dl_id_hidden": [{"image": "GOOD", "id": ".medcam-output"}],
    "dl_derived_duplicate": ["GOOD", "GOOD"],
    "dl_broken_image": [{"image": "BROKEN", "id": "broken"}],
}
RAW_DATALISTS = {
    "dl_invalid_json": b"{",
    "dl_binary": b"\xff\xfe\x00\x01\x02",
    "dl_empty_file": b"",
    "dl_deep_nesting": b"[" * 100000 + b"]" * 100000,
}
CASES += [
    Case("datalists", name, (lambda n: explain("--datalist", "{" + n + "}"))(name))
    for name in [*DATALISTS, *RAW_DATALISTS]
]
CASES += [
    Case("datalists", "dl_missing_file", explain("--datalist", "{dir}/none.json"), "none.json"),
    Case("datalists", "dl_is_folder", explain("--datalist", "{dir}"), ""),
]

FOLDERS = [
    ("folder_missing", "{dir}/none", "none"),
    ("folder_is_file", "{good}", "not a folder"),
    ("folder_empty", "{folder_empty}", "no images"),
    ("folder_hidden_only", "{folder_hidden_only}", "no images"),
    ("folder_text_only", "{folder_text_only}", "no images"),
    ("folder_broken_image", "{folder_broken_image}", "case"),
    ("folder_dot_name", "{folder_dot_name}", "no images"),
    ("folder_newline_name", "{folder_newline_name}", "case id"),
    ("folder_case_duplicate", "{folder_case_duplicate}", "appears twice"),
    ("folder_nnunet_duplicate", "{folder_nnunet_duplicate}", "appears twice"),
    ("folder_hostile_header", "{folder_hostile_header}", "case"),
]
CASES += [Case("folders", name, explain("--folder", folder), expect) for name, folder, expect in FOLDERS]

PATHS = [
    ("out_is_file", ["--volume", "{good}", "--out", "{good}"], "is a file"),
    ("out_under_file", ["--volume", "{good}", "--out", "{good}/x"], "is a file"),
    ("out_empty", ["--volume", "{good}", "--out", ""], "--out is empty"),
    ("out_nul", ["--volume", "{good}", "--out", "a\0b"], "NUL"),
    ("out_foreign_overwrite", ["--volume", "{good}", "--out", "{foreign}", "--overwrite"], "replaces only medcam"),
    ("out_exists", ["--volume", "{good}", "--out", "{foreign}"], "already exists"),
    ("out_symlink_overwrite", ["--volume", "{good}", "--out", "{link}", "--overwrite"], "symbolic link"),
    ("out_holds_input", ["--volume", "{inside}", "--out", "{previous}", "--overwrite"], "would delete the input"),
    ("out_dev_null", ["--volume", "{good}", "--out", "/dev/null/x"], ""),
    ("out_proc", ["--volume", "{good}", "--out", "/proc/medcam-out"], ""),
    ("volume_newline_path", ["--volume", "{dir}/no\nsuch.nii.gz"], "no\\nsuch"),
    ("volume_unknown_suffix", ["--volume", "{dir}/notes.txt"], "unknown image type"),
    ("volume_fifo", ["--volume", "{fifo}"], "not a regular file"),
    ("volume_dev_null", ["--volume", "/dev/null"], ""),
    ("model_folder", ["--volume", "{good}", "--model", "{dir}"], "is a folder"),
    ("batch_out_is_file", ["--folder", "{dir}/batch_ok", "--out", "{good}"], "is a file"),
    ("batch_out_empty", ["--folder", "{dir}/batch_ok", "--out", ""], "--out is empty"),
]
CASES += [Case("paths", name, explain(*args), expect) for name, args, expect in PATHS]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, kits_model: Path) -> dict[str, Path]:
    """Every hostile file of the corpus, made once (a few MB in all)."""
    root = tmp_path_factory.mktemp("corpus")
    files: dict[str, Path] = {"dir": root, "model": kits_model}
    files["good"] = write_kits_case(root / "good_case")
    for group in (NIFTI, PICTURES, ITK, DICOM):
        for name, make in group.items():
            folder = root / name
            folder.mkdir()
            files[name] = make(folder)
    for name, make in checkpoint_cases(kits_model).items():
        folder = root / name
        folder.mkdir()
        files[name] = make(folder)
    files["fifo"] = files["fifo"]
    (root / "notes.txt").write_text("not an image")
    small = root / "small"
    small.mkdir()
    from hostile_files import write_nifti

    files["nifti_small"] = write_nifti(small / "small.nii.gz")
    broken = root / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    for name, text in CONFIGS.items():
        path = root / f"{name}.yaml"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        files[name] = path
    for name, content in DATALISTS.items():
        text = json.dumps(content).replace('"GOOD"', json.dumps(str(files["good"])))
        text = text.replace('"BROKEN"', json.dumps(str(broken)))
        (root / f"{name}.json").write_text(text)
        files[name] = root / f"{name}.json"
    for name, raw in RAW_DATALISTS.items():
        (root / f"{name}.json").write_bytes(raw)
        files[name] = root / f"{name}.json"
    folders = {
        "folder_empty": {},
        "folder_hidden_only": {".hidden.nii.gz": files["good"]},
        "folder_text_only": {"a.txt": None},
        "folder_broken_image": {"broken.nii.gz": broken},
        "folder_dot_name": {"..nii.gz": files["good"]},
        "folder_newline_name": {"a\nb.nii.gz": files["good"]},
        "folder_case_duplicate": {"a.nii.gz": files["good"], "A.nii.gz": files["good"]},
        "folder_nnunet_duplicate": {"a.nii.gz": files["good"], "a_0000.nii.gz": files["good"]},
        "folder_hostile_header": {"huge.nii.gz": files["dims_huge_gz"]},
        "batch_ok": {"ok.nii.gz": files["good"]},
    }
    for name, entries in folders.items():
        folder = root / name
        folder.mkdir()
        for entry, source in entries.items():
            if source is None:
                (folder / entry).write_text("text")
            else:
                shutil.copy(source, folder / entry)
        files[name] = folder
    foreign = root / "foreign_out"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("years of work")
    files["foreign"] = foreign
    marked = root / "marked_out"
    marked.mkdir()
    (marked / ".medcam-output").write_text("{}")
    (root / "link_out").symlink_to(marked)
    files["link"] = root / "link_out"
    previous = root / "previous_out"
    previous.mkdir()
    (previous / ".medcam-output").write_text("{}")
    shutil.copy(files["good"], previous / "inside.nii.gz")
    files["previous"], files["inside"] = previous, previous / "inside.nii.gz"
    return files


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (links not followed)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            state[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return state


def test_the_corpus_is_large_and_covers_every_kind() -> None:
    kinds = {c.kind for c in CASES}
    assert len(CASES) >= 150, len(CASES)
    assert {"headers", "datatypes", "pictures", "nrrd_mha", "dicom", "options", "checkpoints", "datalists",
            "folders", "paths"} <= kinds  # fmt: skip
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}-{c.name}" for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_harmless(
    case: Case, corpus: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # anything written "here" would show up below
    files = {**corpus, "out": tmp_path / "out"}
    before = snapshot(corpus["dir"])
    code = main(case.argv(files))
    captured = capfd.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, (code, captured.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("medcam: error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert case.expect in lines[0], lines[0]
    assert snapshot(corpus["dir"]) == before  # nothing deleted, changed or added among the inputs
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written in ([], ["out"]), written  # nothing outside --out
    if written:
        assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".medcam-output"]
    assert not Path("/tmp/medcam-escaped").exists()
    assert not list(tmp_path.rglob("PWNED"))
