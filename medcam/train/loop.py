"""The epoch loop shared by every task: DDP, progress bars, metrics CSV, best checkpoint, resume.

Run folder (``config.output``)::

    config.yaml    the resolved configuration
    metrics.csv    one row per epoch (train loss, validation metrics, seconds)
    best.pt        medcam checkpoint of the best validation score (what `medcam explain` loads)
    last.pt        training state (weights, optimiser, epoch) for ``--resume``
    summary.json   final numbers, timing, world size and each rank's weight fingerprint

Every epoch's randomness (sampler order, crops, augmentation) is a function of
(seed, epoch, rank), so a resumed run replays the epochs it missed exactly (CPU,
``num_workers: 0``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medcam.errors import UserError
from medcam.models.checkpoint import save_checkpoint
from medcam.train.config import ExperimentConfig, to_dict
from medcam.train.datasets import open_dataset
from medcam.train.distributed import (
    Context,
    barrier,
    gather_floats,
    mean_over_ranks,
    setup,
    teardown,
    weight_fingerprint,
)
from medcam.train.tasks import SegmentationTask, Task

log = logging.getLogger(__name__)
STATE_FORMAT = "medcam-train-state"


@dataclass(frozen=True)
class RunResult:
    output: Path
    best_score: float
    best_epoch: int
    epochs_run: int
    seconds: float
    last_metrics: dict[str, float]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_task(config: ExperimentConfig, ctx: Context) -> Task:
    dataset = open_dataset(config.dataset)
    if config.task == "segmentation":
        if dataset.task != "segmentation":
            raise UserError(f"task 'segmentation' does not fit {dataset.name}, a {dataset.task} dataset")
        return SegmentationTask(config, dataset, ctx)
    from medcam.train.classification import ClassificationTask

    if dataset.task != "classification":
        raise UserError(f"task 'classification' does not fit {dataset.name}, a {dataset.task} dataset")
    return ClassificationTask(config, dataset, ctx)


def make_optimizer(config: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = config.training
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=0.99, nesterov=True, weight_decay=t.weight_decay)


def learning_rate(config: ExperimentConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based); a pure function of the epoch, so resuming needs no state."""
    t = config.training
    if t.lr_schedule == "poly":
        return t.lr * (1.0 - epoch / t.epochs) ** 0.9
    return t.lr


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    payload = {
        "format": STATE_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        **state,
    }
    tmp = path.with_name(".tmp-" + path.name)
    torch.save(payload, tmp)
    tmp.replace(path)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unreadable or unsafe file: say which
        raise UserError(f"cannot resume from {path} ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a medcam training state; resume needs the last.pt of a medcam run")
    return payload


def train(config: ExperimentConfig, resume: bool = False, progress: bool = True) -> RunResult:
    """Train ``config`` (under torchrun when launched so) and return the best validation score."""
    ctx = setup(config.training.device)
    threads = torch.get_num_threads()
    if config.training.threads is not None:
        torch.set_num_threads(config.training.threads)
    try:
        return _train(config, ctx, resume, progress)
    finally:
        torch.set_num_threads(threads)
        teardown(ctx)


def _train(config: ExperimentConfig, ctx: Context, resume: bool, progress: bool) -> RunResult:
    from tqdm.auto import tqdm

    t = config.training
    out = Path(config.output)
    seed_everything(t.seed)
    task = make_task(config, ctx)
    model = task.build_model().to(ctx.device)
    net: nn.Module = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    optimizer = make_optimizer(config, model)
    loader, sampler = task.train_loader()

    start_epoch, best, best_epoch, spent = 0, -math.inf, -1, 0.0
    state_path = out / "last.pt"
    if resume:
        if not state_path.is_file():
            raise UserError(f"--resume: {state_path} does not exist; start without --resume")
        state = _load_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, best_epoch = int(state["epoch"]), float(state["best"]), int(state["best_epoch"])
        spent = float(state.get("seconds", 0.0))
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        _write_atomic(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    columns = ["epoch", "train_loss", "lr", "seconds", *task.metric_names()]
    csv_path = out / "metrics.csv"
    if ctx.is_main and (not resume or not csv_path.is_file()):
        with csv_path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(columns)

    metrics: dict[str, float] = {}
    started = time.perf_counter()
    # which training items each rank draws in this run's first epoch (shows the sampler shards the data)
    sampler.set_epoch(start_epoch)
    shard = gather_floats([float(i) for i in sampler], ctx)
    for epoch in range(start_epoch, t.epochs):
        epoch_start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch)
        sampler.set_epoch(epoch)
        task.reseed(epoch)
        torch.manual_seed(t.seed + 1000 * epoch + ctx.rank)
        task.train_mode(net)
        losses = []
        steps = len(loader) if t.steps_per_epoch is None else min(len(loader), t.steps_per_epoch)
        bar = tqdm(
            total=steps, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not (progress and ctx.is_main), leave=False
        )
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            loss = task.loss(net, batch)
            if not torch.isfinite(loss):
                raise UserError(f"training loss became {loss.item()} at epoch {epoch + 1}; lower training.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        train_loss = mean_over_ranks(float(np.mean(losses)) if losses else math.nan, ctx)
        last = epoch + 1 == t.epochs
        metrics = {}
        if ctx.is_main and ((epoch + 1) % t.val_every == 0 or last):
            metrics = task.validate(model)
            score = metrics.get("score", -train_loss)
            if score > best or not (out / "best.pt").is_file():
                best, best_epoch = score, epoch + 1
                val = {k: (None if math.isnan(v) else v) for k, v in metrics.items()}  # strict JSON
                info = {"epoch": epoch + 1, "val": val, "config": config.name, "dataset": config.dataset.kind}
                save_checkpoint(out / "best.pt", model, task.metadata(model, info))
            log.info("epoch %d: loss %.4f %s", epoch + 1, train_loss, metrics)
        seconds = time.perf_counter() - epoch_start
        if ctx.is_main:
            row = [epoch + 1, train_loss, optimizer.param_groups[0]["lr"], round(seconds, 2)]
            row += [metrics.get(name, "") for name in task.metric_names()]
            with csv_path.open("a", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(row)
            state = {
                "epoch": epoch + 1,
                "best": best,
                "best_epoch": best_epoch,
                "seconds": spent + time.perf_counter() - started,
            }
            _save_state(state_path, model, optimizer, state)
        barrier(ctx)

    total = spent + time.perf_counter() - started
    fingerprints = gather_floats(weight_fingerprint(model), ctx)
    if ctx.is_main:
        summary = {
            "name": config.name,
            "best_score": best,
            "best_epoch": best_epoch,
            "epochs": t.epochs,
            "seconds": round(total, 1),
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "rank_weight_fingerprints": fingerprints,
            "rank_first_epoch_items": [[int(i) for i in r] for r in shard],
            "last_metrics": metrics,
        }
        _write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return RunResult(out, best, best_epoch, t.epochs, total, metrics)
