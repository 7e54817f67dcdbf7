"""``fracture-qi synth``: write a synthetic CT cohort (known fractures, FLS records, truth)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Write a synthetic hospital's CT traffic with known vertebral fractures:

  OUTDIR/dicom/               CT Image Storage files (several series per study: localizer,
                              5 mm soft tissue, thin bone kernel, some sagittal reformats;
                              chest, abdomen-pelvis, chest-abdomen-pelvis and head CTs)
  OUTDIR/fls_records.csv      Fracture Liaison Service records (with planted errors)
  OUTDIR/truth/               patients, studies, series, vertebrae, fls_problems (CSV)
  OUTDIR/data_manifest.yaml   the manifest every other command reads

The same --seed always gives the same bytes. Patients, names and NHS numbers (999 test
range) are synthetic. See docs/synthetic-cohort.md.
"""

EPILOG = """\
examples:
  fracture-qi synth /tmp/c --patients 40 --seed 7 --fast
  fracture-qi index --manifest /tmp/c/data_manifest.yaml
  fracture-qi synth bench-cohort --patients 10 --seed 1          # 512x512, thin slices

exit status: 0 written; 2 OUTDIR not empty (use --overwrite) or bad arguments.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic CT cohort (DICOM, FLS records, truth, manifest)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("outdir", type=Path, metavar="OUTDIR", help="output folder (new or empty)")
    p.add_argument(
        "--patients", type=int, default=40, metavar="N", help="number of patients (default 40)"
    )
    p.add_argument("--seed", type=int, default=7, metavar="S", help="random seed (default 7)")
    p.add_argument(
        "--fast",
        action="store_true",
        help="256x256 matrix, 2.5 mm thin slices: about a minute per 100 patients on 2 cores "
        "(default: 512x512, 0.625-1.25 mm, for benchmarks)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a cohort already in OUTDIR")
    p.add_argument(
        "--truth-only", action="store_true", help="plan and write truth/FLS/manifest, no DICOM"
    )
    p.add_argument(
        "--workers", type=int, default=None, metavar="W", help="processes (default: CPU count)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fracture_qi.synth import generate_cohort

    summary = generate_cohort(
        args.outdir,
        patients=args.patients,
        seed=args.seed,
        fast=args.fast,
        progress=True,
        truth_only=args.truth_only,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(
            f"wrote {summary.n_patients} patients, {summary.n_studies} studies, "
            f"{summary.n_series} series, "
            f"{summary.n_files} files in {summary.seconds:.1f} s\n"
            f"manifest: {summary.manifest_path}\n"
            f"next:     fracture-qi index --manifest {summary.manifest_path}"
        )
    return 0
