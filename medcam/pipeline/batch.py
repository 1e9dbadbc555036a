"""Many images: cases from a folder or a datalist, explained into ``out/<case id>``, sharded over torchrun ranks."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medcam.errors import UserError
from medcam.models.loading import LoadedModel, ModelSource, check_device, load_model
from medcam.pipeline.options import ExplainOptions
from medcam.pipeline.volume import explain_volume
from medcam.review.folders import OutputError, check_output, is_medcam_output, output_path
from medcam.volumes.io import is_image_file, strip_suffix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One image of a batch and the name of its output folder."""

    id: str
    image: Path


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def cases_from_folder(folder: str | Path) -> list[Case]:
    """Images directly in ``folder`` (nnU-Net's ``_0000`` suffix dropped, its ``_0001..`` channels
    left to their ``_0000`` file) and case folders.

    A sub-folder is a case when it holds ``imaging.*`` (KiTS layout) or exactly one image,
    or is a DICOM series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--folder {folder} is not a folder")
    cases = []
    stems = {strip_suffix(p.name) for p in folder.iterdir() if is_image_file(p)}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if is_image_file(entry):
            stem = strip_suffix(entry.name)
            channel = re.search(r"_(\d{4})$", stem)
            if channel and int(channel.group(1)) > 0 and f"{stem[:-5]}_0000" in stems:
                continue  # a further channel of an nnU-Net case: read with its _0000 file
            cases.append(Case(re.sub(r"_0000$", "", stem), entry))
        elif entry.is_dir():
            images = sorted(p for p in entry.iterdir() if is_image_file(p))
            preferred = [p for p in images if strip_suffix(p.name) == "imaging"]
            if preferred or len(images) == 1:
                cases.append(Case(entry.name, (preferred or images)[0]))
            elif not images and any(p.is_file() for p in entry.iterdir()):
                cases.append(Case(entry.name, entry))  # maybe a DICOM series; checked when read
    if not cases:
        raise UserError(f"--folder {folder} holds no images (.nii.gz, .nrrd, .mha, .png, .jpg or case folders)")
    check_case_ids(cases, f"--folder {folder}")
    return cases


def cases_from_datalist(path: str | Path) -> list[Case]:
    """Cases of a JSON list (paths, or objects with ``image`` and optional ``id``) or a Decathlon file.

    Paths are relative to the JSON file. A Decathlon/MONAI file contributes its
    ``training``, ``validation`` and ``test`` entries, in that order.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--datalist {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise UserError(f"--datalist {path} is not readable JSON ({reason})") from None
    if isinstance(data, Mapping):
        entries = []
        for key in ("cases", "training", "validation", "test"):
            part = data.get(key, [])
            if not isinstance(part, list):
                raise UserError(f"--datalist {path}: {key!r} must be a list of cases, not {type(part).__name__}")
            entries.extend(part)
    elif isinstance(data, list):
        entries = data
    else:
        raise UserError(f"--datalist {path} must hold a list of cases or a Decathlon-style object")
    cases = []
    for entry in entries:
        image = entry.get("image") if isinstance(entry, Mapping) else entry
        if not isinstance(image, str) or not image:
            raise UserError(f"--datalist entry {_short(entry)} has no image path")
        full = (path.parent / image).resolve() if not Path(image).is_absolute() else Path(image)
        case_id = entry.get("id") if isinstance(entry, Mapping) and entry.get("id") is not None else None
        if case_id is None:
            case_id = re.sub(r"_0000$", "", strip_suffix(full.name))
            if case_id == "imaging":
                case_id = full.parent.name
        elif isinstance(case_id, bool) or not isinstance(case_id, (str, int)):
            raise UserError(f"--datalist entry {_short(entry)}: 'id' must be a text or a number")
        cases.append(Case(str(case_id), full))
    if not cases:
        raise UserError(f"--datalist {path} lists no cases")
    check_case_ids(cases, f"--datalist {path}")
    return cases


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_case_ids(cases: Sequence[Case], source: str = "the batch") -> None:
    """Every case id names one folder directly inside ``--out``, and no two ids name the same one.

    Refused: empty ids, ``.``/``..``, path separators, control characters, a leading
    ``.`` (hidden; medcam's temporary folders are hidden) and ids that differ only in
    case (one folder on case-insensitive file systems).
    """
    seen: dict[str, str] = {}
    for case in cases:
        problem = case_id_problem(case.id)
        if problem:
            raise UserError(
                f"{source}: case id {case.id!r} {problem}; give the case a plain name (letters, digits, _-.)"
            )
        key = case.id.casefold()
        if key in seen:
            raise UserError(
                f"{source}: case id {case.id!r} appears twice (also as {seen[key]!r}); give each case a unique id"
            )
        seen[key] = case.id


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot be the name of a case folder, or ``None``."""
    if not case_id.strip():
        return "is empty"
    if case_id in (".", ".."):
        return "would name the output folder's parent or itself"
    if "/" in case_id or "\\" in case_id or os.sep in case_id:
        return "contains a path separator, so it would write outside --out"
    if any(ord(c) < 32 or ord(c) == 127 for c in case_id):
        return "contains a control character"
    if case_id.startswith("."):
        return "starts with '.' (hidden folders are medcam's temporary ones)"
    if len(case_id.encode("utf-8")) > 200:
        return "is longer than 200 bytes"
    return None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``torchrun`` sets RANK and WORLD_SIZE)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise UserError(f"RANK/WORLD_SIZE must be integers ({err})") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return rank, world


def explain_batch(
    cases: Sequence[Case],
    out: str | Path,
    *,
    class_name: str,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    model: ModelSource = None,
    options: ExplainOptions | None = None,
    **settings: Any,
) -> BatchReport:
    """Explain every case into ``out/<case id>``; finished cases are skipped unless ``overwrite``.

    Under ``torchrun`` each rank takes cases ``rank::world_size`` and loads its own model
    (no process group is needed). A case that fails is reported and the rest continue.
    The model is loaded once, and the method built once, for all cases of this rank.
    """
    if options is None:
        options = ExplainOptions.from_keywords(**settings)
    elif settings:
        raise TypeError(f"give explain options either as options= or as keywords, not both ({sorted(settings)})")
    out = output_path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    check_case_ids(cases)
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    if check_device(options.device) == "cuda" and world_size > 1:
        local = int(os.environ.get("LOCAL_RANK", rank)) % max(torch.cuda.device_count(), 1)
        options = options.on_device(f"cuda:{local}")
    check_output(out / ".medcam-batch-probe", overwrite=True)
    mine = list(cases)[rank::world_size]
    report = BatchReport()
    loaded: LoadedModel | None = None
    for case in mine:
        target = out / case.id
        if is_medcam_output(target) and (target / "summary.json").is_file() and not overwrite:
            report.skipped.append(case.id)
            continue
        try:
            if target.parent != out or target.is_symlink():
                raise OutputError(f"{target} is a symbolic link or outside --out {out}; medcam does not write there")
            if target.exists() and not overwrite:
                raise OutputError(f"{target} exists but is not a finished medcam output; move it or pass --overwrite")
            if loaded is None:
                loaded = load_model(model, check_device(options.device))
            explanation = explain_volume(case.image, class_name=class_name, model=loaded, options=options)
            explanation.save(target, overwrite=overwrite)
            report.done.append(case.id)
        except UserError as err:
            logger.info("case %s failed: %s", case.id, err)  # the CLI prints each failure once
            report.failed[case.id] = str(err)
    return report
