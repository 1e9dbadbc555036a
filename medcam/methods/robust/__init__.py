"""RobustCAM: views with exact inverses (views), the method (method), its sliding-window protocol (windows)."""

from medcam.methods.robust.method import FUSIONS, Fusion, RobustCAM, ViewMaps, ViewTarget, fuse, normalization_scale

__all__ = ["FUSIONS", "Fusion", "RobustCAM", "ViewMaps", "ViewTarget", "fuse", "normalization_scale"]
