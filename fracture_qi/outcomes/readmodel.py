"""The read model: the analysis frames built from the database, for notebooks and dashboards.

:func:`load_analysis` runs a handful of set-based SQL queries (no per-row queries: it must
stay fast at 500,000 screened studies) and returns
:class:`~fracture_qi.outcomes.dataset.AnalysisData`, whose frames every measure in
:mod:`fracture_qi.qi` takes (``qi`` itself never reads the database). The screening result
of a study is its counted result (:mod:`fracture_qi.screening.counting`), the rule the
export, the worklist and the dashboard use too.

No direct identifier leaves this module: patients appear only as ``patient_key``; study
and series UIDs and accession numbers are not selected.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.orm import aliased

from fracture_qi.errors import FractureQIError
from fracture_qi.outcomes.dataset import (
    EPISODE_COLUMNS,
    READ_COLUMNS,
    STUDY_COLUMNS,
    AnalysisData,
    age_band,
)
from fracture_qi.screening.counting import ModelRef, choose_model, counted_join, models_table
from fracture_qi.store.schema import (
    AdjudicationEvent,
    FlsEpisode,
    Patient,
    Screening,
    Series,
    Study,
    WorklistItem,
)

logger = logging.getLogger(__name__)


def _month(d: pd.Series) -> pd.Series:
    """First day of the month of each date (NaT stays NaT)."""
    return pd.Series(d.to_numpy().astype("datetime64[M]").astype("datetime64[ns]"), index=d.index)


def _scanner(manufacturer: pd.Series, model_name: pd.Series) -> pd.Series:
    """``"<manufacturer> <model name>"``, stripped; ``unknown`` when both are blank.

    Cleaned once per distinct pair, not once per study.
    """
    key = manufacturer.fillna("").astype(str) + "\x1f" + model_name.fillna("").astype(str)
    codes, uniques = pd.factorize(key)
    labels = np.array(
        [" ".join(p.strip() for p in u.split("\x1f") if p.strip()) or "unknown" for u in uniques]
        + ["unknown"],
        dtype=object,
    )
    return pd.Series(labels[codes], index=key.index, dtype=object)


def _frame(conn: Any, stmt: Any) -> pd.DataFrame:
    """Run a Core select through the driver and return raw values as a DataFrame.

    SQLAlchemy's per-value type processing (dates, JSON, booleans) costs more than the query
    itself at 500,000 rows, so rows are fetched raw and typed column-wise by the caller
    (:func:`_dates`, :func:`_bools`, :func:`_json`), which works for SQLite (ISO strings,
    0/1) and PostgreSQL (native objects) alike.
    """
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params: Any = compiled.construct_params()
    if compiled.positional:
        params = tuple(params[k] for k in compiled.positiontup)
    # the DBAPI cursor itself: SQLAlchemy's Row objects cost seconds at this size
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.execute(str(compiled), params)
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        cur.close()
    return pd.DataFrame.from_records(rows, columns=cols, coerce_float=False)


def _dates(s: pd.Series) -> pd.Series:
    """Dates (ISO strings or date objects) as datetime64, NaT when missing."""
    if s.empty:
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    return pd.to_datetime(s, errors="coerce", format="ISO8601").astype("datetime64[ns]")


def _times(s: pd.Series) -> pd.Series:
    """Timestamps as naive UTC datetime64 (SQLite stores naive UTC; PostgreSQL timestamptz)."""
    if s.empty:
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    t = pd.to_datetime(s, errors="coerce", utc=True, format="ISO8601")
    return t.dt.tz_localize(None).astype("datetime64[ns]")


def _bools(s: pd.Series) -> pd.Series:
    """0/1/True/False/None as pandas nullable booleans."""
    # True == 1 and False == 0 as dict keys, so one mapping serves both drivers
    return s.map({1: True, 0: False}).astype("boolean")


def _json(v: Any) -> Any:
    if isinstance(v, str):
        return json.loads(v)
    return v


def _levels_text(levels: Any) -> str:
    if not isinstance(levels, list):
        return ""
    return ";".join(f"{x.get('level')}:{x.get('grade')}" for x in levels if isinstance(x, dict))


def _counts(ev: Any) -> Any:
    """SQL: *ev* may count as a read (not a change made after seeing the AI's result)."""
    return or_(ev.blind.is_(None), ev.blind.is_(True))


def load_reads(engine: Engine, *, include_simulated: bool = True) -> pd.DataFrame:
    """The counting read per (study, read number): the latest event of its correction chain.

    An event counts when no other event supersedes it; a change made after the nurse asked
    to see the AI's result on an audit-sample case never counts (its blind read does). ``first_recorded_at`` is the first
    save of that (study, read) (for time to adjudication), ``n_events`` how many events the
    read has (1 + corrections).

    Returns
    -------
    pandas.DataFrame
        :data:`READ_COLUMNS`; times are timezone-naive UTC.
    """
    e = aliased(AdjudicationEvent)
    nxt = aliased(AdjudicationEvent)
    first = (
        select(
            AdjudicationEvent.study_id.label("sid"),
            AdjudicationEvent.read_number.label("rn"),
            func.min(AdjudicationEvent.recorded_at).label("first_recorded_at"),
            func.count().label("n_events"),
        )
        .group_by(AdjudicationEvent.study_id, AdjudicationEvent.read_number)
        .subquery()
    )
    stmt = (
        select(
            e.study_id,
            e.read_number,
            e.id.label("event_id"),
            e.decision,
            e.levels,
            e.previously_known,
            e.action,
            e.reviewer,
            first.c.first_recorded_at,
            e.recorded_at,
            first.c.n_events,
            e.simulated,
        )
        # a change made after the nurse asked to see the AI's result on an audit-sample
        # case (blind False) is history, not the read: the blind read counts (issue 18)
        .outerjoin(nxt, and_(nxt.supersedes_id == e.id, _counts(nxt)))
        .join(first, and_(first.c.sid == e.study_id, first.c.rn == e.read_number))
        .where(nxt.id.is_(None), _counts(e))
    )
    if not include_simulated:
        stmt = stmt.where(e.simulated.is_(False))
    with engine.connect() as conn:
        df = _frame(conn, stmt)
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in READ_COLUMNS})
    # two uncorrected saves of one read cannot happen (unique index); keep the newest anyway
    df = df.sort_values("event_id").drop_duplicates(["study_id", "read_number"], keep="last")
    # only non-empty level lists need parsing (most reads record none)
    raw = df["levels"].tolist()
    levels: list[Any] = [[] for _ in raw]
    grades = np.zeros(len(raw), dtype=np.int64)
    for i, v in enumerate(raw):
        if v is None or v == "[]" or v == []:
            continue
        lv = _json(v)
        if isinstance(lv, list):
            levels[i] = lv
            grades[i] = max((int(x.get("grade", 0)) for x in lv if isinstance(x, dict)), default=0)
    df["levels"] = pd.Series(levels, index=df.index, dtype=object)
    df["max_grade"] = grades
    df["simulated"] = _bools(df["simulated"]).fillna(False).astype(bool)
    for c in ("first_recorded_at", "recorded_at"):
        df[c] = _times(df[c])
    return df[list(READ_COLUMNS)].reset_index(drop=True)


