"""``--method-option KEY=VALUE``: options of the chosen method from the command line, for every method.

Each ``KEY=VALUE`` becomes one keyword argument of the method's constructor (what
``medcam.explain(..., **options)`` and ``explain_volume(method_options=...)`` take).
VALUE is read as JSON when it parses (``3``, ``0.5``, ``true``, ``null``,
``["identity", "flip:2"]``, ``{"key": 1}``), otherwise it is the text itself
(``fusion=median``). The registry checks the names: an unknown KEY is refused with the
list of the method's options; the method checks the values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from medcam.errors import UserError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_method_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["fusion=median", "batch_size=2"]`` -> ``{"fusion": "median", "batch_size": 2}``."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise UserError(
                f"--method-option {pair!r} is not KEY=VALUE; write e.g. --method-option fusion=median "
                'or --method-option views=\'["identity","flip:2"]\''
            )
        if key in options:
            raise UserError(f"--method-option {key} is given twice; give each option once")
        options[key] = parse_value(text)
    return options


def parse_value(text: str) -> Any:
    """JSON if ``text`` parses as JSON, else ``text`` unchanged (so ``median`` needs no quotes)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
