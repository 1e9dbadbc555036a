"""The 3D Slicer review package: ``review.mrb``, ``scene.mrml``, colour tables, ``load_in_slicer.py``.

The scene shows the image as background, the heatmap as foreground (perceptual colour
map, values below a threshold transparent, opacity 0.5) in the Red, Yellow and Green
slice views centred on the map's maximum, and the predicted segmentation. Further
maps (uncertainty, agreement, ...) are loaded as extra volumes with their own colour
tables; ``load_in_slicer.py`` switches the foreground to any of them.

Node and attribute names follow Slicer's MRML writers (``vtkMRMLScalarVolumeNode``
"Volume", ``vtkMRMLScalarVolumeDisplayNode`` "VolumeDisplay",
``vtkMRMLVolumeArchetypeStorageNode`` "VolumeArchetypeStorage", ``vtkMRMLColorTableNode``
"ColorTable" of type File (14) with a ``.ctbl`` storage node, ``vtkMRMLSegmentation*``,
``vtkMRMLSliceCompositeNode`` with ``backgroundVolume``/``foregroundVolume`` references).
A ``.mrb`` is a zip whose scene file nearest the root is loaded, with file names
relative to it; ours holds ``review/review.mrml`` and ``review/Data/*``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from medcam.version import __version__
from medcam.volumes.geometry import ItkGeometry

# the MRML header names what wrote the scene (Slicer writes its own name and version there)
WRITER = f"medcam {__version__}"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Slicer's default layout colours and orientation presets (rows of the 3x3 matrices)
_VIEWS = {
    "Red": ("R", "0.952941 0.290196 0.2", "Axial", ((-1, 0, 0), (0, 1, 0), (0, 0, 1))),
    "Yellow": ("Y", "0.929412 0.835294 0.298039", "Sagittal", ((0, 0, -1), (-1, 0, 0), (0, 1, 0))),
    "Green": ("G", "0.431373 0.690196 0.294118", "Coronal", ((-1, 0, 0), (0, 0, 1), (0, 1, 0))),
}
_PRESETS = " ".join(
    f'orientationMatrix{name}="{" ".join(str(v) for row in rows for v in row)}"' for _, _, name, rows in _VIEWS.values()
)


@dataclass(frozen=True)
class Overlay:
    """A scalar map shown over the image: file, colour map and display range."""

    name: str
    file: str
    colormap: str = "inferno"
    window: tuple[float, float] = (0.0, 1.0)
    threshold: tuple[float, float] | None = (0.2, 1.0)
    opacity: float = 0.5


@dataclass(frozen=True)
class Segment:
    value: int
    name: str
    color: tuple[float, float, float]


@dataclass(frozen=True)
class ReviewScene:
    """Everything the scene shows; file names are relative to the scene unless absolute."""

    image_file: str
    geometry: ItkGeometry
    shape: tuple[int, ...]
    overlays: Sequence[Overlay]
    focus_index: tuple[int, ...]
    segmentation_file: str | None = None
    segments: Sequence[Segment] = field(default_factory=tuple)
    image_window: tuple[float, float] | None = None
    data_prefix: str = ""  # folder of the colour tables relative to the scene ("Data/" in a .mrb)

    @property
    def focus_ras(self) -> tuple[float, float, float]:
        index = np.zeros(4)
        index[3] = 1.0
        index[: len(self.focus_index)] = self.focus_index
        point = self.geometry.affine @ index
        return (float(point[0]), float(point[1]), float(point[2]))

    def field_of_view(self) -> float:
        corners = (
            np.array(np.meshgrid(*[(0.0, s - 1.0) for s in self.shape], indexing="ij")).reshape(len(self.shape), -1).T
        )
        full = np.zeros((corners.shape[0], 4))
        full[:, : corners.shape[1]] = corners
        full[:, 3] = 1.0
        world = (self.geometry.affine @ full.T).T[:, :3]
        return float((world.max(axis=0) - world.min(axis=0)).max() * 1.1 + 1.0)


def colormap_file_name(colormap: str) -> str:
    return f"colormap_{colormap}.ctbl"


def colormap_table(colormap: str, entries: int = 256) -> str:
    """A Slicer colour table (``.ctbl``: ``index name R G B A`` in 0..255) sampled from matplotlib."""
    import matplotlib

    cmap = matplotlib.colormaps[colormap]
    lines = [f"# medcam colour table: matplotlib {colormap}, {entries} entries", "# index name R G B A"]
    for i in range(entries):
        r, g, b, _ = cmap(i / (entries - 1))
        lines.append(f"{i} {colormap}_{i:03d} {round(r * 255)} {round(g * 255)} {round(b * 255)} 255")
    return "\n".join(lines) + "\n"


def _file_attr(name: str) -> str:
    """Slicer's URL encoding of storage file names, then XML quoting."""
    for old, new in (("%", "%25"), (" ", "%20"), ("'", "%27"), (">", "%3E"), ("<", "%3C"), ('"', "%22")):
        name = name.replace(old, new)
    return quoteattr(name)


