"""The evaluation's files: results.csv and curves.csv, resumable and sharded.

One row per sample x method in ``results.csv`` (``sample, method, status, seconds,
warmup`` and the metric columns); one row per sample x method x curve in ``curves.csv``
(the deletion / insertion scores at each step). Rows are appended and flushed one
by one, curves before their result row, so an interrupted run loses at most the
row being written: on resume a torn last line is dropped, every (sample, method)
already in ``results.csv`` is skipped, and curves without a result row are dropped.

``evaluation.json`` records the settings; resuming into a folder written with other
settings is an error rather than a silent mix. Sharded runs (``torchrun``: one shard
per rank) write ``shards/results.rank<r>-of-<w>.csv`` and a ``.done`` marker each;
:func:`merge_shards` joins complete shards into ``results.csv`` / ``curves.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcam.errors import UserError
from medcam.evaluate.settings import EvaluationSettings

RESULTS = "results.csv"
CURVES = "curves.csv"
SETTINGS = "evaluation.json"
SHARDS = "shards"
BASE_FIELDS = ("sample", "method", "status", "seconds", "warmup")
_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers by value: ``case_2`` before ``case_10``."""
    return tuple((1, int(part)) if part.isdigit() else (0, part) for part in _DIGITS.split(text) if part)


@dataclass(frozen=True)
class Shard:
    """This process's share of the samples: every ``world``-th sample from ``rank``."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise UserError(f"shard rank {self.rank} of world size {self.world} is invalid; need 0 <= rank < world")

    @classmethod
    def from_env(cls) -> Shard:
        """The shard ``torchrun`` assigns through RANK and WORLD_SIZE (0 of 1 without them)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    @property
    def suffix(self) -> str:
        return f"rank{self.rank}-of-{self.world}"


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    The temporary file is named after the process: ranks of one ``torchrun`` job may
    write the same file (evaluation.json) at once, and one rank's rename must not take
    the other's temporary file away.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def _read_rows(path: Path, header: Sequence[str]) -> tuple[list[dict[str, str]], bool]:
    """Complete rows of a CSV written by this module, and whether a torn or foreign line was dropped."""
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if not lines:
        return [], False
    found = next(csv.reader([lines[0]]))
    if found != list(header):
        raise UserError(
            f"{path} has columns {found}, expected {list(header)}: it was written by other settings; "
            "use a new output folder"
        )
    rows, dropped = [], False
    for line in lines[1:]:
        if not line.endswith("\n"):
            dropped = True  # the line being written when the run stopped
            continue
        values = next(csv.reader([line]))
        if len(values) != len(header):
            dropped = True
            continue
        rows.append(dict(zip(header, values, strict=True)))
    return rows, dropped


