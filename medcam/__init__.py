"""medcam: class activation maps for medical segmentation and classification networks.

>>> import medcam
>>> exp = medcam.explain(model, x, method="hirescam",
...                      target=medcam.SegmentationTarget(2, pixels="predicted"),
...                      layers="auto")
>>> exp.maps  # layer -> float32 tensor (N, *spatial) at input size
"""

from medcam.api import Explanation, explain, resolve_layers
from medcam.core.targets import (
    Box,
    ClassTarget,
    Component,
    Mask,
    PixelSet,
    Predicted,
    SegmentationTarget,
    TargetError,
    Threshold,
    Voxel,
    WholeImage,
    parse_pixel_set,
)
from medcam.methods.registry import create_method, list_methods
from medcam.metrics.levels import LevelRanking, LevelScore, rank_levels, recommend_level, score_levels
from medcam.models.levels import Level, LevelShape, discover_levels, measure_levels
from medcam.version import __version__

__all__ = [
    "Box",
    "ClassTarget",
    "Component",
    "Explanation",
    "Level",
    "LevelRanking",
    "LevelScore",
    "LevelShape",
    "Mask",
    "PixelSet",
    "Predicted",
    "SegmentationTarget",
    "TargetError",
    "Threshold",
    "Voxel",
    "WholeImage",
    "__version__",
    "create_method",
    "discover_levels",
    "explain",
    "list_methods",
    "measure_levels",
    "parse_pixel_set",
    "rank_levels",
    "recommend_level",
    "resolve_layers",
    "score_levels",
]
