"""Output folders that appear whole or not at all, and only where the user said.

:func:`check_output` runs before any work, so a run that would fail to write fails
first; :func:`atomic_folder` writes into a hidden temporary folder next to the target
and renames it into place only when everything is written.

Every folder medcam writes holds a marker file, :data:`MARKER`. ``--overwrite``
replaces only a folder with that marker (or an empty one), never one that holds an
input, never through a symbolic link; a hidden ``.<name>.<random>.partial`` (or
``.old``) folder left by a killed run is recognised by its name and marker and removed
by the next run on the same output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medcam.errors import UserError

MARKER = ".medcam-output"
# mkdtemp's random part: 8 characters of [a-z0-9_]
_LEFTOVER = r"\.{name}\.[a-z0-9_]{{8}}\.(partial|old)"


class OutputError(UserError):
    """The output folder exists, or cannot be written."""


def output_path(out: str | Path) -> Path:
    """``out`` as an absolute path with ``..`` resolved by name, so ``a/missing/../b`` creates only ``a/b``."""
    text = os.fspath(out)
    if not text.strip():
        raise OutputError("--out is empty; name an output folder, e.g. --out results")
    if "\0" in text:
        raise OutputError("--out contains a NUL character; name an ordinary output folder")
    return Path(os.path.abspath(text))  # noqa: PTH100 - by name: resolve() would follow links


def is_medcam_output(folder: Path) -> bool:
    """True for a real folder (not a link) holding medcam's marker file."""
    return folder.is_dir() and not folder.is_symlink() and (folder / MARKER).is_file()


def write_marker(folder: Path, *, writing: bool = False) -> None:
    """Mark ``folder`` as medcam's own (what ``--overwrite`` and the leftover clean-up look for).

    While ``writing``, the marker also names the process (so a second run leaves a live
    run's temporary folder alone); a finished folder's marker is the same on every run.
    """
    from medcam.version import __version__

    info: dict[str, object] = {"writer": "medcam", "version": __version__}
    if writing:
        info.update(pid=os.getpid(), host=socket.gethostname())
    (folder / MARKER).write_text(json.dumps(info) + "\n", encoding="utf-8")


def check_output(out: str | Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """Fail early (before any work) if ``out`` cannot be written, or exists and may not be replaced.

    With ``overwrite`` an existing ``out`` is replaced only if it is a medcam output folder
    (it holds :data:`MARKER`) or empty, is not a symbolic link and holds none of ``inputs``.
    """
    out = output_path(out)
    if out.is_symlink():
        raise OutputError(f"--out {out} is a symbolic link; medcam writes only into real folders, choose another path")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; choose another path")
    if out.exists() and not overwrite:
        raise OutputError(f"--out {out} already exists; pass --overwrite to replace it or choose another folder")
    if out.exists():
        check_replaceable(out, inputs)
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


def check_replaceable(out: Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse to replace ``out`` unless it is medcam's own output (or empty) and holds no input."""
    if not is_medcam_output(out) and any(out.iterdir()):
        raise OutputError(
            f"--overwrite replaces only medcam output folders (with a {MARKER} file) and {out} is not one; "
            "nothing was deleted, choose another --out"
        )
    real = out.resolve()
    for given in inputs:
        if given is None:
            continue
        path = Path(given).resolve()
        if path == real or real in path.parents:
            raise OutputError(
                f"--overwrite would delete the input {given}, which is inside --out {out}; choose another --out"
            )


def remove_leftovers(out: Path) -> list[Path]:
    """Remove the ``.partial``/``.old`` folders a killed run left next to ``out`` (only medcam's own)."""
    pattern = re.compile(_LEFTOVER.format(name=re.escape(out.name)))
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for entry in out.parent.iterdir():
        if pattern.fullmatch(entry.name) and is_medcam_output(entry) and not _owner_alive(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _owner_alive(folder: Path) -> bool:
    """Whether another process on this machine still writes ``folder`` (its marker names the writer)."""
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid == os.getpid() or folder.name.endswith(".old"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextmanager
def atomic_folder(out: Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it becomes ``out``, on failure it vanishes.

    Parent folders created for ``out`` are removed again on failure; an existing ``out``
    is replaced only after the new one is complete, and only if it may be
    (:func:`check_replaceable`). The temporary folder holds the marker from the start,
    so a run killed half-way leaves a folder the next run recognises and removes.
    """
    out = output_path(out)
    inputs = list(inputs)
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        write_marker(tmp, writing=True)
    except OSError as err:
        _remove_empty(created)
        raise OutputError(f"cannot create {out} ({err.strerror}); choose a writable --out folder") from None
    try:
        yield tmp
        write_marker(tmp)  # finished: the marker no longer names this process (reruns are byte-identical)
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise OutputError(f"--out {out} appeared while medcam was running; nothing was replaced")
            if out.is_symlink():
                raise OutputError(f"--out {out} is a symbolic link; nothing was replaced")
            check_replaceable(out, inputs)
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
