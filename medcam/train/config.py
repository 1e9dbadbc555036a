"""Experiment configuration: YAML read once into frozen, typed dataclasses.

Unknown keys are rejected by their dotted name (``training.epoch`` -> "did you mean
training.epochs?"), and every value is checked against its field's type, so a typo
fails before anything trains. ``--set section.key=value`` overrides are applied to the
raw mapping before that check.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medcam.errors import UserError
from medcam.models.checkpoint import Preprocessing


class ConfigError(UserError):
    """A configuration file or override is malformed (unknown key, wrong type, bad value)."""


DATASET_KINDS = ("kits23", "kits23_slices", "opg", "cityscapes", "iqothnccd", "nnunet", "decathlon")


@dataclass(frozen=True)
class DatasetConfig:
    """Which reader, where, and how its cases are split."""

    kind: str
    root: str
    fractions: tuple[float, float, float] = (0.8, 0.2, 0.0)  # train/val/test when the dataset has no split
    split_seed: int = 0
    mode: str = "teeth"  # OPG: "teeth" (33 classes) or "binary"
    label_mode: Literal["labels", "regions"] = "labels"  # "regions": one sigmoid channel per region
    foreground_only: bool = True  # KiTS23 slices: only slices showing kidney, tumour or cyst
    max_cases: int | None = None  # use at most this many training cases (quick runs)


@dataclass(frozen=True)
class ModelConfig:
    """An architecture of :mod:`medcam.models.factory` and its keyword arguments."""

    architecture: str
    arguments: dict[str, Any] = field(default_factory=dict)
    cam_layers: tuple[str, ...] | None = None  # default layers to explain; None = the U-Net bottleneck / last block


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, sampling and validation settings (segmentation and classification)."""

    epochs: int = 50
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr_schedule: Literal["constant", "poly"] = "constant"  # poly: lr * (1 - epoch / epochs) ** 0.9 (nnU-Net)
    seed: int = 0
    steps_per_epoch: int | None = None  # None: one pass over the training cases
    val_every: int = 1
    val_max_cases: int | None = None
    num_workers: int = 0
    cache: bool = True  # keep preprocessed training cases in memory (MONAI CacheDataset)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # CPU threads for torch (None: torch's default); 1 is fastest on a busy machine
    # segmentation
    patch_size: tuple[int, ...] | None = None  # random crops around foreground; None = whole image
    samples_per_image: int = 2
    pos_neg: tuple[float, float] = (2.0, 1.0)  # foreground:background crop centre ratio
    crop_ratios: tuple[float, ...] | None = None  # per-label crop centre ratios instead of pos_neg
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    intensity_augmentation: bool = True  # random intensity scale/shift (training only)
    flip_axes: tuple[int, ...] = ()  # random flips along these spatial axes (training only)
    sw_batch_size: int = 2
    sw_overlap: float = 0.25
    # classification
    frozen_backbone: bool = False
    class_weights: Literal["auto", "none"] | tuple[float, ...] = "auto"


@dataclass(frozen=True)
class ExperimentConfig:
    """One dataset x model experiment."""

    name: str
    task: Literal["segmentation", "classification"]
    output: str
    dataset: DatasetConfig
    model: ModelConfig
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} is not a valid {' | '.join(_type_name(a) for a in args)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")  # pragma: no cover - a bug in this module


def build(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, naming unknown keys and bad values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
        raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"config is missing {', '.join(prefix + m for m in missing)}")
    values = {k: _convert(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**values)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. training.epochs=2)")
        key, text = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {key}: the value is not valid YAML ({yaml_problem(err)})") from None
    return data


def yaml_problem(err: BaseException) -> str:
    """A YAML parser's message of several lines as one: the problem and where it is."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment config (plus overrides) into an :class:`ExperimentConfig`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist; the shipped ones are in configs/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, task, dataset, model, ...)")
    config: ExperimentConfig = build(ExperimentConfig, apply_overrides(data, overrides))
    if config.dataset.kind not in DATASET_KINDS:
        raise ConfigError(f"dataset.kind {config.dataset.kind!r} is not one of {', '.join(DATASET_KINDS)}")
    return config


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """Plain-data form (tuples as lists) for YAML/JSON round trips."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return typing.cast(dict[str, Any], plain(dataclasses.asdict(config)))
