"""The generator: a simulated service's database rows, with known truth.

Priors (ANATOMY.md): vertebral fracture prevalence about 18-20 % in the over-50s rising with
age (section 4a); an AI with sensitivity about 0.85 and specificity about 0.93; nurses who
read nearly as the truth (the first read is the reference standard) and agree with each other
about 92 % of the time; a 20 % double-read sample and a 10 % audit
sample of AI-negatives; FLS delays from the section 6 table (assessment median 45 days,
DXA 70, therapy started in 70 % of those recommended, median about 110 days). A *QI change*
(``change_month``) switches the FLS pathway from ``fls_before`` to ``fls_after``, so the SPC
charts of a service history show the shift a QI lead wants to present.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, insert, select, update

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
LEVELS = ("T7", "T8", "T11", "T12", "L1", "L2")
#: index fracture sites of FLS referrals that did not come from a CT here (FLS-DB 2017 mix:
#: hip 19 %, other 69 %; ANATOMY section 6; the split of "other" [estimate])
OTHER_SITE_MIX = {"hip": 0.24, "wrist": 0.30, "humerus": 0.16, "pelvis": 0.07, "other": 0.23}


@dataclass(frozen=True)
class ModelSpec:
    """One AI model's operating point and how much of the service it screened.

    Attributes
    ----------
    model_id, version
        As recorded in ``screenings``.
    sensitivity, specificity
        Of the study flag against the truth.
    p_error, p_not_assessable
        Shares of eligible studies ending ``error`` / ``excluded`` with
        ``NO_ASSESSABLE_VERTEBRAE``.
    first_month, share
        The model screened studies from this month (0-based) on, and this share of them (a
        trial runs on part of the service).
    """

    model_id: str
    version: str
    sensitivity: float = 0.85
    specificity: float = 0.93
    p_error: float = 0.005
    p_not_assessable: float = 0.015
    first_month: int = 0
    share: float = 1.0


REFERENCE = ModelSpec("reference", "1.0")
VENDOR = ModelSpec("vendor-x", "2.3", sensitivity=0.78, specificity=0.96, p_error=0.01,
                   p_not_assessable=0.01)


@dataclass(frozen=True)
class FlsPathway:
    """The FLS pathway's probabilities and log-normal delays (days from identification)."""

    p_assessed: float = 0.85
    assess_median: float = 45.0
    assess_sigma: float = 0.75
    p_dxa: float = 0.75
    dxa_median: float = 70.0
    dxa_sigma: float = 0.8
    p_recommended: float = 0.58
    p_started: float = 0.70
    start_median: float = 110.0
    start_sigma: float = 0.5
    p_adherent: float = 0.5
    p_falls: float = 0.70
    p_strength_balance: float = 0.08
    p_followup: float = 0.35
    p_death: float = 0.03
    #: a key field left blank (FLS-DB KPI 1)
    p_field_missing: float = 0.04


@dataclass(frozen=True)
class ServiceParams:
    """A simulated service (every rate is a parameter, so tests can recover it).

    The first :class:`ModelSpec` is the service's own AI: the worklist is built from it.
    """

    start: dt.date = dt.date(2024, 1, 1)
    months: int = 24
    prevalence: float = 0.18
    sensitivity: float = 0.85
    specificity: float = 0.92
    models: tuple[ModelSpec, ...] = ()
    p_head_ct: float = 0.07
    audit_negative_rate: float = 0.1
    double_read_rate: float = 0.2
    nurse_agreement: float = 0.92
    #: the first read against the truth (the reference standard: near-perfect by design)
    read_accuracy: float = 0.99
    adjudicated_share: float = 0.95
    read_median_days: float = 7.0
    p_correction: float = 0.02
    fls_before: FlsPathway = field(default_factory=FlsPathway)
    fls_after: FlsPathway | None = None
    change_month: int | None = None
    change_label: str = ""
    #: FLS referrals from elsewhere (hip, wrist...) per CT-linked referral
    unlinked_per_linked: float = 0.5
    #: a spell of unassessable studies: (site, first month, last month, extra share)
    unassessable_spell: tuple[str, int, int, float] | None = None

    def model_specs(self, n: int = 1) -> tuple[ModelSpec, ...]:
        if self.models:
            return self.models
        first = replace(REFERENCE, sensitivity=self.sensitivity, specificity=self.specificity)
        return (first, VENDOR)[:n]


