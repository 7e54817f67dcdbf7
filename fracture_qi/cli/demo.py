"""``fracture-qi demo``: the whole suite on the embedded synthetic cohort, step by step.

Each step is the same command a site would run (printed before it runs), so the demo doubles
as a walk-through. Rerunning reuses the cohort and shows that every step is idempotent or
resumable; ``--fresh`` starts again from an empty folder.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Generate a synthetic hospital cohort (CT series with planted vertebral fractures of known grade,
FLS records, truth tables), then run every stage on it: index, screen, worklist, simulated nurse
adjudications (clearly marked as simulated), FLS record import, and the audit notebooks with the
conference pack (slides as PPTX and PDF). Beside it, write a clearly labelled SIMULATED SERVICE
HISTORY of a mid-sized trust (two years, tens of thousands of CTs, two AI models, nurse reads,
FLS episodes, a QI change part-way through) and audit it too, so the dashboard and the pack show
what a QI lead sees: SPC signals, a funnel without suppression gaps, KPI bands. Prints the funnel
and KPIs, where every output is (the slides first), and the commands that open the QI dashboard
and the adjudication app."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole suite on a synthetic cohort",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: fracture-qi demo --out demo-output --patients 60",
    )
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    p.add_argument("--patients", type=int, default=60, metavar="N", help="synthetic patients (default 60)")
    p.add_argument("--seed", type=int, default=7, metavar="S", help="random seed (default 7)")
    p.add_argument("--fresh", action="store_true", help="delete OUT first and start from nothing")
    p.add_argument("--workers", type=int, default=None, help="decode workers for screening")
    p.add_argument("--history-studies", type=int, default=30_000, metavar="N",
                   help="CT studies in the simulated service history (default 30000; 0: none)")
    p.set_defaults(func=run)


def _step(title: str, argv: list[str]) -> None:
    from fracture_qi.cli.main import main
    from fracture_qi.errors import FractureQIError

    print(f"\n== {title}\n$ fracture-qi {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise FractureQIError(f"demo step '{title}' failed (exit {code}); see the messages above")
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    cohort = out / "cohort"
    manifest = cohort / "data_manifest.yaml"
    reports = out / "reports"
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if manifest.exists():
        print(f"== synthetic cohort: reusing {cohort} (--fresh to regenerate)")
    else:
        _step(
            "1/8 synthetic cohort",
            ["synth", str(cohort), "--patients", str(args.patients), "--seed", str(args.seed),
             "--fast", "--overwrite"],
        )
    m = str(manifest)
    _step("2/8 index: header scan and eligibility", ["index", "--manifest", m])
    screen = ["screen", "--manifest", m]
    if args.workers:
        screen += ["--workers", str(args.workers)]
    _step("3/8 screen: vertebral morphometry and Genant grades", screen)
    _step("4/8 worklist: flagged + audit sample of negatives + double reads", ["worklist", "--manifest", m])

    print("\n== 5/8 adjudication: SIMULATED nurse decisions (synthetic demo only)", flush=True)
    from fracture_qi.adjudication.simulate import DEMO_UNREAD_SHARE, simulate_adjudications
    from fracture_qi.manifest import read_manifest
    from fracture_qi.store import open_store

    man = read_manifest(manifest)
    engine = open_store(man)
    # the newest share is left unread: a new reviewer finds cases waiting (issue 18)
    sim = simulate_adjudications(engine, cohort / "truth", unread_share=DEMO_UNREAD_SHARE)
    print(f"   {sim}", flush=True)
    print(f"   {sim.n_left_unread} worklist case(s) left unread for you to try the app",
          flush=True)

    _step("6/8 FLS records: validate and link", ["import-fls", "--manifest", m])
    _step(
        "7/8 audit notebooks and conference pack (publication mode)",
        ["audit", "--manifest", m, "--out", str(reports / "demo"), "--overwrite", "--jobs", "2"],
    )
    history = out / "service"
    hm = history / "data_manifest.yaml"
    if args.history_studies:
        print("\n== 8/8 SIMULATED SERVICE HISTORY of a mid-sized trust (synthetic demo data)",
              flush=True)
        if hm.exists():
            print(f"   reusing {history} (--fresh to regenerate)")
        else:
            from fracture_qi.simulation import make_service_history

            t0 = time.perf_counter()
            make_service_history(history, studies=args.history_studies, seed=args.seed + 12)
            print(f"   {args.history_studies} CT studies, two AI models, a QI change in month "
                  f"13, written in {time.perf_counter() - t0:.1f} s", flush=True)
        _step("8/8 audit of the simulated service history (publication mode)",
              ["audit", "--manifest", str(hm), "--out", str(history / "reports" / "history"),
               "--overwrite", "--jobs", "2"])

    _print_summary(engine)
    keyimages = man.output_dir("keyimages")
    slides = reports / "demo" / "slides"
    hslides = history / "reports" / "history" / "slides"
    extra = ""
    if args.history_studies:
        extra = f"""
  SIMULATED service history    {hm}
  its audit run (publication)  {history / 'reports' / 'history'}"""
    print(f"""
== done in {time.perf_counter() - t_start:.0f} s
slides (conference pack, PPTX and PDF):
  screened cohort              {slides / 'conference-pack.pptx'}
                               {slides / 'conference-pack.pdf'}""" + (f"""
  simulated service history    {hslides / 'conference-pack.pptx'}
                               {hslides / 'conference-pack.pdf'}""" if args.history_studies else "")
          + f"""
outputs:
  cohort, truth and manifest   {cohort}
  database                     {man.database_url}
  key images                   {keyimages}
  audit run (publication)      {reports / 'demo'}   (html/, tables/, figures/, slides/, provenance.json){extra}
next:
  QI dashboard                 fracture-qi dashboard --manifest {hm if args.history_studies else m}
  (the screened cohort)        fracture-qi dashboard --manifest {m}
  adjudication app             fracture-qi adjudicate --manifest {m} --reviewer YOUR.NAME
  the team server (sign-in)    fracture-qi users add YOUR.NAME --role nurse --password-stdin --manifest {m}
                               fracture-qi serve --manifest {m}
  rerun and compare the audit  fracture-qi audit --verify {reports / 'demo'}
""")
    return 0


def _print_summary(engine: Any) -> None:
    from fracture_qi.outcomes.readmodel import load_analysis
    from fracture_qi.qi.report import format_summary, headline_summary

    data = load_analysis(engine)
    summary = headline_summary(data, publish=False)
    print("\n== funnel and KPIs (internal view, unsuppressed; publication outputs are suppressed)")
    print(format_summary(summary))
