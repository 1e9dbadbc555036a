"""One options object for ``medcam explain``: the CLI builds it, ``explain_volume`` and batches take it.

Every field has the CLI option's name (``--window-batch`` is ``window_batch``). Building
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
from typing import Any

from medcam.core.ops import Normalization
from medcam.core.precision import Precision, check_precision
from medcam.core.windows import SlidingWindow
from medcam.errors import UserError
from medcam.methods.base import CAMMethod, PostProcessing
from medcam.methods.registry import create_method, method_parameters
from medcam.metrics.levels import DEFAULT_THRESHOLD, RankBy
from medcam.review.montage import Montage

DEFAULT_METHOD = "hirescam"


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain: the method and its options, M, layers, windows, post-processing, device, seed.

    ``reference`` is a mask ``FILE[:LABEL]`` on the input's grid against which the
    explained layers are scored and ranked (``level_threshold``, ``rank_by``:
    :mod:`medcam.metrics.levels`).
    """

    method: str | CAMMethod = DEFAULT_METHOD
    method_options: Mapping[str, Any] | None = None
    pixels: str = "predicted"
    layer: str | Sequence[str] = "auto"
    device: str = "cpu"
    precision: Precision = "fp32"
    overlap: float = 0.25
    blend: str = "gaussian"
    window_batch: int = 1
    relu: bool = True
    normalize: Normalization = "minmax"
    seed: int = 0
    progress: bool = False
    reference: str | Path | None = None
    level_threshold: float = DEFAULT_THRESHOLD
    rank_by: RankBy = "dice"
    montage: Montage | None = None
    built: CAMMethod = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        object.__setattr__(self, "built", build_method(self.method, self.method_options))

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
    def post(self) -> PostProcessing:
        return PostProcessing(relu=self.relu, normalization=self.normalize)

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