#: what :mod:`fracture_qi.outcomes.simulate` called it
SimulationParams = ServiceParams


@dataclass
class SimulationResult:
    """What :func:`populate` wrote: the truth per study, rows per table, seconds."""

    truth: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


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


EPOCH = dt.date(1970, 1, 1)


def _date(day: int | None) -> dt.date | None:
    return None if day is None or day < 0 else EPOCH + dt.timedelta(days=int(day))


def _epoch(d: dt.date) -> int:
    return (d - EPOCH).days


def _add_months(d: dt.date, months: int) -> dt.date:
    y, m = divmod(d.month - 1 + months, 12)
    return dt.date(d.year + y, m + 1, 1)


def _insert(conn: Any, table: Any, rows: list[dict[str, Any]], chunk: int) -> None:
    for k in range(0, len(rows), chunk):
        conn.execute(insert(table), rows[k: k + chunk])


def populate(
    engine: Engine,
    studies: int = 2000,
    *,
    seed: int = 0,
    params: ServiceParams | None = None,
    models: int = 1,
    secret: bytes | None = None,
    with_fls: bool = True,
    chunk: int = 20_000,
) -> SimulationResult:
    """Fill an empty fracture-qi database with a simulated service.

    Parameters
    ----------
    engine
        A database whose tables exist (``open_store`` or ``Base.metadata.create_all``) and
        hold no rows yet.
    studies
        CT studies (about 1.25 per patient), spread uniformly over ``params.months``.
    seed
        The same seed writes the same rows.
    params
        Rates and delays (:class:`ServiceParams`).
    models
        Without ``params.models``: 1 (the service's AI) or 2 (plus a vendor model that
        screened every eligible study too).
    secret
        Pseudonymisation secret for the patient keys (the demo key by default).
    with_fls
        Also write FLS episodes.
    chunk
        Rows per ``executemany`` batch.

    Returns
    -------
    SimulationResult
        ``truth`` (``study_id, eligible, fracture, ai_flagged`` (first model),
        ``in_worklist, stratum``), rows per table, seconds.

    Raises
    ------
    ValueError
        For fewer than one study or an unknown number of models.

    Examples
    --------
    >>> from fracture_qi.store.db import connect
    >>> eng = connect("sqlite://")
    >>> S.Base.metadata.create_all(eng)
    >>> populate(eng, 50, seed=1).counts["studies"]
    50
    """
    t0 = time.perf_counter()
    if studies < 1:
        raise ValueError(f"studies={studies}: need at least one study")
    if models not in (1, 2):
        raise ValueError(f"models={models}: the generator knows 1 or 2 models")
    p = params or ServiceParams()
    specs = p.model_specs(models)
    d = _Draw(p, np.random.default_rng(seed), seed, secret or DEMO_KEY.encode(), int(studies))
    _draw_cohort(d)
    _draw_screenings(d, specs)
    _draw_reads(d)
    _draw_episodes(d, with_fls)
    truth_df = pd.DataFrame({
        "study_id": np.arange(1, d.n_s + 1), "eligible": d.a["eligible"],
        "fracture": d.a["truth"], "ai_flagged": d.a["flag0"], "in_worklist": d.a["in_wl"],
        "stratum": np.where(d.a["flag0"], "flagged",
                            np.where(d.a["audit"], "audit_negative", None)),
    })
    counts = _write(engine, d, chunk)
    seconds = time.perf_counter() - t0
    log.info("simulated service rows written: %s in %.1f s", counts, seconds)
    return SimulationResult(truth_df, counts, seconds)


