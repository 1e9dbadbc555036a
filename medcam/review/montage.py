"""The level montage: one row per level (data-flow order), one column per slice through M.

Rows are the explained layers ordered encoder -> bottleneck -> decoder -> final
(Rheude et al., Appendix Fig. 8, shows a U-Net's levels this way); columns are axial
slices spread over the explained pixel set M (over the reference mask when M is the
whole image or missing, else over the whole volume), drawn like ``preview.png``: closest RAS orientation,
patient's right on the left, physical aspect ratio. M is outlined in cyan, a
reference mask in lime. Colour scale ``"shared"``: one range (the smallest and
largest value over every level's whole map) and one colour bar, so rows compare
directly; ``"per-level"``: each row stretched to its own range over the shown
slices, with its own colour bar, so weak levels stay visible. Values below a tenth of
the range are transparent. 2D images have one column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from medcam.errors import UserError
from medcam.review.preview import HEATMAP_COLORMAP, _canonical, _window

Scale = Literal["shared", "per-level"]
SCALES: tuple[str, ...] = ("shared", "per-level")
TRANSPARENT_BELOW = 0.1  # fraction of the colour range drawn transparent
CROP_MARGIN = 16  # voxels, at least, around the target when cropping


@dataclass(frozen=True)
class Montage:
    """How the level montage is drawn: colour ``scale``, number of ``slices`` (columns), ``crop``.

    ``crop`` zooms every panel onto M (or the reference): its in-plane bounding box over
    the shown slices, widened on each side by the box's own size (at least
    ``CROP_MARGIN`` voxels), so small targets are readable and nearby context stays.
    """

    scale: Scale = "shared"
    slices: int = 5
    crop: bool = False

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise UserError(f"montage scale {self.scale!r} is not known; use one of {', '.join(SCALES)}")
        if not 1 <= self.slices <= 20:
            raise UserError(f"montage slices must be between 1 and 20, got {self.slices}")


def slice_positions(shape_z: int, region: np.ndarray | None, count: int) -> list[int]:
    """``count`` axial positions spread over ``region``'s extent along the last axis (evenly by voxel mass).

    Quantiles of the region's voxels put more columns where the region is large; an
    empty or missing region spreads them over the whole axis.
    """
    chosen: list[float]
    if region is not None and region.any():
        z = np.nonzero(region)[-1]
        chosen = np.quantile(z, [(i + 0.5) / count for i in range(count)], method="nearest").tolist()
    elif count < shape_z:
        chosen = np.linspace(0, shape_z - 1, count + 2)[1:-1].tolist()
    else:
        chosen = list(range(shape_z))
    return sorted({round(v) for v in chosen})


def render_montage(
    path: str | Path,
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    region: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    style: Montage = Montage(),
    notes: Mapping[str, str] | None = None,
    title: str = "",
    window: tuple[float, float] | None = None,
    colormap: str = HEATMAP_COLORMAP,
) -> Path:
    """Write the montage PNG of ``maps`` (rows, in the given order) over ``image``.

    Arrays share one grid in file index order (2D ``(W, H)`` or 3D); ``notes`` adds a
    line under a row's name (e.g. its localisation numbers).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colors

    if not maps:
        raise UserError("no maps to draw in the montage")
    names = list(maps)
    notes = dict(notes or {})
    path = Path(path)
    if region is not None and region.all():
        region = None  # M is the whole image ("image"): nothing to outline or to place slices by
    if window is None:  # one grey window for every panel
        low, high = np.percentile(image, [1.0, 99.0])
        window = (float(low), float(high))
    if image.ndim == 2:
        columns = ["image"]
        grey = [image.T]
        heats = {n: [maps[n].T] for n in names}
        outline = [None if region is None else region.T]
        truth = [None if reference is None else reference.T]
        aspect = 1.0
        guide_panels = [outline[0] if outline[0] is not None else truth[0]]
    else:
        arrays, (sx, sy, _) = _canonical(affine, image, region, reference, *(maps[n] for n in names))
        img, reg, ref, *canonical = arrays
        assert img is not None  # image is given
        guide = reg if reg is not None and reg.any() else ref
        zs = slice_positions(img.shape[2], guide, style.slices)
        columns = [_slice_label(affine, img.shape[2], z) for z in zs]

        def axial(a: np.ndarray | None, z: int) -> np.ndarray | None:
            return None if a is None else a[::-1, ::-1, z].T  # rows anterior -> posterior, columns right -> left

        grey = [axial(img, z) for z in zs]  # type: ignore[misc]
        heats = {n: [axial(m, z) for z in zs] for n, m in zip(names, canonical, strict=True)}  # type: ignore[misc]
        outline = [axial(reg, z) for z in zs]
        truth = [axial(ref, z) for z in zs]
        aspect = sy / sx
        guide_panels = [axial(guide, z) for z in zs]
    if style.crop:
        window_rc = _crop_box(guide_panels)
        if window_rc is not None:
            grey = [g[window_rc] for g in grey]
            heats = {n: [h[window_rc] for h in hs] for n, hs in heats.items()}
            outline = [None if o is None else o[window_rc] for o in outline]
            truth = [None if t is None else t[window_rc] for t in truth]

    shared = _range([maps[n] for n in names])
    panel, left, right, top, bottom = 2.3, 1.9, 1.0, 0.95, 0.15  # inches: panels and margins for the labels
    width, height = left + panel * len(columns) + right, top + panel * len(names) + bottom
    fig, axes = plt.subplots(len(names), len(columns), figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=0.04,
        hspace=0.08,
    )
    for row, name in enumerate(names):
        lo, hi = shared if style.scale == "shared" else _range(heats[name])
        norm = colors.Normalize(vmin=lo, vmax=hi)
        for col in range(len(columns)):
            ax = axes[row, col]
            ax.imshow(_window(grey[col], window), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
            heat = np.ma.masked_less(heats[name][col], lo + TRANSPARENT_BELOW * (hi - lo))
            ax.imshow(heat, cmap=colormap, norm=norm, alpha=0.65, aspect=aspect, interpolation="nearest")
            for mask, colour in ((outline[col], "cyan"), (truth[col], "lime")):
                if mask is not None and mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
        label = name if name not in notes else f"{name}\n{notes[name]}"
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9, labelpad=8)
        if style.scale == "per-level":
            scalar = plt.cm.ScalarMappable(norm=norm, cmap=colormap)  # opaque, unlike the overlay
            bar = fig.colorbar(scalar, ax=list(axes[row]), fraction=0.03, pad=0.01)
            bar.ax.tick_params(labelsize=7)
    if style.scale == "shared":
        scalar = plt.cm.ScalarMappable(norm=colors.Normalize(*shared), cmap=colormap)
        bar = fig.colorbar(scalar, ax=axes.ravel().tolist(), fraction=0.025, pad=0.01)
        bar.set_label("CAM (one scale for all levels)")
    legend = "cyan: explained pixel set M" if region is not None and region.any() else ""
    if reference is not None and reference.any():
        legend += ("; " if legend else "") + "lime: reference"
    heading = "\n".join(part for part in (title, legend) if part)
    if heading:
        fig.suptitle(heading, fontsize=10, y=1 - 0.08 / height, va="top")  # fixed inches from the top
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def _crop_box(panels: Sequence[np.ndarray | None]) -> tuple[slice, slice] | None:
    """Rows and columns around the True pixels of ``panels``, widened by the extent (>= CROP_MARGIN)."""
    present = [p for p in panels if p is not None and p.any()]
    if not present:
        return None
    union = np.logical_or.reduce(present)
    box = []
    for axis in (0, 1):
        hit = np.flatnonzero(union.any(axis=1 - axis))
        lo, hi = int(hit[0]), int(hit[-1]) + 1
        margin = max(hi - lo, CROP_MARGIN)
        box.append(slice(max(0, lo - margin), min(union.shape[axis], hi + margin)))
    return box[0], box[1]


def _range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _slice_label(affine: np.ndarray, size: int, z: int) -> str:
    """'axial, k = 12': the canonical axial slice ``z`` as an index of the file's own axis."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    index = z if ornt[axis, 1] > 0 else size - 1 - z
    return f"axial, {'ijk'[axis]} = {index}"


def level_note(values: Mapping[str, float | None]) -> str:
    parts = []
    for key, short in (("energy_in_region", "E(M)"), ("dice", "Dice"), ("pointing_game", "PG")):
        value = values.get(key)
        if value is not None:
            parts.append(f"{short} {value:.2f}" if key != "pointing_game" else f"{short} {value:.0f}")
    return "  ".join(parts)
