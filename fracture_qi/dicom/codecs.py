"""Pixel data decoding with an explicit, measured choice of decoder per transfer syntax.

pydicom picks the first installed plugin it knows of, which is not always the fastest
(FIELD-NOTES: JPEG-LS is 3.4x slower through the default plugin, RLE 3x). Here every
transfer syntax maps to an *ordered* list of pydicom decoding plugins, fastest first, as
measured by ``benchmarks/decode_speed.py`` (figures in ``benchmarks/README.md``). The first
one installed is used; when none is, :class:`~fracture_qi.errors.CodecUnavailableError`
names the transfer syntax and the package to install, rather than crashing mid-batch.

Uncompressed little- and big-endian pixel data never go through a plugin: they are read
with :func:`numpy.frombuffer` straight from the Pixel Data bytes (3.5x faster than
``Dataset.pixel_array`` on 400 slices). Deflated datasets are inflated by pydicom when the
file is read, so their pixel data are uncompressed by the time they reach this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import CodecUnavailableError, DicomError

logger = logging.getLogger(__name__)

# Transfer syntax UIDs written out: pydicom's names for them vary between releases.
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: transfer syntaxes whose Pixel Data are plain little/big-endian sample arrays
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})


@dataclass(frozen=True)
class Codec:
    """How one compressed transfer syntax is decoded here.

    Attributes
    ----------
    name
        Short human name (``"JPEG 2000 lossless"``).
    plugins
        pydicom decoding plugin names, fastest first.
    install
        What to ``pip install`` to get the first plugin, for error messages.
    """

    name: str
    plugins: tuple[str, ...]
    install: str


# Orders come from benchmarks/decode_speed.py on a 400-slice 512x512 series (one core);
# see benchmarks/README.md "## Decoding". pylibjpeg-libjpeg is deliberately not listed
# first anywhere: it is GPL-3.0 and this suite is Apache-2.0, so python-gdcm (BSD) is the
# JPEG-lossless decoder we ship; a site that installs pylibjpeg-libjpeg still gets it as
# a fallback.
CODECS: dict[str, Codec] = {
    JPEG_2000_LOSSLESS: Codec("JPEG 2000 lossless", ("gdcm", "pylibjpeg", "pillow"),
                              "python-gdcm (or pylibjpeg-openjpeg)"),
    JPEG_2000: Codec("JPEG 2000", ("gdcm", "pylibjpeg", "pillow"),
                     "python-gdcm (or pylibjpeg-openjpeg)"),
    HTJ2K_LOSSLESS: Codec("HTJ2K lossless", ("pylibjpeg",), "pylibjpeg pylibjpeg-openjpeg>=2.0"),
    HTJ2K_LOSSLESS_RPCL: Codec("HTJ2K lossless RPCL", ("pylibjpeg",),
                               "pylibjpeg pylibjpeg-openjpeg>=2.0"),
    HTJ2K: Codec("HTJ2K", ("pylibjpeg",), "pylibjpeg pylibjpeg-openjpeg>=2.0"),
    JPEG_LS_LOSSLESS: Codec("JPEG-LS lossless", ("pyjpegls", "gdcm", "pylibjpeg"), "pyjpegls"),
    JPEG_LS_NEAR_LOSSLESS: Codec("JPEG-LS near-lossless", ("pyjpegls", "gdcm", "pylibjpeg"),
                                 "pyjpegls"),
    JPEG_LOSSLESS_SV1: Codec("JPEG lossless SV1", ("gdcm", "pylibjpeg"), "python-gdcm"),
    JPEG_LOSSLESS_P14: Codec("JPEG lossless", ("gdcm", "pylibjpeg"), "python-gdcm"),
    JPEG_BASELINE: Codec("JPEG baseline", ("gdcm", "pylibjpeg", "pillow"), "python-gdcm"),
    JPEG_EXTENDED: Codec("JPEG extended", ("gdcm", "pylibjpeg", "pillow"), "python-gdcm"),
    RLE_LOSSLESS: Codec("RLE lossless", ("pylibjpeg", "gdcm", "pydicom"), "pylibjpeg-rle"),
}


def syntax_name(uid: str) -> str:
    """A short readable name for a transfer syntax UID (the UID itself if unknown).

    Examples
    --------
    >>> syntax_name("1.2.840.10008.1.2.4.90")
    'JPEG 2000 lossless'
    >>> syntax_name("1.2.840.10008.1.2.1")
    'Explicit VR Little Endian'
    """
    if uid in CODECS:
        return CODECS[uid].name
    name = UID(uid).name
    return name or uid


@lru_cache(maxsize=64)
def choose_plugin(transfer_syntax: str) -> str:
    """Return the decoding plugin used for *transfer_syntax*: ``"numpy"`` for native data.

    Parameters
    ----------
    transfer_syntax
        Transfer Syntax UID.

    Returns
    -------
    str
        ``"numpy"`` for uncompressed syntaxes, else the pydicom plugin name.

    Raises
    ------
    CodecUnavailableError
        When no decoder for the syntax is installed (reason ``CODEC_UNAVAILABLE``); the
        message names the syntax and the package to install.

    Examples
    --------
    >>> choose_plugin("1.2.840.10008.1.2.1")
    'numpy'
    """
    if transfer_syntax in NATIVE_SYNTAXES:
        return "numpy"
    from pydicom.pixels import get_decoder

    codec = CODECS.get(transfer_syntax)
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as e:
        raise CodecUnavailableError(
            ReasonCode.CODEC_UNAVAILABLE,
            None,
            f"transfer syntax {syntax_name(transfer_syntax)} ({transfer_syntax}) has no "
            "pixel data decoder in pydicom. Fix: ask the PACS to send an uncompressed or "
            "lossless JPEG 2000 / JPEG-LS / RLE transfer syntax",
        ) from e
    available = set(decoder.available_plugins)
    order = codec.plugins if codec else tuple(sorted(available))
    for plugin in order:
        if plugin in available:
            return plugin
    # pydicom may know a plugin the table does not list (a newer pydicom): use it, but say so
    if available:
        plugin = min(available)
        logger.info("decoding %s with unlisted plugin %s", syntax_name(transfer_syntax), plugin)
        return plugin
    install = codec.install if codec else "python-gdcm"
    raise CodecUnavailableError(
        ReasonCode.CODEC_UNAVAILABLE,
        None,
        f"no decoder installed for transfer syntax {syntax_name(transfer_syntax)} "
        f"({transfer_syntax}). Fix: pip install {install}",
    )


def native_dtype(ds: Dataset, big_endian: bool = False) -> np.dtype:
    """The numpy dtype of uncompressed samples described by BitsAllocated/PixelRepresentation.

    Raises
    ------
    DicomError
        ``DECODE_FAILED`` for bit depths a CT slice never has (1-bit, 32-bit float...).
    """
    from fracture_qi.dicom.fastread import quick_get as q

    bits = int(q(ds, "BitsAllocated", 16) or 16)
    signed = int(q(ds, "PixelRepresentation", 0) or 0) == 1
    if bits not in (8, 16, 32):
        raise DicomError(
            ReasonCode.DECODE_FAILED,
            None,
            f"BitsAllocated {bits} is not a CT sample size (8, 16 or 32). Fix: export the "
            "series as 16-bit CT",
        )
    kind = "i" if signed else "u"
    order = ">" if big_endian else "<"
    return np.dtype(f"{order}{kind}{bits // 8}")


def fix_bits_stored(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Mask unused high bits (unsigned) or sign-extend from BitsStored (signed), in place.

    Old scanners leave overlay bits above BitsStored; pydicom's ``pixel_array`` applies the
    same rule, so this keeps the fast path equal to it.

    Examples
    --------
    >>> fix_bits_stored(np.array([0xF000 | 5], dtype=np.uint16), 12, False).tolist()
    [5]
    >>> fix_bits_stored(np.array([0x0FFF], dtype=np.int16), 12, True).tolist()
    [-1]
    """
    bits_allocated = arr.dtype.itemsize * 8
    if bits_stored <= 0 or bits_stored >= bits_allocated:
        return arr
    if signed:
        shift = bits_allocated - bits_stored
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)  # arithmetic shift on signed types
    else:
        np.bitwise_and(arr, (1 << bits_stored) - 1, out=arr)
    return arr


