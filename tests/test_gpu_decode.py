"""On a GPU: nvImageCodec's JPEG 2000 / HTJ2K decode equals the CPU decoders, bit for bit.

Marked ``gpu`` and skipped where nvImageCodec cannot decode on a GPU (the reason is in the
skip message). ``benchmarks/gpu_check.sh`` runs these on a lent GPU machine; the CPU-side
logic (choice, fallback, the nvImageCodec path on its CPU backend) is in tests/test_accel.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fracture_qi.dicom import accel
from fracture_qi.dicom.volume import load_series

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dicomgen  # noqa: E402
from tests.j2k_series import write_j2k_series  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def gpu() -> accel.GpuStatus:
    status = accel.gpu_status(0)
    if not status.available:
        pytest.skip(f"no GPU decoding here: {status.reason}")
    return status


def _gpu_and_cpu(paths: list[Path]) -> tuple:
    with accel.using(accel.DecodeSettings("cpu")):
        cpu = load_series(paths)
    with accel.using(accel.DecodeSettings("gpu")):
        gpu = load_series(paths)
    return gpu, cpu


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned-12bit", "signed-16bit"])
def test_jpeg2000_lossless_512_matrix_identical(signed: bool, tmp_path: Path) -> None:
    paths = write_j2k_series(tmp_path / "s", n=64, signed=signed, rows=512, cols=512)
    gpu, cpu = _gpu_and_cpu(paths)
    assert np.array_equal(gpu.hu, cpu.hu)
    dec = accel.gpu_decoder(0)
    if not signed or dec.signed_ok:
        assert gpu.meta["decoder"] == accel.GPU_DECODER_NAME
    print(f"signed={signed}: decoder {gpu.meta['decoder']}, signed_ok={dec.signed_ok}")


def test_real_ct_identical(realdata: Path) -> None:
    files = sorted((realdata / "totalsegmentator" / "example_ct_dicom").iterdir())
    gpu, cpu = _gpu_and_cpu(files)
    assert gpu.meta["decoder"] == accel.GPU_DECODER_NAME
    assert np.array_equal(gpu.hu, cpu.hu)


def test_htj2k_encoded_on_the_gpu_decodes_identically_on_both(tmp_path: Path) -> None:
    """No HTJ2K encoder runs on the CPU here (OpenJPEG only decodes it): nvImageCodec encodes
    the series on the GPU, then OpenJPEG (pylibjpeg) and nvImageCodec decode it."""
    from nvidia import nvimgcodec

    from fracture_qi.dicom import codecs

    paths = dicomgen.write_ct_series(tmp_path / "ht", n=32, rows=512, cols=512, spacing=1.0)
    reference = load_series(paths)  # uncompressed
    originals = [pydicom.dcmread(p).pixel_array for p in paths]
    params = nvimgcodec.EncodeParams(
        quality_type=nvimgcodec.QualityType.LOSSLESS,
        jpeg2k_encode_params=nvimgcodec.Jpeg2kEncodeParams(
            bitstream_type=nvimgcodec.Jpeg2kBitstreamType.J2K, ht=True))
    encoded = nvimgcodec.Encoder().encode([a[:, :, None] for a in originals], "jpeg2k",
                                          params=params)
    assert all(stream is not None for stream in encoded)
    rewrite_encapsulated(paths, [bytes(s) for s in encoded], codecs.HTJ2K_LOSSLESS)
    gpu, cpu = _gpu_and_cpu(paths)
    assert cpu.meta["decoder"] == "pylibjpeg" and gpu.meta["decoder"] == accel.GPU_DECODER_NAME
    assert np.array_equal(gpu.hu, cpu.hu)
    assert np.array_equal(cpu.hu, reference.hu)


def rewrite_encapsulated(paths: list[Path], frames: list[bytes], syntax: str) -> None:
    """Replace each file's pixels by one compressed frame in *syntax*."""
    from pydicom.encaps import encapsulate

    for p, frame in zip(paths, frames):
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(p, enforce_file_format=True)


def test_engine_decodes_on_the_gpu_in_its_workers(tmp_path: Path) -> None:
    from fracture_qi.screening.engine import SeriesJob, screen_series
    from fracture_qi.screening.types import SeriesResult

    class Sums:
        model_id, model_version, sha256, device = "sums", "1", None, "cpu"

        def screen(self, volume) -> SeriesResult:  # noqa: ANN001
            return SeriesResult(status="ok", score=float(volume.hu.astype(np.int64).sum()))

    paths = write_j2k_series(tmp_path / "e", n=40, rows=512, cols=512)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    jobs = [SeriesJob(key=i, study_instance_uid=str(ds.StudyInstanceUID),
                      series_instance_uid=str(ds.SeriesInstanceUID),
                      paths=[str(p) for p in paths]) for i in range(3)]
    on_gpu = list(screen_series(jobs, Sums(), workers=2, decoder="gpu"))
    on_cpu = list(screen_series(jobs, Sums(), workers=2, decoder="cpu"))
    assert {o.decoder for o in on_gpu} == {accel.GPU_DECODER_NAME}
    assert {o.result.score for o in on_gpu} == {o.result.score for o in on_cpu}
