"""Targets: what number an explanation explains.

A target turns the model output into one differentiable score per sample:

* :class:`ClassTarget` -- the logit of class ``c`` of a classifier, shape ``(N, C)``.
* :class:`SegmentationTarget` -- ``S = sum over p in M of logit_c(p)`` for a
  segmentation network, shape ``(N, C, *spatial)`` (Vinogradova et al. 2020;
  Rheude et al.). ``M`` is a :class:`PixelSet` resolved on the model's own
  prediction.

Both work for softmax heads (one class per pixel) and multi-label sigmoid heads
(nnU-Net region training, e.g. KiTS "kidney+masses", "masses", "tumor"). On a
softmax head a segmentation target may also name a *region*, a set of classes
merged into one (KiTS "masses" = tumor + cyst): its logit is the logit of the
merged class, ``logsumexp`` over the region's channels (exactly ``logit_c`` for one
class), its probability the sum of the region's probabilities.

A target is a specification; :meth:`bind` resolves it against one model output
into a :class:`BoundTarget` whose class indices and pixel set are fixed, so that
region methods score perturbed inputs on the same ``M``.

Why one module of this size: targets and the pixel sets they bind share one grammar
(:func:`parse_pixel_set`) and one view of the output (:class:`ClassMaps`); split, each half
would import the other.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import ClassVar, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from medcam.core.ops import class_argmax
from medcam.errors import UserError

Activation = Literal["softmax", "sigmoid"]
_ACTIVATIONS = ("softmax", "sigmoid")


class TargetError(UserError):
    """A target cannot be resolved on this output; the message says how to pick another."""


def class_probabilities(output: Tensor, activation: Activation) -> Tensor:
    """Per-class probabilities along the channel axis (dim 1)."""
    if activation == "softmax":
        return output.softmax(dim=1)
    return output.sigmoid()


def _check_activation(activation: str) -> None:
    if activation not in _ACTIVATIONS:
        raise UserError(f"activation={activation!r} is not known; use 'softmax' or 'sigmoid'")


def _check_output(output: Tensor, *, spatial: bool) -> None:
    if spatial and output.ndim < 3:
        raise TargetError(
            f"SegmentationTarget needs an output shaped (N, C, *spatial), got {tuple(output.shape)}; "
            "use ClassTarget for a classifier"
        )
    if not spatial and output.ndim != 2:
        raise TargetError(
            f"ClassTarget needs an output shaped (N, C), got {tuple(output.shape)}; "
            "use SegmentationTarget for a segmentation network"
        )
    check_finite(output)


def check_finite(output: Tensor) -> None:
    """Raise :class:`TargetError` if the model output holds NaN or Inf values."""
    if output.numel() and not _finite(output):
        raise TargetError(
            "the model output contains NaN or Inf values, so no explanation is defined; "
            "check the input intensities and the checkpoint"
        )


def _finite(t: Tensor) -> bool:
    """Whether every value is finite, without a volume-sized mask: NaN and Inf reach the min or max."""
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _check_index(index: int, channels: int) -> None:
    if not 0 <= index < channels:
        raise TargetError(
            f"class index {index} is out of range for a model with {channels} output channels "
            f"(valid: 0..{channels - 1})"
        )


@dataclass(frozen=True)
class BoundTarget:
    """A target resolved on one output: class per sample and, for segmentation, M.

    ``mask`` is ``None`` for classification and a boolean tensor ``(N, *spatial)`` on
    the output grid for segmentation.
    """

    classes: Tensor
    activation: Activation
    mask: Tensor | None = None
    description: str = ""
    region: tuple[int, ...] | None = None

    @property
    def is_segmentation(self) -> bool:
        return self.mask is not None

    @property
    def linear(self) -> bool:
        """Whether :meth:`score` is linear in the output, so that dS/dY is the same at every output.

        One class's logit (summed over M) is; a region's ``logsumexp`` is not. A subclass
        with its own score or logit map is not assumed linear: it says so itself.
        """
        own_rule = type(self).score is BoundTarget.score and type(self).logit_map is BoundTarget.logit_map
        return own_rule and self.region is None

    def logit_map(self, output: Tensor) -> Tensor:
        """The explained logit of each sample: ``(N,)`` or ``(N, *spatial)``."""
        if self.region is not None:
            return output[:, list(self.region)].logsumexp(dim=1)
        index = self.classes.to(output.device).view(-1, *([1] * (output.ndim - 1)))
        index = index.expand(output.shape[0], 1, *output.shape[2:])
        return output.gather(1, index).squeeze(1)

    def probability_map(self, output: Tensor) -> Tensor:
        """The explained class (or region) probability: ``(N,)`` or ``(N, *spatial)``."""
        probs = class_probabilities(output, self.activation)
        if self.region is not None:
            return probs[:, list(self.region)].sum(dim=1)
        index = self.classes.to(output.device).view(-1, *([1] * (output.ndim - 1)))
        index = index.expand(output.shape[0], 1, *output.shape[2:])
        return probs.gather(1, index).squeeze(1)

    def score(self, output: Tensor) -> Tensor:
        """Differentiable score per sample: the class logit, or its sum over M."""
        logits = self.logit_map(output)
        if self.mask is None:
            return logits
        mask = self.mask.to(device=logits.device, dtype=logits.dtype)
        return (logits * mask).flatten(1).sum(dim=1)

    def probability(self, output: Tensor) -> Tensor:
        """Class probability per sample; for segmentation its mean over M.

        Region methods and faithfulness metrics score inputs with this.
        """
        probs = self.probability_map(output)
        if self.mask is None:
            return probs
        mask = self.mask.to(device=probs.device, dtype=probs.dtype)
        return (probs * mask).flatten(1).sum(dim=1) / mask.flatten(1).sum(dim=1)

    def check_channels(self, channels: int) -> None:
        """Raise :class:`TargetError` unless every class the target reads is one of ``channels`` output channels."""
        for index in self.region if self.region is not None else self.classes.unique().tolist():
            _check_index(int(index), channels)

    def select(self, samples: Tensor | slice) -> BoundTarget:
        """The same target restricted to some samples of the batch."""
        mask = None if self.mask is None else self.mask[samples]
        return replace(self, classes=self.classes[samples], mask=mask)

    def repeat(self, times: int) -> BoundTarget:
        """The target for a batch made of ``times`` copies of each sample, sample-major."""
        mask = None if self.mask is None else self.mask.repeat_interleave(times, dim=0)
        return replace(self, classes=self.classes.repeat_interleave(times), mask=mask)

    def with_mask(self, mask: Tensor) -> BoundTarget:
        """The same class with another pixel set (e.g. M warped into an augmented view)."""
        if self.mask is None:
            raise TargetError("a classification target has no pixel set to replace")
        return replace(self, mask=mask.bool())


class Target(ABC):
    """A target specification, resolved on a model output by :meth:`bind`."""

    @abstractmethod
    def bind(self, output: Tensor) -> BoundTarget:
        """Resolve class indices (and M) on ``output``; raise :class:`TargetError` if impossible."""

    @property
    def linear(self) -> bool:
        """Whether every bound target's score is linear in the output (:attr:`BoundTarget.linear`)."""
        return False


