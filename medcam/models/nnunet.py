"""nnU-Net v2 trained-model folders as medcam models, read without unpickling code.

A trained-model folder, as ``nnUNetv2_train`` writes it::

    nnUNet_results/Dataset501_X/nnUNetTrainer__nnUNetPlans__3d_fullres/
        plans.json  dataset.json  fold_0/checkpoint_final.pth  fold_1/checkpoint_best.pth ...

The network is built from ``plans.json`` with nnU-Net's own builder
(``get_network_from_plans``, or the trainer's ``build_network_architecture`` when an
nnU-Net trainer overrides it) and gets the weights of each chosen fold.

Safety. Checkpoints are read without unpickling code
(:mod:`medcam.models.nnunet_checkpoint`). ``plans.json`` names the network class and
its building blocks as import paths that nnU-Net resolves with ``pydoc.locate``; medcam
only resolves classes of ``dynamic_network_architectures`` and ``torch.nn``
(:func:`check_architecture`).

The network is fed nnU-Net's preprocessing, not medcam's: the returned
:class:`NNUNetBundle` says so (``preprocessing_by == "nnunet"``) and carries what
:mod:`medcam.volumes.nnunet_grid` needs to replay it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcam.models.checkpoint import CheckpointMeta, ModelBundle
from medcam.models.nnunet_2d import lift_weights, lifted_network
from medcam.models.nnunet_checkpoint import NNUNetCheckpoint, NNUNetError, read_nnunet_checkpoint
from medcam.models.nnunet_ensembles import FoldEnsemble, MirrorEnsemble, release_weights

logger = logging.getLogger(__name__)

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
_FOLD = re.compile(r"^fold_(\d+|all)$")
_TRAINED = re.compile(r"^(?P<trainer>[^_].*?)__(?P<plans>.+?)__(?P<configuration>.+)$")


# ------------------------------------------------------------------------------------
# The folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NNUNetError(
            f"{path} is missing; an nnU-Net trained-model folder holds plans.json and dataset.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NNUNetError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise NNUNetError(f"{path} must hold a JSON object")
    return data


def is_nnunet_folder(path: str | Path) -> bool:
    """Whether ``path`` is (or holds, or is a fold/checkpoint of) an nnU-Net trained-model folder."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".pth" and (path.parent.parent / "plans.json").is_file()
    if not path.is_dir():
        return False
    if (path / "plans.json").is_file() or (_FOLD.match(path.name) and (path.parent / "plans.json").is_file()):
        return True
    return bool(_trained_subfolders(path))


def _trained_subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _TRAINED.match(p.name) and (p / "plans.json").is_file())


def resolve_folder(
    path: str | Path, configuration: str | None = None
) -> tuple[Path, tuple[str, ...] | None, str | None]:
    """The trained-model folder for ``path``, and the fold and checkpoint ``path`` names, if any.

    ``path`` may be the trained-model folder, its parent (``DatasetXXX_Name``; then
    ``configuration`` picks among several), a ``fold_K`` folder or a checkpoint file.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".pth" or not (path.parent.parent / "plans.json").is_file():
            raise NNUNetError(f"{path} is not a checkpoint inside an nnU-Net trained-model folder")
        fold = _FOLD.match(path.parent.name)
        if fold is None:
            raise NNUNetError(f"{path} is not inside a fold_K folder of an nnU-Net trained-model folder")
        kind = next((k for k, v in CHECKPOINTS.items() if v == path.name), None)
        if kind is None:
            raise NNUNetError(f"{path.name}: medcam reads checkpoint_final.pth or checkpoint_best.pth")
        return path.parent.parent, (fold.group(1),), kind
    if not path.is_dir():
        raise NNUNetError(f"{path} does not exist")
    fold = _FOLD.match(path.name)
    if fold is not None and (path.parent / "plans.json").is_file():
        return path.parent, (fold.group(1),), None
    if (path / "plans.json").is_file():
        return path, None, None
    candidates = _trained_subfolders(path)
    if configuration is not None:
        candidates = [p for p in candidates if _TRAINED.match(p.name)["configuration"] == configuration]  # type: ignore[index]
    if len(candidates) == 1:
        return candidates[0], None, None
    names = ", ".join(p.name for p in _trained_subfolders(path))
    if not candidates:
        wanted = f" for configuration {configuration!r}" if configuration else ""
        raise NNUNetError(
            f"{path} holds no nnU-Net trained-model folder (Trainer__Plans__Configuration with plans.json){wanted}"
            + (f"; it holds {names}" if names else "")
        )
    raise NNUNetError(f"{path} holds several trained models ({names}); choose one with --configuration NAME")


def available_folds(folder: Path, checkpoint: str) -> tuple[str, ...]:
    """Folds with the checkpoint, as nnU-Net's predictor finds them (``fold_all`` only when asked)."""
    found = []
    for entry in sorted(folder.iterdir()):
        match = _FOLD.match(entry.name)
        if match and match.group(1) != "all" and (entry / CHECKPOINTS[checkpoint]).is_file():
            found.append(match.group(1))
    return tuple(sorted(found, key=int))


