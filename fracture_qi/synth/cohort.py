"""A synthetic hospital's CT traffic: patients, studies, series, truth tables and a manifest.

:func:`plan_cohort` decides everything that is not a pixel (who, when, which protocol,
which series, which fractures) from the seed alone and cheaply, so statistical tests can
run on the truth without rendering; :func:`generate_cohort` then renders and writes the
DICOM files (a process per CPU, one patient per task), the FLS records, the truth tables
and ``data_manifest.yaml``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.csvsafe import write_frame
from fracture_qi.dicom.scan import MAX_SLICE_MM
from fracture_qi.errors import FractureQIError
from fracture_qi.synth import priors
from fracture_qi.synth.dicomio import (
    AXIAL_IOP,
    CORONAL_IOP,
    SAGITTAL_IOP,
    StudyHeader,
    uid,
    write_series,
)
from fracture_qi.synth.people import SCANNER_WEIGHTS, SCANNERS, Scanner, nhs_number, person_name
from fracture_qi.synth.phantom import (
    PatientSpec,
    add_noise,
    coverage,
    default_grid,
    random_patient_spec,
    render,
    truth_table,
)
from fracture_qi.synth.spine import Grid

log = logging.getLogger(__name__)

SAGITTAL_SLICES = 15
STUDY_START = dt.date(2024, 1, 1)
STUDY_END = dt.date(2025, 12, 31)
#: the FLS extract is taken on this date: later events are not yet known
EXTRACT_DATE = dt.date(2026, 6, 30)

PROTOCOL_MIX = {"chest": 0.30, "abdomen_pelvis": 0.35, "cap": 0.25, "head": 0.10}
#: share of studies that also carry a thin (<= 3 mm) bone reconstruction: a modern PACS keeps
#: one for most trunk CT (the 5 mm soft series alone cannot be graded: SLICE_TOO_THICK)
THIN_SERIES_RATE = {"trunk": 0.85, "head": 0.4}
REFERRAL_MIX = {"emergency": 0.35, "inpatient": 0.30, "outpatient": 0.25, "gp": 0.10}
CONTRAST_MIX = {
    "chest": {"none": 0.4, "arterial": 0.2, "portal_venous": 0.4},
    "abdomen_pelvis": {"none": 0.3, "arterial": 0.0, "portal_venous": 0.7},
    "cap": {"none": 0.15, "arterial": 0.0, "portal_venous": 0.85},
    "head": {"none": 1.0, "arterial": 0.0, "portal_venous": 0.0},
}


class SynthError(FractureQIError):
    """Raised when a synthetic cohort cannot be written (output folder not empty...)."""


@dataclass
class SeriesPlan:
    """One series of a study, before pixels."""

    kind: str  # axial | localizer | sagittal_reformat
    kernel_class: str  # soft | bone
    kernel: str
    thickness: float
    number: int
    description: str
    noise_sd: float
    series_uid: str
    folder: str = ""
    n_files: int = 0
    pixel_spacing: float = 0.0


@dataclass
class StudyPlan:
    """One study, before pixels."""

    index: int
    study_uid: str
    frame_uid: str
    accession: str
    date: dt.date
    time: str
    protocol: str
    scanner: Scanner
    referral: str
    contrast: str
    partial: str  # "" | "top_cut" | "bottom_cut"
    z_range: tuple[float, float]
    age_years: int
    kvp: float
    pixel_spacing: float
    base_dz: float
    matrix: int
    series: list[SeriesPlan] = field(default_factory=list)
    duplicate_of: str = ""  # folder of the copy, when this study is re-sent
    folder: str = ""


@dataclass
class PatientPlan:
    """One patient: identifiers, phantom and studies."""

    index: int
    patient_id: str
    nhs_number: str
    mrn: str
    name: str
    birth_date: dt.date
    sex: str
    spec: PatientSpec
    studies: list[StudyPlan]
    seed: int


@dataclass
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    outdir: Path
    manifest_path: Path
    n_patients: int
    n_studies: int
    n_series: int
    n_files: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outdir"] = str(self.outdir)
        d["manifest_path"] = str(self.manifest_path)
        return d


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
    keys = [k for k, v in table.items() if v > 0]
    w = np.array([table[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _mrn(rng: np.random.Generator, site_code: str, used: set[str]) -> str:
    """A site medical record number (site code + 6 digits), unique in the cohort."""
    while True:
        mrn = f"{site_code}{int(rng.integers(100000, 999999))}"
        if mrn not in used:
            used.add(mrn)
            return mrn


def _age_years(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _sample_age(rng: np.random.Generator) -> float:
    # ~15 % under 50 (so the index's AGE_UNDER_50 is exercised), the rest around 72
    if rng.random() < 0.15:
        return float(rng.uniform(31.5, 49.5))
    return float(np.clip(rng.normal(72, 10), 50.5, 95))


def _plan_series(rng: np.random.Generator, st: StudyPlan, fast: bool, seed: int, pidx: int) -> None:
    sc = st.scanner
    head = st.protocol == "head"
    n = 1
    out: list[SeriesPlan] = []

    def add(kind: str, kclass: str, thick: float, desc: str, sd: float) -> None:
        nonlocal n
        out.append(
            SeriesPlan(
                kind,
                kclass,
                sc.soft_kernel if kclass == "soft" else sc.bone_kernel,
                thick,
                n,
                desc,
                sd,
                uid(seed, "series", pidx, st.index, n),
            )
        )
        n += 1

    add(
        "localizer",
        "soft",
        1.0 if not fast else 2.0,
        "Topogram 0.6 T20f" if sc.manufacturer == "SIEMENS" else "Scout",
        0.0,
    )
    lo_s, hi_s = priors.NOISE_SD_1MM["soft"]
    lo_b, hi_b = priors.NOISE_SD_1MM["bone"]
    sd5 = float(rng.uniform(lo_s, hi_s)) / math.sqrt(5.0)
    add("axial", "soft", 5.0, "Brain 5mm" if head else "Axial 5mm soft tissue", sd5)
    # one draw whatever the rate, so the rest of the plan keeps its random stream
    if rng.random() < THIN_SERIES_RATE["head" if head else "trunk"]:
        thin = st.base_dz
        sdb = float(rng.uniform(lo_b, hi_b)) / math.sqrt(thin)
        add("axial", "bone", thin, f"Axial {thin:g}mm bone", sdb)
    if not head and rng.random() < 0.25:
        sag_t = 3.0 if fast else float(rng.choice([2.0, 3.0]))
        add(
            "sagittal_reformat",
            "bone",
            sag_t,
            f"Sag bone {sag_t:g}mm",
            float(rng.uniform(lo_b, hi_b)) / math.sqrt(sag_t),
        )
    st.series = out


def plan_cohort(patients: int, seed: int, fast: bool = True) -> list[PatientPlan]:
    """Plan a cohort: every identifier, date, protocol, series and planted fracture.

    Parameters
    ----------
    patients
        Number of patients (>= 1).
    seed
        Everything follows from it.
    fast
        Reduced matrix (256) and thicker thin slices (2.5 mm); otherwise 512 and
        0.625-1.25 mm.

    Returns
    -------
    list of PatientPlan
        In patient order; deterministic for (patients, seed, fast).
    """
    if patients < 1:
        raise SynthError(
            f"patients = {patients}: a cohort needs at least 1 patient. "
            "Fix: pass --patients 1 or more"
        )
    used_nhs: set[str] = set()
    used_mrn: set[str] = set()
    plans: list[PatientPlan] = []
    span = (STUDY_END - STUDY_START).days
    for i in range(patients):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2024, i]))
        age = _sample_age(rng)
        sex = "F" if rng.random() < 0.55 else "M"
        first = STUDY_START + dt.timedelta(days=int(rng.integers(0, span + 1)))
        birth = first - dt.timedelta(days=int(age * 365.25))
        spec = random_patient_spec(rng, age=_age_years(birth, first) + 0.5, sex=sex)
        nhs = nhs_number(rng, used_nhs)
        name = person_name(rng, sex)
        dates = [first]
        if rng.random() < 0.2:
            delta = int(rng.integers(30, 400))
            second = first + dt.timedelta(days=delta)
            if second > STUDY_END:
                second = first - dt.timedelta(days=delta)
            dates.append(second)
        dates.sort()
        studies: list[StudyPlan] = []
        for k, date in enumerate(dates):
            age_y = _age_years(birth, date)
            mix = dict(PROTOCOL_MIX)
            if age_y < 50:
                mix["head"] = 0.0  # keeps AGE_UNDER_50 and NO_SPINE_IN_VIEW apart in the truth
            protocol = _pick(rng, mix)
            scanner = SCANNERS[int(rng.choice(len(SCANNERS), p=np.array(SCANNER_WEIGHTS)))]
            referral = (
                "emergency"
                if protocol == "head" and rng.random() < 0.8
                else _pick(rng, REFERRAL_MIX)
            )
            contrast = _pick(rng, CONTRAST_MIX[protocol])
            lo, hi = coverage(spec, protocol)
            partial = ""
            if protocol in ("chest", "abdomen_pelvis") and rng.random() < 0.12:
                cut = float(rng.uniform(70, 140))
                if protocol == "chest":
                    partial, lo = (
                        "bottom_cut",
                        lo + cut,
                    )  # scan stopped high: lower thoracic spine missing
                else:
                    partial, hi = "top_cut", hi - cut  # started low: upper lumbar spine missing
            # display FOV from the patient's width (ANATOMY 5: 300-500 mm, usually 350-420)
            fov_mm = float(
                np.clip(
                    2 * spec.torso.half_width_abdomen + rng.uniform(0, 40),
                    330,
                    420 if fast else 480,
                )
            )
            if protocol == "head":
                fov_mm = float(rng.uniform(220, 250))
            matrix = 256 if fast else 512
            if fast:
                base = 2.5
            else:
                base = float(rng.choice([0.625, 1.0, 1.25], p=[0.35, 0.35, 0.3]))
            st = StudyPlan(
                index=k + 1,
                study_uid=uid(seed, "study", i, k + 1),
                frame_uid=uid(seed, "frame", i, k + 1),
                accession=f"RX{seed % 100:02d}{i:05d}{k + 1}",
                date=date,
                time="".join(
                    f"{int(rng.integers(lo, hi)):02d}" for lo, hi in ((7, 22), (0, 60), (0, 60))
                ),
                protocol=protocol,
                scanner=scanner,
                referral=referral,
                contrast=contrast,
                partial=partial,
                z_range=(lo, hi),
                age_years=age_y,
                kvp=float(rng.choice([100.0, 120.0], p=[0.3, 0.7]))
                if protocol != "head"
                else 120.0,
                pixel_spacing=round(fov_mm / matrix, 4),
                base_dz=base,
                matrix=matrix,
            )
            _plan_series(rng, st, fast, seed, i)
            studies.append(st)
        plans.append(
            PatientPlan(
                index=i,
                patient_id=f"PAT{i + 1:04d}",
                nhs_number=nhs,
                mrn=_mrn(rng, studies[0].scanner.site_code, used_mrn),
                name=name,
                birth_date=birth,
                sex=sex,
                spec=spec,
                studies=studies,
                seed=int(rng.integers(0, 2**31 - 1)),
            )
        )
    _mark_duplicate(plans)
    for p in plans:
        for st in p.studies:
            st.folder = f"dicom/{p.patient_id}/{st.date:%Y%m%d}_{st.protocol.upper()}_{st.index}"
            for se in st.series:
                se.folder = f"{st.folder}/SE{se.number:02d}_{se.kind.upper()}"
    return plans


def _has_thin_axial(st: StudyPlan) -> bool:
    """Whether the study holds an axial series the screener can grade (<= MAX_SLICE_MM)."""
    return any(se.kind == "axial" and se.thickness <= MAX_SLICE_MM for se in st.series)


def _mark_duplicate(plans: list[PatientPlan]) -> None:
    """Choose one eligible study to be 're-sent' (its 5 mm series copied to a second folder)."""
    if len(plans) < 5:
        return
    for p in plans[len(plans) // 3 :] + plans[: len(plans) // 3]:
        for st in p.studies:
            if st.age_years >= 50 and st.protocol != "head" and _has_thin_axial(st):
                st.duplicate_of = f"dicom/RESEND/{p.patient_id}_{st.accession}"
                return


# --- rendering one patient -------------------------------------------------------------------


def study_grid(p: PatientPlan, st: StudyPlan) -> Grid:
    """The voxel grid a study is rendered on (thin-slice base; thick series average it)."""
    nz = int(round((st.z_range[1] - st.z_range[0]) / st.base_dz)) + 1
    ps = st.pixel_spacing
    return default_grid(
        p.spec, st.protocol, (nz, st.matrix, st.matrix), (st.base_dz, ps, ps), st.z_range
    )


def expected_files(grid: Grid, se: SeriesPlan) -> int:
    """How many files a planned series will have (known before any pixel is drawn)."""
    if se.kind == "localizer":
        return 1
    if se.kind == "sagittal_reformat":
        return SAGITTAL_SLICES
    factor = max(1, int(round(se.thickness / grid.spacing[0])))
    return grid.shape[0] // factor


def _thick(vol: np.ndarray, factor: int) -> np.ndarray:
    """Average groups of *factor* thin slices into thick ones (slice-sensitivity profile).

    One output slice at a time, so a 1000-slice 512 x 512 base needs no float copy of itself.
    """
    n = vol.shape[0] // factor
    out = np.empty((n, *vol.shape[1:]), dtype=np.int16)
    for k in range(n):
        out[k] = np.rint(vol[k * factor : (k + 1) * factor].mean(axis=0, dtype=np.float32))
    return out


def _projection(vol: np.ndarray, dy: float) -> np.ndarray:
    """Coronal attenuation sum (a topogram), computed a slab of slices at a time."""
    out = np.empty((vol.shape[0], vol.shape[2]), dtype=np.float32)
    for k0 in range(0, vol.shape[0], 64):
        slab = vol[k0 : k0 + 64].astype(np.float32)
        slab += 1000.0
        np.clip(slab, 0, None, out=slab)
        out[k0 : k0 + 64] = slab.sum(axis=1) * (dy / 1000.0)
    return out


def _header(p: PatientPlan, st: StudyPlan) -> StudyHeader:
    sc = st.scanner
    return StudyHeader(
        patient_name=p.name,
        patient_id=p.mrn,
        mrn_issuer=sc.site_code,
        nhs_number=p.nhs_number,
        birth_date=p.birth_date,
        sex=p.sex,
        age_years=st.age_years,
        study_uid=st.study_uid,
        frame_uid=st.frame_uid,
        accession=st.accession,
        study_date=st.date,
        study_time=st.time,
        protocol=st.protocol,
        referral=st.referral,
        institution=sc.site,
        manufacturer=sc.manufacturer,
        model=sc.model,
        station=sc.station,
        signed=sc.signed,
        contrast=st.contrast,
        kvp=st.kvp,
    )


def write_patient(p: PatientPlan, outdir: Path, seed: int) -> list[dict[str, Any]]:
    """Render and write every study of one patient; returns one dict per series written."""
    rows: list[dict[str, Any]] = []
    for st in p.studies:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 77, p.index, st.index]))
        grid = study_grid(p, st)
        base = render(p.spec, st.protocol, grid, st.contrast)
        h = _header(p, st)
        ox, oy, oz = grid.origin
        dz, dy, dx = grid.spacing
        win_soft = (40.0, 400.0) if st.protocol != "head" else (40.0, 80.0)
        for se in st.series:
            folder = outdir / se.folder
            parts = (seed, p.index, st.index, se.number)
            if se.kind == "localizer":
                # a coronal projection (sum of attenuation front to back), like a topogram
                att = _projection(base, dy)
                img = np.clip(att * 9.0 - 1024.0, -1024, 3071)[::-1][None].astype(np.int16)
                pos = [(ox, oy + (grid.shape[1] - 1) * dy / 2, oz + (grid.shape[0] - 1) * dz)]
                n = write_series(
                    folder,
                    h,
                    series_uid=se.series_uid,
                    series_number=se.number,
                    description=se.description,
                    image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                    kernel=se.kernel,
                    slice_thickness=se.thickness,
                    pixel_spacing=(dz, dx),
                    orientation=CORONAL_IOP,
                    positions=pos,
                    images=img,
                    window=(0.0, 2000.0),
                    spacing_between=None,
                    seed_parts=parts,
                )
                se.pixel_spacing = dx
            elif se.kind == "axial":
                factor = max(1, int(round(se.thickness / dz)))
                imgs = _thick(base, factor) if factor > 1 else base.copy()
                add_noise(imgs, se.noise_sd, rng, sharp=se.kernel_class == "bone")
                z0 = oz + (factor - 1) * dz / 2
                pos = [(ox, oy, z0 + k * factor * dz) for k in range(imgs.shape[0])]
                window = (500.0, 2000.0) if se.kernel_class == "bone" else win_soft
                n = write_series(
                    folder,
                    h,
                    series_uid=se.series_uid,
                    series_number=se.number,
                    description=se.description,
                    image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
                    kernel=se.kernel,
                    slice_thickness=se.thickness,
                    pixel_spacing=(dy, dx),
                    orientation=AXIAL_IOP,
                    positions=pos,
                    images=imgs,
                    window=window,
                    spacing_between=factor * dz,
                    seed_parts=parts,
                )
                se.pixel_spacing = dx
            else:  # sagittal reformat through the spine, square pixels (dy)
                sx = float(
                    np.mean(p.spec.layout().at_z(np.linspace(oz, oz + grid.shape[0] * dz, 20))[0])
                )
                n_sl, step = SAGITTAL_SLICES, se.thickness
                xs = sx + (np.arange(n_sl) - n_sl // 2) * step
                zsamp = np.arange(0, (grid.shape[0] - 1) * dz + 1e-6, dy)
                kf = zsamp / dz
                k0 = np.clip(np.floor(kf).astype(int), 0, grid.shape[0] - 1)
                k1 = np.clip(k0 + 1, 0, grid.shape[0] - 1)
                wgt = (kf - k0)[:, None].astype(np.float32)
                imgs = np.empty((n_sl, len(zsamp), grid.shape[1]), dtype=np.int16)
                half = max(1, int(round(step / dx / 2)))
                for q, x in enumerate(xs):
                    j = int(round((x - ox) / dx))
                    js = slice(max(j - half + 1, 0), min(j + half, grid.shape[2]))
                    plane = base[:, :, js].astype(np.float32).mean(axis=2)  # (z, y)
                    res = plane[k0] * (1 - wgt) + plane[k1] * wgt
                    imgs[q] = np.rint(res[::-1]).astype(np.int16)
                add_noise(imgs, se.noise_sd, rng, sharp=True)
                z_top = oz + zsamp[-1]
                pos = [(float(x), oy, z_top) for x in xs]
                n = write_series(
                    folder,
                    h,
                    series_uid=se.series_uid,
                    series_number=se.number,
                    description=se.description,
                    image_type=["DERIVED", "SECONDARY", "REFORMATTED"],
                    kernel=se.kernel,
                    slice_thickness=se.thickness,
                    pixel_spacing=(dy, dy),
                    orientation=SAGITTAL_IOP,
                    positions=pos,
                    images=imgs,
                    window=(500.0, 2000.0),
                    spacing_between=step,
                    seed_parts=parts,
                    slice_location_axis=0,
                    instance_order_desc=False,
                )
                se.pixel_spacing = dy
            se.n_files = n
            rows.append(
                {
                    "series_instance_uid": se.series_uid,
                    "n_files": n,
                    "pixel_spacing": se.pixel_spacing,
                }
            )
        if st.duplicate_of:
            src = next(se for se in st.series if se.kind == "axial")
            dst = outdir / st.duplicate_of / Path(src.folder).name
            shutil.copytree(outdir / src.folder, dst)
    return rows


def _write_patient_task(args: tuple[PatientPlan, str, int]) -> list[dict[str, Any]]:
    p, outdir, seed = args
    return write_patient(p, Path(outdir), seed)


# --- truth tables ----------------------------------------------------------------------------


def _levels_text(levels: list[str]) -> str:
    return f"{levels[0]}-{levels[-1]}" if levels else ""


def truth_tables(plans: list[PatientPlan]) -> dict[str, pd.DataFrame]:
    """The truth of a planned cohort (no pixels needed): patients, studies, series, vertebrae.

    ``studies`` and ``series`` hold one row per *copy*: the re-sent study appears twice
    (``copy`` 1 and 2, the second with ``expected_reason`` DUPLICATE_STUDY); key on
    ``copy == 1`` for one row per StudyInstanceUID.
    """
    pats, studies, series, verts = [], [], [], []
    for p in plans:
        sp = p.spec
        pats.append(
            {
                "patient_id": p.patient_id,
                "nhs_number": p.nhs_number,
                "mrn": p.mrn,
                "name": p.name,
                "birth_date": p.birth_date.isoformat(),
                "sex": p.sex,
                "bmd_l1_hu": round(sp.bmd_l1_hu, 1),
                "n_fractures_planted": len(sp.fractures),
                "max_grade_planted": sp.max_grade,
                "kyphosis_deg": round(sp.kyphosis_deg, 1),
                "lordosis_deg": round(sp.lordosis_deg, 1),
                "scoliosis_cobb_deg": round(sp.scoliosis_cobb_deg, 1),
            }
        )
        for st in p.studies:
            grid = study_grid(p, st)
            vt = truth_table(sp, grid, st.contrast, st.protocol)
            vt.insert(0, "study_instance_uid", st.study_uid)
            verts.append(vt)
            full = vt[vt.fully_in_view]
            fx = full[full.fractured]
            in_view = list(vt.loc[vt.in_view, "level"])
            head = st.protocol == "head"
            reason = "AGE_UNDER_50" if st.age_years < 50 else ("NO_SPINE_IN_VIEW" if head else "")
            axial = [se for se in st.series if se.kind == "axial"]
            # the index's order: age and field of view first, then slice thickness
            if not reason and not _has_thin_axial(st):
                reason = "SLICE_TOO_THICK"
            thinnest = min(axial, key=lambda se: (se.thickness, se.kernel_class != "bone"))
            base = {
                "study_instance_uid": st.study_uid,
                "patient_id": p.patient_id,
                "accession_number": st.accession,
                "study_date": st.date.isoformat(),
                "age_years": st.age_years,
                "protocol": st.protocol,
                "site": st.scanner.site,
                "manufacturer": st.scanner.manufacturer,
                "referral_source": st.referral,
                "contrast": int(st.contrast != "none"),
                "contrast_phase": st.contrast,
                "partial_view": st.partial,
                "levels_in_view": _levels_text(in_view),
                "n_levels_in_view": len(in_view),
                "has_fracture": int(len(fx) > 0),
                "max_grade": int(fx.genant_grade.max()) if len(fx) else 0,
                "n_fractures": len(fx),
                "fractured_levels": " ".join(fx.level),
            }
            copies = [(1, st.folder, reason)]
            if st.duplicate_of:
                copies.append((2, st.duplicate_of, "DUPLICATE_STUDY"))
            for copy, folder, why in copies:
                studies.append(
                    {
                        **base,
                        "copy": copy,
                        "expected_eligible": int(not why),
                        "expected_reason": why,
                        "folder": folder,
                    }
                )
            for se in st.series:
                intrinsic = {"localizer": "LOCALIZER", "sagittal_reformat": "NOT_AXIAL"}.get(
                    se.kind, ""
                )
                row = {
                    "series_instance_uid": se.series_uid,
                    "study_instance_uid": st.study_uid,
                    "kind": se.kind,
                    "kernel": se.kernel,
                    "kernel_class": se.kernel_class,
                    "slice_thickness": se.thickness,
                    "pixel_spacing": se.pixel_spacing
                    or (grid.spacing[1] if se.kind != "localizer" else grid.spacing[2]),
                    "n_files": se.n_files or expected_files(grid, se),
                    "thinnest_axial": int(se is thinnest),
                }
                too_thick = (
                    "SLICE_TOO_THICK"
                    if se.kind == "axial" and se.thickness > MAX_SLICE_MM
                    and reason in ("", "SLICE_TOO_THICK")
                    else ""
                )
                series.append(
                    {
                        **row,
                        "copy": 1,
                        "folder": se.folder,
                        "expected_reason": intrinsic or too_thick or reason,
                    }
                )
                if st.duplicate_of and se is axial[0]:
                    series.append(
                        {
                            **row,
                            "copy": 2,
                            "folder": f"{st.duplicate_of}/{Path(se.folder).name}",
                            "expected_reason": "DUPLICATE_STUDY",
                        }
                    )
    vert = pd.concat(verts, ignore_index=True)
    vert = vert[
        [
            "study_instance_uid",
            "level",
            "ha_mm",
            "hm_mm",
            "hp_mm",
            "genant_grade",
            "morph_type",
            "fractured",
            "trabecular_hu",
            "in_view",
            "fully_in_view",
            "height_loss",
            "depth_mm",
            "width_mm",
            "centre_x_mm",
            "centre_y_mm",
            "centre_z_mm",
            "tilt_sagittal_deg",
            "tilt_coronal_deg",
        ]
    ]
    for col in ("fractured", "in_view", "fully_in_view"):
        vert[col] = vert[col].astype(int)
    return {
        "patients": pd.DataFrame(pats),
        "studies": pd.DataFrame(studies),
        "series": pd.DataFrame(series),
        "vertebrae": vert,
    }


MANIFEST_TEMPLATE = """\
version: 1
name: synthetic-cohort-seed{seed}
synthetic: true
database: sqlite:///fracture_qi.db
pseudonymisation_key: env:FRACTURE_QI_KEY   # the demo key is fracture_qi.pseudonym.DEMO_KEY
dicom_sources:
  - {{name: synthetic, kind: folder, path: dicom/}}
