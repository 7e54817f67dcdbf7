"""Tests for fracture_qi.dicom.codecs: each transfer syntax decodes to the same HU.

A small series is encoded in each syntax an encoder is installed for, then loaded with
:func:`load_series`; the volume must equal the uncompressed one bit for bit (all syntaxes
here are lossless) and the decoder used must be the one the table puts first.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from fracture_qi.dicom import codecs
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.dicom.volume import load_series
from fracture_qi.errors import CodecUnavailableError
from tests.test_volume import make_series

HAS_GDCM = importlib.util.find_spec("gdcm") is not None


def _reencode(paths: list[Path], fn) -> list[Path]:  # type: ignore[no-untyped-def]
    for p in paths:
        ds = pydicom.dcmread(p)
        fn(ds)
        ds.save_as(p, enforce_file_format=True)
    return paths


def _unsigned12(ds: pydicom.Dataset) -> None:
    """CT as most scanners store it: 12 bits unsigned, intercept -1024."""
    arr = np.frombuffer(ds.PixelData, np.int16).astype(np.int32) - codecs_intercept(ds)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.PixelData = np.clip(arr, 0, 4095).astype(np.uint16).tobytes()


def codecs_intercept(ds: pydicom.Dataset) -> int:
    return int(ds.RescaleIntercept)


@pytest.fixture()
def reference(tmp_path: Path) -> tuple[Path, np.ndarray]:
    folder = tmp_path / "ref"
    folder.mkdir()
    paths = _reencode(make_series(folder, n=6, rows=64, cols=48), _unsigned12)
    return folder, load_series(paths, strict=True).hu


def _copy(folder: Path, dest: Path) -> list[Path]:
    dest.mkdir()
    out = []
    for p in sorted(folder.iterdir()):
        q = dest / p.name
        q.write_bytes(p.read_bytes())
        out.append(q)
    return out


SYNTAXES = [
    ("rle", codecs.RLE_LOSSLESS, "pylibjpeg"),
    ("jpegls", codecs.JPEG_LS_LOSSLESS, "pyjpegls"),
    ("jpeg2000", codecs.JPEG_2000_LOSSLESS, "gdcm" if HAS_GDCM else "pylibjpeg"),
]


@pytest.mark.parametrize("name,uid,plugin", SYNTAXES)
def test_compressed_equals_uncompressed(reference, tmp_path: Path, name: str, uid: str,
                                        plugin: str) -> None:
    folder, hu = reference
    paths = _reencode(_copy(folder, tmp_path / name), lambda ds: ds.compress(uid))
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == uid
    vol = load_series(paths, strict=True)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.meta["decoder"] == plugin == codecs.choose_plugin(uid)


def test_deflate_and_big_endian(reference, tmp_path: Path) -> None:
    folder, hu = reference
    paths = _copy(folder, tmp_path / "deflate")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = codecs.DEFLATED_LE
        ds.save_as(p, enforce_file_format=True)
    vol = load_series(paths, strict=True)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.meta["transfer_syntax"] == codecs.DEFLATED_LE and vol.meta["decoder"] == "numpy"

    paths = _copy(folder, tmp_path / "big")
    for p in paths:
        ds = pydicom.dcmread(p)
        arr = np.frombuffer(ds.PixelData, "<u2")
        ds.PixelData = arr.astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = codecs.EXPLICIT_BE
        _write_big_endian(p, ds)
    vol = load_series(paths, strict=True)
    assert vol.meta["transfer_syntax"] == codecs.EXPLICIT_BE
    np.testing.assert_array_equal(vol.hu, hu)


def _write_big_endian(path: Path, ds: pydicom.Dataset) -> None:
    """pydicom will not re-encode endianness in save_as: write meta and body by hand."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, ds.file_meta, enforce_standard=True)
    buf.is_little_endian, buf.is_implicit_VR = False, False
    body = pydicom.Dataset({k: ds[k] for k in ds.keys()})  # noqa: SIM118 (iterating gives elements)
    write_dataset(buf, body)
    path.write_bytes(buf.getvalue())


@pytest.mark.skipif(not HAS_GDCM, reason="python-gdcm not installed (JPEG lossless decoder)")
def test_jpeg_lossless_with_gdcm(reference, tmp_path: Path) -> None:
    import gdcm

    folder, hu = reference
    paths = _copy(folder, tmp_path / "jpegll")
    for p in paths:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(p))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(p))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == codecs.JPEG_LOSSLESS_SV1
    vol = load_series(paths, strict=True)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.meta["decoder"] == "gdcm"


def test_missing_plugin_is_codec_unavailable(reference, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = reference
    paths = _reencode(_copy(folder, tmp_path / "ls"), lambda ds: ds.compress(codecs.JPEG_LS_LOSSLESS))

    class NoPlugins:
        available_plugins: tuple[str, ...] = ()

    import pydicom.pixels

    codecs.choose_plugin.cache_clear()
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoPlugins())
    try:
        with pytest.raises(CodecUnavailableError) as info:
            load_series(paths)
        assert info.value.reason == ReasonCode.CODEC_UNAVAILABLE
        assert "pip install pyjpegls" in str(info.value)
        assert "JPEG-LS lossless" in str(info.value)
    finally:
        codecs.choose_plugin.cache_clear()


def test_syntax_without_any_decoder(reference, tmp_path: Path) -> None:
    """MPEG-2 video in a CT series: pydicom has no decoder at all."""
    folder, _ = reference
    mpeg2 = "1.2.840.10008.1.2.4.100"

    def fake(ds: pydicom.Dataset) -> None:
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
        ds.file_meta.TransferSyntaxUID = mpeg2

    paths = _reencode(_copy(folder, tmp_path / "mpeg"), fake)
    with pytest.raises(CodecUnavailableError) as info:
        load_series(paths)
    assert info.value.reason == "CODEC_UNAVAILABLE"


def test_corrupt_compressed_data_is_decode_failed(reference, tmp_path: Path) -> None:
    folder, _ = reference
    paths = _reencode(_copy(folder, tmp_path / "bad"),
                      lambda ds: ds.compress(codecs.RLE_LOSSLESS))
    ds = pydicom.dcmread(paths[2])
    ds.PixelData = encapsulate([b"\x01\x00\x00\x00" + b"\x00" * 60])
    ds.save_as(paths[2])
    with pytest.raises(Exception) as info:
        load_series(paths)
    assert getattr(info.value, "reason", None) == "DECODE_FAILED"


def test_table_names_every_listed_syntax() -> None:
    for uid, codec in codecs.CODECS.items():
        assert codec.plugins and codec.install
        assert codecs.syntax_name(uid) == codec.name
