"""``dataset.kind`` -> the reader that opens it."""

from __future__ import annotations

from medcam.data.base import Dataset
from medcam.train.config import ConfigError, DatasetConfig


def open_dataset(cfg: DatasetConfig) -> Dataset:
    """Open the dataset a config names (readers check the layout and raise on a wrong root)."""
    if cfg.kind == "kits23":
        from medcam.data.kits import KiTS23

        return KiTS23(cfg.root, fractions=cfg.fractions, split_seed=cfg.split_seed)
    if cfg.kind == "kits23_slices":
        from medcam.data.kits import KiTS23Slices

        return KiTS23Slices(
            cfg.root, fractions=cfg.fractions, split_seed=cfg.split_seed, foreground_only=cfg.foreground_only
        )
    if cfg.kind == "opg":
        from medcam.data.opg import OPG

        return OPG(cfg.root, mode=cfg.mode)
    if cfg.kind == "cityscapes":
        from medcam.data.cityscapes import Cityscapes

        return Cityscapes(cfg.root)
    if cfg.kind == "iqothnccd":
        from medcam.data.iqothnccd import IQOTHNCCD

        return IQOTHNCCD(cfg.root, fractions=cfg.fractions, split_seed=cfg.split_seed)
    if cfg.kind == "nnunet":
        from medcam.data.nnunet import NnUNetRaw

        return NnUNetRaw(cfg.root, fractions=cfg.fractions, split_seed=cfg.split_seed)
    if cfg.kind == "decathlon":
        from medcam.data.decathlon import DecathlonJSON

        return DecathlonJSON(cfg.root, fractions=cfg.fractions, split_seed=cfg.split_seed)
    raise ConfigError(f"dataset.kind {cfg.kind!r} is not one of kits23, kits23_slices, opg, cityscapes, ...")
