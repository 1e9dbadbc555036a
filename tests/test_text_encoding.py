"""medcam's own text files are UTF-8 whatever the process locale (LANG=C users, or a library that sets it)."""

from __future__ import annotations

import locale
from pathlib import Path

import pytest

from medcam.evaluate.results import write_atomic


@pytest.fixture
def c_locale():  # type: ignore[no-untyped-def]
    saved = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, "C")
    except locale.Error:
        pytest.skip("the C locale is not available")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def test_summary_tables_with_arrows_are_written_under_the_c_locale(tmp_path: Path, c_locale: None) -> None:
    assert locale.getpreferredencoding(False) != "UTF-8"  # the situation that broke summary.md
    target = tmp_path / "summary.md"
    write_atomic(target, "| method | Deletion AUC ↓ | Insertion AUC ↑ |\n")
    assert target.read_bytes().decode("utf-8") == "| method | Deletion AUC ↓ | Insertion AUC ↑ |\n"
