"""The QI dashboard's cube and views agree with the package's own measures.

The cube is built from ``load_analysis`` + ``qi.funnel.stage_masks``; these tests compare
what the dashboard shows for a filter with ``qi.report.headline_summary`` computed directly
for the same selection, so a change in either side's definitions is caught.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fracture_qi.dashboards import views as V
from fracture_qi.dashboards.app import QIDashboard
from fracture_qi.dashboards.cube import (
    MEASURES,
    cube_from_engine,
    fingerprint,
    km_from_histogram,
)
from fracture_qi.simulation import make_fixture_site
from fracture_qi.store import open_store

HEADLINE = {  # tile key -> headline_summary measure
    "screened": "CTs screened",
    "confirmed": "Fractures confirmed",
    "newly_identified": "Newly identified",
    "therapy_started": "Started on bone therapy",
    "ppv": "PPV of the AI flag",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("dash-site")
    manifest = make_fixture_site(folder, studies=900, seed=11)
    engine = open_store(str(manifest))
    yield manifest, engine
    engine.dispose()


@pytest.fixture(scope="module")
def cube(site, tmp_path_factory):  # type: ignore[no-untyped-def]
    return cube_from_engine(site[1], cache_dir=tmp_path_factory.mktemp("cube-cache"))


def expected_tiles(engine, **selection) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from fracture_qi.outcomes.readmodel import load_analysis
    from fracture_qi.qi.report import headline_summary

    h = headline_summary(load_analysis(engine, **selection), publish=True)["headline"]
    values = dict(zip(h["measure"], h["value"]))
    return {k: values[m] for k, m in HEADLINE.items()}


@pytest.mark.parametrize("site_name", [None, "North General", "West Community"])
def test_tiles_equal_headline_summary(site, cube, site_name) -> None:  # type: ignore[no-untyped-def]
    _, engine = site
    dash = QIDashboard(cube)
    view = dash.view({"site": site_name or "All"})
    want = expected_tiles(engine, sites=[site_name] if site_name else None)
    assert view.tiles == want


def test_funnel_counts_equal_qi_funnel(site, cube) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.outcomes.readmodel import load_analysis
    from fracture_qi.qi.funnel import funnel

    _, engine = site
    # the dashboard's month filter selects CTs and follows them up to the data cut-off
    data = load_analysis(engine, sites=["South Infirmary"], period=("2024-03-01", "2024-08-31"),
                         cutoff=cube.cutoff)
    f = funnel(data.studies, data.cutoff).set_index("stage")["n"]
    t = cube.totals({"site": "South Infirmary", "month": ("2024-03", "2024-08"),
                     "model": cube.default_model})
    for stage, n in f.items():
        assert t[stage] == n, stage


def test_breakdown_rows_sum_to_totals(cube) -> None:  # type: ignore[no-untyped-def]
    f = {"model": cube.default_model}
    by = cube.by("site", f)
    tot = cube.totals(f)
    for m in MEASURES:
        assert by[m].sum() == pytest.approx(tot[m])


def test_cache_round_trip_and_invalidation(site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, engine = site
    a = cube_from_engine(engine, cache_dir=tmp_path)
    files = list(tmp_path.glob("qi-cube-*.npz"))
    assert len(files) == 1 and a.fingerprint in files[0].name
    b = cube_from_engine(engine, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(a.cells, b.cells)
    np.testing.assert_array_equal(a.events, b.events)
    assert (a.cutoff, a.default_model) == (b.cutoff, b.default_model)
    # any new row changes the fingerprint, so a stale cube is never shown
    from sqlalchemy import insert

    from fracture_qi.store import schema as S

    before = fingerprint(engine)
    with engine.begin() as c:
        c.execute(insert(S.Study.__table__).values(study_instance_uid="2.25.999.1", eligible=False))
    try:
        assert fingerprint(engine) != before
    finally:
        with engine.begin() as c:
            c.execute(S.Study.__table__.delete().where(S.Study.study_instance_uid == "2.25.999.1"))


def test_km_from_histogram_matches_lifelines() -> None:
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(3)
    weeks = rng.integers(0, 30, 300)
    observed = rng.random(300) < 0.6
    ev = np.bincount(weeks[observed], minlength=40)
    ce = np.bincount(weeks[~observed], minlength=40)
    ours = km_from_histogram(ev, ce)
    # lifelines puts censorings at a tied time after the events, as we do
    kmf = KaplanMeierFitter().fit(weeks, observed)
    theirs = 1 - kmf.survival_function_at_times(np.arange(40)).to_numpy()
    np.testing.assert_allclose(ours["proportion_treated"], theirs, atol=1e-12)
    ci = kmf.confidence_interval_survival_function_
    lo_theirs = 1 - ci.iloc[:, 1].reindex(range(40), method="ffill").fillna(1.0).to_numpy()
    mask = ours["events"].cumsum().to_numpy() > 0
    np.testing.assert_allclose(ours["low"][mask], lo_theirs[mask], atol=1e-6)


def test_filters_from_the_browser_are_checked(cube) -> None:  # type: ignore[no-untyped-def]
    dash = QIDashboard(cube)
    with pytest.raises(ValueError, match="not in the data"):
        dash.view({"site": "<script>alert(1)</script>"})
    with pytest.raises(ValueError, match="unknown filter"):
        dash.view({"patient": "x"})
    v = dash.view({"month": (cube.options["month"][-1], cube.options["month"][0])})
    assert v.filters["month"][0] <= v.filters["month"][1]


def test_publish_mode_never_shows_1_to_7(cube) -> None:  # type: ignore[no-untyped-def]
    dash = QIDashboard(cube)
    for site_name in ["All", *cube.options["site"]]:
        for month in cube.options["month"][:4]:
            v = dash.view({"site": site_name, "month": (month, month)})
            cells = [*v.tiles.values()]
            for df in (v.funnel, v.breakdown, v.monthly, v.agreement_table):
                cells += [str(x) for x in df.drop(columns=df.columns[0]).to_numpy().ravel()]
            assert not {c for c in cells if c in {str(i) for i in range(1, 8)}}


def test_internal_mode_is_exact(cube) -> None:  # type: ignore[no-untyped-def]
    t = cube.totals({"model": cube.default_model})
    v = QIDashboard(cube, mode="internal").view({})
    assert v.tiles["screened"] == str(int(t["screened"]))


def test_widgets_update_on_filter_change(cube) -> None:  # type: ignore[no-untyped-def]
    dash = QIDashboard(cube)
    dash.build()
    first = dash.last_view.tiles  # type: ignore[union-attr]
    dash._w["site"].value = "North General"
    assert dash.last_view is not None and dash.last_view.filters["site"] == "North General"
    assert dash.last_view.tiles != first
    assert "fqi-tile-screened" in dash._tiles.value
    assert dash._downloads.value.startswith("<a download=")
    assert dash.last_render_s < 5  # the benchmark measures the real figure at 500,000 studies


def test_downloads_hold_what_is_shown(cube) -> None:  # type: ignore[no-untyped-def]
    import io
    import zipfile

    v = QIDashboard(cube).view({"site": "North General"})
    with zipfile.ZipFile(io.BytesIO(v.csv_zip())) as z:
        names = set(z.namelist())
        assert {"tiles.csv", "funnel.csv", "filters.csv", "by_site.csv"} <= names
        tiles = pd.read_csv(z.open("tiles.csv"), dtype=str)
    assert dict(zip(tiles["tile"], tiles["value"])) == v.tiles
    with zipfile.ZipFile(io.BytesIO(v.png_zip())) as z:
        assert all(z.read(n)[:8] == b"\x89PNG\r\n\x1a\n" for n in z.namelist())


def test_rate_uses_rounded_counts() -> None:
    est, _, _ = V.rate(13, 41, "publish")
    assert est == pytest.approx(15 / 40)
    assert V.rate(3, 41, "publish") == (None, None, None)
    assert V.rate(13, 41, "internal")[0] == pytest.approx(13 / 41)


def test_cli_refuses_unsafe_bind_and_bad_date(site, capsys) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.cli.main import main

    manifest, _ = site
    assert main(["dashboard", "--manifest", str(manifest), "--host", "0.0.0.0"]) == 2
    assert "token" in capsys.readouterr().err
    assert main(["dashboard", "--manifest", str(manifest), "--change-date", "April"]) == 2
    assert "--change-date 'April' is not a date" in capsys.readouterr().err


# --- first paint without statsmodels/scipy (issue 6: first render <= 5 s) -------------------

def test_wilson_equals_the_package_interval() -> None:
    from fracture_qi.qi.proportions import wilson_interval

    for n in (1, 2, 5, 8, 10, 37, 49, 50, 100, 1000, 123457):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            if 0 <= k <= n:
                assert V.wilson(k, n) == pytest.approx(wilson_interval(k, n), abs=1e-14), (k, n)
    for k, n in ((2.5, 7.25), (0.0, 3.5)):  # weighted / effective-n counts too
        assert V.wilson(k, n) == pytest.approx(wilson_interval(k, n), abs=1e-14)
    assert all(np.isnan(V.wilson(0, 0)))
    with pytest.raises(ValueError, match="successes"):
        V.wilson(5, 4)


@pytest.mark.parametrize("mode", ["publish", "internal"])
def test_ppv_text_equals_accuracy_table(mode) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.qi.proportions import proportion
    from fracture_qi.qi.report import accuracy_table

    for k, n in ((0, 0), (0, 9), (3, 40), (40, 45), (40, 49), (45, 49), (13, 41), (8, 8),
                 (0, 100), (100, 100), (977, 1203), (61234, 70001)):
        row = {**proportion(k, n).to_dict(), "measure": "ppv", "n_numerator": k,
               "n_denominator": n, "definition": ""}
        shown = accuracy_table(pd.DataFrame([row]), mode=mode).iloc[0]
        expected = " ".join(x for x in (shown["Estimate"],
                                        f"({shown['95% CI']})" if shown["95% CI"] else "") if x)
        assert V.ppv_text(k, n, mode) == expected, (k, n, mode)


def test_first_paint_imports_no_statsmodels_or_scipy(site) -> None:  # type: ignore[no-untyped-def]
    """A fresh interpreter opens the dashboard and builds the page without statsmodels,
    scipy or lifelines (0.5 s of CPU, seconds on a loaded machine): they load only for the
    audit report's measures, never for the dashboard's first paint."""
    import json
    import subprocess
    import sys

    manifest, _ = site
    code = (
        "import contextlib, io, json, sys\n"
        "from fracture_qi.dashboards.app import QIDashboard\n"
        "d = QIDashboard.from_manifest(sys.argv[1])\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    d.build()\n"
        "    d._w['site'].value = d.cube.options['site'][0]\n"
        "print(json.dumps({'tiles': d.last_view.tiles, 'heavy': sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('statsmodels', 'scipy', 'lifelines'))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(manifest)], capture_output=True,
                         text=True, check=True, timeout=300)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    assert got["tiles"]["screened"] not in ("", None)


def test_kappa_equals_qi_agreement() -> None:
    from fracture_qi.qi.agreement import kappa

    for tp, fp, fn, tn in ((40, 9, 3, 120), (10, 0, 0, 10), (5, 5, 5, 5), (0, 12, 7, 30),
                           (321, 44, 17, 2011)):
        ai = [1] * (tp + fp) + [0] * (fn + tn)
        nurse = [1] * tp + [0] * fp + [1] * fn + [0] * tn
        want = kappa(ai, nurse, categories=[0, 1]).kappa
        assert V._kappa(tp, fp, fn, tn) == pytest.approx(want, abs=1e-12), (tp, fp, fn, tn)


@pytest.mark.parametrize("preheat", [False, True])
def test_cli_preheat_is_opt_in(site, monkeypatch, preheat: bool) -> None:  # type: ignore[no-untyped-def]
    import fracture_qi.serve as serve
    from fracture_qi.cli.main import main

    manifest, _ = site
    seen: dict = {}
    monkeypatch.setattr(serve, "serve_notebook",
                        lambda nb, **kw: seen.update(kw, notebook=nb) or 0)
    argv = ["dashboard", "--manifest", str(manifest), "--no-warm"] + (["--preheat"] if preheat else [])
    assert main(argv) == 0
    assert tuple(seen["extra_args"]) == (serve.PREHEAT_ARGS if preheat else ())
    cmd = serve.voila_command(seen["notebook"], port=8866, extra_args=seen["extra_args"])
    assert ("--preheat_kernel=True" in cmd) is preheat
