"""The Slicer review package is well-formed: XML parses, references resolve, files exist, script runs.

Slicer itself cannot run here; these tests check the scene against the node and attribute
names of Slicer's MRML writers and run ``load_in_slicer.py`` against a stand-in ``slicer``
module that checks every file it is asked to load.
"""

from __future__ import annotations

import json
import runpy
import sys
import types
import zipfile
from pathlib import Path
from typing import Any
from unittest import mock
from xml.etree import ElementTree

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from medcam.review.slicer import colormap_table

BUILT_IN_NODES = {"vtkMRMLColorTableNodeGrey"}


def parse(text: str) -> dict[str, ElementTree.Element]:
    root = ElementTree.fromstring(text)
    assert root.tag == "MRML"
    nodes: dict[str, ElementTree.Element] = {}
    for node in root:
        node_id = node.attrib["id"]
        assert node_id not in nodes, f"duplicate node id {node_id}"
        nodes[node_id] = node
    return nodes


def references(node: ElementTree.Element) -> dict[str, str]:
    """Slicer's ``references="role:id;role:id;"`` attribute as a dict."""
    text = node.attrib.get("references", "")
    return dict(part.split(":", 1) for part in text.split(";") if part)


def check_scene(nodes: dict[str, ElementTree.Element], exists: Any) -> None:
    for node in nodes.values():
        for role, target in references(node).items():
            assert target in nodes or target in BUILT_IN_NODES, f"{node.attrib['id']} {role} -> {target}"
        color = node.attrib.get("colorNodeID")
        if color is not None:
            assert color in nodes or color in BUILT_IN_NODES, color
        if node.tag.endswith("Storage"):
            assert exists(node.attrib["fileName"].replace("%20", " ")), node.attrib["fileName"]


def by_tag(nodes: dict[str, ElementTree.Element], tag: str) -> list[ElementTree.Element]:
    return [n for n in nodes.values() if n.tag == tag]


def test_output_folder_has_every_file_the_issue_lists(explained_case: Path) -> None:
    names = {p.name for p in explained_case.iterdir()}
    expected = {
        "heatmap.nii.gz",
        "prediction.nii.gz",
        "prediction.seg.nrrd",
        "preview.png",
        "summary.json",
        "review.mrb",
        "scene.mrml",
        "colormap_inferno.ctbl",
        "load_in_slicer.py",
    }
    assert expected <= names
    summary = json.loads((explained_case / "summary.json").read_text())
    assert summary["schema_version"] == 1
    for key in ("method", "class", "pixel_set", "layers", "input", "timings_s", "versions", "seed", "outputs"):
        assert key in summary, key
    assert summary["pixel_set"]["definition"] == "box:3,8,5:9,24,20"
    assert summary["input"]["orientation"] == "IPL"


def test_scene_shows_image_heatmap_and_segmentation(explained_case: Path) -> None:
    nodes = parse((explained_case / "scene.mrml").read_text())
    check_scene(nodes, lambda name: (explained_case / name).is_file() or Path(name).is_file())
    volumes = {n.attrib["name"]: n for n in by_tag(nodes, "Volume")}
    assert set(volumes) >= {"image", "medcam heatmap"}
    heat = volumes["medcam heatmap"]
    display = nodes[references(heat)["display"]]
    assert display.attrib["applyThreshold"] == "1" and float(display.attrib["lowerThreshold"]) == pytest.approx(0.2)
    assert display.attrib["autoWindowLevel"] == "0" and float(display.attrib["window"]) == 1.0
    color = nodes[display.attrib["colorNodeID"]]
    assert color.tag == "ColorTable" and color.attrib["type"] == "14"
    assert nodes[references(color)["storage"]].attrib["fileName"] == "colormap_inferno.ctbl"
    storage = nodes[references(heat)["storage"]]
    assert storage.attrib["fileName"] == "heatmap.nii.gz"
    composites = by_tag(nodes, "SliceComposite")
    assert {c.attrib["singletonTag"] for c in composites} == {"Red", "Yellow", "Green"}
    for composite in composites:
        refs = references(composite)
        assert refs["backgroundVolume"] == volumes["image"].attrib["id"]
        assert refs["foregroundVolume"] == heat.attrib["id"]
        assert float(composite.attrib["foregroundOpacity"]) == 0.5
    (segmentation,) = by_tag(nodes, "Segmentation")
    assert nodes[references(segmentation)["storage"]].attrib["fileName"] == "prediction.seg.nrrd"
    assert nodes[references(segmentation)["display"]].tag == "SegmentationDisplay"


def test_slices_are_centred_on_the_heatmap_maximum(explained_case: Path) -> None:
    nodes = parse((explained_case / "scene.mrml").read_text())
    heat = nib.load(str(explained_case / "heatmap.nii.gz"))
    data = np.asarray(heat.dataobj)
    peak = np.unravel_index(int(np.argmax(data)), data.shape)
    image = sitk.ReadImage(str(explained_case / "heatmap.nii.gz"))
    lps = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in peak))
    ras = (-lps[0], -lps[1], lps[2])
    for node in by_tag(nodes, "Slice"):
        matrix = np.array([float(v) for v in node.attrib["sliceToRAS"].split()]).reshape(4, 4)
        np.testing.assert_allclose(matrix[:3, 3], ras, atol=1e-6)
        assert abs(np.linalg.det(matrix[:3, :3])) == pytest.approx(1.0)