@dataclass
class _Draw:
    """What one simulation has drawn so far (the stages of :func:`populate` fill it in)."""

    p: ServiceParams
    rng: np.random.Generator
    seed: int
    secret: bytes
    n_s: int
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    a: dict[str, Any] = field(default_factory=dict)


def _draw_cohort(d: _Draw) -> None:
    """Patients, studies and their chosen series, with the truth (fracture or not)."""
    p, rng, seed, n_s = d.p, d.rng, d.seed, d.n_s
    key_secret = d.secret
    n_p = max(1, int(round(n_s / 1.25)))
    sex = np.where(rng.random(n_p) < 0.55, "F", "M")
    age_first = np.clip(rng.normal(70, 11, n_p), 30, 97)
    nhs = _nhs_numbers(rng, n_p)
    fam = rng.integers(0, len(FAMILY), n_p)
    giv = rng.integers(0, len(GIVEN), n_p)
    # age-dependent prevalence of a vertebral fracture (ANATOMY 4a), scaled to p.prevalence
    p_frac = np.clip(p.prevalence * (1 + (age_first - 70) / 25), 0.01, 0.6)
    p_frac[age_first < 50] = 0.02
    has_frac = rng.random(n_p) < p_frac
    pat_of = np.concatenate([np.arange(n_p), rng.integers(0, n_p, n_s - n_p)])[:n_s]
    rng.shuffle(pat_of)
    first_day = _epoch(p.start)
    span = _epoch(_add_months(p.start, p.months)) - first_day
    sdate = first_day + rng.integers(0, span, n_s)
    order = np.argsort(sdate, kind="stable")
    pat_of, sdate = pat_of[order], sdate[order]
    month_i = np.array([(d.year - p.start.year) * 12 + d.month - p.start.month
                        for d in (EPOCH + dt.timedelta(days=int(x)) for x in sdate)])
    age = age_first[pat_of] + (sdate - sdate.min()) / 365.25
    birth = (sdate - age * 365.25).astype(np.int64)
    site_i = rng.integers(0, len(SITES), n_s)
    scan_i = rng.integers(0, 2, n_s)
    ref_i = rng.choice(len(REFERRALS), n_s, p=REFERRAL_P)
    head = rng.random(n_s) < p.p_head_ct
    eligible = (age >= 50) & ~head
    reason = np.where(age < 50, "AGE_UNDER_50", np.where(head, "NO_SPINE_IN_VIEW", ""))
    truth = has_frac[pat_of] & eligible

    patient_rows = [
        {"id": i + 1, "patient_key": patient_key(key_secret, nhs[i]), "nhs_number": nhs[i],
         "mrn": f"RX{seed % 100:02d}{i + 1:07d}",
         "name": f"{FAMILY[fam[i]].upper()}^{GIVEN[giv[i]]}", "birth_date": None,
         "sex": str(sex[i])}
        for i in range(n_p)
    ]
    for j in range(n_s - 1, -1, -1):  # earliest study wins: birth date from age at first CT
        patient_rows[pat_of[j]]["birth_date"] = _date(int(birth[j]))
    uid_root = f"2.25.{seed}{n_s}"
    study_rows, series_rows = [], []
    for j in range(n_s):
        site = SITES[site_i[j]]
        man, mod = SCANNERS[site][scan_i[j]]
        study_rows.append({
            "id": j + 1, "study_instance_uid": f"{uid_root}.1.{j + 1}",
            "patient_id": int(pat_of[j]) + 1, "accession_number": f"ACC{seed % 100:02d}{j + 1:08d}",
            "study_date": _date(int(sdate[j])),
            "description": "CT HEAD" if head[j] else "CT CHEST ABDOMEN PELVIS", "site": site,
            "referral_source": REFERRALS[ref_i[j]], "age_years": round(float(age[j]), 1),
            "source": "simulated", "eligible": bool(eligible[j]),
            "reason": str(reason[j]) or None, "chosen_series_id": None,
        })
        series_rows.append({
            "id": j + 1, "series_instance_uid": f"{uid_root}.2.{j + 1}", "study_id": j + 1,
            "path": None, "modality": "CT", "series_number": 3, "description": "Bone 1.0",
            "manufacturer": man, "model_name": mod, "kernel": "B70f", "slice_thickness": 1.0,
            "n_instances": 400, "status": "ok" if eligible[j] else "excluded",
            "reason": str(reason[j]) or None, "chosen": True,
        })

    d.rows.update(patients=patient_rows, studies=study_rows, series=series_rows)
    d.a.update(pat_of=pat_of, sdate=sdate, month_i=month_i, site_i=site_i,
               eligible=eligible, truth=truth, first_day=first_day, span=span)


