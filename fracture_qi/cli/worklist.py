"""``fracture-qi worklist --manifest M``: build or refresh the nurses' adjudication worklist."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Put screened studies before the nurses: every AI-flagged study, a reproducible random sample
of AI-negative studies at the manifest's adjudication.audit_negative_rate (their sampling
probability is stored, so sensitivity can be estimated), and a share of both marked for a
blind second read (adjudication.double_read_rate). Safe to rerun after more studies are
screened: only new studies are added, and the sample of earlier ones never changes."""

EPILOG = """\
examples:
  fracture-qi worklist --manifest demo-output/cohort/data_manifest.yaml
  fracture-qi worklist --manifest site.yaml --audit 2026-q3 --model fqi-reference

then: fracture-qi adjudicate --manifest M --reviewer YOUR_ID
exit status 0 when the worklist was built; 2 when the manifest or database cannot be used."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "worklist", help="build/refresh the adjudication worklist from screening results",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                   help="data_manifest.yaml (default: $FRACTURE_QI_MANIFEST)")
    p.add_argument("--audit", default="default",
                   help="worklist name; separate audits draw separate samples (default: default)")
    p.add_argument("--model", default=None, metavar="MODEL_ID",
                   help="use this model's screenings (default: the newest per study)")
    p.add_argument("--model-version", default=None, help="with --model: this version only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
    from fracture_qi.errors import ConfigError
    from fracture_qi.manifest import read_manifest
    from fracture_qi.store import open_store

    if not args.manifest:
        raise ConfigError(
            "no manifest given. Fix: fracture-qi worklist --manifest path/to/data_manifest.yaml "
            "(or set FRACTURE_QI_MANIFEST)")
    manifest = read_manifest(args.manifest, verify=False)
    engine = open_store(manifest)
    try:
        summary = build_worklist(
            engine, audit=args.audit,
            settings=AdjudicationSettings.from_mapping(manifest.adjudication),
            model_id=args.model, model_version=args.model_version)
    finally:
        engine.dispose()
    print(summary.table())
    return 0
