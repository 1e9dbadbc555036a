"""Load medcam's Slicer scenes with 3D Slicer's own MRML library (PyPI ``slicer-core``) and dump what it read.

Run as ``python slicer_client_driver.py OUT.json SCENE [SCENE ...]`` (a ``.mrb`` is read with
``vtkMRMLScene.ReadFromMRB``, a ``.mrml`` with ``Connect``); ``test_slicer_client.py`` runs it
in a subprocess, so VTK never loads into the test process, and asserts the values.
The scene gets what Slicer's application sets up before it reads a scene: an application
logic, the Colors logic (its default colour nodes, e.g. ``vtkMRMLColorTableNodeGrey``), a
remote-IO logic with its data-IO manager, and the Segmentations logic (node classes).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import slicer
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonMath import vtkMatrix4x4


def new_scene() -> tuple[Any, list[Any]]:
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    home = Path(tempfile.mkdtemp())
    (home / "share" / "ColorFiles").mkdir(parents=True)  # no extra colour files, and no warning about them
    (home / "share" / "TextFiles").mkdir(parents=True)
    app.SetHomeDirectory(str(home))
    app.SetShareDirectory("share")
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    colors.SetMRMLScene(scene)
    remote = slicer.vtkMRMLRemoteIOLogic()
    remote.SetMRMLScene(scene)
    remote.AddDataIOToScene()
    data_io = slicer.vtkDataIOManagerLogic()
    data_io.SetMRMLApplicationLogic(app)
    data_io.SetAndObserveDataIOManager(remote.GetDataIOManager())
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLApplicationLogic(app)
    segmentations.SetMRMLScene(scene)
    return scene, [app, colors, remote, data_io, segmentations]  # keep the logics alive


def rows(matrix: Any) -> list[list[float]]:
    return [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]


def describe(scene: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"volumes": {}, "composites": {}, "slices": {}, "segments": [], "colors": {}}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        ijk = vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijk)
        data, display = node.GetImageData(), node.GetDisplayNode()
        dims = list(data.GetDimensions()) if data else None
        values = None
        if data is not None:  # VTK stores i fastest: (k, j, i) in C order
            values = vtk_to_numpy(data.GetPointData().GetScalars()).reshape(dims[::-1]).transpose().tolist()
        out["volumes"][node.GetName()] = {
            "id": node.GetID(),
            "dims": dims,
            "ijk_to_ras": rows(ijk),
            "values": values,
            "color": display.GetColorNodeID(),
            "color_found": display.GetColorNode() is not None,
            "window": display.GetWindow(),
            "level": display.GetLevel(),
            "apply_threshold": bool(display.GetApplyThreshold()),
            "threshold": [display.GetLowerThreshold(), display.GetUpperThreshold()],
        }
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        out["composites"][node.GetLayoutName()] = {
            "background": node.GetBackgroundVolumeID(),
            "foreground": node.GetForegroundVolumeID(),
            "opacity": node.GetForegroundOpacity(),
        }
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        out["slices"][node.GetLayoutName()] = {
            "slice_to_ras": rows(node.GetSliceToRAS()),
            "orientation": node.GetOrientationString(),
        }
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetName().startswith("medcam"):
            table = []
            for k in range(node.GetNumberOfColors()):
                rgba = [0.0] * 4
                node.GetColor(k, rgba)
                table.append(rgba)
            out["colors"][node.GetID()] = {"name": node.GetName(), "table": table}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        segmentation = node.GetSegmentation()
        for s in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(s)
            out["segments"].append(
                {
                    "name": segment.GetName(),
                    "color": list(segment.GetColor()),
                    "reference": node.GetNodeReferenceID("referenceImageGeometryRef"),
                }
            )
    out["version"] = scene.GetLastLoadedVersion()
    return out


def main() -> None:
    results = []
    for path in sys.argv[2:]:
        scene, _logics = new_scene()
        messages = slicer.vtkMRMLMessageCollection()
        if path.endswith(".mrb"):
            ok = scene.ReadFromMRB(path, True, messages)
        else:
            scene.SetURL(path)
            ok = scene.Connect(messages)
        result = describe(scene)
        result["ok"] = bool(ok)
        result["messages"] = messages.GetAllMessagesAsString() if messages.GetNumberOfMessages() else ""
        results.append(result)
    Path(sys.argv[1]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