@dataclass(frozen=True)
class ClassTarget(Target):
    """Explain class ``index`` of a classifier (``None``: each sample's predicted class)."""

    index: int | Sequence[int] | None = None
    activation: Activation = "softmax"

    def __post_init__(self) -> None:
        _check_activation(self.activation)

    def bind(self, output: Tensor) -> BoundTarget:
        _check_output(output, spatial=False)
        n, channels = output.shape
        if self.index is None:
            classes = output.argmax(dim=1)
        elif isinstance(self.index, int):
            _check_index(self.index, channels)
            classes = torch.full((n,), self.index, dtype=torch.long)
        else:
            if len(self.index) != n:
                raise TargetError(f"ClassTarget got {len(self.index)} class indices for a batch of {n}")
            for i in self.index:
                _check_index(int(i), channels)
            classes = torch.as_tensor(list(self.index), dtype=torch.long)
        return BoundTarget(classes.to(output.device), self.activation, None, f"class {self.index}")

    @property
    def linear(self) -> bool:
        return True  # one class's logit


# ---------------------------------------------------------------------------------------
# Pixel sets


class ClassMaps:
    """What a pixel set may look at: the explained class on the output grid.

    ``probability``: its probability ``(N, *spatial)``; ``predicted``: where the model
    predicts it (softmax: argmax in the class or region; sigmoid: p > 0.5). Both are
    computed on first use only: a given mask, box or voxel needs neither, and on a
    large 3D output they cost more than the explanation's own score.
    """

    def __init__(self, output: Tensor, target: BoundTarget, channels: tuple[int, ...], name: str) -> None:
        self.output = output
        self.target = target
        self.channels = channels
        self.name = name

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.output.shape[2:])

    @property
    def batch(self) -> int:
        return self.output.shape[0]

    @property
    def device(self) -> torch.device:
        return self.output.device

    def empty(self) -> Tensor:
        """An all-False mask ``(N, *spatial)``."""
        return torch.zeros((self.batch, *self.spatial), dtype=torch.bool, device=self.device)

    @cached_property
    def probability(self) -> Tensor:
        return self.target.probability_map(self.output)

    @cached_property
    def predicted(self) -> Tensor:
        if self.target.activation == "sigmoid":
            return self.probability > 0.5
        return torch.isin(class_argmax(self.output), torch.tensor(self.channels, device=self.device))


