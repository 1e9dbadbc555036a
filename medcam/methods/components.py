"""The methods that can serve inside another method (RobustCAM's base), and the one factory with option checks.

:mod:`medcam.methods.registry` extends this table with the methods built on top of
these (RobustCAM) into the registry that the API, the CLI and the contract tests use;
RobustCAM resolves its base here, so no module imports the registry that imports it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from medcam.errors import UserError
from medcam.methods.base import CAMMethod
from medcam.methods.fusion import FusionCAM, UnionCAM
from medcam.methods.gradient import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM
from medcam.methods.region import GroupCAM, ScoreCAM

COMPONENTS: dict[str, type[CAMMethod]] = {
    CAM.name: CAM,
    GradCAM.name: GradCAM,
    GradCAMPlusPlus.name: GradCAMPlusPlus,
    HiResCAM.name: HiResCAM,
    XGradCAM.name: XGradCAM,
    ScoreCAM.name: ScoreCAM,
    GroupCAM.name: GroupCAM,
    UnionCAM.name: UnionCAM,
    FusionCAM.name: FusionCAM,
}


class MethodOptionError(UserError, TypeError):
    """An option the method does not have (a ``TypeError`` for Python callers, a user error for the CLI)."""


def method_class(table: Mapping[str, type[CAMMethod]], name: str) -> type[CAMMethod]:
    """``table[name]`` (case-insensitive); an unknown name lists the valid ones and the closest."""
    key = name.lower()
    if key not in table:
        close = difflib.get_close_matches(key, list(table), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"method {name!r} is not known (valid: {', '.join(sorted(table))}){hint}")
    return table[key]


def parameters(cls: type[CAMMethod]) -> list[str]:
    """The option names a method class accepts, in signature order."""
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]


def build(table: Mapping[str, type[CAMMethod]], name: str | CAMMethod, options: Mapping[str, Any]) -> CAMMethod:
    """Instantiate a method of ``table`` by name with its options; unknown names and options are named."""
    if isinstance(name, CAMMethod):
        if options:
            raise TypeError(f"options {sorted(options)} apply only when the method is given by name")
        return name
    cls = method_class(table, name)
    accepted = parameters(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise MethodOptionError(f"method {name.lower()!r} has no option(s) {unknown} (valid options: {valid})")
    return cls(**options)


def create_component(name: str | CAMMethod, **options: Any) -> CAMMethod:
    """A method that can serve inside another one, by name with its options."""
    return build(COMPONENTS, name, options)
