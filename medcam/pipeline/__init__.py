"""The volume layer's orchestration: an image file in, maps on its own voxel grid and a review folder out.

``options`` (one :class:`ExplainOptions` per run), ``volume`` (``explain_volume``,
``explain_case``), ``windows`` (sliding-window prediction and the one window loop),
``batch`` (folders, datalists, torchrun shards), ``recommend`` (``medcam levels``),
``info`` (``medcam info``), ``demo`` (``medcam demo``).
"""

from medcam.models.classes import ClassChoice, resolve_class
from medcam.models.loading import LoadedModel, default_model_path, load_model
from medcam.pipeline.batch import (
    BatchReport,
    Case,
    cases_from_datalist,
    cases_from_folder,
    explain_batch,
    rank_and_world,
)
from medcam.pipeline.info import LayerInfo, inspect_model
from medcam.pipeline.options import DEFAULT_METHOD, ExplainOptions
from medcam.pipeline.volume import explain_case, explain_volume
from medcam.review.bundle import VolumeExplanation
from medcam.review.folders import OutputError, check_output
from medcam.review.summary import SCHEMA_VERSION
from medcam.volumes.io import VolumeError, strip_suffix, volume_format
from medcam.volumes.pixels import build_pixel_set, load_reference

__all__ = [
    "DEFAULT_METHOD",
    "SCHEMA_VERSION",
    "BatchReport",
    "Case",
    "ClassChoice",
    "ExplainOptions",
    "LayerInfo",
    "LoadedModel",
    "OutputError",
    "VolumeError",
    "VolumeExplanation",
    "build_pixel_set",
    "cases_from_datalist",
    "cases_from_folder",
    "check_output",
    "default_model_path",
    "explain_batch",
    "explain_case",
    "explain_volume",
    "inspect_model",
    "load_model",
    "load_reference",
    "rank_and_world",
    "resolve_class",
    "strip_suffix",
    "volume_format",
]
