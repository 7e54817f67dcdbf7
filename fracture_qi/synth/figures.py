"""Mid-sagittal and axial pictures of synthetic patients for the docs (``docs/images/``).

Run ``python -m fracture_qi.synth.figures docs/images`` to regenerate them. Every picture is
a synthetic patient built on the real base scans (:mod:`fracture_qi.synth.realct`),
rendered through the same code as the cohort; sagittal pictures follow the spine's centre
line (a curved reformat: the chest CT's lumbar spine lies 25 mm to one side of its
thoracic spine). Labels give the level and, for a planted fracture, its type, Genant grade
and the heights the truth table states. No identifier of any kind appears.

Needs the chest CT lidc0001 (see :mod:`fracture_qi.synth.sources`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from fracture_qi.synth.realct import render_study
from fracture_qi.synth.realmaps import BASE_DZ, output_z_range, study_grid
from fracture_qi.synth.realpatient import RealPatient, random_real_patient
from fracture_qi.synth.realtruth import study_truth
from fracture_qi.synth.spine import Grid

log = logging.getLogger(__name__)

BONE_WINDOW: Final[tuple[float, float]] = (-450.0, 1050.0)  # level 300, width 1500
SOFT_WINDOW: Final[tuple[float, float]] = (-160.0, 240.0)  # level 40, width 400
#: sagittal pictures: pixel (mm) and how far in front of / behind the spine's centre they reach
PICTURE_PIXEL_MM: Final[float] = 0.7
AHEAD_MM: Final[float] = 150.0
BEHIND_MM: Final[float] = 90.0


def _patient(seed: int, age: float, sex: str, fractures: list[tuple[str, str, int]],
             bmd: float | None = None) -> RealPatient:
    rng = np.random.default_rng(seed)
    p = random_real_patient(rng, age=age, sex=sex, fractures=fractures, bmd_l1_hu=bmd)
    # one plane: keep the spine's own lateral course, add none
    p.scoliosis_deg = 0.0
    return p


def spine_sagittal(p: RealPatient, base: str, phase: str, z_range: tuple[float, float] | None = None,
                   ) -> tuple[np.ndarray, tuple[float, float, float, float], pd.DataFrame]:
    """A curved mid-sagittal reformat along the spine: ``(image (z, y), extent, truth)``.

    ``extent`` is ``(y0, y1, z0, z1)`` mm for ``imshow`` (image rows from the top, z up).
    """
    lo, hi = z_range if z_range is not None else output_z_range(p, base)
    coarse = study_grid(p, base, (lo + 1.0, hi - 1.0), BASE_DZ[base], 128, 380.0)
    truth = study_truth(p, base, coarse, phase, measure=True)
    seen = truth[truth["in_view"] & truth["centre_x_mm"].notna()].sort_values("centre_z_mm")
    zc, xc, yc = (seen[c].to_numpy() for c in ("centre_z_mm", "centre_x_mm", "centre_y_mm"))
    st = PICTURE_PIXEL_MM
    nz = int((hi - lo - 2.0) / st)
    y0 = float(np.median(yc)) - AHEAD_MM
    ny = int((AHEAD_MM + BEHIND_MM) / st)
    grid = Grid(origin=(-st, y0, lo + 1.0), spacing=(st, st, st), shape=(nz, ny, 3))
    zs = lo + 1.0 + st * np.arange(nz)
    x_shift = np.interp(zs, zc, xc)
    vol, _ = render_study(p, base, grid, phase, fast=False, x_shift=x_shift)
    img = vol.astype(np.float32).mean(axis=2)[::-1]
    extent = (y0, y0 + ny * st, lo + 1.0, lo + 1.0 + nz * st)
    return img, extent, truth


def _label(ax: Any, truth: pd.DataFrame, extent: tuple[float, float, float, float],
           heights: bool = False) -> None:
    y0, _, z0, z1 = extent
    for r in truth.itertuples():
        if not r.in_view or np.isnan(r.centre_z_mm) or not z0 < r.centre_z_mm < z1:
            continue
        text = r.level
        if r.fractured:
            text += f" {r.morph_type} G{r.genant_grade}"
        if heights and not np.isnan(r.ha_mm):
            text += f"\n{r.ha_mm:.0f}/{r.hm_mm:.0f}/{r.hp_mm:.0f} mm"
        ax.text(y0 + 4, r.centre_z_mm, text, color="yellow" if r.fractured else "white",
                fontsize=6.5, va="center")


def _show(ax: Any, img: np.ndarray, extent: tuple, window: tuple[float, float], title: str) -> None:
    ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], extent=extent,
              interpolation="bilinear")
    ax.set_title(title, fontsize=7.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Save as a palette PNG (grey images compress far better than RGBA): docs stay small."""
    from PIL import Image

    fig.savefig(path, dpi=dpi)
    with Image.open(path) as im:
        q = im.convert("RGB").quantize(
            colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    q.save(path, optimize=True)


def normal_spines(path: Path) -> Path:
    """Chest, abdomen-pelvis and chest-abdomen-pelvis patients without fracture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [
        ("chest", "arterial", _patient(4, 58, "F", [], 150.0), "chest CT (lidc0001),\narterial"),
        ("abdomen", "none", _patient(5, 66, "M", [], 130.0),
         "abdomen-pelvis (TotalSegmentator),\nunenhanced"),
        ("cap", "portal_venous", _patient(6, 71, "F", [], 110.0),
         "chest-abdomen-pelvis (joined at L1/L2),\nportal venous"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12.0, 8.0), gridspec_kw={"width_ratios": [1, 1, 1, 1]})
    for ax, (base, phase, p, title) in zip(axes, cases):
        img, ext, truth = spine_sagittal(p, base, phase)
        _show(ax, img, ext, BONE_WINDOW, title + ", bone window")
        _label(ax, truth, ext)
        if base == "cap":
            _show(axes[3], img, ext, SOFT_WINDOW, "the same patient,\nsoft-tissue window")
    fig.suptitle("Synthetic patients on real anatomy, curved mid-sagittal reformats, no fracture",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, path, 85)
    plt.close(fig)
    return path


#: rows of the fracture pictures: level and the base it is shown on
FRACTURE_ROWS: Final[tuple[tuple[str, str, str], ...]] = (
    ("T7", "chest", "arterial"),
    ("T12", "cap", "portal_venous"),
    ("L2", "abdomen", "none"),
)


def fracture_grid(morph: str, path: Path, seed: int = 11) -> Path:
    """3 x 3: rows are three patients (T7 chest, T12 chest-abdomen-pelvis, L2 abdomen),
    columns Genant grades 1-3 of *morph*; zoomed on the fracture, bone window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fracture_qi.synth.realmaps import output_z_of

    fig, axes = plt.subplots(3, 3, figsize=(8.0, 9.6))
    for r, (level, base, phase) in enumerate(FRACTURE_ROWS):
        for c, grade in enumerate((1, 2, 3)):
            p = _patient(seed + 10 * r, 74.0, "F", [(level, morph, grade)], 95.0)
            zc = output_z_of(p, base, level)
            img, ext, truth = spine_sagittal(p, base, phase, (zc - 65.0, zc + 65.0))
            row = truth[truth.level == level].iloc[0]
            title = (f"{level} G{grade}, -{100 * row.height_loss:.0f}%: "
                     f"{row.ha_mm:.0f}/{row.hm_mm:.0f}/{row.hp_mm:.0f} mm")
            yc = float(row.centre_y_mm)
            _show(axes[r, c], img, ext, BONE_WINDOW, title)
            axes[r, c].set_xlim(yc - 60, yc + 75)
            _label(axes[r, c], truth, (yc - 60, 0, ext[2], ext[3]))
    fig.suptitle(f"Synthetic patients on real anatomy: {morph} fractures, Genant grades 1-3\n"
                 "rows: T7 chest CT, T12 chest-abdomen-pelvis, L2 abdomen-pelvis; titles: loss of "
                 "the defining height, truth Ha/Hm/Hp", fontsize=8.5)
    fig.tight_layout()
    _save(fig, path, 85)
    plt.close(fig)
    return path


def axial_phases(path: Path) -> Path:
    """Axial slices of one chest level and one abdominal level in the three contrast phases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fracture_qi.synth.realmaps import output_z_of

    fig, axes = plt.subplots(2, 3, figsize=(9.0, 6.9))
    for r, (base, level, p) in enumerate((("chest", "T8", _patient(7, 68, "M", [])),
                                          ("abdomen", "L3", _patient(8, 68, "M", [])))):
        z = output_z_of(p, base, level)
        grid = study_grid(p, base, (z, z), 1.0, 512, 400.0)
        for c, phase in enumerate(("none", "arterial", "portal_venous")):
            vol, _ = render_study(p, base, grid, phase, fast=False)
            _show(axes[r, c], vol[0], None, SOFT_WINDOW, f"{base} at {level}, {phase.replace('_', ' ')}")
    fig.suptitle("Synthetic patients on real anatomy: axial slices by contrast phase "
                 "(soft-tissue window)", fontsize=9)
    fig.tight_layout()
    _save(fig, path, 80)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write every docs picture into the folder given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "docs/images")
    out.mkdir(parents=True, exist_ok=True)
    normal_spines(out / "synth-normal-spine.png")
    axial_phases(out / "synth-axial-phases.png")
    for morph in ("wedge", "biconcave", "crush"):
        fracture_grid(morph, out / f"synth-{morph}-grades.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
