"""``medcam evaluate``'s engine: methods x metrics over samples, resumable, shardable, with a report.

>>> from medcam.evaluate import EvaluationSettings, Sample, run_evaluation
>>> settings = EvaluationSettings.from_mapping({"methods": ["gradcam", "hirescam"]})
>>> run_evaluation(model, [Sample("case_00", image, target=1, truth=mask)], settings, "runs/eval")
"""

from medcam.evaluate.results import Shard, merge_shards, read_curves, read_results
from medcam.evaluate.runner import Sample, finalize, run_evaluation, write_report
from medcam.evaluate.settings import (
    DEFAULT_METRICS,
    METRICS,
    EvaluationSettings,
    FaithfulnessSettings,
    LocalisationSettings,
    MethodSpec,
    SanitySettings,
)
from medcam.evaluate.summary import mean_interval, summary_markdown, wilson_interval

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "EvaluationSettings",
    "FaithfulnessSettings",
    "LocalisationSettings",
    "MethodSpec",
    "Sample",
    "SanitySettings",
    "Shard",
    "finalize",
    "mean_interval",
    "merge_shards",
    "read_curves",
    "read_results",
    "run_evaluation",
    "summary_markdown",
    "wilson_interval",
    "write_report",
]
