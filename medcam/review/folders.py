"""Output folders that appear whole or not at all.

:func:`check_output` runs before any work, so a run that would fail to write fails
first; :func:`atomic_folder` writes into a hidden temporary folder next to the target
and renames it into place only when everything is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medcam.errors import UserError


class OutputError(UserError):
    """The output folder exists, or cannot be written."""


def check_output(out: str | Path, *, overwrite: bool) -> None:
    """Fail early (before any work) if ``out`` exists without ``overwrite`` or cannot be written."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; choose another path")
    if out.exists() and not overwrite:
        raise OutputError(f"--out {out} already exists; pass --overwrite to replace it or choose another folder")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create --out {out}: {ancestor} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".medcam-write-test-", dir=ancestor)
    except OSError as err:
        raise OutputError(f"cannot write to {ancestor} ({err.strerror}); choose a writable --out folder") from None
    Path(probe).rmdir()


@contextmanager
def atomic_folder(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it becomes ``out``, on failure it vanishes.

    Parent folders created for ``out`` are removed again on failure; an existing ``out``
    is replaced only after the new one is complete.
    """
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    except OSError as err:
        _remove_empty(created)
        raise OutputError(f"cannot create {out} ({err.strerror}); choose a writable --out folder") from None
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                raise OutputError(f"--out {out} appeared while medcam was running; nothing was replaced")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            old.rmdir()
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            break
