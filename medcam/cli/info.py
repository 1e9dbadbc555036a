"""``medcam info``: what medcam offers (methods), and later what a model offers."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    sub.add_parser("info", help="list the registered CAM methods")


def run(args: argparse.Namespace) -> int:
    import medcam

    print("methods:", ", ".join(medcam.list_methods()))
    return 0
