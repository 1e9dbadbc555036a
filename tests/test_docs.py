"""Docs as tested code: every shell and Python block of README.md and docs/*.md runs as written.

Each page's blocks run in order in one temporary folder (a page's later blocks use what its
earlier blocks wrote), with the repository's ``training/`` and ``configs/`` linked in, as
when a reader types the commands at the root of a clone. ``bash``/``sh`` blocks run with
``bash -e``; ``console`` blocks run their ``$ `` lines; ``python`` blocks run in one
namespace per page, in the folder. A block that needs the reader's own data, a GPU or the
network is marked in the page with ``<!-- not-tested: REASON -->`` on the line before its
fence and is reported as skipped with that reason; every other block must succeed.

A page is one test (its blocks are subtests), so under ``pytest -n 2 --dist loadgroup`` a
page stays on one worker while other pages and the rest of the suite run on the other.
The same machinery runs the example of every ``medcam COMMAND --help``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "console"}
RUNNABLE = SHELL | {"python"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
NOT_TESTED = re.compile(r"<!--\s*not-tested:\s*(?P<reason>.*?)\s*-->")
LINKED = ("training", "configs")  # what a reader at the root of a clone has next to their files
TIMEOUT = 900  # seconds per block: a bound against hangs, far above what a block takes


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_tested: str | None  # the reason given in the page, or None: the block must run


def page_blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown page in a runnable language, in page order."""
    lines = path.read_text().splitlines()
    name = str(path.relative_to(REPO))
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening["indent"], opening["lang"].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        if lang in RUNNABLE:
            found.append(Block(name, i + 1, lang, "\n".join(body) + "\n", _reason(lines, i)))
        i = j + 1
    return found


def _reason(lines: list[str], fence: int) -> str | None:
    """The ``not-tested`` reason on the last non-blank line before the fence, if any."""
    k = fence - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    marked = NOT_TESTED.search(lines[k]) if k >= 0 else None
    return marked["reason"] if marked else None


def console_commands(code: str) -> str:
    """The ``$ `` lines of a console block (with their ``\\`` continuations) as one script."""
    script: list[str] = []
    continuing = False
    for line in code.splitlines():
        if line.startswith("$ ") or continuing:
            script.append(line[2:] if line.startswith("$ ") and not continuing else line)
            continuing = line.rstrip().endswith("\\")
    return "\n".join(script) + "\n"


def environment() -> dict[str, str]:
    """This interpreter's ``python`` and ``medcam`` first on PATH, the checkout importable."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny examples; extra threads only contend on shared CI cores
    env.setdefault("TQDM_DISABLE", "1")
    return env


def run_shell(script: str, folder: Path) -> None:
    """Run a shell script in ``folder`` with ``bash -e -o pipefail``; fail with its output on error."""
    started = time.perf_counter()
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=folder,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if done.returncode != 0:
        pytest.fail(
            f"exit status {done.returncode} after {time.perf_counter() - started:.0f} s\n"
            f"--- script\n{script}--- stdout\n{done.stdout[-4000:]}--- stderr\n{done.stderr[-4000:]}",
            pytrace=False,
        )


def run_python(code: str, folder: Path, namespace: dict[str, Any], where: str) -> None:
    """Run a Python block in ``folder`` in the page's namespace (later blocks see earlier names)."""
    here = Path.cwd()
    os.chdir(folder)
    try:
        exec(compile(code, where, "exec"), namespace)
    finally:
        os.chdir(here)


def _cpu_seconds(before: os.times_result) -> float:
    """CPU time since ``before`` of this process and its finished children (what a block cost)."""
    now = os.times()
    return sum(getattr(now, f) - getattr(before, f) for f in ("user", "system", "children_user", "children_system"))


