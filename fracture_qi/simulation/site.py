"""Simulated sites on disk: a manifest and a populated SQLite database beside it.

:func:`make_site` is what the tests and the dashboard benchmark use; :func:`make_service_history`
writes the demo's simulated trust, which ``make demo`` puts beside the screened cohort so the
dashboard and the audit show what a QI lead really sees: SPC charts with signals after a QI
change, a funnel without suppression gaps, the FLS-DB KPI bands.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from pathlib import Path
from sqlalchemy import Engine, func, select

from fracture_qi.simulation.service import (
    REFERENCE,
    VENDOR,
    FlsPathway,
    ServiceParams,
    SimulationResult,
    populate,
)
from fracture_qi.store import schema as S

log = logging.getLogger(__name__)

MANIFEST_TEMPLATE = """\
# {banner}
# Written by fracture_qi.simulation: synthetic rows straight into the database (no DICOM).
version: 1
name: {name}
synthetic: true
database: sqlite:///{db}
pseudonymisation_key: env:FRACTURE_QI_KEY   # unset: the public demo key (synthetic data only)
outputs: {{reports: reports/}}
{fls}"""

#: the demo trust's QI change: the month it starts (0-based) and what it was
HISTORY_CHANGE_MONTH = 12
HISTORY_CHANGE_LABEL = "Fast-track FLS clinic and radiology-triggered referral"
#: the demo trust's FLS pathway before and after the change [estimate], shaped on the FLS-DB
#: 2019 national averages (ANATOMY.md section 6) before, and on services that meet the IOF
#: green levels after
HISTORY_BEFORE = FlsPathway(p_assessed=0.80, assess_median=62.0, p_dxa=0.70, dxa_median=80.0,
                            p_recommended=0.55, p_started=0.65, start_median=125.0,
                            p_falls=0.55, p_strength_balance=0.04, p_followup=0.25,
                            p_field_missing=0.12)
HISTORY_AFTER = FlsPathway(p_assessed=0.93, assess_median=24.0, assess_sigma=0.6, p_dxa=0.85,
                           dxa_median=40.0, p_recommended=0.65, p_started=0.80,
                           start_median=78.0, p_falls=0.88, p_strength_balance=0.25,
                           p_followup=0.60, p_field_missing=0.03)
#: the second AI model: a vendor trial on half the studies from month 15
HISTORY_VENDOR_TRIAL = (15, 0.5)
#: a spell of CTs the AI could not assess (a scanner software update at one site)
HISTORY_SPELL = ("South Infirmary", 8, 10, 0.12)
#: what share of the expected caseload the simulated FLS identifies [estimate]
HISTORY_IDENTIFIED_SHARE = 0.82


def manifest_db_url(folder: Path) -> str:
    """The SQLite URL of a simulated site's database."""
    return f"sqlite:///{(Path(folder) / 'fracture_qi.db').resolve()}"


def make_site(folder: str | Path, *, studies: int = 400, seed: int = 7, models: int = 1,
              name: str | None = None, params: ServiceParams | None = None,
              fls_section: str = "", banner: str = "A simulated site for tests and benchmarks"
              ) -> Path:
    """Write ``folder/data_manifest.yaml`` and a populated SQLite database beside it.

    Parameters
    ----------
    folder
        New or empty folder.
    studies, seed, models, params
        See :func:`fracture_qi.simulation.service.populate`.
    name
        Manifest name (default ``synthetic-site-seed<seed>``).
    fls_section
        The manifest's ``fls:`` section (YAML), if any.
    banner
        The manifest's first comment line.

    Returns
    -------
    pathlib.Path
        The manifest path.

    Raises
    ------
    FileExistsError
        If the folder already holds a manifest.
    """
    from fracture_qi.store import open_store

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "data_manifest.yaml"
    if manifest.exists():
        raise FileExistsError(f"{manifest} exists; choose an empty folder")
    manifest.write_text(MANIFEST_TEMPLATE.format(
        banner=banner, name=name or f"synthetic-site-seed{seed}", db="fracture_qi.db",
        fls=fls_section), encoding="utf-8")
    engine = open_store(manifest_db_url(out))
    try:
        populate(engine, studies, seed=seed, models=models, params=params)
    finally:
        engine.dispose()
    return manifest


#: what :mod:`fracture_qi.reporting.fixtures` called it
make_fixture_site = make_site


