"""Method registry: name -> class. It feeds ``medcam.explain``, the CLI choices and the tests.

A method is tested by the contract suite the moment it is listed here.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from medcam.errors import UserError
from medcam.methods.base import CAMMethod
from medcam.methods.fusion import FusionCAM, UnionCAM
from medcam.methods.gradient import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM
from medcam.methods.region import GroupCAM, ScoreCAM
from medcam.methods.robust import RobustCAM

METHODS: dict[str, type[CAMMethod]] = {
    CAM.name: CAM,
    GradCAM.name: GradCAM,
    GradCAMPlusPlus.name: GradCAMPlusPlus,
    HiResCAM.name: HiResCAM,
    XGradCAM.name: XGradCAM,
    ScoreCAM.name: ScoreCAM,
    GroupCAM.name: GroupCAM,
    UnionCAM.name: UnionCAM,
    FusionCAM.name: FusionCAM,
    RobustCAM.name: RobustCAM,
}


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(METHODS)


class MethodOptionError(UserError, TypeError):
    """An option the method does not have (a ``TypeError`` for Python callers, a user error for the CLI)."""


def _method_class(name: str) -> type[CAMMethod]:
    key = name.lower()
    if key not in METHODS:
        close = difflib.get_close_matches(key, list(METHODS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"method {name!r} is not known (valid: {', '.join(list_methods())}){hint}")
    return METHODS[key]


def method_parameters(name: str) -> list[str]:
    """The option names a registered method accepts, in signature order."""
    return [p for p in inspect.signature(_method_class(name)).parameters if p not in ("self", "args", "kwargs")]


def create_method(name: str | CAMMethod, **options: Any) -> CAMMethod:
    """Instantiate a method by name with its options; unknown names and options are named."""
    if isinstance(name, CAMMethod):
        if options:
            raise TypeError(f"options {sorted(options)} apply only when the method is given by name")
        return name
    cls = _method_class(name)
    accepted = method_parameters(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise MethodOptionError(f"method {name.lower()!r} has no option(s) {unknown} (valid options: {valid})")
    return cls(**options)
