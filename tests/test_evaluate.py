"""The evaluation engine end to end on a small synthetic set: files, report, resume, shards."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from region_nets import Splitter
from torch import nn

import medcam
import medcam.evaluate.runner as runner
from medcam.errors import UserError
from medcam.evaluate import (
    EvaluationSettings,
    Sample,
    Shard,
    finalize,
    mean_interval,
    read_results,
    run_evaluation,
    wilson_interval,
    write_report,
)

SETTINGS = {
    "methods": ["gradcam", {"name": "hirescam", "layers": "0", "label": "hires@conv0"}],
    "metrics": ["average_drop", "deletion_insertion", "localisation"],
    "faithfulness": {"steps": 10, "batch_size": 11},
}


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    )


def synthetic_set(count: int = 4) -> list[Sample]:
    """Bright squares in noise; the ground truth is the square."""
    generator = torch.Generator().manual_seed(1)
    samples = []
    for i in range(count):
        image = 0.1 * torch.randn(1, 16, 16, generator=generator)
        truth = torch.zeros(16, 16, dtype=torch.bool)
        top, left = 2 + i, 3 + i
        truth[top : top + 5, left : left + 5] = True
        image[0][truth] += 1.0
        samples.append(Sample(f"case_{i:02d}", image, target=1, truth=truth))
    return samples


def rows_by_key(folder: Path) -> dict[tuple[str, str], dict[str, str]]:
    rows = read_results(folder)
    timing = ("seconds", "warmup")
    return {(r["sample"], r["method"]): {k: v for k, v in r.items() if k not in timing} for r in rows}


def test_settings_reject_unknown_keys_and_names() -> None:
    with pytest.raises(UserError, match=r"'metric' \(did you mean 'metrics'\?\)"):
        EvaluationSettings.from_mapping({"methods": ["gradcam"], "metric": ["dice"]})
    with pytest.raises(UserError, match="did you mean 'gradcam'"):
        EvaluationSettings.from_mapping({"methods": ["gradcma"]})
    with pytest.raises(UserError, match="not known"):
        EvaluationSettings.from_mapping({"methods": ["gradcam"], "metrics": ["deletion"]})
    with pytest.raises(UserError, match="unique"):
        EvaluationSettings.from_mapping({"methods": ["gradcam", "gradcam"]})
    with pytest.raises(UserError, match="stepz"):
        EvaluationSettings.from_mapping({"methods": ["gradcam"], "faithfulness": {"stepz": 3}})
    with pytest.raises(UserError, match="one layer spec"):
        EvaluationSettings.from_mapping({"methods": [{"name": "gradcam", "layers": ["0", "2"]}]})


def test_intervals_by_hand() -> None:
    e = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / 3**0.5  # t(0.975, 2) * s / sqrt(n), s = 1
    assert (e.mean, e.low, e.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    w = wilson_interval(5, 10)
    assert (w.mean, w.low, w.high) == pytest.approx((0.5, 0.2366, 0.7634), abs=1e-4)
    none = wilson_interval(0, 7)
    assert none.low == 0.0 and none.mean == 0.0 and 0.3 < none.high < 0.45  # 0.3543 by hand
    assert mean_interval([4.0]).low is None


def test_end_to_end_writes_rows_curves_summary_and_plots(tmp_path: Path) -> None:
    settings = EvaluationSettings.from_mapping(SETTINGS)
    model, samples = classifier(), synthetic_set()
    seen: list[tuple[int, int, str]] = []
    run_evaluation(model, samples, settings, tmp_path, progress=lambda d, t, s: seen.append((d, t, s)))
    assert [d for d, _, _ in seen] == list(range(9)) and seen[-1] == (8, 8, "case_03 hires@conv0")
    rows = read_results(tmp_path)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    # each method's first explanation carries the warm-up and is timed apart
    assert [r["warmup"] for r in rows] == ["1", "1"] + ["0"] * 6
    assert {r["method"] for r in rows} == {"gradcam", "hires@conv0"}
    for r in rows:
        assert 0.0 <= float(r["box_iou"]) <= 1.0 and r["pointing_game"] in ("0", "1")
        assert float(r["overall"]) == pytest.approx(float(r["insertion_auc"]) - float(r["deletion_auc"]), abs=1e-8)
    with (tmp_path / "curves.csv").open() as handle:
        curves = list(csv.reader(handle))
    assert curves[0][:4] == ["sample", "method", "kind", "0"] and len(curves[0]) == 3 + 11
    assert len(curves) == 1 + 16
    summary = (tmp_path / "summary.md").read_text()
    assert "Average Drop (%) ↓" in summary and "Overall (ins - del) ↑" in summary and "Box IoU ↑" in summary
    assert "| hires@conv0 |" in summary and "| 4 |" in summary
    assert "First explanation (s, with warm-up)" in summary and "| 3 |" in summary  # 3 timed explanations
    for name in ("curves.png", "metrics.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the recorded numbers are the metrics of the explanation itself
    first = samples[0]
    exp = medcam.explain(model, first.image[None], "gradcam", 1)
    drop = medcam.metrics.average_drop_increase(model, first.image[None], exp.map, exp.target)
    row = next(r for r in rows if r["sample"] == "case_00" and r["method"] == "gradcam")
    assert float(row["drop"]) == pytest.approx(float(drop.drop[0]), rel=1e-6)


def test_resume_after_an_interruption_and_a_torn_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = EvaluationSettings.from_mapping(SETTINGS)
    model, samples = classifier(), synthetic_set()
    reference = tmp_path / "reference"
    run_evaluation(model, samples, settings, reference, report=False)

    class StopError(Exception):
        pass

    def interrupt(done: int, total: int, what: str) -> None:
        if done == 4:  # two samples x two methods
            raise StopError

    folder = tmp_path / "resumed"
    with pytest.raises(StopError):
        run_evaluation(model, samples, settings, folder, progress=interrupt, report=False)
    assert len(read_results(folder)) == 4
    with (folder / "results.csv").open("a") as handle:
        handle.write("case_02,gradcam,ok,0.1,0.5")  # a row cut off mid-write
    calls: list[str] = []
    real = runner.explain

    def counting(*args: object, **kwargs: object) -> medcam.Explanation:
        calls.append(str(args[2]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "explain", counting)
    run_evaluation(model, samples, settings, folder)
    assert len(calls) == 4  # samples 2 and 3 x 2 methods; samples 0 and 1 were not redone
    assert rows_by_key(folder) == rows_by_key(reference)
    # the resumed process warmed up again, on its first sample
    assert [r["warmup"] for r in read_results(folder)] == ["1", "1", "0", "0", "1", "1", "0", "0"]
    assert (folder / "summary.md").exists()
    # a rerun of a complete folder does nothing and keeps the results
    run_evaluation(model, samples, settings, folder, report=False)
    assert len(calls) == 4


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    model, samples = classifier(), synthetic_set(2)
    run_evaluation(model, samples, EvaluationSettings.from_mapping(SETTINGS), tmp_path, report=False)
    other = EvaluationSettings.from_mapping({**SETTINGS, "faithfulness": {"steps": 20}})
    with pytest.raises(UserError, match="other settings"):
        run_evaluation(model, samples, other, tmp_path)


def test_shards_merge_into_the_single_process_result(tmp_path: Path) -> None:
    settings = EvaluationSettings.from_mapping({**SETTINGS, "metrics": ["deletion_insertion", "localisation"]})
    model, samples = classifier(), synthetic_set()
    run_evaluation(model, samples, settings, tmp_path / "one", report=False)
    sharded = tmp_path / "two"
    run_evaluation(model, samples, settings, sharded, shard=Shard(1, 2))
    with pytest.raises(UserError, match=r"shard\(s\) \[0\] of 2"):
        finalize(sharded, settings, 2)
    run_evaluation(model, samples, settings, sharded, shard=Shard(0, 2))
    finalize(sharded, settings, 2)
    assert rows_by_key(sharded) == rows_by_key(tmp_path / "one")
    assert (sharded / "curves.csv").read_text() == (tmp_path / "one" / "curves.csv").read_text()
    assert (sharded / "summary.md").exists()


def test_sanity_columns_follow_the_cascade(tmp_path: Path) -> None:
    settings = EvaluationSettings.from_mapping(
        {"methods": ["gradcam"], "metrics": ["sanity"], "sanity": {"groups": 2}, "seed": 3}
    )
    model, samples = classifier(), synthetic_set(1)
    run_evaluation(model, samples, settings, tmp_path, report=False)
    (row,) = read_results(tmp_path)
    expected = medcam.metrics.cascading_randomisation(
        model, samples[0].image[None], "gradcam", 1, "auto", groups=2, seed=3
    )
    (alias,) = expected.spearman
    assert float(row["sanity_spearman"]) == pytest.approx(float(expected.spearman[alias][-1, 0]), rel=1e-6)
    assert float(row["sanity_ssim"]) == pytest.approx(float(expected.ssim[alias][-1, 0]), rel=1e-6)
    assert float(row["sanity_spearman_mean"]) == pytest.approx(float(expected.spearman[alias].mean()), rel=1e-6)
    write_report(tmp_path, settings)
    assert "Sanity: similarity" in (tmp_path / "summary.md").read_text()


def test_sanity_runs_on_the_first_samples_only_when_asked(tmp_path: Path) -> None:
    settings = EvaluationSettings.from_mapping(
        {"methods": ["gradcam"], "metrics": ["average_drop", "sanity"], "sanity": {"groups": 2, "samples": 1}}
    )
    run_evaluation(classifier(), synthetic_set(3), settings, tmp_path, report=False)
    rows = read_results(tmp_path)
    assert [r["sanity_spearman"] != "" for r in rows] == [True, False, False]
    assert all(r["drop"] != "" for r in rows)
    with pytest.raises(UserError, match="sanity samples must be at least 1"):
        EvaluationSettings.from_mapping({"methods": ["gradcam"], "sanity": {"samples": 0}})


def test_segmentation_samples_with_an_empty_pixel_set_are_skipped_and_reported(tmp_path: Path) -> None:
    settings = EvaluationSettings.from_mapping(
        {"methods": [{"name": "hirescam", "layers": "conv"}], "metrics": ["average_drop", "localisation"]}
    )
    bright = torch.zeros(1, 12, 12)
    bright[0, 3:7, 3:7] = 1.0
    samples = [
        Sample("lesion", bright, target=medcam.SegmentationTarget(1), truth=bright[0] > 0),
        Sample("normal", torch.zeros(1, 12, 12), target=medcam.SegmentationTarget(1)),
    ]
    run_evaluation(Splitter(), samples, settings, tmp_path)
    rows = {r["sample"]: r for r in read_results(tmp_path)}
    assert rows["lesion"]["status"] == "ok" and float(rows["lesion"]["pointing_game"]) == 1.0
    assert rows["normal"]["status"].startswith("skipped: the pixel set M")
    assert "1 sample x method pair(s) were skipped" in (tmp_path / "summary.md").read_text()


def test_merged_shards_sort_sample_ids_naturally(tmp_path: Path) -> None:
    settings = EvaluationSettings.from_mapping({"methods": ["gradcam"], "metrics": ["localisation"]})
    names = ["case_10", "case_9", "case_2", "case_1"]
    samples = [Sample(n, s.image, s.target, s.truth) for n, s in zip(names, synthetic_set(), strict=True)]
    for rank in (0, 1):
        run_evaluation(classifier(), samples, settings, tmp_path, shard=Shard(rank, 2))
    finalize(tmp_path, settings, 2)
    assert [r["sample"] for r in read_results(tmp_path)] == ["case_1", "case_2", "case_9", "case_10"]


def test_two_ranks_writing_the_same_file_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun ranks both write evaluation.json; one's rename must not take the other's temporary file."""
    import os

    from medcam.evaluate.results import write_atomic

    path = tmp_path / "evaluation.json"
    real_replace = Path.replace
    interleaved: list[int] = []

    def replace(self: Path, target: Path) -> Path:
        if not interleaved:  # the other rank writes and renames between our write and our rename
            interleaved.append(1)
            with monkeypatch.context() as other:
                other.setattr(os, "getpid", lambda: os.getppid() + 7919)
                write_atomic(path, "written by rank 1")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    write_atomic(path, "written by rank 0")
    assert path.read_text() == "written by rank 0"
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.json"]
