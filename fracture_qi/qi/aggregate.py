"""The aggregate every published figure is computed from, for the dashboard and the pack.

The analysis frames are reduced once to counts per cell of

    month x site x scanner x referral source x model        (CT studies)
    month x site                                             (FLS episodes, for the KPIs)

plus daily histograms of the pathway times per cell. A selection (filter) is a mask over
the cells and a sum; :mod:`fracture_qi.qi.published` turns the sums into the display tables
and SPC series, with the same suppression in every consumer. The audit notebooks build an
:class:`Aggregate` from their :class:`~fracture_qi.outcomes.dataset.AnalysisData`
(:meth:`Aggregate.from_analysis`); the QI dashboard builds one from the whole database (one
frame per screening model) and caches it. So the same filter gives the same numbers, and
the same suppression, on the page and in the pack.

Every count uses the package's definitions: the funnel stages of
:func:`fracture_qi.qi.funnel.stage_masks`, the accuracy cells exactly as
:func:`fracture_qi.qi.accuracy.accuracy` counts them (with per-stratum sums of the sampling
weights, from which the design-based intervals are rebuilt exactly), the agreement tables of
:mod:`fracture_qi.qi.agreement`, the KPI masks of :mod:`fracture_qi.qi.kpi`, the service
measures of :mod:`fracture_qi.qi.service` and the durations of :mod:`fracture_qi.qi.timing`.
No row-level data, and no identifier, is kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.qi.agreement import DECISIONS
from fracture_qi.qi.funnel import STAGES, stage_masks
from fracture_qi.qi.kpi import completeness_masks, kpi_masks
from fracture_qi.qi.service import service_masks
from fracture_qi.qi.timing import HIST_DAYS, INTERVALS, pathway_durations

log = logging.getLogger(__name__)

STUDY_DIMS: tuple[str, ...] = ("month", "site", "scanner", "referral", "model")
EPISODE_DIMS: tuple[str, ...] = ("month", "site")
UNKNOWN = "(unknown)"
#: site of an FLS episode not linked to a CT here (a referral from elsewhere)
NOT_LINKED = "(not linked to a CT)"
STAGE_KEYS: tuple[str, ...] = tuple(s for s, *_ in STAGES)
STRATA: tuple[str, ...] = ("flagged", "audit_negative", "other")
CELLS_2X2: tuple[str, ...] = ("tp", "fp", "fn", "tn")
INTERVAL_KEYS: tuple[str, ...] = tuple(INTERVALS)


def _acc_measures() -> list[str]:
    return [f"acc_{s}_{c}_{k}" for s in STRATA for c in CELLS_2X2 for k in ("n", "w", "w2")]


def _table_measures(prefix: str, k: int) -> list[str]:
    return [f"{prefix}_{i}{j}" for i in range(k) for j in range(k)]


#: every measure summed per study cell
STUDY_MEASURES: tuple[str, ...] = tuple(
    list(STAGE_KEYS) + _acc_measures() + _table_measures("kp", 2) + _table_measures("kg", 4)
    + _table_measures("nd", 4) + _table_measures("np", 2) + _table_measures("ng", 4)
    + ["svc_result", "svc_unassessable", "svc_error", "svc_excluded", "svc_conf_flagged",
       "svc_not_reported"]
    + [f"t_{k}_impossible" for k in INTERVAL_KEYS]
)


def month_labels(first: str, last: str) -> list[str]:
    """Every month from *first* to *last* (``YYYY-MM``), inclusive: a continuous axis.

    Examples
    --------
    >>> month_labels("2024-11", "2025-02")
    ['2024-11', '2024-12', '2025-01', '2025-02']
    """
    if not first or not last or first > last:
        return []
    return [p.strftime("%Y-%m") for p in pd.period_range(first, last, freq="M")]


def _month_text(d: pd.Series) -> pd.Series:
    t = pd.to_datetime(d, errors="coerce")
    return t.dt.strftime("%Y-%m").fillna(UNKNOWN)


def study_measures(st: pd.DataFrame, cutoff: dt.date) -> dict[str, np.ndarray]:
    """Per-row values of :data:`STUDY_MEASURES` for one model's ``AnalysisData.studies``."""
    n = len(st)
    out: dict[str, np.ndarray] = {}
    masks = stage_masks(st, cutoff)
    for k in STAGE_KEYS:
        out[k] = masks[k].fillna(False).to_numpy(bool)
    d1 = st["read1_decision"].astype(object)
    decisive = d1.isin(["confirmed", "not_confirmed"]).to_numpy() & \
        st["sampling_probability"].notna().to_numpy()
    flag = st["ai_flagged"].eq(True).to_numpy()
    conf = (d1 == "confirmed").to_numpy()
    w = 1.0 / st["sampling_probability"].astype(float).fillna(1.0).clip(lower=1e-12).to_numpy()
    stratum = st["stratum"].astype(object).where(st["stratum"].isin(STRATA[:2]), "other")
    cells = {"tp": flag & conf, "fp": flag & ~conf, "fn": ~flag & conf, "tn": ~flag & ~conf}
    for s in STRATA:
        ins = decisive & (stratum == s).to_numpy()
        for c, m in cells.items():
            sel = ins & m
            out[f"acc_{s}_{c}_n"] = sel
            out[f"acc_{s}_{c}_w"] = np.where(sel, w, 0.0)
            out[f"acc_{s}_{c}_w2"] = np.where(sel, w * w, 0.0)
    # AI vs nurse (agreement.ai_vs_nurse): decisive first reads of screened studies
    ai_rows = d1.isin(["confirmed", "not_confirmed"]).to_numpy() & st["screened"].eq(True).to_numpy()
    a_grade = st["ai_max_grade"].astype("Float64").fillna(0).clip(0, 3).astype(int).to_numpy()
    n_grade = np.where(conf, st["read1_max_grade"].astype("Float64").fillna(0).astype(int)
                       .clip(0, 3).to_numpy(), 0)
    for i in range(2):
        for j in range(2):
            out[f"kp_{i}{j}"] = ai_rows & (flag.astype(int) == i) & (conf.astype(int) == j)
    for i in range(4):
        for j in range(4):
            out[f"kg_{i}{j}"] = ai_rows & (a_grade == i) & (n_grade == j)
    # nurse vs nurse (agreement.nurse_vs_nurse): both reads recorded
    d2 = st["read2_decision"].astype(object)
    both = d1.notna().to_numpy() & d2.notna().to_numpy()
    code = {d: i for i, d in enumerate(DECISIONS)}
    c1 = d1.map(code).fillna(-1).astype(int).to_numpy()
    c2 = d2.map(code).fillna(-1).astype(int).to_numpy()
    for i in range(4):
        for j in range(4):
            out[f"nd_{i}{j}"] = both & (c1 == i) & (c2 == j)
    dec2 = both & (c1 <= 1) & (c2 <= 1)  # confirmed (0) / not_confirmed (1) both times
    p1, p2 = (c1 == 0).astype(int), (c2 == 0).astype(int)
    g1 = np.where(c1 == 0, st["read1_max_grade"].astype("Float64").fillna(0).astype(int)
                  .clip(0, 3).to_numpy(), 0)
    g2 = np.where(c2 == 0, st["read2_max_grade"].astype("Float64").fillna(0).astype(int)
                  .clip(0, 3).to_numpy(), 0)
    for i in range(2):
        for j in range(2):
            out[f"np_{i}{j}"] = dec2 & (p1 == i) & (p2 == j)
    for i in range(4):
        for j in range(4):
            out[f"ng_{i}{j}"] = dec2 & (g1 == i) & (g2 == j)
    for k, m in service_masks(st).items():
        out[f"svc_{k}"] = m.fillna(False).to_numpy(bool)
    for k in INTERVAL_KEYS:
        out[f"t_{k}_impossible"] = np.zeros(n, bool)
    for k, dur in pathway_durations(st, cutoff).items():
        imp = np.zeros(n, bool)
        imp[st.index.get_indexer(dur.index[dur["impossible"]])] = True
        out[f"t_{k}_impossible"] = imp
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def episode_measures(ep: pd.DataFrame, cutoff: dt.date) -> dict[str, np.ndarray]:
    """Per-row KPI numerators/denominators and completeness counts of the episodes."""
    out: dict[str, np.ndarray] = {
        "episodes": (pd.to_datetime(ep["index_date"]) <= pd.Timestamp(cutoff)).to_numpy(float)}
    for k, (num, den) in kpi_masks(ep, cutoff).items():
        out[f"{k}_num"], out[f"{k}_den"] = num.to_numpy(float), den.to_numpy(float)
    for f, (miss, app) in completeness_masks(ep, cutoff).items():
        out[f"cf_{f}_miss"], out[f"cf_{f}_app"] = miss.to_numpy(float), app.to_numpy(float)
    return out


