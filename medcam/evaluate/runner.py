"""Run every method on every sample, score it with every metric, and report.

:func:`run_evaluation` is the engine behind ``medcam evaluate``: for each sample of
this process's shard and each method it explains the sample (one layer per method
entry), scores the map with the chosen metrics on the explanation's own bound
target (same class, same pixel set M), and appends a row to results.csv. A rerun
into the same folder resumes. :func:`write_report` turns results.csv into
summary.md and the figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medcam.api import explain
from medcam.core.hooks import OutputSelector
from medcam.core.targets import Target, TargetError
from medcam.errors import UserError
from medcam.evaluate.plots import plot_curves, plot_metrics
from medcam.evaluate.results import ResultStore, Shard, merge_shards, read_curves, read_results, write_atomic
from medcam.evaluate.settings import CONTROL_RANDOM, EvaluationSettings, MethodSpec
from medcam.evaluate.summary import summary_markdown, with_normalised_scores
from medcam.methods.registry import create_method, method_parameters
from medcam.methods.robust.held_out import held_out_stability
from medcam.methods.robust.views import View
from medcam.metrics.faithfulness import average_drop_increase, deletion_insertion
from medcam.metrics.localisation import box_localisation, dice, energy_inside, pointing_game
from medcam.metrics.region_faithfulness import keep_remove_top_k, random_map, scaled_deletion_insertion
from medcam.metrics.sanity import cascading_randomisation
from medcam.metrics.scoring import scoring

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Sample:
    """One evaluation sample: ``image`` ``(C, *spatial)`` in the model's input space.

    ``target``: what to explain (a class index, a ClassTarget / SegmentationTarget,
    or ``None`` for a classifier's predicted class). ``truth``: an optional boolean
    ground-truth mask ``(*spatial)`` on the input grid for the localisation metrics.
    ``orientation``: axis codes of the image's spatial axes (e.g. ``"IPL"``), given to
    methods that take an ``orientation`` option (RobustCAM's default views flip
    left-right and rotate in the axial plane with it) unless the method entry sets one.
    """

    id: str
    image: Tensor
    target: Target | int | None = None
    truth: Tensor | None = None
    orientation: str | None = None


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights are (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def method_options(spec: MethodSpec, sample: Sample, seed: int) -> dict[str, Any]:
    """The entry's options, plus the sample's orientation and the run's seed where the method takes them."""
    options = dict(spec.options)
    accepted = method_parameters(spec.name)
    if "orientation" in accepted and sample.orientation is not None:
        options.setdefault("orientation", sample.orientation)
    if "seed" in accepted:
        options.setdefault("seed", seed)
    return options


def _score(
    model: nn.Module,
    sample: Sample,
    spec: MethodSpec,
    settings: EvaluationSettings,
    output: OutputSelector,
    sanity: bool = True,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    row: dict[str, Any] = {"sample": sample.id, "method": spec.key}
    x = sample.image.unsqueeze(0).to(_device(model))
    method = create_method(spec.name, **method_options(spec, sample, settings.seed))
    try:
        started = time.perf_counter()
        exp = explain(model, x, method, sample.target, spec.layers, output=output)
        row["seconds"] = time.perf_counter() - started
    except TargetError as err:  # e.g. an empty pixel set for this sample: record and go on
        log.warning("sample %s, %s: skipped (%s)", sample.id, spec.key, err)
        row["status"] = f"skipped: {err}"
        return row, {}
    if len(exp.maps) != 1:
        raise UserError(f"method {spec.key!r} explains {len(exp.maps)} layers; give one layer per method entry")
    maps, target = exp.map, exp.target
    faith = settings.faithfulness
    curves: dict[str, list[float]] = {}
    if "average_drop" in settings.metrics:
        di = average_drop_increase(
            model, x, maps, target, baseline=faith.masking_baseline, batch_size=faith.batch_size, output=output
        )
        row.update(
            score=float(di.original[0]),
            masked_score=float(di.masked[0]),
            drop=float(di.drop[0]),
            increase=bool(di.increase[0]),
        )
    if "deletion_insertion" in settings.metrics:
        both = deletion_insertion(
            model,
            x,
            maps,
            target,
            steps=faith.steps,
            deletion_baseline=faith.deletion_baseline,
            insertion_start=faith.insertion_start,
            blur_sigma=faith.blur_sigma,
            batch_size=faith.batch_size,
            seed=settings.seed,
            output=output,
        )
        row.update(
            deletion_auc=float(both.deletion.auc[0]),
            insertion_auc=float(both.insertion.auc[0]),
            overall=float(both.overall[0]),
        )
        curves = {"deletion": both.deletion.scores[0].tolist(), "insertion": both.insertion.scores[0].tolist()}
    if "region_faithfulness" in settings.metrics:
        row.update(_region_faithfulness(model, x, maps, target, settings, output))
    if "held_out_stability" in settings.metrics:
        row.update(_held_out(model, x, method, exp, settings, output))
    if "localisation" in settings.metrics and sample.truth is not None and bool(sample.truth.any()):
        loc = settings.localisation
        truth = sample.truth.to(maps.device).bool()
        row.update(
            box_iou=float(box_localisation(maps, truth, loc.threshold, connectivity=loc.connectivity)[0]),
            pointing_game=float(pointing_game(maps, truth, tolerance=loc.tolerance)[0]),
            energy_inside=float(energy_inside(maps, truth)[0]),
            dice=float(dice(maps, truth, loc.threshold)[0]),
        )
    if "sanity" in settings.metrics and sanity:
        check = cascading_randomisation(
            model,
            x,
            method,
            target,
            dict(exp.layers),
            groups=settings.sanity.groups,
            mode=settings.sanity.mode,
            seed=settings.seed,
            output=output,
        )
        (alias,) = exp.maps
        row.update(
            sanity_spearman=float(check.spearman[alias][-1, 0]),
            sanity_ssim=float(check.ssim[alias][-1, 0]),
            sanity_spearman_mean=float(check.spearman[alias][:, 0].mean()),
        )
    row["status"] = "ok"
    return row, curves


def _region_faithfulness(
    model: nn.Module, x: Tensor, maps: Tensor, target: Any, settings: EvaluationSettings, output: OutputSelector
) -> dict[str, float]:
    """Keep / remove top-k and the |M|-scaled deletion / insertion of one map."""
    region = settings.region_faithfulness
    top = keep_remove_top_k(
        model,
        x,
        maps,
        target,
        multiples=region.multiples,
        baseline=region.baseline,
        batch_size=region.batch_size,
        seed=settings.seed,
        output=output,
    )
    curves = scaled_deletion_insertion(
        model,
        x,
        maps,
        target,
        extent=region.extent,
        steps=region.steps,
        baseline=region.baseline,
        batch_size=region.batch_size,
        seed=settings.seed,
        output=output,
    )
    return {
        "keep_topk": float(top.keep_score[0]),
        "remove_topk": float(top.remove_score[0]),
        "deletion_m_auc": float(curves.deletion_auc[0]),
        "insertion_m_auc": float(curves.insertion_auc[0]),
        "insertion_start": float(curves.insertion_start[0]),
    }


def _held_out(
    model: nn.Module, x: Tensor, method: Any, exp: Any, settings: EvaluationSettings, output: OutputSelector
) -> dict[str, float]:
    """The method re-run on held-out views of ``x``, compared with its own map of ``x``."""
    target, (alias,) = exp.target, list(exp.layers)
    layer = exp.layers[alias]
    if target.mask is not None:
        unit = int(target.mask.sum())
        multiple = settings.held_out.multiple
    else:
        unit, multiple = max(1, round(0.1 * exp.map[0].numel())), 1.0

    def explain_view(xv: Tensor, view: View) -> Tensor:
        bound = target if target.mask is None else target.with_mask(view.warp_mask(target.mask))
        return explain(model, xv, method, bound, {alias: layer}, output=output).map

    result = held_out_stability(explain_view, x, exp.map, unit=unit, views=settings.held_out.views, multiple=multiple)
    return {
        "held_out_variance": float(result.variance[0]),
        "held_out_spearman": float(result.spearman[0]),
        "held_out_topk_iou": float(result.top_k_iou[0]),
    }


def _score_control(
    model: nn.Module, sample: Sample, key: str, settings: EvaluationSettings, output: OutputSelector
) -> dict[str, Any]:
    """A control row: the random map or the truth mask (M itself where the sample has no truth)."""
    row: dict[str, Any] = {"sample": sample.id, "method": key, "warmup": False}
    x = sample.image.unsqueeze(0).to(_device(model))
    with scoring(model, x, sample.target, batch_size=1, output=output) as scorer:  # binds M as explain does
        target = scorer.target
    if target.mask is None:
        raise UserError("region_faithfulness needs a segmentation target; drop it from evaluation.metrics")
    if key == CONTROL_RANDOM:
        maps = random_map(torch.zeros(1, *x.shape[2:]), settings.seed).to(x.device)
    elif sample.truth is not None and bool(sample.truth.any()):
        maps = sample.truth.to(x.device).float().unsqueeze(0)
    else:
        maps = target.mask.to(x.device).float()
    row.update(_region_faithfulness(model, x, maps, target, settings, output))
    if "localisation" in settings.metrics and sample.truth is not None and bool(sample.truth.any()):
        truth = sample.truth.to(x.device).bool()
        row["energy_inside"] = float(energy_inside(maps, truth)[0])
    row["status"] = "ok"
    return row


def run_evaluation(
    model: nn.Module,
    samples: Sequence[Sample],
    settings: EvaluationSettings,
    folder: str | Path,
    *,
    shard: Shard | None = None,
    output: OutputSelector = None,
    progress: Progress | None = None,
    title: str = "Evaluation",
    report: bool = True,
    context: Mapping[str, Any] | None = None,
) -> Path:
    """Evaluate ``settings.methods`` x ``settings.metrics`` on this shard's ``samples`` into ``folder``.

    ``samples`` may be a lazy sequence: only this shard's items are indexed, and one
    with a ``sample_id(index)`` method is not indexed at all for samples already done.
    Completed (sample, method) pairs in ``folder`` are skipped (resume). With one
    shard the report is written at the end (unless ``report=False``); with several,
    call :func:`finalize` once every shard has finished. ``progress(done, total, what)``
    is called at the start and after each sample x method of this shard (``total`` =
    samples x methods).
    A row's ``warmup`` is 1 for each method's first explanation in this process, whose
    time includes one-time costs (the summary's timing leaves it out). ``context``: what
    else decides the numbers (model, data; JSON-able), recorded with the settings so
    that a resume with another one is refused. Returns ``folder``.
    """
    shard = shard or Shard()
    folder = Path(folder)
    store = ResultStore(folder, settings, shard, context)
    done = store.open()
    mine = [i for i in range(len(samples)) if shard.owns(i)]
    keys = list(settings.keys)
    total, count = len(mine) * len(keys), 0
    seen: set[str] = set()
    warmed: set[str] = set()  # methods whose first explanation in this process has run
    if progress is not None:
        progress(0, total, "")
    for index in mine:
        known = _known_id(samples, index)
        if known is not None and all((known, key) in done for key in keys):
            _check_unique(known, seen)
            count += len(keys)  # finished before: not even loaded
            if progress is not None:
                progress(count, total, f"{known} (done before)")
            continue
        sample = samples[index]
        _check_unique(sample.id, seen)
        for key in settings.controls:
            count += 1
            if (sample.id, key) not in done:
                try:
                    store.append(_score_control(model, sample, key, settings, output))
                except TargetError as err:
                    log.warning("sample %s, %s: skipped (%s)", sample.id, key, err)
                    store.append({"sample": sample.id, "method": key, "status": f"skipped: {err}"})
            if progress is not None:
                progress(count, total, f"{sample.id} {key}")
        for spec in settings.methods:
            count += 1
            if (sample.id, spec.key) not in done:
                # the sanity check only on the split's first sanity.samples samples (it is costly)
                sanity = settings.sanity.samples is None or index < settings.sanity.samples
                row, curves = _score(model, sample, spec, settings, output, sanity)
                if row["status"] == "ok":
                    row["warmup"] = spec.key not in warmed
                    warmed.add(spec.key)
                store.append(row, curves)
            if progress is not None:
                progress(count, total, f"{sample.id} {spec.key}")
    store.finish()
    if shard.world == 1 and report:
        write_report(folder, settings, title)
    return folder


def _known_id(samples: Sequence[Sample], index: int) -> str | None:
    """A lazy sample source may name its samples without loading them (``sample_id(index)``)."""
    namer = getattr(samples, "sample_id", None)
    return str(namer(index)) if callable(namer) else None


def _check_unique(sample_id: str, seen: set[str]) -> None:
    if sample_id in seen:
        raise UserError(f"sample id {sample_id!r} appears twice; sample ids must be unique")
    seen.add(sample_id)


def finalize(folder: str | Path, settings: EvaluationSettings, world: int, title: str = "Evaluation") -> Path:
    """Merge the shards of a distributed run and write its report."""
    merge_shards(Path(folder), settings, world)
    return write_report(folder, settings, title)


def write_report(folder: str | Path, settings: EvaluationSettings, title: str = "Evaluation") -> Path:
    """summary.md, metrics.png and (with deletion / insertion) curves.png from results.csv."""
    folder = Path(folder)
    rows = read_results(folder)
    summary = folder / "summary.md"
    write_atomic(summary, summary_markdown(rows, settings, title))
    methods = list(settings.keys)
    rows = with_normalised_scores(rows)
    plot_metrics(rows, methods, settings.metrics, folder / "metrics.png")
    if "deletion_insertion" in settings.metrics:
        fractions, curves = read_curves(folder)
        if curves:
            plot_curves(fractions, curves, methods, folder / "curves.png")
    return summary
