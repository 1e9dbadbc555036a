"""PNG previews: three orthogonal slices through the map's maximum, overlaid on the image.

Slices are shown the way radiologists and 3D Slicer show them: the volume is brought
to the closest RAS orientation first (a permutation and flips only, no resampling),
then axial and coronal views have the patient's right on the left of the screen and
the sagittal view has anterior on the left; pixels are drawn with their physical
aspect ratio. 2D images are shown as they are stored (row 0 at the top).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcam.volumes.geometry import voxel_spacing

HEATMAP_COLORMAP = "inferno"
DEFAULT_THRESHOLD = 0.2
# the uncertainty's own colour map: sequential like inferno but in cool hues (see docs/slicer.md)
UNCERTAINTY_COLORMAP = "GnBu"
UNCERTAINTY_WINDOW = 0.5  # display top in the units of normalised maps
UNCERTAINTY_THRESHOLD = 0.1  # transparent below this share of the window


@dataclass(frozen=True)
class Panel:
    title: str
    image: np.ndarray
    heat: np.ndarray
    contour: np.ndarray | None
    aspect: float


def _canonical(affine: np.ndarray, *arrays: np.ndarray | None) -> tuple[list[np.ndarray | None], tuple[float, ...]]:
    """Reorder/flip 3D arrays to the closest RAS orientation; returns them and their spacing."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = [None if a is None else nib.orientations.apply_orientation(a, ornt) for a in arrays]
    spacing = voxel_spacing(affine, 3)
    order = [int(ornt[axis, 0]) for axis in range(3)]
    canonical_spacing = [0.0, 0.0, 0.0]
    for axis, target in enumerate(order):
        canonical_spacing[target] = spacing[axis]
    return out, tuple(canonical_spacing)


