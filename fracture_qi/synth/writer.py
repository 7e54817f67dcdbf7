"""Render one planned patient and write its studies as DICOM: localizer, axial series, reformat.

Each study is rendered once on its thin-slice grid (real anatomy:
:func:`~fracture_qi.synth.realct.render_study`; block phantom:
:func:`~fracture_qi.synth.phantom.render`); every series is derived from that render with
its own kernel and noise: the 5 mm series averages the thin slices (a box slice-sensitivity
profile), the localizer is a coronal attenuation sum, the sagittal reformat samples planes
through the spine.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from fracture_qi.synth.dicomio import (
    AXIAL_IOP,
    CORONAL_IOP,
    SAGITTAL_IOP,
    StudyHeader,
    write_series,
)
from fracture_qi.synth.phantom import add_noise, render, render_head
from fracture_qi.synth.plans import (
    HEAD_CENTRE_Y_MM,
    SAGITTAL_SLICES,
    PatientPlan,
    SeriesPlan,
    StudyPlan,
    study_grid,
    thick_slices,
)
from fracture_qi.synth.realpatient import RealPatient
from fracture_qi.synth.spine import Grid

#: bone kernel on real anatomy: unsharp masking (edge gain over a Gaussian of this sigma,
#: in pixels) before the series' own noise [estimate: a sharp kernel lifts edges and noise
#: by ~1.5x against a standard one]
BONE_KERNEL_GAIN: Final[float] = 0.6
BONE_KERNEL_SIGMA_PX: Final[float] = 1.0
#: soft-tissue kernel on real anatomy: a light in-plane smoothing (pixels)
SOFT_KERNEL_SIGMA_PX: Final[float] = 0.5


def thick_series(vol: np.ndarray, dz: float, thickness: float) -> np.ndarray:
    """Average thin slices into thick ones of *thickness* mm (see
    :func:`~fracture_qi.synth.plans.thick_slices`), one output slice at a time."""
    rows = thick_slices(vol.shape[0], dz, thickness)
    out = np.empty((len(rows), *vol.shape[1:]), dtype=np.int16)
    acc = np.empty(vol.shape[1:], dtype=np.float32)
    for k, row in enumerate(rows):
        acc.fill(0.0)
        for j, w in row:
            acc += vol[j].astype(np.float32) * np.float32(w)
        out[k] = np.rint(acc)
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


def apply_kernel(imgs: np.ndarray, kernel_class: str) -> None:
    """The reconstruction kernel's look on a real-anatomy series, in place: bone sharpens
    (edges and the scan's own noise), soft smooths a little."""
    for k0 in range(0, imgs.shape[0], 32):  # a slab at a time: no float copy of a whole series
        img = imgs[k0 : k0 + 32].astype(np.float32)
        if kernel_class == "bone":
            blur = ndi.gaussian_filter(img, (0.0, BONE_KERNEL_SIGMA_PX, BONE_KERNEL_SIGMA_PX))
            img += BONE_KERNEL_GAIN * (img - blur)
        else:
            img = ndi.gaussian_filter(img, (0.0, SOFT_KERNEL_SIGMA_PX, SOFT_KERNEL_SIGMA_PX))
        imgs[k0 : k0 + 32] = np.clip(np.rint(img), -1024, 3071)


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


def render_base(p: PatientPlan, st: StudyPlan, grid: Grid) -> tuple[np.ndarray, pd.DataFrame | None]:
    """The thin-slice render of a study and, on real anatomy, its measured truth."""
    if isinstance(p.spec, RealPatient):
        if st.protocol == "head":
            # no real head here: the phantom's, with its head holder (no spine in view)
            return render_head(grid, HEAD_CENTRE_Y_MM + 100.0), None
        from fracture_qi.synth.realct import render_study
        from fracture_qi.synth.realtruth import study_truth

        vol, _ = render_study(p.spec, st.base, grid, st.contrast, fast=st.matrix <= 256)
        return vol, study_truth(p.spec, st.base, grid, st.contrast, measure=True)
    return render(p.spec, st.protocol, grid, st.contrast), None


def _spine_x(p: PatientPlan, grid: Grid, truth: pd.DataFrame | None) -> float:
    ox, _, oz = grid.origin
    if truth is not None:
        xs = truth.loc[truth["in_view"].astype(bool), "centre_x_mm"].dropna()
        if len(xs):
            return float(xs.median())
    if isinstance(p.spec, RealPatient):
        return ox + (grid.shape[2] - 1) * grid.spacing[2] / 2
    zs = np.linspace(oz, oz + grid.shape[0] * grid.spacing[0], 20)
    return float(np.mean(p.spec.layout().at_z(zs)[0]))


def _write_localizer(folder: Path, h: StudyHeader, se: SeriesPlan, base: np.ndarray,
                     grid: Grid, parts: tuple) -> int:
    ox, oy, oz = grid.origin
    dz, dy, dx = grid.spacing
    # a coronal projection (sum of attenuation front to back), like a topogram
    att = _projection(base, dy)
    img = np.clip(att * 9.0 - 1024.0, -1024, 3071)[::-1][None].astype(np.int16)
    pos = [(ox, oy + (grid.shape[1] - 1) * dy / 2, oz + (grid.shape[0] - 1) * dz)]
    se.pixel_spacing = dx
    return write_series(
        folder, h, series_uid=se.series_uid, series_number=se.number,
        description=se.description, image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        kernel=se.kernel, slice_thickness=se.thickness, pixel_spacing=(dz, dx),
        orientation=CORONAL_IOP, positions=pos, images=img, window=(0.0, 2000.0),
        spacing_between=None, seed_parts=parts,
    )


def _write_axial(folder: Path, h: StudyHeader, se: SeriesPlan, base: np.ndarray, grid: Grid,
                 parts: tuple, rng: np.random.Generator, real: bool, head: bool) -> int:
    ox, oy, oz = grid.origin
    dz, dy, dx = grid.spacing
    factor = se.thickness / dz
    if abs(factor - round(factor)) < 1e-6 and round(factor) <= 1:
        imgs, step = base.copy(), dz
    else:
        imgs, step = thick_series(base, dz, se.thickness), se.thickness
    if real:
        apply_kernel(imgs, se.kernel_class)
    add_noise(imgs, se.noise_sd, rng, sharp=se.kernel_class == "bone")
    # slab k spans [z0 - dz/2 + k t, z0 - dz/2 + (k + 1) t]
    z0 = oz - dz / 2 + step / 2 if step != dz else oz
    pos = [(ox, oy, z0 + k * step) for k in range(imgs.shape[0])]
    window = (500.0, 2000.0) if se.kernel_class == "bone" else ((40.0, 80.0) if head else (40.0, 400.0))
    se.pixel_spacing = dx
    return write_series(
        folder, h, series_uid=se.series_uid, series_number=se.number,
        description=se.description, image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
        kernel=se.kernel, slice_thickness=se.thickness, pixel_spacing=(dy, dx),
        orientation=AXIAL_IOP, positions=pos, images=imgs, window=window,
        spacing_between=step, seed_parts=parts,
    )


def _write_sagittal(folder: Path, h: StudyHeader, se: SeriesPlan, base: np.ndarray,
                    grid: Grid, parts: tuple, rng: np.random.Generator, sx: float) -> int:
    """A sagittal bone reformat through the spine, square pixels (dy)."""
    ox, oy, oz = grid.origin
    dz, dy, dx = grid.spacing
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
        if js.stop <= js.start:
            imgs[q] = -1024
            continue
        plane = base[:, :, js].astype(np.float32).mean(axis=2)  # (z, y)
        res = plane[k0] * (1 - wgt) + plane[k1] * wgt
        imgs[q] = np.rint(res[::-1]).astype(np.int16)
    add_noise(imgs, se.noise_sd, rng, sharp=True)
    z_top = oz + zsamp[-1]
    pos = [(float(x), oy, z_top) for x in xs]
    se.pixel_spacing = dy
    return write_series(
        folder, h, series_uid=se.series_uid, series_number=se.number,
        description=se.description, image_type=["DERIVED", "SECONDARY", "REFORMATTED"],
        kernel=se.kernel, slice_thickness=se.thickness, pixel_spacing=(dy, dy),
        orientation=SAGITTAL_IOP, positions=pos, images=imgs, window=(500.0, 2000.0),
        spacing_between=step, seed_parts=parts, slice_location_axis=0,
        instance_order_desc=False,
    )


def write_patient(p: PatientPlan, outdir: Path, seed: int) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """Render and write every study of one patient.

    Returns
    -------
    rows : list of dict
        One per series written: ``series_instance_uid, n_files, pixel_spacing``.
    truths : dict
        Study UID -> measured truth table (real anatomy; empty for the block phantom).
    """
    rows: list[dict[str, Any]] = []
    truths: dict[str, pd.DataFrame] = {}
    for st in p.studies:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 77, p.index, st.index]))
        grid = study_grid(p, st)
        base, truth = render_base(p, st, grid)
        if truth is not None:
            truths[st.study_uid] = truth
        h = _header(p, st)
        for se in st.series:
            folder = outdir / se.folder
            parts = (seed, p.index, st.index, se.number)
            if se.kind == "localizer":
                n = _write_localizer(folder, h, se, base, grid, parts)
            elif se.kind == "axial":
                n = _write_axial(folder, h, se, base, grid, parts, rng, p.real, st.protocol == "head")
            else:
                n = _write_sagittal(folder, h, se, base, grid, parts, rng, _spine_x(p, grid, truth))
            se.n_files = n
            rows.append({"series_instance_uid": se.series_uid, "n_files": n,
                         "pixel_spacing": se.pixel_spacing})
        if st.duplicate_of:
            src = next(se for se in st.series if se.kind == "axial")
            dst = outdir / st.duplicate_of / Path(src.folder).name
            shutil.copytree(outdir / src.folder, dst)
    return rows, truths


def write_patient_task(args: tuple[PatientPlan, str, int]) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """:func:`write_patient` for a process pool."""
    p, outdir, seed = args
    return write_patient(p, Path(outdir), seed)
