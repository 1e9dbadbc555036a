"""What ``medcam evaluate --config`` does: folder, model, samples, shards, merge, report.

One process: the whole split, then the report. Under ``torchrun`` every rank joins a
gloo (CPU) or NCCL (GPU) process group, evaluates every ``WORLD_SIZE``-th sample from
its ``RANK``, waits at a barrier, and rank 0 merges the shards and writes the report.
Without a process group, ``--shard R/W`` runs one shard (e.g. a cluster job array) and
``--merge`` joins the finished shards afterwards.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from medcam.errors import UserError
from medcam.evaluate.config import EvaluationConfig, ModelSection
from medcam.evaluate.results import RESULTS, SETTINGS, SHARDS, Shard, check_written_settings
from medcam.evaluate.runner import Progress, finalize, run_evaluation
from medcam.models.checkpoint import DEMO_CHECKPOINT, ModelBundle, load_checkpoint
from medcam.review.folders import MARKER, write_marker

log = logging.getLogger(__name__)

# a shard may finish long after another: the barrier waits this long
BARRIER_TIMEOUT = datetime.timedelta(hours=48)
_SHARD_FILE = re.compile(r"results\.rank(\d+)-of-(\d+)\.csv")


def parse_shard(text: str) -> Shard:
    """``"R/W"`` -> shard R of W (``--shard 0/4``)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise UserError(f"--shard {text!r} is not RANK/WORLD, e.g. --shard 0/4 (rank 0 of 4 shards)")
    return Shard(int(match.group(1)), int(match.group(2)))


def prepare_folder(folder: Path, *, overwrite: bool, inputs: Sequence[str | Path | None] = ()) -> None:
    """Start afresh with ``overwrite`` (only an evaluation folder is ever deleted); else resume.

    An evaluation folder holds ``evaluation.json`` or medcam's output marker; one that
    holds an input (the data root, the checkpoint) or is a symbolic link is never deleted.
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output {folder} is a file, not a folder; choose another --out")
    if overwrite and folder.exists():
        _clear(folder, inputs)
    fresh = not folder.exists() or not any(folder.iterdir())
    folder.mkdir(parents=True, exist_ok=True)
    if fresh or (folder / SETTINGS).exists():
        write_marker(folder)  # an evaluation folder: a later --overwrite recognises it


def _clear(folder: Path, inputs: Sequence[str | Path | None]) -> None:
    if folder.is_symlink():
        raise UserError(f"--overwrite would delete through the symbolic link {folder}; choose another --out")
    if any(folder.iterdir()) and not (folder / SETTINGS).exists() and not (folder / MARKER).exists():
        raise UserError(
            f"--overwrite would delete {folder}, which is not an evaluation folder (no {SETTINGS}); "
            "choose another --out"
        )
    real = folder.resolve()
    for given in inputs:
        if given is not None and (real == Path(given).resolve() or real in Path(given).resolve().parents):
            raise UserError(
                f"--overwrite would delete the input {given}, which is inside {folder}; choose another --out"
            )
    shutil.rmtree(folder)


def load_network(section: ModelSection, local_rank: int = 0) -> tuple[ModelBundle, dict[str, Any]]:
    """The checkpoint (default: the demo model) in eval mode on its device, and what identifies it."""
    from medcam.train.distributed import pick_device

    if section.threads is not None:
        torch.set_num_threads(section.threads)
    path = Path(section.checkpoint) if section.checkpoint else DEMO_CHECKPOINT
    bundle = load_checkpoint(path, device=pick_device(section.device, local_rank))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return bundle, {"checkpoint": str(path), "sha256": digest}


@contextmanager
def _process_group(device: torch.device) -> Iterator[None]:
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def under_torchrun() -> bool:
    """Started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ


def run_config(
    config: EvaluationConfig,
    folder: Path,
    *,
    overwrite: bool = False,
    shard: Shard | None = None,
    progress: Progress | None = None,
) -> Path | None:
    """Run the evaluation a config describes into ``folder``; the summary's path, or None for a shard.

    ``shard``: run only this shard (merge later); ``None``: the whole split, or this
    rank's share under ``torchrun`` with the merge on rank 0.
    """
    from medcam.evaluate.samples import open_samples

    distributed = shard is None and under_torchrun()
    if distributed:
        shard = Shard.from_env()
    shard = shard or Shard()
    bundle, model_id = load_network(config.model, int(os.environ.get("LOCAL_RANK", "0")) if distributed else 0)
    samples = open_samples(config, bundle.meta)  # config and data errors surface before any folder is touched
    context = {"model": model_id, **config.context()}
    inputs = [config.data.root, config.model.checkpoint]
    device = next(bundle.model.parameters()).device
    if not distributed:
        if overwrite and shard.world > 1:
            raise UserError(
                "--overwrite cannot be combined with --shard (other shards may be running); "
                "delete the folder before starting the shards"
            )
        prepare_folder(folder, overwrite=overwrite, inputs=inputs)
        return _run(bundle, samples, config, folder, shard, progress, context, report=shard.world == 1)
    import torch.distributed as dist

    with _process_group(device):
        if shard.rank == 0:
            prepare_folder(folder, overwrite=overwrite, inputs=inputs)
        dist.barrier()  # nobody writes before rank 0 has cleared the folder
        _run(bundle, samples, config, folder, shard, progress, context, report=False)
        dist.barrier()  # every shard has written its .done marker
        summary = finalize(folder, config.evaluation, shard.world, config.title) if shard.rank == 0 else None
        dist.barrier()
    return summary


def _run(
    bundle: ModelBundle,
    samples: Any,
    config: EvaluationConfig,
    folder: Path,
    shard: Shard,
    progress: Progress | None,
    context: dict[str, Any],
    *,
    report: bool,
) -> Path | None:
    run_evaluation(
        bundle.model,
        samples,
        config.evaluation,
        folder,
        shard=shard,
        progress=progress,
        title=config.title,
        report=report,
        context=context,
    )
    return folder / "summary.md" if report else None


def shard_world(folder: Path) -> int:
    """The number of shards a sharded run in ``folder`` was split into (from its shard files)."""
    found = {
        int(m.group(2))
        for p in (folder / SHARDS).glob("results.rank*-of-*.csv")
        if (m := _SHARD_FILE.fullmatch(p.name))
    }
    if not found:
        if (folder / RESULTS).exists():
            raise UserError(f"{folder} holds a single-process evaluation (no shards); nothing to merge")
        raise UserError(f"{folder} holds no shard results ({SHARDS}/results.rank*-of-*.csv); run the shards first")
    if len(found) > 1:
        raise UserError(f"{folder} holds shards of runs with {sorted(found)} shards; keep one run per folder")
    return found.pop()


def merge_config(config: EvaluationConfig, folder: Path) -> Path:
    """Merge the finished shards in ``folder`` and write the report; the summary's path."""
    check_written_settings(folder, config.evaluation)
    return finalize(folder, config.evaluation, shard_world(folder), config.title)
