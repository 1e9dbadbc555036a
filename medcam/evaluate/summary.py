"""summary.md: one table per metric family, mean and 95 % interval per method.

Continuous scores get a Student-t interval of the mean (``mean +/- t_{0.975, n-1} s /
sqrt(n)``); proportions (Average Increase, pointing game) get a Wilson score
interval. Rows whose status is not ``ok`` (e.g. an empty pixel set) are counted
and left out. Timing leaves out each method's first explanation in each process
(its ``warmup`` row: lazy imports, allocator and kernel set-up) and reports it apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats

from medcam.evaluate.settings import EvaluationSettings

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Column:
    """How a results.csv column is reported: heading, direction, scale, proportion or not.

    ``field``: the results.csv column it reads (default ``name``); ``rows``: which rows
    count (``"timed"``: not a method's warm-up explanation, ``"warmup"``: only those).
    """

    name: str
    heading: str
    better: str  # "lower" or "higher"
    scale: float = 1.0
    proportion: bool = False
    field: str = ""
    rows: Literal["all", "timed", "warmup"] = "all"

    def values(self, rows: Sequence[dict[str, str]]) -> list[float]:
        column = self.field or self.name
        if self.rows != "all":
            warm = "1" if self.rows == "warmup" else "0"
            rows = [r for r in rows if r.get("warmup", "0") == warm]
        return [float(r[column]) for r in rows if r.get(column, "") != ""]


COLUMNS = {
    c.name: c
    for c in (
        Column("drop", "Average Drop (%)", "lower"),
        Column("increase", "Average Increase (%)", "higher", scale=100.0, proportion=True),
        Column("deletion_auc", "Deletion AUC", "lower"),
        Column("insertion_auc", "Insertion AUC", "higher"),
        Column("overall", "Overall (ins - del)", "higher"),
        Column("box_iou", "Box IoU", "higher"),
        Column("pointing_game", "Pointing game (%)", "higher", scale=100.0, proportion=True),
        Column("energy_inside", "Energy inside", "higher"),
        Column("dice", "Dice", "higher"),
        Column("sanity_spearman", "Spearman, all randomised", "lower"),
        Column("sanity_ssim", "SSIM, all randomised", "lower"),
        Column("sanity_spearman_mean", "Spearman, mean over steps", "lower"),
        Column("seconds", "Seconds per explanation", "lower", rows="timed"),
        Column("first_seconds", "First explanation (s, with warm-up)", "lower", field="seconds", rows="warmup"),
    )
}
TABLES = {
    "average_drop": ("Average Drop / Increase (Fusion-CAM Table 1)", ("drop", "increase")),
    "deletion_insertion": ("Deletion / insertion (Fusion-CAM Table 2)", ("deletion_auc", "insertion_auc", "overall")),
    "localisation": ("Localisation", ("box_iou", "pointing_game", "energy_inside", "dice")),
    "sanity": (
        "Sanity: similarity to the original map under cascading randomisation (Adebayo 2018)",
        ("sanity_spearman", "sanity_ssim", "sanity_spearman_mean"),
    ),
    "time": ("Time", ("seconds", "first_seconds")),
}


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % interval (``None`` when n < 2) and the number of values."""

    mean: float
    low: float | None
    high: float | None
    n: int


def mean_interval(values: Sequence[float]) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(math.nan, None, None, 0)
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, None, None, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def wilson_interval(successes: int, n: int) -> Estimate:
    if n == 0:
        return Estimate(math.nan, None, None, 0)
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return Estimate(p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)), n)


def estimate(rows: Sequence[dict[str, str]], column: Column) -> Estimate:
    values = column.values(rows)
    if column.proportion:
        found = wilson_interval(sum(1 for v in values if v > 0.5), len(values))
    else:
        found = mean_interval(values)
    s = column.scale
    return Estimate(
        found.mean * s,
        None if found.low is None else found.low * s,
        None if found.high is None else found.high * s,
        found.n,
    )


def _cell(e: Estimate) -> str:
    if e.n == 0:
        return "-"
    if e.low is None or e.high is None:
        return f"{e.mean:.3f} (n=1)"
    return f"{e.mean:.3f} [{e.low:.3f}, {e.high:.3f}]"


def summary_markdown(rows: Sequence[dict[str, str]], settings: EvaluationSettings, title: str = "Evaluation") -> str:
    """The summary tables for results.csv rows (all samples, all methods)."""
    methods = [m.key for m in settings.methods]
    ok = [r for r in rows if r["status"] == "ok"]
    samples = sorted({r["sample"] for r in rows})
    lines = [f"# {title}", ""]
    lines.append(
        f"{len(samples)} sample(s), {len(methods)} method(s); mean and 95 % interval per method "
        "(Student t for scores, Wilson for percentages of samples)."
    )
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        lines.append(f"{len(skipped)} sample x method pair(s) were skipped; their reason is in results.csv.")
    for metric in (*settings.metrics, "time"):
        heading, names = TABLES[metric]
        columns = [COLUMNS[n] for n in names]
        lines += ["", f"## {heading}", ""]
        headings = [f"{c.heading} {'↓' if c.better == 'lower' else '↑'}" for c in columns]
        lines.append("| method | " + " | ".join(headings) + " | n |")
        lines.append("|---|" + "---:|" * len(columns) + "---:|")
        for method in methods:
            mine = [r for r in ok if r["method"] == method]
            found = [estimate(mine, c) for c in columns]
            count = found[0].n if metric == "time" else max((e.n for e in found), default=0)
            lines.append(f"| {method} | " + " | ".join(_cell(e) for e in found) + f" | {count} |")
        if metric == "time":
            lines += [
                "",
                "Seconds of the method alone (metrics excluded). Each method's first explanation in each "
                "process includes one-time warm-up (imports, memory allocation) and is reported apart; "
                "n counts the explanations in the first column.",
            ]
    return "\n".join(lines) + "\n"