class PixelSet(ABC):
    """The set M of output pixels whose class-c logits a segmentation target sums."""

    # True when M is given (a box, a mask, the image): it does not look at the model's output
    given: ClassVar[bool] = False

    @abstractmethod
    def mask(self, maps: ClassMaps) -> Tensor:
        """Boolean ``(N, *spatial)`` mask on the output grid."""

    @abstractmethod
    def describe(self) -> str:
        """A short, replayable definition (the CLI's ``--pixels`` syntax)."""


@dataclass(frozen=True)
class Predicted(PixelSet):
    """Pixels predicted as class c (argmax == c; sigmoid heads: p_c > 0.5). The default."""

    def mask(self, maps: ClassMaps) -> Tensor:
        return maps.predicted

    def describe(self) -> str:
        return "predicted"


@dataclass(frozen=True)
class Threshold(PixelSet):
    """Pixels whose class-c probability (softmax or sigmoid) exceeds ``threshold``."""

    threshold: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise UserError(f"a probability threshold must be in [0, 1), got {self.threshold}")

    def mask(self, maps: ClassMaps) -> Tensor:
        return maps.probability > self.threshold

    def describe(self) -> str:
        return f"prob>{self.threshold:g}"


@dataclass(frozen=True)
class WholeImage(PixelSet):
    """Every output pixel."""

    given = True

    def mask(self, maps: ClassMaps) -> Tensor:
        return ~maps.empty()

    def describe(self) -> str:
        return "image"