def _draw_screenings(d: _Draw, specs: tuple[ModelSpec, ...]) -> None:
    """One screening run per model and its counted results (ok / error / excluded)."""
    p, rng, seed, n_s = d.p, d.rng, d.seed, d.n_s
    eligible, truth = d.a["eligible"], d.a["truth"]
    site_i, month_i = d.a["site_i"], d.a["month_i"]
    run_rows: list[dict[str, Any]] = []
    screening_rows: list[dict[str, Any]] = []
    flagged_by_model: list[np.ndarray] = []
    ok_by_model: list[np.ndarray] = []
    screening_id: dict[tuple[int, int], int] = {}
    spell = np.zeros(n_s, dtype=float)
    if p.unassessable_spell:
        site, m0, m1, extra = p.unassessable_spell
        spell[(np.array(SITES)[site_i] == site) & (month_i >= m0) & (month_i <= m1)] = extra
    for m, spec in enumerate(specs):
        run_rows.append({"id": m + 1, "model_id": spec.model_id, "model_version": spec.version,
                         "params": {"simulation_seed": seed}, "device": "cpu",
                         "host": "simulated", "code_version": "simulated", "status": "finished"})
        did = eligible & (month_i >= spec.first_month) & (rng.random(n_s) < spec.share)
        u = rng.random(n_s)
        flag = np.where(truth, u < spec.sensitivity, u > spec.specificity)
        v = rng.random(n_s)
        err = v < spec.p_error
        na = ~err & (v < spec.p_error + spec.p_not_assessable + spell)
        ok = did & ~err & ~na
        flag &= ok
        grade = np.where(flag, rng.choice([2, 3], n_s, p=[0.6, 0.4]),
                         np.where(ok & (rng.random(n_s) < 0.3), 1, 0))
        flagged_by_model.append(flag)
        ok_by_model.append(ok)
        for j in np.flatnonzero(did):
            sid = len(screening_rows) + 1
            screening_id[(int(j), m)] = sid
            status = "ok" if ok[j] else ("error" if err[j] else "excluded")
            screening_rows.append({
                "id": sid, "run_id": m + 1, "series_id": int(j) + 1, "model_id": spec.model_id,
                "model_version": spec.version, "status": status,
                "reason": None if ok[j] else ("SCREEN_FAILED" if err[j]
                                               else "NO_ASSESSABLE_VERTEBRAE"),
                "flagged": bool(flag[j]),
                "score": round(float(0.5 + 0.5 * u[j] if flag[j] else 0.5 * u[j]), 4),
                "max_grade": int(grade[j]), "n_vertebrae": 12 if ok[j] else 0, "seconds": 3.0,
            })
        run_rows[-1].update(n_ok=int(ok.sum()), n_error=int((did & ~ok).sum()))

    d.rows.update(screening_runs=run_rows, screenings=screening_rows)
    d.a.update(flag0=flagged_by_model[0], ok0=ok_by_model[0], screening_id=screening_id)


