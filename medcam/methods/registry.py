"""Method registry: name -> class. It feeds ``medcam.explain``, the CLI choices and the tests.

A method is tested by the contract suite the moment it is listed here. The table is the
component methods (:mod:`medcam.methods.components`) plus the methods built on them.
"""

from __future__ import annotations

from typing import Any

from medcam.methods.base import CAMMethod
from medcam.methods.components import COMPONENTS, MethodOptionError, build, method_class, parameters
from medcam.methods.robust import RobustCAM

METHODS: dict[str, type[CAMMethod]] = {**COMPONENTS, RobustCAM.name: RobustCAM}


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(METHODS)


def method_parameters(name: str) -> list[str]:
    """The option names a registered method accepts, in signature order."""
    return parameters(method_class(METHODS, name))


def create_method(name: str | CAMMethod, **options: Any) -> CAMMethod:
    """Instantiate a method by name with its options; unknown names and options are named."""
    return build(METHODS, name, options)


__all__ = ["METHODS", "MethodOptionError", "create_method", "list_methods", "method_parameters"]
