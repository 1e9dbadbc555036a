"""Broken and hostile files, made byte by byte: NIfTI headers, pictures, NRRD/MHA, DICOM, checkpoints.

Every maker writes one small file (or folder) and returns its path; the corpus in
``test_hostile_inputs.py`` feeds each to ``medcam explain`` and expects one line and
exit status 2. Voxel data are tiny (8 x 8 x 8); the headers lie.
"""

from __future__ import annotations

import gzip
import io
import json
import locale
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

SHAPE = (8, 8, 8)

# NIfTI-1 header fields: (offset, struct format)
FIELDS = {
    "sizeof_hdr": (0, "<i"),
    "dim": (40, "<8h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern": (256, "<6f"),
    "srow_x": (280, "<4f"),
    "srow_y": (296, "<4f"),
    "srow_z": (312, "<4f"),
    "magic": (344, "4s"),
}


def nifti_bytes(data: np.ndarray | None = None, **patch: Any) -> bytes:
    """A valid single-file NIfTI-1 of ``data`` (8^3 float32 ramp), then header fields overwritten."""
    if data is None:
        data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 97).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0]))
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    raw = bytearray(img.to_bytes())
    for name, value in patch.items():
        offset, fmt = FIELDS[name]
        values = value if isinstance(value, tuple | list) else (value,)
        struct.pack_into(fmt, raw, offset, *values)
    return bytes(raw)


def write_nifti(path: Path, *, gz: bool | None = None, data: np.ndarray | None = None, **patch: Any) -> Path:
    raw = nifti_bytes(data, **patch)
    gz = path.name.endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def dims(*sizes: int) -> tuple[int, ...]:
    """A NIfTI ``dim`` field: the rank, the sizes, ones after."""
    return (len(sizes), *sizes, *([1] * (7 - len(sizes))))


