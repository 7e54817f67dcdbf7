"""The truth of a synthetic study on real anatomy: each vertebra's heights, grade and view.

Heights are measured, not assumed: each body's mask of the base scan is sampled through the
same maps as the pixels (patient size and bend, every fracture) on a 1 mm grid around where
the body lands, and :func:`~fracture_qi.synth.measure.mask_heights` reads Ha, Hm and Hp
along the body's own axis. ``--truth-only`` predicts them instead from the base's own
heights and the planned deformation (within about a millimetre).

A planted loss is calibrated (:func:`~fracture_qi.synth.realmaps.planted_loss`) so that the
mask shows the intended loss of the fracture's defining height: Ha for a wedge, Hm for a
biconcave body, Hp for a crush.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import pandas as pd

from fracture_qi.synth.basescan import ANATOMY_SOURCE, base_catalogue
from fracture_qi.synth.fracture import HEIGHT_INSET, base_to_fractured, column_loss
from fracture_qi.synth.realct import trabecular_target
from fracture_qi.synth.realmaps import (
    body_axis,
    fracture_maps,
    measure_body,
    output_centres,
    shown_losses,
)
from fracture_qi.synth.realpatient import TRUTH_LEVELS, RealPatient, patient_map
from fracture_qi.synth.spine import Grid

# --- the truth -------------------------------------------------------------------------------------

TRUTH_COLUMNS: Final[tuple[str, ...]] = (
    "level", "ha_mm", "hm_mm", "hp_mm", "genant_grade", "morph_type", "fractured",
    "trabecular_hu", "centre_z_mm", "centre_y_mm", "centre_x_mm", "in_view", "fully_in_view",
    "height_loss", "depth_mm", "width_mm", "tilt_sagittal_deg", "tilt_coronal_deg",
)
#: sampling step (mm) of the local grid a body's mask is measured on
TRUTH_STEP_MM: Final[float] = 1.0


def _predicted_heights(p: RealPatient, name: str, level: str) -> dict[str, float]:
    """Heights of a body from the base's own and the planned deformation (no pixels)."""
    cat = base_catalogue(name)
    b = cat.bodies[level]
    a = np.array(b.axis)
    theta = math.atan2(abs(a[1]), abs(a[0]))
    fh = math.hypot(p.size_z * math.cos(theta), p.size_xy * math.sin(theta))
    out = {"ha": b.ha * fh, "hm": b.hm * fh, "hp": b.hp * fh,
           "depth": b.depth * math.hypot(p.size_xy * math.cos(theta), p.size_z * math.sin(theta)),
           "width": b.width * p.size_xy}
    f = p.fracture_at(level)
    if f is not None and not b.cut:
        u = np.array([HEIGHT_INSET, 0.5, 1.0 - HEIGHT_INSET])
        planar, dent = column_loss(f.morph, f.loss, u, np.zeros(3))
        lam = planar + dent
        out["ha"] *= 1 - lam[0]
        out["hm"] *= 1 - lam[1]
        out["hp"] *= 1 - lam[2]
    return out


#: Genant semi-quantitative grade by height loss (ANATOMY 1e): 20-25 %, 25-40 %, > 40 %
GENANT_CUTS: Final[tuple[float, float, float]] = (0.20, 0.25, 0.40)


def genant_grade(loss: float) -> int:
    """Genant grade of a fractional height loss (ANATOMY 1e).

    Examples
    --------
    >>> [genant_grade(x) for x in (0.1, 0.22, 0.3, 0.5)]
    [0, 1, 2, 3]
    """
    return sum(loss >= c for c in GENANT_CUTS)


