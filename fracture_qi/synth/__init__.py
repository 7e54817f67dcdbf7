"""Synthetic CT cohort on real anatomy: known vertebral fractures, FLS records, truth, manifest.

The embedded default that the demo, the tests and the benchmarks run on. Patients are real
CT scans (the chest CT lidc0001 and the TotalSegmentator abdomen, :mod:`.basescan`)
changed the way patients differ (:mod:`.realpatient`, :mod:`.realct`), with fractures
planted into their vertebrae (:mod:`.fracture`); the geometric block phantom
(:mod:`.phantom`) remains for tests that need analytic anatomy.

>>> from fracture_qi.synth import generate_cohort, CohortSummary  # doctest: +SKIP
>>> summary = generate_cohort("/tmp/c", patients=40, seed=7, fast=True)  # doctest: +SKIP
"""

from __future__ import annotations

from fracture_qi.synth.cohort import (
    ANATOMY_MODES,
    CohortSummary,
    SynthError,
    generate_cohort,
    plan_cohort,
    resolve_anatomy,
    truth_tables,
)
from fracture_qi.synth.errors import AnatomyUnavailableError

__all__ = [
    "ANATOMY_MODES",
    "AnatomyUnavailableError",
    "CohortSummary",
    "SynthError",
    "generate_cohort",
    "plan_cohort",
    "resolve_anatomy",
    "truth_tables",
]
