"""The Slicer package, read by 3D Slicer's own MRML library (PyPI ``slicer-core``): values, not just no errors.

Slicer accepts a broken slice-view reference or malformed colour rows without a word, so
every check here compares what Slicer read with what medcam meant: node references,
slice-view layers and opacity, colour-table values, threshold, window, geometry, voxel
values and segment names and colours. Slicer runs in a subprocess
(``slicer_client_driver.py``); without ``slicer-core`` the test is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import nibabel as nib
import numpy as np
import pytest
from volume_phantoms import KITS_LABELS, write_kits_case

from medcam.pipeline import explain_case
from medcam.review.bundle import SEGMENT_COLORS
from medcam.version import __version__

DRIVER = Path(__file__).with_name("slicer_client_driver.py")


def read_with_slicer(tmp_path: Path, *scenes: Path) -> tuple[list[dict[str, Any]], str]:
    if importlib.util.find_spec("slicer_core") is None:
        pytest.skip("slicer-core (3D Slicer's MRML library) is not installed; `pip install -e .[dev]` installs it")
    out = tmp_path / "slicer.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(out), *map(str, scenes)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    if done.returncode != 0 and "ImportError" in done.stderr:
        pytest.skip(f"slicer-core cannot load here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stderr


@pytest.fixture(scope="module")
def review(tmp_path_factory: pytest.TempPathFactory, kits_model: Path) -> dict[str, Any]:
    """A case and its review folder side by side, then moved together: Slicer reads both packages."""
    root = tmp_path_factory.mktemp("slicer_client") / "study"
    case = write_kits_case(root / "case \"q\" & <x> 100% 'é'")  # quoted, escaped and URL-encoded in the scene
    out = explain_case(case, root / "review", class_name="tumor", model=kits_model, pixels="box:3,8,5:9,24,20")
    kept = root.parent / "kept"  # the case as written, for the comparisons
    shutil.copytree(root, kept)
    moved = root.parent / "moved_study"
    shutil.move(root, moved)  # the study moves: a loose scene with absolute paths would lose its CT
    results, stderr = read_with_slicer(root.parent, moved / "review" / "review.mrb", moved / "review" / "scene.mrml")
    return {
        "case": kept / case.relative_to(root),
        "out": kept / out.relative_to(root),
        "bundle": results[0],
        "loose": results[1],
        "stderr": stderr,
    }


def test_slicer_reads_the_bundle_without_a_message(review: dict[str, Any]) -> None:
    for scene in (review["bundle"], review["loose"]):
        assert scene["ok"] and scene["messages"] == ""
        assert scene["version"] == f"medcam {__version__}"  # the header names what wrote it
    noise = [line for line in review["stderr"].splitlines() if "ERR|" in line or "WARN|" in line]
    assert noise == []


def test_volumes_have_the_input_geometry_and_the_written_voxels(review: dict[str, Any]) -> None:
    image = nib.load(str(review["case"]))
    heat = nib.load(str(review["out"] / "heatmap.nii.gz"))
    for scene in (review["bundle"], review["loose"]):  # the loose scene found the CT by its relative path
        volumes = scene["volumes"]
        assert set(volumes) == {"image", "medcam heatmap"}
        for name, source in (("image", image), ("medcam heatmap", heat)):
            volume = volumes[name]
            assert tuple(volume["dims"]) == image.shape
            np.testing.assert_allclose(volume["ijk_to_ras"], image.affine, atol=1e-4)
            np.testing.assert_allclose(np.asarray(volume["values"]), source.get_fdata(), atol=1e-5)
    assert float(np.max(review["bundle"]["volumes"]["medcam heatmap"]["values"])) == pytest.approx(1.0)


def test_displays_colours_and_threshold_are_as_documented(review: dict[str, Any]) -> None:
    scene = review["bundle"]
    image, heat = scene["volumes"]["image"], scene["volumes"]["medcam heatmap"]
    assert image["color"] == "vtkMRMLColorTableNodeGrey" and image["color_found"]
    assert heat["color_found"] and scene["colors"][heat["color"]]["name"] == "medcam inferno"
    assert (heat["window"], heat["level"]) == (1.0, 0.5)
    assert heat["apply_threshold"] and heat["threshold"] == pytest.approx([0.2, 1.0])
    table = np.asarray(scene["colors"][heat["color"]]["table"])
    inferno = np.asarray([matplotlib.colormaps["inferno"](i / 255) for i in range(256)])
    assert table.shape == (256, 4)
    np.testing.assert_allclose(table[:, :3], inferno[:, :3], atol=0.5 / 255 + 1e-6)  # 8-bit rows of the .ctbl
    np.testing.assert_allclose(table[:, 3], 1.0)


def test_slice_views_show_the_heatmap_over_the_image_at_its_maximum(review: dict[str, Any]) -> None:
    scene = review["bundle"]
    image_id, heat_id = scene["volumes"]["image"]["id"], scene["volumes"]["medcam heatmap"]["id"]
    assert set(scene["composites"]) == {"Red", "Yellow", "Green"}
    for layers in scene["composites"].values():
        assert layers == {"background": image_id, "foreground": heat_id, "opacity": 0.5}
    heat = nib.load(str(review["out"] / "heatmap.nii.gz"))
    peak = np.unravel_index(int(np.argmax(np.asarray(heat.dataobj))), heat.shape)
    focus = heat.affine @ np.array([*peak, 1.0])
    orientations = {view: s["orientation"] for view, s in scene["slices"].items()}
    assert orientations == {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
    for view in scene["slices"].values():
        np.testing.assert_allclose(np.asarray(view["slice_to_ras"])[:3, 3], focus[:3], atol=1e-4)


def test_segments_load_with_names_colours_and_reference_geometry(review: dict[str, Any]) -> None:
    scene = review["bundle"]
    names = [name for name, value in sorted(KITS_LABELS.items(), key=lambda kv: kv[1]) if value]
    assert [s["name"] for s in scene["segments"]] == names
    for segment in scene["segments"]:
        np.testing.assert_allclose(segment["color"], SEGMENT_COLORS[segment["name"]], atol=1e-6)
        assert segment["reference"] == scene["volumes"]["image"]["id"]