def nifti_cases() -> dict[str, Callable[[Path], Path]]:
    """Header and datatype lies, each as a NIfTI file maker."""
    nan, inf = float("nan"), float("inf")
    huge = dims(30000, 30000, 30000)
    cases: dict[str, dict[str, Any]] = {
        "dims_huge": {"dim": huge},
        "dims_huge_gz": {"dim": huge, "gz": True},
        "dims_larger_than_data": {"dim": dims(64, 64, 64)},
        "dims_larger_than_data_gz": {"dim": dims(400, 400, 400), "gz": True},
        "dims_negative": {"dim": dims(-8, 8, 8)},
        "dims_zero": {"dim": dims(0, 8, 8)},
        "rank_zero": {"dim": (0, 8, 8, 8, 1, 1, 1, 1)},
        "rank_nine": {"dim": (9, 8, 8, 8, 1, 1, 1, 1)},
        "rank_negative": {"dim": (-3, 8, 8, 8, 1, 1, 1, 1)},
        "rank_one": {"dim": dims(512)},
        "five_d": {"dim": dims(8, 8, 2, 2, 2)},
        "vox_offset_beyond_file": {"vox_offset": 1e9},
        "vox_offset_negative": {"vox_offset": -400.0},
        "vox_offset_nan": {"vox_offset": nan},
        "sizeof_hdr_wrong": {"sizeof_hdr": 1234},
        "magic_wrong": {"magic": b"xx1\x00"},
        "dtype_bool": {"datatype": 1, "bitpix": 1},
        "dtype_9999": {"datatype": 9999},
        "dtype_zero": {"datatype": 0},
        "dtype_rgb24": {"datatype": 128, "bitpix": 24, "dim": dims(8, 8, 5)},
        "dtype_rgba32": {"datatype": 2304, "bitpix": 32},
        "dtype_complex64": {"datatype": 32, "bitpix": 64, "dim": dims(8, 8, 4)},
        "dtype_complex128": {"datatype": 1792, "bitpix": 128, "dim": dims(8, 8, 2)},
        "dtype_float128": {"datatype": 1536, "bitpix": 128, "dim": dims(8, 8, 2)},
        "slope_inf": {"scl_slope": inf},
        "slope_nan_intercept_inf": {"scl_slope": 1.0, "scl_inter": inf},
        "sform_nan": {"srow_x": (nan, 0.0, 0.0, 0.0)},
        "sform_inf": {"srow_y": (0.0, inf, 0.0, 0.0)},
        "sform_singular": {"srow_x": (0.0, 0.0, 0.0, 0.0)},
        "sform_rank_deficient": {"srow_y": (1.5, 0.0, 0.0, 0.0)},
        "qform_nan_quaternion": {"sform_code": 0, "quatern": (nan, 0.0, 0.0, 0.0, 0.0, 0.0)},
        "qform_invalid_quaternion": {"sform_code": 0, "quatern": (0.9, 0.9, 0.9, 0.0, 0.0, 0.0)},
        "qform_nan_offset": {"sform_code": 0, "quatern": (0.0, 0.0, 0.0, nan, 0.0, 0.0)},
        "qform_nan_besides_sform": {"quatern": (nan, 0.0, 0.0, 0.0, 0.0, 0.0)},
        "pixdim_zero": {"sform_code": 0, "pixdim": (1.0, 0.0, 1.5, 2.0, 1.0, 1.0, 1.0, 1.0)},
        "pixdim_zero_no_forms": {"sform_code": 0, "qform_code": 0, "pixdim": (1.0, 1.5, 0.0, 2.0, 1, 1, 1, 1)},
        "pixdim_zero_with_sform": {"pixdim": (1.0, 1.5, 1.5, 0.0, 1.0, 1.0, 1.0, 1.0)},
        "pixdim_nan": {"sform_code": 0, "pixdim": (1.0, nan, 1.5, 2.0, 1.0, 1.0, 1.0, 1.0)},
        "pixdim_inf": {"pixdim": (1.0, 1.5, inf, 2.0, 1.0, 1.0, 1.0, 1.0)},
        "pixdim_all_zero_no_forms": {"sform_code": 0, "qform_code": 0, "pixdim": (0.0,) * 8},
    }

    def maker(name: str, patch: dict[str, Any]) -> Callable[[Path], Path]:
        def make(folder: Path) -> Path:
            gz = bool(patch.get("gz"))
            fields = {k: v for k, v in patch.items() if k != "gz"}
            return write_nifti(folder / f"{name}.nii{'.gz' if gz else ''}", gz=gz, **fields)

        return make

    made = {name: maker(name, patch) for name, patch in cases.items()}
    made["empty_file"] = lambda d: _write(d / "empty.nii.gz", b"")
    made["header_only"] = lambda d: _write(d / "header_only.nii", nifti_bytes()[:348])
    made["truncated_header"] = lambda d: _write(d / "short_header.nii", nifti_bytes()[:100])
    made["gzip_garbage_tail"] = lambda d: _write(
        d / "tail.nii.gz", gzip.compress(nifti_bytes(), mtime=0)[:-20] + b"\0" * 20
    )
    made["text_as_nifti"] = lambda d: _write(d / "text.nii", b"hello, I am not an image\n" * 20)
    made["gzip_bomb"] = lambda d: _write(d / "bomb.nii.gz", _gzip_zeros(nifti_bytes(dim=dims(2048, 2048, 256))))
    made["complex_voxels"] = lambda d: _nib_save(d / "complex.nii.gz", np.ones(SHAPE, np.complex64))
    made["rgb_voxels"] = lambda d: _nib_save(
        d / "rgb.nii.gz", np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    )
    made["bool_voxels"] = lambda d: _nib_save(d / "bool.nii.gz", np.ones(SHAPE, np.uint8), code=1)
    made["fifo"] = _fifo
    made["nifti2_huge"] = lambda d: _nifti2_huge(d / "huge2.nii")
    return made


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _gzip_zeros(header: bytes) -> bytes:
    """A gzip member that inflates to ``header`` followed by 256 MB of zeros (a few MB compressed)."""
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [stream.compress(header)]
    block = bytes(1 << 24)
    parts.extend(stream.compress(block) for _ in range(16))
    parts.append(stream.flush())
    return b"".join(parts)