def make_folder(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = base / name
        if not link.exists():
            link.symlink_to(REPO / name, target_is_directory=True)
    return base


def _page_params() -> list[Any]:
    params = []
    for page in PAGES:
        name = str(page.relative_to(REPO))
        if page_blocks(page):
            params.append(pytest.param(name, id=name, marks=pytest.mark.xdist_group(name)))
    return params


@pytest.mark.parametrize("page", _page_params())
def test_doc_blocks(page: str, subtests: Any, tmp_path: Path) -> None:
    """One page: its blocks in order, one subtest each, in one folder and one Python namespace.

    One test per page (not per block) keeps a page's blocks on one worker whatever the
    scheduler does (``--dist loadgroup`` does not keep parametrized groups together with
    pytest 9 and pytest-xdist 3.8); each block is reported as a subtest, a marked one as skipped.
    """
    folder = make_folder(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    failed: str | None = None
    for block in page_blocks(REPO / page):
        where = f"{block.page}:{block.line}"
        with subtests.test(msg=f"{where}:{block.lang}"):
            if block.not_tested is not None:
                pytest.skip(f"{where}: not-tested: {block.not_tested}")
            if failed is not None:
                pytest.fail(f"not run: the block at {failed} of this page failed", pytrace=False)
            failed = where  # cleared below when the block succeeds
            before = os.times()
            if block.lang == "python":
                run_python(block.code, folder, namespace, where)
            else:
                run_shell(console_commands(block.code) if block.lang == "console" else block.code, folder)
            failed = None
            print(f"{where}: {_cpu_seconds(before):.1f} s CPU")  # shown with pytest -rP: the docs test's budget


# ---- the pages' own rules -------------------------------------------------------------------


def test_every_page_has_its_blocks_found() -> None:
    """The extractor sees fences inside lists and reads the not-tested markers (guards the test itself)."""
    blocks = [b for page in PAGES for b in page_blocks(page)]
    assert len(blocks) > 20
    assert all(b.code.strip() for b in blocks), [f"{b.page}:{b.line}" for b in blocks if not b.code.strip()]
    assert any(b.not_tested for b in blocks)


def test_pages_cite_docs_not_shared() -> None:
    """Users have the repository, not the team's shared/ folder: pages and docstrings cite docs/."""
    offenders = []
    for path in [*PAGES, *sorted((REPO / "medcam").rglob("*.py"))]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "METHODS.md" in line or "shared/" in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_configs_that_download_say_so() -> None:
    """A shipped config that fetches weights (``pretrained: true``) says so in its first lines."""
    silent = []
    for config in sorted((REPO / "configs").glob("*.yaml")):
        text = config.read_text()
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        if re.search(r"^\s*pretrained:\s*true", text, flags=re.MULTILINE) and "NEEDS A DOWNLOAD" not in header:
            silent.append(config.name)
    assert not silent, silent


def test_links_between_pages_resolve() -> None:
    """Every relative Markdown link of README.md and docs/ names an existing file."""
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(REPO)} -> {target}")
    assert not missing, "\n".join(missing)


# ---- the example of every `medcam COMMAND --help` -----------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from medcam.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def help_examples() -> dict[str, str]:
    """``{command: script}``: the indented lines under ``example`` in each subcommand's ``--help``."""
    examples = {}
    for command, parser in _subcommands().items():
        text = parser.format_help()
        found = re.search(r"^example\b.*$", text, flags=re.MULTILINE)
        assert found, f"medcam {command} --help has no example"
        lines = [line.strip() for line in text[found.end() :].splitlines() if line.startswith("  ")]
        examples[command] = "\n".join(lines) + "\n"
    return examples


def test_help_has_description_and_example() -> None:
    commands = _subcommands()
    assert set(commands) == set(HELP_ORDER)
    for command, parser in commands.items():
        assert parser.description and len(parser.description) > 40, command
    for command, script in help_examples().items():
        assert "medcam " + command in script, (command, script)


# the order in which the examples build on each other: demo writes the phantom the others use
HELP_ORDER = ("demo", "info", "explain", "levels", "evaluate")


@pytest.mark.xdist_group("help")
def test_help_examples_run(subtests: Any, tmp_path: Path) -> None:
    """The example of every ``medcam COMMAND --help``, in one folder, in ``HELP_ORDER``."""
    folder = make_folder(tmp_path)
    examples = help_examples()
    failed: str | None = None
    for command in HELP_ORDER:
        with subtests.test(msg=f"medcam {command} --help"):
            if failed is not None:
                pytest.fail(f"not run: the example of medcam {failed} --help failed", pytrace=False)
            failed = command
            before = os.times()
            run_shell(examples[command], folder)
            failed = None
            print(f"medcam {command} --help: {_cpu_seconds(before):.1f} s CPU")
