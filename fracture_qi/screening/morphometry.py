"""Vertebral morphometry: six-point heights, Genant grade and type, trabecular density.

Heights follow six-point morphometry: the superior and inferior endplate are located at an
anterior, a middle and a posterior column of the body, and each height is the Euclidean
distance between the two endplate points of its column in the sagittal plane. Because the
points are mapped back to patient millimetres, the heights are measured along the body's own
axis, whatever the curvature of the spine.

Grading compares each body with what is normal *for its level* (ANATOMY.md 1d): the
mid-thoracic physiological wedge (Ha/Hp ~0.87) and the L5 reverse wedge (~1.15) are not
fractures. Crush (the whole body lower) is judged against the posterior heights of the
neighbours, scaled by the normal height ratio between the levels (ANATOMY.md 1a).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.screening.spine import BodySpan, Straightened, _gauss1d
from fracture_qi.screening.types import LEVELS, GenantGrade, MorphType

#: normal Ha/Hp and Hm/Hp by level, adults >= 50 (ANATOMY.md 1d; T1-T3 extrapolated from T4).
#: Hm/Hp is highest in the upper thorax (0.91) and lowest at the kyphosis apex (0.87): one
#: value for all levels under-read central depressions of T1-T5 by up to 3%
NORMAL_HA_HP: dict[str, float] = {
    "T1": 0.93, "T2": 0.93, "T3": 0.92, "T4": 0.92, "T5": 0.90, "T6": 0.88, "T7": 0.87,
    "T8": 0.87, "T9": 0.89, "T10": 0.91, "T11": 0.91, "T12": 0.91, "L1": 0.92, "L2": 0.95,
    "L3": 0.98, "L4": 1.00, "L5": 1.15,
}
NORMAL_HM_HP: dict[str, float] = {
    "T1": 0.91, "T2": 0.91, "T3": 0.91, "T4": 0.91, "T5": 0.89, "T6": 0.88, "T7": 0.87,
    "T8": 0.87, "T9": 0.88, "T10": 0.89, "T11": 0.89, "T12": 0.89, "L1": 0.88, "L2": 0.88,
    "L3": 0.88, "L4": 0.89, "L5": 0.88,
}
#: typical posterior height by level (mm, ANATOMY.md 1a), used only as ratios between levels
NORMAL_HP: dict[str, float] = {
    "T1": 14.5, "T2": 16.0, "T3": 16.5, "T4": 17.0, "T5": 17.5, "T6": 18.5, "T7": 19.0,
    "T8": 19.5, "T9": 20.5, "T10": 21.5, "T11": 23.0, "T12": 24.5, "L1": 26.5, "L2": 27.0,
    "L3": 27.0, "L4": 26.5, "L5": 26.0,
}
#: levels graded without the Ha/Hp rule (L5: "exclude from simple Ha/Hp rules", ANATOMY.md 1d)
NO_WEDGE_RULE = frozenset({"L5"})
#: levels whose axis is the mean direction of all four sides, walls included (L5's trapezoid:
#: its endplates diverge, see :func:`_measure_steps`); every other level takes its endplates'
WALL_AXIS_LEVELS = frozenset({"L5"})
#: a body measured taller than this many times its neighbours' expected height is left
#: unmeasured (see ``drop_implausibly_tall``)
TALL_RATIO = 1.5
#: when the level is unknown, the population-wide priors
DEFAULT_HA_HP = 0.92
#: inset of the anterior and posterior columns from the walls, as a fraction of the depth
COLUMN_INSET = 0.12
#: a wall column shorter than this fraction of the tallest column is an endplate lost, not a
#: fracture (beyond 60% collapse of a wall: vertebra plana)
MIN_WALL_RATIO = 0.4
#: half the thickness of a cortical endplate (mm): its outer surface lies this far beyond its peak
CORTEX_HALF_MM = 0.5
# a faint endplate reading within this of its outer firm neighbour's level is a step's edge
# (see _endplate_path)
OUTER_STEP_MM = 0.5
#: weight of the line-peak estimate against the steepest-step estimate of an endplate surface
PEAK_WEIGHT = 0.65
#: how much further (mm) past the disc centre an endplate is sought when it is not found
#: within the usual reach (see ``_endplates``)
WIDEN_MM = 3.0
#: lateral centring (see ``_lateral_walls``): how far across the canal's plane the body is
#: followed, how far out its cortex is looked for at the least, the body widths taken as
#: plausible and the largest shift of the plane accepted (mm)
LATERAL_REACH_MM = 45.0
LATERAL_MIN_MM = 6.0
LATERAL_RIM_HU = 30.0
LATERAL_WIDTH_MM = (20.0, 80.0)
LATERAL_SHIFT_MM = 12.0
#: grade-1 cut-off on the *measured* reduction. Genant's 20% is a loss against the body's own
#: former shape, which is unknown; the screener measures against the normal shape for the
#: level, and people differ from it by SD ~0.05 in Ha/Hp and Hm/Hp (ANATOMY.md 1d), about 4%
#: of the ratio. A true 21% loss therefore measures anywhere from ~16% to ~26%, while normal
#: bodies stay under ~10%: the mild cut-off sits one SD below 20% (between it and 20%, a wedge
#: or biconcave reading must be borne out against the neighbours, see ``_grade_pass``). Grades 2 and 3 keep the
#: 25% and 40% cut-offs (lowering them would read mild deformities as moderate, flagging
#: studies that should not be).
MILD_REDUCTION = 0.16


@dataclass
class BodyMeasurement:
    """Heights and landmarks of one vertebral body.

    Attributes
    ----------
    ha, hm, hp
        Anterior, middle and posterior heights (mm); ``None`` for a body cut by the view.
    points_zy
        The six landmarks as grid-mm ``(z, y)``: superior anterior, middle, posterior, then
        inferior anterior, middle, posterior.
    outline_zy
        A closed outline of the body for drawing (grid-mm ``(z, y)``).
    centre_zyx
        Grid-mm centre of the body.
    depth
        Anterior-posterior depth (mm).
    trabecular_hu
        Median HU of an eroded core of the body, away from the basivertebral vein.
    """

    level: str | None
    partial: bool
    ha: float | None = None
    hm: float | None = None
    hp: float | None = None
    points_zy: np.ndarray | None = None
    outline_zy: np.ndarray | None = None
    centre_zyx: tuple[float, float, float] | None = None
    depth: float | None = None
    trabecular_hu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _edge_candidates(
    s: np.ndarray, sm: np.ndarray, g: np.ndarray, lo: float, hi: float, rising: bool
) -> list[np.ndarray]:
    """Candidate endplate surfaces in each column: per column, rows ``(position mm, strength)``.

    ``sm`` holds the columns' smoothed profiles along ``s`` (one column each) and ``g`` their
    gradients. A candidate is a steep rising (``rising``) or falling step between ``lo`` and
    ``hi`` with, for strength, the contrast of the bright cortical line just inside it (on
    the body's side) when there is one, else the step. Positions blend the steepest point and
    the line's peak: blurred by the slice profile, the steepest step lies outside the true
    surface by about the blur width, while the peak (plus half a cortical thickness) drifts
    towards the brighter side (inward when trabecular bone is brighter than the disc);
    ``PEAK_WEIGHT`` balances the two. All columns are searched at once.
    """
    n, ncol = g.shape
    empty = np.zeros((0, 2))
    idx = np.nonzero((s >= lo) & (s <= hi))[0]
    if len(idx) < 3:
        return [empty] * ncol
    step = float(s[1] - s[0])
    gg = g if rising else -g
    gi = gg[idx]
    with np.errstate(invalid="ignore"):  # an empty (NaN) column has no candidates
        gmax = gi.max(axis=0)
        steep = (
            (gi >= 0.15 * gmax) & (gi >= gg[np.maximum(idx - 1, 0)]) & (gi >= gg[np.minimum(idx + 1, n - 1)])
            & (gmax > 0)
        )
    col, rows = np.nonzero(steep.T)  # column by column, each in order along s
    if not len(rows):
        return [empty] * ncol
    i = idx[rows]
    inward = 1 if rising else -1
    n_in = max(1, int(round(3.0 / step)))
    n_out = max(1, int(round(2.0 / step)))
    edge = s[i] + _parabola(gg, i, col) * step
    outside = sm[np.minimum(np.maximum(i - inward * n_out, 0), n - 1), col]
    pos, strength = edge, gg[i, col]
    # the first peak of the profile within n_in samples inward of the step: the cortex
    is_peak = np.zeros(sm.shape, dtype=bool)
    is_peak[1:-1] = (sm[1:-1] >= sm[:-2]) & (sm[1:-1] >= sm[2:])
    found = np.zeros(len(i), dtype=bool)
    jpk = np.zeros(len(i), dtype=int)
    for k in range(1, n_in + 1):  # loop over a few offsets, not over samples
        j = np.minimum(np.maximum(i + inward * k, 0), n - 1)
        hit = ~found & is_peak[j, col]
        jpk[hit] = j[hit]
        found |= hit
    if found.any():
        f = found
        peak = s[jpk[f]] + _parabola(sm, jpk[f], col[f]) * step - inward * CORTEX_HALF_MM
        pos = pos.copy()
        strength = strength.copy()
        pos[f] = PEAK_WEIGHT * peak + (1.0 - PEAK_WEIGHT) * edge[f]
        strength[f] = np.maximum(sm[jpk[f], col[f]] - outside[f], strength[f])
    cands = np.stack([pos, strength], axis=1)
    bounds = np.searchsorted(col, np.arange(ncol + 1))
    return [cands[bounds[k] : bounds[k + 1]] for k in range(ncol)]


def _endplate_path(cands: list[np.ndarray], cols: np.ndarray, half_h: float) -> list[float | None]:
    """Choose one candidate per column so that the endplate is a smooth line (dynamic
    programming): total strength, minus a penalty for slopes steeper than an endplate can
    have between neighbouring columns, minus a mild preference for the candidate nearer the
    body's centre (the body's own endplate rather than the neighbour's across the disc)."""
    # a handful of candidates per column: plain floats beat numpy's per-call overhead here
    cols_pos = [c[:, 0].tolist() for c in cands]
    cols_str = [c[:, 1].tolist() for c in cands]
    usable = [k for k, c in enumerate(cols_pos) if c]
    if len(usable) < max(3, len(cands) // 2):
        return [None] * len(cands)
    smax = max(max(cols_str[k]) for k in usable) or 1.0
    hh = max(half_h, 1.0)
    score_prev: list[float] = []
    back: list[list[int]] = []
    ppos: list[float] = []
    prev_k = 0
    for k in usable:
        pos, strength = cols_pos[k], cols_str[k]
        # faint steps (trabecular texture, noise) may not outvote a real, if faint, endplate
        val = [st / smax - 0.1 * abs(p) / hh - (1.0 if st < 0.2 * smax else 0.0) for p, st in zip(pos, strength)]
        if not score_prev:
            score, bp = val, [0] * len(pos)
        else:
            da = abs(float(cols[k]) - float(cols[prev_k]))
            score, bp = [], []
            for p, v in zip(pos, val):
                best, arg = -math.inf, 0
                for j, (q, sc) in enumerate(zip(ppos, score_prev)):
                    t = sc - 0.35 * max(abs(p - q) - 0.5 * da - 0.5, 0.0)
                    if t > best:  # the first of equals, as argmax
                        best, arg = t, j
                score.append(v + best)
                bp.append(arg)
        back.append(bp)
        score_prev, prev_k, ppos = score, k, pos
    out: list[float | None] = [None] * len(cands)
    faint = [False] * len(cands)
    j = max(range(len(score_prev)), key=score_prev.__getitem__)  # the first of equals
    for n in range(len(usable) - 1, -1, -1):
        k = usable[n]
        out[k] = cols_pos[k][j]
        faint[k] = cols_str[k][j] < 0.2 * smax
        j = back[n][j]
    # a faint reading between two firm ones is an oblique stretch of the surface (a step in a
    # stepped endplate), which a column-wise search meets only at a slant and reads as a weak
    # edge at the outer level of the step: the firm columns either side place it better. A
    # faint reading inward of the outer neighbour is kept: that is the floor of a dent (a
    # biconcave fracture), which the mean of its rims would make shallower than it is
    for k in range(1, len(cands) - 1):
        lo, hi, v = out[k - 1], out[k + 1], out[k]
        if (
            faint[k] and v is not None and lo is not None and hi is not None
            and not faint[k - 1] and not faint[k + 1]
            and abs(v) >= max(abs(lo), abs(hi)) - OUTER_STEP_MM
        ):
            out[k] = 0.5 * (lo + hi)
    return out


def _parabola(y: np.ndarray, i: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Sub-sample offsets of the extrema of the columns of ``y`` at rows ``i`` (columns
    ``col``), from a parabola through 3 samples; 0 at the ends and on flat runs."""
    n = len(y)
    inner = (i > 0) & (i < n - 1)
    a = y[np.maximum(i - 1, 0), col]
    b = y[i, col]
    c = y[np.minimum(i + 1, n - 1), col]
    den = a - 2 * b + c
    ok = inner & (den != 0)
    out = np.zeros(len(i))
    out[ok] = np.minimum(np.maximum(0.5 * (a[ok] - c[ok]) / den[ok], -1.0), 1.0)
    return out


@dataclass
class _Frame:
    """A body-aligned sampling frame in the sagittal plane (grid mm)."""

    cz: float
    cy: float
    hz: float  # unit vector towards superior along the body axis
    hy: float

    @property
    def az(self) -> float:  # unit vector towards anterior, perpendicular to the axis
        return self.hy

    @property
    def ay(self) -> float:
        return -self.hz

    def to_zy(self, h: np.ndarray | float, a: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        h, a = np.asarray(h, dtype=np.float64), np.asarray(a, dtype=np.float64)
        return self.cz + h * self.hz + a * self.az, self.cy + h * self.hy + a * self.ay


def _patch_request(
    st: Straightened, fr: _Frame, h: np.ndarray, a: np.ndarray, dx: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Sample request (see :meth:`SpineSampler.sample_many`) for the body's sagittal patch in
    its own frame, in the plane ``dx`` mm beside the canal's."""
    H, A = np.meshgrid(h, a, indexing="ij")
    z, y = fr.to_zy(H, A)
    x = np.interp(z, st.cz, st.cx) + dx
    return z, y, x, True


def _walls(
    img: np.ndarray, h: np.ndarray, a: np.ndarray, half_h: float, a_post: float, a_ant: float
) -> tuple[float, float]:
    """Posterior (rise going anterior) and anterior (fall) wall of a body patch, near guesses."""
    rows = np.abs(h) <= 0.3 * half_h
    prof = _gauss1d(img[rows].mean(axis=0).astype(np.float64), 1.0)
    g = np.gradient(prof, a)
    sel = np.abs(a - a_post) <= 8.0
    ap = float(a[sel][int(np.argmax(g[sel]))]) if sel.any() else a_post
    # a vertebral body is deeper than it is tall (depth/height 1.2-1.6): the anterior wall lies
    # beyond ~1.5 half-spans, which skips falls inside the body (posterior cortex, texture)
    aa = _first_fall(a, g, ap + max(12.0, 1.5 * half_h), ap + 60.0, a_ant)
    return ap, aa


def _theil_sen(x: np.ndarray, y: np.ndarray) -> float | None:
    """Median of the pairwise slopes of ``y`` against ``x`` over the finite points (``None``
    with fewer than four): a line fit that a few rows off the wall do not pull."""
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 4:
        return None
    i, j = np.triu_indices(len(x), 1)
    d = x[j] - x[i]
    keep = d != 0
    return float(np.median((y[j] - y[i])[keep] / d[keep])) if keep.any() else None


def _wall_slopes(
    img: np.ndarray, h: np.ndarray, a: np.ndarray, a_post: float, a_ant: float, inf: float, sup: float
) -> tuple[float, float] | None:
    """Slant (``da/dh``) of the anterior and posterior wall of a body patch.

    Read in the rows of the middle 60% of the height between the endplates ``inf`` and
    ``sup``: the anterior wall is each row's first strong fall within 8 mm of ``a_ant``, the
    posterior wall its steepest rise within 6 mm of ``a_post``. ``None`` when either wall has
    too few rows to fit.
    """
    span = sup - inf
    rows = np.nonzero((h > inf + 0.2 * span) & (h < sup - 0.2 * span))[0]
    if len(rows) < 4:
        return None
    prof = _gauss1d(img[rows].astype(np.float64), 1.0, axis=1)
    g = np.gradient(prof, a, axis=1)
    ant = np.array([_first_fall(a, gr, a_ant - 8.0, a_ant + 8.0, np.nan) for gr in g])
    near = np.abs(a - a_post) <= 6.0
    if not near.any():
        return None
    post = a[near][np.argmax(g[:, near], axis=1)].astype(np.float64)
    sa, sp = _theil_sen(h[rows], ant), _theil_sen(h[rows], post)
    return None if sa is None or sp is None else (sa, sp)


def _first_fall(x: np.ndarray, g: np.ndarray, lo: float, hi: float, default: float) -> float:
    """The first (most posterior) strong fall of a profile between ``lo`` and ``hi``.

    Going forward from the posterior wall the body is flat until its anterior cortex; the
    fall there comes before any fall at fat planes or bowel further anterior.
    """
    idx = np.nonzero((x > lo) & (x < hi))[0]
    if len(idx) < 3:
        return default
    gmin = float(g[idx].min())
    if gmin >= 0:
        return default
    for i in idx.tolist():
        if g[i] <= 0.45 * gmin and g[i] <= g[max(i - 1, 0)] and g[i] <= g[min(i + 1, len(g) - 1)]:
            return float(x[i])
    return float(x[idx[int(np.argmin(g[idx]))]])


def _endplates(
    img: np.ndarray, h: np.ndarray, a: np.ndarray, cols: list[float], half_h: float, widen: float = 0.0,
    inward: bool = True, min_gap: float = 0.0,
) -> tuple[list[float | None], list[float | None]]:
    """Superior and inferior endplate surface (``h``, mm) at each column ``cols``.

    Nine columns across the body are searched jointly for each endplate (a smooth path
    through per-column candidates), then read at the requested columns.

    ``widen`` (mm) is the second look of a measurement that failed: the windows reach that
    much further past the disc centres, and (``inward``) that much further inward, where the
    superior endplate of a severe wedge lies at its front. On every look only the outermost
    columns (the walls) may be read beyond the usual inner reach (``0.1 * half_h`` past the
    centre): a middle reading there is texture inside the body (a biconcave body keeps its
    centre within it), and is left unread. On the usual look that reach is the window's own
    bound, which a candidate passes only by its cortex peak lying inward of its step.

    ``min_gap`` (mm), when set, keeps the inferior endplate at least that far below the
    superior one in every column (see :func:`_measure_steps`).
    """
    step = float(a[1] - a[0])
    grid = np.linspace(min(cols), max(cols), 9)
    # how far past the disc centre to look: thin thoracic discs put the neighbour's endplate
    # within 2 mm, thick lumbar discs leave room for a body that sits off the disc centres
    ext = float(np.clip(0.2 * half_h - 0.5, 1.0, 3.0)) + widen
    # the nine column profiles at once: the mean of the samples within 1.5 mm of each column
    # (an empty column gives NaN, hence no candidates)
    w = (np.abs(a[:, None] - grid[None, :]) <= max(1.5, step)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = img.astype(np.float64) @ (w / w.sum(axis=0))
    sm = _gauss1d(prof, 0.7, axis=0)
    g = np.gradient(sm, h, axis=0)
    # windows stop just past the disc centres; where an endplate is not found there, once
    # more reaching WIDEN_MM further: a short (crushed) body between ordinary discs can sit
    # a few millimetres off the disc centres found beside it, beyond the reach its own
    # small height sets
    def path(lo: float, hi: float, rising: bool, below: list[float | None] | None = None) -> list[float | None]:
        cands = _edge_candidates(h, sm, g, lo, hi, rising)
        if below is not None:  # each column's candidates at least min_gap below that line
            cands = [c if v is None else c[c[:, 0] <= v - min_gap] for c, v in zip(cands, below)]
        return _endplate_path(cands, grid, half_h)

    inner = 0.1 * half_h + (widen if inward else 0.0)
    sup_p = path(-inner, half_h + ext, False)
    if all(v is None for v in sup_p):
        sup_p = path(-inner, half_h + ext + WIDEN_MM, False)
    below = sup_p if min_gap > 0 else None
    inf_p = path(-half_h - ext, inner, True, below)
    if all(v is None for v in inf_p):
        inf_p = path(-half_h - ext - WIDEN_MM, inner, True, below)

    def read(chosen: list[float | None], sign: float) -> list[float | None]:
        out: list[float | None] = []
        for c in cols:
            v = chosen[int(np.argmin(np.abs(grid - c)))]
            if v is not None and min(cols) < c < max(cols) and sign * v < -0.1 * half_h:
                v = None  # a middle column within the body's inner part (see the docstring)
            out.append(v)
        return out

    return read(sup_p, 1.0), read(inf_p, -1.0)


def measure_body(
    volume: CTVolume, st: Straightened, bd: BodySpan, device: torch.device, width_mm: float = 30.0
) -> BodyMeasurement:
    """Six-point heights and trabecular density of one body (see module docstring).

    The body is first sampled in the canal-following frame; the tilt of its endplates there
    gives the body's own axis, and the body is sampled again in a frame aligned with it, where
    the walls, the three columns and the six endplate points are found. To measure several
    bodies, :func:`measure_bodies` gives the same results with far fewer sampling calls.
    """
    return measure_bodies(volume, st, [bd], device, width_mm)[0]


def measure_bodies(
    volume: CTVolume, st: Straightened, bodies: list[BodySpan], device: torch.device, width_mm: float = 30.0
) -> list[BodyMeasurement]:
    """:func:`measure_body` for every body of a series, sampling all bodies together.

    Each body's measurement is a generator that yields the sample requests it needs (its
    patch in the canal frame, its patch in its own frame, its trabecular core) and receives
    the HU back. The bodies advance in lock-step, so each round of requests of the whole series
    is one :meth:`~fracture_qi.screening.spine.SpineSampler.sample_many` call (three calls per
    series instead of about three per body). The results equal separate calls.

    Parameters
    ----------
    volume, st
        The CT volume and its straightened spine (with its sampler).
    bodies
        Body spans, caudal to cranial.
    device
        Torch device (the sampler's).
    width_mm
        Assumed body width for the trabecular sample.

    Returns
    -------
    list of BodyMeasurement
        One per body, in order.
    """
    assert st.sampler is not None
    gens = [_measure_steps(volume, st, bd, width_mm) for bd in bodies]
    out: list[BodyMeasurement | None] = [None] * len(gens)
    pending: dict[int, Any] = {}
    for i, g in enumerate(gens):
        try:
            pending[i] = next(g)
        except StopIteration as stop:
            out[i] = stop.value
    while pending:
        keys = list(pending)
        vals = st.sampler.sample_many([pending[k] for k in keys])
        pending = {}
        for k, v in zip(keys, vals):
            try:
                pending[k] = gens[k].send(v)
            except StopIteration as stop:
                out[k] = stop.value
    return [m for m in out if m is not None]


def _measure_steps(
    volume: CTVolume, st: Straightened, bd: BodySpan, width_mm: float
) -> Generator[Any, np.ndarray, BodyMeasurement]:
    """The measurement of one body as a generator of sample requests (see :func:`measure_bodies`)."""
    m = BodyMeasurement(level=bd.level, partial=bool(bd.extra.get("partial", False)))
    depth0 = max(bd.u_ant - bd.u_post, 1.0)
    half_h = 0.5 * (bd.s_sup - bd.s_inf)
    u_mid = bd.u_post + 0.5 * depth0
    cz, cy = st.to_zy(bd.s_mid, u_mid)
    nz = float(np.interp(bd.s_mid, st.s_mm, st.nz))
    ny = float(np.interp(bd.s_mid, st.s_mm, st.ny))
    fr = _Frame(float(cz), float(cy), -ny, nz)  # axis = canal tangent, anterior = normal
    step = 0.5 if min(volume.spacing) < 1.5 else 1.0
    h = np.arange(-half_h - 9.0, half_h + 9.0 + 1e-6, step)
    a = np.arange(-0.5 * depth0 - 12.0, 0.5 * depth0 + 12.0 + 1e-6, step)
    a_post, a_ant = -0.5 * depth0, 0.5 * depth0
    h_lo, h_hi = -0.7 * half_h, 0.7 * half_h
    if not m.partial:
        for it in range(2):
            # the first look (walls, tilt, centre) needs no sub-millimetre grid: at 1 mm, a
            # quarter of the samples of a 0.5 mm look; the measuring look is at the full step
            # (coarser than 1 mm, the first look loses bodies of 3 mm series)
            hh, aa = (h[::2], a[::2]) if it == 0 and step < 1.0 else (h, a)
            img = yield _patch_request(st, fr, hh, aa, float(m.extra.get("x_offset_mm", 0.0)))
            a_post, a_ant = _walls(img, hh, aa, half_h, a_post, a_ant)
            depth = a_ant - a_post
            if it == 1:
                break
            # tilt of the endplates in this frame -> rotate the frame onto the body's axis
            cols = [a_post + f * depth for f in (0.15, 0.3, 0.7, 0.85)]
            sup, inf = _endplates(img, hh, aa, cols, half_h)
            if any(v is None for v in sup + inf):
                # the span from the disc centres can be short of the body (a concave endplate's
                # rim lies past the reach): a column with no endplate is looked for once more
                sup, inf = _endplates(img, hh, aa, cols, half_h, WIDEN_MM, inward=False)
            slopes = []
            for e in (sup, inf):
                ok = [(c, v) for c, v in zip(cols, e) if v is not None]
                if len(ok) >= 3:
                    cc, vv = np.array(ok).T
                    slopes.append(np.polyfit(cc, vv, 1)[0])
            # rotate only when both endplates agree on the tilt (a fracture tilts one of them)
            ang = 0.0
            if len(slopes) == 2 and abs(slopes[0] - slopes[1]) <= 0.15:
                ang = float(np.arctan(np.clip(np.mean(slopes), -0.3, 0.3)))
            sv = [v for v in sup if v is not None]
            iv = [v for v in inf if v is not None]
            apart = len(sv) >= 2 and len(iv) >= 2 and min(sv) > max(iv)  # both found, in order
            if bd.level in WALL_AXIS_LEVELS and len(slopes) == 2 and apart:
                # L5 is a trapezoid: its endplates diverge anteriorly and its anterior wall
                # slants back towards the sacrum, so neither the canal (which bends at the
                # lumbosacral angle) nor the endplates alone give its axis. All four sides vote:
                # the mean direction of the two endplates and the two walls
                ws = _wall_slopes(img, hh, aa, a_post, a_ant, max(iv), min(sv))
                if ws is not None:
                    sides = [np.arctan(slopes[0]), np.arctan(slopes[1]), -np.arctan(ws[0]), -np.arctan(ws[1])]
                    ang = float(np.clip(np.mean(sides), -0.5, 0.5))
            # re-centre on the endplates found: the disc centres came from the posterior half of
            # the body, and a body next to a wedge-shaped disc sits off them anteriorly
            h_c = 0.0
            if apart:
                h_c = float(0.5 * (max(sv) + min(iv)))
                half_h = float(0.5 * (max(sv) - min(iv))) + 1.5
            # rotate so that the mean endplate direction becomes the "anterior" axis
            ca, sa = np.cos(ang), np.sin(ang)
            hz = fr.hz * ca - fr.az * sa
            hy = fr.hy * ca - fr.ay * sa
            ccz, ccy = fr.to_zy(h_c, 0.5 * (a_post + a_ant))
            fr = _Frame(float(ccz), float(ccy), float(hz), float(hy))
            a_post, a_ant = -0.5 * depth, 0.5 * depth
            # the sagittal plane through the body's own middle rather than the canal's: a
            # canal estimate a millimetre or two off, or a body beside its canal (L5 at the
            # lumbosacral junction, a rotated scoliotic body), reads a central depression
            # off its deepest point, shallower than it is
            xs = np.arange(-LATERAL_REACH_MM, LATERAL_REACH_MM + 1e-6, step)
            prof = yield _lateral_request(st, fr, half_h, a_post, depth, xs)
            # a body is wider than it is deep (width/depth 1.2-1.4, ANATOMY.md 1a): a
            # narrower span is a dark dent or cleft inside it, taken for the body's sides
            found = _lateral_walls(prof, xs, min_width=0.9 * depth)
            if found is not None:
                m.extra["x_offset_mm"] = 0.5 * (found[0] + found[1])
                m.extra["width_mm"] = found[1] - found[0]
        depth = a_ant - a_post
        inset = max(COLUMN_INSET * depth, 4.0)
        cols3 = [a_ant - inset, a_post + 0.5 * depth, a_post + inset]  # a, m, p
        # a last look where both failed on a wall column much shorter than the others: the
        # inferior path took the underside of the superior endplate's cortex at the front of
        # a crushed body (a bright band a few millimetres thick, stronger there than the
        # inferior endplate below it). It keeps the superior endplate, the one a fracture
        # moves, and looks for the inferior one at least MIN_WALL_RATIO of the tallest column
        # below it
        looks: list[tuple[float, float]] = [(0.0, 0.0), (WIDEN_MM, 0.0)]
        for widen, gap in looks:
            sup, inf = _endplates(img, h, a, cols3, half_h, widen, min_gap=gap)
            good = all(v is not None for v in sup + inf) and all(
                s_ > i_ for s_, i_ in zip(sup, inf)  # type: ignore[operator]
            )
            if good:
                sup_a = np.array(sup, dtype=float)
                inf_a = np.array(inf, dtype=float)
                zs, ys = fr.to_zy(sup_a, np.array(cols3))
                zi, yi = fr.to_zy(inf_a, np.array(cols3))
                hts = np.hypot(zs - zi, ys - yi)
                # beyond 60% collapse of a wall (vertebra plana) or 70% of the middle (a severe
                # biconcave body keeps its walls: Hm/Hp down to ~0.35) an endplate was lost, not found
                if min(hts[0], hts[2]) < MIN_WALL_RATIO * hts.max() or hts[1] < 0.3 * hts.max() or hts.min() < 3.0:
                    m.extra["implausible_heights"] = [round(float(x), 1) for x in hts]
                    good = False
                    if widen == 0.0 and gap == 0.0 and hts[1] >= 0.3 * hts.max():
                        looks.append((0.0, MIN_WALL_RATIO * float(hts.max())))
            if good:
                m.extra.pop("implausible_heights", None)
                break
        if good:
            m.points_zy = np.stack([np.concatenate([zs, zi]), np.concatenate([ys, yi])], axis=1)
            m.ha, m.hm, m.hp = (float(x) for x in hts)
            m.depth = float(depth)
            h_lo, h_hi = float(inf_a.min()), float(sup_a.max())
            a_seq = [a_post, cols3[2], cols3[1], cols3[0], a_ant]
            top = [sup_a[2], sup_a[2], sup_a[1], sup_a[0], sup_a[0]]
            bot = [inf_a[2], inf_a[2], inf_a[1], inf_a[0], inf_a[0]]
            h_ol = np.array(top + bot[::-1], dtype=float)
            a_ol = np.array(a_seq + a_seq[::-1], dtype=float)
    if m.points_zy is None:
        m.partial = True
        m.depth = float(a_ant - a_post)
        h_ol = np.array([h_hi, h_hi, h_lo, h_lo])
        a_ol = np.array([a_post, a_ant, a_ant, a_post])
    oz, oy = fr.to_zy(h_ol, a_ol)
    m.outline_zy = np.stack([oz, oy], axis=1)
    zc, yc = fr.to_zy(0.5 * (h_lo + h_hi), 0.5 * (a_post + a_ant))
    xc = float(np.interp(zc, st.cz, st.cx)) + float(m.extra.get("x_offset_mm", 0.0))
    m.centre_zyx = (float(zc), float(yc), xc)
    m.extra["axis_zy"] = (fr.hz, fr.hy)
    req = _trabecular_request(
        st, fr, h_lo, h_hi, a_post, float(m.depth or 0.0),
        float(m.extra.get("width_mm") or width_mm), float(m.extra.get("x_offset_mm", 0.0)),
    )
    if req is not None:
        vals = yield req
        vals = vals[vals > -900]
        m.trabecular_hu = float(np.median(vals)) if len(vals) else None
    return m


def _lateral_request(
    st: Straightened, fr: _Frame, half_h: float, a_post: float, depth: float, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Sample request (single taps) for lines across the body, left to right at offsets
    ``xs`` from the canal's plane: the middle 60% of its height and 25-60% of its depth from
    the back (clear of the pedicles and rib heads behind, and of the aorta in front)."""
    hs = np.linspace(-0.3, 0.3, 5) * half_h
    as_ = a_post + depth * np.linspace(0.25, 0.6, 5)
    H, A, X = np.meshgrid(hs, as_, xs, indexing="ij")
    z, y = fr.to_zy(H, A)
    x = np.interp(z, st.cz, st.cx) + X
    return z, y, x, False


def _lateral_walls(vals: np.ndarray, xs: np.ndarray, min_width: float = 0.0) -> tuple[float, float] | None:
    """Left and right lateral wall (mm from the canal's plane) of a body from lines across
    it (:func:`_lateral_request`), or ``None`` when they are not clear: a width outside
    ``LATERAL_WIDTH_MM`` or under ``min_width``, or a shift beyond ``LATERAL_SHIFT_MM``.

    The profile across the body is the median of the lines (a vessel or a rib crossing a few
    of them does not move it). From the middle outwards each side is followed to its lateral
    cortex, the first bright rim beyond ``LATERAL_MIN_MM``, and the wall is the steepest fall
    just outside it, whatever lies beyond (lung, psoas, a contrast-filled aorta).
    """
    prof = np.median(vals.reshape(-1, len(xs)), axis=0).astype(np.float64)
    step = float(xs[1] - xs[0])
    prof = _gauss1d(prof, 1.0 / step)
    g = np.gradient(prof, xs)
    core = float(np.median(prof[np.abs(xs) <= LATERAL_MIN_MM]))
    walls = []
    for sign in (-1.0, 1.0):
        side = np.nonzero(sign * xs >= LATERAL_MIN_MM)[0]
        if sign < 0:
            side = side[::-1]  # outwards from the middle
        p = prof[side]
        gout = -sign * g[side]  # a fall going outwards is positive
        # the cortex: the first rise of the profile well above the core, climbed to its top
        up = np.nonzero(p >= core + LATERAL_RIM_HU)[0]
        if not len(up):
            return None
        k0 = int(up[0])
        while k0 + 1 < len(p) and p[k0 + 1] >= p[k0]:
            k0 += 1
        win = slice(k0, min(len(p), k0 + int(round(5.0 / step)) + 1))
        k = k0 + int(np.argmax(gout[win]))
        # the wall leaves the body: 3 mm out the profile is down by half the rim's contrast
        beyond = p[min(len(p) - 1, k + int(round(3.0 / step)))]
        if gout[k] <= 0 or beyond > p[k0] - 0.5 * (p[k0] - core):
            return None
        walls.append(float(xs[side[k]]))
    left, right = walls
    width = right - left
    too_narrow = width < max(LATERAL_WIDTH_MM[0], min_width)
    if too_narrow or width > LATERAL_WIDTH_MM[1] or abs(0.5 * (left + right)) > LATERAL_SHIFT_MM:
        return None
    return left, right


def _trabecular_request(
    st: Straightened,
    fr: _Frame,
    h_lo: float,
    h_hi: float,
    a_post: float,
    depth: float,
    width_mm: float,
    dx: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool] | None:
    """Sample request for the trabecular core (its median HU is the density): the middle half
    in height, from 35% to 80% of the depth from the back (clear of the posterior wall and the
    basivertebral vein) and +-25% of the width; ``None`` for a body too small to sample."""
    hh = h_hi - h_lo
    if hh < 6.0 or depth < 10.0:
        return None
    hs = np.linspace(h_lo + 0.25 * hh, h_hi - 0.25 * hh, 5)
    as_ = np.linspace(a_post + 0.35 * depth, a_post + 0.8 * depth, 5)
    xs = np.linspace(-0.25 * width_mm, 0.25 * width_mm, 5)
    H, A, X = np.meshgrid(hs, as_, xs, indexing="ij")
    z, y = fr.to_zy(H, A)
    x = np.interp(z, st.cz, st.cx) + dx + X
    return z, y, x, False


# --------------------------------------------------------------------------------------------
# grading
# --------------------------------------------------------------------------------------------


@dataclass
class Deformity:
    """Genant assessment of one body."""

    grade: int
    morph_type: str
    reduction: float
    score: float
    reductions: dict[str, float]


def grade_from_reduction(reduction: float, mild: float = 0.20) -> int:
    """Genant grade of a fractional height reduction (0.20, 0.25 and 0.40 cut-offs).

    Parameters
    ----------
    reduction
        Fractional height loss.
    mild
        The grade-1 cut-off: Genant's 0.20 for a known loss; the screener grades its
        measured reductions with :data:`MILD_REDUCTION` (see there).

    Returns
    -------
    int
        Genant grade 0-3.

    Examples
    --------
    >>> [grade_from_reduction(r) for r in (0.1, 0.18, 0.22, 0.3, 0.5)]
    [0, 0, 1, 2, 3]
    >>> grade_from_reduction(0.18, mild=MILD_REDUCTION)
    1
    """
    if reduction >= 0.40:
        return int(GenantGrade.SEVERE)
    if reduction >= 0.25:
        return int(GenantGrade.MODERATE)
    if reduction >= mild:
        return int(GenantGrade.MILD)
    return int(GenantGrade.NORMAL)


def deformity_score(reduction: float) -> float:
    """A continuous 0..1 deformity probability from the height reduction.

    Logistic around the grade-1 cut-off, so that 0.5 means "at the 20% line".

    Examples
    --------
    >>> round(deformity_score(0.20), 2)
    0.5
    """
    return float(1.0 / (1.0 + math.exp(-(reduction - 0.20) / 0.025)))


def _expected_hp(i: int, meas: list[BodyMeasurement], exclude: set[int], min_n: int = 1) -> float | None:
    """Posterior height expected for body ``i`` from up to two measured neighbours each side
    (``None`` with fewer than ``min_n`` of them)."""
    me = meas[i]
    vals = []
    for j in (i - 2, i - 1, i + 1, i + 2):
        if j < 0 or j >= len(meas) or j in exclude:
            continue
        nb = meas[j]
        if nb.hp is None or nb.partial:
            continue
        if me.level and nb.level and me.level in NORMAL_HP and nb.level in NORMAL_HP:
            scale = NORMAL_HP[me.level] / NORMAL_HP[nb.level]
        else:
            # unknown levels: heights grow about 4% per level going down (ANATOMY 1a)
            scale = 1.04 ** (j - i)
        vals.append(nb.hp * scale)
    if not vals or len(vals) < min_n:
        return None
    return float(np.median(vals))


def drop_implausibly_tall(meas: list[BodyMeasurement], ratio: float = TALL_RATIO) -> list[int]:
    """Leave unmeasured every body taller than ``ratio`` times what its neighbours lead one to
    expect (:func:`_expected_hp`): two bodies taken as one (a disc missed) or an endplate taken
    from the neighbour across a disc. Adjacent levels differ by ~4% in height (ANATOMY.md 1a),
    so 1.5x is never anatomy; left in, such a body also makes its neighbours look crushed.

    The body keeps its place, level and outline, marked ``partial`` with the heights it had in
    ``extra["implausible_heights"]``. Returns the indices dropped.
    """
    dropped = []
    for i, m in enumerate(meas):
        if m.partial or m.hp is None:
            continue
        # two neighbours at least: against a single crushed one a normal body looks tall
        exp = _expected_hp(i, meas, {i}, min_n=2)
        if exp and m.hp > ratio * exp:
            dropped.append(i)
    for i in dropped:  # decided on the measurements as they came, then applied
        m = meas[i]
        m.extra["implausible_heights"] = [round(float(x), 1) for x in (m.ha, m.hm, m.hp) if x is not None]
        m.extra["implausible_reason"] = "taller than its neighbours allow"
        m.ha = m.hm = m.hp = None
        m.points_zy = None
        m.partial = True
    return dropped


def grade_bodies(meas: list[BodyMeasurement]) -> list[Deformity | None]:
    """Genant grade and type of every measured body (``None`` for unmeasured ones).

    Parameters
    ----------
    meas
        Measurements caudal to cranial (neighbours matter for crush).

    Returns
    -------
    list
        One :class:`Deformity` (or ``None``) per measurement.
    """
    out: list[Deformity | None] = [None] * len(meas)
    first = _grade_pass(meas, set())
    # neighbours that are themselves crushed would hide a crush next to them: re-grade once
    # with crushed bodies left out of the expectations
    crushed = {i for i, d in enumerate(first) if d is not None and d.reductions.get("crush", 0) >= 0.20}
    second = _grade_pass(meas, crushed) if crushed else first
    for i in range(len(meas)):
        out[i] = second[i]
    return out


def _grade_pass(meas: list[BodyMeasurement], exclude: set[int]) -> list[Deformity | None]:
    res: list[Deformity | None] = []
    for i, m in enumerate(meas):
        if m.partial or m.ha is None or m.hm is None or m.hp is None or m.hp <= 0:
            res.append(None)
            continue
        e_ahp = NORMAL_HA_HP.get(m.level or "", DEFAULT_HA_HP)
        e_mhp = NORMAL_HM_HP.get(m.level or "", 0.88)
        # wedge: anterior height short for this level. Reverse wedge (L5) makes Hp the
        # short one; the same ratio read the other way covers a posterior wedge.
        wedge = 1.0 - (m.ha / m.hp) / e_ahp
        if m.level in NO_WEDGE_RULE:
            # L5's reverse wedge varies too much (Ha/Hp 1.00-1.30) for a ratio rule (ANATOMY 1d)
            wedge = 0.0
        # biconcave: middle height short relative to the taller of the two walls
        h_ref = max(m.ha / e_ahp, m.hp)
        bic = 1.0 - (m.hm / h_ref) / e_mhp
        exp_hp = _expected_hp(i, meas, exclude | {i})
        crush = 1.0 - m.hp / exp_hp if exp_hp else 0.0
        # a crush lowers the whole body: Ha must be low against the neighbours as well
        if exp_hp:
            crush = min(crush, 1.0 - (m.ha / e_ahp) / exp_hp + 0.05)
        reds = {"wedge": float(wedge), "biconcave": float(bic), "crush": float(crush)}
        kind = max(reds, key=lambda k: reds[k])
        red = max(reds[kind], 0.0)
        grade = grade_from_reduction(red, mild=MILD_REDUCTION)
        if grade == 1 and red < 0.20 and kind in ("wedge", "biconcave"):
            # below Genant's 20% a ratio of the body's own heights is not enough on its own
            # (an unusually wedged but intact body reads 15-17%): the short column must be
            # short against the neighbours too, on average with the ratio
            col = m.ha / e_ahp if kind == "wedge" else m.hm / e_mhp
            nb = 1.0 - col / exp_hp if exp_hp else 0.0
            if 0.5 * (red + nb) < MILD_REDUCTION:
                grade = 0
        res.append(
            Deformity(
                grade=grade,
                morph_type=kind if grade > 0 else MorphType.NORMAL.value,
                reduction=red,
                score=deformity_score(red),
                reductions=reds,
            )
        )
    return res