def _draw_reads(d: _Draw) -> None:
    """The worklist of the first model, nurse reads (double reads, corrections)."""
    p, rng, n_s = d.p, d.rng, d.n_s
    truth, sdate = d.a["truth"], d.a["sdate"]
    screening_id, screening_rows = d.a["screening_id"], d.rows["screenings"]
    flag0, ok0 = d.a["flag0"], d.a["ok0"]
    audit = ok0 & ~flag0 & (rng.random(n_s) < p.audit_negative_rate)
    in_wl = flag0 | audit
    double = in_wl & (rng.random(n_s) < p.double_read_rate)
    last = int(sdate.max())
    reviewed = in_wl & (rng.random(n_s) < p.adjudicated_share)
    reviewed &= (sdate < last - 42) | (rng.random(n_s) < 0.5)  # recent weeks partly unread
    delay = np.exp(rng.normal(math.log(p.read_median_days), 0.8, n_s))
    wl_rows: list[dict[str, Any]] = []
    ev_rows: list[dict[str, Any]] = []
    read1 = np.full(n_s, "", dtype=object)
    known = np.full(n_s, "", dtype=object)
    action = np.full(n_s, "", dtype=object)
    read_day = np.full(n_s, -1, dtype=np.int64)
    for j in np.flatnonzero(in_wl):
        wid = len(wl_rows) + 1
        wl_rows.append({"id": wid, "audit_name": "default", "study_id": int(j) + 1,
                        "screening_id": screening_id.get((int(j), 0)),
                        "stratum": "flagged" if flag0[j] else "audit_negative",
                        "sampling_probability": 1.0 if flag0[j] else p.audit_negative_rate,
                        "double_read": bool(double[j])})
        if not reviewed[j]:
            continue
        when = dt.datetime(1970, 1, 1, 9, tzinfo=dt.UTC) + dt.timedelta(
            days=int(sdate[j]) + float(delay[j]))
        read_day[j] = _epoch(when.date())
        odd = rng.random()
        dec = ("not_assessable" if odd < 0.015 else "indeterminate" if odd < 0.03
               else ("confirmed" if truth[j] == (rng.random() < p.read_accuracy)
                     else "not_confirmed"))
        prev = act = None
        lv: list[dict[str, Any]] = []
        if dec == "confirmed":
            prev = str(rng.choice(["none", "reported", "known_fls"], p=[0.70, 0.18, 0.12]))
            act = str(rng.choice(["refer_fls", "on_therapy", "not_appropriate", "deceased"],
                                 p=[0.80, 0.10, 0.08, 0.02]))
            g = int(screening_rows[screening_id[(int(j), 0)] - 1]["max_grade"]) or 2
            lv = [{"level": str(rng.choice(LEVELS)), "grade": g}]
        read1[j], known[j], action[j] = dec, prev or "", act or ""
        first = {
            "event_uid": str(uuid.UUID(bytes=rng.bytes(16))), "worklist_item_id": wid,
            "study_id": int(j) + 1, "screening_id": screening_id.get((int(j), 0)),
            "read_number": 1, "reviewer": f"simulated-nurse-{int(rng.integers(1, 6))}",
            "recorded_at": when, "app_version": "simulated", "decision": dec, "levels": lv,
            "previously_known": prev, "action": act,
            "action_reason": "simulated" if act == "not_appropriate" else None,
            "not_assessable_reason": "simulated" if dec == "not_assessable" else None,
            "note": None, "supersedes_id": None, "simulated": True,
        }
        ev_rows.append(first)
        if double[j]:
            agree = rng.random() < p.nurse_agreement
            d2 = dec if agree else ("not_confirmed" if dec == "confirmed" else "confirmed")
            g2 = lv[0]["grade"] if lv else 2
            if not agree:
                g2 = int(np.clip(g2 + rng.choice([-1, 1]), 1, 3))
            ev_rows.append({**first, "event_uid": str(uuid.UUID(bytes=rng.bytes(16))),
                            "read_number": 2, "reviewer": "simulated-nurse-9",
                            "recorded_at": when + dt.timedelta(days=2), "decision": d2,
                            "levels": [{"level": lv[0]["level"] if lv else "L1", "grade": g2}]
                            if d2 == "confirmed" else [],
                            "previously_known": prev if d2 == "confirmed" else None,
                            "action": act if d2 == "confirmed" else None,
                            "action_reason": None})
    # corrections: the latest event of a chain counts
    corrections = [e for e in ev_rows if e["read_number"] == 1 and rng.random() < p.p_correction]

    d.rows.update(worklist_items=wl_rows, adjudication_events=ev_rows)
    d.a.update(audit=audit, in_wl=in_wl, read1=read1, known=known, action=action,
               read_day=read_day, corrections=corrections, last=last)


