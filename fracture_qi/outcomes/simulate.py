"""A seeded, realistic database population with known truth, for tests and benchmarks.

:func:`populate` writes studies, chosen series, screenings, a worklist (all flagged + an
audit sample of negatives), adjudication events (with second reads and a few corrections)
and FLS episodes straight into the tables with bulk inserts: 500,000 studies take about a
minute on SQLite, which is what the dashboard and ``load_analysis`` benchmarks need. The
rates (prevalence, AI sensitivity/specificity, FLS delays) are parameters, so tests can
check that the measures recover them.

It is not the synthetic CT cohort (:mod:`fracture_qi.synth` makes DICOM images); no pixel
is involved here and every row is marked as simulated where the schema allows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, insert, select

from fracture_qi.store.schema import (
    AdjudicationEvent,
    FlsEpisode,
    Patient,
    Screening,
    ScreeningRun,
    Series,
    Study,
    WorklistItem,
)

logger = logging.getLogger(__name__)

SITES = ("Northgate General", "Riverside Hospital", "St Elsewhere")
SCANNERS = (
    ("SIEMENS", "SOMATOM Definition AS+"),
    ("GE MEDICAL SYSTEMS", "Revolution CT"),
    ("Canon Medical Systems", "Aquilion ONE"),
)
REFERRALS = ("emergency", "inpatient", "outpatient", "gp")
LEVELS = ("T7", "T8", "T11", "T12", "L1", "L2")


@dataclass(frozen=True)
class SimulationParams:
    """Rates used by :func:`populate` (the truth the measures should recover).

    Attributes
    ----------
    prevalence
        Share of eligible studies with a vertebral fracture (as the nurse would confirm).
    sensitivity, specificity
        Of the AI flag against that truth.
    audit_negative_rate
        Sampling probability of AI-negative studies for the audit.
    double_read_rate
        Share of worklist items read by a second nurse.
    nurse_agreement
        Probability the second read agrees with the first.
    adjudicated_share
        Share of worklist items read so far.
    """

    prevalence: float = 0.18
    sensitivity: float = 0.85
    specificity: float = 0.92
    audit_negative_rate: float = 0.1
    double_read_rate: float = 0.2
    nurse_agreement: float = 0.92
    adjudicated_share: float = 0.95
    start: dt.date = dt.date(2024, 1, 1)
    days: int = 730


def _key(seed: int, i: int) -> str:
    return hashlib.sha256(f"simulated-patient|{seed}|{i}".encode()).hexdigest()


def _insert(engine: Engine, table: Any, rows: list[dict[str, Any]], chunk: int = 20_000) -> None:
    with engine.begin() as conn:
        for i in range(0, len(rows), chunk):
            conn.execute(insert(table), rows[i : i + chunk])


def populate(
    engine: Engine,
    n_studies: int = 2000,
    *,
    seed: int = 0,
    params: SimulationParams | None = None,
    model_id: str = "reference",
    model_version: str = "1.0",
    with_fls: bool = True,
) -> pd.DataFrame:
    """Fill an empty database with simulated studies and their pathway.

    Parameters
    ----------
    engine
        A database with the suite's tables (``open_store`` or ``Base.metadata.create_all``).
    n_studies
        Number of CT studies.
    seed
        Random seed: the same seed gives the same rows.
    params
        Rates; see :class:`SimulationParams`.
    model_id, model_version
        The screening model the results are recorded under.
    with_fls
        Also write FLS episodes (referred patients, plus unlinked FLS referrals).

    Returns
    -------
    pandas.DataFrame
        The truth per study: ``study_id, eligible, fracture, ai_flagged, in_worklist,
        stratum``.
    """
    p = params or SimulationParams()
    rng = np.random.default_rng(seed)
    n = int(n_studies)
    n_pat = max(1, int(n * 0.8))
    with engine.connect() as conn:
        base_pid = conn.execute(select(Patient.id).order_by(Patient.id.desc())).scalar() or 0
        base_sid = conn.execute(select(Study.id).order_by(Study.id.desc())).scalar() or 0
        base_ser = conn.execute(select(Series.id).order_by(Series.id.desc())).scalar() or 0
    sexes = rng.choice(["F", "M"], n_pat, p=[0.55, 0.45])
    _insert(
        engine,
        Patient,
        [
            {"id": base_pid + i + 1, "patient_key": _key(seed, base_pid + i), "sex": str(sexes[i])}
            for i in range(n_pat)
        ],
    )
    pat = base_pid + 1 + rng.integers(0, n_pat, n)
    age = np.clip(rng.normal(70, 12, n), 30, 99).round(1)
    days = rng.integers(0, p.days, n)
    dates = [p.start + dt.timedelta(days=int(d)) for d in days]
    site = rng.integers(0, len(SITES), n)
    scanner = (site + rng.integers(0, 2, n)) % len(SCANNERS)
    ref = rng.choice(len(REFERRALS), n, p=[0.35, 0.3, 0.25, 0.1])
    head = rng.random(n) < 0.08
    eligible = (age >= 50) & ~head
    reason: list[str | None] = [
        "NO_SPINE_IN_VIEW" if h else ("AGE_UNDER_50" if a < 50 else None) for h, a in zip(head, age)
    ]
    sid = base_sid + 1 + np.arange(n)
    ser = base_ser + 1 + np.arange(n)
    _insert(
        engine,
        Study,
        [
            {
                "id": int(sid[i]),
                "study_instance_uid": f"2.25.{seed}.{sid[i]}",
                "patient_id": int(pat[i]),
                "accession_number": f"SIM{seed}-{sid[i]}",
                "study_date": dates[i],
                "site": SITES[site[i]],
                "referral_source": REFERRALS[ref[i]],
                "age_years": float(age[i]),
                "eligible": bool(eligible[i]),
                "reason": reason[i],
                "chosen_series_id": None,
            }
            for i in range(n)
        ],
    )
    _insert(
        engine,
        Series,
        [
            {
                "id": int(ser[i]),
                "series_instance_uid": f"2.25.{seed}.{sid[i]}.1",
                "study_id": int(sid[i]),
                "modality": "CT",
                "manufacturer": SCANNERS[scanner[i]][0],
                "model_name": SCANNERS[scanner[i]][1],
                "status": "ok" if eligible[i] else "excluded",
                "chosen": True,
                "n_instances": 300,
            }
            for i in range(n)
        ],
    )
    from sqlalchemy import bindparam, update

    with engine.begin() as conn:
        conn.execute(
            update(Study)
            .where(Study.id == bindparam("b_id"))
            .values(chosen_series_id=bindparam("b_ser")),
            [{"b_id": int(sid[i]), "b_ser": int(ser[i])} for i in range(n)],
        )
    # truth and AI result
    prev = np.clip(p.prevalence * (1 + (age - 70) / 40), 0.01, 0.9)
    fracture = eligible & (rng.random(n) < prev)
    flagged = np.where(fracture, rng.random(n) < p.sensitivity, rng.random(n) > p.specificity)
    status_ok = rng.random(n) > 0.02
    flagged &= eligible & status_ok
    grade = np.where(flagged, rng.integers(2, 4, n), np.where(rng.random(n) < 0.3, 1, 0))
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(ScreeningRun).values(
                model_id=model_id,
                model_version=model_version,
                status="done",
                params={},
            )
        ).inserted_primary_key[0]  # type: ignore[index]
    elig_idx = np.flatnonzero(eligible)
    _insert(
        engine,
        Screening,
        [
            {
                "run_id": run_id,
                "series_id": int(ser[i]),
                "model_id": model_id,
                "model_version": model_version,
                "status": "ok" if status_ok[i] else "error",
                "reason": None if status_ok[i] else "SLICE_GAP",
                "flagged": bool(flagged[i]),
                "max_grade": int(grade[i]) if status_ok[i] else 0,
                "score": float(np.clip(0.8 * flagged[i] + rng.normal(0.1, 0.1), 0, 1)),
                "n_vertebrae": 12,
            }
            for i in elig_idx
        ],
    )
    # worklist
    sampled = flagged | (eligible & status_ok & ~flagged & (rng.random(n) < p.audit_negative_rate))
    dbl = rng.random(n) < p.double_read_rate
    wl_idx = np.flatnonzero(sampled)
    _insert(
        engine,
        WorklistItem,
        [
            {
                "id": int(sid[i]),
                "audit_name": "default",
                "study_id": int(sid[i]),
                "stratum": "flagged" if flagged[i] else "audit_negative",
                "sampling_probability": 1.0 if flagged[i] else p.audit_negative_rate,
                "double_read": bool(dbl[i]),
            }
            for i in wl_idx
        ],
    )
    # adjudication: read 1 (most), read 2 for double reads, some corrections
    export_date = p.start + dt.timedelta(days=p.days + 60)
    events: list[dict[str, Any]] = []
    corrections: list[tuple[int, dict[str, Any]]] = []
    fls: list[dict[str, Any]] = []
    read_done = rng.random(n) < p.adjudicated_share
    delay = np.exp(rng.normal(np.log(7), 0.8, n))
    for i in wl_idx:
        if not read_done[i]:
            continue
        when = dt.datetime.combine(dates[i], dt.time(9)) + dt.timedelta(days=float(delay[i]))
        odd = rng.random()
        if odd < 0.015:
            dec = "not_assessable"
        elif odd < 0.03:
            dec = "indeterminate"
        else:
            dec = "confirmed" if fracture[i] else "not_confirmed"
        g = int(grade[i]) if grade[i] >= 2 else int(rng.integers(1, 4))
        lv = [{"level": str(rng.choice(LEVELS)), "grade": g}] if dec == "confirmed" else []
        pk = str(rng.choice(["none", "reported", "known_fls"], p=[0.7, 0.2, 0.1]))
        act = str(
            rng.choice(
                ["refer_fls", "on_therapy", "not_appropriate", "deceased"], p=[0.8, 0.1, 0.07, 0.03]
            )
        )
        ev = {
            "event_uid": str(uuid.UUID(bytes=rng.bytes(16))),
            "worklist_item_id": int(sid[i]),
            "study_id": int(sid[i]),
            "read_number": 1,
            "reviewer": f"nurse{int(rng.integers(1, 6))}",
            "recorded_at": when,
            "app_version": "simulated",
            "decision": dec,
            "levels": lv,
            "previously_known": pk if dec == "confirmed" else None,
            "action": act if dec == "confirmed" else None,
            "action_reason": "simulated" if act == "not_appropriate" else None,
            "not_assessable_reason": "simulated" if dec == "not_assessable" else None,
            "simulated": True,
        }
        events.append(ev)
        if dbl[i]:
            agree = rng.random() < p.nurse_agreement
            d2 = dec if agree else ("not_confirmed" if dec == "confirmed" else "confirmed")
            g2 = g if agree else max(1, min(3, g + int(rng.choice([-1, 1]))))
            events.append(
                {
                    **ev,
                    "event_uid": str(uuid.UUID(bytes=rng.bytes(16))),
                    "read_number": 2,
                    "reviewer": "nurse9",
                    "recorded_at": when + dt.timedelta(days=2),
                    "decision": d2,
                    "levels": [{"level": lv[0]["level"] if lv else "L1", "grade": g2}]
                    if d2 == "confirmed"
                    else [],
                    "previously_known": pk if d2 == "confirmed" else None,
                    "action": act if d2 == "confirmed" else None,
                    "action_reason": "simulated"
                    if d2 == "confirmed" and act == "not_appropriate"
                    else None,
                    "not_assessable_reason": ev["not_assessable_reason"],
                }
            )
        if rng.random() < 0.02:
            corrections.append((len(events) - (2 if dbl[i] else 1), ev))
        if with_fls and dec == "confirmed" and pk == "none" and act == "refer_fls":
            fls.append(
                _fls_row(
                    rng, seed, int(sid[i]), _key(seed, int(pat[i]) - 1), when.date(), export_date
                )
            )
    _insert(engine, AdjudicationEvent, events)
    if corrections:
        with engine.connect() as conn:
            ids = dict(
                conn.execute(select(AdjudicationEvent.event_uid, AdjudicationEvent.id)).all()
            )
        _insert(
            engine,
            AdjudicationEvent,
            [
                {
                    **ev,
                    "event_uid": str(uuid.UUID(bytes=rng.bytes(16))),
                    "supersedes_id": ids[ev["event_uid"]],
                    "note": "corrected (simulated)",
                    "recorded_at": ev["recorded_at"] + dt.timedelta(hours=3),
                }
                for _, ev in corrections
            ],
        )
    if with_fls:
        # referrals from elsewhere (hip, wrist...): FLS records with no CT here
        for j in range(len(fls) // 2):
            d = p.start + dt.timedelta(days=int(rng.integers(0, p.days)))
            fls.append(_fls_row(rng, seed, None, _key(seed + 1, j), d, export_date))
        _insert(engine, FlsEpisode, fls)
    logger.info(
        "simulated %d studies, %d worklist items, %d events, %d FLS episodes",
        n,
        len(wl_idx),
        len(events) + len(corrections),
        len(fls),
    )
    return pd.DataFrame(
        {
            "study_id": sid,
            "eligible": eligible,
            "fracture": fracture,
            "ai_flagged": flagged,
            "in_worklist": sampled,
            "stratum": [
                "flagged" if f else ("audit_negative" if s else None)
                for f, s in zip(flagged, sampled)
            ],
        }
    )


def _fls_row(
    rng: np.random.Generator,
    seed: int,
    study_id: int | None,
    key: str,
    identified: dt.date,
    export_date: dt.date,
) -> dict[str, Any]:
    """One FLS episode with the delays of ANATOMY.md section 6."""

    def later(median: float, sigma: float) -> dt.date | None:
        d = identified + dt.timedelta(days=int(np.exp(rng.normal(np.log(median), sigma))))
        return d if d <= export_date else None  # not happened by the time of the export

    ref = identified + dt.timedelta(days=int(rng.integers(0, 5)))
    assessed = rng.random() < 0.85
    a = later(45, 0.75) if assessed else None
    ass = max(a, ref) if a is not None else None
    dxa = later(70, 0.8) if rng.random() < 0.75 else None
    rec = bool(ass is not None and rng.random() < 0.58)
    s = later(110, 0.5) if rec and rng.random() < 0.7 else None
    start = max(s, ass) if s is not None and ass is not None else None
    followed = start is not None and start + dt.timedelta(days=364) <= export_date
    adherent = bool(rng.random() < 0.5) if followed else None
    death = later(300, 0.8) if rng.random() < 0.03 else None
    return {
        "source": "simulated",
        "record_id": f"{seed}-{study_id or 'x'}-{rng.integers(10**12)}",
        "patient_key": key,
        "study_id": study_id,
        "reported_by_radiology": bool(rng.random() < 0.3),
        "known_to_fls": False,
        "on_therapy_before": False,
        "referral_date": ref,
        "assessment_date": ass,
        "dxa_date": dxa,
        "dxa_t_score": float(np.round(rng.normal(-2.4, 0.8), 1)) if dxa else None,
        "therapy_recommended": rec if ass is not None else None,
        "therapy_recommended_date": ass if rec else None,
        "drug": str(rng.choice(["alendronate", "zoledronate", "denosumab"])) if rec else None,
        "therapy_start_date": start,
        "adherent_52w": adherent,
        "death_date": death,
        "problems": [],
    }