def _window(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    lo, hi = window if window is not None else tuple(np.percentile(image, [1.0, 99.0]))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def orthogonal_panels(
    image: np.ndarray,
    heat: np.ndarray,
    affine: np.ndarray,
    *,
    contour: np.ndarray | None = None,
    point: tuple[int, ...] | None = None,
) -> list[Panel]:
    """Axial, coronal and sagittal slices through ``point`` (default: the map's maximum)."""
    if point is None:
        point = tuple(int(v) for v in np.unravel_index(int(np.argmax(heat)), heat.shape))
    marker = np.zeros(heat.shape, dtype=bool)
    marker[point] = True
    (img, hm, ct, mk), (sx, sy, sz) = _canonical(affine, image, heat, contour, marker)
    assert img is not None and hm is not None and mk is not None
    x, y, z = (int(v[0]) for v in np.nonzero(mk))

    def view(a: np.ndarray | None, plane: str) -> np.ndarray | None:
        if a is None:
            return None
        if plane == "axial":  # rows anterior -> posterior, columns right -> left
            return a[::-1, ::-1, z].T
        if plane == "coronal":  # rows superior -> inferior, columns right -> left
            return a[::-1, y, ::-1].T
        return a[x, ::-1, ::-1].T  # sagittal: rows superior -> inferior, columns anterior -> posterior

    aspects = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
    panels = []
    for plane in ("axial", "coronal", "sagittal"):
        pi, ph = view(img, plane), view(hm, plane)
        assert pi is not None and ph is not None
        panels.append(Panel(plane, pi, ph, view(ct, plane), aspects[plane]))
    return panels


def render_preview(
    path: str | Path,
    image: np.ndarray,
    heat: np.ndarray,
    affine: np.ndarray,
    *,
    title: str = "",
    contour: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    colormap: str = HEATMAP_COLORMAP,
    label: str = "CAM",
) -> Path:
    """Write ``preview.png``: three orthogonal slices (or the 2D image) with the map overlaid.

    ``image``/``heat``/``contour`` share one grid in file index order; values of
    ``heat`` below ``threshold`` are transparent (as in the Slicer scene); ``contour``
    (e.g. the explained pixel set M) is outlined in cyan.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colors

    path = Path(path)
    image, heat, contour = _flat(image, heat, contour)
    if image.ndim == 2:  # (W, H) -> display rows = image rows
        panels = [Panel("image", image.T, heat.T, None if contour is None else contour.T, 1.0)]
    else:
        panels = orthogonal_panels(image, heat, affine, contour=contour)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels) + 0.8, 4.4), squeeze=False)
    norm = colors.Normalize(vmin=0.0, vmax=1.0)
    mappable = None
    for ax, panel in zip(axes[0], panels, strict=True):
        mappable = _draw(ax, panel, window, threshold, colormap, norm)
        ax.set_title(panel.title, fontsize=10)
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=list(axes[0]), fraction=0.025, pad=0.02)
        bar.set_label(label)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def _flat(*arrays: Any) -> Any:
    """A 3D grid with one singleton axis (a slice saved as a volume) as the 2D image it holds.

    Its orthogonal panels would be one voxel thin; the plane of the two other axes is
    shown as a 2D input is. Other grids pass through unchanged (``None`` stays ``None``).
    """
    shape = arrays[0].shape
    if len(shape) != 3 or sorted(shape)[:2] == [1, 1] or 1 not in shape:
        return arrays
    axis = shape.index(1)
    return tuple(None if a is None else np.take(a, 0, axis=axis) for a in arrays)


def _draw(ax: Any, panel: Panel, window: tuple[float, float] | None, threshold: float, colormap: str, norm: Any) -> Any:
    """The image in grey, the map over it (transparent below ``threshold``), M outlined in cyan."""
    ax.imshow(_window(panel.image, window), cmap="gray", vmin=0, vmax=1, aspect=panel.aspect, interpolation="nearest")
    masked = np.ma.masked_less(panel.heat, threshold)
    mappable = ax.imshow(masked, cmap=colormap, norm=norm, alpha=0.6, aspect=panel.aspect, interpolation="nearest")
    if panel.contour is not None and panel.contour.any() and min(panel.contour.shape) >= 2:
        ax.contour(panel.contour.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_axis_off()
    return mappable


def uncertainty_display(uncertainty: np.ndarray, normalized: bool = True) -> tuple[tuple[float, float], float]:
    """``(window, threshold)`` of an uncertainty map, shared by the preview and the Slicer scene.

    In the units of normalised maps (``normalized``) the window is fixed, [0, 0.5] (the
    largest standard deviation of values in [0, 1]; larger values, possible after
    sliding-window stitching, take the top colour), so colours mean the same in every
    case; raw maps use [0, max]. Values below :data:`UNCERTAINTY_THRESHOLD` of the window
    are transparent.
    """
    top = float(np.max(uncertainty)) if uncertainty.size else 0.0
    high = UNCERTAINTY_WINDOW if normalized else (top if top > 0 else 1.0)
    return (0.0, high), UNCERTAINTY_THRESHOLD * high


def render_uncertainty_preview(
    path: str | Path,
    image: np.ndarray,
    heat: np.ndarray,
    uncertainty: np.ndarray,
    affine: np.ndarray,
    *,
    title: str = "",
    contour: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    normalized: bool = True,
) -> Path:
    """Write ``preview_uncertainty.png``: the map and its uncertainty side by side.

    Both on the same slices, through the map's maximum: one row per orthogonal plane
    (one row for a 2D image), the map with ``inferno`` on the left, the uncertainty with
    :data:`UNCERTAINTY_COLORMAP` on the right, each with its own colour bar.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colors

    path = Path(path)
    image, heat, uncertainty, contour = _flat(image, heat, uncertainty, contour)
    if image.ndim == 2:
        rows = [
            (
                Panel("image", image.T, heat.T, None if contour is None else contour.T, 1.0),
                Panel("image", image.T, uncertainty.T, None if contour is None else contour.T, 1.0),
            )
        ]
    else:
        point = tuple(int(v) for v in np.unravel_index(int(np.argmax(heat)), heat.shape))
        maps = orthogonal_panels(image, heat, affine, contour=contour, point=point)
        spreads = orthogonal_panels(image, uncertainty, affine, contour=contour, point=point)
        rows = list(zip(maps, spreads, strict=True))
    (low, high), cut = uncertainty_display(uncertainty, normalized)
    fig, axes = plt.subplots(len(rows), 2, figsize=(8.6, 3.3 * len(rows) + 0.5), squeeze=False, layout="constrained")
    heat_norm = colors.Normalize(vmin=0.0, vmax=1.0)
    spread_norm = colors.Normalize(vmin=low, vmax=high)
    left = right = None
    for (ax_map, ax_spread), (panel_map, panel_spread) in zip(axes, rows, strict=True):
        left = _draw(ax_map, panel_map, window, threshold, HEATMAP_COLORMAP, heat_norm)
        right = _draw(ax_spread, panel_spread, window, cut, UNCERTAINTY_COLORMAP, spread_norm)
        ax_map.set_title(f"{panel_map.title}: map", fontsize=10)
        ax_spread.set_title(f"{panel_spread.title}: uncertainty", fontsize=10)
    if left is not None and right is not None:
        fig.colorbar(left, ax=list(axes[:, 0]), shrink=0.6).set_label("CAM")
        fig.colorbar(right, ax=list(axes[:, 1]), shrink=0.6).set_label("uncertainty (std over views)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def write_map_png(path: str | Path, heat: np.ndarray) -> Path:
    """A 2D map (file index order ``(W, H)``) as an 8-bit greyscale PNG in the image's pixel layout."""
    from PIL import Image

    path = Path(path)
    values = np.clip(np.nan_to_num(heat.T, nan=0.0), 0.0, 1.0)
    Image.fromarray(np.rint(values * 255).astype(np.uint8)).save(path)
    return path
