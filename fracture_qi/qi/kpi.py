"""The FLS-DB key performance indicators: the Royal College of Physicians' eleven.

Computed over ``AnalysisData.episodes`` (one row per FLS episode, CT-linked or not). The
*index date* is the date the fracture was identified: the linked CT's date, else the
referral date. A KPI with a time window counts only episodes whose window has passed by the
data cut-off (so recent patients do not drag a rate down), and leaves out patients who died
inside the window without the event. Definitions follow the FLS-DB KPI list (RCP, "FLS-DB
improvement repository"); where this suite's records cannot follow it exactly the
difference is said (``docs/measures.md`` section 7 has the full table).

====  ======================  ==========================================  =====================================
KPI   key                     numerator                                   denominator
====  ======================  ==========================================  =====================================
1     data_completeness       key fields with at most 20 % missing        key fields (:data:`COMPLETENESS_FIELDS`);
                                                                          good: fewer than 5 fields > 20 % missing
2     identification          FLS episodes in the period                  expected caseload of the period (local
                                                                          estimate per year x years in the period)
3     spine_identification    index fracture is a spine fracture          all episodes
4     assessed_90d            FLS assessment <= 90 days after index       episodes with 90 days' follow-up
5     dxa_90d                 DXA <= 90 days after index                  episodes with 90 days' follow-up
6     falls_assessment        falls assessment (or referral) recorded     episodes with 90 days' follow-up
7     therapy_recommended     bone therapy recommended                    episodes with 90 days' follow-up
8     strength_balance_16w    strength and balance training started       non-hip episodes with 16 weeks'
                              <= 16 weeks (112 days) after index          follow-up
9     followup_16w            follow-up contact <= 16 weeks after index   recommended, 16 weeks' follow-up
10    started_16w             therapy started <= 16 weeks after index     recommended, 16 weeks' follow-up
                              (treatment started by follow-up)
11    adherent_52w            recorded adherent at 52 weeks               recommended, 52 weeks' follow-up
====  ======================  ==========================================  =====================================

Bands: IOF Capture the Fracture (<50 % red, 50-80 % amber, >80 % green); treatment
recommendation a single 50 % level (IOF); spinal fracture identification its own bands
(<10 % red, 10-20 % amber, >20 % green; FLS-DB: green above 20 %); data completeness "good"
or "not good" (FLS-DB). National averages: FLS-DB 2019 data (ANATOMY.md section 6).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: days of follow-up for the 90-day KPIs (FLS-DB KPIs 4-5)
WINDOW_90D = 90
#: 16 weeks (FLS-DB KPIs 8-10)
WINDOW_16W = 112
#: 52 weeks (FLS-DB KPI 11)
WINDOW_52W = 364
#: FLS-DB KPI 1: a key field is poorly completed when more than this share is missing ...
COMPLETENESS_MISSING_MAX = 0.20
#: ... and completeness is good when fewer than this many key fields are
COMPLETENESS_MAX_POOR_FIELDS = 5
#: where the national averages come from
NATIONAL_SOURCE = ("FLS-DB national average, 2019 data (RCP FLS-DB benchmarks 2019, "
                   "www.fffap.org.uk; ANATOMY.md section 6)")
NATIONAL_YEAR = 2019


@dataclass(frozen=True)
class KpiDef:
    """One KPI: what it counts, how it is banded, what the country achieved.

    Attributes
    ----------
    key, number
        Short name and FLS-DB KPI number (0 for the service's own measures).
    label
        As shown in tables.
    numerator, denominator
        Plain-language definitions (shown beside the figure).
    bands
        ``iof``, ``spine``, ``recommend``, ``completeness`` or ``""`` (none).
    national
        FLS-DB 2019 national average (%) or None.
    improvement
        ``"up"`` when higher is better (every KPI here).
    """

    key: str
    number: int
    label: str
    numerator: str
    denominator: str
    bands: str
    national: float | None
    improvement: str = "up"

    @property
    def target(self) -> float | None:
        """The green threshold (%) as an SPC target."""
        return {"iof": 80.0, "spine": 20.0, "recommend": 50.0}.get(self.bands)


KPIS: tuple[KpiDef, ...] = (
    KpiDef("data_completeness", 1, "Data completeness",
           "key fields with at most 20% missing", "key fields recorded by the service",
           "completeness", None),
    KpiDef("identification", 2, "Identification: all fragility fractures",
           "FLS patients identified in the period",
           "expected caseload of the period (local estimate)", "iof", 37.1),
    KpiDef("spine_identification", 3, "Identification: spinal fractures",
           "patients whose index fracture is a spine fracture", "all FLS patients", "spine",
           17.9),
    KpiDef("assessed_90d", 4, "FLS assessment within 90 days",
           "assessed by the FLS within 90 days of the fracture",
           "patients with 90 days' follow-up", "iof", 70.0),
    KpiDef("dxa_90d", 5, "DXA within 90 days", "DXA scan within 90 days of the fracture",
           "patients with 90 days' follow-up", "iof", 46.8),
    KpiDef("falls_assessment", 6, "Falls assessment",
           "falls assessment done or referred", "patients with 90 days' follow-up", "iof",
           62.0),
    KpiDef("therapy_recommended", 7, "Bone therapy recommended",
           "anti-osteoporosis medication recommended", "patients with 90 days' follow-up",
           "recommend", 52.5),
    KpiDef("strength_balance_16w", 8, "Strength and balance training by 16 weeks",
           "strength and balance training started within 16 weeks",
           "non-hip fracture patients with 16 weeks' follow-up", "iof", 6.1),
    KpiDef("followup_16w", 9, "Follow-up contact by 16 weeks",
           "follow-up (monitoring) contact within 16 weeks",
           "patients recommended therapy, with 16 weeks' follow-up", "iof", 20.7),
    KpiDef("started_16w", 10, "Treatment started by follow-up",
           "bone therapy started within 16 weeks",
           "patients recommended therapy, with 16 weeks' follow-up", "iof", 22.9),
    KpiDef("adherent_52w", 11, "Adherent at 52 weeks",
           "recorded as taking therapy at 52 weeks",
           "patients recommended therapy, with 52 weeks' follow-up", "iof", 20.8),
)
KPI_BY_KEY = {k.key: k for k in KPIS}
#: the patient-level KPIs (3-11): a numerator and a denominator mask per episode
PATIENT_KPIS = tuple(k.key for k in KPIS if k.number >= 3)

#: FLS-DB KPI 1 key fields and when each applies. Fields whose blank means "not done" (an
#: assessment date) are not here: a blank there is an outcome, not missing data.
COMPLETENESS_FIELDS: tuple[tuple[str, str], ...] = (
    ("referral_date", "always"),
    ("index_fracture_site", "always"),
    ("reported_by_radiology", "always"),
    ("known_to_fls_before", "always"),
    ("on_therapy_before", "always"),
    ("therapy_recommended", "once assessed"),
    ("dxa_t_score", "once a DXA is recorded"),
    ("drug", "once therapy started"),
    ("adherent_52w", "52 weeks after therapy started"),
)


def band(kpi: str, pct: float) -> str:
    """The RAG band of a KPI percentage (see the module docstring).

    Examples
    --------
    >>> band("assessed_90d", 85.0), band("assessed_90d", 60.0), band("spine_identification", 15.0)
    ('green', 'amber', 'amber')
    >>> band("therapy_recommended", 52.5), band("spine_identification", 8.0)
    ('green', 'red')
    """
    if pct is None or (isinstance(pct, float) and math.isnan(pct)):
        return ""
    kind = KPI_BY_KEY[kpi].bands if kpi in KPI_BY_KEY else "iof"
    if kind == "spine":
        return "green" if pct > 20 else ("amber" if pct >= 10 else "red")
    if kind == "recommend":
        return "green" if pct >= 50 else "red"
    if kind == "completeness":
        return ""
    return "green" if pct > 80 else ("amber" if pct >= 50 else "red")


def _dates(ep: pd.DataFrame, col: str) -> pd.Series:
    if col not in ep:
        return pd.Series(pd.NaT, index=ep.index, dtype="datetime64[ns]")
    return pd.to_datetime(ep[col], errors="coerce")


def _within(start: pd.Series, end: pd.Series, days: int) -> pd.Series:
    d = (end - start).dt.days
    return d.notna() & (d <= days) & (d >= 0)


def _window(ep: pd.DataFrame, cut: pd.Timestamp, days: int, event: str) -> pd.Series:
    """Episodes whose window has passed, less deaths inside it without the event."""
    idx = _dates(ep, "index_date")
    passed = idx + pd.Timedelta(days=days) <= cut
    death = _dates(ep, "death_date")
    ev = _dates(ep, event)
    died_first = (
        death.notna() & (death <= idx + pd.Timedelta(days=days)) & (ev.isna() | (ev > death))
    )
    return passed & ~died_first


def is_spine(ep: pd.DataFrame) -> pd.Series:
    """Index fracture is a spine fracture: recorded so, or (site not recorded) the linked
    CT's first read confirmed a vertebral fracture."""
    site = ep["index_fracture_site"] if "index_fracture_site" in ep else pd.Series(
        None, index=ep.index, dtype=object)
    ct = ep["ct_identified"].eq(True) if "ct_identified" in ep else False
    return site.eq("spine") | (site.isna() & ct)


def kpi_masks(episodes: pd.DataFrame, cutoff: dt.date) -> dict[str, tuple[pd.Series, pd.Series]]:
    """``{kpi: (numerator mask, denominator mask)}`` for the patient-level KPIs (3-11)."""
    ep = episodes
    cut = pd.Timestamp(cutoff)
    idx = _dates(ep, "index_date")
    in_data = idx <= cut

    def by(col: str) -> pd.Series:
        d = _dates(ep, col)
        return d.notna() & (d <= cut)

    m: dict[str, tuple[pd.Series, pd.Series]] = {}
    m["spine_identification"] = (in_data & is_spine(ep), in_data)
    for key, col in (("assessed_90d", "assessment_date"), ("dxa_90d", "dxa_date")):
        den = in_data & _window(ep, cut, WINDOW_90D, col)
        m[key] = (den & _within(idx, _dates(ep, col), WINDOW_90D), den)
    den = in_data & _window(ep, cut, WINDOW_90D, "falls_assessment_date")
    m["falls_assessment"] = (den & by("falls_assessment_date"), den)
    den = in_data & _window(ep, cut, WINDOW_90D, "assessment_date")
    rec = ep["therapy_recommended"].eq(True)
    m["therapy_recommended"] = (den & rec, den)
    site = ep["index_fracture_site"] if "index_fracture_site" in ep else pd.Series(
        None, index=ep.index, dtype=object)
    den = in_data & ~site.eq("hip") & _window(ep, cut, WINDOW_16W, "strength_balance_date")
    m["strength_balance_16w"] = (
        den & _within(idx, _dates(ep, "strength_balance_date"), WINDOW_16W), den)
    for key, col in (("followup_16w", "followup_date"), ("started_16w", "therapy_start_date")):
        den = in_data & rec & _window(ep, cut, WINDOW_16W, col)
        m[key] = (den & _within(idx, _dates(ep, col), WINDOW_16W), den)
    den = in_data & rec & _window(ep, cut, WINDOW_52W, "therapy_start_date")
    m["adherent_52w"] = (den & ep["adherent_52w"].eq(True), den)
    return {k: (num.fillna(False).astype(bool), d.fillna(False).astype(bool))
            for k, (num, d) in m.items()}


def completeness_masks(episodes: pd.DataFrame,
                       cutoff: dt.date) -> dict[str, tuple[pd.Series, pd.Series]]:
    """``{field: (missing mask, applicable mask)}`` for the KPI 1 key fields."""
    ep = episodes
    cut = pd.Timestamp(cutoff)
    in_data = _dates(ep, "index_date") <= cut
    start = _dates(ep, "therapy_start_date")
    applies = {
        "always": in_data,
        "once assessed": in_data & _dates(ep, "assessment_date").notna(),
        "once a DXA is recorded": in_data & _dates(ep, "dxa_date").notna(),
        "once therapy started": in_data & start.notna() & (start <= cut),
        "52 weeks after therapy started": in_data & start.notna()
        & (start + pd.Timedelta(days=WINDOW_52W) <= cut),
    }
    out = {}
    for field, when in COMPLETENESS_FIELDS:
        col = ep[field] if field in ep else pd.Series(None, index=ep.index, dtype=object)
        app = applies[when].fillna(False).astype(bool)
        out[field] = ((app & col.isna()).astype(bool), app)
    return out


def completeness_table(missing: dict[str, float], applicable: dict[str, float]) -> pd.DataFrame:
    """Per key field: ``field, applies, applicable, missing, percent_missing, poor``."""
    rows = []
    for field, when in COMPLETENESS_FIELDS:
        app, miss = float(applicable.get(field, 0)), float(missing.get(field, 0))
        pct = 100 * miss / app if app else float("nan")
        rows.append({"field": field, "applies": when, "applicable": int(app),
                     "missing": int(miss), "percent_missing": pct,
                     "poor": bool(app and miss / app > COMPLETENESS_MISSING_MAX)})
    return pd.DataFrame(rows)


def kpi_counts(episodes: pd.DataFrame, cutoff: dt.date) -> dict[str, float]:
    """Every count the KPI table needs, as a flat dict (what the aggregate cube sums).

    Keys: ``episodes``; ``<kpi>_num`` and ``<kpi>_den`` for KPIs 3-11;
    ``cf_<field>_app`` and ``cf_<field>_miss`` for the KPI 1 fields.
    """
    out: dict[str, float] = {
        "episodes": float((_dates(episodes, "index_date") <= pd.Timestamp(cutoff)).sum())}
    for k, (num, den) in kpi_masks(episodes, cutoff).items():
        out[f"{k}_num"], out[f"{k}_den"] = float(num.sum()), float(den.sum())
    for f, (miss, app) in completeness_masks(episodes, cutoff).items():
        out[f"cf_{f}_miss"], out[f"cf_{f}_app"] = float(miss.sum()), float(app.sum())
    return out


def fls_kpis(episodes: pd.DataFrame, cutoff: dt.date, *, months: int | None = None,
             expected_caseload_per_year: float | None = None,
             confidence: float = 0.95) -> pd.DataFrame:
    """The eleven FLS-DB KPIs with Wilson intervals, exact (format with
    :func:`fracture_qi.qi.published.kpi_table` for display).

    Parameters
    ----------
    episodes
        ``AnalysisData.episodes``.
    cutoff
        ``AnalysisData.cutoff``.
    months
        Length of the period in months (for KPI 2's expected caseload).
    expected_caseload_per_year
        The service's local estimate of fragility fractures a year (FLS-DB supplies it);
        None: KPI 2 is not computed.
    confidence
        Two-sided level.

    Returns
    -------
    pandas.DataFrame
        ``kpi, number, label, numerator, denominator, percent, low, high, band, national,
        numerator_definition, denominator_definition`` (percentages 0-100).

    Examples
    --------
    >>> ep = pd.DataFrame({
    ...     "index_date": pd.to_datetime(["2025-01-01", "2025-01-01"]),
    ...     "referral_date": pd.to_datetime(["2025-01-03", "2025-01-05"]),
    ...     "assessment_date": pd.to_datetime(["2025-02-01", "2025-06-01"]),
    ...     "dxa_date": pd.NaT, "dxa_t_score": np.nan, "death_date": pd.NaT,
    ...     "therapy_recommended": pd.array([True, False], dtype="boolean"),
    ...     "therapy_start_date": pd.NaT, "adherent_52w": pd.array([None, None], dtype="boolean"),
    ...     "ct_identified": [True, False]})
    >>> k = fls_kpis(ep, dt.date(2025, 12, 31)).set_index("kpi")
    >>> [float(x) for x in k.loc["assessed_90d", ["numerator", "denominator", "percent"]]]
    [1.0, 2.0, 50.0]
    """
    from fracture_qi.qi.published import kpi_rows

    counts = kpi_counts(episodes, cutoff)
    return kpi_rows(counts, months=months, expected_caseload_per_year=expected_caseload_per_year,
                    confidence=confidence)


__all__ = [
    "COMPLETENESS_FIELDS",
    "KPIS",
    "KPI_BY_KEY",
    "KpiDef",
    "NATIONAL_SOURCE",
    "band",
    "completeness_masks",
    "completeness_table",
    "fls_kpis",
    "is_spine",
    "kpi_counts",
    "kpi_masks",
]
