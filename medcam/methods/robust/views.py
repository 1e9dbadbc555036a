"""Augmentation views for RobustCAM: a transform of the input with an exact inverse.

A :class:`View` does three things, all on medcam's internal axis order (MONAI's:
batch, channel, then the spatial axes in the file's voxel index order i, j, k):

* :meth:`View.apply` transforms the input batch ``(N, C, *spatial)``;
* :meth:`View.warp_mask` carries a segmentation pixel set ``M`` ``(N, *spatial)``
  forward with the image (nearest neighbour), so every view explains the same anatomy;
* :meth:`View.warp_back` maps a view's saliency map ``(N, *spatial)`` back to the
  original frame together with a validity mask: ``False`` where the original pixel
  left the view's field of view (it is unknown there, not zero).

Geometric views (:class:`Flip`, :class:`Rotation`) resample with ``affine_grid`` /
``grid_sample``; the inverse is the exact inverse transform, so a warped-back map
differs from the truth only by interpolation. Photometric views (intensity jitter,
blur, greyscale, intensity scale/shift, gamma) leave geometry alone; their random
parameters are drawn once from their own ``seed``, so a view is a replayable,
deterministic transform and the same for every sample of a batch.

Axes. Spatial axis numbers count from 0 (tensor dim ``2 + axis``). In 2D images
(rows, columns) the *horizontal* flip is axis 1 and ``Rotation(plane=(0, 1))`` turns
counter-clockwise on screen for a positive angle (torchvision's convention). In a 3D
volume reoriented to RAS, axis 0 is left-right and the plane (0, 1) is axial; a
KiTS23 volume as stored (orientation I, P, L) has left-right axis 2 and axial plane
(1, 2). :func:`anatomical_axes` derives both from orientation codes.

Why one module of this size: a catalogue of small view classes, each with its exact
inverse and validity mask, and the one parser of view strings.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medcam.core.perturbation import gaussian_blur
from medcam.errors import UserError


class ViewError(UserError):
    """A view does not apply to this input or its specification is malformed."""


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as torchvision's rgb_to_grayscale


def _spatial(x: Tensor, first: int) -> tuple[int, ...]:
    return tuple(range(first, x.ndim))


def _draw(seed: int, low: float, high: float, count: int = 1) -> list[float]:
    """``count`` uniform draws in [low, high] from a generator owned by the view."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(count, generator=generator, dtype=torch.float64)
    return [low + (high - low) * float(v) for v in values]


