"""How fast the QI dashboard is at hospital scale (default: 500,000 screened studies).

Writes a fixture site (``fracture_qi.reporting.fixtures``: realistic rows straight into
SQLite, two AI models) and measures, in one process:

* ``populate_s``: writing the rows (not a dashboard figure; for orientation);
* ``cube_cold_s``: reading the database into the aggregate cube (``load_analysis`` once
  per model + grouping): what ``fracture-qi dashboard`` does before it serves, and what a
  page pays once after new data arrive;
* ``cube_cached_s``: loading the cached cube (what every page load pays otherwise);
* ``first_render_s``: from a kernel that is up to a rendered page: imports (ipywidgets and
  plotly, then the dashboard modules, whose measures pull in statsmodels and scipy), the
  manifest, the cached cube, the first view and every widget (target <= 5 s); its parts are
  printed too;
* ``filter_change_s``: a filter change (site, scanner, referral, model, period) to all
  tiles, tables and charts updated, median and max over the changes (target <= 1 s).

Usage::

    .venv/bin/python benchmarks/dashboard_speed.py                 # 500,000 studies
    .venv/bin/python benchmarks/dashboard_speed.py --studies 50000 --folder /tmp/dash50k
    .venv/bin/python benchmarks/dashboard_speed.py --reuse --folder /tmp/dash500k

Prints one JSON object (paste it into benchmarks/README.md, section "Dashboard").
``first_render_s`` is measured in a fresh interpreter (a subprocess), as a Voila kernel is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_RENDER = r"""
import contextlib, io, json, sys, time
t0 = time.perf_counter()
import ipywidgets, plotly.graph_objects  # a Voila kernel imports these for any widget page
t1 = time.perf_counter()
from fracture_qi.dashboards.app import QIDashboard
t2 = time.perf_counter()
dash = QIDashboard.from_manifest(sys.argv[1])
t3 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):  # no kernel here: charts would print
    dash.build()
t4 = time.perf_counter()
print(json.dumps({"first_render_s": t4 - t0, "import_widgets_s": t1 - t0,
                  "import_fracture_qi_s": t2 - t1, "open_and_cube_s": t3 - t2,
                  "first_view_and_widgets_s": t4 - t3}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=500_000)
    ap.add_argument("--models", type=int, default=2, choices=(1, 2))
    ap.add_argument("--folder", type=Path, default=None,
                    help="fixture site folder (default: a new temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="reuse the site in --folder")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    from fracture_qi.dashboards.app import QIDashboard
    from fracture_qi.dashboards.cube import cube_from_engine
    from fracture_qi.reporting.fixtures import make_fixture_site
    from fracture_qi.store import open_store

    folder = args.folder or Path(tempfile.mkdtemp(prefix="fqi-dash-bench-"))
    manifest = folder / "data_manifest.yaml"
    out: dict[str, object] = {"studies": args.studies, "models": args.models,
                              "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    if not (args.reuse and manifest.exists()):
        t = time.perf_counter()
        make_fixture_site(folder, studies=args.studies, seed=args.seed, models=args.models)
        out["populate_s"] = round(time.perf_counter() - t, 1)
    engine = open_store(str(manifest))
    cache = folder / "reports" / ".cache"
    for old in cache.glob("qi-cube-*.npz"):
        old.unlink()

    t = time.perf_counter()
    cube = cube_from_engine(engine, cache_dir=cache)
    out["cube_cold_s"] = round(time.perf_counter() - t, 2)
    out["cube_cells"] = len(cube.cells)
    t = time.perf_counter()
    cube_from_engine(engine, cache_dir=cache)
    out["cube_cached_s"] = round(time.perf_counter() - t, 2)

    proc = subprocess.run([sys.executable, "-c", FIRST_RENDER, str(manifest)],
                          capture_output=True, text=True, check=True)
    first = json.loads(proc.stdout.strip().splitlines()[-1])
    out["first_render_s"] = round(first["first_render_s"], 2)
    out["first_render_parts_s"] = {k: round(v, 2) for k, v in first.items()
                                   if k != "first_render_s"}

    dash = QIDashboard(cube)
    quiet = contextlib.redirect_stdout(io.StringIO())  # no kernel here: charts would print
    quiet.__enter__()
    dash.build()
    months = cube.options["month"]
    changes = [
        ("site", cube.options["site"][0]), ("scanner", cube.options["scanner"][0]),
        ("referral", cube.options["referral"][0]), ("site", "All"), ("scanner", "All"),
        ("referral", "All"), ("site", cube.options["site"][-1]),
    ]
    if len(cube.options["model"]) > 1:
        changes.append(("model", cube.options["model"][-1]))
    times = []
    for dim, value in changes:
        t = time.perf_counter()
        dash._w[dim].value = value  # what a browser's comm message does
        times.append(time.perf_counter() - t)
    for lo, hi in ((months[0], months[len(months) // 2]), (months[-6], months[-1])):
        t = time.perf_counter()
        dash._w_period.value = (lo, hi)
        times.append(time.perf_counter() - t)
    quiet.__exit__(None, None, None)
    out["filter_change_s"] = {"median": round(statistics.median(times), 3),
                              "max": round(max(times), 3), "n": len(times)}
    out["targets"] = {"first_render_s": 5.0, "filter_change_s": 1.0}
    out["folder"] = str(folder)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