def _draw_episodes(d: _Draw, with_fls: bool) -> None:
    """FLS episodes: CT-found fractures referred by the nurses, and referrals from
    elsewhere, each on the pathway of its month (before or after the QI change)."""
    p, rng, seed = d.p, d.rng, d.seed
    key_secret = d.secret
    read1, known, action, read_day = (d.a[k] for k in ("read1", "known", "action", "read_day"))
    sdate, month_i, pat_of = d.a["sdate"], d.a["month_i"], d.a["pat_of"]
    first_day, span, last = d.a["first_day"], d.a["span"], d.a["last"]
    patient_rows, study_rows = d.rows["patients"], d.rows["studies"]
    ep_rows: list[dict[str, Any]] = []
    cutoff_day = last + 30
    if with_fls:
        referred = np.flatnonzero((read1 == "confirmed") & (known == "none")
                                  & (action == "refer_fls"))
        for j in referred:
            pathway = _pathway_for(p, int(month_i[j]))
            ident = int(read_day[j]) if read_day[j] >= 0 else int(sdate[j])
            ep_rows.append(_episode(rng, pathway, seed, len(ep_rows), int(sdate[j]), ident,
                                    cutoff_day, int(j) + 1,
                                    patient_rows[int(pat_of[j])]["patient_key"],
                                    study_rows[j]["accession_number"], "spine"))
        n_unlinked = int(round(len(referred) * p.unlinked_per_linked))
        sites = list(OTHER_SITE_MIX)
        w = np.array([OTHER_SITE_MIX[s] for s in sites])
        for k in range(n_unlinked):
            day = first_day + int(rng.integers(0, span))
            month = (_date(day).year - p.start.year) * 12 + _date(day).month - p.start.month  # type: ignore[union-attr]
            pathway = _pathway_for(p, month)
            key = patient_key(key_secret, f"unlinked-{seed}-{k}")
            site = sites[int(rng.choice(len(sites), p=w / w.sum()))]
            ep_rows.append(_episode(rng, pathway, seed, len(ep_rows), day, day, cutoff_day, None,
                                    key, None, site))

    d.rows["fls_episodes"] = ep_rows
def _write(engine: Engine, d: _Draw, chunk: int) -> dict[str, int]:
    """Insert every drawn row (series before the chosen-series update), then corrections."""
    rows = d.rows
    rng = d.rng
    corrections = d.a["corrections"]
    patient_rows, study_rows, series_rows = rows["patients"], rows["studies"], rows["series"]
    run_rows, screening_rows = rows["screening_runs"], rows["screenings"]
    wl_rows, ev_rows, ep_rows = (rows["worklist_items"], rows["adjudication_events"],
                                 rows.get("fls_episodes", []))
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table, rows in ((S.Patient.__table__, patient_rows), (S.Study.__table__, study_rows),
                            (S.Series.__table__, series_rows),
                            (S.ScreeningRun.__table__, run_rows),
                            (S.Screening.__table__, screening_rows),
                            (S.WorklistItem.__table__, wl_rows),
                            (S.AdjudicationEvent.__table__, ev_rows),
                            (S.FlsEpisode.__table__, ep_rows)):
            _insert(conn, table, rows, chunk)
            counts[table.name] = len(rows)
            if table is S.Series.__table__:  # series j is the chosen series of study j
                conn.execute(update(S.Study).values(chosen_series_id=S.Study.id))
        if corrections:
            ids = dict(conn.execute(select(S.AdjudicationEvent.event_uid,
                                           S.AdjudicationEvent.id)).all())
            fixed = [{**e, "event_uid": str(uuid.UUID(bytes=rng.bytes(16))),
                      "supersedes_id": ids[e["event_uid"]], "note": "corrected (simulated)",
                      "recorded_at": e["recorded_at"] + dt.timedelta(hours=3)}
                     for e in corrections]
            _insert(conn, S.AdjudicationEvent.__table__, fixed, chunk)
            counts["adjudication_events"] += len(fixed)
    return counts


