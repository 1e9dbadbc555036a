"""What an evaluation computes: methods, metrics and their options, as typed settings.

The settings are read once (from the ``evaluation:`` part of a YAML config, or built
in Python) into frozen dataclasses; unknown keys are rejected by name, method and
metric names are checked against the registries, so a typo fails before any work.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from medcam.errors import UserError
from medcam.methods.registry import METHODS, list_methods
from medcam.metrics.localisation import Connectivity
from medcam.metrics.sanity import RandomisationMode

# metric name -> the per-sample columns it writes to results.csv
METRICS: dict[str, tuple[str, ...]] = {
    "average_drop": ("score", "masked_score", "drop", "increase"),
    "deletion_insertion": ("deletion_auc", "insertion_auc", "overall"),
    "localisation": ("box_iou", "pointing_game", "energy_inside", "dice"),
    "sanity": ("sanity_spearman", "sanity_ssim", "sanity_spearman_mean"),
    "held_out_stability": ("held_out_variance", "held_out_spearman", "held_out_topk_iou"),
    "region_faithfulness": ("keep_topk", "remove_topk", "deletion_m_auc", "insertion_m_auc", "insertion_start"),
}
# the two control maps every region_faithfulness table carries, scored as if they were methods
CONTROL_RANDOM = "control: random map"
CONTROL_TRUTH = "control: truth mask"
CONTROLS = (CONTROL_RANDOM, CONTROL_TRUTH)
DEFAULT_METRICS = ("average_drop", "deletion_insertion", "localisation")


def reject_unknown(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        hints = [difflib.get_close_matches(k, allowed, n=1) for k in unknown]
        said = ", ".join(
            f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in zip(unknown, hints, strict=True)
        )
        raise UserError(f"unknown key(s) {said} in {where}; valid keys: {', '.join(allowed)}")


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a mapping of options, got {type(data).__name__}")
    names = [f.name for f in fields(cls)]
    reject_unknown(data, names, where)
    return cls(**data)


@dataclass(frozen=True)
class MethodSpec:
    """One method to evaluate: registry ``name``, ONE layer, options, and the label it is reported under."""

    name: str
    layers: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        if self.name.lower() not in METHODS:
            close = difflib.get_close_matches(self.name.lower(), list(METHODS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"method {self.name!r} is not known (valid: {', '.join(list_methods())}){hint}")
        if not isinstance(self.layers, str):
            raise UserError(
                f"method {self.key!r}: layers must be one layer spec (a module path, 'auto' or 'levels:NAME'), "
                f"got {self.layers!r}; list one method entry per layer to compare layers"
            )

    @property
    def key(self) -> str:
        """The name rows and tables use: ``label`` if given, else the method name."""
        return self.label or self.name

    @classmethod
    def from_value(cls, value: Any) -> MethodSpec:
        if isinstance(value, str):
            return cls(value)
        spec: MethodSpec = _build(cls, value, "a methods entry")
        return spec


@dataclass(frozen=True)
class FaithfulnessSettings:
    """Options of Average Drop / Increase and deletion / insertion (see medcam.metrics.faithfulness)."""

    steps: int = 100
    masking_baseline: str | float = "zeros"
    deletion_baseline: str | float = "zeros"
    insertion_start: str | float = "blur"
    blur_sigma: float | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise UserError(
                f"faithfulness steps and batch_size must be at least 1, got {self.steps} and {self.batch_size}"
            )


@dataclass(frozen=True)
class RegionFaithfulnessSettings:
    """Options of the segmentation faithfulness metrics (see medcam.metrics.region_faithfulness).

    k = each of ``multiples`` x |M| voxels for keep / remove top-k; deletion / insertion
    over 0 .. ``extent`` x |M| in ``steps`` steps; removed voxels show ``baseline``.
    """

    multiples: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    extent: float = 4.0
    steps: int = 8
    baseline: str | float = "min"
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiples", tuple(float(m) for m in self.multiples))
        if not self.multiples or min(self.multiples) <= 0 or self.extent <= 0:
            raise UserError(f"region_faithfulness multiples and extent must be positive, got {self.multiples}")
        if self.steps < 1 or self.batch_size < 1:
            raise UserError(f"region_faithfulness steps and batch_size must be at least 1, got {self.steps}")


@dataclass(frozen=True)
class HeldOutSettings:
    """Options of the held-out stability metric (medcam.methods.robust.held_out).

    ``views``: view strings, or ``None`` for the defaults (none among RobustCAM's fused views);
    ``multiple``: top-k IoU over ``multiple`` x |M| voxels (classifiers: 10 % of the pixels).
    """

    views: tuple[str, ...] | None = None
    multiple: float = 1.0

    def __post_init__(self) -> None:
        if self.views is not None:
            object.__setattr__(self, "views", tuple(str(v) for v in self.views))
        if self.multiple <= 0:
            raise UserError(f"held_out multiple must be positive, got {self.multiple}")


@dataclass(frozen=True)
class LocalisationSettings:
    """Options of the localisation metrics (see medcam.metrics.localisation)."""

    threshold: float = 0.1
    connectivity: Connectivity = "full"
    tolerance: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise UserError(f"localisation threshold is a fraction of the map maximum in [0, 1), got {self.threshold}")
        if self.connectivity not in ("face", "full"):
            raise UserError(f"localisation connectivity must be 'face' or 'full', got {self.connectivity!r}")


@dataclass(frozen=True)
class SanitySettings:
    """Options of the cascading randomisation check (see medcam.metrics.sanity)."""

    groups: int | None = 5
    mode: RandomisationMode = "gaussian"
    samples: int | None = None  # only the first N samples of the split (None: all); the check is costly

    def __post_init__(self) -> None:
        if self.samples is not None and self.samples < 1:
            raise UserError(f"sanity samples must be at least 1 (or null: every sample), got {self.samples}")
        if self.groups is not None and self.groups < 1:
            raise UserError(f"sanity groups must be at least 1 (or null: one step per module), got {self.groups}")
        if self.mode not in ("gaussian", "reset"):
            raise UserError(f"sanity mode must be 'gaussian' or 'reset', got {self.mode!r}")


@dataclass(frozen=True)
class EvaluationSettings:
    """Methods x metrics to run on every sample, and the metrics' options."""

    methods: tuple[MethodSpec, ...]
    metrics: tuple[str, ...] = DEFAULT_METRICS
    faithfulness: FaithfulnessSettings = field(default_factory=FaithfulnessSettings)
    region_faithfulness: RegionFaithfulnessSettings = field(default_factory=RegionFaithfulnessSettings)
    held_out: HeldOutSettings = field(default_factory=HeldOutSettings)
    localisation: LocalisationSettings = field(default_factory=LocalisationSettings)
    sanity: SanitySettings = field(default_factory=SanitySettings)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.methods:
            raise UserError("an evaluation needs at least one method")
        keys = [m.key for m in self.methods]
        taken = sorted(set(keys) & set(CONTROLS))
        if taken:
            raise UserError(f"method label(s) {taken} are reserved for the controls; choose another label")
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise UserError(f"method labels must be unique, {repeated} appear twice; give entries a 'label'")
        for metric in self.metrics:
            if metric not in METRICS:
                close = difflib.get_close_matches(metric, list(METRICS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UserError(f"metric {metric!r} is not known (valid: {', '.join(METRICS)}){hint}")

    @property
    def controls(self) -> tuple[str, ...]:
        """The control rows each sample gets (with region_faithfulness only)."""
        return CONTROLS if "region_faithfulness" in self.metrics else ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every row key of a sample: the controls, then the methods."""
        return (*self.controls, *(m.key for m in self.methods))

    @property
    def columns(self) -> tuple[str, ...]:
        """Metric columns of results.csv, in a fixed order."""
        return tuple(c for metric in self.metrics for c in METRICS[metric])

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EvaluationSettings:
        """Settings from a plain mapping (a parsed YAML section); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise UserError(f"evaluation settings must be a mapping, got {type(data).__name__}")
        reject_unknown(data, [f.name for f in fields(cls)], "the evaluation settings")
        if "methods" not in data:
            raise UserError("the evaluation settings need a 'methods' list, e.g. methods: [gradcam, hirescam]")
        methods = data["methods"]
        if isinstance(methods, (str, Mapping)) or not isinstance(methods, Sequence):
            raise UserError("'methods' must be a list of method names or {name, layers, options, label} entries")
        metrics = data.get("metrics", DEFAULT_METRICS)
        if isinstance(metrics, str) or not isinstance(metrics, Sequence):
            raise UserError(f"'metrics' must be a list of names from {', '.join(METRICS)}")
        return cls(
            methods=tuple(MethodSpec.from_value(m) for m in methods),
            metrics=tuple(metrics),
            faithfulness=_build(FaithfulnessSettings, data.get("faithfulness"), "faithfulness"),
            region_faithfulness=_build(
                RegionFaithfulnessSettings, data.get("region_faithfulness"), "region_faithfulness"
            ),
            held_out=_build(HeldOutSettings, data.get("held_out"), "held_out"),
            localisation=_build(LocalisationSettings, data.get("localisation"), "localisation"),
            sanity=_build(SanitySettings, data.get("sanity"), "sanity"),
            seed=int(data.get("seed", 0)),
        )

    def fingerprint(self) -> str:
        """A canonical JSON form: a resumed run must have the same one."""
        return json.dumps(asdict(self), sort_keys=True, default=str)
