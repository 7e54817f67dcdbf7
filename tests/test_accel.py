"""Where frames are decoded (fracture_qi.dicom.accel, dicom.pixelstack): the decoder choice,
its fallback to the CPU, the nvImageCodec path, and forked helpers for one series.

No GPU runs here: the GPU path is exercised through nvImageCodec's own CPU backend where the
wheel is installed (same code: codestreams out of the DICOM fragments, batched calls, sample
types, fallback), and through stand-in decoders that fail. ``tests/test_gpu_decode.py`` (marked
``gpu``) checks the real GPU against the CPU decoders, bit for bit.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fracture_qi.dicom import accel, codecs
from fracture_qi.dicom.volume import load_series
from fracture_qi.errors import ConfigError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dicomgen  # noqa: E402
from tests.j2k_series import write_j2k_series  # noqa: E402


def _has_nvimgcodec() -> bool:
    try:
        accel.NvImageCodecDecoder("cpu")
    except accel.GpuDecodeError:
        return False
    return True


@pytest.fixture(autouse=True)
def _fresh_probe():
    """Every test starts with no decoder made and nothing said (they are per process)."""
    accel.install_decoder(None)
    accel._SAID.clear()  # noqa: SLF001 - the once-per-process log memory
    yield
    accel.install_decoder(None)
    accel._SAID.clear()  # noqa: SLF001


@pytest.fixture(scope="module")
def j2k(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("j2k")
    return {"unsigned": write_j2k_series(root / "u"),
            "signed": write_j2k_series(root / "s", signed=True)}


# --------------------------------------------------------------------------------------------
# the choice
# --------------------------------------------------------------------------------------------
def test_decoder_choice_comes_from_the_argument_then_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(accel.DECODER_ENV, raising=False)
    assert accel.normalise_decoder(None) == "auto"
    monkeypatch.setenv(accel.DECODER_ENV, "cpu")
    assert accel.normalise_decoder(None) == "cpu"
    assert accel.normalise_decoder("GPU") == "gpu"  # the argument wins
    with pytest.raises(ConfigError, match="FRACTURE_QI_DECODER.*auto.*cpu.*gpu"):
        monkeypatch.setenv(accel.DECODER_ENV, "cuda")
        accel.normalise_decoder(None)
    with pytest.raises(ConfigError, match="decoder = 'nvjpeg'"):
        accel.normalise_decoder("nvjpeg")


def test_without_nvimagecodec_auto_is_the_cpu_quietly_and_gpu_says_why(
        monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # import fails
    caplog.set_level(logging.INFO, logger="fracture_qi.dicom.accel")
    assert accel.resolve_decoder("cpu") == ("cpu", "asked for")
    choice, reason = accel.resolve_decoder("auto")
    assert choice == "cpu" and "not installed" in reason
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    choice, reason = accel.resolve_decoder("gpu")
    assert choice == "cpu"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "decoder gpu was asked for but nvImageCodec is not installed" \
        in warned[0] and "decoding on the CPU" in warned[0]
    accel.resolve_decoder("gpu")  # said once per process, not once per series or run
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


class _Refuses:
    """A GPU decoder that fails every frame (a codestream nvJPEG2000 rejects)."""

    signed_ok = True

    def decode(self, frames, rows, cols, dtype):  # noqa: ANN001
        raise accel.GpuDecodeError("nvImageCodec could not decode frame 3")


class _Wrong:
    """A GPU decoder that returns other values: must never be trusted (see check_identical)."""

    signed_ok = True

    def decode(self, frames, rows, cols, dtype):  # noqa: ANN001
        return np.zeros((len(frames), rows, cols), dtype=dtype)


def test_a_series_the_gpu_refuses_is_decoded_on_the_cpu_identically(
        j2k, caplog: pytest.LogCaptureFixture) -> None:
    reference = load_series(j2k["unsigned"])
    accel.install_decoder(_Refuses())  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING)
    with accel.using(accel.DecodeSettings("gpu")):
        vol = load_series(j2k["unsigned"])
    assert np.array_equal(vol.hu, reference.hu)
    assert vol.meta["decoder"] == reference.meta["decoder"] != accel.GPU_DECODER_NAME
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "decoded on the CPU: nvImageCodec could not decode frame 3" in msg


def test_the_identity_check_rejects_a_decoder_that_changes_values() -> None:
    problem = accel.check_identical(_Wrong())  # type: ignore[arg-type]
    assert problem is not None and "differently" in problem


def test_cpu_choice_never_touches_the_gpu_decoder(j2k) -> None:
    accel.install_decoder(_Wrong())  # type: ignore[arg-type]
    with accel.using(accel.DecodeSettings("cpu")):
        vol = load_series(j2k["unsigned"])
    assert vol.hu.any() and vol.meta["decoder"] != accel.GPU_DECODER_NAME


def test_uncompressed_series_never_go_to_the_gpu(tmp_path: Path) -> None:
    paths = dicomgen.write_ct_series(tmp_path / "raw", n=8)
    accel.install_decoder(_Wrong())  # type: ignore[arg-type]
    with accel.using(accel.DecodeSettings("gpu")):
        vol = load_series(paths)
    assert vol.meta["decoder"] == "numpy"


# --------------------------------------------------------------------------------------------
# the nvImageCodec path, on its CPU backend
# --------------------------------------------------------------------------------------------
needs_nvimgcodec = pytest.mark.skipif(not _has_nvimgcodec(),
                                      reason="nvImageCodec not installed (fracture-qi[gpu])")


@needs_nvimgcodec
def test_nvimagecodec_path_equals_the_cpu_decoders(j2k) -> None:
    reference = load_series(j2k["unsigned"])
    accel.install_decoder(accel.NvImageCodecDecoder("cpu"))
    with accel.using(accel.DecodeSettings("gpu")):
        vol = load_series(j2k["unsigned"])
    assert vol.meta["decoder"] == accel.GPU_DECODER_NAME
    assert np.array_equal(vol.hu, reference.hu)


@needs_nvimgcodec
def test_nvimagecodec_path_on_real_ct(realdata: Path) -> None:
    files = sorted((realdata / "totalsegmentator" / "example_ct_dicom").iterdir())
    reference = load_series(files)
    accel.install_decoder(accel.NvImageCodecDecoder("cpu"))
    with accel.using(accel.DecodeSettings("gpu")):
        vol = load_series(files)
    assert vol.meta["decoder"] == accel.GPU_DECODER_NAME
    assert np.array_equal(vol.hu, reference.hu)


@needs_nvimgcodec
def test_signed_series_go_to_the_cpu_where_the_backend_cannot_decode_them(j2k) -> None:
    """nvImageCodec's CPU backend does not decode signed JPEG 2000: the identity check
    notices, and signed series are decoded by OpenJPEG, identically."""
    reference = load_series(j2k["signed"])
    assert reference.hu.min() < -900  # really signed values
    dec = accel.NvImageCodecDecoder("cpu")
    assert accel.check_identical(dec) is None
    accel.install_decoder(dec)
    with accel.using(accel.DecodeSettings("gpu")):
        vol = load_series(j2k["signed"])
    assert np.array_equal(vol.hu, reference.hu)
    if not dec.signed_ok:
        assert vol.meta["decoder"] != accel.GPU_DECODER_NAME


# --------------------------------------------------------------------------------------------
# every core for one series
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not accel.can_fork_helpers(), reason="forked helpers are Linux only")
def test_forked_helpers_decode_the_same_stack(j2k) -> None:
    reference = load_series(j2k["unsigned"])
    with accel.using(accel.DecodeSettings("cpu", processes=3)):
        vol = load_series(j2k["unsigned"])
    assert vol.meta["decode_processes"] == 3
    assert reference.meta["decode_processes"] == 1
    assert np.array_equal(vol.hu, reference.hu)


@pytest.mark.skipif(not accel.can_fork_helpers(), reason="forked helpers are Linux only")
def test_a_failing_helper_is_redone_here_and_a_bad_item_raises_its_own_error() -> None:
    parent = os.getpid()
    out = accel.shared_empty((10,), np.int64)

    def flaky(k: int) -> None:  # every helper fails; the parent redoes their items
        if os.getpid() != parent:
            raise RuntimeError("helper crashed")
        out[k] = k * k

    assert accel.run_in_helpers(10, flaky, 3) == 3
    assert out.tolist() == [k * k for k in range(10)]

    def bad(k: int) -> None:
        if k == 7:
            raise ValueError(f"frame {k} is damaged")
        out[k] = -k

    with pytest.raises(ValueError, match="frame 7 is damaged"):
        accel.run_in_helpers(10, bad, 3)
    with pytest.raises(ChildProcessError):  # every helper was reaped: no zombie left
        os.waitpid(-1, os.WNOHANG)


def test_helper_count_shares_the_cores_among_waiting_series() -> None:
    from fracture_qi.screening.pool import decode_processes

    assert decode_processes(16, 15, 1) == 16
    assert decode_processes(16, 15, 4) == 4
    assert decode_processes(16, 15, 400) == 1
    assert decode_processes(2, 1, 1) == 2
    assert decode_processes(2, 2, 2) == 1


class _Recorder:
    """A model that keeps what each volume's meta says about its decoding."""

    model_id, model_version, sha256, device = "recorder", "1", None, "cpu"

    def __init__(self) -> None:
        self.meta: list[dict] = []

    def screen(self, volume):  # noqa: ANN001
        from fracture_qi.screening.types import SeriesResult

        self.meta.append(dict(volume.meta))
        return SeriesResult(status="ok")


