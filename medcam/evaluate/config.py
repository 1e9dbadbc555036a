"""``medcam evaluate --config``: the YAML file, read once into typed sections.

::

    title: Demo U-Net on KiTS-like phantoms             # summary.md heading (default: file name)
    model: {checkpoint: null, device: auto, threads: 1}  # null (or model: demo): the demo model; auto: CUDA if present
    data: {kind: kits23, root: data/eval_phantom, split: test, samples: 10, pad_to_multiple: 8}
    target: {class: tumor, pixels: predicted, truth: tumor}
    evaluation: {methods: [...], metrics: [...], faithfulness: {...}}   # EvaluationSettings
    output: runs/eval_kits_phantom

Unknown keys are rejected by name at every level, method names, method options and
metric names are checked, and the target's pixel set is parsed, all before a model
or an image is read. ``data.kind`` names one of the readers of :mod:`medcam.data`
(the ``dataset.kind`` values of the training configs); relative roots are relative to
the working directory, as in the training configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from medcam.core.targets import parse_pixel_set
from medcam.errors import UserError
from medcam.evaluate.settings import EvaluationSettings, reject_unknown
from medcam.methods.registry import create_method
from medcam.train.config import DATASET_KINDS, ConfigError, DatasetConfig, build, yaml_problem

# target.class values that are not class names (classifiers only)
PREDICTED_CLASS = "predicted"
TRUE_CLASS = "label"
# model value: the shipped demo model (medcam.models.checkpoint.DEMO_CHECKPOINT)
DEMO_MODEL = "demo"
# target.pixels value: M is the sample's ground-truth mask (segmentation)
TRUTH_PIXELS = "truth"


@dataclass(frozen=True)
class ModelSection:
    """The network: a medcam checkpoint (``None``: the shipped demo model), where to run it."""

    checkpoint: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else the CPU
    threads: int | None = None  # torch CPU threads (None: torch's default)


@dataclass(frozen=True)
class DataSection:
    """Which reader, where, which split, and how many samples of it.

    ``training_config``: a training YAML (configs/*.yaml) whose ``dataset`` section
    supplies kind, root, fractions, split_seed, mode and foreground_only, so that
    ``split: test`` is exactly the split the model was NOT trained on; keys given here
    override it. ``samples``: at most this many, drawn without replacement with ``sample_seed`` and
    kept in the split's order (``None``: the whole split). ``fractions`` / ``split_seed``
    / ``mode`` / ``foreground_only`` mean what they mean in a training config, so the
    training run's held-out split can be named here. ``pad_to_multiple``: pad the
    preprocessed image (and its ground truth, identically) with zeros at the end of each
    spatial axis to a multiple of this, for networks that need it (a U-Net with three
    stride-2 levels needs 8). The preprocessing itself is the checkpoint's.
    """

    kind: str
    root: str
    training_config: str | None = None
    split: Literal["train", "val", "test"] | None = "test"
    samples: int | None = None
    sample_seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.2, 0.0)
    split_seed: int = 0
    mode: str = "teeth"
    foreground_only: bool = True
    pad_to_multiple: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ConfigError(f"data.kind {self.kind!r} is not one of {', '.join(DATASET_KINDS)}")
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"data.samples must be at least 1 (or null for the whole split), got {self.samples}")
        if self.pad_to_multiple is not None and self.pad_to_multiple < 1:
            raise ConfigError(f"data.pad_to_multiple must be a positive integer, got {self.pad_to_multiple}")

    def dataset_config(self) -> DatasetConfig:
        """The reader's settings in the training configs' terms (:func:`medcam.train.datasets.open_dataset`)."""
        return DatasetConfig(
            kind=self.kind,
            root=self.root,
            fractions=self.fractions,
            split_seed=self.split_seed,
            mode=self.mode,
            foreground_only=self.foreground_only,
        )


@dataclass(frozen=True)
class TargetSection:
    """What each sample explains and where its ground truth is.

    ``class_name`` (YAML ``class``): a label or region name of the checkpoint; for a
    classifier also ``predicted`` (each sample's predicted class) or ``label`` (its
    ground-truth class). ``pixels`` (segmentation): the pixel set M, ``predicted``,
    ``truth`` (the ground-truth mask below), ``prob>T``, ``component[:K]``, ``image``.
    ``truth``: a label or region name of the DATASET whose mask the localisation
    metrics compare with (default for segmentation: ``class`` when the dataset has it).
    """

    class_name: str
    pixels: str = "predicted"
    truth: str | None = None

    @classmethod
    def from_mapping(cls, data: Any) -> TargetSection:
        if not isinstance(data, Mapping):
            raise ConfigError("target must be a mapping, e.g. target: {class: tumor, pixels: predicted}")
        reject_unknown(data, ("class", "pixels", "truth"), "target")
        if "class" not in data:
            raise ConfigError("target needs a 'class' (a label or region name of the checkpoint, or 'predicted')")
        values = {"class_name": data["class"], **{k: v for k, v in data.items() if k != "class"}}
        for key, value in values.items():
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"target.{'class' if key == 'class_name' else key} must be text, got {value!r}")
        if values.get("pixels") is None:
            values.pop("pixels", None)
        section = cls(**values)
        if section.pixels != TRUTH_PIXELS:
            parse_pixel_set(section.pixels)  # a typo fails now, not at the first sample
        return section


@dataclass(frozen=True)
class EvaluationConfig:
    """One ``medcam evaluate`` run."""

    title: str
    output: str
    model: ModelSection
    data: DataSection
    target: TargetSection
    evaluation: EvaluationSettings

    def context(self) -> dict[str, Any]:
        """What besides the settings decides the numbers (a resumed run must share it)."""
        return {"data": {f.name: getattr(self.data, f.name) for f in fields(self.data)}, "target": vars(self.target)}


SECTIONS = ("title", "model", "data", "target", "evaluation", "output")


def parse_config(data: Any, name: str = "evaluation") -> EvaluationConfig:
    """An :class:`EvaluationConfig` from a parsed YAML mapping; every mistake is a :class:`UserError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name} must hold a mapping of sections ({', '.join(SECTIONS)})")
    reject_unknown(data, SECTIONS, "the evaluation config")
    for required in ("data", "target", "evaluation"):
        if required not in data:
            raise ConfigError(f"the evaluation config needs a '{required}' section")
    model_data = data.get("model") or {}
    if model_data == DEMO_MODEL:
        model_data = {}  # the shipped demo model, on the CPU
    if not isinstance(model_data, Mapping):
        raise ConfigError(
            f"model must be '{DEMO_MODEL}' or a mapping, e.g. model: {{checkpoint: runs/x/best.pt}}; got {model_data!r}"
        )
    if not isinstance(data["data"], Mapping):
        raise ConfigError("data must be a mapping, e.g. data: {kind: kits23, root: data/kits23, split: test}")
    evaluation = EvaluationSettings.from_mapping(data["evaluation"])
    data_section = dict(data["data"])
    if data_section.get("training_config") is not None:
        data_section = {**_training_dataset(data_section["training_config"]), **data_section}
    for spec in evaluation.methods:
        create_method(spec.name, **dict(spec.options))  # unknown options are named before any work
    output = data.get("output", f"runs/eval_{name}")
    title = data.get("title", name)
    if not isinstance(output, str) or not isinstance(title, str):
        raise ConfigError("title and output must be text")
    return EvaluationConfig(
        title=title,
        output=output,
        model=build(ModelSection, model_data, "model"),
        data=build(DataSection, data_section, "data"),
        target=TargetSection.from_mapping(data["target"]),
        evaluation=evaluation,
    )


def _training_dataset(path: Any) -> dict[str, Any]:
    """The reader settings of a training config (its ``dataset`` section)."""
    from medcam.train.config import load_config as load_training_config

    if not isinstance(path, str):
        raise ConfigError(f"data.training_config must be a path to a training YAML, got {path!r}")
    dataset = load_training_config(path).dataset
    keys = ("kind", "root", "fractions", "split_seed", "mode", "foreground_only")
    return {k: getattr(dataset, k) for k in keys}


def load_config(path: str | Path) -> EvaluationConfig:
    """Read an evaluation YAML file (see the module docstring)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"evaluation config {path} does not exist; the shipped ones are configs/eval_*.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid YAML ({yaml_problem(err)})") from None
    return parse_config(data, path.stem)