def load_analysis(
    engine: Engine,
    *,
    period: tuple[dt.date | str, dt.date | str] | None = None,
    sites: Sequence[str] | None = None,
    model: str | None = None,
    flag_grade: int | None = None,
    audit: str | None = None,
    cutoff: dt.date | str | None = None,
    include_simulated: bool = True,
) -> AnalysisData:
    """Load the analysis frames for a period, sites and screening model.

    Parameters
    ----------
    engine
        The suite's database (``fracture_qi.store.open_store``).
    period
        ``(start, end)`` study dates, inclusive (ISO strings accepted); None for all.
    sites
        Sites to keep (``studies.site``); None for all.
    model
        ``model_id`` or ``model_id:version`` whose screening results to use; None picks the
        default model. Each study's result is its counted result: the chosen series'
        screening by that model (the rule of :mod:`fracture_qi.screening.counting`).
    flag_grade
        Count a study as AI-flagged when the model's maximum Genant grade is at least this
        (e.g. 2 for moderate or worse); None keeps the engine's stored flag.
    audit
        Worklist audit name (strata, sampling probabilities); None: the only one, else
        ``default``.
    cutoff
        Data cut-off date (default: the end of the period, or the latest date in the
        database, whatever the site filter, never later than today).
    include_simulated
        Keep simulated adjudications (the demo); set False for real audits.

    Returns
    -------
    AnalysisData

    Raises
    ------
    FractureQIError
        When *model* names no model with results, or *period* is malformed.
    """
    t0 = time.perf_counter()
    p0 = p1 = None
    if period is not None:
        try:
            p0, p1 = (pd.Timestamp(x).date() for x in period)
        except (ValueError, TypeError) as e:
            raise FractureQIError(
                f"period {period!r} is not two dates. Fix: pass (start, end), e.g. "
                "('2025-01-01', '2025-12-31')"
            ) from e
    site_list = list(sites) if sites else None

    with engine.connect() as conn:
        models = models_table(conn)
        audits = [a for (a,) in conn.execute(select(WorklistItem.audit_name).distinct())]
    chosen = choose_model(models, model)
    if audit is None and audits:
        if len(audits) == 1:
            audit = audits[0]
        else:
            audit = "default" if "default" in audits else sorted(audits)[0]
            logger.warning("several worklist audits %s; using %r (pass audit=...)", audits, audit)

    st = _load_studies(engine, chosen, audit, p0, p1, site_list, flag_grade)

    # reads and FLS episodes are aligned on the study ids and added in one concat: merging
    # one at a time would copy the 500,000-row frame each time
    ids = st["study_id"].to_numpy()
    parts: list[pd.DataFrame] = [st]

    def aligned(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.set_index("study_id").reindex(ids)
        out.index = st.index
        return out

    reads = load_reads(engine, include_simulated=include_simulated)
    reads = reads[reads["study_id"].isin(st["study_id"])].reset_index(drop=True)
    for rn in (1, 2):
        cols = {
            "decision": "decision",
            "max_grade": "max_grade",
            "levels": "levels",
            "reviewer": "reviewer",
            "first_recorded_at": "at",
        }
        if rn == 1:
            cols.update({"previously_known": "previously_known", "action": "action"})
        r = reads.loc[reads["read_number"] == rn, ["study_id", *cols]]
        r = r.rename(columns={k: f"read{rn}_{v}" for k, v in cols.items()})
        r[f"read{rn}_levels"] = r[f"read{rn}_levels"].map(_levels_text)
        r = aligned(r)
        r[f"read{rn}_max_grade"] = r[f"read{rn}_max_grade"].astype("Int64")
        parts.append(r)
    ep = _load_episodes(engine)
    # one episode per study: the earliest referral (a second episode is a later fracture)
    linked = ep[ep["study_id"].notna()].sort_values(["referral_date", "episode_id"])
    linked = linked.drop_duplicates("study_id")
    linked = linked[["study_id", *_EPISODE_TO_STUDY]].rename(columns=_EPISODE_TO_STUDY)
    linked["study_id"] = linked["study_id"].astype("int64")
    linked = aligned(linked)
    linked["fls_episode_id"] = linked["fls_episode_id"].astype("Int64")
    linked["fls_n_problems"] = linked["fls_n_problems"].astype("Int64")
    parts.append(linked)
    st = pd.concat(parts, axis=1)

    st["adjudicated"] = st["read1_decision"].notna()
    st["assessable"] = st["read1_decision"].isin(["confirmed", "not_confirmed"])
    st["confirmed"] = st["read1_decision"] == "confirmed"
    st["newly_identified"] = st["confirmed"] & (st["read1_previously_known"] == "none")

    st["referred"] = st["confirmed"] & (
        (st["read1_action"] == "refer_fls") | st["fls_referral_date"].notna()
    )

    # episodes frame: index date = linked CT date, else the referral date
    sinfo = _study_info(engine, ep["study_id"].dropna().astype(int).unique().tolist())
    ep = ep.merge(sinfo, left_on="study_id", right_index=True, how="left")
    ep["linked_study"] = ep["study_id"].notna()
    ep["index_date"] = ep["ct_date"].fillna(ep["referral_date"])
    ep["ct_identified"] = ep["study_id"].isin(_confirmed_studies(reads))
    ep["month"] = _month(ep["index_date"])
    if p0 is not None:
        ep = ep[(ep["index_date"] >= pd.Timestamp(p0)) & (ep["index_date"] <= pd.Timestamp(p1))]
    if site_list:
        ep = ep[ep["site"].isin(site_list)]
    ep = ep[list(EPISODE_COLUMNS)].reset_index(drop=True)

    if cutoff is not None:
        cut = pd.Timestamp(cutoff).date()
    elif p1 is not None:
        cut = p1
    else:
        # a property of the database (when the data were extracted), not of the selection
        cut = data_cutoff(engine)

    st = st[list(STUDY_COLUMNS)].sort_values("study_id").reset_index(drop=True)
    seconds = time.perf_counter() - t0
    logger.info(
        "load_analysis: %d studies, %d episodes, %d reads in %.2f s",
        len(st),
        len(ep),
        len(reads),
        seconds,
    )
    label = chosen.label if chosen else None
    return AnalysisData(
        studies=st,
        episodes=ep,
        reads=reads,
        models=models[["model", "model_id", "model_version", "n"]]
        .sort_values("model")
        .reset_index(drop=True),
        model=label,
        flag_grade=flag_grade,
        period=(p0, p1) if p0 is not None and p1 is not None else None,
        sites=site_list,
        audit=audit,
        cutoff=cut,
        seconds=seconds,
        params={
            "period": [str(p0), str(p1)] if p0 else None,
            "sites": site_list,
            "model": model,
            "flag_grade": flag_grade,
            "audit": audit,
            "cutoff": str(cut),
            "include_simulated": include_simulated,
        },
    )


#: FLS episode column -> studies frame column
_EPISODE_TO_STUDY = {
    "episode_id": "fls_episode_id",
    "referral_date": "fls_referral_date",
    "assessment_date": "fls_assessment_date",
    "dxa_date": "dxa_date",
    "dxa_t_score": "dxa_t_score",
    "therapy_recommended": "therapy_recommended",
    "therapy_recommended_date": "therapy_recommended_date",
    "drug": "drug",
    "therapy_start_date": "therapy_start_date",
    "adherent_52w": "adherent_52w",
    "death_date": "death_date",
    "on_therapy_before": "on_therapy_before",
    "known_to_fls_before": "known_to_fls_before",
    "reported_by_radiology": "reported_by_radiology",
    "n_problems": "fls_n_problems",
}

_EP_DATES = (
    "referral_date",
    "assessment_date",
    "dxa_date",
    "therapy_recommended_date",
    "therapy_start_date",
    "death_date",
    "falls_assessment_date",
    "strength_balance_date",
    "followup_date",
)


def _load_studies(
    engine: Engine,
    chosen: ModelRef | None,
    audit: str | None,
    p0: dt.date | None,
    p1: dt.date | None,
    sites: list[str] | None,
    flag_grade: int | None,
) -> pd.DataFrame:
    """One row per study with its chosen series, the model's screening and worklist row."""
    sc_on = counted_join(chosen)
    wi_on = and_(WorklistItem.study_id == Study.id, WorklistItem.audit_name == (audit or ""))
    stmt = (
        select(
            Study.id.label("study_id"),
            Patient.patient_key,
            Patient.sex,
            Study.age_years,
            Study.study_date,
            Study.site,
            Study.referral_source,
            Study.eligible,
            Study.reason,
            Study.chosen_series_id.label("series_id"),
            Series.manufacturer,
            Series.model_name,
            Screening.status.label("screening_status"),
            Screening.reason.label("screening_reason"),
            Screening.flagged,
            Screening.max_grade.label("ai_max_grade"),
            Screening.score.label("ai_score"),
            Screening.low_density,
            WorklistItem.stratum,
            WorklistItem.sampling_probability,
            WorklistItem.double_read,
        )
        .select_from(Study)
        .outerjoin(Patient, Patient.id == Study.patient_id)
        .outerjoin(Series, Series.id == Study.chosen_series_id)
        .outerjoin(Screening, sc_on)
        .outerjoin(WorklistItem, wi_on)
    )
    if p0 is not None and p1 is not None:
        stmt = stmt.where(Study.study_date >= p0, Study.study_date <= p1)
    if sites:
        stmt = stmt.where(Study.site.in_(sites))
    with engine.connect() as conn:
        st = _frame(conn, stmt)
    st = st.drop_duplicates("study_id")  # a study has one chosen series and one worklist row
    st["study_id"] = st["study_id"].astype("int64")
    st["series_id"] = pd.to_numeric(st["series_id"], errors="coerce").astype("Int64")
    st["study_date"] = _dates(st["study_date"])
    st["month"] = _month(st["study_date"])
    st["age_years"] = pd.to_numeric(st["age_years"], errors="coerce").astype(float)
    st["age_band"] = age_band(st["age_years"])
    st["eligible"] = _bools(st["eligible"]).fillna(False).astype(bool)
    st["scanner"] = _scanner(st["manufacturer"], st["model_name"])
    st = st.drop(columns=["model_name"])
    st["model"] = chosen.label if chosen else None
    st["screened"] = st["eligible"] & (st["screening_status"] == "ok")
    st["ai_max_grade"] = pd.to_numeric(st["ai_max_grade"], errors="coerce").astype("Int64")
    if flag_grade is None:
        st["ai_flagged"] = st["screened"] & _bools(st["flagged"]).fillna(False).astype(bool)
    else:
        st["ai_flagged"] = st["screened"] & (st["ai_max_grade"].fillna(0) >= flag_grade)
    st = st.drop(columns=["flagged"])
    st["ai_score"] = pd.to_numeric(st["ai_score"], errors="coerce").astype(float)
    st["low_density"] = _bools(st["low_density"])
    st["sampling_probability"] = pd.to_numeric(st["sampling_probability"], errors="coerce").astype(
        float
    )
    st["weight"] = 1.0 / st["sampling_probability"]
    st["double_read"] = _bools(st["double_read"]).fillna(False).astype(bool)
    return st


def _load_episodes(engine: Engine) -> pd.DataFrame:
    """Every FLS episode, typed; ``problems`` reduced to a count and a list of codes."""
    with engine.connect() as conn:
        ep = _frame(
            conn,
            select(
                FlsEpisode.id.label("episode_id"),
                FlsEpisode.source,
                FlsEpisode.record_id,
                FlsEpisode.patient_key,
                FlsEpisode.study_id,
                FlsEpisode.referral_date,
                FlsEpisode.assessment_date,
                FlsEpisode.dxa_date,
                FlsEpisode.dxa_t_score,
                FlsEpisode.therapy_recommended,
                FlsEpisode.therapy_recommended_date,
                FlsEpisode.drug,
                FlsEpisode.therapy_start_date,
                FlsEpisode.adherent_52w,
                FlsEpisode.death_date,
                FlsEpisode.on_therapy_before,
                FlsEpisode.known_to_fls.label("known_to_fls_before"),
                FlsEpisode.reported_by_radiology,
                FlsEpisode.index_fracture_site,
                FlsEpisode.falls_assessment_date,
                FlsEpisode.strength_balance_date,
                FlsEpisode.followup_date,
                FlsEpisode.problems,
            ),
        )
    for c in _EP_DATES:
        ep[c] = _dates(ep[c])
    for c in (
        "therapy_recommended",
        "adherent_52w",
        "on_therapy_before",
        "known_to_fls_before",
        "reported_by_radiology",
    ):
        ep[c] = _bools(ep[c])
    ep["dxa_t_score"] = pd.to_numeric(ep["dxa_t_score"], errors="coerce").astype(float)
    ep["study_id"] = pd.to_numeric(ep["study_id"], errors="coerce").astype("Int64")
    problems = ep["problems"].map(_json)
    ep["n_problems"] = problems.map(lambda p: len(p) if isinstance(p, list) else 0).astype(int)
    ep["problem_codes"] = problems.map(
        lambda p: (
            ";".join(sorted({str(x.get("code")) for x in p if isinstance(x, dict)}))
            if isinstance(p, list)
            else ""
        )
    )
    return ep.drop(columns=["problems"])


def _study_info(engine: Engine, ids: list[int]) -> pd.DataFrame:
    """Date and site of the studies FLS episodes link to (index: study id)."""
    frames = []
    with engine.connect() as conn:
        for i in range(0, len(ids), 900):
            frames.append(
                _frame(
                    conn,
                    select(Study.id, Study.study_date.label("ct_date"), Study.site).where(
                        Study.id.in_(ids[i : i + 900])
                    ),
                )
            )
    if not frames:
        return pd.DataFrame(
            {"ct_date": pd.Series(dtype="datetime64[ns]"), "site": pd.Series(dtype=object)}
        )
    df = pd.concat(frames, ignore_index=True)
    df["ct_date"] = _dates(df["ct_date"])
    return df.set_index(df["id"].astype("int64"))[["ct_date", "site"]]


def _confirmed_studies(reads: pd.DataFrame) -> list[int]:
    """Studies whose counting first read confirmed a fracture.

    *reads* covers the selected studies; an episode linked to a study outside the selection
    falls outside it too (same date and site), so nothing is lost.
    """
    if reads.empty:
        return []
    r1 = reads[(reads["read_number"] == 1) & (reads["decision"] == "confirmed")]
    return r1["study_id"].astype(int).tolist()


def data_cutoff(engine: Engine) -> dt.date:
    """The database's data cut-off: its latest date (studies, FLS dates, first reads),
    never later than today: what :func:`load_analysis` uses without a period or cut-off."""
    with engine.connect() as conn:
        cands = [conn.execute(select(func.max(Study.study_date))).scalar(),
                 conn.execute(select(func.max(AdjudicationEvent.recorded_at))).scalar()]
        cands += [conn.execute(select(func.max(getattr(FlsEpisode, c)))).scalar()
                  for c in ("referral_date", "assessment_date", "dxa_date",
                            "therapy_recommended_date", "therapy_start_date", "death_date",
                            "falls_assessment_date", "strength_balance_date", "followup_date")]
    dates = [pd.Timestamp(c) for c in cands if c is not None]
    dates = [d.tz_localize(None) if d.tzinfo else d for d in dates]
    # never later than today: a mistyped future date must not move the cut-off
    return min(max(dates).date(), dt.date.today()) if dates else dt.date.today()


def load_analysis_by_model(engine: Engine, **load_kwargs: Any) -> dict[str, AnalysisData]:
    """The same selection loaded once per screening model: ``{model label: AnalysisData}``.

    Parameters
    ----------
    engine
        The suite's database.
    **load_kwargs
        Passed to :func:`load_analysis` (period, sites, flag_grade...; not ``model``).
    """
    load_kwargs.pop("model", None)
    first = load_analysis(engine, **load_kwargs)
    out = {}
    for m in first.models["model"]:
        out[m] = first if m == first.model else load_analysis(engine, model=m, **load_kwargs)
    return out
