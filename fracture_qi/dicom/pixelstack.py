"""The pixels of one series: every frame decoded and rescaled into one int16 HU stack.

:func:`decode_stack` is the pixel half of :func:`fracture_qi.dicom.volume.load_series`, which
has already read, checked and ordered the slices. Where the frames are decoded is chosen by
:mod:`fracture_qi.dicom.accel`'s settings (:func:`fracture_qi.dicom.accel.current`):

1. **the GPU** (nvImageCodec), for JPEG 2000 and HTJ2K single-frame slices, when the run's
   decoder is ``gpu`` (``auto`` is resolved to ``gpu`` or ``cpu`` once per run); any frame
   it cannot decode sends the whole series to the CPU, with the reason logged;
2. **several CPU processes** (forked helpers) for compressed single-frame slices when the
   series was given more than one process and has at least
   :data:`~fracture_qi.dicom.accel.PARALLEL_MIN_FRAMES` frames;
3. otherwise this process, frame by frame (uncompressed data are a ``numpy`` view anyway).

All three give the same stack: the GPU path is checked against OpenJPEG before it is used
(:func:`fracture_qi.dicom.accel.check_identical`) and by the ``gpu`` tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fracture_qi.dicom import accel, codecs
from fracture_qi.dicom.fastread import quick_get
from fracture_qi.errors import DicomError

log = logging.getLogger(__name__)


class FrameSource(Protocol):
    """What :func:`decode_stack` needs of a slice (``volume.load_series``'s slices)."""

    ds: Any
    frame: int
    n_frames: int
    path: str
    slope: float
    intercept: float
    transfer_syntax: str


def to_hu(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray,
          bits_stored: int = 0) -> None:
    """Write stored values x slope + intercept into *out* (int16), clipped, without floats
    when the rescale is integral (the usual CT case: slope 1, intercept -1024).

    Examples
    --------
    >>> out = np.empty(3, dtype=np.int16)
    >>> to_hu(np.array([0, 1024, 4095], dtype=np.uint16), 1.0, -1024.0, out, 12)
    >>> out.tolist()
    [-1024, 0, 3071]
    """
    if slope == 1.0 and intercept == int(intercept) and stored.dtype.itemsize == 2:
        # BitsStored bounds the values: when value + intercept cannot leave int16, two
        # in-place int16 passes replace the int32 round trip (3x quicker)
        bits = bits_stored or 16
        signed = stored.dtype.kind == "i"
        lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed
                  else (0, (1 << bits) - 1))
        ic = int(intercept)
        if lo + ic >= -32768 and hi + ic <= 32767 and (signed or hi <= 32767):
            out[...] = stored
            out += np.int16(ic)
            return
    if slope == 1.0 and intercept == int(intercept):
        tmp = stored.astype(np.int32)
        tmp += int(intercept)
    else:
        tmp = np.rint(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    np.clip(tmp, -32768, 32767, out=tmp)
    out[...] = tmp


def _bits(s: FrameSource) -> int:
    return int(quick_get(s.ds, "BitsStored", 0) or 0)


def _located(e: DicomError, s: FrameSource) -> DicomError:
    e.path = e.path or s.path
    e.args = (f"{s.path}: [{e.reason}] {e.detail}",)
    return e


def _decode_one(s: FrameSource, out: np.ndarray) -> str:
    """Decode a single-frame slice into *out* (int16 HU); return the decoder used."""
    try:
        frames, plugin = codecs.decode_frames(s.ds, s.transfer_syntax, 1)
    except DicomError as e:
        raise _located(e, s) from None
    to_hu(frames[0], s.slope, s.intercept, out, _bits(s))
    return plugin


def _on_cpu(slices: Sequence[FrameSource], stack: np.ndarray) -> set[str]:
    decoders: set[str] = set()
    cache: dict[int, np.ndarray] = {}  # id(ds) -> decoded frames, for multi-frame files
    for k, s in enumerate(slices):
        if s.n_frames == 1:
            decoders.add(_decode_one(s, stack[k]))
            continue
        key = id(s.ds)
        try:
            if key not in cache:
                cache[key], plugin = codecs.decode_frames(s.ds, s.transfer_syntax, s.n_frames)
            else:
                plugin = codecs.choose_plugin(s.transfer_syntax)
        except DicomError as e:
            raise _located(e, s) from None
        decoders.add(plugin)
        to_hu(cache[key][s.frame], s.slope, s.intercept, stack[k], _bits(s))
    return decoders


def _in_helpers(slices: Sequence[FrameSource], rows: int, cols: int,
                processes: int) -> tuple[np.ndarray, set[str], int]:
    stack = accel.shared_empty((len(slices), rows, cols), np.int16)

    def work(k: int) -> None:
        _decode_one(slices[k], stack[k])

    used = accel.run_in_helpers(len(slices), work, processes)
    return stack, {codecs.choose_plugin(ts) for ts in {s.transfer_syntax for s in slices}}, used


def _on_gpu(slices: Sequence[FrameSource], rows: int, cols: int,
            settings: accel.DecodeSettings) -> tuple[np.ndarray, set[str], int] | None:
    """The stack decoded by nvImageCodec, or ``None`` (logged) where the CPU must do it."""
    first = slices[0].ds
    signed = int(quick_get(first, "PixelRepresentation", 0) or 0) == 1
    if settings.decoder == "auto" and not accel.gpu_status(settings.gpu_device).available:
        return None  # auto: the CPU, quietly (the reason is logged once per run)
    try:
        decoder = accel.gpu_decoder(settings.gpu_device)
        if signed and not decoder.signed_ok:
            raise accel.GpuDecodeError("nvImageCodec does not decode signed JPEG 2000 here")
        dtype = codecs.native_dtype(first)
        streams = [accel.encoded_frames(s.ds, 1)[0] for s in slices]
        stored = decoder.decode(streams, rows, cols, dtype)
    except accel.GpuDecodeError as e:
        log.warning("%s: decoded on the CPU: %s", _where(slices), e)
        return None
    stack = np.empty((len(slices), rows, cols), dtype=np.int16)
    for k, s in enumerate(slices):
        bits = _bits(s)
        img = stored[k]
        if bits and bits < dtype.itemsize * 8:
            img = codecs.fix_bits_stored(img, bits, signed)
        to_hu(img, s.slope, s.intercept, stack[k], bits)
    return stack, {accel.GPU_DECODER_NAME}, 1


def _where(slices: Sequence[FrameSource]) -> str:
    import os

    return os.path.dirname(slices[0].path) or slices[0].path


def decode_stack(slices: Sequence[FrameSource], rows: int,
                 cols: int) -> tuple[np.ndarray, set[str], int]:
    """Decode and rescale every slice into a ``(len(slices), rows, cols)`` int16 HU stack.

    Parameters
    ----------
    slices
        The series' slices in stack order (one per frame of a multi-frame file).
    rows, cols
        The frame size (checked equal for all slices by the caller).

    Returns
    -------
    (numpy.ndarray, set of str, int)
        The stack, the decoders used (``"numpy"``, a pydicom plugin, ``"nvimgcodec"``) and
        the CPU processes that decoded it (1 unless forked helpers did).

    Raises
    ------
    CodecUnavailableError
        No decoder installed for a slice's transfer syntax.
    DicomError
        ``PIXEL_DATA_LENGTH`` or ``DECODE_FAILED``, with the file in the message.
    """
    settings = accel.current()
    single = all(s.n_frames == 1 for s in slices)
    syntaxes = {s.transfer_syntax for s in slices}
    if settings.decoder != "cpu" and single and syntaxes <= accel.GPU_SYNTAXES:
        got = _on_gpu(slices, rows, cols, settings)
        if got is not None:
            return got
    compressed = not syntaxes <= codecs.NATIVE_SYNTAXES
    if (settings.processes > 1 and single and compressed
            and len(slices) >= accel.PARALLEL_MIN_FRAMES):
        return _in_helpers(slices, rows, cols, settings.processes)
    stack = np.empty((len(slices), rows, cols), dtype=np.int16)
    return stack, _on_cpu(slices, stack), 1


__all__ = ["FrameSource", "decode_stack", "to_hu"]