fls_records:
  - {{name: fls, kind: csv, path: fls_records.csv, sha256: "{sha256}"}}
model: {{kind: reference}}
screening: {{flag_grade: 2, low_density_hu: 110}}
adjudication: {{audit_negative_rate: 0.1, double_read_rate: 0.2}}
outputs: {{reports: reports/, keyimages: keyimages/}}
truth: {{path: truth/}}
"""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_outdir(outdir: Path, overwrite: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise SynthError(f"{outdir} exists and is not a folder. Fix: choose another OUTDIR")
    if outdir.is_dir() and any(outdir.iterdir()):
        if not overwrite:
            raise SynthError(
                f"{outdir} is not empty. Fix: choose an empty or new folder, or pass "
                "--overwrite (overwrite=True) to replace its dicom/, truth/, fls_records.csv "
                "and data_manifest.yaml"
            )
        for name in ("dicom", "truth"):
            if (outdir / name).is_dir():
                shutil.rmtree(outdir / name)
        for name in ("fls_records.csv", "data_manifest.yaml"):
            (outdir / name).unlink(missing_ok=True)


def generate_cohort(
    outdir: str | os.PathLike[str],
    patients: int = 40,
    seed: int = 7,
    fast: bool = True,
    progress: bool = True,
    *,
    truth_only: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
) -> CohortSummary:
    """Write a synthetic cohort: DICOM, FLS records, truth tables and data_manifest.yaml.

    Parameters
    ----------
    outdir
        Output folder; created if missing; must be empty unless *overwrite*.
    patients
        Number of patients.
    seed
        Same seed, same bytes (UIDs, pixels, CSVs).
    fast
        256 x 256 matrix and 2.5 mm thin slices (about a minute per 100 patients on two
        cores); False gives 512 x 512 and 0.625-1.25 mm (benchmarks).
    progress
        Show a progress bar (tqdm) over patients.
    truth_only
        Plan the cohort and write the truth tables, FLS records and manifest only; no
        pixels (for fast statistical tests).
    overwrite
        Replace a previous cohort in *outdir*.
    workers
        Processes for rendering (default: CPU count, at most the number of patients).

    Returns
    -------
    CohortSummary

    Raises
    ------
    SynthError
        When *outdir* is not empty (and not *overwrite*) or *patients* < 1.
    """
    t0 = time.perf_counter()
    out = Path(outdir)
    _check_outdir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_cohort(patients, seed, fast)
    if not truth_only:
        n_workers = max(1, min(workers or os.cpu_count() or 1, patients))
        tasks = [(p, str(out), seed) for p in plans]
        results: list[list[dict[str, Any]]]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(tasks), desc="synthetic patients", unit="patient")
        if n_workers == 1:
            results = []
            for t in tasks:
                results.append(_write_patient_task(t))
                if bar is not None:
                    bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=n_workers) as ex:
                results = []
                for r in ex.map(_write_patient_task, tasks, chunksize=1):
                    results.append(r)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        written = {row["series_instance_uid"]: row for rows in results for row in rows}
        for p in plans:
            for st in p.studies:
                for se in st.series:
                    se.n_files = written[se.series_uid]["n_files"]
                    se.pixel_spacing = written[se.series_uid]["pixel_spacing"]
    tables = truth_tables(plans)
    truth_dir = out / "truth"
    truth_dir.mkdir(exist_ok=True)
    first = tables["studies"][tables["studies"]["copy"] == 1]
    from fracture_qi.synth.fls import make_fls_records

    records, problems = make_fls_records(tables["patients"], first, seed, EXTRACT_DATE)
    for name, df in tables.items():
        write_frame(df, truth_dir / f"{name}.csv")
    write_frame(problems, truth_dir / "fls_problems.csv")
    fls_path = out / "fls_records.csv"
    write_frame(records, fls_path)
    manifest = out / "data_manifest.yaml"
    manifest.write_text(MANIFEST_TEMPLATE.format(seed=seed, sha256=sha256_file(fls_path)))
    n_files = int(tables["series"]["n_files"].sum()) if not truth_only else 0
    summary = CohortSummary(
        outdir=out,
        manifest_path=manifest,
        n_patients=len(plans),
        n_studies=int((tables["studies"]["copy"] == 1).sum()),
        n_series=int((tables["series"]["copy"] == 1).sum()),
        n_files=n_files,
        seconds=round(time.perf_counter() - t0, 2),
    )
    log.info("synthetic cohort: %s", summary.to_dict())
    return summary
