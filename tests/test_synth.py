"""Synthetic cohort: planted truth, DICOM geometry, determinism, priors, FLS, manifest."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from fracture_qi.cli.main import main as cli_main
from fracture_qi.pseudonym import nhs_number_is_valid
from fracture_qi.synth import generate_cohort, plan_cohort, truth_tables
from fracture_qi.synth.cohort import SynthError, sha256_file
from fracture_qi.synth.dicomio import AXIAL_IOP, StudyHeader, write_series
from fracture_qi.synth.fls import FLS_COLUMNS
from fracture_qi.synth.measure import measure_heights
from fracture_qi.synth.phantom import make_spine_volume, random_patient_spec

FRACTURES = [("T8", "wedge", 3), ("T12", "biconcave", 2), ("L1", "crush", 1), ("L3", "wedge", 1)]


@pytest.fixture(scope="module")
def phantom():
    """A noise-free thoraco-lumbar phantom, T7..L4, 1 mm slices, 0.7 mm pixels."""
    rng = np.random.default_rng(20)
    spec = random_patient_spec(rng, age=74, sex="F", fractures=FRACTURES, bmd_l1_hu=95.0)
    lay = spec.layout()
    z_lo = lay.level_z("L4") - 10
    z_hi = lay.level_z("T7") + 10
    nz = int((z_hi - z_lo) / 1.0) + 1
    vol, truth = make_spine_volume(
        spec,
        fov="cap",
        shape=(nz, 400, 400),
        spacing=(1.0, 0.7, 0.7),
        rng=rng,
        noise_sd=0,
        z_range=(z_lo, z_hi),
    )
    return spec, vol, truth


def test_truth_table_columns_and_fractures(phantom):
    _, vol, truth = phantom
    assert vol.hu.dtype == np.int16 and vol.hu.shape[1:] == (400, 400)
    assert {
        "level",
        "ha_mm",
        "hm_mm",
        "hp_mm",
        "genant_grade",
        "morph_type",
        "fractured",
        "trabecular_hu",
        "centre_z_mm",
        "centre_y_mm",
        "centre_x_mm",
        "fully_in_view",
    } <= set(truth)
    planted = {(r.level, r.morph_type, r.genant_grade) for r in truth.itertuples() if r.fractured}
    assert planted == set(FRACTURES)
    # height loss sits strictly inside the Genant band of its grade
    band = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 1.0)}
    for r in truth[truth.fractured].itertuples():
        lo, hi = band[r.genant_grade]
        assert lo < r.height_loss < hi, r
    # the affected height carries the loss
    row = truth.set_index("level")
    assert row.at["T8", "ha_mm"] < 0.62 * row.at["T8", "hp_mm"]
    assert row.at["T12", "hm_mm"] < 0.8 * row.at["T12", "ha_mm"]


def test_planted_heights_match_truth(phantom):
    _, vol, truth = phantom
    full = truth[truth.fully_in_view].reset_index(drop=True)
    assert len(full) >= 8
    meas = measure_heights(vol, full)
    tol = max(vol.spacing) + 0.05  # one voxel
    for t, m in zip(full.itertuples(), meas.itertuples()):
        assert abs(m.ha_meas - t.ha_mm) <= tol, (t.level, "Ha", m.ha_meas, t.ha_mm)
        assert abs(m.hm_meas - t.hm_mm) <= tol, (t.level, "Hm", m.hm_meas, t.hm_mm)
        assert abs(m.hp_meas - t.hp_mm) <= tol, (t.level, "Hp", m.hp_meas, t.hp_mm)


def test_trabecular_hu_matches_truth(phantom):
    _, vol, truth = phantom
    ox, oy, oz = vol.origin
    dz, dy, dx = vol.spacing
    for r in truth[truth.fully_in_view & ~truth.fractured].itertuples():
        k = int(round((r.centre_z_mm - oz) / dz))
        i = int(round((r.centre_y_mm - oy) / dy))
        j = int(round((r.centre_x_mm - ox) / dx))
        # an ROI in front of the centre (clear of the basivertebral vein); the zero-mean
        # trabecular texture averages out over it
        roi = vol.hu[k - 3 : k + 4, i - 12 : i - 2, j - 8 : j + 9].astype(float)
        assert abs(roi.mean() - r.trabecular_hu) < 8, r.level


def test_tissues_have_plausible_hu(phantom):
    _, vol, _ = phantom
    hu = vol.hu
    assert hu.min() >= -1024
    assert (hu < -800).mean() > 0.2  # air around the patient and lungs
    assert ((hu > -120) & (hu < -60)).mean() > 0.02  # fat
    assert ((hu > 20) & (hu < 70)).mean() > 0.05  # muscle and organs
    assert (hu > 500).mean() > 0.001  # cortical bone


def _header(signed: bool) -> StudyHeader:
    return StudyHeader(
        patient_name="TEST^Synthetic",
        patient_id="NGH000001",
        mrn_issuer="NGH",
        nhs_number="9990000018",
        birth_date=dt.date(1950, 3, 4),
        sex="F",
        age_years=74,
        study_uid="1.2.3.4",
        frame_uid="1.2.3.5",
        accession="RX1",
        study_date=dt.date(2024, 6, 1),
        study_time="101500",
        protocol="abdomen_pelvis",
        referral="gp",
        institution="Test Hospital",
        manufacturer="SIEMENS",
        model="X",
        station="S1",
        signed=signed,
        contrast="portal_venous",
        kvp=120.0,
    )


@pytest.mark.parametrize("signed", [False, True])
def test_dicom_geometry_round_trip(tmp_path, signed):
    rng = np.random.default_rng(3)
    spec = random_patient_spec(rng, age=70, sex="M", fractures=[])
    vol, _ = make_spine_volume(
        spec,
        fov="abdomen_pelvis",
        shape=(12, 64, 80),
        spacing=(2.5, 1.6, 1.5),
        rng=rng,
        noise_sd=15,
    )
    ox, oy, oz = vol.origin
    pos = [(ox, oy, oz + k * vol.spacing[0]) for k in range(vol.shape[0])]
    n = write_series(
        tmp_path,
        _header(signed),
        series_uid="1.2.3.6",
        series_number=2,
        description="Axial",
        image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
        kernel="B30f",
        slice_thickness=2.5,
        pixel_spacing=(1.6, 1.5),
        orientation=AXIAL_IOP,
        positions=pos,
        images=vol.hu,
        window=(40.0, 400.0),
        spacing_between=2.5,
        seed_parts=("t", signed),
    )
    files = sorted(tmp_path.glob("*.dcm"))
    assert n == len(files) == vol.shape[0]
    dss = [pydicom.dcmread(f) for f in files]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    d0 = dss[0]
    assert d0.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert d0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert d0.file_meta.MediaStorageSOPInstanceUID == d0.SOPInstanceUID
    assert d0.PixelRepresentation == int(signed)
    assert [float(v) for v in d0.ImageOrientationPatient] == AXIAL_IOP
    assert [float(v) for v in d0.PixelSpacing] == pytest.approx([1.6, 1.5])
    assert d0.OtherPatientIDsSequence[0].PatientID == "9990000018"
    assert d0.PatientAge == "074Y" and d0.CurrentPatientLocation == "GP direct access"
    assert d0.ContrastBolusAgent
    zs = np.array([float(d.ImagePositionPatient[2]) for d in dss])
    assert np.allclose(np.diff(zs), 2.5)
    assert tuple(float(v) for v in d0.ImagePositionPatient) == pytest.approx((ox, oy, oz), abs=1e-3)
    hu = np.stack(
        [
            d.pixel_array.astype(np.int32) * int(d.RescaleSlope) + int(d.RescaleIntercept)
            for d in dss
        ]
    )
    assert np.array_equal(hu, np.clip(vol.hu, -1024, 3071))
    # the fast writer produces what pydicom itself would write, element by element
    ref = tmp_path / "ref.dcm"
    d0.save_as(ref, enforce_file_format=True)
    again = pydicom.dcmread(ref)
    assert [(e.tag, e.VR, e.value) for e in again if e.tag != 0x7FE00010] == [
        (e.tag, e.VR, e.value) for e in d0 if e.tag != 0x7FE00010
    ]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    summary = generate_cohort(out / "a", patients=2, seed=5, fast=True, progress=False, workers=1)
    return summary


def test_cohort_layout_and_readback(cohort):
    out = cohort.outdir
    assert cohort.n_patients == 2 and cohort.n_files > 0
    series = pd.read_csv(out / "truth" / "series.csv", keep_default_na=False)
    files = list((out / "dicom").rglob("*.dcm"))
    assert len(files) == series["n_files"].sum()
    for row in series.itertuples():
        fs = sorted((out / row.folder).glob("*.dcm"))
        assert len(fs) == row.n_files, row.folder
        ds = pydicom.dcmread(fs[0], stop_before_pixels=True)
        assert ds.SeriesInstanceUID == row.series_instance_uid
        assert ds.StudyInstanceUID == row.study_instance_uid
        assert float(ds.SliceThickness) == pytest.approx(row.slice_thickness)
        if row.kind == "localizer":
            assert "LOCALIZER" in ds.ImageType
        elif row.kind == "sagittal_reformat":
            assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
            assert [float(v) for v in ds.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
        else:
            assert [float(v) for v in ds.ImageOrientationPatient] == AXIAL_IOP
            assert row.expected_reason in (
                "",
                "AGE_UNDER_50",
                "NO_SPINE_IN_VIEW",
                "DUPLICATE_STUDY",
                "SLICE_TOO_THICK",
            )
            # an axial series coarser than 3 mm is never graded
            if row.slice_thickness > 3.0 and row.expected_reason == "":
                pytest.fail(f"{row.folder}: {row.slice_thickness} mm expected eligible")


def test_same_seed_same_bytes_other_seed_other_uids(cohort, tmp_path):
    again = generate_cohort(
        tmp_path / "b", patients=2, seed=5, fast=True, progress=False, workers=2
    )
    assert _tree_digest(cohort.outdir) == _tree_digest(again.outdir)
    other = generate_cohort(
        tmp_path / "c", patients=2, seed=6, fast=True, progress=False, truth_only=True
    )
    uids_a = set(pd.read_csv(cohort.outdir / "truth" / "studies.csv").study_instance_uid)
    uids_c = set(pd.read_csv(other.outdir / "truth" / "studies.csv").study_instance_uid)
    assert uids_a.isdisjoint(uids_c)
    # other patients, not just other identifiers: bodies, ages, densities differ
    pa = pd.read_csv(cohort.outdir / "truth" / "patients.csv")
    pc = pd.read_csv(other.outdir / "truth" / "patients.csv")
    assert set(pa.birth_date).isdisjoint(pc.birth_date)
    assert not np.allclose(pa.bmd_l1_hu, pc.bmd_l1_hu)
    if "size_factor_xy" in pa:  # real anatomy: each patient's own size
        assert not np.allclose(pa.size_factor_xy, pc.size_factor_xy)


def test_manifest_shape_and_sha256(cohort):
    out = cohort.outdir
    m = yaml.safe_load((out / "data_manifest.yaml").read_text())
    assert m["version"] == 1 and m["synthetic"] is True and m["name"] == "synthetic-cohort-seed5"
    assert m["dicom_sources"] == [{"name": "synthetic", "kind": "folder", "path": "dicom/"}]
    fls = m["fls_records"][0]
    assert fls["path"] == "fls_records.csv" and fls["sha256"] == sha256_file(
        out / "fls_records.csv"
    )
    assert m["pseudonymisation_key"] == "env:FRACTURE_QI_KEY"
    assert set(m) >= {"database", "model", "screening", "adjudication", "outputs", "truth"}


@pytest.fixture(scope="module")
def big_truth():
    return truth_tables(plan_cohort(300, seed=123, fast=True))


def test_prevalence_and_age_mix(big_truth):
    pats = big_truth["patients"]
    st = big_truth["studies"]
    first = st[st["copy"] == 1].sort_values("study_date").groupby("patient_id").first()
    age = first.age_years.reindex(pats.patient_id).to_numpy()
    assert age.min() >= 30 and age.max() <= 95
    assert 0.08 < (age < 50).mean() < 0.25
    old = pats[age >= 50]
    prev = (old.n_fractures_planted > 0).mean()
    assert 0.13 < prev < 0.28, prev
    young = pats[age < 50]
    assert (young.n_fractures_planted > 0).mean() < 0.1
    fx = pats[pats.n_fractures_planted > 0]
    assert 0.15 < (fx.n_fractures_planted >= 2).mean() < 0.45
    v = big_truth["vertebrae"].drop_duplicates(["study_instance_uid", "level"])
    levels = v[v.fractured == 1].level.value_counts()
    assert levels.get("T12", 0) + levels.get("L1", 0) > levels.get("T4", 0) + levels.get("L5", 0)
    # chest and chest-abdomen-pelvis CTs need the chest CT (lidc0001, from ../shared/realdata
    # in the tests): without it the cohort is built on the abdomen alone, as synth says
    # (test_every_protocol_with_the_chest_ct checks the whole mix where the data is)
    assert {"abdomen_pelvis", "head"} <= set(st.protocol)
    assert (st.expected_reason == "DUPLICATE_STUDY").sum() == 1
    assert set(st.expected_reason.fillna("")) <= {
        "",
        "AGE_UNDER_50",
        "NO_SPINE_IN_VIEW",
        "DUPLICATE_STUDY",
        "SLICE_TOO_THICK",
    }
    # a modern PACS keeps a thin reconstruction for most trunk CT (THIN_SERIES_RATE 0.85):
    # the rest hold only the 5 mm series and are SLICE_TOO_THICK
    trunk = st[(st["copy"] == 1) & (st.protocol != "head") & (st.age_years >= 50)]
    thick_share = (trunk.expected_reason == "SLICE_TOO_THICK").mean()
    assert 0.08 < thick_share < 0.22, thick_share
    assert (trunk.expected_reason.isin(["", "SLICE_TOO_THICK"])).all()
    se = big_truth["series"]
    se = se[(se["copy"] == 1) & (se.kind == "axial")]
    thin_studies = set(se.loc[se.slice_thickness <= 3.0, "study_instance_uid"])
    too_thick = set(trunk.loc[trunk.expected_reason == "SLICE_TOO_THICK", "study_instance_uid"])
    assert too_thick and not (too_thick & thin_studies)
    in_trunk = se.study_instance_uid.isin(trunk.study_instance_uid)
    assert (se[in_trunk & (se.slice_thickness > 3.0)].expected_reason == "SLICE_TOO_THICK").all()
    assert (se[in_trunk & (se.slice_thickness <= 3.0)].expected_reason == "").all()
    head = st[st.protocol == "head"]
    assert (head.n_levels_in_view == 0).all() and (head.expected_reason == "NO_SPINE_IN_VIEW").all()


@pytest.mark.realdata
def test_every_protocol_with_the_chest_ct(realdata, big_truth):
    """With the chest CT in reach, a hospital's CT traffic: chest, abdomen-pelvis,
    chest-abdomen-pelvis and head."""
    assert set(big_truth["studies"].protocol) == {"chest", "abdomen_pelvis", "cap", "head"}


def test_nhs_numbers_valid_and_unique(big_truth):
    nhs = big_truth["patients"].nhs_number.astype(str)
    assert nhs.is_unique
    assert all(n.startswith("999") and nhs_number_is_valid(n) for n in nhs)


def test_fls_records_columns_and_dates(tmp_path):
    s = generate_cohort(tmp_path / "t", patients=300, seed=9, progress=False, truth_only=True)
    rec = pd.read_csv(s.outdir / "fls_records.csv", dtype=str, keep_default_na=False)
    assert tuple(rec.columns) == FLS_COLUMNS
    assert len(rec) > 20 and rec.record_id.is_unique
    problems = pd.read_csv(s.outdir / "truth" / "fls_problems.csv", dtype=str)
    assert set(problems.problem) == {"THERAPY_BEFORE_CT", "ASSESSMENT_AFTER_DEATH"}
    bad = set(problems.record_id)
    studies = pd.read_csv(s.outdir / "truth" / "studies.csv", dtype=str, keep_default_na=False)
    ct_date = dict(zip(studies.accession_number, studies.study_date))

    def d(x: str) -> dt.date | None:
        return dt.date.fromisoformat(x) if x else None

    for r in rec.itertuples():
        for col in (
            "referral_date",
            "fls_assessment_date",
            "dxa_date",
            "therapy_start_date",
            "death_date",
        ):
            v = getattr(r, col)
            assert v == "" or dt.date.fromisoformat(v) <= dt.date(2026, 6, 30)
        if r.dxa_t_score:
            assert -5 <= float(r.dxa_t_score) <= 3
        if r.therapy_start_date:
            assert r.drug in {
                "alendronate",
                "risedronate",
                "zoledronate",
                "denosumab",
                "teriparatide",
                "romosozumab",
            }
        start, death, assess = d(r.therapy_start_date), d(r.death_date), d(r.fls_assessment_date)
        ct = d(ct_date.get(r.accession_number, ""))
        violates = (start and ct and start < ct) or (assess and death and assess > death)
        assert bool(violates) == (r.record_id in bad), r
        if r.record_id not in bad and r.referral_date and assess:
            assert d(r.referral_date) <= assess
    # most identified fractures are not mentioned by radiology (ANATOMY 4c)
    ct_rows = rec[rec.accession_number != ""]
    assert 0.1 < ct_rows.reported_by_radiology.astype(int).mean() < 0.6


def test_cli_refuses_non_empty_outdir(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("keep me")
    rc = cli_main(["synth", str(tmp_path), "--patients", "1", "--truth-only"])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "x.txt").exists()
    with pytest.raises(SynthError):
        generate_cohort(tmp_path, patients=1, truth_only=True)
    rc = cli_main(
        ["synth", str(tmp_path / "new"), "--patients", "2", "--truth-only", "--seed", "3"]
    )
    assert rc == 0 and "data_manifest.yaml" in capsys.readouterr().out


def test_head_ct_has_no_spine_and_bad_input_is_refused():
    rng = np.random.default_rng(8)
    spec = random_patient_spec(rng, age=80, sex="F")
    vol, truth = make_spine_volume(
        spec, fov="head", shape=(20, 96, 96), spacing=(5.0, 2.5, 2.5), rng=rng, noise_sd=5
    )
    assert truth.empty
    assert (vol.hu > 600).mean() > 0.01  # skull
    with pytest.raises(ValueError, match="fracture level"):
        random_patient_spec(rng, age=70, sex="F", fractures=[("C5", "wedge", 2)])
    with pytest.raises(ValueError, match="fracture type"):
        random_patient_spec(rng, age=70, sex="F", fractures=[("L1", "burst", 2)])
    with pytest.raises(ValueError, match="outside grade"):
        random_patient_spec(rng, age=70, sex="F", fractures=[("L1", "wedge", 1, 0.3)])
    with pytest.raises(ValueError, match="fov"):
        make_spine_volume(spec, fov="knee")


def test_docs_pictures_exist_and_are_small():
    images = Path(__file__).resolve().parents[1] / "docs" / "images"
    names = ["synth-normal-spine.png", "synth-axial-phases.png"] + [
        f"synth-{m}-grades.png" for m in ("wedge", "biconcave", "crush")
    ]
    for name in names:
        path = images / name
        assert path.is_file(), (
            f"{path} missing: run python -m fracture_qi.synth.figures docs/images"
        )
        assert path.stat().st_size < 400_000