def test_bundle_is_self_contained(explained_case: Path, kits_case: Path) -> None:
    with zipfile.ZipFile(explained_case / "review.mrb") as bundle:
        names = set(bundle.namelist())
        scenes = [n for n in names if n.endswith(".mrml")]
        assert scenes == ["review/review.mrml"]
        nodes = parse(bundle.read("review/review.mrml").decode())
        check_scene(nodes, lambda name: f"review/{name}" in names)
        storages = {n.attrib["fileName"] for n in nodes.values() if n.tag.endswith("Storage")}
        assert "Data/image.nii.gz" in storages
        assert bundle.read("review/Data/image.nii.gz") == kits_case.read_bytes()
        assert bundle.read("review/Data/heatmap.nii.gz") == (explained_case / "heatmap.nii.gz").read_bytes()
        assert bundle.read("review/Data/prediction.seg.nrrd") == (explained_case / "prediction.seg.nrrd").read_bytes()


def test_segmentation_file_has_named_segments_on_the_input_grid(explained_case: Path, kits_case: Path) -> None:
    seg = sitk.ReadImage(str(explained_case / "prediction.seg.nrrd"))
    source = sitk.ReadImage(str(kits_case))
    assert seg.GetSize() == source.GetSize()
    np.testing.assert_allclose(seg.GetOrigin(), source.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(seg.GetDirection(), source.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(seg.GetSpacing(), source.GetSpacing(), atol=1e-6)
    names = [seg.GetMetaData(f"Segment{i}_Name") for i in range(3)]
    values = [seg.GetMetaData(f"Segment{i}_LabelValue") for i in range(3)]
    assert names == ["kidney", "tumor", "cyst"] and values == ["1", "2", "3"]
    labels = np.asarray(nib.load(str(explained_case / "prediction.nii.gz")).dataobj)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg).transpose(), labels)


def test_colour_table_format() -> None:
    lines = [line for line in colormap_table("inferno").splitlines() if not line.startswith("#")]
    assert len(lines) == 256
    for index, line in enumerate(lines):
        fields = line.split()
        assert int(fields[0]) == index and len(fields) == 6
        assert all(0 <= int(v) <= 255 for v in fields[2:])


def test_load_script_runs_against_a_stand_in_slicer(explained_case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    def load(path: str, properties: dict | None = None) -> mock.MagicMock:
        assert Path(path).is_file(), path
        loaded.append(Path(path).name)
        return mock.MagicMock(name=Path(path).name)

    util = types.SimpleNamespace(
        loadVolume=load,
        loadColorTable=load,
        loadSegmentation=load,
        setSliceViewerLayers=mock.MagicMock(),
        resetSliceViews=mock.MagicMock(),
    )
    fake = types.ModuleType("slicer")
    fake.util = util  # type: ignore[attr-defined]
    fake.mrmlScene = object()  # type: ignore[attr-defined]
    fake.vtkMRMLSliceNode = mock.MagicMock()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slicer", fake)
    namespace = runpy.run_path(str(explained_case / "load_in_slicer.py"))
    assert loaded == ["imaging.nii.gz", "colormap_inferno.ctbl", "heatmap.nii.gz", "prediction.seg.nrrd"]
    kwargs = util.setSliceViewerLayers.call_args.kwargs
    assert kwargs["foregroundOpacity"] == 0.5
    display = namespace["overlays"]["medcam heatmap"].GetDisplayNode()
    display.SetLowerThreshold.assert_called_with(0.2)
    display.SetApplyThreshold.assert_called_with(True)
    fake.vtkMRMLSliceNode.JumpAllSlices.assert_called_once()  # type: ignore[attr-defined]


def test_dicom_series_gets_a_one_file_copy_in_the_package(tmp_path: Path, kits_model: Path) -> None:
    from volume_phantoms import header_variants

    from medcam.pipeline import explain_case

    series = header_variants()["dicom_series"](tmp_path)
    out = explain_case(series, tmp_path / "out", class_name="kidney", model=kits_model, pixels="image")
    copy = sitk.ReadImage(str(out / "image.nrrd"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    original = reader.Execute()
    np.testing.assert_allclose(copy.GetOrigin(), original.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(copy.GetDirection(), original.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(copy), sitk.GetArrayFromImage(original))
    nodes = parse((out / "scene.mrml").read_text())
    check_scene(nodes, lambda name: (out / name).is_file())
    assert any(n.attrib.get("fileName") == "image.nrrd" for n in nodes.values())
    with zipfile.ZipFile(out / "review.mrb") as bundle:
        assert bundle.read("review/Data/image.nrrd") == (out / "image.nrrd").read_bytes()
