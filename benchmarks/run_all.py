"""Run the benchmarks that need no prepared inputs, one after another (``make bench``).

Usage::

    .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--out DIR]

Each benchmark runs as its own process with the command printed first, its output shown as it
comes and kept in ``--out`` (``NAME.log``, and ``NAME.json`` where the script writes one), so a
run on a GPU machine can be compared with one here. ``--quick`` uses small sizes (a smoke run,
a few minutes on two cores); without it the sizes are those of ``benchmarks/README.md``, whose
figures are measured with the same commands (the README also gives the commands that need a
prepared site or manifest: ``adjudication_next_case.py``, ``index_speed.py`` on a folder).

Timings depend on what else runs on the machine: run it on an idle one, and compare ratios
measured within one run rather than seconds across runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REALDATA = HERE.parent.parent / "shared" / "realdata"


def plan(quick: bool, out: Path) -> list[tuple[str, list[str]]]:
    """(name, arguments after the script) for each benchmark, in order."""
    steps: list[tuple[str, list[str]]] = [
        ("startup_speed", ["--repeat", "3" if quick else "7", "--json", str(out / "startup_speed.json")]),
        ("decode_speed", ["--slices", "100" if quick else "400", "--repeat", "1" if quick else "2",
                          "--accel"]),
        ("screen_speed", (
            ["--copies", "2", "--repeat", "2", "--pipe-repeat", "1", "--rss-slices", "0", "--skip-j2k"]
            if quick else ["--copies", "6", "--workers", "2"]
        ) + ["--json", str(out / "screen_speed.json")]),
        ("accuracy", ["--patients", "4" if quick else "30", "--seed", "2029", "--out", str(out / "accuracy.json")]
         + ([] if quick else ["--full"])),
        ("load_analysis_speed", ["--studies", "20000" if quick else "500000", "--db", str(out / "qi.db")]),
        ("listener_throughput", ["--slices", "100" if quick else "400", "--studies", "2" if quick else "6",
                                 "--json", str(out / "listener_throughput.json")]),
    ]
    if (REALDATA / "totalsegmentator" / "example_ct.nii.gz").exists():
        steps.append(("realdata_planted", ["--realdata", str(REALDATA), "--out", str(out / "realdata_planted.json")]
                      + (["--levels", "L1", "--losses", "0.35"] if quick else [])))
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every benchmark")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these (names as printed)")
    ap.add_argument("--out", type=Path, default=Path("benchmark-results"), help="folder for logs and JSON")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = plan(args.quick, args.out)
    if args.only:
        unknown = set(args.only) - {name for name, _ in steps}
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}: choose from {[n for n, _ in steps]}")
        steps = [s for s in steps if s[0] in args.only]
    failed = []
    for name, extra in steps:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        with open(args.out / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    print(f"\nlogs and JSON in {args.out}/" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
