"""Osteoporotic fractures planted into real vertebral bodies: wedge, biconcave, crush.

A fracture is a displacement of the scan along z (the spine's long axis in a supine CT),
column by column through the body, with the shapes real fractured bodies take. The masks
of three radiologist-graded fractures in ``../shared/realdata/verse004`` (VerSe'19, 1 x 1 x
2 mm: T9 and T10 Genant grade 2, L1 grade 3) guided them. Measured along each body's axis
(the line between its neighbours' centres) in its mid-sagittal plane, at 15-85 % of the
depth:

* T9 and T10 have lost height all along (16-17 mm against 22-23 mm at T11-T12) and both
  endplates sag a little: the superior one more (1.0-1.2 mm under the line between its
  rims, against 0.8-1.0 mm for the inferior), :data:`SUPERIOR_SHARE`;
* the deepest point of a sagging endplate lies at 45-65 % of the depth from the anterior
  wall, the rims (the ring apophysis) stay where they were, :data:`DENT_CENTRE_U`,
  :data:`DENT_RADIUS_U`;
* L1 has collapsed to 9 mm at its middle (against 25 mm at L2): both endplates are sunk,
  the front least (14 mm), the middle and back most (7-9 mm), :data:`CRUSH_ANTERIOR_SHARE`.

Masks of 1-2 mm voxels resolve a millimetre of sag only roughly: these are shapes to follow,
not measurements to reproduce.

Planted loss :math:`\\lambda(u, v)` of a column at AP position ``u`` (0 anterior, 1
posterior) and lateral position ``v`` (-1..1): a planar part (the wedge's slope, a crush's
whole-body loss) carried by the superior endplate, and a dome-shaped dent split between
both endplates. Each type is scaled so that its defining height loses exactly ``loss``:
Ha (wedge), Hm (biconcave) or Hp (crush), measured at the columns 10 % in from each wall.

Heights are measured along the body's own axis, which leans by up to 30 degrees in a
supine chest: each endplate point moves along z by what the line along the axis through
its *new* position is to lose, divided by the cosine of the lean (found by a few fixed-point
steps, since the point's AP position shifts as it moves). The inferior endplate rises by its
share of the dent, the superior endplate comes down by the rest; the trabecular interior between the two endplate cortices (each kept rigid,
:data:`CORTEX_MM`) is squeezed; the disc above follows the endplate, and the spine above
comes down by what the posterior wall lost (:attr:`FractureMap.drop`): a crush lowers
everything above it, a wedge tilts the body above forward (:data:`ABOVE_CARRY`) and leaves
the posterior column where it was. Outside a window around the body the whole slice moves
with the posterior wall, so soft tissue stays continuous.

All maps here run from the fractured scan back to the base scan (destination to source),
as a resampler needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from fracture_qi.synth.basescan import LEVELS, BodyInfo, Catalogue

MORPH_TYPES: Final[tuple[str, ...]] = ("wedge", "biconcave", "crush")

#: AP position (0 anterior wall, 1 posterior wall) of the deepest point of an endplate
#: depression; verse004 T9, T10 and L1: 0.45-0.65
DENT_CENTRE_U: Final[float] = 0.55
#: the depression's radius: it spans 25-85 % of the depth (verse004: the ring
#: apophysis, the outer 10-20 % at each wall, keeps its height) and 75 % of the half-width
DENT_RADIUS_U: Final[float] = 0.30
DENT_RADIUS_V: Final[float] = 0.75
#: share of the dent taken by the superior endplate (verse004 T9/T10: the superior endplate
#: sags more than the inferior; L1: both sunk) [estimate]
SUPERIOR_SHARE: Final[dict[str, float]] = {"wedge": 0.8, "biconcave": 0.6, "crush": 0.7}
#: where heights are read (fraction of the depth in from each wall), as the truth measures
HEIGHT_INSET: Final[float] = 0.10
#: wedge: the posterior column loses this share of the anterior loss [estimate]
WEDGE_POSTERIOR_SHARE: Final[float] = 0.05
#: wedge: central depression, as a share of the loss (verse004 T9/T10: the endplates sag
#: ~1 mm between their rims) [estimate]
WEDGE_DENT: Final[float] = 0.2
#: biconcave: the walls lose this share of the central loss [estimate]
BICONCAVE_RIM: Final[float] = 0.1
#: crush: the anterior column loses this share of the posterior loss (verse004 L1: the
#: middle and back are lower than the front); a shallow dent brings the middle to the loss
CRUSH_ANTERIOR_SHARE: Final[float] = 0.88
#: share of the anterior excess (over the posterior wall's loss) the vertebra above follows:
#: a wedge tilts the spine above it forward; a dent stays in the disc [estimate]
ABOVE_CARRY: Final[dict[str, float]] = {"wedge": 0.5, "biconcave": 0.0, "crush": 0.3}
#: endplate cortex (mm) kept rigid at each end of the squeezed interior
CORTEX_MM: Final[float] = 1.5
#: the fracture's own displacement is full within this distance (mm) of the body's
#: footprint and fades to the whole-slice displacement over :data:`WINDOW_FADE_MM` more
WINDOW_IN_MM: Final[float] = 3.0
WINDOW_FADE_MM: Final[float] = 12.0
#: the neighbours' fitted endplates are moved this far (mm) out into their discs before they
#: bound the fracture's displacement (a fit to 2.5-3 mm slices is good to about a slice)
NEIGHBOUR_MARGIN_MM: Final[float] = 2.0
#: columns whose middle lies within this fraction of the depth (either side of the centre)
#: and of the half-width end on an endplate, not a wall
ENDPLATE_CORE_U: Final[float] = 0.3
ENDPLATE_CORE_V: Final[float] = 0.7
#: smoothing (mm, Gaussian sigma) of the endplate fields across columns
SURFACE_SMOOTH_MM: Final[float] = 1.5
#: fixed-point steps that place an endplate point on the line whose loss it carries
ENDPLATE_ITERATIONS: Final[int] = 3
#: step (mm) of the grid a fracture's knots are tabulated on
KNOT_GRID_MM: Final[float] = 1.0
#: away from the body, a slice's share of the drop is spread from this far below the body's
#: bottom to this far above its top: soft tissue and the posterior elements shorten a little
#: over 5-6 cm rather than by a third over the body's own height
GLOBAL_BELOW_MM: Final[float] = 10.0
GLOBAL_ABOVE_MM: Final[float] = 30.0
#: disc height (mm) assumed where a neighbouring body is missing from the scan
DEFAULT_DISC_MM: Final[float] = 6.0
#: sclerosis: a denser band under the collapsed endplate (impacted trabeculae), HU added at
#: the endplate by grade, fading over SCLEROSIS_MM [estimate: 2-5 mm bands of 50-200 HU are
#: the usual CT appearance of a recent or healing compression fracture]
SCLEROSIS_HU: Final[dict[int, float]] = {1: 60.0, 2: 100.0, 3: 150.0}
SCLEROSIS_MM: Final[float] = 4.0


def dome(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The endplate depression's shape: 1 at its centre, 0 from its radius outwards."""
    r2 = ((u - DENT_CENTRE_U) / DENT_RADIUS_U) ** 2 + (v / DENT_RADIUS_V) ** 2
    return np.clip(1.0 - r2, 0.0, None)


