"""Every published figure, from an :class:`~fracture_qi.qi.aggregate.Aggregate` and a filter.

The QI dashboard and the audit notebooks (the conference pack included) call these
functions, so the same filter gives the same numbers and the same suppression in both.
Each function returns a display table (strings) for a mode; the ``*_rows`` functions give
the exact figures they are formatted from.

**Suppression that cannot be undone by differencing.** In publication mode every derived
figure is computed from the *published* counts only (each count rounded to 5, 1-7 hidden):
a rate and its Wilson interval from the rounded numerator and denominator; a weighted
accuracy measure from the rounded cells of each sampling stratum; a kappa from the rounded
contingency table. A figure that needs a hidden count is hidden. So nothing published says
more than the published counts, and the counts' own primary and secondary suppression
(:mod:`fracture_qi.qi.suppression`) protects every hidden cell
(``tests/test_qi_published.py`` checks it by perturbing the exact counts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.qi.agreement import kappa_from_table
from fracture_qi.qi.display import (
    count_text,
    pct,
    rate,
    rate_hidden,
    rate_parts,
    rate_text,
    shown_count,
    small,
    stat_text,
)
from fracture_qi.qi.funnel import STAGES
from fracture_qi.qi.kpi import (
    COMPLETENESS_FIELDS,
    COMPLETENESS_MAX_POOR_FIELDS,
    COMPLETENESS_MISSING_MAX,
    KPI_BY_KEY,
    KPIS,
    NATIONAL_SOURCE,
    band,
)
from fracture_qi.qi.proportions import (
    Proportion,
    StratumSums,
    proportion,
    weighted_proportion_from_sums,
)
from fracture_qi.qi.service import SERVICE_MEASURES
from fracture_qi.qi.suppression import (
    HIDDEN,
    MIN_FOR_STATISTIC,
    Mode,
    secondary_suppression_mask,
    suppress_table,
)
from fracture_qi.qi.timing import INTERVALS, READ_AT, km_from_histogram, summarise_histogram

STRATA = ("flagged", "audit_negative", "other")
#: accuracy measure -> (label, denominator cells, numerator cells, definition)
ACCURACY: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "ppv": ("PPV of the AI flag", ("tp", "fp"), ("tp",),
            "confirmed / adjudicated, among AI-flagged studies"),
    "sensitivity": ("Sensitivity", ("tp", "fn"), ("tp",),
                    "weighted AI-flagged confirmed / weighted confirmed (audit weights 1/p)"),
    "specificity": ("Specificity", ("fp", "tn"), ("tn",),
                    "weighted AI-negative not confirmed / weighted not confirmed"),
    "npv": ("NPV", ("fn", "tn"), ("tn",),
            "not confirmed / adjudicated, among AI-negative audit-sample studies"),
    "prevalence": ("Prevalence", ("tp", "fp", "fn", "tn"), ("tp", "fn"),
                   "weighted confirmed / weighted adjudicated (screened population)"),
}
#: headline tiles: key -> label
TILES: tuple[tuple[str, str], ...] = (
    ("screened", "CTs screened"),
    ("confirmed", "Fractures confirmed"),
    ("newly_identified", "Newly identified"),
    ("therapy_started", "Started on bone therapy"),
    ("ppv", "PPV of the AI flag"),
    ("sensitivity", "Sensitivity (audit-weighted)"),
)
AGREEMENT: tuple[tuple[str, str, str, int, str | None], ...] = (
    ("AI vs nurse", "presence", "kp", 2, None),
    ("AI vs nurse", "grade", "kg", 4, "linear"),
    ("nurse vs nurse", "decision", "nd", 4, None),
    ("nurse vs nurse", "presence", "np", 2, None),
    ("nurse vs nurse", "grade", "ng", 4, "linear"),
)


# --- funnel --------------------------------------------------------------------------------

def funnel_rows(t: Mapping[str, float]) -> pd.DataFrame:
    """Exact funnel counts: ``stage, label, n, parent, n_parent, definition``."""
    rows = []
    for stage, parent, label, definition in STAGES:
        rows.append({"stage": stage, "label": label, "n": int(t.get(stage, 0)),
                     "parent": parent, "n_parent": int(t.get(parent, 0)) if parent else None,
                     "definition": definition})
    return pd.DataFrame(rows)


def funnel_table(t: Mapping[str, float], mode: Mode) -> pd.DataFrame:
    """The funnel for display: number, the stage it is a share of (its denominator), the
    percentage of that stage with its 95% Wilson interval, and the definition."""
    labels = {s: lab for s, _, lab, _ in STAGES}
    out = []
    for stage, parent, label, definition in STAGES:
        n = t.get(stage, 0.0)
        est, ci = ("", "")
        of = ""
        if parent is not None:
            d = t.get(parent, 0.0)
            est, ci = rate_parts(n, d, mode)
            of = f"{labels[parent]} ({count_text(d, mode)})"
        out.append({"Stage": label, "Number": count_text(n, mode), "Of": of,
                    "% of previous stage": est, "95% CI": ci, "Definition": definition})
    return pd.DataFrame(out)


# --- accuracy ------------------------------------------------------------------------------

def _sums(t: Mapping[str, float], den: tuple[str, ...], num: tuple[str, ...], mode: Mode
          ) -> list[StratumSums] | None:
    """Stratum sums of a measure; in publish mode from the rounded cells (None if any
    contributing cell is hidden)."""
    out = []
    for s in STRATA:
        n_c = {c: t.get(f"acc_{s}_{c}_n", 0.0) for c in ("tp", "fp", "fn", "tn")}
        w_c = {c: t.get(f"acc_{s}_{c}_w", 0.0) for c in n_c}
        w2_c = {c: t.get(f"acc_{s}_{c}_w2", 0.0) for c in n_c}
        if mode == "publish":
            shown = {}
            for c, n in n_c.items():
                r = shown_count(n, mode)
                if r is None:
                    if c in den:
                        return None
                    r = 0.0  # a hidden cell outside this measure: its weight sums not used
                shown[c] = r
            mean_w = {c: (w_c[c] / n_c[c] if n_c[c] else 1.0) for c in n_c}
            mean_w2 = {c: (w2_c[c] / n_c[c] if n_c[c] else 1.0) for c in n_c}
            n_c = shown
            w_c = {c: shown[c] * mean_w[c] for c in n_c}
            w2_c = {c: shown[c] * mean_w2[c] for c in n_c}
        n_all = sum(n_c.values())
        if n_all == 0:
            continue
        out.append(StratumSums(n_all, sum(n_c[c] for c in den), sum(n_c[c] for c in num),
                               sum(w_c[c] for c in den), sum(w_c[c] for c in num),
                               sum(w2_c[c] for c in den), sum(w2_c[c] for c in num)))
    return out


def _plain(sums: list[StratumSums]) -> bool:
    """Every denominator case has weight 1 (the PPV of the worklist's own model)."""
    return all(abs(s.w_x - s.n_x) < 1e-9 and abs(s.w2_x - s.n_x) < 1e-9 for s in sums)


#: where each 2x2 cell and margin sits in the published 2x2 table (row, column; 2 = total)
_CELL_POS = {"tp": (0, 0), "fp": (0, 1), "fn": (1, 0), "tn": (1, 1)}
#: accuracy measure -> (numerator, denominator) as 2x2 positions
_CASES_POS = {"ppv": ((0, 0), (0, 2)), "sensitivity": ((0, 0), (2, 0)),
              "specificity": ((1, 1), (2, 1)), "npv": ((1, 1), (1, 2)),
              "prevalence": ((2, 0), (2, 2))}


def _cells_2x2(t: Mapping[str, float]) -> np.ndarray:
    """The AI-vs-nurse 2x2 (rows flagged / not, columns confirmed / not) over strata."""
    c = {k: sum(t.get(f"acc_{s}_{k}_n", 0.0) for s in STRATA) for k in _CELL_POS}
    return np.array([[c["tp"], c["fp"]], [c["fn"], c["tn"]]], dtype=float)


def _hidden_2x2(t: Mapping[str, float]) -> np.ndarray:
    """The cells (and margins) the published 2x2 hides: primary and secondary suppression.
    Every figure derived from the 2x2 respects it, so no table gives away what another
    hides."""
    return secondary_suppression_mask(np.rint(_cells_2x2(t)).astype(np.int64))


def accuracy_rows(t: Mapping[str, float], mode: Mode = "internal",
                  confidence: float = 0.95) -> pd.DataFrame:
    """PPV, sensitivity, specificity, NPV and prevalence with intervals, as
    :func:`fracture_qi.qi.accuracy.accuracy` computes them, from aggregate sums (in publish
    mode from the rounded cells, and hidden when a cell it needs is hidden in the published
    2x2 table; a hidden measure has NaN estimate)."""
    rows = []
    hidden_cells = _hidden_2x2(t) if mode == "publish" else np.zeros((3, 3), bool)
    for key, (label, den, num, definition) in ACCURACY.items():
        k = sum(t.get(f"acc_{s}_{c}_n", 0.0) for s in STRATA for c in num)
        n = sum(t.get(f"acc_{s}_{c}_n", 0.0) for s in STRATA for c in den)
        needs_hidden = any(hidden_cells[_CELL_POS[c]] for c in den)
        sums = None if (rate_hidden(k, n, mode) or needs_hidden) else _sums(t, den, num, mode)
        if sums is None:
            p = Proportion(math.nan, math.nan, math.nan, math.nan, math.nan, int(n), math.nan,
                           "hidden", confidence)
        elif key == "ppv" and _plain(sums):
            kk, nn = sum(s.n_y for s in sums), sum(s.n_x for s in sums)
            p = proportion(int(round(kk)), int(round(nn)), confidence=confidence)
        else:
            p = weighted_proportion_from_sums(sums, confidence=confidence)
        d = p.to_dict()
        d.update(measure=key, label=label, n_numerator=int(k), n_denominator=int(n),
                 definition=definition)
        rows.append(d)
    return pd.DataFrame(rows)


def accuracy_table(t: Mapping[str, float], mode: Mode) -> pd.DataFrame:
    """Accuracy measures for display (publish: from rounded stratum cells; a measure is
    hidden when its numerator or the rest of its denominator is 1-7, or when a cell it needs
    is hidden in the published 2x2). The case counts are the 2x2's cells and margins, shown
    as the published 2x2 shows them."""
    acc = accuracy_rows(t, mode)
    shown = _shown_2x2(t, mode)
    out = []
    for r in acc.itertuples():
        hidden = r.method == "hidden"
        num_pos, den_pos = _CASES_POS[r.measure]
        out.append({
            "Measure": r.label,
            "Estimate": HIDDEN if hidden else pct(r.estimate),
            "95% CI": "" if hidden else _ci(r.low, r.high),
            "Cases (numerator)": shown[num_pos],
            "Cases (denominator)": shown[den_pos],
            "Method": "Wilson" if r.method == "wilson" else (
                "" if hidden else "inverse-probability weighted, Wilson on effective n"),
            "Definition": r.definition,
        })
    return pd.DataFrame(out)


def _shown_2x2(t: Mapping[str, float], mode: Mode) -> dict[tuple[int, int], str]:
    """Text of every cell and margin of the 2x2 as :func:`two_by_two` shows it."""
    cells = np.rint(_cells_2x2(t)).astype(np.int64)
    full = np.zeros((3, 3), dtype=np.int64)
    full[:2, :2] = cells
    full[:2, 2], full[2, :2], full[2, 2] = cells.sum(1), cells.sum(0), cells.sum()
    hidden = _hidden_2x2(t) if mode == "publish" else np.zeros((3, 3), bool)
    return {(i, j): HIDDEN if hidden[i, j] else count_text(full[i, j], mode)
            for i in range(3) for j in range(3)}


def _ci(lo: float, hi: float) -> str:
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return ""
    return f"{100 * lo:.1f}-{100 * hi:.1f}%"


def two_by_two(t: Mapping[str, float], mode: Mode) -> pd.DataFrame:
    """AI flag against the first nurse read (decisive reads), with secondary suppression
    against its totals."""
    cell = {c: int(round(sum(t.get(f"acc_{s}_{c}_n", 0.0) for s in STRATA)))
            for c in ("tp", "fp", "fn", "tn")}
    table = pd.DataFrame({
        "AI": ["flagged", "not flagged (audit sample)"],
        "nurse confirmed": [cell["tp"], cell["fn"]],
        "nurse not confirmed": [cell["fp"], cell["tn"]],
    })
    return suppress_table(table, ["nurse confirmed", "nurse not confirmed"], mode=mode,
                          add_totals=True)


# --- agreement -----------------------------------------------------------------------------

def _table(t: Mapping[str, float], prefix: str, k: int) -> np.ndarray:
    return np.array([[t.get(f"{prefix}_{i}{j}", 0.0) for j in range(k)] for i in range(k)])


def agreement_rows(t: Mapping[str, float], mode: Mode = "internal") -> pd.DataFrame:
    """Kappas from the aggregate tables (publish: from the rounded table, NaN when a cell
    is hidden): ``comparison, what, kappa, low, high, se, n, weights, hidden``."""
    rows = []
    for comp, what, prefix, k, weights in AGREEMENT:
        tab = _table(t, prefix, k)
        n = float(tab.sum())
        # hidden when the table, published, would hide a cell (primary or secondary)
        hidden = mode == "publish" and bool(
            secondary_suppression_mask(np.rint(tab).astype(np.int64))[:k, :k].any())
        if mode == "publish" and not hidden:
            tab = np.array([[shown_count(v, mode) or 0.0 for v in row] for row in tab])
        res = kappa_from_table(tab, weights=weights)
        nan = float("nan")
        rows.append({"comparison": comp, "what": what, "weights": weights, "n": int(n),
                     "hidden": hidden,
                     "kappa": nan if hidden else res.kappa, "low": nan if hidden else res.low,
                     "high": nan if hidden else res.high, "se": nan if hidden else res.se})
    return pd.DataFrame(rows)


def agreement_table(t: Mapping[str, float], mode: Mode) -> pd.DataFrame:
    """Kappas for display: hidden in publish mode when any cell of the table is 1-7 (a
    kappa beside a published zero cell can pin down the hidden ones), otherwise from the
    rounded table."""
    out = []
    for r in agreement_rows(t, mode).itertuples():
        if r.hidden:
            k, ci = HIDDEN, ""
        elif math.isnan(r.kappa):
            k, ci = "", ""
        else:
            k, ci = f"{r.kappa:.2f}", f"{r.low:.2f} to {r.high:.2f}"
        out.append({"Comparison": r.comparison,
                    "What": r.what + (f" ({r.weights}-weighted)" if r.weights else ""),
                    "Kappa": k, "95% CI": ci, "Cases": count_text(r.n, mode)})
    return pd.DataFrame(out)


# --- KPIs ----------------------------------------------------------------------------------

def kpi_rows(counts: Mapping[str, float], *, months: int | None = None,
             expected_caseload_per_year: float | None = None,
             confidence: float = 0.95) -> pd.DataFrame:
    """The eleven FLS-DB KPIs, exact, from the counts of
    :func:`fracture_qi.qi.kpi.kpi_counts` (or an aggregate's episode totals)."""
    rows = []
    for k in KPIS:
        num = den = math.nan
        low = high = math.nan
        if k.key == "data_completeness":
            fields = [(counts.get(f"cf_{f}_miss", 0.0), counts.get(f"cf_{f}_app", 0.0))
                      for f, _ in COMPLETENESS_FIELDS]
            applicable = [(m, a) for m, a in fields if a > 0]
            poor = sum(1 for m, a in applicable if m / a > COMPLETENESS_MISSING_MAX)
            den = float(len(applicable))
            num = den - poor
            pct_ = 100 * num / den if den else math.nan
            b = "" if not den else ("good" if poor < COMPLETENESS_MAX_POOR_FIELDS else "not good")
        elif k.key == "identification":
            num = counts.get("episodes", 0.0)
            if expected_caseload_per_year and months:
                den = float(expected_caseload_per_year) * months / 12
            pct_ = 100 * num / den if den and not math.isnan(den) else math.nan
            b = band(k.key, pct_)
        else:
            num, den = counts.get(f"{k.key}_num", 0.0), counts.get(f"{k.key}_den", 0.0)
            p = proportion(int(round(num)), int(round(den)), confidence=confidence)
            pct_ = 100 * p.estimate if den else math.nan
            low, high = (100 * p.low, 100 * p.high) if den else (math.nan, math.nan)
            b = band(k.key, pct_)
        rows.append({"kpi": k.key, "number": k.number, "label": k.label, "numerator": num,
                     "denominator": den, "percent": pct_, "low": low, "high": high, "band": b,
                     "national": k.national, "numerator_definition": k.numerator,
                     "denominator_definition": k.denominator})
    return pd.DataFrame(rows)


def kpi_table(counts: Mapping[str, float], mode: Mode, *, months: int | None = None,
              expected_caseload_per_year: float | None = None,
              whole_service: bool = True) -> pd.DataFrame:
    """The FLS-DB KPI table for display: each figure with its numerator and denominator,
    its interval, its band and the national average (FLS-DB 2019 data). With
    ``whole_service=False`` (a site chosen) KPI 2 is not shown: the expected caseload is the
    whole service's."""
    rows = kpi_rows(counts, months=months,
                    expected_caseload_per_year=expected_caseload_per_year if whole_service
                    else None)
    out = []
    for r in rows.itertuples():
        national = "" if r.national is None or pd.isna(r.national) else f"{r.national:g}%"
        if r.kpi == "data_completeness":
            shown_num, shown_den = _int_text(r.numerator), _int_text(r.denominator)
            est, ci = ("" if math.isnan(r.percent) else f"{r.percent:.1f}%"), ""
            b = r.band
            den_is = "key fields (field counts, not patients)"
        elif r.kpi == "identification":
            shown_num = count_text(r.numerator, mode)
            if not whole_service:
                shown_den, est, ci, b = "", "n/a", "", ""
                den_is = "the expected caseload is the whole service's: choose all sites"
            elif math.isnan(r.denominator):
                shown_den, est, ci, b = "", "not set", "", ""
                den_is = ("expected caseload: set fls.expected_caseload_per_year in the "
                          "manifest (the FLS-DB local estimate)")
            else:
                shown_den = f"{r.denominator:.0f} (expected)"
                shown = shown_count(r.numerator, mode)
                est = HIDDEN if shown is None else f"{100 * shown / r.denominator:.1f}%"
                ci, b = "", ("" if shown is None else band(r.kpi, 100 * shown / r.denominator))
                den_is = r.denominator_definition
        else:
            shown_num, shown_den = count_text(r.numerator, mode), count_text(r.denominator, mode)
            est, ci = rate_parts(r.numerator, r.denominator, mode)
            shown_rate = rate(r.numerator, r.denominator, mode)[0]
            b = "" if shown_rate is None else band(r.kpi, 100 * shown_rate)
            den_is = r.denominator_definition
        out.append({"No.": str(r.number), "KPI": r.label, "Numerator": shown_num,
                    "Denominator": shown_den, "Denominator is": den_is, "%": est,
                    "95% CI": ci, "Band": b, "National average (FLS-DB 2019)": national})
    return pd.DataFrame(out)


def _int_text(v: float) -> str:
    return "" if v is None or math.isnan(v) else str(int(v))


def completeness_table(counts: Mapping[str, float], mode: Mode) -> pd.DataFrame:
    """FLS-DB KPI 1 field by field: records it applies to, missing, % missing."""
    out = []
    for f, when in COMPLETENESS_FIELDS:
        app, miss = counts.get(f"cf_{f}_app", 0.0), counts.get(f"cf_{f}_miss", 0.0)
        est, _ = rate_parts(miss, app, mode)
        poor = bool(app) and miss / app > COMPLETENESS_MISSING_MAX
        out.append({"Field": f, "Applies": when, "Records": count_text(app, mode),
                    "Missing": count_text(miss, mode), "% missing": est,
                    "More than 20% missing": "" if est in (HIDDEN, "") else (
                        "yes" if poor else "no")})
    return pd.DataFrame(out)


def kpi_source_note() -> str:
    """Where the national averages and the bands come from (for every KPI output)."""
    return (f"National averages: {NATIONAL_SOURCE}. Bands: IOF Capture the Fracture patient-"
            "level KPIs (Javaid et al., Osteoporos Int 2020;31:1193-204): <50% red, 50-80% "
            "amber, >80% green; treatment recommendation one 50% level; spinal fracture "
            "identification <10% red, 10-20% amber, >20% green (FLS-DB: green above 20%).")


# --- service measures ----------------------------------------------------------------------

def service_rows(t: Mapping[str, float]) -> pd.DataFrame:
    """The service's own measures, exact: ``measure, label, numerator, denominator,
    estimate, low, high``."""
    pairs = {"ai_unassessable": ("svc_unassessable", "svc_result"),
             "not_in_report": ("svc_not_reported", "svc_conf_flagged")}
    rows = []
    for key, (num_key, den_key) in pairs.items():
        k, n = t.get(num_key, 0.0), t.get(den_key, 0.0)
        p = proportion(int(round(k)), int(round(n)))
        label, num_def, den_def, _ = SERVICE_MEASURES[key]
        rows.append({"measure": key, "label": label, "numerator": k, "denominator": n,
                     "estimate": p.estimate, "low": p.low, "high": p.high,
                     "numerator_definition": num_def, "denominator_definition": den_def})
    return pd.DataFrame(rows)


def service_table(t: Mapping[str, float], mode: Mode) -> pd.DataFrame:
    """The service's own measures for display, with numerator, denominator and interval."""
    out = []
    for r in service_rows(t).itertuples():
        est, ci = rate_parts(r.numerator, r.denominator, mode)
        out.append({"Measure": r.label, "Numerator": count_text(r.numerator, mode),
                    "Denominator": count_text(r.denominator, mode),
                    "Denominator is": r.denominator_definition, "%": est, "95% CI": ci,
                    "Numerator is": r.numerator_definition})
    return pd.DataFrame(out)


# --- times ---------------------------------------------------------------------------------

def times_rows(hists: Mapping[str, tuple[np.ndarray, np.ndarray]],
               t: Mapping[str, float]) -> pd.DataFrame:
    """Exact times summary per interval (see :func:`fracture_qi.qi.timing.pathway_times`)."""
    rows = []
    for key, (_stage, _col, label) in INTERVALS.items():
        ev, ce = hists[key]
        rows.append({"interval": key, "label": label,
                     **summarise_histogram(ev, ce, t.get(f"t_{key}_impossible", 0.0))})
    return pd.DataFrame(rows)


def times_table(hists: Mapping[str, tuple[np.ndarray, np.ndarray]], t: Mapping[str, float],
                mode: Mode) -> pd.DataFrame:
    """Pathway times for display. Medians and IQR are of those who got there; the
    Kaplan-Meier figures count those still waiting (censored at the cut-off). In publish
    mode a median needs 8 patients who reached the event, and the Kaplan-Meier figures are
    hidden when fewer than 8 patients, or 1-7 reached or still waiting."""
    out = []
    for r in times_rows(hists, t).itertuples():
        n_r, n_p, n_c = r.n_reached, r.n_patients, r.n_censored

        def s(v: float, n: float = n_r) -> str:
            return stat_text(v, n, mode)

        iqr = "" if math.isnan(r.q1) else f"{s(r.q1)}-{s(r.q3)}"
        median = s(r.median) + (f" ({iqr})" if iqr and HIDDEN not in iqr else "")
        km_hidden = mode == "publish" and (n_p < MIN_FOR_STATISTIC or small(n_r) or small(n_c))
        km = {}
        for d in READ_AT:
            est = getattr(r, f"reached_{d}d")
            lo, hi = getattr(r, f"reached_{d}d_low"), getattr(r, f"reached_{d}d_high")
            km[d] = HIDDEN if km_hidden else ("" if math.isnan(est) else
                                              f"{pct(est)} ({_ci(lo, hi)})")
        out.append({
            "Interval": r.label, "Patients": count_text(n_p, mode),
            "Reached": count_text(n_r, mode), "Still waiting (censored)": count_text(n_c, mode),
            "Left out: event dated before the CT": count_text(r.n_impossible, mode),
            "Median days (IQR), of those reached": median,
            "Kaplan-Meier median days": HIDDEN if km_hidden else s(r.km_median, n_p),
            "Reached by 90 days (95% CI)": km[90], "Reached by 16 weeks (95% CI)": km[112],
        })
    return pd.DataFrame(out)


def km_published(ev: np.ndarray, ce: np.ndarray, mode: Mode) -> pd.DataFrame:
    """A Kaplan-Meier curve to chart: daily internally; in publish mode read every 4 weeks
    (a daily step can be one patient) and empty with fewer than 8 patients."""
    curve = km_from_histogram(ev, ce)
    n0 = float(np.sum(ev) + np.sum(ce))
    if n0 == 0 or (mode == "publish" and n0 < MIN_FOR_STATISTIC):
        return curve.iloc[0:0]
    last = int(np.flatnonzero(ev + ce)[-1]) if np.any(ev + ce) else 0
    curve = curve.iloc[: last + 1]
    if mode == "publish":
        grid = np.arange(0, last + 28, 28)
        grid = grid[grid <= max(last, 0) + 27]
        curve = curve.set_index("days").reindex(grid.astype(float), method="ffill")
        curve = curve.reset_index().rename(columns={"index": "days"})
        curve["at_risk"] = [shown_count(v, mode) for v in curve["at_risk"]]
        curve = curve.drop(columns=["events", "censored"])
    return curve.reset_index(drop=True)


def km_table(ev: np.ndarray, ce: np.ndarray, mode: Mode,
             days: tuple[int, ...] = (30, 60, 90, 112, 182, 365)) -> pd.DataFrame:
    """The curve read at fixed days: proportion reached (95% CI) and number still at risk."""
    curve = km_from_histogram(ev, ce)
    n0 = float(np.sum(ev) + np.sum(ce))
    hide = mode == "publish" and (n0 < MIN_FOR_STATISTIC or small(np.sum(ev))
                                  or small(np.sum(ce)))
    rows = []
    for d in days:
        r = curve.iloc[min(d, len(curve) - 1)]
        after = curve[curve["days"] > d]
        at_risk = float(after["at_risk"].iloc[0]) if len(after) and n0 else 0.0
        est = HIDDEN if hide else ("" if not n0 else
                                   f"{pct(r['reached'])} ({_ci(r['reached_low'], r['reached_high'])})")
        rows.append({"day": str(d), "reached (95% CI)": est,
                     "still at risk": count_text(at_risk, mode)})
    return pd.DataFrame(rows)


# --- tiles, breakdowns, months -------------------------------------------------------------

def tiles(t: Mapping[str, float], mode: Mode) -> dict[str, str]:
    """Headline numbers (as the pack's headline table words them)."""
    acc = accuracy_table(t, mode).set_index("Measure")
    out = {k: count_text(t.get(k, 0.0), mode) for k, _ in TILES[:4]}
    for key, label in (("ppv", "PPV of the AI flag"), ("sensitivity", "Sensitivity")):
        est, ci = acc.loc[label, "Estimate"], acc.loc[label, "95% CI"]
        out[key] = f"{est} ({ci})" if ci else est
    return out


def headline_table(t: Mapping[str, float], mode: Mode) -> pd.DataFrame:
    """The tiles as a two-column table (``measure, value``)."""
    tl = tiles(t, mode)
    return pd.DataFrame([(label, tl[k]) for k, label in TILES], columns=["measure", "value"])


BREAKDOWN_COUNTS = ("screened", "flagged", "confirmed", "newly_identified", "therapy_started")


def breakdown(by: pd.DataFrame, dim: str, mode: Mode) -> pd.DataFrame:
    """Counts and PPV per value of *dim* (rows of :meth:`Aggregate.by`)."""
    counts = by[[dim, *BREAKDOWN_COUNTS]].copy()
    for c in BREAKDOWN_COUNTS:
        counts[c] = counts[c].round().astype(int)
    out = suppress_table(counts, list(BREAKDOWN_COUNTS), mode=mode, row_totals=False)
    out["PPV (95% CI)"] = [accuracy_text(r, "ppv", mode) for r in by.to_dict("records")]
    return out


def accuracy_text(t: Mapping[str, float], measure: str, mode: Mode) -> str:
    """One accuracy measure as ``'80.0% (67.0-88.8%)'``, ``'*'`` or ``''``."""
    r = accuracy_rows(t, mode).set_index("measure").loc[measure]
    if r["method"] == "hidden":
        return HIDDEN
    if math.isnan(r["estimate"]):
        return ""
    ci = _ci(r["low"], r["high"])
    return f"{pct(r['estimate'])} ({ci})" if ci else pct(r["estimate"])


MONTHLY_STAGES = ("ct", "eligible", "screened", "flagged", "confirmed", "newly_identified",
                  "therapy_started")


def monthly_table(by_month: pd.DataFrame, mode: Mode) -> pd.DataFrame:
    """Funnel counts per month (every month of the range, zeros included), suppressed."""
    df = by_month[["month", *MONTHLY_STAGES]].copy()
    for c in MONTHLY_STAGES:
        df[c] = df[c].round().astype(int)
    return suppress_table(df, list(MONTHLY_STAGES), mode=mode, row_totals=False)


def summary(agg: Any, filters: Mapping[str, Any] | None, mode: Mode, *,
            expected_caseload_per_year: float | None = None,
            whole_service: bool | None = None) -> dict[str, Any]:
    """Every headline table for a filter: what the pack and the dashboard show.

    Returns
    -------
    dict
        ``mode, headline, funnel, kpis, completeness, service, accuracy, two_by_two,
        times, agreement`` (display DataFrames) and ``totals`` / ``episode_totals`` (the
        sums they come from; never published as such).
    """
    f = dict(filters or {})
    t = agg.totals(f)
    et = agg.episode_totals(f)
    hists = agg.histograms(f)
    months = agg.months_in(f)
    return {
        "mode": mode,
        "headline": headline_table(t, mode),
        "funnel": funnel_table(t, mode),
        "kpis": kpi_table(et, mode, months=months,
                          expected_caseload_per_year=expected_caseload_per_year,
                          whole_service=(f.get("site") in (None, "", "All", [], ())
                                         if whole_service is None else whole_service)),
        "completeness": completeness_table(et, mode),
        "service": service_table(t, mode),
        "accuracy": accuracy_table(t, mode),
        "two_by_two": two_by_two(t, mode),
        "times": times_table(hists, t, mode),
        "agreement": agreement_table(t, mode),
        "totals": t,
        "episode_totals": et,
    }


__all__ = [
    "ACCURACY",
    "TILES",
    "accuracy_rows",
    "accuracy_table",
    "accuracy_text",
    "agreement_rows",
    "agreement_table",
    "breakdown",
    "completeness_table",
    "funnel_rows",
    "funnel_table",
    "headline_table",
    "km_published",
    "km_table",
    "kpi_rows",
    "kpi_source_note",
    "kpi_table",
    "monthly_table",
    "rate_text",
    "service_rows",
    "service_table",
    "summary",
    "tiles",
    "times_rows",
    "times_table",
    "two_by_two",
]
