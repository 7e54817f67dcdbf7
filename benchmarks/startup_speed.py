"""How long the command line takes to start: `fracture-qi --help` and `fracture-qi screen` on an
empty folder (issue 20: under 1.5 s on the 2-core dev machine).

Usage::

    .venv/bin/python benchmarks/startup_speed.py [--repeat 7] [--baseline DIR] [--json out.json]

Each command runs ``--repeat`` times as a fresh process (``python -m fracture_qi``, what the
console script runs), interleaved so that load from elsewhere falls on all alike; the median and
maximum wall time and the median CPU time (user + system of the child) are reported, with
``python -c pass`` as the floor the interpreter itself sets. Then ``python -X importtime``
of the empty screen lists the slowest top-level imports, and the heavy packages each command
imported (``tests/test_startup.py`` guards that list without timing).

``--baseline DIR`` also times the same commands with the package from another checkout (e.g.
``git archive <commit> fracture_qi | tar -x -C DIR``), interleaved with these, so the two are
compared within one run on a shared machine. Both then start through the same small
bootstrap that puts their checkout first (the editable install's finder would otherwise
always answer with this worktree).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: ``python -m fracture_qi ARGS`` with the package taken from the checkout in argv[1]
BOOT = ("import runpy, sys; tree = sys.argv[1]; "
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
        "sys.path.insert(0, tree); sys.argv = ['fracture-qi', *sys.argv[2:]]; "
        "runpy.run_module('fracture_qi', run_name='__main__', alter_sys=True)")
HEAVY = ("torch", "pandas", "matplotlib", "sqlalchemy", "scipy", "plotly", "dask", "pydicom",
         "numpy", "pydantic", "PIL")


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall s, child CPU s) of one run."""
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-500:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                           - before.children_system)
    return wall, cpu


def top_imports(cmd: list[str], n: int = 10) -> list[tuple[str, float]]:
    """The slowest imports at the top two levels (cumulative ms) of ``-X importtime``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True,
                          text=True, check=False)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)", line)
        if m and len(m.group(2)) <= 3:
            rows.append((m.group(3), int(m.group(1)) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:n]


def heavy_after(args: list[str]) -> list[str]:
    code = ("import sys\nfrom fracture_qi.cli.main import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    return json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout of another version, timed alongside (PYTHONPATH)")
    args = ap.parse_args(argv)
    exe = [sys.executable, "-m", "fracture_qi"]
    with tempfile.TemporaryDirectory() as tmp:
        empty, out = Path(tmp) / "empty", Path(tmp) / "out"
        empty.mkdir()
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "fracture-qi --help": [*exe, "--help"],
            "fracture-qi screen --help": [*exe, "screen", "--help"],
            "fracture-qi screen EMPTY --out D": [*exe, "screen", str(empty), "--out", str(out),
                                                 "--no-progress"],
        }
        trees = {"": None}
        if args.baseline:
            trees = {"": REPO, " (baseline)": args.baseline.resolve()}
        runs: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                for tag, tree in trees.items():
                    if name == "python -c pass":
                        if not tag:
                            runs.setdefault(name, []).append(timed(cmd))
                        continue
                    run = cmd
                    if tree is not None:  # python -m fracture_qi ARGS from that checkout
                        run = [sys.executable, "-c", BOOT, str(tree), *cmd[3:]]
                    runs.setdefault(name + tag, []).append(timed(run))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        imports = top_imports(["-m", "fracture_qi", "screen", str(empty), "--out", str(out),
                               "--no-progress"])
        heavy = {"--help": heavy_after(["--help"]),
                 "screen EMPTY": heavy_after(["screen", str(empty), "--out", str(out),
                                              "--no-progress"])}
    result = {
        "repeat": args.repeat, "load_average_1min": load, "cpus": os.cpu_count(),
        "commands": {name: {"median_wall_s": round(statistics.median(w for w, _ in r), 3),
                            "max_wall_s": round(max(w for w, _ in r), 3),
                            "median_cpu_s": round(statistics.median(c for _, c in r), 3)}
                     for name, r in runs.items()},
        "screen_empty_top_imports_ms": imports,
        "heavy_packages_imported": heavy,
    }
    print(f"| command ({args.repeat} runs, load {load}) | median wall s | max wall s | "
          "median CPU s |")
    print("| --- | --- | --- | --- |")
    for name, m in result["commands"].items():
        print(f"| `{name}` | {m['median_wall_s']} | {m['max_wall_s']} | {m['median_cpu_s']} |")
    print("\nslowest imports of `screen EMPTY` (cumulative ms): "
          + ", ".join(f"{n} {ms:.0f}" for n, ms in imports))
    print("heavy packages imported: " + "; ".join(f"{k}: {', '.join(v) or 'none'}"
                                                   for k, v in heavy.items()))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