# ------------------------------------------------------------------------------------
# Plans, labels and the network


_NETWORK_PACKAGES = ("dynamic_network_architectures.",)
_BLOCK_PACKAGES = ("torch.nn.",)


def check_architecture(architecture: dict[str, Any], source: Path) -> None:
    """Refuse plans whose import paths point outside the network libraries nnU-Net ships with.

    nnU-Net resolves these strings with ``pydoc.locate`` and calls them; a plans file
    from elsewhere could name any callable.
    """
    name = architecture.get("network_class_name")
    if not isinstance(name, str) or not name.startswith(_NETWORK_PACKAGES):
        raise NNUNetError(
            f"{source}: network class {name!r} is not from dynamic_network_architectures; medcam builds only "
            "nnU-Net's own architectures from plans (load other networks in Python and pass the nn.Module)"
        )
    kwargs = architecture.get("arch_kwargs", {})
    for key in architecture.get("_kw_requires_import", []):
        value = kwargs.get(key)
        if value is not None and (not isinstance(value, str) or not value.startswith(_BLOCK_PACKAGES)):
            raise NNUNetError(f"{source}: {key} = {value!r} is not a torch.nn class; medcam refuses to import it")


@dataclass(frozen=True)
class NNUNetLabels:
    """The network's output channels named from ``dataset.json``.

    ``names``: name -> output channel. Label-based (softmax) models have one channel per
    label value (background included); region-based (sigmoid) models one per region,
    and ``paint[c]`` is the label value region ``c`` paints (``regions_class_order``).
    """

    names: dict[str, int]
    activation: str
    paint: tuple[int, ...]
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def segments(self) -> dict[int, str]:
        """Label value -> name in the written segmentation (background left out), as nnU-Net paints it."""
        return {self.paint[channel]: name for name, channel in self.names.items() if self.paint[channel] != 0}


def read_labels(dataset: dict[str, Any], plans_manager: Any, source: Path) -> NNUNetLabels:
    """Output channels of the network, with nnU-Net's LabelManager deciding labels vs. regions."""
    try:
        manager = plans_manager.get_label_manager(dataset)
    except (AssertionError, RuntimeError, KeyError, TypeError) as err:
        raise NNUNetError(f"{source}: the labels in dataset.json are not valid for nnU-Net ({err})") from err
    entries = [(k, v) for k, v in dataset["labels"].items() if k != "ignore"]
    if manager.has_regions:
        heads = [
            tuple(int(x) for x in r) if isinstance(r, (list, tuple)) else (int(r),) for r in manager.foreground_regions
        ]
        names: dict[str, int] = {}
        regions: dict[str, tuple[int, ...]] = {}
        for key, value in entries:
            members = tuple(int(x) for x in value) if isinstance(value, (list, tuple)) else (int(value),)
            if members in heads and key not in names:
                names[key] = heads.index(members)
                regions[key] = members
        paint = tuple(int(c) for c in manager.regions_class_order)
        return NNUNetLabels(names, "sigmoid", paint, regions)
    channels = {int(v): i for i, v in enumerate(manager.all_labels)}
    names = {key: channels[int(value)] for key, value in entries if not isinstance(value, (list, tuple))}
    return NNUNetLabels(names, "softmax", tuple(int(v) for v in manager.all_labels))


def build_network(
    plans_manager: Any, configuration_manager: Any, in_channels: int, out_channels: int, trainer: str | None
) -> nn.Module:
    """The network of the plans, without deep supervision, as nnU-Net's predictor builds it."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    if trainer and trainer != "nnUNetTrainer":
        builder = _trainer_builder(trainer)
        if builder is not None:
            return builder(
                plans_manager, configuration_manager, in_channels, out_channels, enable_deep_supervision=False
            )
    return get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        in_channels,
        out_channels,
        allow_init=False,
        deep_supervision=False,
    )


def _trainer_builder(trainer: str) -> Any:
    """A shipped nnU-Net trainer's own ``build_network_architecture`` when it overrides the default one."""
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer)
    except RuntimeError:
        logger.warning("trainer %s is not in the installed nnunetv2; building the network from the plans", trainer)
        return None
    own = trainer_class.build_network_architecture
    if own is nnUNetTrainer.build_network_architecture:
        return None
    if "plans_manager" not in inspect.signature(own).parameters:
        raise NNUNetError(f"trainer {trainer} uses nnU-Net's old build_network_architecture signature; update nnunetv2")
    return own


