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

from medcam.evaluate.settings import CONTROL_RANDOM, CONTROL_TRUTH, EvaluationSettings

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
        Column("held_out_variance", "Variance x 1e6, held-out views", "lower", scale=1e6),
        Column("held_out_spearman", "Spearman to clean map", "higher"),
        Column("held_out_topk_iou", "Top-k IoU (k = |M|)", "higher"),
        Column("keep_topk", "Keep top-k", "higher"),
        Column("remove_topk", "Remove top-k", "lower"),
        Column("deletion_m_auc", "Deletion AUC (|M| steps)", "lower"),
        Column("insertion_m_auc", "Insertion AUC (|M| steps)", "higher"),
        Column("insertion_start", "Insertion start", "lower"),
        Column("keep_norm", "Keep, normalised", "higher"),
        Column("remove_norm", "Remove, normalised", "higher"),
        Column("deletion_m_norm", "Deletion, normalised", "higher"),
        Column("insertion_m_norm", "Insertion, normalised", "higher"),
        Column("ranked", "random < map < truth, keep (%)", "higher", scale=100.0, proportion=True),
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
    "region_faithfulness": (
        "Segmentation faithfulness: top-k and deletion / insertion in units of |M|, with controls",
        ("keep_topk", "remove_topk", "deletion_m_auc", "insertion_m_auc", "insertion_start"),
    ),
    "held_out_stability": (
        "Stability under held-out perturbations (views not among RobustCAM's fused ones; "
        "RobustCAM paper: variance 0.142 -> 0.051)",
        ("held_out_variance", "held_out_spearman", "held_out_topk_iou"),
    ),
    "region_normalised": (
        "Segmentation faithfulness, normalised: (O - O_random) / (O_truth - O_random), 0 = random map, 1 = truth",
        ("keep_norm", "remove_norm", "deletion_m_norm", "insertion_m_norm", "ranked"),
    ),
    "time": ("Time", ("seconds", "first_seconds")),
}
# the tables the control maps appear in
CONTROL_TABLES = ("region_faithfulness", "region_normalised", "localisation")
# raw column -> its normalised column (see with_normalised_scores)
NORMALISED = {
    "keep_topk": "keep_norm",
    "remove_topk": "remove_norm",
    "deletion_m_auc": "deletion_m_norm",
    "insertion_m_auc": "insertion_m_norm",
}
AVERAGE_DROP_NOTE = (
    "Average Drop / Increase are not meaningful for segmentation targets: masking the input with any map "
    "that is not ~1 on M drops the mean probability over M to ~0 (a random map scores ~100 %), and the clean "
    "score is ~1, so nothing can increase it. Read the segmentation faithfulness tables instead."
)


def with_normalised_scores(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Rows with ``(O - O_random) / (O_truth - O_random)`` of each region faithfulness score.

    Each row is normalised by the two control rows of its own sample; ``ranked`` is 1 when the
    map's keep-top-k score lies strictly between the random map's and the truth mask's.
    """
    controls: dict[tuple[str, str], dict[str, str]] = {
        (r["sample"], r["method"]): r for r in rows if r["method"] in (CONTROL_RANDOM, CONTROL_TRUTH)
    }
    out = []
    for row in rows:
        row = dict(row)
        random, truth = controls.get((row["sample"], CONTROL_RANDOM)), controls.get((row["sample"], CONTROL_TRUTH))
        if random is not None and truth is not None and row.get("status") == "ok":
            for raw, name in NORMALISED.items():
                values = [row.get(raw, ""), random.get(raw, ""), truth.get(raw, "")]
                if "" in values:
                    continue
                o, r, t = (float(v) for v in values)
                row[name] = "" if abs(t - r) < 1e-12 else repr((o - r) / (t - r))
            keep = [row.get("keep_topk", ""), random.get("keep_topk", ""), truth.get("keep_topk", "")]
            if "" not in keep:
                o, r, t = (float(v) for v in keep)
                row["ranked"] = "1" if r < o < t else "0"
        out.append(row)
    return out


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
    methods = list(settings.keys)
    rows = with_normalised_scores(rows)
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
    tables = [m for m in settings.metrics]
    if "region_faithfulness" in tables:
        tables.insert(tables.index("region_faithfulness") + 1, "region_normalised")
    segmentation = bool(settings.controls) and any(r["method"] in settings.controls for r in ok)
    for metric in (*tables, "time"):
        heading, names = TABLES[metric]
        columns = [COLUMNS[n] for n in names]
        lines += ["", f"## {heading}", ""]
        headings = [f"{c.heading} {'↓' if c.better == 'lower' else '↑'}" for c in columns]
        lines.append("| method | " + " | ".join(headings) + " | n |")
        lines.append("|---|" + "---:|" * len(columns) + "---:|")
        for method in methods:
            if method in settings.controls and metric not in (
                "region_faithfulness",
                "region_normalised",
                "localisation",
            ):
                continue  # the controls are scored by the segmentation metrics (and energy) only
            mine = [r for r in ok if r["method"] == method]
            found = [estimate(mine, c) for c in columns]
            count = found[0].n if metric == "time" else max((e.n for e in found), default=0)
            lines.append(f"| {method} | " + " | ".join(_cell(e) for e in found) + f" | {count} |")
        if metric == "average_drop" and segmentation:
            lines += ["", AVERAGE_DROP_NOTE]
        if metric == "time":
            lines += [
                "",
                "Seconds of the method alone (metrics excluded). Each method's first explanation in each "
                "process includes one-time warm-up (imports, memory allocation) and is reported apart; "
                "n counts the explanations in the first column.",
            ]
    return "\n".join(lines) + "\n"
