"""The truth of a planned (and rendered) cohort: patients, studies, series, vertebrae.

One row per *copy* of a study and series (the re-sent study appears twice); the reason codes
the index should give (``expected_reason``) in the index's own order; per vertebra the
planted shape, measured on the pixels' masks where rendered (real anatomy) or as planned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from fracture_qi.dicom.scan import MAX_SLICE_MM
from fracture_qi.synth.phantom import truth_table
from fracture_qi.synth.plans import (
    PatientPlan,
    StudyPlan,
    expected_files,
    has_thin_axial,
    study_grid,
)
from fracture_qi.synth.realpatient import RealPatient

#: columns of truth/vertebrae.csv, in order
VERTEBRA_COLUMNS = (
    "study_instance_uid", "level", "ha_mm", "hm_mm", "hp_mm", "genant_grade", "morph_type",
    "fractured", "trabecular_hu", "in_view", "fully_in_view", "height_loss", "depth_mm",
    "width_mm", "centre_x_mm", "centre_y_mm", "centre_z_mm", "tilt_sagittal_deg",
    "tilt_coronal_deg",
)


def _anatomy_source(p: PatientPlan, st: StudyPlan) -> str:
    """What a study's pixels come from: ``lidc0001``, ``totalseg-abdomen``, both joined,
    ``head-phantom`` or ``block-phantom``."""
    if not p.real:
        return "block-phantom"
    if st.protocol == "head":
        return "head-phantom"
    from fracture_qi.synth.basescan import ANATOMY_SOURCE

    return ANATOMY_SOURCE[st.base]


def _levels_text(levels: list[str]) -> str:
    return f"{levels[0]}-{levels[-1]}" if levels else ""


def _patient_row(p: PatientPlan) -> dict[str, Any]:
    sp = p.spec
    row: dict[str, Any] = {
        "patient_id": p.patient_id,
        "nhs_number": p.nhs_number,
        "mrn": p.mrn,
        "name": p.name,
        "birth_date": p.birth_date.isoformat(),
        "sex": p.sex,
        "bmd_l1_hu": round(sp.bmd_l1_hu, 1),
        "n_fractures_planted": len(sp.fractures),
        "max_grade_planted": sp.max_grade,
    }
    if isinstance(sp, RealPatient):
        row.update({
            "anatomy": "real",
            "size_factor_xy": round(sp.size_xy, 3),
            "size_factor_z": round(sp.size_z, 3),
            "kyphosis_change_deg": round(sp.kyphosis_change_deg, 1),
            "lordosis_change_deg": round(sp.lordosis_change_deg, 1),
            "scoliosis_change_deg": round(sp.scoliosis_deg, 1),
        })
    else:
        row.update({
            "anatomy": "block-phantom",
            "kyphosis_deg": round(sp.kyphosis_deg, 1),
            "lordosis_deg": round(sp.lordosis_deg, 1),
            "scoliosis_cobb_deg": round(sp.scoliosis_cobb_deg, 1),
        })
    return row


def _study_vertebrae(p: PatientPlan, st: StudyPlan,
                     measured: dict[str, pd.DataFrame] | None) -> pd.DataFrame:
    """Per-level truth of one study: measured on the pixels where rendered, else predicted."""
    grid = study_grid(p, st)
    if isinstance(p.spec, RealPatient):
        from fracture_qi.synth.realtruth import TRUTH_COLUMNS, study_truth

        if measured is not None and st.study_uid in measured:
            return measured[st.study_uid].copy()
        if st.protocol == "head":
            return study_truth(p.spec, "abdomen", None, st.contrast, measure=False)[list(TRUTH_COLUMNS)]
        return study_truth(p.spec, st.base, grid, st.contrast, measure=False)
    return truth_table(p.spec, grid, st.contrast, st.protocol)


def _expected_reason(st: StudyPlan) -> str:
    """The index's study reason, in its order: age and field of view, then slice thickness."""
    head = st.protocol == "head"
    reason = "AGE_UNDER_50" if st.age_years < 50 else ("NO_SPINE_IN_VIEW" if head else "")
    if not reason and not has_thin_axial(st):
        reason = "SLICE_TOO_THICK"
    return reason


def _study_rows(p: PatientPlan, st: StudyPlan, vt: pd.DataFrame, reason: str) -> list[dict[str, Any]]:
    full = vt[vt.fully_in_view]
    fx = full[full.fractured]
    in_view = list(vt.loc[vt.in_view, "level"])
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
        "anatomy_source": _anatomy_source(p, st),
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
    return [{**base, "copy": copy, "expected_eligible": int(not why), "expected_reason": why,
             "folder": folder} for copy, folder, why in copies]


def _series_rows(p: PatientPlan, st: StudyPlan, reason: str) -> list[dict[str, Any]]:
    grid = study_grid(p, st)
    axial = [se for se in st.series if se.kind == "axial"]
    thinnest = min(axial, key=lambda se: (se.thickness, se.kernel_class != "bone"))
    rows = []
    for se in st.series:
        intrinsic = {"localizer": "LOCALIZER", "sagittal_reformat": "NOT_AXIAL"}.get(se.kind, "")
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
        rows.append({**row, "copy": 1, "folder": se.folder,
                     "expected_reason": intrinsic or too_thick or reason})
        if st.duplicate_of and se is axial[0]:
            rows.append({**row, "copy": 2, "folder": f"{st.duplicate_of}/{Path(se.folder).name}",
                         "expected_reason": "DUPLICATE_STUDY"})
    return rows


def truth_tables(plans: list[PatientPlan],
                 measured: dict[str, pd.DataFrame] | None = None) -> dict[str, pd.DataFrame]:
    """The truth of a cohort: patients, studies, series, vertebrae.

    ``studies`` and ``series`` hold one row per *copy*: the re-sent study appears twice
    (``copy`` 1 and 2, the second with ``expected_reason`` DUPLICATE_STUDY); key on
    ``copy == 1`` for one row per StudyInstanceUID.

    Parameters
    ----------
    plans
        From :func:`~fracture_qi.synth.cohort.plan_cohort`.
    measured
        Study UID -> vertebra truth measured while rendering (real anatomy). Studies not in
        it (``--truth-only``) get heights predicted from the plan.
    """
    pats, studies, series, verts = [], [], [], []
    for p in plans:
        pats.append(_patient_row(p))
        for st in p.studies:
            vt = _study_vertebrae(p, st, measured)
            vt.insert(0, "study_instance_uid", st.study_uid)
            verts.append(vt)
            reason = _expected_reason(st)
            studies += _study_rows(p, st, vt, reason)
            series += _series_rows(p, st, reason)
    vert = pd.concat(verts, ignore_index=True)[list(VERTEBRA_COLUMNS)]
    for col in ("fractured", "in_view", "fully_in_view"):
        vert[col] = vert[col].astype(int)
    return {
        "patients": pd.DataFrame(pats),
        "studies": pd.DataFrame(studies),
        "series": pd.DataFrame(series),
        "vertebrae": vert,
    }
