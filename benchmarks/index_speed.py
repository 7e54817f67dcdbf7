"""Header-scan and index speed: files per second, one and several processes, and a re-index.

Usage::

    .venv/bin/python benchmarks/index_speed.py [FOLDER] [--workers N]

Without FOLDER, 20 series of 100 slices (512 x 512, 2,000 files) are written to a temporary
folder with tests/dicomgen.py. Prints one line per measurement. Target (FIELD-NOTES): header
reads near pydicom's own ``dcmread(stop_before_pixels=True)`` speed, about 1,500 files/s per
process on an idle core; a re-index of an unchanged folder in a small fraction of the first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fracture_qi.dicom.headers import read_header  # noqa: E402
from fracture_qi.dicom.index import index_folder  # noqa: E402
from fracture_qi.dicom.scan import iter_files, scan_paths  # noqa: E402
from fracture_qi.store import open_store  # noqa: E402


def _rate(n: int, seconds: float) -> str:
    return f"{n} files in {seconds:.2f} s = {n / seconds:,.0f} files/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            folder = Path(args.folder)
        else:
            from tests.dicomgen import new_uid, write_ct_series

            folder = Path(tmp) / "dicom"
            for k in range(20):
                write_ct_series(folder / f"s{k:02d}", n=100, rows=512, cols=512, spacing=2.0,
                                StudyInstanceUID=new_uid("bench", k // 2), SeriesNumber=k % 2 + 2)
        files = list(iter_files([folder]))
        sample = files[: min(len(files), 1000)]
        t = time.perf_counter()
        for f in sample:
            pydicom.dcmread(f, stop_before_pixels=True)
        print(f"pydicom dcmread(stop_before_pixels)  {_rate(len(sample), time.perf_counter() - t)}")
        t = time.perf_counter()
        for f in sample:
            read_header(f)
        print(f"read_header, 1 process              {_rate(len(sample), time.perf_counter() - t)}")
        for w in sorted({1, args.workers}):
            t = time.perf_counter()
            r = scan_paths([folder], workers=w)
            print(f"scan_paths, {w} worker(s)             {_rate(r.n_files, time.perf_counter() - t)}"
                  f" ({len(r.series)} series)")
        engine = open_store(f"sqlite:///{tmp}/bench.db")
        secret = b"benchmark-secret-0123456789"
        t = time.perf_counter()
        s = index_folder(folder, engine, secret, workers=args.workers)
        print(f"index_folder, first run             {_rate(s.n_files, time.perf_counter() - t)}")
        t = time.perf_counter()
        s = index_folder(folder, engine, secret, workers=args.workers)
        print(f"index_folder, unchanged re-run      {_rate(s.n_files, time.perf_counter() - t)}")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