def _csv_text(header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([format_value(row.get(name)) for name in header])
    return buffer.getvalue()


class ResultStore:
    """The append-only result and curve files of one shard of an evaluation."""

    def __init__(
        self,
        folder: Path,
        settings: EvaluationSettings,
        shard: Shard = Shard(),
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.settings = settings
        self.shard = shard
        # what else decides the numbers (model, data, target): canonical JSON, checked on resume
        self.context = json.dumps(context or {}, sort_keys=True, default=str)
        self.header = (*BASE_FIELDS, *settings.columns)
        steps = settings.faithfulness.steps
        self.curve_header = ("sample", "method", "kind", *(f"{i / steps:g}" for i in range(steps + 1)))
        if shard.world == 1:
            self.results, self.curves = self.folder / RESULTS, self.folder / CURVES
        else:
            shards = self.folder / SHARDS
            self.results = shards / f"results.{shard.suffix}.csv"
            self.curves = shards / f"curves.{shard.suffix}.csv"
        self.done_marker = self.results.with_suffix(".done")

    def open(self) -> set[tuple[str, str]]:
        """Prepare the files (resuming if they exist) and return the (sample, method) pairs done."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.results.parent.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        rows, torn = _read_rows(self.results, self.header)
        done = {(r["sample"], r["method"]) for r in rows}
        curves, torn_curves = _read_rows(self.curves, self.curve_header)
        kept = [c for c in curves if (c["sample"], c["method"]) in done]
        if torn or not self.results.exists():
            write_atomic(self.results, _csv_text(self.header, rows))
        if torn_curves or len(kept) != len(curves) or not self.curves.exists():
            write_atomic(self.curves, _csv_text(self.curve_header, kept))
        self.done_marker.unlink(missing_ok=True)
        return done

    def _check_settings(self) -> None:
        path = self.folder / SETTINGS
        mine = {"settings": self.settings.fingerprint(), "context": self.context}
        if path.exists():
            written = json.loads(path.read_text(encoding="utf-8"))
            theirs = {"settings": written.get("settings"), "context": written.get("context", "{}")}
            if theirs != mine:
                what = "settings" if theirs["settings"] != mine["settings"] else "model, data or target"
                raise UserError(
                    f"{self.folder} holds an evaluation with other {what} ({path}); resume it with the same "
                    "config, pass --overwrite to start again, or write to a new output folder"
                )
        else:
            write_atomic(path, json.dumps({"format": 1, **mine}, indent=2) + "\n")

    def append(self, row: Mapping[str, Any], curves: Mapping[str, Sequence[float]] = {}) -> None:
        """Record one sample x method: its curves first, then its result row."""
        if curves:
            lines = [[row["sample"], row["method"], kind, *scores] for kind, scores in curves.items()]
            self._append(self.curves, lines)
        self._append(self.results, [[row.get(name) for name in self.header]])

    @staticmethod
    def _append(path: Path, lines: list[list[Any]]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([[format_value(v) for v in line] for line in lines])
        with path.open("a", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self) -> None:
        """Mark this shard complete (merging waits for every shard's marker)."""
        write_atomic(self.done_marker, "done\n")


def check_written_settings(folder: Path, settings: EvaluationSettings) -> None:
    """``folder`` must hold an evaluation written with ``settings`` (before merging its shards)."""
    path = Path(folder) / SETTINGS
    if not path.exists():
        raise UserError(f"{folder} is not an evaluation folder (no {SETTINGS}); give the output folder of the shards")
    if json.loads(path.read_text(encoding="utf-8")).get("settings") != settings.fingerprint():
        raise UserError(f"{folder} was written with other evaluation settings ({path}); merge it with its own config")


def read_results(folder: Path) -> list[dict[str, str]]:
    path = Path(folder) / RESULTS
    if not path.exists():
        raise UserError(f"{path} does not exist; run the evaluation first")
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_curves(folder: Path) -> tuple[list[float], list[dict[str, Any]]]:
    """Fractions and rows ``{sample, method, kind, scores}`` of curves.csv (empty if absent)."""
    path = Path(folder) / CURVES
    if not path.exists():
        return [], []
    with path.open(encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return [], []
        fractions = [float(v) for v in header[3:]]
        rows = [
            {"sample": r[0], "method": r[1], "kind": r[2], "scores": [float(v) for v in r[3:]]}
            for r in reader
            if len(r) == len(header)
        ]
    return fractions, rows


def merge_shards(folder: Path, settings: EvaluationSettings, world: int) -> Path:
    """Join the ``world`` complete shards of ``folder`` into results.csv and curves.csv."""
    stores = [ResultStore(folder, settings, Shard(rank, world)) for rank in range(world)]
    missing = [s.shard.rank for s in stores if not s.done_marker.exists()]
    if missing:
        raise UserError(
            f"shard(s) {missing} of {world} have not finished in {folder}; run them again (they resume), then merge"
        )
    rows: list[dict[str, str]] = []
    curves: list[dict[str, str]] = []
    for store in stores:
        rows += _read_rows(store.results, store.header)[0]
        curves += _read_rows(store.curves, store.curve_header)[0]
    order = {key: i for i, key in enumerate(settings.keys)}
    rows.sort(key=lambda r: (natural_key(r["sample"]), order.get(r["method"], len(order))))
    curves.sort(key=lambda r: (natural_key(r["sample"]), order.get(r["method"], len(order)), r["kind"]))
    write_atomic(Path(folder) / RESULTS, _csv_text(stores[0].header, rows))
    write_atomic(Path(folder) / CURVES, _csv_text(stores[0].curve_header, curves))
    return Path(folder) / RESULTS
