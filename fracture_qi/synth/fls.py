"""Synthetic Fracture Liaison Service records with realistic delays, gaps and a few errors.

Who gets a record:

* patients whose eligible CT shows a true fracture (fully in view): with probability 0.9
  (found by radiology or by the screening programme), counted from that CT's date;
* about 8 % of the other patients aged 50+: referrals for other fractures (no CT link,
  accession blank).

Timings follow ANATOMY section 6 (log-normal delays from identification; assessment,
DXA, treatment recommendation and start, 52-week adherence), censored at the extract date;
the FLS-DB KPI fields (index fracture site, falls assessment, strength and balance training,
follow-up contact) are drawn to match the FLS-DB 2019 national averages;
``reported_by_radiology`` follows ANATOMY 4c by grade. A few rows are made impossible on
purpose (therapy started before the CT; assessment after death) and listed in
``truth/fls_problems.csv`` so the outcomes validation can be tested.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.outcomes.records import FLS_SCHEMA
from fracture_qi.synth import priors

#: the export columns, in the order of the declared FLS schema the importer validates against
FLS_COLUMNS: tuple[str, ...] = tuple(f.name for f in FLS_SCHEMA)
PROBLEM_COLUMNS: tuple[str, ...] = ("record_id", "nhs_number", "problem", "field", "detail")

# The FLS-DB KPI fields (KPIs 3, 6, 8, 9). ``[estimate]`` shapes chosen to land near the FLS-DB
# 2019 national averages of ANATOMY.md section 6 (falls assessment 62 %, strength and balance
# by 16 weeks 6.1 %, 16-week follow-up 20.7 %).
#: index fracture site of FLS referrals that are not a CT-found vertebral fracture (FLS-DB
#: index fracture mix 2017, spine 6 % / hip 19 % / other 69 %, ANATOMY section 6; "other" split
#: [estimate])
OTHER_SITE_MIX: dict[str, float] = {"hip": 0.22, "wrist": 0.30, "humerus": 0.16,
                                    "pelvis": 0.07, "other": 0.25}
#: P(falls risk assessed or referred | FLS assessment), at the assessment
P_FALLS_ASSESSED = 0.73
#: P(strength and balance programme started | assessed, not a hip fracture); days after the
#: assessment, uniform
P_STRENGTH_BALANCE = 0.09
STRENGTH_BALANCE_DAYS = (14, 90)
#: P(a follow-up contact | therapy recommended); days after identification (ANATOMY
#: section 6: 16-week monitoring contact, day 100-130)
P_FOLLOWUP = 0.45
FOLLOWUP_DAYS = (100, 130)


def _lognormal_days(rng: np.random.Generator, median: float, sigma: float) -> int:
    return max(1, int(round(median * float(np.exp(rng.normal(0.0, sigma))))))


def t_score_from_hu(hu: float, rng: np.random.Generator) -> float:
    """A plausible DXA T-score for an L1 trabecular HU (ANATOMY 3a [UK23] means), with scatter.

    Examples
    --------
    >>> round(t_score_from_hu(118, np.random.default_rng(0)) + 2.5, 0) in (-1.0, 0.0, 1.0)
    True
    """
    t = -2.5 + (hu - 118.0) * (2.0 / 60.0) + rng.normal(0, 0.6)
    return round(float(np.clip(t, -5.0, 3.0)), 1)


def _iso(d: dt.date | None) -> str:
    return d.isoformat() if d is not None else ""


def make_fls_records(
    patients: pd.DataFrame,
    studies: pd.DataFrame,
    seed: int,
    extract_date: dt.date,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build ``fls_records.csv`` and ``truth/fls_problems.csv`` tables.

    Parameters
    ----------
    patients
        Truth patients table (patient_id, nhs_number, mrn, bmd_l1_hu, ...).
    studies
        Truth studies table, first copies only (study_date, accession_number, age_years,
        has_fracture, max_grade, expected_eligible, ...).
    seed
        Cohort seed.
    extract_date
        Events after it are unknown (blank).

    Returns
    -------
    records, problems : pandas.DataFrame
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 6]))
    rows: list[dict[str, Any]] = []
    by_patient = studies.sort_values(["patient_id", "study_date"]).groupby("patient_id")
    for _, pat in patients.sort_values("patient_id").iterrows():
        sts = by_patient.get_group(pat.patient_id) if pat.patient_id in by_patient.groups else None
        if sts is None:
            continue
        frac = sts[(sts.expected_eligible == 1) & (sts.has_fracture == 1)]
        if len(frac):
            if rng.random() >= 0.9:
                continue
            st = frac.iloc[0]
            ct_date = dt.date.fromisoformat(str(st.study_date))
            grade = int(st.max_grade)
            reported = int(rng.random() < priors.P_REPORTED_BY_GRADE.get(grade, 0.0))
            accession = str(st.accession_number) if rng.random() > 0.05 else ""
            start = ct_date
            site = "spine"
        else:
            old = sts[sts.age_years >= 50]
            if not len(old) or rng.random() >= 0.08:
                continue
            reported, accession, grade = 0, "", 0
            site = _choice(rng, OTHER_SITE_MIX)
            start = dt.date.fromisoformat(str(old.iloc[0].study_date)) + dt.timedelta(
                days=int(rng.integers(-200, 200))
            )
            ct_date = None
        row = _pathway(
            rng, pat, start, ct_date, reported, accession, float(pat.bmd_l1_hu), extract_date
        )
        row.update(_kpi_fields(rng, row, start, site, extract_date))
        rows.append(row)
    records = pd.DataFrame(rows, columns=list(FLS_COLUMNS) + ["_ct_date"])
    records["record_id"] = [f"FLS{seed % 1000:03d}-{i + 1:05d}" for i in range(len(records))]
    problems = _plant_problems(rng, records)
    return records[list(FLS_COLUMNS)], problems


def _pathway(
    rng: np.random.Generator,
    pat: pd.Series,
    start: dt.date,
    ct_date: dt.date | None,
    reported: int,
    accession: str,
    bmd_hu: float,
    extract: dt.date,
) -> dict[str, Any]:
    day = dt.timedelta(days=1)

    def known(d: dt.date | None) -> dt.date | None:
        return d if d is not None and d <= extract else None

    known_before = int(rng.random() < 0.12)
    on_therapy = int(known_before and rng.random() < 0.55)
    death = start + _lognormal_days(rng, 300, 0.8) * day if rng.random() < 0.07 else None

    def alive(d: dt.date | None) -> bool:
        return d is not None and (death is None or d < death)

    referral = start + _lognormal_days(rng, 8, 0.7) * day
    assess = (
        start
        + _lognormal_days(rng, priors.FLS_ASSESSMENT["median"], priors.FLS_ASSESSMENT["sigma"])
        * day
    )
    if rng.random() >= priors.FLS_ASSESSMENT["p"] or not alive(assess):
        assess = None
    assess = max(assess, referral) if assess is not None else None
    dxa = start + _lognormal_days(rng, priors.FLS_DXA["median"], priors.FLS_DXA["sigma"]) * day
    if rng.random() >= priors.FLS_DXA["p"] or not alive(dxa):
        dxa = None
    t_score: float | None = t_score_from_hu(bmd_hu, rng) if dxa is not None else None
    if t_score is not None and rng.random() < 0.04:
        t_score = None  # result not transcribed
    rec = assess is not None and rng.random() < priors.FLS_THERAPY_RECOMMENDED_P
    drug = str(_choice(rng, priors.FLS_DRUG_MIX)) if rec else ""
    started = None
    if rec and rng.random() < priors.FLS_THERAPY_START["p"]:
        started = (
            start
            + _lognormal_days(
                rng, priors.FLS_THERAPY_START["median"], priors.FLS_THERAPY_START["sigma"]
            )
            * day
        )
        started = max(started, assess + dt.timedelta(days=int(rng.integers(0, 15))))  # type: ignore[operator]
        if not alive(started):
            started = None
    adherent: int | str = ""
    if (
        started is not None
        and known(started + 365 * day)
        and (death is None or death > started + 365 * day)
    ):
        adherent = int(rng.random() < priors.FLS_ADHERENT_52W_P)
    referral_out = known(referral) if rng.random() > 0.03 else None  # a few referrals undated
    mrn = str(pat.mrn) if rng.random() > 0.1 else ""
    return {
        "record_id": "",
        "nhs_number": str(pat.nhs_number),
        "mrn": mrn,
        "accession_number": accession,
        "reported_by_radiology": reported,
        "known_to_fls_before": known_before,
        "on_therapy_before": on_therapy,
        "referral_date": _iso(referral_out),
        "fls_assessment_date": _iso(known(assess)),
        "dxa_date": _iso(known(dxa)),
        "dxa_t_score": "" if t_score is None or not known(dxa) else t_score,
        "therapy_recommended": int(bool(rec and known(assess))),
        "therapy_recommended_date": _iso(known(assess)) if rec else "",
        "drug": drug if known(assess) else "",
        "therapy_start_date": _iso(known(started)),
        "adherent_52w": adherent,
        "death_date": _iso(known(death)),
        "_ct_date": ct_date,
    }


def _kpi_fields(rng: np.random.Generator, row: dict[str, Any], start: dt.date, site: str,
                extract: dt.date) -> dict[str, Any]:
    """Index fracture site, falls assessment, strength and balance start, follow-up contact
    (the FLS-DB KPI fields), consistent with the pathway already drawn in *row*."""
    assess = dt.date.fromisoformat(row["fls_assessment_date"]) if row["fls_assessment_date"] else None
    death = dt.date.fromisoformat(row["death_date"]) if row["death_date"] else None

    def known(d: dt.date | None) -> str:
        ok = d is not None and d <= extract and (death is None or d < death)
        return d.isoformat() if ok and d is not None else ""

    falls = assess if assess is not None and rng.random() < P_FALLS_ASSESSED else None
    sb = None
    if assess is not None and site != "hip" and rng.random() < P_STRENGTH_BALANCE:
        sb = assess + dt.timedelta(days=int(rng.integers(*STRENGTH_BALANCE_DAYS)))
    follow = None
    if row["therapy_recommended"] and rng.random() < P_FOLLOWUP:
        follow = start + dt.timedelta(days=int(rng.integers(*FOLLOWUP_DAYS)))
        if assess is not None:
            follow = max(follow, assess + dt.timedelta(days=1))
    return {"index_fracture_site": site, "falls_assessment_date": known(falls),
            "strength_balance_date": known(sb), "followup_date": known(follow)}


def _choice(rng: np.random.Generator, table: dict[str, float]) -> str:
    keys = list(table)
    w = np.array([table[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _plant_problems(rng: np.random.Generator, records: pd.DataFrame) -> pd.DataFrame:
    """Make a few rows impossible on purpose; return what was planted."""
    problems: list[dict[str, str]] = []
    n = len(records)
    if n == 0:
        return pd.DataFrame(columns=list(PROBLEM_COLUMNS))
    k = max(1, n // 25)
    with_ct = [i for i in range(n) if records.at[i, "_ct_date"] is not None]
    with_assess = [i for i in range(n) if records.at[i, "fls_assessment_date"]]
    pick_a = list(rng.permutation(with_ct))[:k] if with_ct else []
    rest = [i for i in with_assess if i not in pick_a]
    pick_b = list(rng.permutation(rest))[:k] if rest else []
    for i in pick_a:
        ct = records.at[i, "_ct_date"]
        bad = ct - dt.timedelta(days=int(rng.integers(10, 60)))
        records.at[i, "therapy_start_date"] = bad.isoformat()
        if not records.at[i, "drug"]:
            records.at[i, "drug"] = "alendronate"
        problems.append(
            {
                "record_id": records.at[i, "record_id"],
                "nhs_number": records.at[i, "nhs_number"],
                "problem": "THERAPY_BEFORE_CT",
                "field": "therapy_start_date",
                "detail": f"therapy_start_date {bad.isoformat()} is before the index CT "
                f"of {ct.isoformat()}",
            }
        )
    for i in pick_b:
        a = dt.date.fromisoformat(records.at[i, "fls_assessment_date"])
        death = a - dt.timedelta(days=int(rng.integers(5, 30)))
        records.at[i, "death_date"] = death.isoformat()
        problems.append(
            {
                "record_id": records.at[i, "record_id"],
                "nhs_number": records.at[i, "nhs_number"],
                "problem": "ASSESSMENT_AFTER_DEATH",
                "field": "fls_assessment_date",
                "detail": f"fls_assessment_date {a.isoformat()} is after death_date "
                f"{death.isoformat()}",
            }
        )
    return pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS))