@dataclass(frozen=True, eq=False)
class Mask(PixelSet):
    """A given boolean mask, ``(*spatial)`` or ``(N, *spatial)`` on the output grid."""

    given = True

    values: Tensor
    label: str = "mask"

    def mask(self, maps: ClassMaps) -> Tensor:
        spatial, batch = maps.spatial, maps.batch
        values = self.values.to(device=maps.device).bool()
        if values.ndim == len(spatial):
            values = values.unsqueeze(0).expand(batch, *spatial)
        if tuple(values.shape) != (batch, *spatial):
            raise TargetError(
                f"the pixel-set mask has shape {tuple(self.values.shape)}, but the model output grid is "
                f"{spatial} (batch {batch}); give a mask of shape {spatial}"
            )
        return values

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True)
class Box(PixelSet):
    """An axis-aligned box ``start <= p < stop`` in output index order."""

    given = True

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop):
            raise UserError(f"box start {self.start} and stop {self.stop} differ in length")
        if any(b <= a for a, b in zip(self.start, self.stop, strict=True)):
            raise UserError(f"box start {self.start} must be below stop {self.stop} in every axis")

    def mask(self, maps: ClassMaps) -> Tensor:
        spatial = maps.spatial
        if len(self.start) != len(spatial):
            raise TargetError(f"the box has {len(self.start)} coordinates, the output has {len(spatial)} axes")
        if any(a < 0 or b > s for a, b, s in zip(self.start, self.stop, spatial, strict=True)):
            raise TargetError(f"the box {self.start}..{self.stop} lies outside the output grid {spatial}")
        out = maps.empty()
        region = (slice(None), *tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True)))
        out[region] = True
        return out

    def describe(self) -> str:
        return f"box:{','.join(map(str, self.start))}:{','.join(map(str, self.stop))}"


@dataclass(frozen=True)
class Voxel(PixelSet):
    """A single pixel / voxel, in output index order."""

    given = True

    coords: tuple[int, ...]

    def mask(self, maps: ClassMaps) -> Tensor:
        stop = tuple(c + 1 for c in self.coords)
        spatial = maps.spatial
        if len(self.coords) != len(spatial) or any(not 0 <= c < s for c, s in zip(self.coords, spatial, strict=True)):
            raise TargetError(f"the voxel {self.coords} lies outside the output grid {spatial}")
        return Box(self.coords, stop).mask(maps)

    def describe(self) -> str:
        return f"voxel:{','.join(map(str, self.coords))}"


@dataclass(frozen=True)
class Component(PixelSet):
    """The ``rank``-th largest connected component of the predicted class (1 = largest).

    Connectivity is face adjacency (6 neighbours in 3D, 4 in 2D), scipy's default.
    """

    rank: int = 1

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UserError(f"component rank counts from 1 (the largest), got {self.rank}")

    def mask(self, maps: ClassMaps) -> Tensor:
        predicted = maps.predicted.cpu().numpy()
        out = np.zeros_like(predicted)
        for n, sample in enumerate(predicted):
            labels, count = ndimage.label(sample)
            if count < self.rank:
                raise TargetError(
                    f"sample {n} has {count} connected component(s) of {maps.name}, "
                    f"so component {self.rank} does not exist; pick a rank from 1 to {count} "
                    "or another pixel set"
                )
            sizes = np.bincount(labels.ravel())[1:]
            # stable order: larger first, then lower label id
            order = np.lexsort((np.arange(count), -sizes))
            out[n] = labels == order[self.rank - 1] + 1
        return torch.from_numpy(out).to(maps.device)

    def describe(self) -> str:
        return f"component:{self.rank}"


_INT_LIST = r"-?\d+(?:,-?\d+)*"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_pixel_set(spec: str | Tensor | PixelSet) -> PixelSet:
    """Build a pixel set from its short form.

    ``"predicted"``, ``"prob>0.5"``, ``"image"``, ``"component"`` / ``"component:K"``,
    ``"voxel:a,b[,c]"``, ``"box:a0,b0[,c0]:a1,b1[,c1]"`` (output index order, stop
    exclusive), a boolean tensor, or a :class:`PixelSet`.
    """
    if isinstance(spec, PixelSet):
        return spec
    if isinstance(spec, Tensor):
        return Mask(spec)
    text = spec.strip().lower()
    if text == "predicted":
        return Predicted()
    if text == "image":
        return WholeImage()
    if m := re.fullmatch(r"prob>([0-9.]+)", text):
        return Threshold(float(m.group(1)))
    if m := re.fullmatch(r"component(?::(\d+))?", text):
        return Component(int(m.group(1) or 1))
    if m := re.fullmatch(rf"voxel:({_INT_LIST})", text):
        return Voxel(_ints(m.group(1)))
    if m := re.fullmatch(rf"box:({_INT_LIST}):({_INT_LIST})", text):
        return Box(_ints(m.group(1)), _ints(m.group(2)))
    raise UserError(
        f"pixel set {spec!r} is not known; use predicted, prob>T, image, component[:K], "
        "voxel:a,b[,c], box:a0,b0[,c0]:a1,b1[,c1] or a boolean mask tensor"
    )


