"""The plan of a synthetic cohort: patients, studies and series before any pixel is drawn.

:func:`study_grid` and :func:`expected_files` are the geometry every writer and the truth
agree on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from fracture_qi.synth.people import Scanner
from fracture_qi.synth.phantom import PatientSpec, default_grid
from fracture_qi.synth.realpatient import RealPatient
from fracture_qi.synth.spine import Grid

SAGITTAL_SLICES = 15
#: y (mm, LPS) of the middle of a head CT's field of view on real-anatomy cohorts (the head
#: is drawn by the phantom, behind nothing)
HEAD_CENTRE_Y_MM = 100.0


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
    """One study, before pixels.

    ``base`` is the real base scan it is rendered on (``chest``, ``abdomen``, ``cap``; empty
    for the block phantom and head CTs); ``z_range`` is in the patient's own coordinates.
    """

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
    base: str = ""


@dataclass
class PatientPlan:
    """One patient: identifiers, anatomy (a real-anatomy patient or a block phantom), studies."""

    index: int
    patient_id: str
    nhs_number: str
    mrn: str
    name: str
    birth_date: dt.date
    sex: str
    spec: PatientSpec | RealPatient
    studies: list[StudyPlan]
    seed: int

    @property
    def real(self) -> bool:
        """Built on real anatomy (not the block phantom)."""
        return isinstance(self.spec, RealPatient)


def has_thin_axial(st: StudyPlan) -> bool:
    """Whether the study holds an axial series the screener can grade (<= MAX_SLICE_MM)."""
    from fracture_qi.dicom.scan import MAX_SLICE_MM

    return any(se.kind == "axial" and se.thickness <= MAX_SLICE_MM for se in st.series)


def study_grid(p: PatientPlan, st: StudyPlan) -> Grid:
    """The voxel grid a study is rendered on (thin-slice base; thick series average it)."""
    nz = int(round((st.z_range[1] - st.z_range[0]) / st.base_dz)) + 1
    ps = st.pixel_spacing
    if isinstance(p.spec, RealPatient):
        if st.protocol == "head":
            half = (st.matrix - 1) * ps / 2
            return Grid(origin=(-half, HEAD_CENTRE_Y_MM - half, st.z_range[0]),
                        spacing=(st.base_dz, ps, ps), shape=(nz, st.matrix, st.matrix))
        from fracture_qi.synth.realmaps import study_grid as real_grid

        return real_grid(p.spec, st.base, st.z_range, st.base_dz, st.matrix, ps * st.matrix)
    return default_grid(
        p.spec, st.protocol, (nz, st.matrix, st.matrix), (st.base_dz, ps, ps), st.z_range
    )


def thick_slices(n_thin: int, dz: float, thickness: float) -> list[list[tuple[int, float]]]:
    """Which thin slices (index, weight) make each thick slice of *thickness* (mm).

    Thick slice k covers ``[z0 - dz/2 + k t, z0 - dz/2 + (k + 1) t]`` of the thin stack (a
    box slice-sensitivity profile); each thin slice weighs its overlap. 5 mm from 2.5 mm:
    pairs at 0.5 each; 5 mm from 3 mm: 3 + 2, 1 + 3 + 1... mm of overlap.

    Examples
    --------
    >>> thick_slices(4, 2.5, 5.0)
    [[(0, 0.5), (1, 0.5)], [(2, 0.5), (3, 0.5)]]
    """
    out = []
    k = 0
    while (k + 1) * thickness <= n_thin * dz + 1e-6:
        lo, hi = k * thickness, (k + 1) * thickness
        row = []
        for j in range(int(lo // dz), min(int(np.ceil(hi / dz - 1e-9)), n_thin)):
            ov = min(hi, (j + 1) * dz) - max(lo, j * dz)
            if ov > 1e-9:
                row.append((j, ov / thickness))
        out.append(row)
        k += 1
    return out


def expected_files(grid: Grid, se: SeriesPlan) -> int:
    """How many files a planned series will have (known before any pixel is drawn)."""
    if se.kind == "localizer":
        return 1
    if se.kind == "sagittal_reformat":
        return SAGITTAL_SLICES
    factor = se.thickness / grid.spacing[0]
    if abs(factor - round(factor)) < 1e-6:
        return grid.shape[0] // max(1, int(round(factor)))
    return len(thick_slices(grid.shape[0], grid.spacing[0], se.thickness))
