"""A seeded generator of realistic database rows, for tests and the dashboard benchmark.

The synthetic CT cohort (:mod:`fracture_qi.synth`) makes real DICOM and runs every stage;
that is the right thing for an end-to-end demo but far too slow for a 500,000-study
dashboard benchmark or for a test that needs a populated database in a second. This module
writes the rows those stages would have written (patients, studies, chosen series,
screenings, worklist items, adjudication events, FLS episodes) straight into the ORM tables
with SQLAlchemy Core ``executemany``, drawn from the priors in ``ANATOMY.md``:

* fracture prevalence about 20 % in the over-50s, rising with age (ANATOMY 4a);
* an AI with sensitivity about 0.85 and specificity about 0.93 at the study level;
* nurses who agree with the truth about 95 % of the time, with a 20 % double-read sample and
  an audit sample of AI-negatives at 10 %;
* FLS delays from the ANATOMY section 6 table (assessment median 45 d, DXA 70 d, therapy
  started in 70 % of those recommended, median about 110 d).

Every row is marked synthetic where the schema allows it (adjudication events carry
``simulated=True``; patient names are invented; NHS numbers are in the 999 test range).
The same seed always gives the same rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert, update

from fracture_qi.pseudonym import DEMO_KEY, patient_key
from fracture_qi.store import schema as S

log = logging.getLogger(__name__)

SITES: tuple[str, ...] = ("North General", "South Infirmary", "West Community")
#: scanners per site (manufacturer, model name); a site has two
SCANNERS: dict[str, tuple[tuple[str, str], ...]] = {
    "North General": (("SIEMENS", "SOMATOM Force"), ("GE MEDICAL SYSTEMS", "Revolution CT")),
    "South Infirmary": (("Canon Medical Systems", "Aquilion ONE"), ("SIEMENS", "SOMATOM Drive")),
    "West Community": (("Philips", "Ingenuity CT"), ("GE MEDICAL SYSTEMS", "Optima CT660")),
}
REFERRALS: tuple[str, ...] = ("emergency", "inpatient", "outpatient", "gp")
REFERRAL_P = (0.35, 0.30, 0.27, 0.08)
MODELS: tuple[tuple[str, str], ...] = (("reference", "1.0"), ("vendor-x", "2.3"))
FAMILY = (
    "Abbott", "Bennett", "Carter", "Dawson", "Ellison", "Fletcher", "Gardiner", "Hughes",
    "Ingram", "Jarvis", "Kendall", "Lambert", "Marsh", "Norris", "Osborne", "Pickering",
    "Quinlan", "Rowley", "Sutton", "Thornton", "Underwood", "Vickers", "Whitfield", "Yardley",
)
GIVEN = (
    "Agnes", "Bernard", "Clara", "Douglas", "Edith", "Frank", "Gladys", "Harold", "Irene",
    "Jack", "Kathleen", "Leonard", "Mabel", "Norman", "Olive", "Percy", "Rita", "Stanley",
    "Thelma", "Walter",
)
DRUGS = ("alendronate", "risedronate", "zoledronate", "denosumab", "teriparatide")


@dataclass
class FixtureSummary:
    """How many rows of each kind :func:`populate` wrote."""

    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "seconds": self.seconds}


def _nhs_numbers(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct valid-format NHS numbers in the 999 test range (mod-11 check digit)."""
    out: list[str] = []
    seen: set[str] = set()
    weights = np.arange(10, 1, -1)
    while len(out) < n:
        body = np.empty((2 * (n - len(out)) + 16, 9), dtype=np.int64)
        body[:, :3] = 9
        body[:, 3:] = rng.integers(0, 10, size=(body.shape[0], 6))
        check = 11 - (body * weights).sum(axis=1) % 11
        check[check == 11] = 0
        for row, c in zip(body, check):
            if c == 10:
                continue
            s = "".join(map(str, row)) + str(int(c))
            if s not in seen:
                seen.add(s)
                out.append(s)
                if len(out) == n:
                    break
    return out


def _days(a: np.ndarray) -> list[dt.date | None]:
    base = dt.date(1970, 1, 1)
    return [None if v < 0 else base + dt.timedelta(days=int(v)) for v in a]