def _pathway_for(p: ServiceParams, month: int) -> FlsPathway:
    if p.change_month is not None and p.fls_after is not None and month >= p.change_month:
        return p.fls_after
    return p.fls_before


def _episode(rng: np.random.Generator, fp: FlsPathway, seed: int, k: int, index_day: int,
             ident_day: int, cutoff_day: int, study_id: int | None, key: str,
             accession: str | None, site: str) -> dict[str, Any]:
    """One FLS episode with the delays and KPI fields of *fp* (ANATOMY section 6)."""

    def later(median: float, sigma: float) -> int:
        return ident_day + max(1, int(round(median * math.exp(rng.normal(0, sigma)))))

    def seen(day: int | None) -> dt.date | None:  # not happened by the export: blank
        return _date(day) if day is not None and day <= cutoff_day else None

    death = later(300, 0.8) if rng.random() < fp.p_death else None

    def alive(day: int | None) -> int | None:
        return day if day is not None and (death is None or day < death) else None

    referral = ident_day + int(rng.integers(0, 8))
    assess = alive(later(fp.assess_median, fp.assess_sigma)) if rng.random() < fp.p_assessed else None
    if assess is not None:
        assess = max(assess, referral)
    dxa = alive(later(fp.dxa_median, fp.dxa_sigma)) if rng.random() < fp.p_dxa else None
    rec = assess is not None and rng.random() < fp.p_recommended
    start = None
    if rec and rng.random() < fp.p_started:
        start = alive(max(later(fp.start_median, fp.start_sigma), assess + int(rng.integers(0, 15))))  # type: ignore[operator]
    falls = assess if assess is not None and rng.random() < fp.p_falls else None
    sb = None
    if assess is not None and site != "hip" and rng.random() < fp.p_strength_balance:
        sb = alive(assess + int(rng.integers(7, 60)))
    follow = None
    if rec and rng.random() < fp.p_followup:
        follow = alive(max(index_day + int(rng.integers(80, 125)), assess + 1))  # type: ignore[operator]
    adherent = None
    if start is not None and start + 365 <= cutoff_day:
        adherent = bool(rng.random() < fp.p_adherent)

    def maybe(v: Any) -> Any:  # a key field left blank now and then (FLS-DB KPI 1)
        return None if rng.random() < fp.p_field_missing else v

    assessed = seen(assess) is not None
    return {
        "source": "simulated", "record_id": f"SIM{seed % 100:02d}-{k + 1:07d}",
        "patient_key": key, "study_id": study_id, "accession_number": accession,
        "reported_by_radiology": maybe(bool(rng.random() < 0.3)),
        "known_to_fls": maybe(False), "on_therapy_before": maybe(False),
        "referral_date": seen(referral), "assessment_date": seen(assess),
        "dxa_date": seen(dxa),
        "dxa_t_score": maybe(round(float(rng.normal(-2.5, 0.8)), 1)) if seen(dxa) else None,
        "therapy_recommended": maybe(bool(rec)) if assessed else None,
        "therapy_recommended_date": seen(assess) if rec else None,
        "drug": maybe(str(rng.choice(DRUGS))) if seen(start) else None,
        "therapy_start_date": seen(start),
        "adherent_52w": adherent, "death_date": seen(death),
        "index_fracture_site": maybe(site), "falls_assessment_date": seen(falls),
        "strength_balance_date": seen(sb), "followup_date": seen(follow), "problems": [],
    }


__all__ = ["REFERENCE", "VENDOR", "FlsPathway", "ModelSpec", "ServiceParams",
           "SimulationParams", "SimulationResult", "populate"]
