"""Figures of an evaluation: mean deletion / insertion curves and metric bar charts.

Written with matplotlib's Agg backend (no display needed), each through a temporary
file and a rename.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcam.evaluate.summary import COLUMNS, TABLES, estimate


def _figure(*args: Any, **kwargs: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(temporary, dpi=120, bbox_inches="tight")
    plt.close(fig)
    temporary.replace(path)
    return path


def plot_curves(
    fractions: Sequence[float], curves: Sequence[dict[str, Any]], methods: Sequence[str], path: Path
) -> Path:
    """Mean deletion and insertion curve per method, with a 95 % band (t interval per step)."""
    fig, axes = _figure(1, 2, figsize=(10, 4), sharey=True)
    x = np.asarray(fractions) * 100
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for method in methods:
            scores = np.asarray([c["scores"] for c in curves if c["method"] == method and c["kind"] == kind])
            if scores.size == 0:
                continue
            mean = scores.mean(axis=0)
            (line,) = ax.plot(x, mean, label=method)
            if len(scores) > 1:
                from scipy import stats

                half = stats.t.ppf(0.975, len(scores) - 1) * scores.std(axis=0, ddof=1) / math.sqrt(len(scores))
                ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} area is better)")
        ax.set_xlabel(f"pixels {'removed' if kind == 'deletion' else 'inserted'} (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("class probability")
    axes[1].legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_metrics(rows: Sequence[dict[str, str]], methods: Sequence[str], metrics: Sequence[str], path: Path) -> Path:
    """One bar chart per metric column: mean per method with its 95 % interval."""
    tables = [t for m in metrics for t in ((m, "region_normalised") if m == "region_faithfulness" else (m,))]
    names = [n for m in tables for n in TABLES[m][1]] + ["seconds"]  # warm-up times only in summary.md
    ok = [r for r in rows if r["status"] == "ok"]
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = _figure(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        column = COLUMNS[name]
        found = [estimate([r for r in ok if r["method"] == m], column) for m in methods]
        means = [0.0 if math.isnan(e.mean) else e.mean for e in found]
        # Wilson intervals are not centred on the mean; rounding can put a bound a hair past it
        low = [0.0 if e.low is None else max(0.0, e.mean - e.low) for e in found]
        high = [0.0 if e.high is None else max(0.0, e.high - e.mean) for e in found]
        ax.bar(range(len(methods)), means, yerr=[low, high], capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{column.heading} {'↓' if column.better == 'lower' else '↑'}", fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