def _num(values: Sequence[float] | np.ndarray) -> str:
    return " ".join(f"{float(v):.10g}" for v in values)


def scene_xml(scene: ReviewScene) -> str:
    """The MRML text of ``scene``."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f'<MRML version="{WRITER}" userTags="">']
    focus = scene.focus_ras
    fov = scene.field_of_view()
    thickness = float(min(scene.geometry.spacing))
    for view, (label, color, orientation, rows) in _VIEWS.items():
        matrix = np.eye(4)
        matrix[:3, :3] = np.array(rows, dtype=float)
        matrix[:3, 3] = focus
        lines.append(
            f' <Slice id="vtkMRMLSliceNode{view}" name="{view}" hideFromEditors="false" selectable="true" '
            f'selected="false" singletonTag="{view}" layoutLabel="{label}" layoutName="{view}" '
            f'layoutColor="{color}" visibility="true" orientation="{orientation}" '
            f'defaultOrientation="{orientation}" orientationReference="{orientation}" '
            f'fieldOfView="{_num((fov, fov, thickness))}" dimensions="256 256 1" xyzOrigin="0 0 0" '
            f'sliceResolutionMode="1" uvwExtents="{_num((fov, fov, thickness))}" uvwDimensions="256 256 1" '
            f'uvwOrigin="0 0 0" activeSlice="0" layoutGridRows="1" layoutGridColumns="1" '
            f'sliceToRAS="{_num(matrix.ravel())}" {_PRESETS} jumpMode="1" sliceVisibility="false" '
            f'widgetVisibility="false" useLabelOutline="false" sliceSpacingMode="0" '
            f'prescribedSliceSpacing="1 1 1" ></Slice>'
        )
        lines.append(
            f' <SliceComposite id="vtkMRMLSliceCompositeNode{view}" name="SliceComposite{view}" '
            f'hideFromEditors="true" selectable="true" selected="false" singletonTag="{view}" '
            f'references="backgroundVolume:vtkMRMLScalarVolumeNode1;foregroundVolume:vtkMRMLScalarVolumeNode2;" '
            f'compositing="0" foregroundOpacity="{scene.overlays[0].opacity:g}" labelOpacity="1" '
            f'linkedControl="1" hotLinkedControl="0" fiducialVisibility="1" fiducialLabelVisibility="1" '
            f'layoutName="{view}" doPropagateVolumeSelection="0" ></SliceComposite>'
        )
    colormaps = list(dict.fromkeys(o.colormap for o in scene.overlays))
    color_ids = {}
    for n, cmap in enumerate(colormaps, start=1):
        color_ids[cmap] = f"vtkMRMLColorTableNode{n}"
        lines.append(
            f' <ColorTableStorage id="vtkMRMLColorTableStorageNode{n}" name="ColorTableStorage{n}" '
            f'hideFromEditors="true" selectable="true" selected="false" '
            f"fileName={_file_attr(scene.data_prefix + colormap_file_name(cmap))} "
            f'useCompression="1" defaultWriteFileExtension="ctbl" readState="0" writeState="0" ></ColorTableStorage>'
        )
        lines.append(
            f' <ColorTable id="vtkMRMLColorTableNode{n}" name="medcam {cmap}" hideFromEditors="false" '
            f'selectable="true" selected="false" attributes="Category:medcam" '
            f'references="storage:vtkMRMLColorTableStorageNode{n};" type="14" numcolors="256" ></ColorTable>'
        )
    volumes = [("image", scene.image_file, None)] + [(o.name, o.file, o) for o in scene.overlays]
    spacing, origin = scene.geometry.spacing, scene.geometry.origin
    n_dim = scene.geometry.ndim
    direction = np.eye(3)
    direction[:n_dim, :n_dim] = np.asarray(scene.geometry.direction).reshape(n_dim, n_dim)
    ras_direction = np.diag([-1.0, -1.0, 1.0]) @ direction
    ras_origin = [-origin[0], -origin[1], origin[2] if n_dim == 3 else 0.0]
    spacing3 = [*spacing, 1.0] if n_dim == 2 else list(spacing)
    for n, (name, file_name, overlay) in enumerate(volumes, start=1):
        lines.append(
            f' <VolumeArchetypeStorage id="vtkMRMLVolumeArchetypeStorageNode{n}" name="VolumeArchetypeStorage{n}" '
            f'hideFromEditors="true" selectable="true" selected="false" fileName={_file_attr(file_name)} '
            f'useCompression="1" defaultWriteFileExtension="nrrd" readState="0" writeState="0" centerImage="0" '
            f'UseOrientationFromFile="1" ></VolumeArchetypeStorage>'
        )
        if overlay is None:
            window = scene.image_window
            color = "vtkMRMLColorTableNodeGrey"
            display = (
                f'window="{(window[1] - window[0]) if window else 1:g}" '
                f'level="{(window[1] + window[0]) / 2 if window else 0:g}" '
                f'autoWindowLevel="{0 if window else 1}" applyThreshold="0" autoThreshold="0" '
                'upperThreshold="32767" lowerThreshold="-32768"'
            )
        else:
            color = color_ids[overlay.colormap]
            lo, hi = overlay.window
            low, high = overlay.threshold if overlay.threshold else (lo, hi)
            display = (
                f'window="{hi - lo:g}" level="{(hi + lo) / 2:g}" autoWindowLevel="0" '
                f'applyThreshold="{1 if overlay.threshold else 0}" autoThreshold="0" '
                f'upperThreshold="{high:g}" lowerThreshold="{low:g}"'
            )
        lines.append(
            f' <VolumeDisplay id="vtkMRMLScalarVolumeDisplayNode{n}" name="VolumeDisplay{n}" hideFromEditors="true" '
            f'selectable="true" selected="false" visibility="true" opacity="1" colorNodeID="{color}" '
            f'interpolate="1" {display} ></VolumeDisplay>'
        )
        lines.append(
            f' <Volume id="vtkMRMLScalarVolumeNode{n}" name={quoteattr(name)} hideFromEditors="false" '
            f'selectable="true" selected="false" '
            f'references="display:vtkMRMLScalarVolumeDisplayNode{n};storage:vtkMRMLVolumeArchetypeStorageNode{n};" '
            f'userTags="" spacing="{_num(spacing3)}" origin="{_num(ras_origin)}" voxelVectorType="undefined" '
            f'ijkToRASDirections="{_num(ras_direction.ravel())}" ></Volume>'
        )
    if scene.segmentation_file is not None:
        lines.append(
            ' <SegmentationStorage id="vtkMRMLSegmentationStorageNode1" name="SegmentationStorage1" '
            f'hideFromEditors="true" selectable="true" selected="false" fileName={_file_attr(scene.segmentation_file)} '
            'useCompression="1" defaultWriteFileExtension="seg.nrrd" readState="0" writeState="0" '
            'CropToMinimumExtent="false" ></SegmentationStorage>'
        )
        lines.append(
            ' <SegmentationDisplay id="vtkMRMLSegmentationDisplayNode1" name="SegmentationDisplay1" '
            'hideFromEditors="true" selectable="true" selected="false" visibility="true" visibility2D="true" '
            'visibility3D="true" opacity="1" PreferredDisplayRepresentationName2D="Binary labelmap" '
            'Visibility2DFill="false" Visibility2DOutline="true" Opacity3D="0.6" Opacity2DFill="0.3" '
            'Opacity2DOutline="1" ></SegmentationDisplay>'
        )
        lines.append(
            ' <Segmentation id="vtkMRMLSegmentationNode1" name="prediction" hideFromEditors="false" '
            'selectable="true" selected="false" '
            'references="display:vtkMRMLSegmentationDisplayNode1;storage:vtkMRMLSegmentationStorageNode1;'
            'referenceImageGeometryRef:vtkMRMLScalarVolumeNode1;" ></Segmentation>'
        )
    lines.append("</MRML>")
    return "\n".join(lines) + "\n"


def load_script(scene: ReviewScene, folder: str) -> str:
    """``load_in_slicer.py``: the same view set up from Slicer's Python console.

    Paths and names are data, never code: they reach the script as one JSON text in a
    Python string literal (``repr``), and in its comments only as ``repr`` (one line).
    """
    overlays = {
        o.name: {
            "file": o.file,
            "colors": colormap_file_name(o.colormap),
            "window": list(o.window),
            "threshold": list(o.threshold) if o.threshold else None,
            "opacity": o.opacity,
        }
        for o in scene.overlays
    }
    data = {
        "folder": folder,
        "image": scene.image_file,
        "image_window": list(scene.image_window) if scene.image_window else None,
        "overlays": overlays,
        "segmentation": scene.segmentation_file,
        "focus_ras": list(scene.focus_ras),
    }
    short = [_short_name(o.file) for o in scene.overlays]
    script = str(Path(folder) / "load_in_slicer.py")
    return f'''# Show a medcam explanation in 3D Slicer.
#
# In Slicer's Python console:  exec(open({script!r}).read())
# or start Slicer with:        Slicer --python-script load_in_slicer.py
# Afterwards show(name) puts another overlay in the foreground: {", ".join(repr(n) for n in overlays)}
# (or by file name: {", ".join(repr(n) for n in short)}), e.g. show({short[min(1, len(short) - 1)]!r}).
# (Dragging review.mrb onto Slicer gives the same view without this script.)

import json
import os

import slicer

SCENE = json.loads({json.dumps(data, sort_keys=True)!r})
FOLDER = SCENE["folder"]
if not os.path.isdir(FOLDER) and "__file__" in globals():
    FOLDER = os.path.dirname(os.path.abspath(__file__))
IMAGE = SCENE["image"]
IMAGE_WINDOW = SCENE["image_window"]
OVERLAYS = SCENE["overlays"]
SEGMENTATION = SCENE["segmentation"]
FOCUS_RAS = SCENE["focus_ras"]


def _path(name):
    return name if os.path.isabs(name) else os.path.normpath(os.path.join(FOLDER, name))


image = slicer.util.loadVolume(_path(IMAGE), {{"name": "image", "show": False}})
if IMAGE_WINDOW is not None:
    image.GetDisplayNode().SetAutoWindowLevel(False)
    image.GetDisplayNode().SetWindowLevelMinMax(*IMAGE_WINDOW)
overlays = {{}}
for name, spec in OVERLAYS.items():
    colors = slicer.util.loadColorTable(_path(spec["colors"]))
    node = slicer.util.loadVolume(_path(spec["file"]), {{"name": name, "show": False}})
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colors.GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(*spec["window"])
    display.SetInterpolate(True)
    display.SetAutoThreshold(False)
    if spec["threshold"] is not None:
        display.SetLowerThreshold(spec["threshold"][0])
        display.SetUpperThreshold(spec["threshold"][1])
        display.SetApplyThreshold(True)
    overlays[name] = node
if SEGMENTATION:
    segmentation = slicer.util.loadSegmentation(_path(SEGMENTATION))
    segmentation.GetDisplayNode().SetVisibility2DFill(False)
    segmentation.GetDisplayNode().SetVisibility2DOutline(True)


def _overlay(name):
    for key, spec in OVERLAYS.items():
        if name in (key, os.path.basename(spec["file"]).split(".")[0]):
            return key
    raise KeyError(f"no overlay {{name!r}}; choose one of {{', '.join(OVERLAYS)}}")


def show(name):
    """Put overlay ``name`` (its node name or file name, e.g. "heatmap", "uncertainty") in the foreground."""
    key = _overlay(name)
    slicer.util.setSliceViewerLayers(
        background=image, foreground=overlays[key], foregroundOpacity=OVERLAYS[key]["opacity"]
    )


show(next(iter(OVERLAYS)))
slicer.util.resetSliceViews()
slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *FOCUS_RAS)
'''


def _short_name(file_name: str) -> str:
    """``uncertainty.nii.gz`` -> ``uncertainty``: the name ``show()`` also accepts."""
    return Path(file_name).name.split(".")[0]


def write_bundle(
    path: str | Path, scene_text: str, files: Mapping[str, Path | bytes | str], *, root: str = "review"
) -> Path:
    """Write the ``.mrb`` zip: ``root/root.mrml`` and ``root/Data/<name>`` for each file, deterministically."""
    path = Path(path)
    with zipfile.ZipFile(path, "w") as archive:
        _add(archive, f"{root}/{root}.mrml", scene_text.encode("utf-8"), compress=True)
        for name in sorted(files):
            content = files[name]
            data = content.encode("utf-8") if isinstance(content, str) else content
            if isinstance(data, Path):
                data = data.read_bytes()
            compress = not name.endswith((".gz", ".nrrd", ".png", ".jpg", ".jpeg"))
            _add(archive, f"{root}/Data/{name}", data, compress=compress)
    return path


def _add(archive: zipfile.ZipFile, name: str, data: bytes, *, compress: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)