@pytest.mark.skipif(not accel.can_fork_helpers(), reason="forked helpers are Linux only")
def test_a_lone_series_in_the_pool_gets_every_core(j2k, monkeypatch) -> None:
    """Issue 20: "use every core a study can use when fewer studies than cores are waiting"."""
    from fracture_qi.screening import pool
    from fracture_qi.screening.engine import SeriesJob, screen_series

    monkeypatch.setattr(pool, "usable_cores", lambda: 4)
    ds = pydicom.dcmread(j2k["unsigned"][0], stop_before_pixels=True)

    def job(key: int) -> SeriesJob:
        return SeriesJob(key=key, study_instance_uid=str(ds.StudyInstanceUID),
                         series_instance_uid=str(ds.SeriesInstanceUID),
                         paths=[str(p) for p in j2k["unsigned"]])

    model = _Recorder()
    alone = list(screen_series([job(0)], model, workers=2, decoder="cpu"))
    assert alone[0].ok and alone[0].decoder == codecs.choose_plugin(codecs.JPEG_2000_LOSSLESS)
    assert model.meta[-1]["decode_processes"] == 4  # the 4 cores for the one series
    model.meta.clear()
    list(screen_series([job(i) for i in range(6)], model, workers=2, decoder="cpu"))
    # a backlog: the first series share the cores between the two workers
    assert model.meta and max(m["decode_processes"] for m in model.meta[:2]) == 2