def _nib_save(path: Path, data: np.ndarray, dtype: Any = None, code: int | None = None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4))
    raw = bytearray(img.to_bytes())
    if code is not None:
        struct.pack_into("<h", raw, 70, code)
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))
    return path


def _fifo(folder: Path) -> Path:
    import os

    path = folder / "pipe.nii.gz"
    os.mkfifo(path)
    return path


def _nifti2_huge(path: Path) -> Path:
    img = nib.Nifti2Image(np.zeros(SHAPE, np.float32), np.eye(4))
    raw = bytearray(img.to_bytes())
    struct.pack_into("<8q", raw, 16, 3, 2**40, 2**40, 2**40, 1, 1, 1, 1)  # NIfTI-2 dims are int64
    path.write_bytes(bytes(raw))
    return path


# -- pictures ------------------------------------------------------------------------------


def png_header(width: int, height: int, *, depth: int = 8, colour: int = 0, body: bytes = b"") -> bytes:
    """A PNG signature, IHDR for ``width`` x ``height`` and an IDAT of ``body`` (no pixels needed to lie)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def picture_cases() -> dict[str, Callable[[Path], Path]]:
    from PIL import Image

    def pil(name: str, image: Any, fmt: str = "PNG") -> Callable[[Path], Path]:
        def make(folder: Path) -> Path:
            buffer = io.BytesIO()
            image.save(buffer, format=fmt)
            return _write(folder / name, buffer.getvalue())

        return make

    good = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(good, format="PNG")
    return {
        "png_bomb_15000": lambda d: _write(d / "bomb.png", png_header(15000, 15000)),
        "png_bomb_wide": lambda d: _write(d / "wide.png", png_header(2**31 - 1, 1)),
        "png_bomb_16bit_rgb": lambda d: _write(d / "deep.png", png_header(12000, 12000, depth=16, colour=2)),
        "png_1x1": pil("one.png", Image.fromarray(np.zeros((1, 1), np.uint8))),
        "png_1x64": pil("line.png", Image.fromarray(np.zeros((1, 64), np.uint8))),
        "png_zero_width": lambda d: _write(d / "zero.png", png_header(0, 16)),
        "png_truncated": lambda d: _write(d / "cut.png", good.getvalue()[:40]),
        "png_empty": lambda d: _write(d / "empty.png", b""),
        "png_text": lambda d: _write(d / "text.png", b"not a picture at all\n"),
        "png_bad_crc": lambda d: _write(d / "crc.png", good.getvalue()[:29] + b"\0\0\0\0" + good.getvalue()[33:]),
        "png_is_gif": pil("gif.png", Image.fromarray(np.zeros((1, 1), np.uint8)), "GIF"),
        "jpg_truncated": lambda d: _write(d / "cut.jpg", _jpeg()[:60]),
        "jpg_1x1": pil("one.jpg", Image.fromarray(np.zeros((1, 1, 3), np.uint8)), "JPEG"),
        "png_garbage_idat": lambda d: _write(d / "idat.png", png_header(16, 16, body=b"")[:-12] + b"\0" * 12),
    }


def _jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(256).reshape(16, 16) % 255).astype(np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


# -- NRRD and MetaImage --------------------------------------------------------------------


def nrrd(header: str, data: bytes | None = None) -> bytes:
    if data is None:
        data = np.zeros(SHAPE, np.float32).tobytes()
    return ("NRRD0004\n" + header + "\n\n").encode() + data


NRRD_BASE = "type: float\ndimension: 3\nsizes: 8 8 8\nendian: little\nspace: left-posterior-superior\n"
DIRECTIONS = "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: raw"


def mha(header: str, data: bytes | None = None) -> bytes:
    if data is None:
        data = np.zeros(SHAPE, np.float32).tobytes()
    return (header + "\nElementDataFile = LOCAL\n").encode() + data


DETACHED = "DimSize = 8 8 8\nElementType = MET_FLOAT\nElementDataFile = gone.raw\n"
MHA_BASE = "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"


def itk_cases() -> dict[str, Callable[[Path], Path]]:
    zeros = np.zeros(SHAPE, np.float32).tobytes()
    cases: dict[str, tuple[str, bytes]] = {
        "nrrd_sizes_huge": ("x.nrrd", nrrd(NRRD_BASE.replace("8 8 8", "100000 100000 100000") + DIRECTIONS)),
        "nrrd_sizes_negative": ("x.nrrd", nrrd(NRRD_BASE.replace("8 8 8", "-8 8 8") + DIRECTIONS)),
        "nrrd_truncated_data": ("x.nrrd", nrrd(NRRD_BASE + DIRECTIONS, zeros[:100])),
        "nrrd_zero_spacing": ("x.nrrd", nrrd(NRRD_BASE + DIRECTIONS.replace("(1,0,0)", "(0,0,0)"))),
        "nrrd_nan_direction": ("x.nrrd", nrrd(NRRD_BASE + DIRECTIONS.replace("(1,0,0)", "(nan,0,0)"))),
        "nrrd_unknown_type": ("x.nrrd", nrrd(NRRD_BASE.replace("float", "quaternion") + DIRECTIONS)),
        "nrrd_bad_encoding": ("x.nrrd", nrrd(NRRD_BASE + DIRECTIONS.replace("raw", "bzip9"))),
        "nrrd_gzip_garbage": ("x.nrrd", nrrd(NRRD_BASE + DIRECTIONS.replace("raw", "gzip"), b"\x1f\x8bgarbage")),
        "nrrd_no_magic": ("x.nrrd", b"hello\n\n" + zeros),
        "nrrd_dimension_9": ("x.nrrd", nrrd(NRRD_BASE.replace("dimension: 3", "dimension: 9") + DIRECTIONS)),
        "nrrd_detached_missing": ("x.nhdr", nrrd(NRRD_BASE + DIRECTIONS + "\ndata file: missing.raw", b"")),
        "mha_dims_huge": ("x.mha", mha(MHA_BASE + "DimSize = 100000 100000 100000\nElementType = MET_FLOAT")),
        "mha_truncated": ("x.mha", mha(MHA_BASE + "DimSize = 8 8 8\nElementType = MET_FLOAT", zeros[:64])),
        "mha_zero_spacing": (
            "x.mha",
            mha(MHA_BASE + "DimSize = 8 8 8\nElementSpacing = 0 1 1\nElementType = MET_FLOAT"),
        ),
        "mha_nan_spacing": (
            "x.mha",
            mha(MHA_BASE + "DimSize = 8 8 8\nElementSpacing = nan 1 1\nElementType = MET_FLOAT"),
        ),
        "mha_singular_direction": (
            "x.mha",
            mha(MHA_BASE + "DimSize = 8 8 8\nTransformMatrix = 1 0 0 1 0 0 0 0 1\nElementType = MET_FLOAT"),
        ),
        "mha_unknown_type": ("x.mha", mha(MHA_BASE + "DimSize = 8 8 8\nElementType = MET_QUATERNION")),
        "mha_ndims_zero": (
            "x.mha",
            mha(MHA_BASE.replace("NDims = 3", "NDims = 0") + "DimSize = 8\nElementType = MET_FLOAT"),
        ),
        "mha_detached_missing": (
            "x.mhd",
            (MHA_BASE + "DimSize = 8 8 8\nElementType = MET_FLOAT\nElementDataFile = gone.raw\n").encode(),
        ),
        "mha_text": ("x.mha", b"\x00\x01\x02 binary junk" * 10),
        "mha_complex": (
            "x.mha",
            mha(
                MHA_BASE + "DimSize = 8 8 8\nElementNumberOfChannels = 2\nElementType = MET_FLOAT",
                np.zeros((*SHAPE, 2), np.float32).tobytes(),
            ),
        ),
    }

    def maker(name: str, data: bytes) -> Callable[[Path], Path]:
        return lambda folder: _write(folder / name, data)

    return {key: maker(name, data) for key, (name, data) in cases.items()}


# -- DICOM ---------------------------------------------------------------------------------


def dicom_cases(write_series: Callable[..., Path]) -> dict[str, Callable[[Path], Path]]:
    """Series with gaps, uneven spacing, mixed geometry; ``write_series`` is volume_phantoms.write_dicom_series."""
    data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 50).astype(np.float32)

    def series(folder: Path) -> Path:
        return write_series(folder, data, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))

    def missing_slice(d: Path) -> Path:
        s = series(d / "missing")
        (s / "slice003.dcm").unlink()
        return s

    def uneven(d: Path) -> Path:
        import SimpleITK as sitk  # noqa: N813

        s = series(d / "uneven")
        for name in ("slice004.dcm",):  # move one slice 0.7 mm along the normal
            image = sitk.ReadImage(str(s / name))
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(s / name))
            reader.LoadPrivateTagsOn()
            reader.ReadImageInformation()
            for key in reader.GetMetaDataKeys():
                image.SetMetaData(key, reader.GetMetaData(key))
            image.SetMetaData("0020|0032", "0\\0\\8.7")
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(s / name))
            saved = locale.setlocale(locale.LC_ALL)
            try:
                writer.Execute(image)
            finally:
                locale.setlocale(locale.LC_ALL, saved)  # GDCM's writer sets the C locale
        return s

    def truncated(d: Path) -> Path:
        s = series(d / "truncated")
        raw = (s / "slice002.dcm").read_bytes()
        (s / "slice002.dcm").write_bytes(raw[: len(raw) // 2])
        return s

    def two_series(d: Path) -> Path:
        a = series(d / "two")
        b = write_series(d / "other", data, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
        for f in b.iterdir():
            raw = f.read_bytes().replace(b"1.2.826.0.1.3680043.2.1125.1.99.2", b"1.2.826.0.1.3680043.2.1125.1.77.2")
            (a / f"b_{f.name}").write_bytes(raw)
        shutil.rmtree(b)
        return a

    def not_dicom(d: Path) -> Path:
        folder = d / "notdicom"
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
        return folder

    def duplicate_position(d: Path) -> Path:
        s = series(d / "duplicate")
        raw = (s / "slice001.dcm").read_bytes()
        (s / "slice001b.dcm").write_bytes(raw.replace(b".3.1", b".3.9", 1))
        return s

    def empty_folder(d: Path) -> Path:
        folder = d / "emptydir"
        folder.mkdir()
        return folder

    return {
        "dicom_missing_slice": missing_slice,
        "dicom_uneven_spacing": uneven,
        "dicom_truncated_slice": truncated,
        "dicom_two_series": two_series,
        "dicom_not_dicom": not_dicom,
        "dicom_duplicate_position": duplicate_position,
        "dicom_empty_folder": empty_folder,
    }


# -- checkpoints ---------------------------------------------------------------------------


def checkpoint_cases(good: Path) -> dict[str, Callable[[Path], Path]]:
    """Checkpoints whose metadata or weights lie, and files that are no checkpoint at all."""
    payload = torch.load(good, map_location="cpu", weights_only=True)
    meta = json.loads(payload["metadata"])

    def save(name: str, changed: dict[str, Any]) -> Callable[[Path], Path]:
        def make(folder: Path) -> Path:
            path = folder / f"{name}.pt"
            torch.save({**payload, **changed}, path)
            return path

        return make

    def with_meta(name: str, **edits: Any) -> Callable[[Path], Path]:
        edited = json.loads(json.dumps(meta))
        for key, value in edits.items():
            section, _, field = key.partition("__")
            if field:
                edited[section][field] = value
            elif value is _DROP:
                edited.pop(section)
            else:
                edited[section] = value
        return save(name, {"metadata": json.dumps(edited)})

    cases = {
        "ckpt_meta_not_json": save("not_json", {"metadata": "{not json"}),
        "ckpt_meta_not_string": save("not_string", {"metadata": 5}),
        "ckpt_meta_list": save("meta_list", {"metadata": "[1, 2]"}),
        "ckpt_no_state_dict": _drop("no_state", payload, "state_dict"),
        "ckpt_no_metadata": _drop("no_meta", payload, "metadata"),
        "ckpt_state_not_dict": save("state_list", {"state_dict": [torch.zeros(1)]}),
        "ckpt_state_empty": save("state_empty", {"state_dict": {}}),
        "ckpt_format_version_9": save("version9", {"format_version": 9}),
        "ckpt_other_format": save("other_format", {"format": "something-else"}),
        "ckpt_missing_architecture": with_meta("no_arch", architecture=_DROP),
        "ckpt_missing_labels": with_meta("no_labels", labels=_DROP),
        "ckpt_missing_arguments": with_meta("no_args", arguments=_DROP),
        "ckpt_label_not_integer": with_meta("label_text", labels__tumor="two"),
        "ckpt_label_float": with_meta("label_float", labels__tumor=2.5),
        "ckpt_label_bool": with_meta("label_bool", labels__tumor=True),
        "ckpt_label_negative": with_meta("label_negative", labels__tumor=-3),
        "ckpt_labels_list": with_meta("labels_list", labels=["a", "b"]),
        "ckpt_in_channels_absurd": with_meta("channels", in_channels=10**9, arguments__in_channels=10**9),
        "ckpt_out_channels_absurd": with_meta("out_channels", arguments__out_channels=10**8),
        "ckpt_channels_text": with_meta("channels_text", in_channels="one"),
        "ckpt_spatial_dims_7": with_meta("dims7", spatial_dims=7),
        "ckpt_task_unknown": with_meta("task", task="regression"),
        "ckpt_architecture_unknown": with_meta("arch", architecture="os.system"),
        "ckpt_arguments_not_dict": with_meta("args_list", arguments=[1, 2]),
        "ckpt_orientation_bad": with_meta("orient", preprocessing__orientation="XYZ"),
        "ckpt_orientation_repeated": with_meta("orient2", preprocessing__orientation="RRS"),
        "ckpt_spacing_zero": with_meta("spacing0", preprocessing__spacing=[0, 1, 1]),
        "ckpt_spacing_text": with_meta("spacing_text", preprocessing__spacing="fine"),
        "ckpt_patch_negative": with_meta("patch", patch_size=[-8, 8, 8]),
        "ckpt_patch_text": with_meta("patch_text", patch_size="big"),
        "ckpt_unknown_key": with_meta("unknown_key", surprise=1),
        "ckpt_preprocessing_list": with_meta("pre_list", preprocessing=[1]),
        "ckpt_regions_bad": with_meta("regions", regions={"masses": "two"}),
        "ckpt_activation_unknown": with_meta("activation", activation="tanh"),
        "ckpt_torch_list": lambda d: _torch_save(d / "list.pt", [1, 2, 3]),
        "ckpt_pickled_object": lambda d: _pickled(d / "pickled.pt"),
        "ckpt_nifti_file": lambda d: _write(d / "case.nii.gz", gzip.compress(nifti_bytes(), mtime=0)),
        "ckpt_zip_bomb": lambda d: _zip_bomb(d / "bomb.pt"),
        "ckpt_random_zip": lambda d: _random_zip(d / "random.pt"),
        "ckpt_empty": lambda d: _write(d / "empty.pt", b""),
        "ckpt_truncated": lambda d: _write(d / "cut.pt", good.read_bytes()[: good.stat().st_size // 2]),
        "ckpt_text": lambda d: _write(d / "text.pt", b"weights: none\n"),
        "ckpt_folder": lambda d: _folder(d / "model_dir"),
    }
    return cases


_DROP = object()


def _drop(name: str, payload: dict[str, Any], key: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / f"{name}.pt"
        torch.save({k: v for k, v in payload.items() if k != key}, path)
        return path

    return make


def _torch_save(path: Path, value: Any) -> Path:
    torch.save(value, path)
    return path


class _Payload:
    """Any object pickled into a file makes it unsafe to load."""


def _pickled(path: Path) -> Path:
    torch.save({"format": "medcam-checkpoint", "object": _Payload()}, path)
    return path


def _zip_bomb(path: Path) -> Path:
    """A zip whose one entry inflates to 512 MB (about 0.5 MB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("archive/data.pkl")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as entry:
            block = bytes(1 << 24)
            for _ in range(32):
                entry.write(block)
    return path


def _random_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("notes/readme.txt", "hello")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    (path / "weights.txt").write_text("nothing")
    return path