def study_truth(p: RealPatient, name: str, grid: Grid | None, phase: str,
                measure: bool = True) -> pd.DataFrame:
    """One row per level T1..L5 of *p*'s study on base *name* (columns :data:`TRUTH_COLUMNS`).

    ``in_view``: any of the body lies between the grid's first and last slice;
    ``fully_in_view``: all of it does and the base scan holds it whole. Heights, centre and
    tilt are measured from the body mask sampled through the patient's maps (*measure*)
    or predicted from the base's own heights and the planned deformation (``--truth-only``).
    """
    cat = base_catalogue(name)
    centres = output_centres(p, name, calibrated=measure)
    pm = patient_map(p, cat)
    maps = fracture_maps(p, name, calibrated=measure)
    planted = {m.spec.level for m in maps}
    # what each fractured mask shows (rendered) or the loss intended (--truth-only)
    shown = shown_losses(p, name) if measure else {f.level: f.loss for f in p.fractures}
    if grid is not None:
        z0 = grid.origin[2]
        z1 = z0 + (grid.shape[0] - 1) * grid.spacing[0]
    rows = []
    for level in TRUTH_LEVELS:
        b = cat.bodies.get(level)
        f = p.fracture_at(level)
        loss = shown.get(level, 0.0) if f is not None and level in planted else 0.0
        grade = genant_grade(loss)
        row: dict[str, object] = {
            "level": level, "genant_grade": grade,
            "morph_type": f.morph if grade and f is not None else "normal",
            "fractured": grade > 0, "height_loss": round(loss, 4) if grade else 0.0,
            "trabecular_hu": round(trabecular_target(p, level, phase), 1),
        }
        if b is None or grid is None:
            rows.append({**row, "in_view": False, "fully_in_view": False})
            continue
        c = centres[level]
        ext = []
        for zb in (b.z_lo, b.z_hi):
            zf = base_to_fractured(maps, np.array([zb]), np.array([b.centre[1]]), np.array([b.centre[2]]))
            ext.append(float(pm.z_to_output(zf)[0]))
        axis = body_axis(p, name, level)
        if measure and not b.cut:
            h = measure_body(p, name, level, c, axis)
            cz, cy, cx = h["centre"]  # type: ignore[misc]
            lo, hi = float(h["z_lo"]), float(h["z_hi"])  # type: ignore[arg-type]
            tilt_s, tilt_c = float(h["tilt_sagittal_deg"]), float(h["tilt_coronal_deg"])  # type: ignore[arg-type]
        else:
            h = _predicted_heights(p, name, level)
            cz, cy, cx = c
            lo, hi = ext
            tilt_s = math.degrees(math.atan2(axis[1], axis[0]))
            tilt_c = math.degrees(math.atan2(axis[2], axis[0]))
        in_view = hi >= z0 and lo <= z1
        full = (not b.cut) and lo >= z0 and hi <= z1
        nan = float("nan")
        rows.append({
            **row,
            "ha_mm": nan if b.cut else round(float(h["ha"]), 2),  # type: ignore[arg-type]
            "hm_mm": nan if b.cut else round(float(h["hm"]), 2),  # type: ignore[arg-type]
            "hp_mm": nan if b.cut else round(float(h["hp"]), 2),  # type: ignore[arg-type]
            "depth_mm": round(float(h["depth"]), 2),  # type: ignore[arg-type]
            "width_mm": round(float(h["width"]), 2),  # type: ignore[arg-type]
            "centre_z_mm": round(float(cz), 2), "centre_y_mm": round(float(cy), 2),
            "centre_x_mm": round(float(cx), 2),
            "in_view": bool(in_view), "fully_in_view": bool(full),
            "tilt_sagittal_deg": round(tilt_s, 2), "tilt_coronal_deg": round(tilt_c, 2),
        })
    df = pd.DataFrame(rows)
    for col in TRUTH_COLUMNS:
        if col not in df:
            df[col] = np.nan
    df["fractured"] = df["fractured"].astype(bool)
    return df[list(TRUTH_COLUMNS)]


def anatomy_source(name: str) -> str:
    """What the truth calls a base (``lidc0001``, ``totalseg-abdomen`` or both joined)."""
    return ANATOMY_SOURCE[name]
