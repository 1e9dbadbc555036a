"""Images with their geometry: reading, preprocessing and its inverse, pixel sets in input coordinates.

NIfTI/ITK axis conventions live here and nowhere else: arrays are channel-first with
spatial axes in file index order (nibabel's i, j, k; ITK's index), geometry travels as a
RAS affine plus ITK's own reading of the file.
"""

from medcam.volumes.geometry import ItkGeometry
from medcam.volumes.io import Volume, VolumeError, load_volume

__all__ = [
    "ItkGeometry",
    "Volume",
    "VolumeError",
    "load_volume",
]