def history_params(start: dt.date = dt.date(2024, 1, 1)) -> ServiceParams:
    """The demo trust: two years, two models, a QI change in month 13."""
    trial_month, trial_share = HISTORY_VENDOR_TRIAL
    return ServiceParams(
        start=start, months=24, prevalence=0.16,
        models=(REFERENCE, replace(VENDOR, first_month=trial_month, share=trial_share)),
        fls_before=HISTORY_BEFORE, fls_after=HISTORY_AFTER,
        change_month=HISTORY_CHANGE_MONTH, change_label=HISTORY_CHANGE_LABEL,
        unlinked_per_linked=2.5, unassessable_spell=HISTORY_SPELL,
    )


def make_service_history(folder: str | Path, *, studies: int = 30_000, seed: int = 19,
                         start: dt.date = dt.date(2024, 1, 1)) -> Path:
    """Write the demo's SIMULATED service history of a mid-sized trust.

    Two years of CTs of over-50s at three sites (``studies`` CT studies, about 93 %
    eligible), the service's AI on every eligible CT and a vendor model trialled on half of
    them from month 16, nurse reads of every flagged study and a 10 % audit sample of the
    rest, FLS episodes (CT-found spine fractures and referrals from elsewhere), and a QI
    change in month 13 (a fast-track FLS clinic): the FLS-DB KPIs shift, and the SPC charts
    show it. Clearly labelled: the manifest is named "SIMULATED service history" and is
    ``synthetic: true``; every page, table, chart and slide says so.

    Returns
    -------
    pathlib.Path
        The manifest path.
    """
    params = history_params(start)
    change = dt.date(start.year + (start.month - 1 + HISTORY_CHANGE_MONTH) // 12,
                     (start.month - 1 + HISTORY_CHANGE_MONTH) % 12 + 1, 1)
    out = Path(folder)
    # the expected caseload follows from the episodes written: first write, then set it
    manifest = make_site(
        out, studies=studies, seed=seed, params=params,
        name="SIMULATED service history (synthetic demo trust)",
        banner="SIMULATED SERVICE HISTORY: synthetic demo data, not a real hospital",
        fls_section=("fls:\n  expected_caseload_per_year: 0   # set below\n  changes:\n"
                     f"    - {{date: {change.isoformat()}, label: \"{HISTORY_CHANGE_LABEL}\"}}\n"))
    from fracture_qi.store import open_store

    engine = open_store(manifest_db_url(out), migrate=False)
    try:
        with engine.connect() as c:
            n_ep = c.execute(select(func.count()).select_from(S.FlsEpisode)).scalar() or 0
    finally:
        engine.dispose()
    per_year = max(1, int(round(n_ep / 2 / HISTORY_IDENTIFIED_SHARE)))
    text = manifest.read_text(encoding="utf-8").replace(
        "expected_caseload_per_year: 0   # set below",
        f"expected_caseload_per_year: {per_year}   # simulated local estimate (FLS-DB KPI 2)")
    manifest.write_text(text, encoding="utf-8")
    log.info("simulated service history: %d studies, %d FLS episodes, in %s", studies, n_ep, out)
    return manifest


def identifiers(engine: Engine) -> dict[str, list[str]]:
    """Every patient identifier the database holds, by kind (for disclosure tests).

    Returns
    -------
    dict
        ``names``, ``nhs_numbers``, ``mrns``, ``birth_dates`` (ISO), ``study_uids``,
        ``series_uids`` and ``accession_numbers``, each a list of strings.
    """
    with engine.connect() as c:
        pats = c.execute(
            select(S.Patient.name, S.Patient.nhs_number, S.Patient.mrn, S.Patient.birth_date)
        ).all()
        sts = c.execute(select(S.Study.study_instance_uid, S.Study.accession_number)).all()
        ses = c.execute(select(S.Series.series_instance_uid)).all()
    return {
        "names": [p[0] for p in pats if p[0]],
        "nhs_numbers": [p[1] for p in pats if p[1]],
        "mrns": [p[2] for p in pats if p[2]],
        "birth_dates": [p[3].isoformat() for p in pats if p[3]],
        "study_uids": [s[0] for s in sts if s[0]],
        "accession_numbers": [s[1] for s in sts if s[1]],
        "series_uids": [s[0] for s in ses if s[0]],
    }


__all__ = ["SimulationResult", "history_params", "identifiers", "make_fixture_site",
           "make_service_history", "make_site", "manifest_db_url"]