class View(ABC):
    """One augmentation view: a transform of the input and its inverse on maps."""

    geometric: bool = False

    @abstractmethod
    def describe(self) -> str:
        """A short, replayable definition (the ``views=`` string syntax), parameters included."""

    def check(self, x: Tensor) -> None:  # noqa: B027 - most views apply to any input
        """Raise :class:`ViewError` if the view cannot transform ``x`` (N, C, *spatial)."""

    @abstractmethod
    def apply(self, x: Tensor) -> Tensor:
        """The transformed input, same shape as ``x``."""

    def warp_mask(self, mask: Tensor) -> Tensor:
        """Carry a boolean pixel set ``(N, *spatial)`` into the view (identity for photometric views)."""
        return mask

    def warp_field(self, values: Tensor) -> Tensor:
        """Carry per-pixel target weights ``(N, C, *spatial)`` into the view, like :meth:`warp_mask`.

        Nearest neighbour, on the same sampling grid as :meth:`warp_mask`, so the
        non-zero pixels of the warped weights are exactly the warped pixel set.
        """
        return values

    def warp_back(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """``(maps, valid)`` in the original frame for view-frame maps ``(N, *spatial)``."""
        return maps, torch.ones_like(maps, dtype=torch.bool)

    def __str__(self) -> str:
        return self.describe()


# ---------------------------------------------------------------------------------------
# Geometric views


@dataclass(frozen=True)
class Identity(View):
    """The input itself."""

    def describe(self) -> str:
        return "identity"

    def apply(self, x: Tensor) -> Tensor:
        return x


def _check_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ViewError(f"{what} axis {axis} does not exist in an input with {ndim} spatial axes (0..{ndim - 1})")
    return axis % ndim


@dataclass(frozen=True)
class Flip(View):
    """Mirror along one spatial axis; its own inverse, exact on the pixel grid.

    ``axis=None``: the horizontal axis of a 2D image (1, columns), the left-right
    axis of a 3D volume in RAS (0), the only axis of a 1D signal.
    """

    axis: int | None = None
    geometric = True

    def _axis(self, ndim: int) -> int:
        if self.axis is None:
            return 1 if ndim == 2 else 0
        return _check_axis(self.axis, ndim, "flip")

    def describe(self) -> str:
        return "flip" if self.axis is None else f"flip:{self.axis}"

    def check(self, x: Tensor) -> None:
        self._axis(x.ndim - 2)

    def apply(self, x: Tensor) -> Tensor:
        return x.flip(2 + self._axis(x.ndim - 2))

    def warp_mask(self, mask: Tensor) -> Tensor:
        return mask.flip(1 + self._axis(mask.ndim - 1))

    def warp_field(self, values: Tensor) -> Tensor:
        return values.flip(2 + self._axis(values.ndim - 2))

    def warp_back(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        return maps.flip(1 + self._axis(maps.ndim - 1)), torch.ones_like(maps, dtype=torch.bool)


@dataclass(frozen=True)
class Rotation(View):
    """Rotation by ``degrees`` about the image (volume) centre in the plane of two spatial axes.

    A positive angle turns axis ``plane[0]`` towards ``plane[1]`` (2D, plane (0, 1):
    counter-clockwise on screen, as torchvision). The angle is in voxel units: in-plane
    voxels are taken as square, true for the axial plane of CT and MR. The image is
    resampled bilinearly and filled with ``fill`` (default 0) where it shows nothing;
    ``fill="min"`` uses each sample's minimum (air in CT). Masks move by nearest
    neighbour; maps come back through the exact inverse rotation, valid where the
    original pixel stayed inside the view's field of view.
    """

    degrees: float
    plane: tuple[int, int] = (0, 1)
    fill: float | Literal["min"] = 0.0
    geometric = True

    def __post_init__(self) -> None:
        if self.fill != "min" and (isinstance(self.fill, str) or not math.isfinite(float(self.fill))):
            raise ViewError(f"rotation fill must be a finite number or 'min', got {self.fill!r}")

    def describe(self) -> str:
        text = f"rotate:{self.degrees:g}"
        if tuple(self.plane) != (0, 1):
            text += f":{self.plane[0]},{self.plane[1]}"
        if self.fill == "min":
            text += ":fill=min"
        elif float(self.fill) != 0.0:
            text += f":fill={float(self.fill):g}"
        return text

    def check(self, x: Tensor) -> None:
        ndim = x.ndim - 2
        if ndim < 2:
            raise ViewError(f"a rotation needs at least 2 spatial axes, the input has {ndim}; drop the rotation view")
        a, b = (_check_axis(p, ndim, "rotation plane") for p in self.plane)
        if a == b:
            raise ViewError(f"a rotation plane needs two different axes, got {tuple(self.plane)}")

    def _theta(self, shape: tuple[int, ...], n: int, inverse: bool, like: Tensor) -> Tensor:
        """``affine_grid`` matrices: output grid point -> where to sample, normalised coordinates.

        With ``align_corners=False`` a normalised coordinate times ``size / 2`` is the
        distance from the centre in voxels, so ``S^-1 R S`` rotates in voxel space.
        """
        ndim = len(shape)
        a, b = (p % ndim for p in self.plane)
        angle = math.radians(self.degrees)
        rotation = torch.eye(ndim, dtype=torch.float64)
        rotation[a, a] = rotation[b, b] = math.cos(angle)
        rotation[b, a], rotation[a, b] = math.sin(angle), -math.sin(angle)
        # the view shows the original at R^-1 y; going back samples the view at R p
        matrix = rotation if inverse else rotation.T
        scale = torch.tensor([s / 2 for s in shape], dtype=torch.float64)
        matrix = matrix * scale[None, :] / scale[:, None]  # S^-1 M S
        # affine_grid orders coordinates (x, y, z) = last spatial axis first
        matrix = matrix.flip(0).flip(1)
        theta = torch.cat([matrix, torch.zeros(ndim, 1, dtype=torch.float64)], dim=1)
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return theta.to(device=like.device, dtype=dtype).expand(n, ndim, ndim + 1)

    def _grid(self, shape: tuple[int, ...], n: int, inverse: bool, like: Tensor) -> Tensor:
        theta = self._theta(shape, n, inverse, like)
        return F.affine_grid(theta, [n, 1, *shape], align_corners=False)

    def apply(self, x: Tensor) -> Tensor:
        self.check(x)
        shape = tuple(x.shape[2:])
        grid = self._grid(shape, x.shape[0], False, x)
        if self.fill == "min":
            fill = x.amin(dim=_spatial(x, 1), keepdim=True)
        else:
            fill = x.new_full((x.shape[0], 1, *([1] * len(shape))), float(self.fill))
        # grid_sample fills with zeros; shift so that zero is the fill value
        moved = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return moved + fill

    def warp_mask(self, mask: Tensor) -> Tensor:
        return self.warp_field(mask.float().unsqueeze(1)).squeeze(1) > 0.5

    def warp_field(self, values: Tensor) -> Tensor:
        shape = tuple(values.shape[2:])
        # the grid in float32 whatever the dtype of values: masks and weights pick the same pixels
        grid = self._grid(shape, values.shape[0], False, values.float()).to(values.dtype)
        return F.grid_sample(values, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def warp_back(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        shape = tuple(maps.shape[1:])
        values = maps.unsqueeze(1)
        grid = self._grid(shape, maps.shape[0], True, values)
        # inside the field of view = inside the image extent [-1, 1]; "border" keeps the
        # half-voxel rim between the outermost voxel centres and the edge from darkening
        valid = (grid.abs() <= 1.0 + 1e-6).all(dim=-1)
        back = F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return back.squeeze(1), valid


# ---------------------------------------------------------------------------------------
# Photometric views


def _luminance(x: Tensor) -> Tensor:
    """Greyscale ``(N, 1, *spatial)`` of a 3-channel input (ITU-R 601 weights)."""
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, *([1] * (x.ndim - 2)))
    return (x * weights).sum(dim=1, keepdim=True)


def _colour(x: Tensor) -> bool:
    return x.shape[1] == 3


@dataclass(frozen=True)
class IntensityJitter(View):
    """Colour jitter (torchvision's ``ColorJitter``, fixed order): brightness, contrast, saturation.

    Factors are drawn uniformly from ``[1 - v, 1 + v]`` for each strength ``v`` with
    ``seed``. Brightness multiplies; contrast blends with the mean grey level of the
    sample; saturation blends with the greyscale image and applies to colour (3-channel)
    input only. Applied to the tensor the model sees, without clamping: the input's
    value range is not known here.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ViewError(f"jitter {name} must be in [0, 1), got {value}")

    def factors(self) -> tuple[float, float, float]:
        """(brightness, contrast, saturation) factors this view uses."""
        u = _draw(self.seed, -1.0, 1.0, 3)
        return 1 + self.brightness * u[0], 1 + self.contrast * u[1], 1 + self.saturation * u[2]

    def describe(self) -> str:
        return f"jitter:{self.brightness:g},{self.contrast:g},{self.saturation:g}:seed={self.seed}"

    def apply(self, x: Tensor) -> Tensor:
        brightness, contrast, saturation = self.factors()
        y = x * brightness
        grey = _luminance(y) if _colour(y) else y
        mean = grey.mean(dim=_spatial(y, 1) if _colour(y) else _spatial(y, 2), keepdim=True)
        y = (y - mean) * contrast + mean
        if _colour(y):
            grey = _luminance(y)
            y = (y - grey) * saturation + grey
        return y


@dataclass(frozen=True)
class GaussianBlur(View):
    """Separable Gaussian blur along every spatial axis, replicate padding.

    ``sigma`` in voxels: a number, or a range ``(low, high)`` drawn from with ``seed``
    (torchvision's ``GaussianBlur`` default is (0.1, 2.0)). ``kernel_size=None``:
    ``2 * ceil(3 sigma) + 1``.
    """

    sigma: float | tuple[float, float] = 1.0
    kernel_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self._range()
        if not 0 < low <= high:
            raise ViewError(f"blur sigma must be positive (a number or a range low <= high), got {self.sigma}")
        if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ViewError(f"blur kernel size must be a positive odd number, got {self.kernel_size}")

    def _range(self) -> tuple[float, float]:
        if isinstance(self.sigma, (tuple, list)):
            return float(self.sigma[0]), float(self.sigma[1])
        return float(self.sigma), float(self.sigma)

    def value(self) -> float:
        """The sigma this view uses."""
        low, high = self._range()
        return low if low == high else _draw(self.seed, low, high)[0]

    def describe(self) -> str:
        low, high = self._range()
        text = f"blur:{low:g}" if low == high else f"blur:{low:g},{high:g}"
        if self.kernel_size is not None:
            text += f":k={self.kernel_size}"
        return text if low == high else f"{text}:seed={self.seed}"

    def apply(self, x: Tensor) -> Tensor:
        sigma = self.value()
        ndim = x.ndim - 2
        if not 1 <= ndim <= 3:
            raise ViewError(f"blur works on 1 to 3 spatial axes, the input has {ndim}")
        size = self.kernel_size or 2 * math.ceil(3 * sigma) + 1
        return gaussian_blur(x, [size] * ndim, [sigma] * ndim, padding="replicate")


@dataclass(frozen=True)
class Greyscale(View):
    """A colour (3-channel) input turned grey, the grey level copied to all three channels."""

    def describe(self) -> str:
        return "greyscale"

    def check(self, x: Tensor) -> None:
        if not _colour(x):
            raise ViewError(
                f"the greyscale view needs a colour input with 3 channels, got {x.shape[1]}; drop it from views"
            )

    def apply(self, x: Tensor) -> Tensor:
        self.check(x)
        return _luminance(x).expand_as(x).contiguous()


@dataclass(frozen=True)
class IntensityScaleShift(View):
    """``x * s + t * std(x)`` per sample and channel: s in [1 - scale, 1 + scale], t in [-shift, shift].

    The shift is relative to the channel's standard deviation, so it means the same
    for HU, z-scored or [0, 1] inputs. Drawn with ``seed``.
    """

    scale: float = 0.1
    shift: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.scale < 1.0 or self.shift < 0:
            raise ViewError(f"intensity scale must be in [0, 1) and shift >= 0, got {self.scale}, {self.shift}")

    def factors(self) -> tuple[float, float]:
        u, v = _draw(self.seed, -1.0, 1.0, 2)
        return 1.0 + self.scale * u, self.shift * v

    def describe(self) -> str:
        return f"intensity:{self.scale:g},{self.shift:g}:seed={self.seed}"

    def apply(self, x: Tensor) -> Tensor:
        scale, shift = self.factors()
        std = x.std(dim=_spatial(x, 2), keepdim=True, unbiased=False)
        return x * scale + shift * std


@dataclass(frozen=True)
class Gamma(View):
    """Gamma correction per sample and channel on the channel's own [min, max] range.

    ``y = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma``, gamma drawn from ``gamma``
    (a number or a range; default (0.7, 1.5), nnU-Net's) with ``seed``. Constant
    channels are left alone.
    """

    gamma: float | tuple[float, float] = (0.7, 1.5)
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self._range()
        if not 0 < low <= high:
            raise ViewError(f"gamma must be positive (a number or a range low <= high), got {self.gamma}")

    def _range(self) -> tuple[float, float]:
        if isinstance(self.gamma, (tuple, list)):
            return float(self.gamma[0]), float(self.gamma[1])
        return float(self.gamma), float(self.gamma)

    def value(self) -> float:
        low, high = self._range()
        return low if low == high else _draw(self.seed, low, high)[0]

    def describe(self) -> str:
        low, high = self._range()
        return f"gamma:{low:g}" if low == high else f"gamma:{low:g},{high:g}:seed={self.seed}"

    def apply(self, x: Tensor) -> Tensor:
        gamma = self.value()
        dims = _spatial(x, 2)
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        span = hi - lo
        safe = torch.where(span > 0, span, torch.ones_like(span))
        return torch.where(span > 0, lo + span * ((x - lo) / safe).clamp(0, 1).pow(gamma), x)


# ---------------------------------------------------------------------------------------
# Default view sets and the string syntax


def anatomical_axes(codes: Sequence[str]) -> tuple[int, tuple[int, int]]:
    """``(left-right axis, axial plane)`` from orientation codes such as nibabel's ``aff2axcodes``.

    ``("R", "A", "S")`` gives ``(0, (0, 1))``; KiTS23 as stored, ``("I", "P", "L")``,
    gives ``(2, (1, 2))``. Two codes (a 2D image) give ``(horizontal axis, (0, 1))``:
    the left-right axis, or the anterior-posterior one of a sagittal slice; a PNG as a
    network sees it (row, column: codes ``("P", "L")``) gives ``(1, (0, 1))``.
    """
    letters = [c.upper()[:1] for c in codes]
    groups = [{"L", "R"}, {"A", "P"}, {"S", "I"}]
    found = [next((i for i, c in enumerate(letters) if c in g), None) for g in groups]
    named = sum(any(c in g for c in letters) for g in groups)
    if len(letters) == 2 and named == 2 and all(any(c in g for g in groups) for c in letters):
        horizontal = found[0] if found[0] is not None else found[1]
        if horizontal is not None:
            return horizontal, (0, 1)
    if len(letters) != 3 or None in found:
        raise ViewError(
            f"orientation codes {tuple(codes)} do not name {len(letters)} different anatomical axes "
            "(e.g. R, A, S; or L, P for a 2D image)"
        )
    lr, ap = int(found[0] or 0), int(found[1] or 0)
    return lr, (min(lr, ap), max(lr, ap))


def default_views(
    ndim: int,
    channels: int,
    *,
    seed: int = 0,
    lr_axis: int | None = None,
    axial_plane: tuple[int, int] = (0, 1),
    fill: float | Literal["min"] | None = None,
) -> list[View]:
    """The default view set for an input with ``ndim`` spatial axes and ``channels`` channels.

    2D (the RobustCAM set): identity, horizontal flip, rotation +15 deg (zero fill),
    intensity jitter (brightness and contrast 0.4; saturation for colour), Gaussian
    blur (kernel 5, sigma drawn from (0.1, 2.0)), greyscale (colour only). 3D:
    identity, left-right flip, in-plane rotation +10 and -10 deg filled with the
    volume's minimum (air in CT, background in MR: 0 would be water in HU or the mean
    of a z-scored MR), intensity scale and shift, Gaussian blur (sigma 1 voxel), gamma.
    1D: identity, flip, intensity scale and shift, blur, gamma. ``fill`` overrides the
    rotation fill. Photometric views get seeds ``seed``, ``seed + 1``, ...
    """
    if ndim == 2:
        views: list[View] = [
            Identity(),
            Flip(lr_axis),
            Rotation(15.0, axial_plane, 0.0 if fill is None else fill),
            IntensityJitter(0.4, 0.4, 0.4 if channels == 3 else 0.0, seed=seed),
            GaussianBlur((0.1, 2.0), kernel_size=5, seed=seed + 1),
        ]
        return [*views, Greyscale()] if channels == 3 else views
    if ndim == 3:
        return [
            Identity(),
            Flip(lr_axis),
            Rotation(10.0, axial_plane, "min" if fill is None else fill),
            Rotation(-10.0, axial_plane, "min" if fill is None else fill),
            IntensityScaleShift(seed=seed),
            GaussianBlur(1.0),
            Gamma(seed=seed + 1),
        ]
    if ndim == 1:
        return [Identity(), Flip(), IntensityScaleShift(seed=seed), GaussianBlur(1.0), Gamma(seed=seed + 1)]
    raise ViewError(f"RobustCAM views are defined for 1 to 3 spatial axes, the input has {ndim}")


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
_VIEW_SYNTAX = (
    "identity, flip[:AXIS], rotate:DEG[:A,B][:fill=min or VALUE], jitter[:B,C,S], "
    "blur[:SIGMA or LOW,HIGH][:k=K], greyscale, intensity[:SCALE,SHIFT], gamma[:G or LOW,HIGH]; "
    "append :seed=N to seeded views"
)


def _numbers(text: str | None) -> list[float]:
    return [float(v) for v in text.split(",")] if text else []


def _one_or_range(values: list[float], default: float | tuple[float, float], spec: str) -> float | tuple[float, float]:
    if not values:
        return default
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise ViewError(f"view {spec!r} takes one value or a range LOW,HIGH; valid views: {_VIEW_SYNTAX}")


def parse_view(spec: str | View, *, seed: int = 0) -> View:
    """Build a view from its short form (see ``_VIEW_SYNTAX``) or return a :class:`View` as is.

    ``seed`` is used by seeded views that do not name their own ``:seed=N``.
    """
    if isinstance(spec, View):
        return spec
    text = spec.strip().lower().replace(" ", "")
    seed_match = re.search(r":seed=(-?\d+)$", text)
    if seed_match:
        seed = int(seed_match.group(1))
        text = text[: seed_match.start()]
    nums = rf"{_NUMBER}(?:,{_NUMBER})*"
    if text == "identity":
        return Identity()
    if m := re.fullmatch(r"flip(?::(-?\d+))?", text):
        return Flip(None if m.group(1) is None else int(m.group(1)))
    if m := re.fullmatch(rf"(?:rotate|rotation):({_NUMBER})(?::(\d+),(\d+))?(?::fill=(min|{_NUMBER}))?", text):
        plane = (int(m.group(2)), int(m.group(3))) if m.group(2) else (0, 1)
        fill: float | Literal["min"] = "min" if m.group(4) == "min" else float(m.group(4) or 0.0)
        return Rotation(float(m.group(1)), plane, fill)
    if m := re.fullmatch(rf"jitter(?::({nums}))?", text):
        values = _numbers(m.group(1)) or [0.4, 0.4, 0.4]
        if len(values) != 3:
            raise ViewError(f"view {spec!r}: jitter takes three strengths B,C,S (e.g. jitter:0.4,0.4,0)")
        return IntensityJitter(values[0], values[1], values[2], seed=seed)
    if m := re.fullmatch(rf"blur(?::({nums}))?(?::k=(\d+))?", text):
        sigma = _one_or_range(_numbers(m.group(1)), 1.0, spec)
        return GaussianBlur(sigma, None if m.group(2) is None else int(m.group(2)), seed=seed)
    if text in ("greyscale", "grayscale"):
        return Greyscale()
    if m := re.fullmatch(rf"intensity(?::({nums}))?", text):
        values = _numbers(m.group(1)) or [0.1, 0.1]
        if len(values) != 2:
            raise ViewError(f"view {spec!r}: intensity takes SCALE,SHIFT (e.g. intensity:0.1,0.1)")
        return IntensityScaleShift(values[0], values[1], seed=seed)
    if m := re.fullmatch(rf"gamma(?::({nums}))?", text):
        return Gamma(_one_or_range(_numbers(m.group(1)), (0.7, 1.5), spec), seed=seed)
    raise ViewError(f"view {spec!r} is not known; valid views: {_VIEW_SYNTAX}")
