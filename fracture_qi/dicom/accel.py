"""Where pixel data are decoded: on the GPU (NVIDIA nvImageCodec) or on several CPU cores.

JPEG 2000 decoding is most of the cost of screening an archive (about 40 ms a slice on one
core: ``benchmarks/README.md``). Two ways past it, both chosen here and used by
:func:`fracture_qi.dicom.volume.load_series`:

* **The GPU.** JPEG 2000 and HTJ2K frames are decoded in batches by NVIDIA's nvImageCodec
  (``pip install 'fracture-qi[gpu]'``: the ``nvidia-nvimgcodec-cu12`` wheel and its
  nvJPEG2000 library). The choice is explicit: ``decoder: auto | cpu | gpu`` in the
  manifest's ``screening:`` section, ``--decoder`` on the command line, or the
  ``FRACTURE_QI_DECODER`` environment variable. ``auto`` uses the GPU when nvImageCodec can
  decode a check image *identically* to OpenJPEG (the CPU decoder) on this machine, else the
  CPU; ``gpu`` asks for the GPU and falls back to the CPU with a warning that says why. A
  series the GPU cannot decode is decoded on the CPU, with the reason logged.
* **Every core for one series.** A decode worker given more than one process
  (:class:`DecodeSettings` ``processes``: the engine gives a series the cores that no other
  waiting series needs) decodes the frames of a compressed series in forked helper processes,
  each writing its frames straight into one shared array. The codecs hold the GIL while they
  decode (measured: a thread spinning beside a decode is stopped once per frame), so threads
  would not help; forked helpers share the already-read files and send nothing back.

Nothing here imports torch; nvImageCodec is imported only when the GPU is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import mmap
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fracture_qi.dicom import codecs
from fracture_qi.errors import ConfigError

log = logging.getLogger(__name__)

#: the decoder choices: ``auto`` (the GPU where it decodes identically, else the CPU)
DECODERS = ("auto", "cpu", "gpu")
#: environment variable read when no choice is given (manifest and command line win)
DECODER_ENV = "FRACTURE_QI_DECODER"
#: transfer syntaxes nvImageCodec decodes on the GPU (nvJPEG2000); all others go to the CPU
GPU_SYNTAXES = frozenset({
    codecs.JPEG_2000_LOSSLESS, codecs.JPEG_2000,
    codecs.HTJ2K_LOSSLESS, codecs.HTJ2K_LOSSLESS_RPCL, codecs.HTJ2K,
})
#: frames per nvImageCodec batch call: large enough to fill the GPU with 512 x 512 frames,
#: small enough that a batch's buffers (about 0.5 MB a frame, decoded) stay modest when
#: fifteen decode workers share one card
GPU_BATCH_FRAMES = 128
#: fewest frames worth forking helpers for: a fork (and its exit and reaping) took 12-22 ms
#: from a process holding 300 MB on the 2-core dev machine, a JPEG 2000 frame ~40 ms to decode
#: on one core (benchmarks/README.md, Decoding)
PARALLEL_MIN_FRAMES = 16
#: most helper processes one series is decoded with (the engine caps it at the cores)
MAX_DECODE_PROCESSES = 32
#: environment variable that lowers that cap (1: never fork decode helpers)
PROCESSES_ENV = "FRACTURE_QI_DECODE_PROCESSES"
#: the label ``meta["decoder"]`` carries for frames nvImageCodec decoded
GPU_DECODER_NAME = "nvimgcodec"


@dataclass(frozen=True)
class DecodeSettings:
    """How the decode of one series may run (sent with each job to a decode worker).

    Attributes
    ----------
    decoder
        ``"auto"``, ``"cpu"`` or ``"gpu"`` (see :func:`normalise_decoder`).
    processes
        CPU processes the series' compressed frames may be decoded with (1: this process).
    gpu_device
        The CUDA device nvImageCodec decodes on (an index among the visible devices).
    """

    decoder: str = "auto"
    processes: int = 1
    gpu_device: int = 0


_SETTINGS: ContextVar[DecodeSettings] = ContextVar("fqi_decode_settings",
                                                   default=DecodeSettings(decoder="cpu"))


def current() -> DecodeSettings:
    """The settings :func:`~fracture_qi.dicom.volume.load_series` decodes with here.

    Outside :func:`using` this is the CPU in this process alone: a library caller gets the
    GPU or helper processes only by asking for them.
    """
    return _SETTINGS.get()


@contextlib.contextmanager
def using(settings: DecodeSettings | None) -> Iterator[DecodeSettings]:
    """Decode with *settings* inside the ``with`` block (``None``: leave them as they are)."""
    if settings is None:
        yield current()
        return
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)


def normalise_decoder(value: str | None) -> str:
    """The decoder choice: *value*, else ``FRACTURE_QI_DECODER``, else ``"auto"``.

    Raises
    ------
    ConfigError
        For anything but ``auto``, ``cpu`` or ``gpu``.

    Examples
    --------
    >>> normalise_decoder("GPU")
    'gpu'
    """
    raw = value if value is not None else os.environ.get(DECODER_ENV, "") or "auto"
    choice = str(raw).strip().lower()
    if choice not in DECODERS:
        where = "decoder" if value is not None else DECODER_ENV
        raise ConfigError(f"{where} = {raw!r} is not a decoder choice. Fix: use auto (the GPU "
                          "where nvImageCodec decodes identically, else the CPU), cpu or gpu")
    return choice


# --------------------------------------------------------------------------------------------
# the GPU: nvImageCodec
# --------------------------------------------------------------------------------------------
class GpuDecodeError(RuntimeError):
    """Raised when nvImageCodec cannot decode a frame (the caller decodes on the CPU)."""


@dataclass(frozen=True)
class GpuStatus:
    """Whether the GPU decodes here, and why not when it does not."""

    available: bool
    reason: str


def _plain(text: str) -> str:
    """*text* without terminal colour codes, on one line."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _stderr_to(buffer: list[str]) -> Iterator[None]:
    """Collect what C libraries print (nvImageCodec reports a missing CUDA driver or
    nvJPEG2000 on file descriptors 1 and 2) so that it is logged as the reason, once,
    rather than sprayed over the terminal by every decode worker."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            _flush_c_stdio()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            buffer.extend(line.strip() for line in text.splitlines() if line.strip())


class NvImageCodecDecoder:
    """JPEG 2000 / HTJ2K frames to stored pixel values with nvImageCodec, in batches.

    Parameters
    ----------
    device
        ``"gpu"`` (the GPU backends only: a frame the GPU cannot decode is an error, never a
        silent CPU decode) or ``"cpu"`` (nvImageCodec's own CPU backend: used by the tests
        and benchmarks to run this exact code path on a machine without a GPU).
    gpu_device
        CUDA device index (``device="gpu"``).

    Raises
    ------
    GpuDecodeError
        When nvImageCodec is not installed or cannot start (no driver, no device).
    """

    def __init__(self, device: str = "gpu", gpu_device: int = 0) -> None:
        said: list[str] = []
        try:
            with _stderr_to(said):  # the import loads its extensions and reports on them
                nvimgcodec = importlib.import_module("nvidia.nvimgcodec")
        except ImportError as e:
            raise GpuDecodeError("nvImageCodec is not installed (pip install "
                                 "'fracture-qi[gpu]', or nvidia-nvimgcodec-cu12)") from e
        self._nv = nvimgcodec
        self.device = device
        try:
            with _stderr_to(said):
                if device == "cpu":
                    self._decoder = nvimgcodec.Decoder(
                        device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                        backends=[nvimgcodec.Backend(nvimgcodec.CPU_ONLY)])
                else:
                    self._decoder = nvimgcodec.Decoder(
                        device_id=int(gpu_device),
                        backends=[nvimgcodec.Backend(nvimgcodec.GPU_ONLY),
                                  nvimgcodec.Backend(nvimgcodec.HYBRID_CPU_GPU)])
        except Exception as e:  # RuntimeError("CUDA Runtime failure...") without a GPU
            # the driver's absence first: it explains the rest (no nvJPEG, no nvJPEG2000)
            loads = [x for x in said if "Failed to load" in x or "failed" in x]
            loads.sort(key=lambda x: not any(k in x for k in ("libcuda", "driver", "device")))
            detail = _plain("; ".join(loads))[:300]
            raise GpuDecodeError(f"nvImageCodec cannot start: {_plain(str(e))}"
                                 + (f" ({detail})" if detail else "")) from e
        self.startup_messages = said
        #: False once a signed check image failed to decode (signed series: the CPU)
        self.signed_ok = True
        self._params = nvimgcodec.DecodeParams(allow_any_depth=True,
                                               color_spec=nvimgcodec.ColorSpec.UNCHANGED)

    def decode(self, frames: Sequence[bytes], rows: int, cols: int,
               dtype: np.dtype) -> np.ndarray:
        """Decode codestreams into a ``(n, rows, cols)`` array of *dtype* (stored values).

        Raises
        ------
        GpuDecodeError
            When any frame does not decode, or decodes to another size or sample width.
        """
        out = np.empty((len(frames), rows, cols), dtype=dtype)
        for start in range(0, len(frames), GPU_BATCH_FRAMES):
            chunk = frames[start:start + GPU_BATCH_FRAMES]
            said: list[str] = []
            try:
                with _stderr_to(said):
                    streams = [self._nv.CodeStream(bytes(f)) for f in chunk]
                    images = self._decoder.decode(streams, params=self._params)
            except Exception as e:  # a codestream nvImageCodec cannot parse
                raise GpuDecodeError(f"nvImageCodec failed on frames {start}-"
                                     f"{start + len(chunk) - 1}: {e}") from e
            for i, img in enumerate(images):
                k = start + i
                if img is None:
                    why = _plain(" ".join(x for x in said if "decoding" in x))[:200]
                    raise GpuDecodeError(f"nvImageCodec could not decode frame {k}"
                                         + (f" ({why})" if why else ""))
                arr = np.asarray(img.cpu())  # host memory (a no-op for the CPU backend)
                if arr.ndim == 3 and arr.shape[-1] == 1:
                    arr = arr[..., 0]
                if arr.shape != (rows, cols):
                    raise GpuDecodeError(f"frame {k} decoded to {arr.shape}, not "
                                         f"({rows}, {cols})")
                if arr.dtype.itemsize != out.dtype.itemsize:
                    raise GpuDecodeError(f"frame {k} decoded to {arr.dtype} samples, not "
                                         f"{out.dtype}")
                # same width, maybe other signedness: the bits are the stored values
                out[k] = arr.view(out.dtype)
        return out


def encoded_frames(ds: Any, n_frames: int) -> list[bytes]:
    """The compressed codestream of each frame of an encapsulated dataset."""
    from pydicom.encaps import generate_frames

    from fracture_qi.dicom.fastread import quick_get

    return list(generate_frames(quick_get(ds, "PixelData"), number_of_frames=n_frames))


def _check_image(signed: bool) -> tuple[bytes, np.ndarray]:
    """A small lossless JPEG 2000 codestream (OpenJPEG) and the values it holds."""
    from openjpeg import encode

    rng = np.random.default_rng(20)
    if signed:
        values = rng.integers(-1024, 3072, size=(64, 64)).astype(np.int16)
    else:
        values = rng.integers(0, 4096, size=(64, 64)).astype(np.uint16)
    values[0, :4] = values.min(), values.max(), 0, 1
    # photometric_interpretation 2 is OpenJPEG's greyscale; no colour transform
    return bytes(encode(values, bits_stored=12 if not signed else 16,
                        photometric_interpretation=2, use_mct=False)), values


def check_identical(decoder: NvImageCodecDecoder) -> str | None:
    """``None`` when *decoder* returns exactly the values of two lossless JPEG 2000 check
    images (12-bit unsigned, 16-bit signed), else what went wrong.

    A signed image that does not decode at all is not a problem: the decoder is marked
    (``decoder.signed_ok = False``) and signed series go to the CPU. One that decodes to
    other values is: the decoder is then not used at all.
    """
    for signed in (False, True):
        kind = "signed 16-bit" if signed else "unsigned 12-bit"
        try:
            stream, values = _check_image(signed)
        except Exception as e:  # noqa: BLE001 - the probe must never break a run
            return f"the check image could not be made: {type(e).__name__}: {e}"
        try:
            got = decoder.decode([stream], *values.shape, values.dtype)[0]
        except GpuDecodeError as e:
            if signed:
                decoder.signed_ok = False
                log.info("nvImageCodec does not decode signed JPEG 2000 here (%s): signed "
                         "series are decoded on the CPU", e)
                continue
            return f"the {kind} check image did not decode ({e})"
        if not np.array_equal(got, values):
            n = int((got != values).sum())
            return f"nvImageCodec decoded the {kind} check image differently ({n} pixels)"
    return None


_DECODERS: dict[tuple[str, int], NvImageCodecDecoder | GpuDecodeError] = {}


def gpu_decoder(gpu_device: int = 0) -> NvImageCodecDecoder:
    """This process's GPU decoder (made and checked once; the failure is remembered too).

    Raises
    ------
    GpuDecodeError
        Why the GPU cannot decode here.
    """
    key = ("gpu", int(gpu_device))
    got = _DECODERS.get(key)
    if got is None:
        try:
            dec = NvImageCodecDecoder("gpu", gpu_device)
            problem = check_identical(dec)
            got = dec if problem is None else GpuDecodeError(problem)
        except GpuDecodeError as e:
            got = e
        _DECODERS[key] = got
    if isinstance(got, GpuDecodeError):
        raise got
    return got


def install_decoder(decoder: NvImageCodecDecoder | None, gpu_device: int = 0) -> None:
    """Use *decoder* as this process's "GPU" decoder (``None``: forget it, probe again).

    For tests and benchmarks: with ``NvImageCodecDecoder("cpu")`` the GPU path (codestreams
    out of the DICOM fragments, batched nvImageCodec calls, sample types, fallback) runs on a
    machine without a GPU, through nvImageCodec's CPU backend.
    """
    key = ("gpu", int(gpu_device))
    if decoder is None:
        _DECODERS.pop(key, None)
    else:
        _DECODERS[key] = decoder
    gpu_status.cache_clear()


def gpu_in_use() -> bool:
    """Whether this process made a GPU decoder (and so may hold a CUDA context)."""
    return any(isinstance(v, NvImageCodecDecoder) for v in _DECODERS.values())


@lru_cache(maxsize=8)
def gpu_status(gpu_device: int = 0) -> GpuStatus:
    """Whether nvImageCodec decodes JPEG 2000 on the GPU here, identically to OpenJPEG."""
    try:
        gpu_decoder(gpu_device)
    except GpuDecodeError as e:
        return GpuStatus(False, str(e))
    return GpuStatus(True, f"nvImageCodec on CUDA device {gpu_device}")


def resolve_decoder(choice: str | None, gpu_device: int = 0) -> tuple[str, str]:
    """The decoder a run uses for *choice*, and why: ``("gpu" | "cpu", reason)``.

    ``auto`` and ``gpu`` probe the GPU (:func:`gpu_status`); ``auto`` falls back quietly (an
    INFO line), ``gpu`` with a WARNING, both naming the reason. Called once per run in the
    process that starts the decode workers, which are then told the outcome.

    Examples
    --------
    >>> resolve_decoder("cpu")
    ('cpu', 'asked for')
    """
    wanted = normalise_decoder(choice)
    if wanted == "cpu":
        return "cpu", "asked for"
    status = gpu_status(gpu_device)
    said = (wanted, gpu_device, status)
    first = said not in _SAID
    _SAID.add(said)
    if status.available:
        if first:
            log.info("decoding JPEG 2000 / HTJ2K on the GPU (%s)", status.reason)
        return "gpu", status.reason
    if wanted == "gpu" and first:
        log.warning("decoder gpu was asked for but %s; decoding on the CPU instead",
                    status.reason)
    elif first:
        log.info("decoding on the CPU: %s", status.reason)
    return "cpu", status.reason


#: what resolve_decoder has already logged in this process (once is enough)
_SAID: set[tuple[str, int, GpuStatus]] = set()


# --------------------------------------------------------------------------------------------
# every core for one series: forked helpers writing into one shared array
# --------------------------------------------------------------------------------------------
def max_decode_processes() -> int:
    """:data:`MAX_DECODE_PROCESSES`, or lower where ``FRACTURE_QI_DECODE_PROCESSES`` says.

    Raises
    ------
    ConfigError
        When the variable is not a whole number of at least 1.
    """
    raw = os.environ.get(PROCESSES_ENV, "").strip()
    if not raw:
        return MAX_DECODE_PROCESSES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{PROCESSES_ENV} = {raw!r} is not a number of processes. Fix: a "
                          "whole number >= 1 (1: one process per series), or unset it")
    return min(value, MAX_DECODE_PROCESSES)


def can_fork_helpers() -> bool:
    """Forked helpers are used on Linux only, and never from a process holding a GPU decoder
    (a CUDA context does not survive a fork)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and not gpu_in_use()


