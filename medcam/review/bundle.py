"""The review folder of one explanation: NIfTI overlays, Slicer package, preview and summary.

Layout (``--out DIR``): ``heatmap.nii.gz`` (the primary layer), ``<extra>.nii.gz`` for
each extra map a method returns (uncertainty, agreement, ...), ``levels/<layer>.nii.gz``
and ``levels/<layer>_<extra>.nii.gz`` and ``montage.png`` (rows = levels, columns = slices
through M; :mod:`medcam.review.montage`) when several layers were explained,
``prediction.nii.gz`` and ``prediction.seg.nrrd`` (segmentation models),
``heatmap.png`` (2D inputs), ``preview.png``, ``preview_uncertainty.png`` (when the method
returns an ``uncertainty``: map and uncertainty side by side), ``summary.json``, and the Slicer package:
``review.mrb``, ``scene.mrml``, ``colormap_*.ctbl`` and ``load_in_slicer.py`` (plus
``image.nrrd`` when the input is a DICOM series or a detached header).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcam.models.levels import level_order
from medcam.review.folders import atomic_folder, check_output, output_path
from medcam.review.montage import Montage, level_note, render_montage
from medcam.review.preview import (
    DEFAULT_THRESHOLD,
    UNCERTAINTY_COLORMAP,
    render_preview,
    render_uncertainty_preview,
    uncertainty_display,
    write_map_png,
)
from medcam.review.slicer import (
    Overlay,
    ReviewScene,
    Segment,
    colormap_file_name,
    colormap_table,
    load_script,
    scene_xml,
    write_bundle,
)
from medcam.review.writers import write_nifti_like, write_nrrd, write_segmentation
from medcam.volumes.geometry import ItkGeometry
from medcam.volumes.io import Volume

logger = logging.getLogger(__name__)

# colour maps of extra overlays by name; anything else gets viridis
EXTRA_COLORMAPS = {"uncertainty": UNCERTAINTY_COLORMAP, "agreement": "cividis", "valid_views": "viridis"}
# segment colours for common labels, then a qualitative palette
SEGMENT_COLORS = {
    "kidney": (0.73, 0.40, 0.33),
    "tumor": (0.89, 0.85, 0.17),
    "tumour": (0.89, 0.85, 0.17),
    "cyst": (0.35, 0.67, 0.92),
    "masses": (0.95, 0.55, 0.20),
    "kidney_and_masses": (0.73, 0.40, 0.33),
}


def _safe_name(alias: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", alias).strip("._") or "layer"


class _FileWriters:
    """Writes volume files on two threads while the caller renders pictures.

    gzip and NRRD encoding release the GIL, so the NIfTI and NRRD files of a CT are
    written side by side; leaving the block waits for every file and raises the first
    error, so the atomic output folder never commits a half-written file.
    """

    def __enter__(self) -> _FileWriters:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="medcam-write")
        self._pending: list[Any] = []
        return self

    def submit(self, function: Any, *args: Any, **kwargs: Any) -> None:
        self._pending.append(self._pool.submit(function, *args, **kwargs))

    def __exit__(self, kind: object, *exc: object) -> None:
        try:
            if kind is None:  # otherwise the caller's error is the one to report
                for future in self._pending:
                    future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, eq=False)
class VolumeExplanation:
    """Maps on the input's own voxel grid, with everything needed to write the review folder.

    ``maps``: layer alias -> float32 array (input spatial shape); ``primary`` names the
    one written as ``heatmap.nii.gz``; ``extras``: extra name -> alias -> array;
    ``prediction``: label values on the input grid (segmentation) or ``None``;
    ``pixels``: the explained pixel set M on the input grid (segmentation) or ``None``;
    ``reference``: a reference mask on the input grid (localisation numbers) or ``None``;
    ``montage``: how ``montage.png`` is drawn when there are several maps;
    ``dicom_out``: write ``dicom/`` (Parametric Maps, SEG; ``None``: for DICOM series inputs).
    """

    volume: Volume
    maps: Mapping[str, np.ndarray]
    primary: str
    extras: Mapping[str, Mapping[str, np.ndarray]]
    prediction: np.ndarray | None
    pixels: np.ndarray | None
    segments: Mapping[int, str]
    summary: Mapping[str, Any]
    image_window: tuple[float, float] | None = None
    reference: np.ndarray | None = None
    montage: Montage = field(default_factory=Montage)
    dicom_out: bool | None = None

    @property
    def heatmap(self) -> np.ndarray:
        return self.maps[self.primary]

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write the review folder atomically (temporary folder, then rename); never over its own input."""
        out = output_path(out)
        inputs = [self.volume.path]
        check_output(out, overwrite=overwrite, inputs=inputs)
        start = time.perf_counter()
        with atomic_folder(out, overwrite=overwrite, inputs=inputs) as tmp:
            outputs = self._write(tmp, final=out)
            summary = dict(self.summary)
            timings = dict(summary.get("timings_s", {}))
            timings["write"] = round(time.perf_counter() - start, 3)
            summary["timings_s"] = timings
            summary["outputs"] = outputs
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        logger.info("wrote %s", out)
        return out

    def _write(self, folder: Path, *, final: Path) -> dict[str, Any]:
        with _FileWriters() as files:
            outputs, overlays, segments = self._write_volumes(folder, files)
            outputs.update(self._write_pictures(folder))  # matplotlib stays on this thread
        outputs.update(self._write_slicer(folder, final, self._geometry, overlays, segments))
        if self.writes_dicom:
            outputs["dicom"] = self._write_dicom(folder, segments)
        return outputs

    @property
    def _geometry(self) -> ItkGeometry:
        return self.volume.itk or ItkGeometry.from_affine(self.volume.affine, self.volume.spatial_dims)

    def _write_volumes(self, folder: Path, files: _FileWriters) -> tuple[dict[str, Any], list[Overlay], list[Segment]]:
        """Queue the NIfTI and NRRD files; the outputs, and the scene's overlays and segments."""
        volume = self.volume
        outputs: dict[str, Any] = {"heatmap": "heatmap.nii.gz"}
        files.submit(write_nifti_like, volume, self.heatmap, folder / "heatmap.nii.gz")
        overlays = [Overlay("medcam heatmap", "heatmap.nii.gz", "inferno", (0.0, 1.0), (DEFAULT_THRESHOLD, 1.0))]
        for name, per_layer in sorted(self.extras.items()):
            if self.primary not in per_layer:
                continue
            file_name = f"{_safe_name(name)}.nii.gz"
            data = per_layer[self.primary]
            files.submit(write_nifti_like, volume, data, folder / file_name)
            outputs.setdefault("extras", {})[name] = file_name
            overlays.append(self._extra_overlay(name, file_name, data))
        if len(self.maps) > 1:
            (folder / "levels").mkdir()
            levels: dict[str, Any] = {}
            for alias, data in self.maps.items():
                base = _safe_name(alias)
                files.submit(write_nifti_like, volume, data, folder / "levels" / f"{base}.nii.gz")
                levels[alias] = f"levels/{base}.nii.gz"
                for name, per_layer in sorted(self.extras.items()):
                    if alias in per_layer:
                        extra_file = f"levels/{base}_{_safe_name(name)}.nii.gz"
                        files.submit(write_nifti_like, volume, per_layer[alias], folder / extra_file)
                        levels[f"{alias}:{name}"] = extra_file
            outputs["levels"] = levels
        segments = [
            Segment(value, name, SEGMENT_COLORS.get(name.lower(), _palette(value)))
            for value, name in self.segments.items()
        ]
        if self.prediction is not None:
            files.submit(write_nifti_like, volume, self.prediction, folder / "prediction.nii.gz", kind="labels")
            files.submit(
                write_segmentation,
                folder / "prediction.seg.nrrd",
                self.prediction,
                self._geometry,
                {s.value: (s.name, s.color) for s in segments},
            )
            outputs["prediction"] = "prediction.nii.gz"
            outputs["segmentation"] = "prediction.seg.nrrd"
        return outputs, overlays, segments

    def _write_pictures(self, folder: Path) -> dict[str, Any]:
        """The montage, the 2D heatmap PNG and the previews."""
        volume = self.volume
        outputs: dict[str, Any] = {}
        if len(self.maps) > 1:
            write_level_montage(folder / "montage.png", self)
            outputs["montage"] = "montage.png"
        if volume.spatial_dims == 2:
            write_map_png(folder / "heatmap.png", self.heatmap)
            outputs["heatmap_png"] = "heatmap.png"
        title = (
            f"{self.summary['method']['name']} | class {self.summary['class']['name']} | "
            f"M = {self.summary['pixel_set']['definition']} | layer {self.primary}"
        )
        grey = volume.array[0] if volume.channels == 1 else volume.array.mean(axis=0)
        render_preview(
            folder / "preview.png",
            grey,
            self.heatmap,
            volume.affine,
            title=title,
            contour=self.pixels,
            window=self.image_window,
        )
        outputs["preview"] = "preview.png"
        uncertainty = self.extras.get("uncertainty", {}).get(self.primary)
        if uncertainty is not None:  # any method that returns an uncertainty gets the side-by-side panel
            render_uncertainty_preview(
                folder / "preview_uncertainty.png",
                grey,
                self.heatmap,
                uncertainty,
                volume.affine,
                title=title,
                contour=self.pixels,
                window=self.image_window,
                normalized=self._normalized,
            )
            outputs["preview_uncertainty"] = "preview_uncertainty.png"
        return outputs

    @property
    def writes_dicom(self) -> bool:
        return self.dicom_out if self.dicom_out is not None else self.volume.format == "dicom"

    def _write_dicom(self, folder: Path, segments: list[Segment]) -> list[str]:
        """``dicom/``: a Parametric Map per map and the prediction as a SEG (:mod:`medcam.review.dicom`)."""
        from medcam.review.dicom import write_dicom

        maps = {"heatmap": self.heatmap}
        for name, per_layer in sorted(self.extras.items()):
            if self.primary in per_layer:
                maps[_safe_name(name)] = per_layer[self.primary]
        if len(self.maps) > 1:
            maps.update({f"level_{_safe_name(alias)}": data for alias, data in self.maps.items()})
        description = {
            "method": str(self.summary["method"]["name"]),
            "class": str(self.summary["class"]["name"]),
            "pixel_set": str(self.summary["pixel_set"]["definition"]),
            "layer": self.primary,
        }
        paths = write_dicom(
            folder / "dicom",
            self.volume,
            maps,
            self.prediction,
            {s.value: s.name for s in segments},
            {s.value: s.color for s in segments},
            description,
        )
        files = [p.relative_to(folder).as_posix() for p in paths]
        objects = [f for f in files if not f.startswith("dicom/image/")]
        return objects + (["dicom/image/"] if len(objects) < len(files) else [])  # a non-DICOM input's series

    @property
    def _normalized(self) -> bool:
        """Whether the maps were normalised (then an uncertainty is in the units of normalised maps)."""
        return self.summary.get("method", {}).get("normalize", "minmax") is not None

    def _extra_overlay(self, name: str, file_name: str, data: np.ndarray) -> Overlay:
        """A method's extra map in the Slicer scene, with its own colour table.

        The uncertainty uses the display of the preview (:func:`uncertainty_display`):
        a fixed window in normalised units and low values transparent. Other extras span
        their own range.
        """
        colormap = EXTRA_COLORMAPS.get(name, "viridis")
        if name == "uncertainty":
            window, cut = uncertainty_display(data, self._normalized)
            return Overlay(name, file_name, colormap, window, (cut, max(window[1], float(np.max(data)))))
        lo, hi = float(np.min(data)), float(np.max(data))
        return Overlay(name, file_name, colormap, (lo, hi if hi > lo else lo + 1), None)

    def _write_slicer(
        self, folder: Path, final: Path, geometry: ItkGeometry, overlays: list[Overlay], segments: list[Segment]
    ) -> dict[str, Any]:
        volume = self.volume
        # Slicer reads one-file scalar images directly; a DICOM series, a detached header or a
        # colour image gets a one-file grey copy (``image.nrrd``) with ITK's geometry
        single_file = (
            volume.format != "dicom"
            and not volume.path.name.lower().endswith((".mhd", ".nhdr"))
            and volume.channels == 1
        )
        if single_file:
            scene_image = _relative(volume.path, final)  # the folder may move along with its input
            image_suffix = _suffix(volume.path.name)
            bundle_image: Path | bytes = volume.path
        else:
            write_nrrd(folder / "image.nrrd", np.asarray(volume.array.mean(axis=0), dtype=np.float32), geometry)
            scene_image, image_suffix = "image.nrrd", ".nrrd"
            bundle_image = (folder / "image.nrrd").read_bytes()
        focus = tuple(int(v) for v in np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape))
        segmentation = "prediction.seg.nrrd" if self.prediction is not None else None
        scene = ReviewScene(
            image_file=scene_image,
            geometry=geometry,
            shape=volume.spatial_shape,
            overlays=overlays,
            focus_index=focus,
            segmentation_file=segmentation,
            segments=segments,
            image_window=self.image_window,
        )
        tables = {colormap_file_name(o.colormap): colormap_table(o.colormap) for o in overlays}
        for name, text in tables.items():
            (folder / name).write_text(text, encoding="utf-8")
        (folder / "scene.mrml").write_text(scene_xml(scene), encoding="utf-8")
        (folder / "load_in_slicer.py").write_text(load_script(scene, str(final)), encoding="utf-8")
        bundled = ReviewScene(
            image_file=f"Data/image{image_suffix}",
            geometry=geometry,
            shape=volume.spatial_shape,
            overlays=[
                Overlay(o.name, f"Data/{o.file}", o.colormap, o.window, o.threshold, o.opacity) for o in overlays
            ],
            focus_index=focus,
            segmentation_file=f"Data/{segmentation}" if segmentation else None,
            segments=segments,
            image_window=self.image_window,
            data_prefix="Data/",
        )
        text = scene_xml(bundled)
        files: dict[str, Path | bytes | str] = {f"image{image_suffix}": bundle_image}
        for o in overlays:
            files[o.file] = folder / o.file
        if segmentation:
            files[segmentation] = folder / segmentation
        files.update(tables)
        write_bundle(folder / "review.mrb", text, files)
        written: dict[str, Any] = {
            "slicer_bundle": "review.mrb",
            "slicer_scene": "scene.mrml",
            "slicer_script": "load_in_slicer.py",
            "colour_tables": sorted(tables),
        }
        if not single_file:
            written["image_copy"] = "image.nrrd"
        return written


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (``../case/imaging.nii.gz``), or absolute across drives."""
    try:
        # by name, not resolving links: the path the user gave, seen from the folder
        return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))  # noqa: PTH100
    except ValueError:  # another drive on Windows
        return str(Path(path).absolute())


def _suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg"):
        if lower.endswith(suffix):
            return suffix
    return Path(name).suffix


def _palette(value: int) -> tuple[float, float, float]:
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab10"]((value - 1) % 10)
    return (round(r, 4), round(g, 4), round(b, 4))


def write_level_montage(path: Path, explanation: VolumeExplanation) -> Path:
    """The montage of a review folder: its maps in data-flow order, with their localisation numbers."""
    volume = explanation.volume
    order = level_order(list(explanation.maps))
    levels = explanation.summary.get("levels") or {}
    notes = {name: level_note(values) for name, values in (levels.get("scores") or {}).items()}
    summary = explanation.summary
    title = f"{summary['method']['name']} | class {summary['class']['name']} | M = {summary['pixel_set']['definition']}"
    return render_montage(
        path,
        volume.array[0] if volume.channels == 1 else volume.array.mean(axis=0),
        {name: explanation.maps[name] for name in order},
        volume.affine,
        region=explanation.pixels,
        reference=explanation.reference,
        style=explanation.montage,
        notes=notes,
        title=title,
        window=explanation.image_window,
    )