def column_loss(morph: str, loss: float, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planar and dent parts of the fractional height loss of columns at (u, v).

    Returns ``(planar, dent)``; a column loses ``planar + dent`` of its height.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.array([0.1, 0.5, 0.9]); v = np.zeros(3)
    >>> [round(float(a + b), 3) for a, b in zip(*column_loss("wedge", 0.3, u, v))]
    [0.3, 0.216, 0.015]
    >>> [round(float(a + b), 3) for a, b in zip(*column_loss("biconcave", 0.3, u, v))]
    [0.03, 0.3, 0.03]
    >>> [round(float(a + b), 3) for a, b in zip(*column_loss("crush", 0.3, u, v))]
    [0.264, 0.3, 0.3]
    """
    a, p = HEIGHT_INSET, 1.0 - HEIGHT_INSET
    d = dome(u, v)
    d_mid = float(dome(np.array(0.5), np.array(0.0)))
    if morph == "wedge":
        lp = WEDGE_POSTERIOR_SHARE * loss
        planar = lp + (loss - lp) * (p - u) / (p - a)
        dent = WEDGE_DENT * loss * d
    elif morph == "biconcave":
        planar = np.full_like(u, BICONCAVE_RIM * loss, dtype=float)
        dent = (1.0 - BICONCAVE_RIM) * loss * d / d_mid
    elif morph == "crush":
        slope = np.clip((u - a) / (p - a), 0.0, 1.0)
        planar = loss * (CRUSH_ANTERIOR_SHARE + (1 - CRUSH_ANTERIOR_SHARE) * slope)
        # a shallow dent brings the middle column's loss up to the posterior one's
        mid = CRUSH_ANTERIOR_SHARE + (1 - CRUSH_ANTERIOR_SHARE) * (0.5 - a) / (p - a)
        dent = (1.0 - mid) * loss * d / d_mid
    else:
        raise ValueError(f"fracture type {morph!r} is not one of {MORPH_TYPES}")
    return np.clip(planar, 0.0, None), dent


# --- the endplates of a body as smooth surfaces ----------------------------------------------------


@dataclass
class Surface:
    """An endplate as a smooth field ``z(y, x)`` (mm) on the scan's in-plane grid.

    Read from the body's mask where a column's first (last) voxel is the endplate: the
    columns of the body's middle (:data:`ENDPLATE_CORE_U`, :data:`ENDPLATE_CORE_V`); a
    plane fitted to those carries it on under the walls and beyond, where a column leaves
    the body through a wall instead (a body leaning 25 degrees does so over a fifth of its
    depth). The departures from the plane (the endplate's own concavity) are smoothed by
    :data:`SURFACE_SMOOTH_MM`. Evaluated bilinearly.
    """

    z: np.ndarray
    y0: float
    x0: float
    dy: float
    dx: float

    def __call__(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        iy = (np.asarray(y, dtype=float) - self.y0) / self.dy
        ix = (np.asarray(x, dtype=float) - self.x0) / self.dx
        shape = np.shape(iy)
        out = ndi.map_coordinates(self.z, [np.ravel(iy), np.ravel(ix)], order=1, mode="nearest")
        return out.reshape(shape)


def _surface(values: np.ndarray, core: np.ndarray, y0: float, x0: float, dy: float,
             dx: float) -> Surface:
    """Plane fitted to *values* on the *core* columns, plus their smoothed residual."""
    ii, jj = np.nonzero(core)
    yy, xx = y0 + ii * dy, x0 + jj * dx
    a = np.stack([np.ones_like(yy), yy, xx], axis=1)
    coef, *_ = np.linalg.lstsq(a, values[ii, jj], rcond=None)
    gy, gx = np.meshgrid(y0 + np.arange(values.shape[0]) * dy, x0 + np.arange(values.shape[1]) * dx,
                         indexing="ij")
    plane = coef[0] + coef[1] * gy + coef[2] * gx
    resid = np.where(core, values - plane, 0.0)
    _, (ni, nj) = ndi.distance_transform_edt(~core, sampling=(dy, dx), return_indices=True)
    resid = resid[ni, nj]
    sig = (SURFACE_SMOOTH_MM / dy, SURFACE_SMOOTH_MM / dx)
    return Surface(plane + ndi.gaussian_filter(resid, sig, mode="nearest"), y0, x0, dy, dx)


@dataclass
class BodyFrame:
    """A body's endplates (fitted surfaces over its columns), footprint window and frame.

    ``u`` runs along the body's AP direction (perpendicular to its axis in the sagittal
    plane: 0 at the anterior wall, 1 at the posterior), ``v`` across it (-1..1); both are
    constant along the body's axis, where its heights are measured.
    """

    level: str
    top: Surface
    bottom: Surface
    centre: tuple[float, float, float]  # (z, y, x) mm
    e_ap: tuple[float, float]  # (z, y) unit, towards posterior
    depth: float
    half_width: float
    heights: tuple[float, float, float]  # Ha, Hm, Hp along the axis (mm)
    cos_tilt: float
    #: window on the scan's (y, x) grid: 1 over the footprint, fading to 0
    window: np.ndarray
    window_origin: tuple[float, float]
    window_spacing: tuple[float, float]

    def uv(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Body-frame (u, v) of points (mm)."""
        cz, cy, cx = self.centre
        t = (np.asarray(z) - cz) * self.e_ap[0] + (np.asarray(y) - cy) * self.e_ap[1]
        u = np.clip(0.5 + t / self.depth, 0.0, 1.0)
        v = np.clip((np.asarray(x) - cx) / self.half_width, -1.0, 1.0)
        return u, v

    def height(self, u: np.ndarray) -> np.ndarray:
        """The body's height along its axis at AP position *u* (mm)."""
        a = HEIGHT_INSET
        return np.interp(u, [a, 0.5, 1.0 - a], self.heights)

    def weight(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        iy = (np.asarray(y) - self.window_origin[0]) / self.window_spacing[0]
        ix = (np.asarray(x) - self.window_origin[1]) / self.window_spacing[1]
        return ndi.map_coordinates(self.window, [np.ravel(iy), np.ravel(ix)], order=1,
                                   mode="constant", cval=0.0).reshape(np.shape(iy))


def body_frame(scan_bodies: np.ndarray, spacing: tuple[float, float, float],
               origin: tuple[float, float, float], info: BodyInfo) -> BodyFrame:
    """Fit a body's endplates (first and last mask voxel of each column, at voxel edges) and
    set up its frame from its catalogue entry."""
    lab = LEVELS.index(info.level) + 1
    sl = ndi.find_objects(scan_bodies, max_label=lab)[lab - 1]
    m = scan_bodies[sl] == lab
    dz, dy, dx = spacing
    oz = origin[2] + sl[0].start * dz
    oy = origin[1] + sl[1].start * dy
    ox = origin[0] + sl[2].start * dx
    has = m.any(axis=0)
    first = np.argmax(m, axis=0)
    last = m.shape[0] - 1 - np.argmax(m[::-1], axis=0)
    a = np.asarray(info.axis, dtype=float)
    e_h = a[:2] / np.linalg.norm(a[:2])
    e_ap = np.array([-e_h[1], e_h[0]])
    if e_ap[1] < 0:
        e_ap = -e_ap
    # the body's middle columns, whose ends are endplates (not walls)
    gy, gx = np.meshgrid(oy + np.arange(m.shape[1]) * dy, ox + np.arange(m.shape[2]) * dx,
                         indexing="ij")
    zmid = oz + (first + last) / 2 * dz
    t_ap = (zmid - info.centre[0]) * e_ap[0] + (gy - info.centre[1]) * e_ap[1]
    core = (has & (last - first >= 1) & (np.abs(t_ap / max(info.depth, 5.0)) <= ENDPLATE_CORE_U)
            & (np.abs(gx - info.centre[2]) <= ENDPLATE_CORE_V * max(info.width / 2, 5.0)))
    if core.sum() < 6:
        core = has & (last - first >= 1)
    pad_y = int(np.ceil((WINDOW_IN_MM + WINDOW_FADE_MM) / dy)) + 1
    pad_x = int(np.ceil((WINDOW_IN_MM + WINDOW_FADE_MM) / dx)) + 1
    pads = ((pad_y, pad_y), (pad_x, pad_x))
    wy0, wx0 = oy - pad_y * dy, ox - pad_x * dx
    core_p = np.pad(core, pads)
    top = _surface(np.pad(oz + (last + 0.5) * dz, pads, mode="edge"), core_p, wy0, wx0, dy, dx)
    bottom = _surface(np.pad(oz + (first - 0.5) * dz, pads, mode="edge"), core_p, wy0, wx0, dy, dx)
    fp = np.pad(has, pads)
    dist = ndi.distance_transform_edt(~fp, sampling=(dy, dx))
    window = np.clip(1.0 - (dist - WINDOW_IN_MM) / WINDOW_FADE_MM, 0.0, 1.0).astype(np.float32)
    return BodyFrame(
        level=info.level, top=top, bottom=bottom, centre=info.centre,
        e_ap=(float(e_ap[0]), float(e_ap[1])), depth=max(info.depth, 5.0),
        half_width=max(info.width / 2, 5.0), heights=(info.ha, info.hm, info.hp),
        cos_tilt=float(abs(e_h[0])), window=window,
        window_origin=(wy0, wx0), window_spacing=(dy, dx),
    )


@dataclass
class FractureSpec:
    """One planted fracture: level, type, Genant grade and loss of its defining height."""

    level: str
    morph: str
    grade: int
    loss: float


@dataclass
class FractureMap:
    """The z displacement of one fracture, from the fractured scan back to the base.

    Each column ``(y, x)`` near the body moves by a piecewise-linear function of base ``z``
    given by knots: nothing below the first, ``-drop`` above the last. Outside the body's
    window every slice moves by the piecewise-linear ``global_disp`` (the posterior wall's
    drop, squeezed over the body). ``shift_of`` are the fractures below this one, which have
    moved its knots already.
    """

    spec: FractureSpec
    frame: BodyFrame
    above: BodyFrame | None
    above2: BodyFrame | None
    below: BodyFrame | None
    drop: float
    global_knots: np.ndarray
    global_disp: np.ndarray
    shift_of: list["FractureMap"] = field(default_factory=list)
    _cache: "_KnotGrid | None" = field(default=None, repr=False)

    def knots(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Base knots ``(K, N)`` and their z displacement for columns (y, x), interpolated
        from :meth:`_grid` (bilinear; the fields are smooth)."""
        g = self._grid()
        gather, _ = _bilinear(g, y, x)
        both = gather(g.kbd)
        k = both.shape[0] // 2
        return both[:k], both[k:]

    def weight(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The window (1 at the body, 0 beyond its fade) at columns (y, x)."""
        g = self._grid()
        y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
        ny, nx = g.w.shape
        inside = ((y >= g.y0) & (y <= g.y0 + (ny - 1) * g.step)
                  & (x >= g.x0) & (x <= g.x0 + (nx - 1) * g.step))
        out = np.zeros(y.shape)
        if inside.any():
            gather, _ = _bilinear(g, y[inside], x[inside])
            out[inside] = gather(g.w[None])[0]
        return out

    def _grid(self) -> "_KnotGrid":
        if self._cache is None:
            f = self.frame
            ny, nx = f.window.shape
            y0, x0 = f.window_origin
            sy, sx = f.window_spacing
            step = KNOT_GRID_MM
            ys = y0 + np.arange(0.0, (ny - 1) * sy + 1e-6, step)
            xs = x0 + np.arange(0.0, (nx - 1) * sx + 1e-6, step)
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            kb, kd = self._knots_exact(yy.ravel(), xx.ravel())
            w = f.weight(yy.ravel(), xx.ravel())
            self._cache = _KnotGrid(float(ys[0]), float(xs[0]), step,
                                    np.concatenate([kb, kd]), w.reshape(len(ys), len(xs)))
        return self._cache

    def _endplate_step(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, sign: float,
                       part: str) -> np.ndarray:
        """How far (mm, along z) an endplate point at (z, y, x) moves: what the line along the
        body's axis through its new position loses (its share), over cos(tilt)."""
        f, s = self.frame, self.spec
        sup = SUPERIOR_SHARE[s.morph]
        step = np.zeros_like(z)
        for _ in range(ENDPLATE_ITERATIONS):
            u, v = f.uv(z + sign * step, y, x)
            planar, dent = column_loss(s.morph, s.loss, u, v)
            lam = planar + sup * dent if part == "superior" else (1.0 - sup) * dent
            step = f.height(u) * lam / f.cos_tilt
        return step

    def _knots_exact(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, s = self.frame, self.spec
        top, bot = f.top(y, x), f.bottom(y, x)
        h = np.maximum(top - bot, 0.0)
        d_s = self._endplate_step(top, y, x, -1.0, "superior")
        d_i = self._endplate_step(bot, y, x, +1.0, "inferior")
        # the interior keeps at least a millimetre between its rigid cortices
        room = np.maximum(h - 2 * CORTEX_MM - 1.0, 0.0)
        scale = np.minimum(1.0, room / np.maximum(d_s + d_i, 1e-6))
        d_s, d_i = d_s * scale, d_i * scale
        carry = ABOVE_CARRY[s.morph]
        d_above = self.drop + carry * np.maximum(d_s - self.drop, 0.0)
        # neighbours' endplates pushed out into the discs, so that a neighbour's own voxels
        # move as one (a fit to 2.5-3 mm slices is good to about a slice)
        tb = self.below.top(y, x) if self.below else bot - DEFAULT_DISC_MM
        top_below, _ = _disc_knots(tb, bot)
        ba = self.above.bottom(y, x) if self.above else top + DEFAULT_DISC_MM
        _, bot_above = _disc_knots(top, ba)
        ta = self.above.top(y, x) if self.above else bot_above + 20.0
        ta = np.maximum(ta, bot_above + 1.0)
        ba2 = self.above2.bottom(y, x) if self.above2 else ta + DEFAULT_DISC_MM
        top_above, bot_above2 = _disc_knots(ta, ba2)
        kb = np.stack([top_below, bot, bot + CORTEX_MM, top - CORTEX_MM, top,
                       bot_above, top_above, bot_above2])
        kd = np.stack([np.zeros_like(d_s), d_i, d_i, -d_s, -d_s, -d_above, -d_above,
                       np.full_like(d_s, -self.drop)])
        return self._shifted(kb, y, x), kd

    def _shifted(self, kb: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Knots moved by the fractures below this one (forward maps, lowest first)."""
        for m in self.shift_of:
            kb = kb + m.forward(kb, np.broadcast_to(y, kb.shape), np.broadcast_to(x, kb.shape))
        return kb

    def _global(self) -> np.ndarray:
        gk = self.global_knots.copy()
        for m in self.shift_of:
            gk = gk + np.interp(gk, m._global(), m.global_disp)
        return gk

    def forward(self, zb: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Forward z displacement at base points (arrays of one shape)."""
        zb, y, x = np.broadcast_arrays(np.asarray(zb, float), np.asarray(y, float),
                                       np.asarray(x, float))
        shape = zb.shape
        zb, y, x = zb.ravel(), y.ravel(), x.ravel()
        gz = np.interp(zb, self._global(), self.global_disp)
        w = self.weight(y, x)
        out = gz.copy()
        near = w > 0
        if near.any():
            kb, kd = self.knots(y[near], x[near])
            lz = _interp_columns(zb[near][None, :], kb, kd)[0]
            out[near] = w[near] * lz + (1.0 - w[near]) * gz[near]
        return out.reshape(shape)

    def inverse(self, zf: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Base z of fractured points ``(zf, y, x)``, all ``(N,)``."""
        gz = _inverse_1d(zf, self._global(), self.global_disp)
        w = self.weight(y, x)
        out = gz.copy()
        near = w > 0
        if near.any():
            kb, kd = self.knots(y[near], x[near])
            kf = np.maximum.accumulate(kb + kd, axis=0)
            lz = _interp_columns(zf[near][None, :], kf, kb, values_are_positions=True)[0]
            out[near] = w[near] * lz + (1.0 - w[near]) * gz[near]
        return out

    def inverse_scalar(self, zf: float) -> float:
        """Base z of a fractured z far from the body (the whole-slice map)."""
        return float(_inverse_1d(np.array([zf]), self._global(), self.global_disp)[0])

    def z_band(self) -> tuple[float, float]:
        """Fractured-space z (mm) outside which this map is a whole-slice shift."""
        g = self._grid()
        k = g.kbd.shape[0] // 2
        kf = g.kbd[:k] + g.kbd[k:]
        return float(kf.min()) - 5.0, float(kf.max()) + 5.0


@dataclass
class _KnotGrid:
    """A map's knots, displacements and window tabulated on a regular (y', x) grid."""

    y0: float
    x0: float
    step: float
    kbd: np.ndarray  # (2K, ny * nx): the knots, then their displacements
    w: np.ndarray  # (ny, nx)


def _bilinear(g: _KnotGrid, yp: np.ndarray, x: np.ndarray):  # type: ignore[no-untyped-def]
    """A gatherer ``A (K, ny, nx) -> (K, N)`` interpolating at the points, and which points
    lie on the grid."""
    ny, nx = g.w.shape
    fy = (np.asarray(yp, dtype=float) - g.y0) / g.step
    fx = (np.asarray(x, dtype=float) - g.x0) / g.step
    inside = (fy >= 0) & (fy <= ny - 1) & (fx >= 0) & (fx <= nx - 1)
    i0 = np.clip(np.floor(fy).astype(np.int64), 0, ny - 2)
    j0 = np.clip(np.floor(fx).astype(np.int64), 0, nx - 2)
    ty = np.clip(fy - i0, 0.0, 1.0)
    tx = np.clip(fx - j0, 0.0, 1.0)
    w00, w10 = (1 - ty) * (1 - tx), ty * (1 - tx)
    w01, w11 = (1 - ty) * tx, ty * tx
    f00 = i0 * nx + j0

    def gather(a: np.ndarray) -> np.ndarray:
        a = a.reshape(a.shape[0], -1)
        return (np.take(a, f00, axis=1) * w00 + np.take(a, f00 + nx, axis=1) * w10
                + np.take(a, f00 + 1, axis=1) * w01 + np.take(a, f00 + nx + 1, axis=1) * w11)

    return gather, inside


def _disc_knots(top_lower: np.ndarray, bot_upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots inside the disc between two bodies: each endplate pushed
    :data:`NEIGHBOUR_MARGIN_MM` into the disc, or both to its middle where it is thinner."""
    mid = (top_lower + bot_upper) / 2
    lo = np.minimum(top_lower + NEIGHBOUR_MARGIN_MM, mid - 0.25)
    hi = np.maximum(bot_upper - NEIGHBOUR_MARGIN_MM, mid + 0.25)
    return lo, np.maximum(hi, lo + 0.5)


def _inverse_1d(zf: np.ndarray, kb: np.ndarray, kd: np.ndarray) -> np.ndarray:
    """Source z of destination z for a forward map given by base knots *kb* and their
    displacements *kd* (constant displacement beyond the end knots)."""
    kf = kb + kd
    zf = np.asarray(zf, dtype=float)
    out = np.interp(zf, kf, kb)
    out = np.where(zf < kf[0], zf - kd[0], out)
    return np.where(zf > kf[-1], zf - kd[-1], out)


def _interp_columns(zq: np.ndarray, kb: np.ndarray, kv: np.ndarray,
                    values_are_positions: bool = False) -> np.ndarray:
    """Piecewise-linear interpolation per column: knots ``kb (K, N)`` (ascending along K),
    values ``kv (K, N)``, queries ``zq (M, N)``. Beyond the end knots the value is constant,
    or (*values_are_positions*) moves one for one with the query."""
    zq = np.atleast_2d(zq)
    k = kb.shape[0]
    idx = np.zeros(zq.shape, dtype=np.int64)
    for j in range(k):
        idx += zq >= kb[j][None, :]
    lo = np.clip(idx - 1, 0, k - 1)
    hi = np.clip(idx, 0, k - 1)
    cols = np.broadcast_to(np.arange(kb.shape[1])[None, :], zq.shape)
    z0, z1 = kb[lo, cols], kb[hi, cols]
    v0, v1 = kv[lo, cols], kv[hi, cols]
    span = np.where(z1 > z0, z1 - z0, 1.0)
    t = np.clip(np.where(z1 > z0, (zq - z0) / span, 0.0), 0.0, 1.0)
    out = v0 + t * (v1 - v0)
    if values_are_positions:
        out = np.where(zq < kb[0][None, :], zq - kb[0][None, :] + kv[0][None, :], out)
        out = np.where(zq > kb[-1][None, :], zq - kb[-1][None, :] + kv[-1][None, :], out)
    return out


def build_fracture_maps(
    frame_of: Callable[[str], BodyFrame], catalogue: Catalogue, fractures: list[FractureSpec],
) -> list[FractureMap]:
    """The displacement maps of *fractures* planted in one base scan, lowest level first.

    Fractures at levels the scan does not hold whole (absent, or cut by its first or last
    slice) are left out: the caller's truth marks those levels out of view or cut.

    Parameters
    ----------
    frame_of
        A level's :class:`BodyFrame` in the base (:func:`body_frame`; the caller caches).
    catalogue
        The base's per-level geometry.
    fractures
        What to plant.
    """
    whole = set(catalogue.levels_complete())
    order = [lv for lv in LEVELS if lv in catalogue.bodies]
    maps: list[FractureMap] = []
    # lowest first: each later (higher) fracture's knots move with those below it
    for f in sorted((f for f in fractures if f.level in whole), key=lambda f: -LEVELS.index(f.level)):
        i = order.index(f.level)

        def frame(j: int) -> BodyFrame | None:
            if 0 <= j < len(order) and not catalogue.bodies[order[j]].cut:
                return frame_of(order[j])
            return None

        fr = frame(i)
        assert fr is not None
        # the spine above comes down by what the posterior wall loses
        planar, _ = column_loss(f.morph, f.loss, np.array([1.0 - HEIGHT_INSET]), np.array([0.0]))
        drop = float(fr.heights[2] * planar[0] / fr.cos_tilt)
        yc, xc = np.array([fr.centre[1]]), np.array([fr.centre[2]])
        zc_bot, zc_top = float(fr.bottom(yc, xc)[0]), float(fr.top(yc, xc)[0])
        maps.append(FractureMap(
            spec=f, frame=fr, above=frame(i - 1), above2=frame(i - 2), below=frame(i + 1),
            drop=drop, global_knots=np.array([zc_bot - GLOBAL_BELOW_MM, zc_top + GLOBAL_ABOVE_MM]),
            global_disp=np.array([0.0, -drop]), shift_of=list(maps),
        ))
    return maps


def fractured_to_base(maps: list[FractureMap], zf: np.ndarray, y: np.ndarray,
                      x: np.ndarray) -> np.ndarray:
    """Base z of points of the fractured scan (arrays ``(N,)``, mm)."""
    z = np.asarray(zf, dtype=float)
    for m in reversed(maps):
        z = m.inverse(z, y, x)
    return z


def fractured_to_base_scalar(maps: list[FractureMap], zf: float) -> float:
    """Base z of a whole slice of the fractured scan, away from every fractured body."""
    z = zf
    for m in reversed(maps):
        z = m.inverse_scalar(z)
    return z


def base_to_fractured(maps: list[FractureMap], zb: np.ndarray, y: np.ndarray,
                      x: np.ndarray) -> np.ndarray:
    """Fractured z of base points (the forward map)."""
    z = np.asarray(zb, dtype=float)
    for m in maps:
        z = z + m.forward(z, y, x)
    return z
