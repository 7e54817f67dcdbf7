"""Simulated nurse decisions for the synthetic demo cohort (``make demo``), clearly marked.

Every event written here has ``simulated=True`` and a reviewer name starting with
``simulated-``; the app shows a banner on synthetic cohorts and
:func:`~fracture_qi.adjudication.decisions.latest_decisions` can leave them out.

The simulated nurse reads the synthetic truth (``truth/studies.csv`` and
``truth/vertebrae.csv`` from ``fracture-qi synth``) the way a careful but human reader would:

* a true fracture is confirmed with probability :data:`DETECT_P` by grade (mild ones are
  missed more often), its grade is read one step off now and then (:data:`GRADE_SLIP_P`);
* a study without a fracture is wrongly confirmed with probability :data:`FALSE_CONFIRM_P`;
* a few studies are indeterminate or not assessable;
* "previously known" and the action follow the FLS records where the cohort has them
  (reported by radiology, known to the FLS, on therapy before), else plausible shares;
* the review happens a few days after the CT (log-normal delay), never in the future.

Draws are seeded per study, so a rerun writes the same decisions (and, with the same
``event_uid`` derived from the seed, adds nothing the second time).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from fracture_qi.adjudication.decisions import APP_VERSION, record_decision
from fracture_qi.adjudication.worklist import DEFAULT_AUDIT
from fracture_qi.errors import AdjudicationError, ConflictError, ValidationError
from fracture_qi.screening.types import LEVELS
from fracture_qi.store.schema import AdjudicationEvent, Study, WorklistItem

logger = logging.getLogger(__name__)

#: probability a nurse confirms a true fracture, by its worst Genant grade
DETECT_P = {1: 0.75, 2: 0.93, 3: 0.98}
#: probability a study with no fracture is wrongly confirmed
FALSE_CONFIRM_P = 0.03
#: probability a recorded grade is one step off the truth
GRADE_SLIP_P = 0.12
#: shares of indeterminate and not-assessable reads
INDETERMINATE_P = 0.02
NOT_ASSESSABLE_P = 0.01
#: action shares for confirmed fractures when the FLS records say nothing
ACTION_SHARES = {"refer_fls": 0.82, "on_therapy": 0.08, "not_appropriate": 0.07, "deceased": 0.03}
#: median days from CT to review, and the spread of its logarithm
REVIEW_DELAY_MEDIAN_D, REVIEW_DELAY_SIGMA = 4.0, 0.7
#: share of each worklist stratum the demo leaves unread (the most recent studies), so a new
#: reviewer following the README finds cases waiting (a flagged one and an audit-sample one
#: at least), as a real service has a backlog
DEMO_UNREAD_SHARE = 0.3
#: namespace for the deterministic event UIDs
_NS = uuid.UUID("5b0c7d1e-7c55-4d7e-9d0e-6a1f0c0ffee1")


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate_adjudications` wrote."""

    n_events: int
    n_confirmed: int
    n_second_reads: int
    n_skipped: int
    n_left_unread: int = 0


