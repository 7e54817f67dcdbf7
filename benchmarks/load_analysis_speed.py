"""How long load_analysis and the headline measures take at hospital scale.

Usage: .venv/bin/python benchmarks/load_analysis_speed.py [--studies 500000] [--db PATH]

Populates a SQLite database with fracture_qi.simulation.populate (once; reused when
--db exists), then times load_analysis, headline_summary, a stratified table and a monthly
p-chart. Prints one line per step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fracture_qi.outcomes.readmodel import load_analysis
from fracture_qi.simulation import populate
from fracture_qi.qi.monthly import monthly_ppv
from fracture_qi.qi.report import headline_summary
from fracture_qi.qi.spc import p_chart
from fracture_qi.qi.stratify import stratified
from fracture_qi.store.db import connect
from fracture_qi.store.schema import Base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=500_000)
    ap.add_argument("--db", default="/tmp/fqi-bench-qi.db")
    args = ap.parse_args()
    fresh = not Path(args.db).exists()
    eng = connect(f"sqlite:///{args.db}")
    if fresh:
        Base.metadata.create_all(eng)
        t = time.perf_counter()
        populate(eng, args.studies, seed=1)
        print(f"populate {args.studies} studies: {time.perf_counter() - t:.1f} s")

    def timed(label: str, fn, *a, **kw):  # type: ignore[no-untyped-def]
        t, c = time.perf_counter(), time.process_time()
        out = fn(*a, **kw)
        print(f"{label}: {time.perf_counter() - t:.2f} s wall, {time.process_time() - c:.2f} s CPU")
        return out

    for step in range(2):
        data = timed(f"load_analysis, all, run {step + 1}", load_analysis, eng)
    print(
        f"  ({len(data.studies)} studies, {len(data.episodes)} episodes, {len(data.reads)} reads)"
    )
    timed(
        "load_analysis one quarter, one site",
        load_analysis,
        eng,
        period=("2025-01-01", "2025-03-31"),
        sites=["St Elsewhere"],
    )
    timed(
        "AnalysisData.subset one quarter, one site",
        data.subset,
        period=("2025-01-01", "2025-03-31"),
        sites=["St Elsewhere"],
    )
    timed("headline_summary (publish)", headline_summary, data, publish=True)
    timed("stratified by scanner", stratified, data.studies, "scanner")
    m = timed("monthly_ppv", monthly_ppv, data.studies)
    timed("p_chart", p_chart, m["successes"], m["totals"])


if __name__ == "__main__":
    main()
