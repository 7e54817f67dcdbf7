"""The QI dashboard's aggregate cube: every count the dashboard shows, per filter cell.

At hospital scale (500,000 screened studies) recomputing measures from the rows on every
filter change is too slow for a responsive page, so the database is read once into an
aggregate **cube**: one row per combination of

    month x site x scanner x referral source x model

holding *counts* (sums) only. A filter is then a boolean mask over a few thousand cube rows
and a ``sum``; no row-level data stays in the dashboard's memory.

Every count uses the package's own definitions: the rows come from
:func:`fracture_qi.outcomes.dataset.load_analysis` (once per model) and the funnel stages
from :func:`fracture_qi.qi.funnel.stage_masks`, so a number on the dashboard equals what
:func:`fracture_qi.qi.report.headline_summary` gives for the same selection. Measures:

=====================  ==================================================================
``ct`` ... ``adherent_52w``  the funnel stages of :mod:`fracture_qi.qi.funnel`, in CT studies
``started_16w``        therapy started within 16 weeks (112 days) of the CT
``tp, fp``             AI-flagged studies with a decisive first read (confirmed / not)
``fn, tn``             AI-negative audit-sample studies with a decisive first read
``w_tp ... w_tn``      the same, weighted by 1 / sampling probability
``n_flag_weighted``    flagged decisive studies whose weight is not 1 (sampled as negatives
                       by the worklist's model): then the PPV itself is weighted
``dr_pairs``           studies with two decisive reads; ``dr_agree`` those that agree
=====================  ==================================================================

(``tp + fp`` and ``tp`` are the denominator and numerator of the PPV exactly as
:func:`fracture_qi.qi.accuracy.accuracy` counts them.) Times from CT to therapy start for
``referred`` studies are kept as weekly histograms (events, and censorings at the data
cut-off) so Kaplan-Meier curves can be drawn for any filter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select

from fracture_qi.store import schema as S

log = logging.getLogger(__name__)

DIMENSIONS: tuple[str, ...] = ("month", "site", "scanner", "referral", "model")
#: the funnel stages of :mod:`fracture_qi.qi.funnel`, counted per cell
STAGE_MEASURES: tuple[str, ...] = (
    "ct", "eligible", "screened", "flagged", "adjudicated", "confirmed", "newly_identified",
    "referred", "assessed", "dxa", "therapy_recommended", "therapy_started", "adherent_52w",
)
MEASURES: tuple[str, ...] = STAGE_MEASURES + (
    "started_16w", "tp", "fp", "fn", "tn", "w_tp", "w_fp", "w_fn", "w_tn", "n_flag_weighted",
    "dr_pairs", "dr_agree",
)
#: weekly bins of the time-to-therapy histograms (0 .. KM_WEEKS-1 weeks, last bin open)
KM_WEEKS = 105
UNKNOWN = "(unknown)"
CUBE_VERSION = 2
#: two-sided 95 % normal quantile (scipy.stats.norm.ppf(0.975))
Z95 = 1.959963984540054
DECISIVE = ("confirmed", "not_confirmed")


@dataclass
class Cube:
    """Aggregated counts per dimension cell plus time-to-therapy histograms.

    Attributes
    ----------
    cells
        One row per cell: the :data:`DIMENSIONS` columns and the :data:`MEASURES` columns.
    events, censored
        Arrays ``(len(cells), KM_WEEKS)``: therapy starts / censorings by week after the CT,
        among ``referred`` patients.
    cutoff
        Data cut-off date (the latest date seen in the data), for censoring.
    default_model
        The model shown first (the one ``load_analysis`` picks by default).
    fingerprint
        The database fingerprint the cube was built from.
    """

    cells: pd.DataFrame
    events: np.ndarray
    censored: np.ndarray
    cutoff: str = ""
    default_model: str = UNKNOWN
    fingerprint: str = ""
    seconds: float = 0.0
    options: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.options:
            self.options = {d: sorted(map(str, self.cells[d].unique())) for d in DIMENSIONS}
        # categorical codes make each filter a cheap integer comparison
        self._codes = {d: pd.Categorical(self.cells[d], categories=self.options[d]).codes
                       for d in DIMENSIONS}
        self._values = self.cells[list(MEASURES)].to_numpy(dtype=float)

    def mask(self, filters: dict[str, Any] | None = None) -> np.ndarray:
        """Boolean mask of cells matching *filters*.

        Parameters
        ----------
        filters
            ``{"site": "North General"}`` or a list of values; ``None``/``"All"``/``[]``
            mean no restriction; ``"month"`` may be a ``(first, last)`` tuple of
            ``"YYYY-MM"`` strings (inclusive).

        Returns
        -------
        numpy.ndarray
        """
        m = np.ones(len(self.cells), dtype=bool)
        for dim, val in (filters or {}).items():
            if dim not in DIMENSIONS:
                raise ValueError(f"unknown filter {dim!r}; use one of {DIMENSIONS}")
            if val in (None, "All", "", [], ()):
                continue
            if dim == "month" and isinstance(val, tuple) and len(val) == 2:
                months = self.options["month"]
                lo, hi = val
                keep = [i for i, mo in enumerate(months) if lo <= mo <= hi]
            else:
                vals = [val] if isinstance(val, str) else list(val)
                keep = [self.options[dim].index(v) for v in vals if v in self.options[dim]]
            m &= np.isin(self._codes[dim], keep)
        return m

    def totals(self, filters: dict[str, Any] | None = None) -> dict[str, float]:
        """Sum of every measure over the cells matching *filters*."""
        m = self.mask(filters)
        sums = self._values[m].sum(axis=0)
        return {k: float(v) for k, v in zip(MEASURES, sums)}

    def by(self, dim: str, filters: dict[str, Any] | None = None) -> pd.DataFrame:
        """Measures summed per value of *dim* within *filters* (sorted by *dim*)."""
        m = self.mask(filters)
        codes = self._codes[dim][m]
        vals = self._values[m]
        k = len(self.options[dim])
        out = np.zeros((k, len(MEASURES)))
        np.add.at(out, codes, vals)
        df = pd.DataFrame(out, columns=list(MEASURES))
        df.insert(0, dim, self.options[dim])
        present = np.zeros(k, dtype=bool)
        present[np.unique(codes)] = True
        return df[present].reset_index(drop=True)

    def km(self, filters: dict[str, Any] | None = None) -> pd.DataFrame:
        """Kaplan-Meier cumulative proportion started on therapy, by week from the CT.

        Returns
        -------
        pandas.DataFrame
            ``week, days, at_risk, events, censored, proportion_treated, low, high`` with
            Greenwood 95 % limits on the cumulative incidence ``1 - S(t)`` (log-log
            transformed, as lifelines does).
        """
        m = self.mask(filters)
        ev = self.events[m].sum(axis=0)
        ce = self.censored[m].sum(axis=0)
        return km_from_histogram(ev, ce)


def km_from_histogram(events: np.ndarray, censored: np.ndarray) -> pd.DataFrame:
    """Kaplan-Meier estimate from counts of events and censorings per interval.

    Censorings in an interval are treated as happening after its events (the usual
    convention: a patient censored at week w was at risk for events in week w).

    Examples
    --------
    >>> t = km_from_histogram(np.array([1, 1, 0]), np.array([0, 0, 2]))
    >>> t["proportion_treated"].round(3).tolist()
    [0.25, 0.5, 0.5]
    """
    ev = np.asarray(events, dtype=float)
    ce = np.asarray(censored, dtype=float)
    n0 = ev.sum() + ce.sum()
    at_risk = n0 - np.concatenate([[0.0], np.cumsum(ev + ce)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(at_risk > 0, ev / at_risk, 0.0)
        surv = np.cumprod(1 - h)
        gw = np.cumsum(np.where((at_risk > ev) & (at_risk > 0), ev / (at_risk * (at_risk - ev)), 0.0))
        # log(-log S) interval (Kalbfleisch-Prentice), as lifelines' default
        ls = np.log(surv)
        se = np.sqrt(gw) / np.abs(ls)
        lo_s = np.exp(-np.exp(np.log(-ls) + Z95 * se))
        hi_s = np.exp(-np.exp(np.log(-ls) - Z95 * se))
    lo_s = np.where(np.isfinite(lo_s), lo_s, surv)
    hi_s = np.where(np.isfinite(hi_s), hi_s, surv)
    weeks = np.arange(len(ev))
    return pd.DataFrame({
        "week": weeks, "days": weeks * 7, "at_risk": at_risk, "events": ev, "censored": ce,
        "proportion_treated": 1 - surv, "low": 1 - hi_s, "high": 1 - lo_s,
    })


# --- building -------------------------------------------------------------------------------

def fingerprint(engine: Engine) -> str:
    """A cheap fingerprint of the data: row counts, highest ids and latest write times.

    Appends change every table's count and highest id (screenings, adjudication events and
    audit rows are append-only). Rows that can be rewritten in place carry their write time:
    studies (re-indexing), FLS episodes (re-import) and events (corrections are new rows,
    but the time is cheap on that small table). Large append-only tables are not scanned for
    times: at 500,000 studies that scan alone costs a second per table. It is the cache key
    of the cube, not an audit hash (see :func:`fracture_qi.reporting.provenance.db_state_hash`);
    ``fracture-qi dashboard --refresh`` rebuilds the cube regardless.
    """
    parts: list[Any] = [CUBE_VERSION]
    stamps: dict[Any, Any] = {
        S.Study: S.Study.indexed_at, S.Series: None, S.Patient: None, S.Screening: None,
        S.WorklistItem: None, S.AdjudicationEvent: S.AdjudicationEvent.recorded_at,
        S.FlsEpisode: S.FlsEpisode.imported_at,
    }
    with engine.connect() as c:
        for model, stamp in stamps.items():
            cols = [func.count(), func.max(model.id)] + ([func.max(stamp)] if stamp is not None else [])
            row = c.execute(select(*cols).select_from(model)).one()
            parts.append([str(v) for v in row])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def load_studies(engine: Engine) -> tuple[pd.DataFrame, str, str]:
    """Every model's ``AnalysisData.studies`` frame, one after the other.

    The rows come from :func:`fracture_qi.outcomes.dataset.load_analysis` (set-based SQL),
    once per model in the database, so the cube uses exactly the package's definitions.

    Returns
    -------
    (pandas.DataFrame, str, str)
        The concatenated frames (with stage-mask columns ``stage_<name>``), the data cut-off
        (ISO) and the default model (the one ``load_analysis`` picks without a model).
    """
    from fracture_qi.outcomes.readmodel import load_analysis
    from fracture_qi.qi.funnel import stage_masks

    first = load_analysis(engine)
    parts = []
    cutoff = first.cutoff
    models = [m for m in first.models["model"]] if len(first.models) else []
    default = first.model or UNKNOWN
    for mdl in models or [None]:
        data = first if mdl in (None, first.model) else load_analysis(engine, model=mdl)
        st = data.studies
        masks = stage_masks(st, data.cutoff)
        cols = {f"stage_{k}": v.fillna(False).to_numpy(dtype=bool) for k, v in masks.items()}
        keep = st[["month", "site", "scanner", "referral_source", "model", "study_date",
                   "ai_flagged", "read1_decision", "read2_decision", "sampling_probability",
                   "stratum", "therapy_start_date"]].copy()
        keep = keep.assign(**cols)
        parts.append(keep)
        cutoff = max(cutoff, data.cutoff)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return frame, pd.Timestamp(cutoff).date().isoformat(), default


def build_cube(frame: pd.DataFrame, cutoff: str, default_model: str = UNKNOWN) -> Cube:
    """Aggregate the studies frame of :func:`load_studies` into a :class:`Cube`.

    Parameters
    ----------
    frame
        One row per (study, model) with stage masks.
    cutoff
        Data cut-off (ISO): referred patients not yet treated are censored there.
    default_model
        The model shown first.
    """
    t0 = time.perf_counter()
    f = frame
    dims = pd.DataFrame({
        "month": pd.to_datetime(f["month"]).dt.strftime("%Y-%m").fillna(UNKNOWN),
        "site": f["site"].fillna(UNKNOWN).astype(str),
        "scanner": f["scanner"].fillna(UNKNOWN).astype(str),
        "referral": f["referral_source"].fillna(UNKNOWN).astype(str),
        "model": f["model"].fillna(UNKNOWN).astype(str),
    })
    d1 = f["read1_decision"].astype(object)
    d2 = f["read2_decision"].astype(object)
    decisive1 = d1.isin(DECISIVE).to_numpy() & f["sampling_probability"].notna().to_numpy()
    conf = (d1 == "confirmed").to_numpy()
    flag = f["ai_flagged"].eq(True).to_numpy()
    w = 1.0 / f["sampling_probability"].astype(float).fillna(1.0).clip(lower=1e-9).to_numpy()
    neg = decisive1 & ~flag
    dec2 = d2.isin(DECISIVE).to_numpy() & d1.isin(DECISIVE).to_numpy()
    sd = pd.to_datetime(f["study_date"])
    start = pd.to_datetime(f["therapy_start_date"])
    cut = pd.Timestamp(cutoff)
    started = f["stage_therapy_started"].to_numpy(bool)
    referred = f["stage_referred"].to_numpy(bool)
    values: dict[str, Any] = {m: f[f"stage_{m}"].to_numpy(float) for m in STAGE_MEASURES}
    values.update({
        "tp": (decisive1 & flag & conf), "fp": (decisive1 & flag & ~conf),
        "fn": (neg & conf), "tn": (neg & ~conf),
        "w_tp": np.where(decisive1 & flag & conf, w, 0.0),
        "w_fp": np.where(decisive1 & flag & ~conf, w, 0.0),
        "w_fn": np.where(neg & conf, w, 0.0), "w_tn": np.where(neg & ~conf, w, 0.0),
        "n_flag_weighted": decisive1 & flag & ~np.isclose(w, 1.0),
        "dr_pairs": dec2, "dr_agree": dec2 & (d1 == d2).to_numpy(),
        "started_16w": started & ((start - sd).dt.days.to_numpy(dtype=float) <= 112),
    })
    key = pd.MultiIndex.from_frame(dims)
    codes, uniques = pd.factorize(key, sort=True)
    n_cells = len(uniques)
    cells = pd.DataFrame(list(uniques), columns=list(DIMENSIONS))
    for m in MEASURES:
        cells[m] = np.bincount(codes, weights=np.asarray(values[m], dtype=float), minlength=n_cells)
    days = (start - sd).dt.days.to_numpy(dtype=float)
    follow = (cut - sd).dt.days.to_numpy(dtype=float)
    ev_week = np.clip(np.floor(np.nan_to_num(days, nan=0.0) / 7), 0, KM_WEEKS - 1).astype(int)
    ce_week = np.clip(np.floor(np.nan_to_num(follow, nan=0.0) / 7), 0, KM_WEEKS - 1).astype(int)
    events = np.zeros((n_cells, KM_WEEKS))
    censored = np.zeros((n_cells, KM_WEEKS))
    ev_rows = referred & started
    np.add.at(events, (codes[ev_rows], ev_week[ev_rows]), 1)
    ce_rows = referred & ~started
    np.add.at(censored, (codes[ce_rows], ce_week[ce_rows]), 1)
    return Cube(cells, events, censored, cutoff=cutoff, default_model=default_model,
                seconds=time.perf_counter() - t0)


def cube_from_engine(engine: Engine, *, cache_dir: str | Path | None = None,
                     refresh: bool = False) -> Cube:
    """Build (or load from *cache_dir*) the cube for a database.

    The cache file holds aggregates only (no row-level data, no identifiers) and is keyed by
    :func:`fingerprint`, so any new row invalidates it.

    Parameters
    ----------
    engine
        The database.
    cache_dir
        Folder for ``qi-cube-<fingerprint>.npz``; ``None`` disables caching.
    refresh
        Rebuild from the database even when a cached cube matches.

    Returns
    -------
    Cube
    """
    t0 = time.perf_counter()
    fp = fingerprint(engine)
    path = Path(cache_dir) / f"qi-cube-{fp}.npz" if cache_dir else None
    if path is not None and path.is_file() and not refresh:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                cutoff = meta["cutoff"]
                default = meta.get("default_model", UNKNOWN)
                # each z[...] access decompresses the member again: read every array once
                values = z["values"]
                cells = pd.DataFrame({
                    **{d: z[f"dim_{d}"].astype(str) for d in DIMENSIONS},
                    **{m: values[:, j] for j, m in enumerate(MEASURES)},
                })
                cube = Cube(cells, z["events"], z["censored"], cutoff=cutoff,
                            default_model=default,
                            fingerprint=fp, seconds=time.perf_counter() - t0)
            log.info("QI cube loaded from cache %s in %.2f s", path.name, cube.seconds)
            return cube
        except (OSError, KeyError, ValueError) as e:
            log.warning("ignoring unreadable cube cache %s: %s", path, e)
    frame, cutoff, default = load_studies(engine)
    cube = build_cube(frame, cutoff, default)
    cube.fingerprint = fp
    cube.seconds = time.perf_counter() - t0
    log.info("QI cube built: %d cells from %d rows in %.2f s", len(cube.cells), len(frame),
             cube.seconds)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(
                tmp, meta=json.dumps({"cutoff": cube.cutoff, "default_model": cube.default_model}),
                values=cube.cells[list(MEASURES)].to_numpy(float),
                events=cube.events, censored=cube.censored,
                **{f"dim_{d}": cube.cells[d].to_numpy(str) for d in DIMENSIONS},
            )
            tmp.replace(path)
            for old in path.parent.glob("qi-cube-*.npz"):
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError as e:  # a read-only folder only costs speed
            log.warning("cannot cache the QI cube in %s: %s", cache_dir, e)
    return cube