def _rng(seed: int, *parts: Any) -> np.random.Generator:
    h = hashlib.sha256("|".join(str(p) for p in (seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big"))


def _truth(truth_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[tuple[str, int]]]]:
    studies_csv, verts_csv = truth_dir / "studies.csv", truth_dir / "vertebrae.csv"
    for p in (studies_csv, verts_csv):
        if not p.is_file():
            raise AdjudicationError(
                f"truth table {p} not found. Fix: point truth_dir at the truth/ folder that "
                "fracture-qi synth wrote (simulation needs the synthetic truth)")
    st = pd.read_csv(studies_csv, dtype={"study_instance_uid": str, "accession_number": str})
    if "copy" in st.columns:
        st = st[st["copy"] == 1]
    studies = {r["study_instance_uid"]: r for r in st.to_dict("records")}
    vt = pd.read_csv(verts_csv, dtype={"study_instance_uid": str})
    in_view = vt["fully_in_view"] if "fully_in_view" in vt.columns else vt.get("in_view", 1)
    fx = vt[(vt["fractured"].astype(int) == 1) & (pd.Series(in_view).astype(int) == 1)]
    fractures: dict[str, list[tuple[str, int]]] = {}
    for r in fx.itertuples(index=False):
        if r.level in LEVELS and int(r.genant_grade) >= 1:
            fractures.setdefault(r.study_instance_uid, []).append((r.level, int(r.genant_grade)))
    return studies, fractures


def _fls_flags(truth_dir: Path) -> dict[str, dict[str, bool]]:
    """Per accession number: reported by radiology / known to FLS / on therapy before."""
    path = truth_dir.parent / "fls_records.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path, dtype=str).fillna("")
    out: dict[str, dict[str, bool]] = {}
    for r in df.to_dict("records"):
        acc = r.get("accession_number", "")
        if acc:
            out[acc] = {k: str(r.get(k, "")).strip() in ("1", "true", "True")
                        for k in ("reported_by_radiology", "known_to_fls_before",
                                  "on_therapy_before")}
    return out


def simulated_form(rng: np.random.Generator, fractures: list[tuple[str, int]],
                   fls: dict[str, bool] | None = None) -> dict[str, Any]:
    """One simulated read of a study with these true fractures (level, grade).

    Examples
    --------
    >>> f = simulated_form(np.random.default_rng(1), [("L1", 3)])
    >>> f["decision"] in ("confirmed", "not_confirmed", "indeterminate", "not_assessable")
    True
    """
    fls = fls or {}
    u = rng.random()
    if u < NOT_ASSESSABLE_P:
        return {"decision": "not_assessable",
                "not_assessable_reason": "motion artefact (simulated)"}
    if u < NOT_ASSESSABLE_P + INDETERMINATE_P:
        return {"decision": "indeterminate", "note": "needs radiologist review (simulated)"}
    if fractures:
        worst = max(g for _, g in fractures)
        seen = rng.random() < DETECT_P.get(worst, 0.9)
        levels = []
        for level, grade in fractures:
            if grade == 1 and rng.random() > DETECT_P[1]:
                continue  # a mild one among others overlooked
            if rng.random() < GRADE_SLIP_P:
                grade = int(np.clip(grade + rng.choice([-1, 1]), 1, 3))
            levels.append({"level": level, "grade": grade})
        if not seen or not levels:
            return {"decision": "not_confirmed", "note": "simulated read"}
    elif rng.random() < FALSE_CONFIRM_P:
        levels = [{"level": str(rng.choice(["T11", "T12", "L1", "L2"])), "grade": 1}]
    else:
        return {"decision": "not_confirmed", "note": "simulated read"}
    known = ("known_fls" if fls.get("known_to_fls_before") else
             "reported" if fls.get("reported_by_radiology") else
             str(rng.choice(["none", "reported", "known_fls"], p=[0.75, 0.18, 0.07])))
    if fls.get("on_therapy_before"):
        action = "on_therapy"
    else:
        keys = list(ACTION_SHARES)
        action = str(rng.choice(keys, p=np.array([ACTION_SHARES[k] for k in keys])))
    form: dict[str, Any] = {"decision": "confirmed", "levels": levels, "previously_known": known,
                            "action": action, "note": "simulated read"}
    if action == "not_appropriate":
        form["action_reason"] = "palliative care (simulated)"
    return form


def simulate_adjudications(
    engine: Engine,
    truth_dir: str | Path,
    reviewer: str = "simulated-nurse-1",
    *,
    second_reviewer: str = "simulated-nurse-2",
    audit: str = DEFAULT_AUDIT,
    seed: int = 7,
    now: dt.datetime | None = None,
    unread_share: float = 0.0,
) -> SimulationSummary:
    """Write simulated decisions for the worklist items of *audit* that have none yet.

    Parameters
    ----------
    engine
        The demo database (worklist built by :func:`~.worklist.build_worklist`).
    truth_dir
        The synthetic cohort's ``truth/`` folder.
    reviewer, second_reviewer
        Names of the simulated first and second readers (must start with ``simulated-``).
    audit
        Worklist name.
    seed
        Seed of the simulated reader.
    now
        Latest review time allowed (default: now, UTC).
    unread_share
        Share (0-1) of each stratum's items left unread: the most recent studies, at least
        one per stratum when the share is above 0 (the demo uses :data:`DEMO_UNREAD_SHARE`).

    Returns
    -------
    SimulationSummary

    Raises
    ------
    AdjudicationError
        When the truth tables are missing or a reviewer name does not say ``simulated``.
    """
    for who in (reviewer, second_reviewer):
        if not who.startswith("simulated-"):
            raise AdjudicationError(
                f"reviewer {who!r}: simulated decisions must be signed by a name starting "
                "with 'simulated-' so nobody mistakes them for a nurse's")
    now = now or dt.datetime.now(dt.timezone.utc)
    studies, fractures = _truth(Path(truth_dir))
    fls = _fls_flags(Path(truth_dir))
    with engine.connect() as conn:
        items = conn.execute(
            select(WorklistItem.id, WorklistItem.study_id, WorklistItem.screening_id,
                   WorklistItem.double_read, Study.study_instance_uid, Study.study_date,
                   Study.accession_number, WorklistItem.stratum)
            .join(Study, Study.id == WorklistItem.study_id)
            .where(WorklistItem.audit_name == audit).order_by(WorklistItem.id)).all()
    unread = _left_unread(items, unread_share)
    with engine.connect() as conn:
        done = set(conn.execute(select(AdjudicationEvent.event_uid).where(
            AdjudicationEvent.simulated.is_(True))).scalars())
    n_events = n_conf = n_second = n_skip = 0
    for item_id, study_id, screening_id, double, uid, study_date, acc, _stratum in items:
        if item_id in unread:
            continue
        if uid not in studies:
            n_skip += 1
            logger.info("study %s is not in the truth tables: not simulated", study_id)
            continue
        reads = [(1, reviewer)] + ([(2, second_reviewer)] if double else [])
        for read, who in reads:
            rng = _rng(seed, uid, read)
            form = simulated_form(rng, fractures.get(uid, []), fls.get(str(acc or "")))
            base = dt.datetime.combine(study_date or now.date(), dt.time(9, 0),
                                       tzinfo=dt.timezone.utc)
            delay = dt.timedelta(days=float(np.exp(rng.normal(np.log(REVIEW_DELAY_MEDIAN_D),
                                                              REVIEW_DELAY_SIGMA))) + read - 1)
            when = min(base + delay, now)
            event_uid = str(uuid.uuid5(_NS, f"{seed}|{uid}|{read}"))
            if event_uid in done:
                continue  # written by an earlier run
            form.update(study_id=study_id, read_number=read, worklist_item_id=item_id,
                        screening_id=screening_id, event_uid=event_uid)
            try:
                record_decision(engine, form, who, f"{APP_VERSION} (simulated)",
                                simulated=True, recorded_at=when)
            except (ConflictError, ValidationError) as e:
                n_skip += 1  # a real nurse already read it, or the read is not allowed
                logger.info("study %s read %d not simulated: %s", study_id, read, e)
                continue
            n_events += 1
            n_conf += form["decision"] == "confirmed"
            n_second += read == 2
    logger.warning("wrote %d SIMULATED adjudication events (reviewers %s, %s); %d worklist "
                   "item(s) left unread", n_events, reviewer, second_reviewer, len(unread))
    return SimulationSummary(n_events, n_conf, n_second, n_skip, len(unread))


def _left_unread(items: list[Any], share: float) -> set[int]:
    """Worklist item ids left unread: the newest *share* of each stratum (at least one)."""
    import math

    if share <= 0:
        return set()
    by_stratum: dict[str, list[Any]] = {}
    for row in items:
        by_stratum.setdefault(row[7], []).append(row)
    out: set[int] = set()
    for rows in by_stratum.values():
        rows = sorted(rows, key=lambda r: (r[5] or dt.date.min, r[0]))
        k = min(len(rows), max(1, math.ceil(share * len(rows))))
        out.update(r[0] for r in rows[len(rows) - k:])
    return out
