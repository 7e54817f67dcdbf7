"""Published figures: KPIs by hand, suppression that survives differencing, times that agree,
SPC that never charts a rounded count, every month on the axis."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from fracture_qi.qi import published as P
from fracture_qi.qi.aggregate import Aggregate
from fracture_qi.qi.kpi import kpi_counts
from fracture_qi.qi.spc_panels import spc_panel
from fracture_qi.qi.timing import km_from_histogram, pathway_times

CUT = dt.date(2025, 12, 31)


# --- the FLS-DB KPIs on a hand-built cohort ---------------------------------------------------

def episodes_by_hand() -> pd.DataFrame:
    """Ten FLS patients; every KPI below is counted by hand in the test."""
    d = pd.to_datetime
    rows = [
        # index,      site,    assess,       dxa,          falls,        rec,   start,        s&b,          follow,       adh,  death
        ("2025-01-10", "spine", "2025-02-01", "2025-03-01", "2025-02-01", True, "2025-03-20", "2025-03-01", "2025-04-20", True, None),
        ("2025-01-15", "spine", "2025-05-30", None, None, True, "2025-06-30", None, None, None, None),
        ("2025-02-01", "hip", "2025-02-10", "2025-02-20", "2025-02-10", True, "2025-07-01", None, "2025-05-01", None, None),
        ("2025-02-01", "wrist", None, None, None, None, None, None, None, None, "2025-02-20"),
        ("2025-03-01", "wrist", "2025-03-20", "2025-06-15", "2025-03-20", False, None, "2025-04-01", None, None, None),
        ("2025-03-05", None, "2025-04-01", None, None, True, "2025-05-01", None, "2025-05-20", None, None),
        ("2025-04-01", "humerus", None, None, None, None, None, None, None, None, None),
        ("2024-11-01", "spine", "2024-11-20", "2024-12-01", "2024-11-20", True, "2024-12-15", None, "2025-02-15", True, None),
        ("2025-11-01", "spine", "2025-11-20", None, "2025-11-20", True, None, None, None, None, None),
        ("2025-12-20", "hip", None, None, None, None, None, None, None, None, None),
    ]
    cols = ["index_date", "index_fracture_site", "assessment_date", "dxa_date",
            "falls_assessment_date", "therapy_recommended", "therapy_start_date",
            "strength_balance_date", "followup_date", "adherent_52w", "death_date"]
    ep = pd.DataFrame(rows, columns=cols)
    for c in cols:
        if c.endswith("date"):
            ep[c] = d(ep[c])
    ep["therapy_recommended"] = ep["therapy_recommended"].astype("boolean")
    ep["adherent_52w"] = ep["adherent_52w"].astype("boolean")
    ep["referral_date"] = ep["index_date"] + pd.Timedelta(days=3)
    ep["ct_identified"] = [False, False, False, False, False, True, False, False, False, False]
    ep["dxa_t_score"] = np.where(ep["dxa_date"].notna(), -2.6, np.nan)
    ep.loc[2, "dxa_t_score"] = np.nan  # a T-score not transcribed
    ep["drug"] = np.where(ep["therapy_start_date"].notna(), "alendronate", None)
    for c in ("reported_by_radiology", "known_to_fls_before", "on_therapy_before"):
        ep[c] = pd.array([False] * 10, dtype="boolean")
    return ep


def test_kpis_on_a_hand_built_cohort() -> None:
    counts = kpi_counts(episodes_by_hand(), CUT)
    rows = P.kpi_rows(counts, months=12, expected_caseload_per_year=20).set_index("kpi")

    def nd(key: str) -> list[float]:
        return [rows.loc[key, "numerator"], rows.loc[key, "denominator"]]

    # KPI 2: 10 patients over 12 months of an expected 20 a year -> 10 / 20
    assert nd("identification") == [10, 20] and rows.loc["identification", "percent"] == 50
    # KPI 3: spine as the index site (rows 0, 1, 7, 8), plus row 5 (site blank, CT-identified)
    assert nd("spine_identification") == [5, 10]
    # KPI 4: 90 days passed for rows 0-7 (row 8: Nov, row 9: Dec); row 3 died unassessed and
    # row 6 was never assessed (alive): denominator 0,1,2,4,5,6,7 = 7; assessed <= 90 days:
    # 0 (22 d), 2 (9 d), 4 (19 d), 5 (27 d), 7 (19 d); row 1 took 135 days
    assert nd("assessed_90d") == [5, 7]
    # KPI 5: DXA <= 90 days: 0 (50 d), 2 (19 d), 7 (30 d); 4 took 106 days
    assert nd("dxa_90d") == [3, 7]
    # KPI 6: falls assessment recorded: 0, 2, 4, 7
    assert nd("falls_assessment") == [4, 7]
    # KPI 7: recommended: 0, 1, 2, 5, 7
    assert nd("therapy_recommended") == [5, 7]
    # KPI 8: non-hip with 112 days: 0, 1, 4, 5, 6, 7 (3 died before 112 days without it);
    # started <= 112 days: 0 (50 d), 4 (31 d)
    assert nd("strength_balance_16w") == [2, 6]
    # KPI 9: recommended with 112 days: 0, 1, 2, 5, 7; follow-up <= 112 days: 0, 2, 5, 7
    assert nd("followup_16w") == [4, 5]
    # KPI 10: started <= 112 days: 0 (69 d), 5 (57 d), 7 (44 d); 1 and 2 took longer
    assert nd("started_16w") == [3, 5]
    # KPI 11: recommended with 52 weeks passed by the cut-off: only row 7 (Nov 2024; row 0's
    # year ends on 2026-01-09), adherent
    assert nd("adherent_52w") == [1, 1]
    # KPI 1: the T-score is missing for 1 of 4 DXAs (25 %) and the site for 1 of 10 (10 %):
    # one field over 20 % missing, 8 of the 9 key fields fine -> good (fewer than 5 poor)
    assert nd("data_completeness") == [8, 9] and rows.loc["data_completeness", "band"] == "good"
    # bands: IOF for KPI 4 (71.4 % amber), the spine KPI its own (50 % > 20 %: green)
    assert rows.loc["assessed_90d", "band"] == "amber"
    assert rows.loc["spine_identification", "band"] == "green"
    # the display table states numerator and denominator beside each figure
    shown = P.kpi_table(counts, "internal", months=12, expected_caseload_per_year=20)
    kpi4 = shown.set_index("No.").loc["4"]
    assert (kpi4["Numerator"], kpi4["Denominator"], kpi4["%"]) == ("5", "7", "71.4%")
    assert kpi4["Denominator is"] == "patients with 90 days' follow-up"
    assert kpi4["National average (FLS-DB 2019)"] == "70%"
    # published: every KPI here rests on fewer than 8 patients
    pub = P.kpi_table(counts, "publish", months=12, expected_caseload_per_year=20)
    assert set(pub.set_index("No.").drop(index=["1", "2"])["%"]) <= {"*", ""}


# --- suppression that survives differencing ---------------------------------------------------

def totals_2x2(tp: int, fp: int, fn: int, tn: int, p_audit: float = 0.1) -> dict[str, float]:
    """Aggregate totals of a worklist: flagged (weight 1) and a 10 % audit of negatives."""
    w = 1 / p_audit
    t: dict[str, float] = {}
    for s in ("flagged", "audit_negative", "other"):
        for c in ("tp", "fp", "fn", "tn"):
            for k in ("n", "w", "w2"):
                t[f"acc_{s}_{c}_{k}"] = 0.0
    for c, n in (("tp", tp), ("fp", fp)):
        t[f"acc_flagged_{c}_n"], t[f"acc_flagged_{c}_w"], t[f"acc_flagged_{c}_w2"] = n, n, n
    for c, n in (("fn", fn), ("tn", tn)):
        t[f"acc_audit_negative_{c}_n"] = n
        t[f"acc_audit_negative_{c}_w"], t[f"acc_audit_negative_{c}_w2"] = n * w, n * w * w
    t.update({"kp_11": tp, "kp_10": fp, "kp_01": fn, "kp_00": tn})
    return t


def published(t: dict[str, float]) -> tuple:
    return (P.two_by_two(t, "publish").to_csv(), P.accuracy_table(t, "publish").to_csv(),
            P.agreement_table(t, "publish").iloc[:1].to_csv())


def test_no_published_figure_recovers_a_hidden_cell_by_differencing() -> None:
    """Every exact table whose published counts are the same gives the same published
    accuracy and kappa: so nothing published narrows a hidden (or rounded) cell."""
    base = (41, 12, 3, 46)
    want = P.two_by_two(totals_2x2(*base), "publish").to_csv()
    ranges = [range(n - 4, n + 5) if n > 7 else range(1, 8) for n in base]
    same = [cells for cells in itertools.product(*ranges)
            if P.two_by_two(totals_2x2(*cells), "publish").to_csv() == want]
    assert len(same) > 20
    outputs = {published(totals_2x2(*cells)) for cells in same}
    assert len(outputs) == 1, "a published figure depends on a count beyond what is published"
    # the exact kappa differs across the class: computed from exact counts it would tell
    from fracture_qi.qi.agreement import kappa_from_table

    exact = {round(kappa_from_table([[c[3], c[2]], [c[1], c[0]]]).kappa, 2) for c in same}
    assert len(exact) > 1


def test_kappa_beside_a_zero_cell_is_hidden() -> None:
    # the kind of case ("kappa 0.33, cases 10" beside a published zero cell): with the
    # zero cell shown, the kappa narrows the hidden cells to a couple of tables
    t = totals_2x2(2, 4, 0, 4)
    assert P.agreement_table(t, "internal").iloc[0]["Kappa"] == "0.29"
    row = P.agreement_table(t, "publish").iloc[0]
    assert (row["Kappa"], row["95% CI"], row["Cases"]) == ("*", "", "10")


def test_rates_come_from_rounded_counts_with_intervals() -> None:
    t = totals_2x2(38, 13, 20, 60)
    acc = P.accuracy_table(t, "publish").set_index("Measure")
    # PPV from the rounded counts: 40 / (40 + 15)
    assert acc.loc["PPV of the AI flag", "Estimate"] == f"{100 * 40 / 55:.1f}%"
    assert acc.loc["PPV of the AI flag", "95% CI"]
    for measure in ("Sensitivity", "Specificity", "NPV", "Prevalence"):
        assert acc.loc[measure, "95% CI"], measure


# --- times that agree, Kaplan-Meier as lifelines ----------------------------------------------

def studies_frame(n: int) -> pd.DataFrame:
    """A minimal AnalysisData.studies of *n* referred, newly identified studies."""
    s = pd.DataFrame({
        "study_id": np.arange(1, n + 1), "study_date": pd.Timestamp("2025-01-01"),
        "site": "A", "scanner": "S", "referral_source": "gp", "model": "m:1",
        "eligible": True, "screened": True, "screening_status": "ok", "ai_flagged": True,
        "ai_max_grade": 2, "stratum": "flagged", "sampling_probability": 1.0,
        "read1_decision": "confirmed", "read1_max_grade": 2, "read2_decision": None,
        "read2_max_grade": pd.NA, "read1_previously_known": "none",
        "read1_at": pd.Timestamp("2025-01-05"), "adjudicated": True, "confirmed": True,
        "newly_identified": True, "referred": True, "fls_assessment_date": pd.NaT,
        "dxa_date": pd.NaT, "therapy_recommended": pd.array([True] * n, dtype="boolean"),
        "therapy_start_date": pd.NaT, "adherent_52w": pd.array([None] * n, dtype="boolean"),
        "death_date": pd.NaT,
    })
    return s


def test_times_table_agrees_with_itself() -> None:
    """The demo's contradiction: two patients, one with a therapy dated before the CT (an
    import problem), gave median 46 days (IQR 23-69), KM median 0 and 50 % by 90 days."""
    st = studies_frame(2)
    st.loc[0, "therapy_start_date"] = pd.Timestamp("2024-12-20")  # before the CT: impossible
    st.loc[1, "therapy_start_date"] = pd.Timestamp("2025-04-03")  # day 92
    summary, _ = pathway_times(st, CUT)
    r = summary.set_index("interval").loc["ct_to_therapy"]
    assert (r["n_patients"], r["n_reached"], r["n_impossible"]) == (1, 1, 1)
    assert r["median"] == r["km_median"] == 92
    assert r["reached_90d"] == 0 and r["reached_112d"] == 1
    # with nobody censored the median of those reached is the KM median (inverted CDF)
    st = studies_frame(4)
    st["therapy_start_date"] = pd.to_datetime(["2025-01-11", "2025-01-21", "2025-01-31",
                                               "2025-02-10"])
    r = pathway_times(st, CUT)[0].set_index("interval").loc["ct_to_therapy"]
    assert r["median"] == r["km_median"] == 20 and (r["q1"], r["q3"]) == (10, 30)


def test_kaplan_meier_matches_lifelines() -> None:
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(3)
    days = np.floor(rng.exponential(60, 300))
    observed = rng.random(300) < 0.7
    n = int(days.max()) + 1
    ev = np.bincount(days[observed].astype(int), minlength=n)
    ce = np.bincount(days[~observed].astype(int), minlength=n)
    ours = km_from_histogram(ev, ce)
    kmf = KaplanMeierFitter().fit(days, observed)
    grid = np.arange(n)
    np.testing.assert_allclose(ours["survival"], kmf.survival_function_at_times(grid), atol=1e-12)
    ci = kmf.confidence_interval_survival_function_
    lo = ci.iloc[:, 0].reindex(grid, method="ffill").to_numpy()
    hi = ci.iloc[:, 1].reindex(grid, method="ffill").to_numpy()
    some = np.cumsum(ev) > 0
    np.testing.assert_allclose(ours["ci_low"][some], lo[some], atol=1e-9)
    np.testing.assert_allclose(ours["ci_high"][some], hi[some], atol=1e-9)
    from fracture_qi.qi.timing import km_median

    assert km_median(ours) == kmf.median_survival_time_


# --- SPC: every month on the axis, never a rounded count ---------------------------------------

def monthly_cohort(per_month: dict[str, tuple[int, int, int]]) -> pd.DataFrame:
    """Studies by month: ``{YYYY-MM: (CTs, flagged read, of which confirmed)}``."""
    frames = []
    for month, (n, flagged, conf) in per_month.items():
        s = studies_frame(n).assign(study_date=pd.Timestamp(f"{month}-10"))
        s["ai_flagged"] = [i < flagged for i in range(n)]
        s["stratum"] = np.where(s["ai_flagged"], "flagged", None)
        s["sampling_probability"] = np.where(s["ai_flagged"], 1.0, np.nan)
        s["read1_decision"] = [("confirmed" if i < conf else "not_confirmed") if i < flagged
                               else None for i in range(n)]
        s["confirmed"] = s["read1_decision"].eq("confirmed")
        s["adjudicated"] = s["read1_decision"].notna()
        s["newly_identified"] = s["confirmed"]
        s["referred"] = s["confirmed"]
        frames.append(s)
    st = pd.concat(frames, ignore_index=True)
    st["study_id"] = np.arange(1, len(st) + 1)
    return st


def empty_episodes() -> pd.DataFrame:
    ep = episodes_by_hand().iloc[0:0].copy()
    ep["linked_study"] = pd.Series(dtype=bool)
    ep["site"] = pd.Series(dtype=object)
    return ep


def test_an_empty_month_is_on_the_axis() -> None:
    st = monthly_cohort({"2025-01": (20, 10, 8), "2025-02": (22, 11, 9),
                         "2025-04": (21, 10, 7), "2025-05": (20, 12, 9)})  # no CT in March
    agg = Aggregate.build([st], empty_episodes(), CUT)
    by = agg.by("month", {}, all_values=True)
    assert by["month"].tolist() == ["2025-01", "2025-02", "2025-03", "2025-04", "2025-05"]
    assert by.loc[2, "ct"] == 0
    count = spc_panel(agg, "screened", {}, "internal")
    assert count.chart["month"].tolist()[2] == "2025-03" and count.chart["value"].iloc[2] == 0
    assert (count.chart["lcl"] >= 0).all()  # a count chart never has a limit below zero
    ppv = spc_panel(agg, "ppv", {}, "internal", rate_chart="xmr")
    assert ppv.chart["status"].tolist()[2] == "missing" and np.isnan(ppv.chart["value"].iloc[2])
    assert "1 month(s) with no denominator" in ppv.message


def test_publication_mode_never_charts_a_rounded_count() -> None:
    months = {f"2025-{m:02d}": (60, 41, 13 + m % 3) for m in range(1, 13)}
    months["2025-06"] = (60, 41, 5)  # 5 confirmed: a small count
    agg = Aggregate.build([monthly_cohort(months)], empty_episodes(), CUT)
    count = spc_panel(agg, "screened", {}, "publish")
    assert count.chart is None and "Withheld in publication mode" in count.message
    ppv = spc_panel(agg, "ppv", {}, "publish")
    c = ppv.chart.set_index("month")
    assert c.loc["2025-06", "status"] == "suppressed" and np.isnan(c.loc["2025-06", "value"])
    # the rates charted are exact (13/41, not the rounded 15/40), limits on exact numbers
    assert c.loc["2025-03", "value"] == pytest.approx(13 / 41)
    shown = c[c["status"] == "shown"]["value"]
    assert c["centre"].iloc[0] == pytest.approx(shown.mean())  # the hidden month is not in it
    assert ppv.chart_type == "xmr"  # no p-chart is published: its limits give n away
    from fracture_qi.reporting.figures import panel_chart

    chart = panel_chart(ppv)
    plotted = {v for t in chart.traces if t.name != "target" and not t.name.startswith("no data")
               for v in t.y if v is not None}
    rounded = {a / b for a in range(0, 65, 5) for b in range(5, 65, 5) if a <= b}
    assert not {round(v, 6) for v in plotted} & {round(v, 6) for v in rounded} - {
        round(13 / 41, 6)}


def test_service_measures_by_hand() -> None:
    st = studies_frame(10)
    st["screening_status"] = ["ok"] * 7 + ["error", "excluded", "ok"]
    st["screened"] = st["screening_status"].eq("ok")
    st["ai_flagged"] = st["screened"]
    st["read1_previously_known"] = ["none", "reported", "known_fls", "none", "none", "reported",
                                    "none", None, None, "none"]
    agg = Aggregate.build([st], empty_episodes(), CUT)
    rows = P.service_rows(agg.totals({})).set_index("measure")
    assert rows.loc["ai_unassessable", ["numerator", "denominator"]].tolist() == [2, 10]
    # confirmed and flagged: the 8 screened; not "reported": 6 of them
    assert rows.loc["not_in_report", ["numerator", "denominator"]].tolist() == [6, 8]
    assert rows.loc["ai_unassessable", "low"] < 0.2 < rows.loc["ai_unassessable", "high"]


def test_wilson_and_kappa_equal_statsmodels() -> None:
    from statsmodels.stats.inter_rater import cohens_kappa
    from statsmodels.stats.proportion import proportion_confint

    from fracture_qi.qi.agreement import kappa_from_table
    from fracture_qi.qi.proportions import wilson_interval

    for n in (1, 2, 5, 8, 37, 100, 123457):
        for k in sorted({0, 1, n // 3, n - 1, n}):
            if 0 <= k <= n:
                want = proportion_confint(k, n, method="wilson")
                assert wilson_interval(k, n) == pytest.approx(want, abs=1e-12), (k, n)
    rng = np.random.default_rng(5)
    for w in (None, "linear", "quadratic"):
        t = rng.integers(0, 30, (4, 4)) + np.eye(4, dtype=int) * 40
        ours = kappa_from_table(t, weights=w)
        ref = cohens_kappa(t, wt=w)
        assert ours.kappa == pytest.approx(ref.kappa) and ours.se == pytest.approx(ref.std_kappa)
    assert math.isnan(kappa_from_table([[5, 0], [0, 0]]).kappa)
