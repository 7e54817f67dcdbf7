"""Decode speed per transfer syntax on a full-size CT series (400 slices of 512x512).

Usage::

    .venv/bin/python benchmarks/decode_speed.py [--slices 400] [--repeat 2]
        [--syntax uncompressed jpeg2000 ...] [--workdir /tmp/fqi-decode-bench]

The series is made from the 20 real JPEG 2000 slices in
``../shared/realdata/totalsegmentator/example_ct_dicom`` (cycled to the requested count, so
the compressed sizes are those of real anatomy and noise), or, where those are absent, from
a noisy synthetic phantom. Each syntax is encoded once into ``--workdir`` (cached between
runs), then

* ``load_series``: the suite's whole decode path (read files, check geometry, decode with
  the plugin :mod:`fracture_qi.dicom.codecs` chooses, rescale to int16 HU), best of
  ``--repeat`` runs: this is "decode-only" for the screening benchmark;
* each installed pydicom plugin alone on the already-read datasets, to justify the order of
  the table in ``codecs.CODECS``.

Prints a Markdown table (the figures in benchmarks/README.md "## Decoding" come from it).
Single process, single thread: the engine parallelises per study, not per slice. Times are
CPU seconds of this process (``time.process_time``; every decoder here is single-threaded,
so on an idle core this equals wall time) because the machines these figures come from are
shared; wall seconds are printed beside them.

``--accel`` adds, for each compressed syntax, the accelerated paths of
:mod:`fracture_qi.dicom.accel` (wall seconds, best of ``--repeat``, each checked identical to
the one-process decode): the series' frames in ``--processes`` forked helper processes (a
lone study given every core), and nvImageCodec on the GPU where one decodes here. HTJ2K is
encoded with openjphpy where installed, else with nvImageCodec on the GPU.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fracture_qi.dicom import codecs
from fracture_qi.dicom.volume import load_series, series_files

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "realdata" / "totalsegmentator" / "example_ct_dicom"

SYNTAXES = {
    "uncompressed": codecs.EXPLICIT_LE,
    "deflate": codecs.DEFLATED_LE,
    "rle": codecs.RLE_LOSSLESS,
    "jpegls": codecs.JPEG_LS_LOSSLESS,
    "jpeg2000": codecs.JPEG_2000_LOSSLESS,
    "htj2k": codecs.HTJ2K_LOSSLESS,
    "jpeg-lossless": codecs.JPEG_LOSSLESS_SV1,
}


def base_slices() -> list[Dataset]:
    """Decoded, uncompressed template slices (real anatomy where available)."""
    if REAL.is_dir():
        out = []
        for p in sorted(REAL.iterdir()):
            ds = pydicom.dcmread(p)
            ds.decompress()  # to native, with a consistent header
            out.append(ds)
        return out
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((yy - 256) ** 2 / 200**2 + (xx - 256) ** 2 / 240**2) < 1
    out = []
    for k in range(20):
        img = np.where(body, 1024 + 40, 0) + rng.normal(0, 15, (512, 512)) * body
        ds = Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = codecs.EXPLICIT_LE
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.Modality = "CT"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.8, 0.8]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.clip(img, 0, 4095).astype(np.uint16).tobytes()
        out.append(ds)
    return out


def encode(ds: Dataset, syntax: str) -> Dataset:
    """Re-encode a native slice in *syntax* (raises if no encoder is installed)."""
    if syntax in (codecs.EXPLICIT_LE, codecs.DEFLATED_LE):
        ds.file_meta.TransferSyntaxUID = syntax
        return ds
    if syntax == codecs.JPEG_LOSSLESS_SV1:
        return _gdcm_encode(ds, syntax)
    if syntax == codecs.HTJ2K_LOSSLESS:
        return _htj2k_encode(ds)
    ds.compress(syntax)
    return ds


def _gdcm_encode(ds: Dataset, syntax: str) -> Dataset:
    import tempfile

    import gdcm  # python-gdcm

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        if not reader.Read():
            raise RuntimeError("gdcm could not read the slice")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("gdcm could not encode JPEG lossless")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("gdcm could not write the slice")
        return pydicom.dcmread(dst)


def _htj2k_encode(ds: Dataset) -> Dataset:
    """HTJ2K via openjphpy where installed, else nvImageCodec on a GPU (pydicom has no HTJ2K
    encoder; OpenJPEG only decodes it)."""
    from pydicom.encaps import encapsulate

    arr = ds.pixel_array
    try:
        import openjphpy  # type: ignore[import-not-found]

        buf = bytes(openjphpy.encode(arr, reversible=True))  # API of openjphpy 0.1
    except ImportError:
        from nvidia import nvimgcodec

        params = nvimgcodec.EncodeParams(
            quality_type=nvimgcodec.QualityType.LOSSLESS,
            jpeg2k_encode_params=nvimgcodec.Jpeg2kEncodeParams(
                bitstream_type=nvimgcodec.Jpeg2kBitstreamType.J2K, ht=True))
        stream = nvimgcodec.Encoder().encode(arr[:, :, None], "jpeg2k", params=params)
        if stream is None:
            raise RuntimeError("nvImageCodec could not encode HTJ2K (no GPU?)") from None
        buf = bytes(stream)
    ds.PixelData = encapsulate([buf])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = codecs.HTJ2K_LOSSLESS
    return ds


def build_series(syntax: str, n: int, workdir: Path, templates: list[Dataset]) -> Path:
    folder = workdir / f"{SYNTAXES_INV[syntax]}-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    t0 = time.perf_counter()
    for k in range(n):
        ds = copy.deepcopy(templates[k % len(templates)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.ImagePositionPatient = [-250.0, -250.0, -400.0 + k * 1.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = k + 1
        ds = encode(ds, syntax)
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    done.write_text(f"{time.perf_counter() - t0:.1f} s to encode\n")
    return folder


SYNTAXES_INV = {v: k for k, v in SYNTAXES.items()}


def time_plugins(files: list[Path], syntax: str) -> dict[str, float]:
    """Seconds per plugin to decode the already-read datasets (no file I/O)."""
    if syntax in codecs.NATIVE_SYNTAXES:
        return {}
    from pydicom.pixels import get_decoder

    dsets = [pydicom.dcmread(f) for f in files]
    decoder = get_decoder(syntax)
    out = {}
    for plugin in decoder.available_plugins:
        c0 = time.process_time()
        try:
            for ds in dsets:
                decoder.as_array(ds, decoding_plugin=plugin, as_rgb=False)
        except Exception as e:  # a plugin that cannot do this data: report, go on
            print(f"  {plugin}: failed ({e})", file=sys.stderr)
            continue
        out[plugin] = time.process_time() - c0
    return out


def time_accel(files: list[Path], syntax: str, reference: np.ndarray, repeat: int,
               processes: int) -> dict[str, str]:
    """Wall seconds of load_series with forked helpers and on the GPU, each round timed right
    after a one-process decode (so a burst of load elsewhere hits both alike): the median
    over rounds of the ratio, and each checked identical to the one-process decode."""
    from fracture_qi.dicom import accel

    out: dict[str, str] = {}
    ways = [(f"{processes} processes", accel.DecodeSettings("cpu", processes=processes))]
    if syntax in accel.GPU_SYNTAXES:
        status = accel.gpu_status(0)
        if status.available:
            ways.append(("GPU (nvImageCodec)", accel.DecodeSettings("gpu")))
        else:
            out["GPU (nvImageCodec)"] = f"not measured: {status.reason[:120]}"
    one = accel.DecodeSettings("cpu", processes=1)
    for label, settings in ways:
        fast, base, same = [], [], True
        with accel.using(settings):
            load_series(files[:8])  # warm-up: the GPU's context and buffers
        for _ in range(repeat):
            with accel.using(one):
                t0 = time.perf_counter()
                load_series(files)
                base.append(time.perf_counter() - t0)
            with accel.using(settings):
                t0 = time.perf_counter()
                vol = load_series(files)
                fast.append(time.perf_counter() - t0)
            same = same and bool(np.array_equal(vol.hu, reference))
        ratio = float(np.median(np.array(fast) / np.array(base)))
        out[label] = (f"{min(fast):.2f} s wall, {ratio:.2f}x one process "
                      f"(median of {repeat}; {vol.meta['decoder']}, "
                      f"{'identical' if same else 'DIFFERENT'})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--syntax", nargs="*", default=list(SYNTAXES), choices=list(SYNTAXES))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fqi-decode-bench"))
    ap.add_argument("--no-plugins", action="store_true", help="skip the per-plugin timings")
    ap.add_argument("--accel", action="store_true",
                    help="also time forked helper processes and the GPU (dicom.accel)")
    ap.add_argument("--processes", type=int, default=None,
                    help="helper processes for --accel (default: this machine's cores)")
    args = ap.parse_args(argv)
    import os

    processes = args.processes or len(os.sched_getaffinity(0))

    templates = base_slices()
    rows = []
    accel_rows: list[tuple[str, float, dict[str, str]]] = []
    for name in args.syntax:
        syntax = SYNTAXES[name]
        try:
            folder = build_series(syntax, args.slices, args.workdir, templates)
        except Exception as e:  # no encoder installed for this syntax here
            print(f"{name}: cannot build test series ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        files = series_files(folder)
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        try:
            best, best_wall = float("inf"), float("inf")
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                vol = load_series(files)
                best = min(best, time.process_time() - c0)
                best_wall = min(best_wall, time.perf_counter() - t0)
            decoder = vol.meta["decoder"]
        except Exception as e:
            rows.append((name, size_mb, None, None, f"{type(e).__name__}: {e}", {}))
            continue
        plugins = {} if args.no_plugins else time_plugins(files, syntax)
        rows.append((name, size_mb, best, best_wall, decoder, plugins))
        print(f"{name}: {best:.2f} s CPU, {best_wall:.2f} s wall ({decoder})", file=sys.stderr)
        if args.accel and syntax not in codecs.NATIVE_SYNTAXES:
            fast = time_accel(files, syntax, vol.hu, args.repeat, processes)
            accel_rows.append((name, best_wall, fast))
            print(f"{name}: {fast}", file=sys.stderr)

    print(f"\n{args.slices} slices 512x512, one process ({'real' if REAL.is_dir() else 'synthetic'} "
          "anatomy)\n")
    print("| transfer syntax | files MB | load_series CPU s (wall) | slices/s | decoder | "
          "plugins alone, CPU s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, mb, secs, wall, decoder, plugins in rows:
        ptxt = ", ".join(f"{p} {s:.2f}" for p, s in sorted(plugins.items(), key=lambda x: x[1]))
        if secs is None:
            print(f"| {name} | {mb:.0f} | failed | | {decoder} | |")
        else:
            print(f"| {name} | {mb:.0f} | {secs:.2f} ({wall:.2f}) | {args.slices / secs:.0f} | "
                  f"{decoder} | {ptxt or '-'} |")
    if accel_rows:
        print(f"\naccelerated (wall s, best of {args.repeat}; one process for comparison)\n")
        labels = sorted({k for _, _, d in accel_rows for k in d})
        print("| transfer syntax | one process | " + " | ".join(labels) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in labels) + " |")
        for name, one, fast in accel_rows:
            print(f"| {name} | {one:.2f} s | " + " | ".join(fast.get(k, "-") for k in labels)
                  + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
