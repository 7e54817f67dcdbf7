"""Synthetic CT cohort: phantoms with known vertebral fractures, FLS records, truth, manifest.

The embedded default that the demo, the tests and the benchmarks run on.

>>> from fracture_qi.synth import generate_cohort, CohortSummary  # doctest: +SKIP
>>> summary = generate_cohort("/tmp/c", patients=40, seed=7, fast=True)  # doctest: +SKIP
"""

from __future__ import annotations

from fracture_qi.synth.cohort import (
    CohortSummary,
    SynthError,
    generate_cohort,
    plan_cohort,
    truth_tables,
)

__all__ = ["CohortSummary", "SynthError", "generate_cohort", "plan_cohort", "truth_tables"]