@dataclass(frozen=True, eq=False)
class NNUNetSource:
    """Where an nnU-Net model came from and what replays its preprocessing and export."""

    folder: Path
    dataset_name: str
    trainer: str
    plans_name: str
    configuration: str
    folds: tuple[str, ...]
    checkpoint: str
    plans: dict[str, Any]
    dataset: dict[str, Any]
    labels: NNUNetLabels
    mirror_axes: tuple[int, ...] | None

    def plans_manager(self) -> Any:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans)

    def configuration_manager(self) -> Any:
        return self.plans_manager().get_configuration(self.configuration)


@dataclass(frozen=True, eq=False)
class NNUNetBundle(ModelBundle):
    """A :class:`ModelBundle` whose input must be prepared by nnU-Net's preprocessing.

    ``meta.preprocessing`` is empty on purpose: medcam's own steps do not apply; a caller
    prepares the image with :func:`medcam.volumes.nnunet_grid.prepare_nnunet`.
    """

    source: NNUNetSource | None = None
    preprocessing_by: str = "nnunet"


def load_fold(network: nn.Module, path: Path, flat: bool, read: NNUNetCheckpoint | None = None) -> None:
    """One fold's weights (``read``, else read from ``path``) into ``network``, replacing its tensors.

    Assigned rather than copied, so a skeleton on the meta device is filled too; each
    tensor gets the dtype of the one it replaces, as a copy would give it.
    """
    checkpoint = read if read is not None else read_nnunet_checkpoint(path)
    weights = lift_weights(checkpoint.weights, network) if flat else checkpoint.weights
    wanted = network.state_dict()
    weights = {k: v.to(dtype=wanted[k].dtype) if k in wanted else v for k, v in weights.items()}
    try:
        network.load_state_dict(weights, assign=True)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise NNUNetError(f"{path.parent}: weights do not fit the network of plans.json ({first_line})") from err


def _parse_folds(folds: Sequence[int | str] | str | None) -> tuple[str, ...] | None:
    if folds is None:
        return None
    items = folds.replace(",", " ").split() if isinstance(folds, str) else [str(f) for f in folds]
    out = []
    for item in items:
        if item != "all" and not item.isdigit():
            raise NNUNetError(f"--folds takes fold numbers or 'all' (e.g. --folds 0,1), got {item!r}")
        out.append(item)
    if not out:
        raise NNUNetError("--folds is empty; give fold numbers, e.g. --folds 0,1")
    return tuple(dict.fromkeys(out))


