"""The frames of a written DICOM object put in the source series' stored order.

highdicom sorts the frames of every Segmentation and Parametric Map it builds along its
own slice normal (``-(row x column)``, head to feet for an axial series), whatever order
the source images are given in, and has no option to keep that order. This module
reorders a finished object afterwards, so that frame ``f`` (of each segment, for a SEG)
overlays the ``f``-th source frame in stored order
(:attr:`medcam.volumes.dicom_series.SourceSeries.references`). Each per-frame functional
group item moves with its frame, so references, positions and dimension index values
stay with the pixels they describe. The DICOM standard leaves the order of frames in a
multi-frame object to the writer (PS3.3 C.7.6.17); ``DimensionOrganizationType`` ``3D``
describes the set of frames (equally spaced parallel planes), which any order of the same
frames still is (highdicom's own test of it, ``get_volume_positions``, ignores the order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# float pixel data keywords and their bytes per sample (PixelData: BitsAllocated / 8, or bit-packed)
_FLOAT_PIXELS = {"FloatPixelData": 4, "DoubleFloatPixelData": 8}


def follow_source_order(obj: Any, references: Sequence[tuple[str, int | None]]) -> None:
    """Reorder the frames of ``obj`` in place: by segment number (SEG), then by source frame in ``references``.

    ``references``: (SOP Instance UID, frame number or ``None``) of each source frame in
    stored order; every frame of ``obj`` must derive from one of them.
    """
    rank = {reference: index for index, reference in enumerate(references)}
    items = list(obj.PerFrameFunctionalGroupsSequence)
    keys = []
    for number, item in enumerate(items, start=1):
        reference = _source_of(item)
        if reference not in rank:
            raise ValueError(f"frame {number} derives from {reference}, which is not a frame of the source series")
        segment = item.SegmentIdentificationSequence[0] if "SegmentIdentificationSequence" in item else None
        keys.append((int(segment.ReferencedSegmentNumber) if segment is not None else 0, rank[reference]))
    order = sorted(range(len(items)), key=keys.__getitem__)
    if order == list(range(len(items))):
        return
    _reorder_pixels(obj, order)
    obj.PerFrameFunctionalGroupsSequence = [items[i] for i in order]


def _source_of(item: Any) -> tuple[str, int | None]:
    source = item.DerivationImageSequence[0].SourceImageSequence[0]
    frame = source.get("ReferencedFrameNumber")
    return str(source.ReferencedSOPInstanceUID), int(frame) if frame is not None else None


def _reorder_pixels(obj: Any, order: Sequence[int]) -> None:
    """Put frame ``order[f]`` of the native pixel data at ``f``."""
    from pydicom.pixels import pack_bits, unpack_bits

    if obj.file_meta.TransferSyntaxUID.is_encapsulated:
        raise ValueError("reordering frames needs native (uncompressed) pixel data")
    frames = int(obj.NumberOfFrames)
    pixels = int(obj.Rows) * int(obj.Columns) * int(obj.get("SamplesPerPixel", 1))
    keyword = next((k for k in _FLOAT_PIXELS if k in obj), "PixelData")
    data = obj[keyword].value
    if keyword == "PixelData" and int(obj.BitsAllocated) == 1:  # frames may start mid-byte: unpack, permute, pack
        bits = np.asarray(unpack_bits(data))[: frames * pixels].reshape(frames, pixels)
        obj.PixelData = pack_bits(bits[list(order)].ravel())
        return
    size = pixels * (_FLOAT_PIXELS.get(keyword) or int(obj.BitsAllocated) // 8)
    chunks = np.frombuffer(data, dtype=np.uint8)[: frames * size].reshape(frames, size)
    packed = chunks[list(order)].tobytes()
    setattr(obj, keyword, packed + b"\0" * (len(packed) % 2))