def _group(dims: pd.DataFrame, values: Mapping[str, np.ndarray], names: Sequence[str]
           ) -> tuple[pd.DataFrame, np.ndarray]:
    """Sum *values* per distinct row of *dims*: the cells frame and each row's cell code."""
    if len(dims) == 0:
        return pd.DataFrame(columns=[*dims.columns, *names]), np.zeros(0, int)
    key = pd.MultiIndex.from_frame(dims)
    codes, uniques = pd.factorize(key, sort=True)
    cells = pd.DataFrame(list(uniques), columns=list(dims.columns))
    sums = pd.DataFrame({m: np.bincount(codes, weights=values[m], minlength=len(uniques))
                         for m in names})
    return pd.concat([cells, sums], axis=1), codes


@dataclass
class Aggregate:
    """Counts per cell, episode KPI counts per (month, site), daily time histograms.

    Attributes
    ----------
    cells
        One row per study cell: :data:`STUDY_DIMS` then :data:`STUDY_MEASURES`.
    episodes
        One row per episode cell: :data:`EPISODE_DIMS` then the KPI counts.
    hist
        Sparse daily histograms: arrays ``cell`` (row of *cells*), ``interval`` (position in
        :data:`INTERVAL_KEYS`), ``day``, ``event`` (1 event, 0 censored) and ``count``.
    cutoff
        Data cut-off (ISO date).
    default_model
        The model shown when none is chosen (the default model of
        :mod:`fracture_qi.screening.counting`).
    first_month, last_month
        The selection's period (``YYYY-MM``), or ``""``: SPC series span the period, else
        each source's first to last month with data, without skipping a month.
    meta
        Context carried to every output: ``name``, ``synthetic``, ``simulated``.
    """

    cells: pd.DataFrame
    episodes: pd.DataFrame
    hist: dict[str, np.ndarray]
    cutoff: str
    default_model: str = UNKNOWN
    first_month: str = ""
    last_month: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    seconds: float = 0.0
    options: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        study_months = sorted(set(self.cells["month"].astype(str)) - {UNKNOWN})
        ep_months = sorted(set(self.episodes["month"].astype(str)) - {UNKNOWN})
        # each source's own axis: the period when one was chosen, else its first to last
        # month with data (no trailing months of another source's data shown as zeros)
        self.study_months = month_labels(self.first_month or (study_months or [""])[0],
                                         self.last_month or (study_months or [""])[-1])
        self.episode_months = month_labels(self.first_month or (ep_months or [""])[0],
                                           self.last_month or (ep_months or [""])[-1])
        if not self.options:
            self.options = {d: sorted(map(str, self.cells[d].unique())) if len(self.cells)
                            else [] for d in STUDY_DIMS}
            both = sorted(set(self.study_months) | set(self.episode_months))
            self.options["month"] = month_labels(both[0], both[-1]) if both else \
                self.options["month"]
        self._codes = {d: pd.Categorical(self.cells[d].astype(str),
                                         categories=self.options[d]).codes
                       for d in STUDY_DIMS}
        self._values = self.cells[list(STUDY_MEASURES)].to_numpy(dtype=float)
        self.episode_measures = [c for c in self.episodes.columns if c not in EPISODE_DIMS]
        self._ep_values = self.episodes[self.episode_measures].to_numpy(dtype=float)
        self._ep_month = self.episodes["month"].astype(str).to_numpy()
        self._ep_site = self.episodes["site"].astype(str).to_numpy()

    # --- building -----------------------------------------------------------------------

    @classmethod
    def build(cls, studies: Iterable[pd.DataFrame], episodes: pd.DataFrame, cutoff: dt.date,
              *, default_model: str | None = None, first_month: str = "",
              last_month: str = "", meta: Mapping[str, Any] | None = None) -> Aggregate:
        """Reduce the frames (one ``studies`` frame per model) to an aggregate.

        Parameters
        ----------
        studies
            ``AnalysisData.studies`` of each model (the same studies, one counted result
            per model).
        episodes
            ``AnalysisData.episodes`` (model-independent).
        cutoff
            The data cut-off.
        default_model
            The model shown first.
        first_month, last_month
            The selection's axis (default: the months in the data).
        meta
            Context for outputs (name, synthetic, simulated).
        """
        t0 = time.perf_counter()
        parts, values, hist_parts = [], [], []
        offset = 0
        for st in studies:
            st = st.reset_index(drop=True)
            parts.append(pd.DataFrame({
                "month": _month_text(st["study_date"]),
                "site": st["site"].fillna(UNKNOWN).astype(str),
                "scanner": st["scanner"].fillna(UNKNOWN).astype(str),
                "referral": st["referral_source"].fillna(UNKNOWN).astype(str),
                "model": st["model"].fillna(UNKNOWN).astype(str),
            }))
            values.append(study_measures(st, cutoff))
            for i, (k, dur) in enumerate(pathway_durations(st, cutoff).items()):
                ok = dur["days"].notna()
                rows = st.index.get_indexer(dur.index[ok]) + offset
                hist_parts.append((rows, i, dur.loc[ok, "days"].to_numpy(float),
                                   dur.loc[ok, "observed"].to_numpy(bool)))
            offset += len(st)
        dims = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=list(STUDY_DIMS))
        merged = {m: np.concatenate([v[m] for v in values]) if values else np.zeros(0)
                  for m in STUDY_MEASURES}
        cells, codes = _group(dims, merged, STUDY_MEASURES)
        hist = _histograms(codes, hist_parts)
        ep = episodes.reset_index(drop=True)
        ep_dims = pd.DataFrame({"month": _month_text(ep["index_date"]),
                                "site": ep["site"].astype(object).where(
                                    ep["linked_study"].eq(True), NOT_LINKED)
                                .fillna(UNKNOWN).astype(str)})
        ep_vals = episode_measures(ep, cutoff)
        ep_cells, _ = _group(ep_dims, ep_vals, list(ep_vals))
        default = default_model or (str(dims["model"].iloc[0]) if len(dims) else UNKNOWN)
        return cls(cells, ep_cells, hist, pd.Timestamp(cutoff).date().isoformat(),
                   default_model=default, first_month=first_month, last_month=last_month,
                   meta=dict(meta or {}), seconds=time.perf_counter() - t0)

    @classmethod
    def from_analysis(cls, data: Any, *, meta: Mapping[str, Any] | None = None) -> Aggregate:
        """The aggregate of one :class:`~fracture_qi.outcomes.dataset.AnalysisData` (one
        model), on the axis of its period (or of its data)."""
        first = last = ""
        if data.period:
            first, last = (pd.Timestamp(d).strftime("%Y-%m") for d in data.period)
        return cls.build([data.studies], data.episodes, data.cutoff,
                         default_model=data.model or UNKNOWN, first_month=first,
                         last_month=last, meta=meta)

    # --- selecting ----------------------------------------------------------------------

    def month_range(self, filters: Mapping[str, Any] | None) -> tuple[str, str]:
        """The filter's month range, else the whole axis."""
        val = (filters or {}).get("month")
        if isinstance(val, (tuple, list)) and len(val) == 2:
            return (str(min(val)), str(max(val)))
        if isinstance(val, str) and val not in ("", "All"):
            return (val, val)
        opts = self.options["month"]
        return (opts[0], opts[-1]) if opts else ("", "")

    def mask(self, filters: Mapping[str, Any] | None = None) -> np.ndarray:
        """Boolean mask of study cells matching *filters* (``None``/``"All"``/``[]``: no
        restriction; ``month`` may be a ``(first, last)`` pair of ``YYYY-MM``)."""
        m = np.ones(len(self.cells), dtype=bool)
        for dim, val in (filters or {}).items():
            if dim not in STUDY_DIMS:
                raise ValueError(f"unknown filter {dim!r}; use one of {STUDY_DIMS}")
            if val in (None, "All", "", [], ()):
                continue
            if dim == "month":
                lo, hi = self.month_range(filters)
                keep = [i for i, mo in enumerate(self.options["month"]) if lo <= mo <= hi]
            else:
                vals = [val] if isinstance(val, str) else list(val)
                keep = [self.options[dim].index(v) for v in vals if v in self.options[dim]]
            m &= np.isin(self._codes[dim], keep)
        return m

    def episode_mask(self, filters: Mapping[str, Any] | None = None) -> np.ndarray:
        """Episode cells in the filter's months and site (other filters do not apply to FLS
        episodes; with a site chosen, episodes not linked to a CT are left out)."""
        m = np.ones(len(self.episodes), dtype=bool)
        f = filters or {}
        if f.get("month") not in (None, "All", "", [], ()):
            lo, hi = self.month_range(f)
            m &= (self._ep_month >= lo) & (self._ep_month <= hi)
        site = f.get("site")
        if site not in (None, "All", "", [], ()):
            sites = [site] if isinstance(site, str) else list(site)
            m &= np.isin(self._ep_site, sites)
        return m

    def totals(self, filters: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Every study measure summed over the matching cells."""
        sums = self._values[self.mask(filters)].sum(axis=0)
        return {k: float(v) for k, v in zip(STUDY_MEASURES, sums)}

    def episode_totals(self, filters: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Every episode (KPI) count summed over the matching episode cells."""
        sums = self._ep_values[self.episode_mask(filters)].sum(axis=0)
        return {k: float(v) for k, v in zip(self.episode_measures, sums)}

    def by(self, dim: str, filters: Mapping[str, Any] | None = None, *,
           all_values: bool = False) -> pd.DataFrame:
        """Study measures per value of *dim* within *filters* (sorted). With
        ``all_values=True`` every value of the axis is a row, zeros included (for ``month``:
        every month of the filter's range, so a series never skips a month)."""
        m = self.mask(filters)
        codes = self._codes[dim][m]
        k = len(self.options[dim])
        out = np.zeros((k, len(STUDY_MEASURES)))
        np.add.at(out, codes, self._values[m])
        df = pd.DataFrame(out, columns=list(STUDY_MEASURES))
        df.insert(0, dim, self.options[dim])
        if dim == "month" and all_values:
            lo, hi = self.month_range(filters)
            keep = df["month"].isin(self.study_months) & (df["month"] >= lo) & (df["month"] <= hi)
            return df[keep].reset_index(drop=True)
        if all_values:
            return df
        present = np.zeros(k, dtype=bool)
        present[np.unique(codes)] = True
        return df[present].reset_index(drop=True)

    def episodes_by_month(self, filters: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Episode counts per month of the filter's range, every month present."""
        m = self.episode_mask(filters)
        lo, hi = self.month_range(filters)
        months = [mo for mo in self.episode_months if lo <= mo <= hi]
        pos = {mo: i for i, mo in enumerate(months)}
        out = np.zeros((len(months), len(self.episode_measures)))
        for row, mo in zip(self._ep_values[m], self._ep_month[m]):
            if mo in pos:
                out[pos[mo]] += row
        df = pd.DataFrame(out, columns=self.episode_measures)
        df.insert(0, "month", months)
        return df

    def histograms(self, filters: Mapping[str, Any] | None = None
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{interval: (events per day, censorings per day)}`` over the matching cells."""
        cells = np.flatnonzero(self.mask(filters))
        sel = np.isin(self.hist["cell"], cells)
        out = {}
        for i, k in enumerate(INTERVAL_KEYS):
            s = sel & (self.hist["interval"] == i)
            day, ev, cnt = self.hist["day"][s], self.hist["event"][s], self.hist["count"][s]
            out[k] = (np.bincount(day[ev == 1], weights=cnt[ev == 1], minlength=HIST_DAYS),
                      np.bincount(day[ev == 0], weights=cnt[ev == 0], minlength=HIST_DAYS))
        return out

    def months_in(self, filters: Mapping[str, Any] | None = None) -> int:
        """Number of months in the filter's range (for the expected caseload)."""
        return len(month_labels(*self.month_range(filters)))


def _histograms(codes: np.ndarray, parts: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]]
                ) -> dict[str, np.ndarray]:
    empty = {"cell": np.zeros(0, np.int64), "interval": np.zeros(0, np.int8),
             "day": np.zeros(0, np.int64), "event": np.zeros(0, np.int8),
             "count": np.zeros(0, float)}
    if not parts or not len(codes):
        return empty
    cell = np.concatenate([codes[r] for r, _, _, _ in parts])
    interval = np.concatenate([np.full(len(r), i) for r, i, _, _ in parts])
    day = np.concatenate([np.clip(d, 0, HIST_DAYS - 1).astype(np.int64) for _, _, d, _ in parts])
    event = np.concatenate([o.astype(np.int64) for _, _, _, o in parts])
    if not len(cell):
        return empty
    key = ((cell.astype(np.int64) * len(INTERVAL_KEYS) + interval) * HIST_DAYS + day) * 2 + event
    uniq, count = np.unique(key, return_counts=True)
    event_u = uniq % 2
    rest = uniq // 2
    day_u = rest % HIST_DAYS
    rest //= HIST_DAYS
    return {"cell": rest // len(INTERVAL_KEYS), "interval": (rest % len(INTERVAL_KEYS))
            .astype(np.int8), "day": day_u, "event": event_u.astype(np.int8),
            "count": count.astype(float)}


__all__ = [
    "EPISODE_DIMS",
    "NOT_LINKED",
    "STUDY_DIMS",
    "STUDY_MEASURES",
    "UNKNOWN",
    "Aggregate",
    "episode_measures",
    "month_labels",
    "study_measures",
]