def shared_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array in anonymous shared memory: what a forked helper writes into
    it, its parent sees."""
    dt = np.dtype(dtype)
    size = max(1, int(np.prod(shape)) * dt.itemsize)
    buf = mmap.mmap(-1, size)
    return np.frombuffer(buf, dtype=dt, count=int(np.prod(shape))).reshape(shape)


def run_in_helpers(n_items: int, work: Callable[[int], None], processes: int) -> int:
    """Call ``work(k)`` for every ``k < n_items``, spread over *processes* (this one included).

    Each forked helper takes every *processes*-th item and writes its results through
    memory shared with this process (:func:`shared_empty`); it reports nothing but its exit
    status. Items of a helper that fails or dies are done again here, so their error (if any)
    is raised here, with its real message. Returns the processes that took part.
    """
    processes = max(1, min(int(processes), n_items))
    if processes == 1 or not can_fork_helpers():
        for k in range(n_items):
            work(k)
        return 1
    pids: dict[int, int] = {}
    for h in range(1, processes):
        try:
            pid = os.fork()
        except OSError as e:  # out of processes or memory: the parent does the rest
            log.debug("could not fork decode helper %d: %s", h, e)
            break
        if pid == 0:  # the helper: its share, then leave without running any cleanup
            status = 1
            try:
                _die_with_parent()
                for k in range(h, n_items, processes):
                    work(k)
                status = 0
            except BaseException:  # noqa: BLE001 - reported by the exit status
                status = 1
            finally:
                os._exit(status)
        pids[pid] = h
    error: BaseException | None = None
    try:
        for k in range(0, n_items, processes):
            work(k)
    except BaseException as e:  # noqa: BLE001 - raised once the helpers are collected
        error = e
    failed = [h for h in range(1, processes) if h not in pids.values()]
    for pid, h in pids.items():
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed.append(h)
    if error is not None:
        raise error
    for h in sorted(failed):
        if h in pids.values():
            log.debug("decode helper %d failed; its frames are decoded again here", h)
        for k in range(h, n_items, processes):
            work(k)
    return 1 + len(pids)


def _die_with_parent() -> None:
    """Linux: have the kernel end this helper if its decode worker is killed (a timeout)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


__all__ = [
    "DECODERS",
    "DECODER_ENV",
    "GPU_DECODER_NAME",
    "PROCESSES_ENV",
    "GPU_SYNTAXES",
    "DecodeSettings",
    "GpuDecodeError",
    "GpuStatus",
    "NvImageCodecDecoder",
    "can_fork_helpers",
    "check_identical",
    "current",
    "encoded_frames",
    "gpu_decoder",
    "gpu_in_use",
    "gpu_status",
    "install_decoder",
    "max_decode_processes",
    "normalise_decoder",
    "resolve_decoder",
    "run_in_helpers",
    "shared_empty",
    "using",
]
