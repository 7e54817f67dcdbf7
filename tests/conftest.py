"""Shared fixtures. Service fixtures (PostgreSQL, Orthanc, Voila) live in tests/services/.

In CI (CI=true) a skipped test that needs a real service (browser, postgres, orthanc,
realdata) is turned into a failure: those tests must run there, not skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
ARTIFACTS = REPO / "test-artifacts"

MUST_RUN_IN_CI = {"browser", "postgres", "orthanc", "realdata"}

# The synthetic cohort's chest CT (lidc0001): the tests read the shared copy and never
# download it (FRACTURE_QI_LIDC0001, see fracture_qi/synth/sources.py); where the shared data
# is absent, cohorts are built on the abdomen shipped in the package. Set before any test
# runs, so that subprocesses (the CLI) see it too.
os.environ.setdefault(
    "FRACTURE_QI_LIDC0001",
    str(REALDATA / "lidc0001") if (REALDATA / "lidc0001" / "cxr.nii.gz").is_file() else "off",
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")  # an expected failure is a result, not a skip
        and os.environ.get("CI")
        and MUST_RUN_IN_CI & {m.name for m in item.iter_markers()}
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {report.longrepr}"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/realdata, or a clear skip where it is absent (never in CI)."""
    if not (REALDATA / "totalsegmentator").is_dir():
        pytest.skip(f"real CT data not found at {REALDATA} (see its README)")
    return REALDATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep screenshots and other artefacts worth looking at after a run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
