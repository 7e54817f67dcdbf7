"""How fast the adjudication app opens the next case after a save (target: under 1 s).

Usage::

    fracture-qi synth /tmp/fqi-bench-adj --patients 12 --seed 7
    fracture-qi index  --manifest /tmp/fqi-bench-adj/data_manifest.yaml
    fracture-qi screen --manifest /tmp/fqi-bench-adj/data_manifest.yaml
    .venv/bin/python benchmarks/adjudication_next_case.py --manifest /tmp/fqi-bench-adj/data_manifest.yaml

Builds a worklist named ``bench-<time>`` holding every screened study (rate 1), then drives the
app from Python as a nurse would: open, wait while reading (the prefetch thread prepares the
next case meanwhile), save, and time how long the next case takes to appear. Also times a cold
open without prefetch (decode + plane sampling) and one viewer re-render (a slider move).
Prints one line per measure; nothing is written except the worklist and the decision events
(signed ``bench-nurse``; use a copy of the database).
"""

from __future__ import annotations

import argparse
import statistics
import time

from fracture_qi.adjudication.app import AdjudicationApp
from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
from fracture_qi.manifest import read_manifest
from fracture_qi.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cases", type=int, default=5, help="saves to time")
    ap.add_argument("--read-seconds", type=float, default=3.0,
                    help="time 'spent reading' each case before saving (prefetch runs meanwhile)")
    args = ap.parse_args()
    m = read_manifest(args.manifest, verify=False)
    engine = open_store(m)
    audit = f"bench-{int(time.time())}"
    s = build_worklist(engine, audit=audit, settings=AdjudicationSettings(
        audit_negative_rate=1.0, double_read_rate=0.0))
    print(f"worklist {audit}: {s.n_flagged + s.n_audit_negative} studies")

    cold = AdjudicationApp.from_manifest(args.manifest, reviewer="bench-cold", audit=audit,
                                         prefetch=False)
    t = time.perf_counter()
    cold.start()
    print(f"cold open (decode + planes), no prefetch: {time.perf_counter() - t:.2f} s "
          f"(prepare {cold.prepared.seconds if cold.prepared else float('nan'):.2f} s, volume "
          f"{cold.prepared.shape if cold.prepared else '-'})")
    if cold.prepared is not None:
        t = time.perf_counter()
        cold.slab.value = 10.0
        print(f"viewer re-render (slab slider): {1000 * (time.perf_counter() - t):.0f} ms")
    cold.close()

    app = AdjudicationApp.from_manifest(args.manifest, reviewer="bench-nurse", audit=audit)
    app.start()
    times = []
    for _ in range(args.cases):
        if app.case is None:
            break
        time.sleep(args.read_seconds)
        app.decision.value = "not_confirmed"
        t = time.perf_counter()
        app.save()
        if app.case is None:
            break
        times.append(time.perf_counter() - t)
    app.close()
    if times:
        print(f"save -> next case shown, with prefetch: median {statistics.median(times):.3f} s, "
              f"max {max(times):.3f} s over {len(times)} saves")
    else:
        print("not enough cases on the worklist to time a save (screen more studies)")


if __name__ == "__main__":
    main()
