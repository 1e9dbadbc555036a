"""One options object for ``medcam explain``: the CLI builds it, ``explain_volume`` and batches take it.

Every field has the CLI option's name (``--window-batch`` is ``window_batch``,
``--montage-crop`` is ``montage_crop``, ``--levels enc2`` is ``levels="enc2"``); the two
switches ``--no-relu`` and ``--no-progress`` are ``relu=False`` and ``progress=False``,
``--method-option K=V`` (repeatable) is ``method_options={"K": V}``, and ``--normalize
none`` is ``normalize="none"`` (or ``None``). Building
the options builds the method once, so a wrong method name or option stops before any
file is read; a method whose defaults depend on the model grid (RobustCAM's
``orientation`` and ``seed``) gets them filled in once the grid is known
(:meth:`ExplainOptions.method_for_grid`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from medcam.core.ops import Normalization
from medcam.core.precision import Precision, check_precision
from medcam.core.windows import SlidingWindow
from medcam.errors import UserError
from medcam.methods.base import CAMMethod, PostProcessing
from medcam.methods.registry import create_method, method_parameters
from medcam.metrics.levels import DEFAULT_THRESHOLD, RankBy
from medcam.review.montage import Montage, Scale

DEFAULT_METHOD = "hirescam"


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain: the method and its options, M, layers, windows, post-processing, device, seed.

    ``reference`` is a mask ``FILE[:LABEL]`` on the input's grid against which the
    explained layers are scored and ranked (``level_threshold``, ``rank_by``:
    :mod:`medcam.metrics.levels`). ``dicom_out``: also write ``dicom/``, DICOM Parametric
    Maps and a SEG (``None``: when the input is a DICOM series; docs/dicom.md).
    """

    method: str | CAMMethod = DEFAULT_METHOD
    method_options: Mapping[str, Any] | None = None
    pixels: str = "predicted"
    layer: str | Sequence[str] = "auto"
    levels: str | Sequence[str] | None = None
    device: str = "auto"
    precision: Precision = "fp32"
    overlap: float = 0.25
    blend: str = "gaussian"
    window_batch: int = 1
    relu: bool = True
    normalize: Normalization | Literal["none"] = "minmax"
    seed: int = 0
    progress: bool = False
    reference: str | Path | None = None
    level_threshold: float = DEFAULT_THRESHOLD
    rank_by: RankBy = "dice"
    montage_scale: Scale = "shared"
    montage_slices: int = 5
    montage_crop: bool = False
    dicom_out: bool | None = None
    built: CAMMethod = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise UserError(f"seed {self.seed!r} must be an integer from 0 to 2**64-1")
        if self.normalize == "none":  # the CLI's spelling of "no normalisation"
            object.__setattr__(self, "normalize", None)
        if self.levels is not None:
            object.__setattr__(self, "layer", levels_layer(self.levels, self.layer))
            object.__setattr__(self, "levels", None)
        check_precision(self.precision)
        object.__setattr__(self, "built", build_method(self.method, self.method_options))

    @property
    def montage(self) -> Montage:
        """How ``montage.png`` is drawn (``montage_scale``, ``montage_slices``, ``montage_crop``)."""
        return Montage(self.montage_scale, self.montage_slices, self.montage_crop)

    @classmethod
    def from_keywords(cls, **settings: Any) -> ExplainOptions:
        """``ExplainOptions(**settings)`` with unknown names refused by name (the Python API's keywords)."""
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"explain options {unknown} do not exist (valid: {', '.join(sorted(known))})")
        return cls(**settings)

    def on_device(self, device: str) -> ExplainOptions:
        """The same options (and the same built method) on another device."""
        moved = copy.copy(self)
        object.__setattr__(moved, "device", device)
        return moved

    @property
    def normalization(self) -> Normalization:
        """``normalize`` with ``"none"`` read as ``None``."""
        return None if self.normalize == "none" else self.normalize

    @property
    def post(self) -> PostProcessing:
        return PostProcessing(relu=self.relu, normalization=self.normalization)

    def window(self, patch_size: Sequence[int] | None) -> SlidingWindow:
        """The sliding windows for a model with this patch size (``None``: one window)."""
        roi = tuple(patch_size) if patch_size else None
        return SlidingWindow(roi, overlap=self.overlap, mode=self.blend, batch_size=self.window_batch)

    def method_for_grid(self, *, orientation: str) -> CAMMethod:
        """The method, with the options that depend on the model grid filled in unless given.

        A method that accepts ``orientation`` gets the axis codes of the model grid (after
        the checkpoint's reorientation, e.g. ``"RAS"``; the file's own, e.g. KiTS's
        ``"IPL"``, when the model keeps it), so RobustCAM's default views flip left-right
        and rotate in the axial plane whatever the input's storage order; one that accepts
        ``seed`` gets the run's ``seed``. Other methods are used as built.
        """
        if not isinstance(self.method, str):
            return self.built
        given = dict(self.method_options or {})
        accepted = method_parameters(self.method)
        missing = {"orientation": orientation, "seed": self.seed}
        fill = {k: v for k, v in missing.items() if k in accepted and k not in given}
        return build_method(self.method, {**given, **fill}) if fill else self.built


def levels_layer(levels: str | Sequence[str], layer: str | Sequence[str] = "auto") -> str:
    """The layer spec of ``levels`` (``--levels``): ``"levels"`` for all, else ``"levels:enc2,bottleneck"``.

    ``levels`` is ``"all"`` (what a bare ``--levels`` means), comma-separated level names
    or a list of them; it says the same as ``layer="levels:..."``, so giving both is refused.
    """
    from medcam.api import layer_names

    if layer != "auto":
        raise UserError(f"give --levels or --layer, not both (got --levels {levels} and --layer {layer})")
    names = layer_names(levels) if isinstance(levels, str) else [str(n).strip() for n in levels if str(n).strip()]
    if not names:
        raise UserError("--levels needs level names, e.g. --levels enc2,bottleneck (or no value for all levels)")
    return "levels" if names == ["all"] else "levels:" + ",".join(names)


def build_method(method: str | CAMMethod, options: Mapping[str, Any] | None) -> CAMMethod:
    """The method by name with its options; a bad name or option is a one-line user error.

    Unknown names come back from the registry with the valid ones listed; a value of the
    wrong type, which a method's constructor may reject with a ``TypeError``, becomes a
    user error naming the options given.
    """
    given = dict(options or {})
    if not isinstance(method, str):
        return create_method(method, **given)
    try:
        return create_method(method, **given)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        text = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise UserError(f"method {method!r} does not accept --method-option {text}: {err}") from None