def decode_frames(ds: Dataset, transfer_syntax: str, n_frames: int) -> tuple[np.ndarray, str]:
    """Decode every frame of *ds* into a ``(frames, rows, columns)`` array of stored values.

    Values are the stored pixel values (BitsStored applied, no rescale). For native data
    the array may be a read-only view of the Pixel Data bytes.

    Parameters
    ----------
    ds
        The dataset, with Pixel Data.
    transfer_syntax
        Its transfer syntax UID (from the file meta, or inferred for files without one).
    n_frames
        NumberOfFrames (1 for single-frame images).

    Returns
    -------
    (numpy.ndarray, str)
        The frames and the decoder used (``"numpy"`` or a pydicom plugin name).

    Raises
    ------
    CodecUnavailableError
        No decoder installed for the syntax.
    DicomError
        ``PIXEL_DATA_LENGTH`` when native Pixel Data are shorter than Rows x Columns x
        frames; ``DECODE_FAILED`` when a decoder fails on the data.
    """
    from fracture_qi.dicom.fastread import quick_get as q

    rows, cols = int(q(ds, "Rows")), int(q(ds, "Columns"))
    plugin = choose_plugin(transfer_syntax)
    signed = int(q(ds, "PixelRepresentation", 0) or 0) == 1
    bits_stored = int(q(ds, "BitsStored", 0) or 0)
    if plugin == "numpy":
        dtype = native_dtype(ds, big_endian=transfer_syntax == EXPLICIT_BE)
        raw = q(ds, "PixelData", b"")
        need = rows * cols * n_frames * dtype.itemsize
        if len(raw) < need:
            raise DicomError(
                ReasonCode.PIXEL_DATA_LENGTH,
                None,
                f"Pixel Data hold {len(raw)} bytes but Rows {rows} x Columns {cols} x "
                f"{n_frames} frame(s) x {dtype.itemsize} bytes need {need}. Fix: re-export "
                "the file from the PACS (it was cut short or its header is wrong)",
            )
        arr = np.frombuffer(raw, dtype=dtype, count=rows * cols * n_frames)
        arr = arr.reshape(n_frames, rows, cols)
        if dtype.byteorder == ">":
            arr = arr.astype(dtype.newbyteorder("="))
        if bits_stored and bits_stored < dtype.itemsize * 8:
            arr = fix_bits_stored(np.array(arr), bits_stored, signed)
        return arr, plugin

    from pydicom.pixels import get_decoder

    decoder = get_decoder(transfer_syntax)
    frames = []
    try:
        for f in range(n_frames):
            a, _ = decoder.as_array(
                ds, index=f if n_frames > 1 else None, decoding_plugin=plugin,
                as_rgb=False,  # type: ignore[arg-type]  # a DecodeOptions key
            )
            frames.append(a.reshape(rows, cols))
    except CodecUnavailableError:
        raise
    except Exception as e:  # decoders raise RuntimeError, ValueError, their own types...
        raise DicomError(
            ReasonCode.DECODE_FAILED,
            None,
            f"{plugin} failed to decode {syntax_name(transfer_syntax)} pixel data: {e}. "
            "Fix: check the file decodes in another viewer; re-export it from the PACS",
        ) from e
    return np.stack(frames), plugin