@dataclass(frozen=True)
class SegmentationTarget(Target):
    """Explain class ``index`` of a segmentation network over the pixel set ``pixels``.

    ``S = sum over p in M of logit_index(p)``. Background (index 0) is a normal class.
    ``index`` may be a tuple of classes of a softmax head, explained as one merged
    region (see the module docstring).
    """

    index: int | tuple[int, ...]
    pixels: str | Tensor | PixelSet = "predicted"
    activation: Activation = "softmax"
    pixel_set: PixelSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_activation(self.activation)
        object.__setattr__(self, "pixel_set", parse_pixel_set(self.pixels))
        if isinstance(self.index, (tuple, list)):
            region = tuple(sorted({int(i) for i in self.index}))
            if not region:
                raise UserError("a class region needs at least one class index")
            if len(region) > 1 and self.activation == "sigmoid":
                raise UserError(
                    "a region of several classes is defined for softmax heads only; a sigmoid head's "
                    "channels are regions already, so explain one channel"
                )
            object.__setattr__(self, "index", region[0] if len(region) == 1 else region)

    @property
    def region(self) -> tuple[int, ...] | None:
        return self.index if isinstance(self.index, tuple) else None

    @property
    def linear(self) -> bool:
        return self.region is None  # one class's logit; a region's logsumexp is not linear

    @property
    def pixels_given(self) -> bool:
        """Whether M is given (image, box, voxel, mask) rather than found on the prediction."""
        return self.pixel_set.given

    def bind(self, output: Tensor) -> BoundTarget:
        _check_output(output, spatial=True)
        return self._resolve(output)

    def bind_on_grid(self, samples: int, spatial: tuple[int, ...], device: torch.device | str) -> BoundTarget:
        """Bind without an output, for a given M: ``samples`` outputs on the grid ``spatial``.

        The same target as :meth:`bind` gives on any output of that shape (M does not look
        at the output). The output's own checks are the caller's, once it has one:
        :meth:`BoundTarget.check_channels` and :func:`check_finite`.
        """
        if not self.pixels_given:
            raise ValueError(f"the pixel set {self.pixel_set.describe()} is found on the output; use bind(output)")
        shape = (samples, max(self.channels) + 1, *spatial)
        return self._resolve(torch.zeros((), device=device).expand(shape))  # a shape, no memory

    @property
    def channels(self) -> tuple[int, ...]:
        """The output channels the target reads."""
        return self.index if isinstance(self.index, tuple) else (self.index,)

    def _resolve(self, output: Tensor) -> BoundTarget:
        channels = self.channels
        for index in channels:
            _check_index(index, output.shape[1])
        first = channels[0]
        classes = torch.full((output.shape[0],), first, dtype=torch.long, device=output.device)
        name = f"class {self.index}" if self.region is None else f"classes {list(self.region)}"
        unbound = BoundTarget(classes, self.activation, None, name, self.region)
        with torch.no_grad():
            mask = self.pixel_set.mask(ClassMaps(output.detach(), unbound, channels, name))
        empty = (mask.flatten(1).sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise TargetError(
                f"the pixel set M ({self.pixel_set.describe()}) is empty for {name} "
                f"in sample(s) {empty}: the model predicts no such pixels there; choose another "
                "pixel set, e.g. pixels='image', 'prob>0.1' or a box"
            )
        return replace(unbound, mask=mask, description=f"{name} over {self.pixel_set.describe()}")