@pytest.mark.skipif(not accel.can_fork_helpers(), reason="forked helpers are Linux only")
def test_decoding_in_this_process_uses_every_core_too(j2k, monkeypatch) -> None:
    """workers=0 is how the listener screens each study as it arrives: alone."""
    from fracture_qi.screening import pool
    from fracture_qi.screening.engine import SeriesJob, screen_series

    monkeypatch.setattr(pool, "usable_cores", lambda: 3)
    ds = pydicom.dcmread(j2k["unsigned"][0], stop_before_pixels=True)
    job = SeriesJob(key=0, study_instance_uid=str(ds.StudyInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    paths=[str(p) for p in j2k["unsigned"]])
    model = _Recorder()
    (out,) = list(screen_series([job], model, workers=0, decoder="cpu"))
    assert out.ok and model.meta[-1]["decode_processes"] == 3
    monkeypatch.setenv(accel.PROCESSES_ENV, "1")  # a site can turn the helpers off
    list(screen_series([job], model, workers=0, decoder="cpu"))
    assert model.meta[-1]["decode_processes"] == 1
    monkeypatch.setenv(accel.PROCESSES_ENV, "many")
    with pytest.raises(ConfigError, match="FRACTURE_QI_DECODE_PROCESSES"):
        accel.max_decode_processes()


def test_a_run_that_asked_for_the_gpu_says_where_it_decoded(j2k, monkeypatch,
                                                             tmp_path: Path) -> None:
    """The command's summary tells IT that the GPU was asked for and not used, and why."""
    from fracture_qi.screening.engine import screen_paths

    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)
    summary = screen_paths([j2k["unsigned"][0].parent], tmp_path / "out", model=_Recorder(),
                           workers=0, decoder="gpu", progress=False, ignore_age=True)
    text = "\n".join(summary.lines())
    assert summary.n_ok == 1
    assert "decoded with: " + codecs.choose_plugin(codecs.JPEG_2000_LOSSLESS) in text
    assert "decoder gpu was asked for; decoded on the CPU: nvImageCodec is not installed" in text
