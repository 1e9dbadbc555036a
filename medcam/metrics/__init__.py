"""Measuring explanations: faithfulness, localisation, stability and sanity (docs/metrics.md).

Every metric works on maps shaped ``(N, *spatial)`` at input resolution (what
``medcam.explain`` returns), for 2D and 3D inputs, classifiers and segmentation
networks alike: model-based metrics score inputs with the explained class
probability, for segmentation its mean over the pixel set M.
"""

from medcam.metrics.faithfulness import (
    DeletionInsertion,
    DropIncrease,
    PerturbationCurve,
    average_drop_increase,
    deletion,
    deletion_insertion,
    insertion,
    mask_input,
    trapezoid_auc,
)
from medcam.metrics.localisation import (
    BoundingBox,
    box_iou,
    box_localisation,
    box_of_mask,
    dice,
    energy_inside,
    largest_component,
    map_boxes,
    pointing_game,
    threshold_map,
)
from medcam.metrics.ordering import gaussian_blur, resolve_baseline
from medcam.metrics.region_faithfulness import (
    ScaledCurves,
    TopKScores,
    keep_remove_top_k,
    normalised,
    random_map,
    scaled_deletion_insertion,
)
from medcam.metrics.sanity import SanityResult, cascading_randomisation, parameterised_modules, randomise
from medcam.metrics.scoring import Scorer, bind_target
from medcam.metrics.similarity import pearson, spearman, ssim, top_k_iou, top_k_mask
from medcam.metrics.stability import Stability, fuse_mean, per_pixel_variance, stability

__all__ = [
    "BoundingBox",
    "DeletionInsertion",
    "DropIncrease",
    "PerturbationCurve",
    "SanityResult",
    "ScaledCurves",
    "Scorer",
    "Stability",
    "TopKScores",
    "average_drop_increase",
    "bind_target",
    "box_iou",
    "box_localisation",
    "box_of_mask",
    "cascading_randomisation",
    "deletion",
    "deletion_insertion",
    "dice",
    "energy_inside",
    "fuse_mean",
    "gaussian_blur",
    "insertion",
    "keep_remove_top_k",
    "largest_component",
    "map_boxes",
    "mask_input",
    "normalised",
    "parameterised_modules",
    "pearson",
    "per_pixel_variance",
    "pointing_game",
    "random_map",
    "randomise",
    "resolve_baseline",
    "scaled_deletion_insertion",
    "spearman",
    "ssim",
    "stability",
    "threshold_map",
    "top_k_iou",
    "top_k_mask",
    "trapezoid_auc",
]
