"""MONAI bundle folders as medcam models.

A bundle folder (MONAI Model Zoo layout)::

    configs/metadata.json  configs/inference.json (or .yaml)  models/model.pt

The network is ``network_def`` of the inference config, instantiated by MONAI's own
``ConfigParser``. A bundle config is code: ``_target_`` names any importable class and
``$`` expressions are evaluated by the parser; medcam parses only ``network_def`` and the
plain settings below, and runs nothing else of the config (no preprocessing objects, no
evaluator), so load bundles you trust. The weights are read with
``torch.load(weights_only=True)``.

Labels come from ``metadata.json`` (``network_data_format.outputs.pred.channel_def``),
the window from ``inferer.roi_size``. The bundle's preprocessing list is translated
into medcam's :class:`~medcam.models.checkpoint.Preprocessing` (orientation, spacing,
intensity window), which medcam applies and inverts; a bundle with other steps is
refused with the name of the step, so no image is fed differently than the bundle does.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medcam.models.checkpoint import CheckpointError, CheckpointMeta, ModelBundle, Preprocessing, check_container

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
# steps that only load, convert type or add the channel axis: nothing to replay
_PASSIVE = {
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureChannelFirst",
    "AddChanneld",
    "EnsureTyped",
    "EnsureType",
    "ToTensord",
    "CastToTyped",
    "ToDeviced",
}


class BundleError(CheckpointError):
    """A MONAI bundle folder is incomplete or uses what medcam cannot replay."""


@dataclass(frozen=True, eq=False)
class MonaiBundle(ModelBundle):
    """A :class:`ModelBundle` from a MONAI bundle folder (``weights``: its ``models/model.pt``)."""

    weights: Path = Path()


def _config_file(folder: Path) -> Path | None:
    return next((folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file()), None)


def is_monai_bundle(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and _config_file(path) is not None and (path / "models").is_dir()


def _target_name(item: Any) -> str:
    target = item.get("_target_", "") if isinstance(item, dict) else ""
    return str(target).rsplit(".", 1)[-1]


def _preprocessing(parser: Any, config: Path) -> Preprocessing:
    """medcam's Preprocessing equal to the bundle's preprocessing list, or a BundleError naming the step."""
    raw = parser.get("preprocessing")
    items = raw.get("transforms", []) if isinstance(raw, dict) else []
    settings: dict[str, Any] = {}
    for index, item in enumerate(items):
        name = _target_name(item)
        at = f"preprocessing#transforms#{index}"

        def value(key: str, at: str = at) -> Any:
            return parser.get_parsed_content(f"{at}#{key}")

        if name in _PASSIVE:
            continue
        if name == "Orientationd":
            settings["orientation"] = str(value("axcodes"))
        elif name == "Spacingd":
            settings["spacing"] = tuple(float(v) for v in value("pixdim"))
        elif name == "ScaleIntensityRanged":
            for key in ("a_min", "a_max", "b_min", "b_max"):
                settings[key] = float(value(key))
            settings["clip"] = bool(item.get("clip", False) and value("clip"))
        else:
            raise BundleError(
                f"{config}: preprocessing step {name or item!r} is not one medcam can replay and invert "
                "(it replays LoadImage, EnsureChannelFirst, Orientation, Spacing, ScaleIntensityRange); "
                "load the network in Python and pass the nn.Module with your own preprocessing"
            )
    return Preprocessing(**settings)


def _labels(meta: dict[str, Any], config: Path) -> tuple[dict[str, int], int, int]:
    fmt = meta.get("network_data_format", {})
    try:
        image = fmt["inputs"]["image"]
        pred = fmt["outputs"]["pred"]
    except (KeyError, TypeError):
        raise BundleError(
            f"{config.parent / 'metadata.json'} has no network_data_format inputs.image / outputs.pred"
        ) from None
    channels = {str(v): int(k) for k, v in pred.get("channel_def", {}).items()}
    if not channels:
        channels = {f"class{c}": c for c in range(int(pred.get("num_channels", 0)))}
    dims = len(image.get("spatial_shape", [])) or 3
    return channels, int(image.get("num_channels", 1)), dims


def load_monai_bundle(folder: str | Path, device: str | torch.device = "cpu") -> MonaiBundle:
    """The network of a MONAI bundle folder with its weights, labels, window and preprocessing."""
    from monai.bundle import ConfigParser

    folder = Path(folder)
    config = _config_file(folder)
    if config is None:
        raise BundleError(f"{folder} has no configs/inference.json or .yaml; is it a MONAI bundle folder?")
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        raise BundleError(f"{folder} has no models/model.pt (TorchScript model.ts is not explainable: hooks)")
    meta_file = config.parent / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    except json.JSONDecodeError as err:
        raise BundleError(f"{meta_file} is not valid JSON ({err})") from None
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(folder)
    if parser.get("network_def") is None:
        raise BundleError(f"{config} has no network_def")
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as err:  # the parser raises whatever the config's own code raises
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{config}: MONAI could not build network_def ({first})") from err
    check_container(weights)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise BundleError(f"{weights} holds pickled Python objects, which medcam refuses to load") from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # the CheckpointSaver layout
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise BundleError(f"{weights}: weights do not fit network_def ({str(err).splitlines()[0]})") from err
    labels, in_channels, dims = _labels(meta, config)
    roi = parser.get("inferer#roi_size")
    patch = tuple(int(v) for v in parser.get_parsed_content("inferer#roi_size")) if roi is not None else None
    post = json.dumps(parser.get("postprocessing", {}))
    activation = "sigmoid" if '"sigmoid": true' in post.lower() else "softmax"
    bundle_meta = CheckpointMeta(
        architecture=f"monai-bundle:{type(network).__name__}",
        arguments={},
        task="segmentation",
        spatial_dims=dims,
        in_channels=in_channels,
        labels=labels,
        activation=activation,
        patch_size=patch,
        preprocessing=_preprocessing(parser, config),
        training={"source": "monai-bundle", "folder": str(folder), "name": str(meta.get("name", folder.name))},
    )
    return MonaiBundle(network.to(device).eval(), bundle_meta, weights=weights)