def load_nnunet(
    path: str | Path,
    *,
    folds: Sequence[int | str] | str | None = None,
    checkpoint: str | None = None,
    configuration: str | None = None,
    mirroring: bool = True,
    device: str | torch.device = "cpu",
) -> NNUNetBundle:
    """An nnU-Net v2 trained-model folder as a model to explain (folds averaged, eval mode).

    ``folds``: default the folds with the checkpoint (as ``nnUNetv2_predict``);
    ``checkpoint``: ``"final"`` (default) or ``"best"``; ``configuration``: which trained
    model when ``path`` is a dataset folder with several. ``mirroring``: nnU-Net's
    test-time mirroring over the axes the checkpoint allows (``nnUNetv2_predict``'s
    default; off is its ``--disable_tta``).
    """
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise NNUNetError(
            "reading nnU-Net folders needs nnunetv2; install it with pip install 'medcam[nnunet]'"
        ) from None
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder, named_folds, named_checkpoint = resolve_folder(path, configuration)
    if checkpoint is None:
        checkpoint = named_checkpoint or "final"
    if checkpoint not in CHECKPOINTS:
        raise NNUNetError(f"--checkpoint must be 'final' or 'best', got {checkpoint!r}")
    chosen = _parse_folds(folds) or named_folds or available_folds(folder, checkpoint)
    if not chosen:
        raise NNUNetError(f"{folder} has no fold_K/{CHECKPOINTS[checkpoint]}; train a fold or pass --checkpoint best")
    for fold in chosen:
        if not (folder / f"fold_{fold}" / CHECKPOINTS[checkpoint]).is_file():
            present = ", ".join(available_folds(folder, checkpoint)) or "none"
            raise NNUNetError(f"{folder} has no fold_{fold}/{CHECKPOINTS[checkpoint]} (folds present: {present})")
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    if not isinstance(dataset.get("labels"), dict) or "background" not in dataset["labels"]:
        raise NNUNetError(f"{folder / 'dataset.json'} has no 'labels' with a background entry")
    name_parts = _TRAINED.match(folder.name)
    first = read_nnunet_checkpoint(folder / f"fold_{chosen[0]}" / CHECKPOINTS[checkpoint])
    config_name = first.configuration or (name_parts["configuration"] if name_parts else None)
    trainer = first.trainer or (name_parts["trainer"] if name_parts else "nnUNetTrainer")
    configurations = plans.get("configurations", {})
    if not isinstance(config_name, str) or config_name not in configurations:
        raise NNUNetError(f"{folder}: configuration {config_name!r} is not in plans.json ({', '.join(configurations)})")
    plans_manager = PlansManager(plans)
    try:
        config = plans_manager.get_configuration(config_name)
    except (KeyError, RuntimeError, AssertionError) as err:
        raise NNUNetError(f"{folder}: plans.json configuration {config_name!r} is not usable ({err})") from err
    if config.previous_stage_name is not None:
        raise NNUNetError(
            f"{folder} is the cascade configuration {config_name!r}, whose input includes the "
            f"{config.previous_stage_name} prediction; medcam explains single-stage configurations "
            "(2d, 3d_lowres, 3d_fullres): pass one of those folders"
        )
    check_architecture(config.configuration.get("architecture", {}), folder / "plans.json")
    labels = read_labels(dataset, plans_manager, folder)
    in_channels = determine_num_input_channels(plans_manager, config, dataset)
    out_channels = plans_manager.get_label_manager(dataset).num_segmentation_heads
    flat = len(config.patch_size) == 2  # a 2d configuration: run as depth-1 3D network (nnunet_2d)
    if flat and trainer not in (None, "nnUNetTrainer") and _trainer_builder(trainer) is not None:
        raise NNUNetError(
            f"{folder}: trainer {trainer} builds its own 2D network; medcam explains 2d models of nnUNetTrainer"
        )
    mirror_axes = first.mirror_axes
    paths = [folder / f"fold_{fold}" / CHECKPOINTS[checkpoint] for fold in chosen]
    read: NNUNetCheckpoint | None = first  # fold 0's weights, read already
    del first
    networks = []
    for path in paths:  # every fold checked here, one fold's weights in memory at a time
        if flat:
            network = lifted_network(config, in_channels, out_channels, str(folder / "plans.json"))
        else:
            network = build_network(plans_manager, config, in_channels, out_channels, trainer)
        load_fold(network, path, flat, read)
        read = None  # the weights are the network's now; the other folds are read from disk
        axes = mirror_axes if mirroring else None
        if axes and flat:
            axes = tuple(a + 1 for a in axes)  # the in-plane axes of the depth-1 3D network
        networks.append(MirrorEnsemble(network, axes) if axes else network)
        if len(paths) > 1:
            release_weights(networks[-1])  # loaded again from its checkpoint when used (FoldEnsemble.fold)
    model: nn.Module = networks[0]
    if len(networks) > 1:
        model = FoldEnsemble(networks, [functools.partial(load_fold, path=path, flat=flat) for path in paths])
    patch = (1, *(int(p) for p in config.patch_size)) if flat else tuple(int(p) for p in config.patch_size)
    meta = CheckpointMeta(
        architecture=f"nnunet:{config.network_arch_class_name.rsplit('.', 1)[-1]}",
        arguments={},
        task="segmentation",
        spatial_dims=len(patch),
        in_channels=int(in_channels),
        labels=dict(labels.names),
        activation=labels.activation,
        patch_size=patch,
        training={
            "source": "nnunet",
            "folder": str(folder),
            "trainer": trainer,
            "plans": plans_manager.plans_name,
            "configuration": config_name,
            "folds": list(chosen),
            "checkpoint": checkpoint,
            "mirror_axes": list(mirror_axes) if mirroring and mirror_axes else [],
            "slice_by_slice": flat,
        },
    )
    source = NNUNetSource(
        folder=folder,
        dataset_name=str(plans.get("dataset_name", folder.parent.name)),
        trainer=trainer,
        plans_name=plans_manager.plans_name,
        configuration=config_name,
        folds=tuple(chosen),
        checkpoint=checkpoint,
        plans=plans,
        dataset=dataset,
        labels=labels,
        mirror_axes=mirror_axes,
    )
    return NNUNetBundle(model.to(device).eval(), meta, source=source)