def _epoch(d: dt.date) -> int:
    return (d - dt.date(1970, 1, 1)).days


def populate(
    engine: Engine,
    *,
    studies: int = 400,
    seed: int = 7,
    start: dt.date = dt.date(2024, 1, 1),
    months: int = 24,
    models: int = 1,
    secret: bytes | None = None,
    chunk: int = 20_000,
) -> FixtureSummary:
    """Fill an empty fracture-qi database with realistic synthetic rows.

    Parameters
    ----------
    engine
        A database whose tables exist (``fracture_qi.store.open_store`` or
        ``Base.metadata.create_all``) and hold no rows yet.
    studies
        Number of CT studies (about 1.25 studies per patient).
    seed
        Seed of the generator: the same seed writes the same rows.
    start, months
        Study dates are spread uniformly over *months* months from *start*.
    models
        How many AI models screened every eligible study (1 or 2; the second is a
        "vendor" model with a different operating point).
    secret
        Pseudonymisation secret for the patient keys; the demo key by default.
    chunk
        Rows per ``executemany`` batch.

    Returns
    -------
    FixtureSummary
        Rows written per table and seconds taken.

    Raises
    ------
    ValueError
        If *studies* < 1 or *models* is not 1 or 2.

    Examples
    --------
    >>> from fracture_qi.store.db import connect
    >>> eng = connect("sqlite://")
    >>> S.Base.metadata.create_all(eng)
    >>> populate(eng, studies=50, seed=1).counts["studies"]
    50
    """
    import time

    if studies < 1:
        raise ValueError(f"studies={studies}: need at least one study")
    if models not in (1, 2):
        raise ValueError(f"models={models}: the fixture knows 1 or 2 models")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    secret = secret or DEMO_KEY.encode()
    n_s = studies
    n_p = max(1, int(round(n_s / 1.25)))

    # --- patients ----------------------------------------------------------------------------
    sex = np.where(rng.random(n_p) < 0.55, "F", "M")
    age_first = np.clip(rng.normal(70, 11, n_p), 30, 97)
    nhs = _nhs_numbers(rng, n_p)
    fam = rng.integers(0, len(FAMILY), n_p)
    giv = rng.integers(0, len(GIVEN), n_p)
    # age-dependent prevalence of a vertebral fracture (ANATOMY 4a: ~20 % over 50, rising)
    p_frac = np.clip(0.05 + (age_first - 50) * 0.0075, 0.01, 0.45)
    p_frac[age_first < 50] = 0.02
    has_frac = rng.random(n_p) < p_frac

    # --- studies -----------------------------------------------------------------------------
    pat_of = np.concatenate([np.arange(n_p), rng.integers(0, n_p, n_s - n_p)])[:n_s]
    rng.shuffle(pat_of)
    span = _epoch(_add_months(start, months)) - _epoch(start)
    sdate = _epoch(start) + rng.integers(0, span, n_s)
    order = np.argsort(sdate, kind="stable")
    pat_of, sdate = pat_of[order], sdate[order]
    age = age_first[pat_of] + (sdate - sdate.min()) / 365.25
    birth = (sdate - age * 365.25).astype(np.int64)
    site_i = rng.integers(0, len(SITES), n_s)
    scan_i = rng.integers(0, 2, n_s)
    ref_i = rng.choice(len(REFERRALS), n_s, p=REFERRAL_P)
    head = rng.random(n_s) < 0.06
    eligible = (age >= 50) & ~head
    reason = np.where(age < 50, "AGE_UNDER_50", np.where(head, "NO_SPINE_IN_VIEW", ""))
    truth = has_frac[pat_of] & ~head

    patient_rows = [
        {
            "id": i + 1,
            "patient_key": patient_key(secret, nhs[i]),
            "nhs_number": nhs[i],
            "mrn": f"RX{seed % 100:02d}{i + 1:07d}",
            "name": f"{FAMILY[fam[i]].upper()}^{GIVEN[giv[i]]}",
            "birth_date": None,  # filled from the first study below
            "sex": str(sex[i]),
        }
        for i in range(n_p)
    ]
    for j in range(n_s - 1, -1, -1):  # earliest study wins: birth date from age at first CT
        patient_rows[pat_of[j]]["birth_date"] = _days(birth[j : j + 1])[0]
    uid_root = f"2.25.{seed}{n_s}"
    study_rows = []
    series_rows = []
    for j in range(n_s):
        site = SITES[site_i[j]]
        man, mod = SCANNERS[site][scan_i[j]]
        study_rows.append(
            {
                "id": j + 1,
                "study_instance_uid": f"{uid_root}.1.{j + 1}",
                "patient_id": int(pat_of[j]) + 1,
                "accession_number": f"ACC{seed % 100:02d}{j + 1:08d}",
                "study_date": _days(sdate[j : j + 1])[0],
                "description": "CT HEAD" if head[j] else "CT CHEST ABDOMEN PELVIS",
                "site": site,
                "referral_source": REFERRALS[ref_i[j]],
                "age_years": round(float(age[j]), 1),
                "source": "fixture",
                "eligible": bool(eligible[j]),
                "reason": str(reason[j]) or None,
                "chosen_series_id": None,  # set after the series exist (foreign key)
            }
        )
        series_rows.append(
            {
                "id": j + 1,
                "series_instance_uid": f"{uid_root}.2.{j + 1}",
                "study_id": j + 1,
                "path": None,
                "modality": "CT",
                "series_number": 3,
                "description": "Bone 1.0",
                "manufacturer": man,
                "model_name": mod,
                "kernel": "B70f",
                "slice_thickness": 1.0,
                "n_instances": 400,
                "status": "ok" if eligible[j] else "excluded",
                "reason": str(reason[j]) or None,
                "chosen": True,
            }
        )

    # --- screenings --------------------------------------------------------------------------
    screening_rows: list[dict[str, Any]] = []
    run_rows = []
    op_points = ((0.85, 0.93), (0.78, 0.96))  # (sensitivity, specificity) per model
    elig_idx = np.flatnonzero(eligible)
    flagged_by_model: list[np.ndarray] = []
    for m in range(models):
        mid, mver = MODELS[m]
        run_rows.append(
            {
                "id": m + 1,
                "model_id": mid,
                "model_version": mver,
                "params": {"fixture_seed": seed},
                "device": "cpu",
                "host": "fixture",
                "code_version": "fixture",
                "status": "done",
                "n_ok": len(elig_idx),
                "n_error": 0,
            }
        )
        sens, spec = op_points[m]
        u = rng.random(n_s)
        flag = np.where(truth, u < sens, u > spec) & eligible
        err = (rng.random(n_s) < 0.01) & eligible
        flag &= ~err
        flagged_by_model.append(flag)
        grade = np.where(flag, rng.choice([2, 3], n_s, p=[0.6, 0.4]), 0)
        for j in elig_idx:
            screening_rows.append(
                {
                    "id": len(screening_rows) + 1,
                    "run_id": m + 1,
                    "series_id": int(j) + 1,
                    "model_id": mid,
                    "model_version": mver,
                    "status": "error" if err[j] else "ok",
                    "reason": "SCREEN_FAILED" if err[j] else None,
                    "flagged": bool(flag[j]),
                    "score": round(float(0.5 + 0.5 * u[j] if flag[j] else 0.5 * u[j]), 4),
                    "max_grade": int(grade[j]),
                    "n_vertebrae": 12,
                    "seconds": 3.0,
                }
            )
    screening_id = {  # (study index, model index) -> screening id
        (r["series_id"] - 1, (r["run_id"] - 1)): r["id"] for r in screening_rows
    }

    # --- worklist and adjudication (first model only: the service's own AI) ------------------
    flag0 = flagged_by_model[0]
    audit = eligible & ~flag0 & (rng.random(n_s) < 0.10)
    in_wl = flag0 | audit
    double = in_wl & (rng.random(n_s) < 0.20)
    # the most recent ~6 weeks are partly not yet reviewed
    last = sdate.max()
    reviewed = in_wl & ((sdate < last - 42) | (rng.random(n_s) < 0.5))
    wl_rows: list[dict[str, Any]] = []
    ev_rows: list[dict[str, Any]] = []
    read1 = np.full(n_s, "", dtype=object)
    known = np.full(n_s, "", dtype=object)
    action = np.full(n_s, "", dtype=object)
    for j in np.flatnonzero(in_wl):
        wid = len(wl_rows) + 1
        wl_rows.append(
            {
                "id": wid,
                "audit_name": "default",
                "study_id": int(j) + 1,
                "screening_id": screening_id.get((int(j), 0)),
                "stratum": "flagged" if flag0[j] else "audit_negative",
                "sampling_probability": 1.0 if flag0[j] else 0.10,
                "double_read": bool(double[j]),
            }
        )
        if not reviewed[j]:
            continue
        ct_day = dt.datetime(1970, 1, 1, 9, tzinfo=dt.UTC) + dt.timedelta(
            days=int(sdate[j])
        )
        for read in (1, 2) if double[j] else (1,):
            agree = rng.random() < 0.95
            conf = bool(truth[j]) == agree
            dec = "confirmed" if conf else "not_confirmed"
            if rng.random() < 0.02:
                dec = "not_assessable"
            prev = "none"
            act = None
            if dec == "confirmed":
                prev = str(rng.choice(["none", "reported", "known_fls"], p=[0.70, 0.18, 0.12]))
                act = str(
                    rng.choice(
                        ["refer_fls", "on_therapy", "not_appropriate", "deceased"],
                        p=[0.78, 0.10, 0.10, 0.02],
                    )
                )
            if read == 1:
                read1[j], known[j], action[j] = dec, prev, act or ""
            ev_rows.append(
                {
                    "id": len(ev_rows) + 1,
                    "event_uid": f"fixture-{seed}-{j + 1}-{read}",
                    "worklist_item_id": wid,
                    "study_id": int(j) + 1,
                    "screening_id": screening_id.get((int(j), 0)),
                    "read_number": read,
                    "reviewer": f"simulated-nurse-{read if rng.random() < 0.7 else 3}",
                    "recorded_at": ct_day + dt.timedelta(days=float(rng.gamma(2.0, 4.0))),
                    "app_version": "fixture",
                    "decision": dec,
                    "not_assessable_reason": "motion" if dec == "not_assessable" else None,
                    "levels": (
                        [{"level": str(rng.choice(["T7", "T8", "T12", "L1"])), "grade": 2}]
                        if dec == "confirmed"
                        else []
                    ),
                    "previously_known": prev if dec == "confirmed" else None,
                    "action": act,
                    "note": None,
                    "supersedes_id": None,
                    "simulated": True,
                }
            )
    # a few corrections: the latest non-superseded event per (study, read) is what counts
    firsts = [e for e in ev_rows if e["read_number"] == 1]
    for e in firsts[:: max(1, len(firsts) // 5 or 1)][:5]:
        new = dict(e)
        new.update(
            id=len(ev_rows) + 1,
            event_uid=e["event_uid"] + "-c",
            recorded_at=e["recorded_at"] + dt.timedelta(hours=2),  # type: ignore[operator]
            supersedes_id=e["id"],
            note="corrected level",
        )
        ev_rows.append(new)

    # --- FLS episodes for the newly identified referred to the FLS (ANATOMY section 6) -------
    ep_rows: list[dict[str, Any]] = []
    for j in np.flatnonzero((read1 == "confirmed") & (action == "refer_fls")):
        pid = int(pat_of[j])
        ct = int(sdate[j])
        ref = ct + int(rng.integers(1, 15))
        assessed = rng.random() < 0.85
        a_day = ref + int(rng.lognormal(math.log(45), 0.75)) if assessed else -1
        dxa = assessed and rng.random() < 0.75
        d_day = ref + int(rng.lognormal(math.log(70), 0.8)) if dxa else -1
        rec = assessed and rng.random() < 0.58
        started = rec and rng.random() < 0.70
        s_day = ref + int(rng.lognormal(math.log(110), 0.5)) if started else -1
        # no event dates after the data cut-off: those patients are not there yet
        cutoff: int = int(sdate.max()) + 30
        a_day, d_day, s_day = (x if x <= cutoff else -1 for x in (a_day, d_day, s_day))
        ep_rows.append(
            {
                "id": len(ep_rows) + 1,
                "source": "fls",
                "record_id": f"FLS{seed % 100:02d}{len(ep_rows) + 1:07d}",
                "patient_key": patient_rows[pid]["patient_key"],
                "study_id": int(j) + 1,
                "accession_number": study_rows[j]["accession_number"],
                "reported_by_radiology": bool(known[j] == "reported"),
                "known_to_fls": bool(known[j] == "known_fls"),
                "on_therapy_before": False,
                "referral_date": _days(np.array([ref]))[0],
                "assessment_date": _days(np.array([a_day]))[0],
                "dxa_date": _days(np.array([d_day]))[0],
                "dxa_t_score": round(float(rng.normal(-2.6, 0.7)), 1) if d_day >= 0 else None,
                "therapy_recommended": bool(rec) if assessed else None,
                "therapy_recommended_date": _days(np.array([a_day]))[0] if rec else None,
                "drug": str(rng.choice(DRUGS)) if s_day >= 0 else None,
                "therapy_start_date": _days(np.array([s_day]))[0],
                "adherent_52w": (
                    bool(rng.random() < 0.5) if s_day >= 0 and s_day + 365 <= cutoff else None
                ),
                "death_date": None,
                "problems": [],
            }
        )

    tables: list[tuple[Any, list[dict[str, Any]]]] = [
        (S.Patient.__table__, patient_rows),
        (S.Study.__table__, study_rows),
        (S.Series.__table__, series_rows),
        (S.ScreeningRun.__table__, run_rows),
        (S.Screening.__table__, screening_rows),
        (S.WorklistItem.__table__, wl_rows),
        (S.AdjudicationEvent.__table__, ev_rows),
        (S.FlsEpisode.__table__, ep_rows),
    ]
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table, rows in tables:
            for k in range(0, len(rows), chunk):
                conn.execute(insert(table), rows[k : k + chunk])
            counts[table.name] = len(rows)
            if table is S.Series.__table__:  # series j is the chosen series of study j
                conn.execute(
                    update(S.Study).values(chosen_series_id=S.Study.id)
                )
    summary = FixtureSummary(counts=counts, seconds=time.perf_counter() - t0)
    log.info("fixture rows written: %s in %.1f s", counts, summary.seconds)
    return summary


def _add_months(d: dt.date, months: int) -> dt.date:
    y, m = divmod(d.month - 1 + months, 12)
    return dt.date(d.year + y, m + 1, 1)


def identifiers(engine: Engine) -> dict[str, list[str]]:
    """Every patient identifier the database holds, by kind (for disclosure tests).

    Returns
    -------
    dict
        ``names``, ``nhs_numbers``, ``mrns``, ``birth_dates`` (ISO), ``study_uids``,
        ``series_uids`` and ``accession_numbers``, each a list of strings.
    """
    from sqlalchemy import select

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


MANIFEST_TEMPLATE = """\
# A fixture site written by fracture_qi.reporting.fixtures.make_fixture_site: synthetic rows
# straight into the database (no DICOM); for tests and benchmarks of the reports and dashboard.
version: 1
name: {name}
synthetic: true
database: sqlite:///{db}
pseudonymisation_key: env:FRACTURE_QI_KEY   # unset: the public demo key (synthetic data only)
outputs: {{reports: reports/}}
"""


def make_fixture_site(
    folder: str | Path,
    *,
    studies: int = 400,
    seed: int = 7,
    models: int = 1,
    name: str | None = None,
) -> Path:
    """Write ``folder/data_manifest.yaml`` and a populated SQLite database beside it.

    Parameters
    ----------
    folder
        New or empty folder.
    studies, seed, models
        See :func:`populate`.
    name
        Manifest name (default ``fixture-seed<seed>``).

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
    manifest.write_text(MANIFEST_TEMPLATE.format(name=name or f"fixture-seed{seed}",
                                                 db="fracture_qi.db"), encoding="utf-8")
    engine = open_store(str(manifest_db_url(out)))
    try:
        populate(engine, studies=studies, seed=seed, models=models)
    finally:
        engine.dispose()
    return manifest


def manifest_db_url(folder: Path) -> str:
    """The SQLite URL of a fixture site's database."""
    return f"sqlite:///{(Path(folder) / 'fracture_qi.db').resolve()}"
