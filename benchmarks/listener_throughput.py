"""`fracture-qi listen` throughput: instances/s received and studies/h screened end to end.

Usage::

    .venv/bin/python benchmarks/listener_throughput.py [--slices 400] [--studies 6]
                                                       [--quiet 2] [--json FILE]

Two measurements against a real `fracture-qi listen` subprocess on 127.0.0.1 (the sender is
pynetdicom in this process, one association per study, as a PACS forwards):

1. **receive**: one 512 x 512 CT series of ``--slices`` uncompressed slices (tests/dicomgen.py,
   ~0.5 MB each) sent to a listener whose quiet period is an hour, so nothing but receiving
   runs: instances per second acknowledged (each written, fsynced, recorded and renamed
   before "stored" is answered), and MB/s.
2. **end to end**: ``--studies`` spine CT studies (tests/spine_ct.py, 150 x 160 x 160, a
   flagged L1 fracture each) sent one after another to a listener with ``--quiet`` seconds
   of quiet period and the reference screener; timed from the first C-STORE until the last
   study is indexed, screened and on the worklist: studies per hour, and the processing time
   per study once complete (index + screen + worklist, from the listener's database).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dicomgen import new_uid, write_ct_series  # noqa: E402
from tests.listener_helpers import (  # noqa: E402
    ListenerProcess,
    c_store,
    new_port,
    query,
    write_manifest,
)
from tests.spine_ct import write_spine_study  # noqa: E402


def receive(tmp: Path, slices: int) -> dict[str, float]:
    files = write_ct_series(tmp / "big", n=slices, rows=512, cols=512, spacing=1.0,
                            StudyInstanceUID=new_uid("bench-receive"))
    mb = sum(p.stat().st_size for p in files) / 1e6
    root = tmp / "site-receive"
    root.mkdir()
    port = new_port()
    listener = ListenerProcess(write_manifest(root, port=port, quiet=3600), port)
    try:
        t = time.perf_counter()
        statuses = c_store(files, port)
        seconds = time.perf_counter() - t
    finally:
        listener.terminate()
    assert set(statuses) == {0}, statuses[:5]
    return {"instances": len(files), "seconds": seconds, "instances_per_s": len(files) / seconds,
            "mb_per_s": mb / seconds}


def end_to_end(tmp: Path, n: int, quiet: float) -> dict[str, float]:
    studies = [write_spine_study(tmp / f"spine{k}", seed=41 + k % 5,
                                 study_uid=new_uid("bench-e2e", k)) for k in range(n)]
    root = tmp / "site-e2e"
    root.mkdir()
    port = new_port()
    listener = ListenerProcess(write_manifest(root, port=port, quiet=quiet), port)
    db = root / "fqi.db"
    try:
        t0 = time.perf_counter()
        for files in studies:
            assert set(c_store(files, port)) == {0}
        sent = time.perf_counter() - t0
        while query(db, "select count(*) from received_studies where state = 'processed'"
                    ) != [(n,)]:
            time.sleep(0.2)
        total = time.perf_counter() - t0
        rows = query(db, "select (julianday(processed_at) - julianday(last_received_at)) "
                     "* 86400 from received_studies")
    finally:
        listener.terminate()
    per_study = [float(r[0]) - quiet for r in rows]
    return {"studies": n, "instances": sum(len(s) for s in studies), "send_seconds": sent,
            "seconds": total, "studies_per_hour": n * 3600 / total,
            "processing_s_median": statistics.median(per_study),
            "processing_s_max": max(per_study)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--studies", type=int, default=6)
    ap.add_argument("--quiet", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fqi-listen-bench-") as d:
        tmp = Path(d)
        r = receive(tmp, args.slices)
        print(f"receive: {r['instances']} instances (512x512) in {r['seconds']:.1f} s = "
              f"{r['instances_per_s']:.0f} instances/s, {r['mb_per_s']:.0f} MB/s")
        e = end_to_end(tmp, args.studies, args.quiet)
        print(f"end to end: {e['studies']} studies ({e['instances']} instances) in "
              f"{e['seconds']:.1f} s = {e['studies_per_hour']:.0f} studies/h (quiet "
              f"{args.quiet:g} s); processing once complete: median "
              f"{e['processing_s_median']:.1f} s, max {e['processing_s_max']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"receive": r, "end_to_end": e}, indent=2))


if __name__ == "__main__":
    main()
