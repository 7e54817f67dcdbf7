"""Find the spine in a CT volume, reformat it, find the vertebral bodies and name their levels.

All coordinates here are *grid mm*: millimetres from the centre of voxel ``[0, 0, 0]`` along the
canonical axes of :class:`~fracture_qi.dicom.geometry.CTVolume` (``z`` inferior->superior,
``y`` anterior->posterior, ``x`` patient right->left), i.e. ``index * spacing``. Add
``CTVolume.origin`` to get LPS.

The pipeline (each stage batched over the whole volume on the chosen torch device):

1. :func:`locate_canal` works on a coarse (~3 mm) grid: the spinal canal is the soft-tissue spot
   with bone close in front (vertebral body), behind (laminae) and to the sides (pedicles); the
   per-slice evidence is pooled along ``z`` and turned into a smooth centreline that follows
   kyphosis, lordosis and scoliosis.
2. :func:`straighten` samples a ~1 mm image along that centreline: rows follow the arc length
   ``s`` of the canal in the sagittal plane, columns the distance ``u`` anterior of the canal
   along the local normal; each pixel averages a thin slab across ``x`` (the curved
   mid-sagittal plane follows the canal in ``x`` too).
3. :func:`find_bodies` finds the discs (dark gaps flanked by bright endplates, where the posterior
   wall of the body is interrupted) and so the vertebral bodies between them.
4. :func:`label_levels` names the bodies by counting up from the lumbosacral disc (the first body
   whose axial section is continuous with the sacral alae) and/or down from the last
   rib-bearing vertebra (rib heads beside the back of the body, :func:`rib_head_excess`, or rib
   shafts reaching far sideways, :func:`rib_reach`), and leaves the level empty when the
   anchors disagree or are missing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.screening.types import LEVELS

log = logging.getLogger(__name__)

#: HU above which a max-pooled coarse voxel is called bone (cortex survives max pooling)
BONE_HU = 250.0
#: bounds of canal content (CSF, cord, epidural fat) on the coarse grid
SOFT_HU = (-150.0, 110.0)
#: target coarse voxel size in mm
COARSE_MM = 3.0
# how far (mm) the canal centre found on the coarse grid may move between neighbouring slices
# beyond the bend itself (grid step, pooling): see _canal_continues
CANAL_PLAY_MM = 6.0


# --------------------------------------------------------------------------------------------
# coarse grid
# --------------------------------------------------------------------------------------------


@dataclass
class CoarseGrid:
    """A block-reduced copy of a volume for localisation.

    Attributes
    ----------
    bone_max
        Max HU of each block (int16 array on the host, (Zc, Yc, Xc)); keeps thin cortex
        visible.
    centre
        HU of the centre voxel of each block (int16 array on the host); for soft-tissue tests.
    spacing
        Block size in mm (z, y, x).
    offset
        Grid mm of the centre of block ``[0, 0, 0]`` (z, y, x).
    """

    bone_max: np.ndarray
    centre: np.ndarray
    spacing: tuple[float, float, float]
    offset: tuple[float, float, float]

    def to_mm(self, k: np.ndarray | float, axis: int) -> np.ndarray | float:
        """Grid mm of coarse index ``k`` along ``axis``."""
        return self.offset[axis] + np.asarray(k) * self.spacing[axis]


def _block_max_int16(a: np.ndarray, steps: list[int], threads: int = 1) -> np.ndarray:
    """Block maximum of an int16 volume whose shape is a multiple of ``steps`` (CPU path).

    One z-block (a few slices, ~1.5 MB) at a time, so that the three reductions run on data
    still in cache; each is a chain of SIMD ``np.maximum`` calls writing into a preallocated
    buffer. About twice as fast as reducing the whole volume axis by axis (measured on a
    512x512x400 series: 37 ms against 63 ms on one core), and it never allocates a copy of
    the volume. With ``threads`` > 1 the z-blocks are shared among threads (numpy releases
    the GIL inside each reduction).
    """
    kz, ky, kx = steps
    nz, ny, nx = a.shape[0] // kz, a.shape[1] // ky, a.shape[2] // kx
    out = np.empty((nz, ny, nx), dtype=a.dtype)

    def run(i0: int, i1: int) -> None:
        zbuf = np.empty((ny * ky, nx * kx), dtype=a.dtype)
        ybuf = np.empty((ny, nx * kx), dtype=a.dtype)
        for i in range(i0, i1):  # loop over z-blocks (~130), not voxels
            blk = a[i * kz : (i + 1) * kz]
            zmax = blk[0]
            if kz > 1:
                zmax = zbuf
                np.maximum(blk[0], blk[1], out=zbuf)
                for k in range(2, kz):
                    np.maximum(zbuf, blk[k], out=zbuf)
            rows = zmax.reshape(ny, ky, nx * kx)
            ybuf[...] = rows[:, 0]
            for k in range(1, ky):
                np.maximum(ybuf, rows[:, k], out=ybuf)
            cols = ybuf.reshape(ny, nx, kx)
            o = out[i]
            o[...] = cols[..., 0]
            for k in range(1, kx):
                np.maximum(o, cols[..., k], out=o)

    threads = max(1, min(int(threads), nz // 8 or 1))
    if threads == 1:
        run(0, nz)
    else:
        from concurrent.futures import ThreadPoolExecutor

        cuts = np.linspace(0, nz, threads + 1).astype(int)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, cuts[:-1], cuts[1:]))
    return out


def coarse_grid(volume: CTVolume, device: torch.device, target_mm: float = COARSE_MM) -> CoarseGrid:
    """Block-reduce ``volume`` to about ``target_mm`` voxels without a float copy of it all.

    The block maximum is the one pass over every voxel: on the int16 data, on the device (a
    torch reduction on a GPU, a cache-blocked numpy reduction on the CPU). The result (~2 M
    voxels for a 512 x 512 x 400 series) comes back to the host, where the canal search runs:
    at that size numpy's element-wise steps cost less than the kernel launches (GPU) or torch's
    CPU kernels (about 10x slower than numpy's for comparisons, measured).
    """
    hu = volume.hu
    steps = [max(1, int(round(target_mm / s))) for s in volume.spacing]
    steps = [min(steps[i], hu.shape[i]) for i in range(3)]
    n = [hu.shape[i] // steps[i] for i in range(3)]
    sub = hu[: n[0] * steps[0], : n[1] * steps[1], : n[2] * steps[2]]
    if device.type == "cpu":
        # as many threads as torch may use (the engine lowers that while decode workers run)
        bone_max = _block_max_int16(sub, steps, threads=torch.get_num_threads())
    else:
        t = torch.from_numpy(np.ascontiguousarray(sub)).to(device)
        bone_max = t.view(n[0], steps[0], n[1], steps[1], n[2], steps[2]).amax(dim=(1, 3, 5)).cpu().numpy()
    c = sub[steps[0] // 2 :: steps[0], steps[1] // 2 :: steps[1], steps[2] // 2 :: steps[2]]
    centre = np.ascontiguousarray(c)
    spacing = tuple(float(volume.spacing[i] * steps[i]) for i in range(3))
    offset = tuple(float(volume.spacing[i] * (steps[i] - 1) / 2.0) for i in range(3))
    return CoarseGrid(bone_max, centre, spacing, offset)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# canal centreline
# --------------------------------------------------------------------------------------------


@dataclass
class CanalPath:
    """The spinal canal centre as a smooth function of ``z`` (grid mm).

    Attributes
    ----------
    z_mm, y_mm, x_mm
        Samples of the centreline at a regular ``z`` step, covering the span where the canal
        was found.
    score
        Canal evidence at each sample (0..1, pooled along ``z``).
    """

    z_mm: np.ndarray
    y_mm: np.ndarray
    x_mm: np.ndarray
    score: np.ndarray

    def y_at(self, z: np.ndarray | float) -> np.ndarray:
        return np.interp(z, self.z_mm, self.y_mm)

    def x_at(self, z: np.ndarray | float) -> np.ndarray:
        return np.interp(z, self.z_mm, self.x_mm)

    @property
    def length_mm(self) -> float:
        return float(self.z_mm[-1] - self.z_mm[0]) if len(self.z_mm) else 0.0


def _shifted(a: np.ndarray, axis: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Views ``(dst, src)`` such that ``dst[i] = a[i + k]`` along ``axis`` where both exist."""
    n = a.shape[axis]
    dst = [slice(None)] * a.ndim
    src = [slice(None)] * a.ndim
    dst[axis], src[axis] = (slice(0, n - k), slice(k, n)) if k >= 0 else (slice(-k, n), slice(0, n + k))
    return a[tuple(dst)], a[tuple(src)]


def _window_sum(a: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    """Sum of ``a`` over offsets ``lo..hi`` (``lo <= hi``) along ``axis``, zero beyond the edges.

    One in-place add of a shifted view per offset: the windows here are short (3-9 coarse
    voxels), and shifted adds are several times faster than a cumulative sum along an outer
    axis (and need no padded copy).
    """
    n = a.shape[axis]
    out = a.copy() if lo <= 0 <= hi else np.zeros_like(a)
    for k in range(lo, hi + 1):  # loop over window offsets, not voxels
        if k == 0 or abs(k) >= n:
            continue
        dst, _ = _shifted(out, axis, k)
        dst += _shifted(a, axis, k)[1]
    return out


def _shift_max(mask: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    """For a boolean ``mask``: True where any voxel at offsets ``lo..hi`` (signed) along
    ``axis`` is True."""
    a, b = (lo, hi) if lo <= hi else (hi, lo)
    out = np.zeros_like(mask)
    n = mask.shape[axis]
    for k in range(a, b + 1):
        if abs(k) >= n:
            continue
        dst, _ = _shifted(out, axis, k)
        dst |= _shifted(mask, axis, k)[1]
    return out


def _box_mean(a: np.ndarray, axis: int, radius: int) -> np.ndarray:
    """Mean over a centred window of ``2*radius+1`` along ``axis`` (only samples inside count)."""
    if radius <= 0:
        return a
    n = a.shape[axis]
    idx = np.arange(n)
    count = (np.minimum(idx + radius, n - 1) - np.maximum(idx - radius, 0) + 1).astype(a.dtype)
    view = [1] * a.ndim
    view[axis] = -1
    out = _window_sum(a, axis, -radius, radius)
    out /= count.reshape(view)
    return out


def canal_evidence(grid: CoarseGrid) -> np.ndarray:
    """Per coarse voxel, 0..1 evidence (float32) that it is the centre of the spinal canal.

    A canal voxel is soft tissue (no bone in its block) with bone within 4-20 mm anteriorly
    (vertebral body), posteriorly (laminae, spinous process) and to either side (pedicles);
    three of the four suffice, because discs interrupt the front and interlaminar gaps the back.
    """
    dz, dy, dx = grid.spacing
    bone = grid.bone_max > BONE_HU
    soft = (grid.centre > SOFT_HU[0]) & (grid.centre < SOFT_HU[1]) & ~bone
    ky0, ky1 = max(1, int(round(4.0 / dy))), max(1, int(math.ceil(20.0 / dy)))
    kx0, kx1 = max(1, int(round(4.0 / dx))), max(1, int(math.ceil(18.0 / dx)))
    # count the sides bounded by bone: anterior (smaller y), posterior, right, left
    sides = _shift_max(bone, 1, -ky0, -ky1).astype(np.uint8)
    sides += _shift_max(bone, 1, ky0, ky1)
    sides += _shift_max(bone, 2, -kx0, -kx1)
    sides += _shift_max(bone, 2, kx0, kx1)
    # three or four sides bounded by bone; four is better
    np.clip(sides, 2, 4, out=sides)
    sides -= 2
    ev = sides.astype(np.float32)
    ev *= np.float32(0.5)
    ev *= soft
    return ev


def locate_canal(volume: CTVolume, device: torch.device, grid: CoarseGrid | None = None) -> CanalPath | None:
    """Find the spinal canal centreline.

    Parameters
    ----------
    volume
        The CT volume.
    device
        Torch device for the block maximum (see :func:`coarse_grid`).
    grid
        A coarse grid already made by :func:`coarse_grid` (made here when ``None``).

    Returns
    -------
    CanalPath or None
        ``None`` when no canal runs for at least ~25 mm (no spine in view).
    """
    grid = grid if grid is not None else coarse_grid(volume, device)
    dz, dy, dx = grid.spacing
    zc, yc, xc = grid.bone_max.shape
    ev = canal_evidence(grid)
    # prefer the body's midline: the patient's outline (HU > -400) gives a centroid per slice
    body_x = (grid.centre > -400).sum(axis=1, dtype=np.float32)  # (Zc, Xc)
    xs = np.arange(xc, dtype=np.float32)
    mass = np.maximum(body_x.sum(axis=1), np.float32(1.0))
    cx = (body_x * xs).sum(axis=1) / mass  # (Zc,)
    dist_x = (xs[None, :] - cx[:, None]) * np.float32(dx)  # mm
    prior = np.exp(np.float32(-0.5) * (dist_x / np.float32(45.0)) ** 2)  # scoliosis rarely moves the canal > 45 mm
    ev *= prior[:, None, :]
    # pool along z over ~21 mm: canal evidence persists, chance soft pockets do not
    pooled = _box_mean(ev, 0, max(1, int(round(10.5 / dz))))
    # smooth in-plane a little so the argmax sits at the canal centre, not its edge
    pooled = _box_mean(_box_mean(pooled, 1, 1), 2, 1)
    flat = pooled.reshape(zc, -1)
    idx = flat.argmax(axis=1)
    score_np = flat[np.arange(zc), idx].astype(np.float64)
    iy = idx // xc
    ix = idx % xc
    if score_np.max(initial=0.0) <= 0.05:
        return None
    z_mm = np.asarray(grid.to_mm(np.arange(zc), 0), dtype=np.float64)
    y_mm = np.asarray(grid.to_mm(iy, 1), dtype=np.float64)
    x_mm = np.asarray(grid.to_mm(ix, 2), dtype=np.float64)
    ref = np.percentile(score_np[score_np > 0], 90) if np.any(score_np > 0) else 0.0
    valid = score_np > 0.3 * ref
    if valid.sum() < 3:
        return None
    # robust: drop positions far from a running median of the valid ones
    vz, vy, vx = z_mm[valid], y_mm[valid], x_mm[valid]
    half = max(2, int(round(15.0 / dz)))
    keep = (np.abs(vy - _running_median(vy, half)) <= 12.0) & (np.abs(vx - _running_median(vx, half)) <= 12.0)
    vz, vy, vx = vz[keep], vy[keep], vx[keep]
    if len(vz) < 3:
        return None
    # the longest continuous run: gaps below 30 mm, and no jump sideways that no canal makes.
    # Below the spine (pelvis: sacral foramina, sacroiliac joints) and beside it, soft pockets
    # ringed by bone can hold a consistent run of maxima tens of millimetres off the midline,
    # which the running median keeps; the smoothing below would pull the centreline towards them
    gz, gy, gx = np.diff(vz), np.abs(np.diff(vy)), np.abs(np.diff(vx))
    cut = (gz > 30.0) | ~_canal_continues(gz, gy, gx)
    runs = np.split(np.arange(len(vz)), np.nonzero(cut)[0] + 1)
    run = max(runs, key=lambda r: vz[r[-1]] - vz[r[0]])
    vz, vy, vx = vz[run], vy[run], vx[run]
    if vz[-1] - vz[0] < 25.0:
        return None
    # follow the canal on past the run's ends where it is fainter (sacrum, a cut edge), slice
    # by slice in a window around its last position: the canal goes on from where it was
    vz, vy, vx = _track_ends(pooled, grid, vz, vy, vx, 0.3 * ref)
    # smooth with a Gaussian-weighted local line fit (bandwidth ~15 mm): follows curvature
    zq = np.arange(vz[0], vz[-1] + 1e-6, 1.0)
    ys = _local_linear(vz, vy, zq, 15.0)
    xs_ = _local_linear(vz, vx, zq, 20.0)
    sc = np.interp(zq, z_mm, score_np / max(ref, 1e-6))
    return CanalPath(z_mm=zq, y_mm=ys, x_mm=xs_, score=np.clip(sc, 0, None))


def _canal_continues(dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Whether a canal centre can move ``dy`` (anterior-posterior) and ``dx`` (sideways) mm over
    ``dz`` mm: a few millimetres of play for the coarse grid and the pooling, plus the steepest
    bends there are (the sacrum curves back about 1 mm per mm, a scoliosis about 0.5)."""
    return (dy <= CANAL_PLAY_MM + 1.0 * dz) & (dx <= CANAL_PLAY_MM + 0.5 * dz)


def _track_ends(
    pooled: np.ndarray, grid: CoarseGrid, vz: np.ndarray, vy: np.ndarray, vx: np.ndarray, thr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extend the centreline ``(vz, vy, vx)`` (grid mm, ``z`` increasing) past both ends.

    Slice by slice outwards, the strongest evidence within reach of the last position (see
    :func:`_canal_continues`) is taken when it exceeds ``thr``; the track stops after 15 mm
    without any.
    """
    dz, dy, dx = grid.spacing
    oz, oy, ox = grid.offset
    zc = pooled.shape[0]
    # the reach of _canal_continues over one slice, in coarse voxels
    ry = int((CANAL_PLAY_MM + 1.0 * dz) / dy)
    rx = int((CANAL_PLAY_MM + 0.5 * dz) / dx)
    ends = []
    for direction in (-1, 1):
        z0, y0, x0 = (vz[0], vy[0], vx[0]) if direction < 0 else (vz[-1], vy[-1], vx[-1])
        k = int(round((z0 - oz) / dz)) + direction
        iy, ix = int(round((y0 - oy) / dy)), int(round((x0 - ox) / dx))
        last_k, found = k - direction, []
        while 0 <= k < zc and abs(k - last_k) * dz <= 15.0:
            y_lo, x_lo = max(iy - ry, 0), max(ix - rx, 0)
            win = pooled[k, y_lo : iy + ry + 1, x_lo : ix + rx + 1]
            if win.size and float(win.max()) > thr:
                j = int(win.argmax())
                iy, ix = y_lo + j // win.shape[1], x_lo + j % win.shape[1]
                found.append((oz + k * dz, oy + iy * dy, ox + ix * dx))
                last_k = k
            k += direction
        ends.append(found)
    lo, hi = ends[0][::-1], ends[1]
    z = np.concatenate([[p[0] for p in lo], vz, [p[0] for p in hi]])
    y = np.concatenate([[p[1] for p in lo], vy, [p[1] for p in hi]])
    x = np.concatenate([[p[2] for p in lo], vx, [p[2] for p in hi]])
    return z, y, x


def _running_median(v: np.ndarray, half: int) -> np.ndarray:
    """Median of ``v[i-half .. i+half]`` (clipped to the array) for each ``i``."""
    n = len(v)
    out = np.empty(n, dtype=np.float64)
    w = 2 * half + 1
    if n >= w:
        out[half : n - half] = np.median(np.lib.stride_tricks.sliding_window_view(v, w), axis=1)
    for i in [*range(min(half, n)), *range(max(half, n - half), n)]:  # the clipped ends
        out[i] = np.median(v[max(0, i - half) : i + half + 1])
    return out


def _local_linear(x: np.ndarray, y: np.ndarray, xq: np.ndarray, bw: float) -> np.ndarray:
    """Gaussian-weighted local linear regression of ``y(x)`` evaluated at ``xq``."""
    w = np.exp(-0.5 * ((xq[:, None] - x[None, :]) / bw) ** 2)
    sw = w.sum(1)
    mx = (w * x).sum(1) / sw
    my = (w * y).sum(1) / sw
    vx = (w * (x - mx[:, None]) ** 2).sum(1) / sw
    cxy = (w * (x - mx[:, None]) * (y - my[:, None])).sum(1) / sw
    slope = np.where(vx > 1e-6, cxy / np.maximum(vx, 1e-6), 0.0)
    return my + slope * (xq - mx)


# --------------------------------------------------------------------------------------------
# sampling: straightened image and sagittal reformat
# --------------------------------------------------------------------------------------------


class SpineSampler:
    """Trilinear HU sampling of a volume around its spine, on the chosen device.

    A thin mid-sagittal slab is the mean of ``slab_taps`` samples spread over ``slab_mm``
    across ``x``; points outside the *volume* read as air (-1000 HU).

    Nothing is converted to float but what is sampled. Slab samples (the straightened image,
    the body patches, the reformat) mostly lie in the band of ``x`` that the canal sweeps: that
    band (every row; ``y`` from 115 mm anterior to 50 mm posterior of the canal) is made
    float32 once and averaged across ``x`` at the voxels, with the weights the ``slab_taps``
    linear taps give each voxel; a slab sample is then one trilinear tap into it. At whole
    voxels this equals the mean of the taps exactly; between voxels it interpolates those
    means (on a 0.8 mm phantom: median 0.4 HU, 99th percentile 4 HU from the taps;
    ``tests/test_spine.py``): a fifth of the sampling of five taps. On grids coarser than a
    quarter of the slab (a 3 mm volume) the band would widen the slab, so the taps are
    sampled there as they are, and so are slab samples beyond the band (a body measured in a
    plane beside its canal). Single-tap samples (rib heads, trabecular cores, lines across a
    body) and taps are read from a float copy of just the box their points span, made per call.
    """

    def __init__(
        self, volume: CTVolume, path: CanalPath, device: torch.device, slab_mm: float = 4.0, slab_taps: int = 5
    ) -> None:
        self.hu = volume.hu
        self.spacing = np.asarray(volume.spacing, dtype=np.float64)
        self.vol_shape = np.asarray(volume.hu.shape)
        self.device = device
        # no wider than the data: a 4 mm slab of 3 mm voxels is 2 voxels of interpolation
        self.offsets = np.linspace(-slab_mm / 2.0, slab_mm / 2.0, slab_taps) if slab_taps > 1 else np.zeros(1)
        # the band needs a few voxels across the slab to stand for the taps: on coarser x
        # grids (a 3 mm volume) its interpolation widens the slab, and the taps are kept
        self.slab_raw: torch.Tensor | None = None
        self.slab_x_mm = (0.0, -1.0)  # the x (grid mm) the band serves: none without a band
        if slab_taps > 1 and self.spacing[2] <= slab_mm / 4.0:
            self.slab_raw, self.slab_lo = self._slab_band(path)
            n_x = int(self.slab_raw.shape[-1])
            self.slab_x_mm = (float(self.slab_lo[2] * self.spacing[2]), float((self.slab_lo[2] + n_x - 1) * self.spacing[2]))

    def _region(self, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
        """``hu[lo:hi]`` (voxel indices, z/y/x) as float32 on the device."""
        crop = self.hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        if self.device.type == "cpu":  # numpy's int16 -> float32 conversion is the faster here
            return torch.from_numpy(crop.astype(np.float32))
        # send int16 (half the bytes), convert on the device
        return torch.from_numpy(np.ascontiguousarray(crop)).to(self.device).float()

    def _voxel_box(self, lo_mm: np.ndarray, hi_mm: np.ndarray, margin: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Voxel indices ``[lo, hi)`` of the box holding grid mm ``lo_mm..hi_mm`` and its
        interpolation neighbours, ``margin`` voxels to spare, clipped to the volume."""
        sp, shape = self.spacing, self.vol_shape
        lo = np.clip(np.floor(np.asarray(lo_mm) / sp).astype(int) - margin, 0, shape - 1)
        hi = np.clip(np.ceil(np.asarray(hi_mm) / sp).astype(int) + 1 + margin, lo + 1, shape)
        return lo, hi

    def _slab_band(self, path: CanalPath) -> tuple[torch.Tensor, np.ndarray]:
        """The band of ``x`` around the canal path, averaged across the slab, and its origin
        (voxel indices)."""
        sp, shape = self.spacing, self.vol_shape
        taps = self.offsets / sp[2]  # in voxels
        r = int(np.ceil(np.abs(taps).max())) + 1
        m = np.arange(-r, r + 1)
        # weight of voxel i+m in the mean of the linear taps at i + taps
        w = np.maximum(0.0, 1.0 - np.abs(m[:, None] - taps[None, :])).mean(axis=1)
        lo_mm = np.array([0.0, path.y_mm.min() - 115.0, path.x_mm.min()])
        hi_mm = np.array([(shape[0] - 1) * sp[0], path.y_mm.max() + 50.0, path.x_mm.max()])
        # a voxel to spare each side of the path for the interpolation
        lo, hi = self._voxel_box(lo_mm, hi_mm, np.array([0, 0, 1]))
        a0, a1 = max(0, lo[2] - r), min(int(shape[2]), hi[2] + r)
        band = self._region(np.array([lo[0], lo[1], a0]), np.array([hi[0], hi[1], a1]))
        pad = (r - (lo[2] - a0), r - (a1 - hi[2]))
        if pad[0] or pad[1]:  # the volume's edge: repeat the edge voxel, as the taps would
            band = F.pad(band[None], pad, mode="replicate")[0]
        n = hi[2] - lo[2]
        out = band[:, :, 0:n] * float(w[0])
        for k in range(1, len(m)):  # loop over kernel taps (~7), not voxels
            if w[k] > 0:
                out.add_(band[:, :, k : k + n], alpha=float(w[k]))
        return out[None, None], lo

    def sample(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, slab: bool = True) -> np.ndarray:
        """HU at grid-mm points (any common shape); ``slab`` averages across ``x``."""
        return self.sample_many([(z, y, x, slab)])[0]

    def sample_many(self, requests: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]) -> list[np.ndarray]:
        """Several :meth:`sample` requests ``(z, y, x, slab)``, sampled together.

        Every pixel is interpolated independently, so the results equal separate calls; one
        call instead of dozens saves the per-call overhead (thread start-up on the CPU, a
        kernel launch and a transfer each on a GPU).

        Parameters
        ----------
        requests
            Grid-mm coordinates (any common shape per request) and whether to average the
            slab across ``x``.

        Returns
        -------
        list of numpy.ndarray
            float32 HU, one array per request in its own shape.
        """
        if not requests:
            return []
        # points within half a voxel of the volume are inside; beyond it they read as air
        lo_mm = -0.5 * self.spacing
        hi_mm = (self.vol_shape - 0.5) * self.spacing
        slab = len(self.offsets) > 1
        # three groups, each a flat run of points (the arithmetic is done once per group, not
        # per request): slab samples from the band, slab samples from the taps (no band, or
        # a plane beside the canal beyond the band's x) and single-tap samples
        def group(r: tuple) -> int:  # type: ignore[type-arg]
            if not (r[3] and slab):
                return 2
            if self.slab_raw is None:
                return 1
            x = np.asarray(r[2])
            in_band = x.size == 0 or (x.min() >= self.slab_x_mm[0] and x.max() <= self.slab_x_mm[1])
            return 0 if in_band else 1

        which = [group(r) for r in requests]
        groups = [[i for i, g in enumerate(which) if g == k] for k in range(3)]
        res: list[np.ndarray | None] = [None] * len(requests)
        for g_idx, idx in enumerate(groups):
            if not idx:
                continue
            axes = [np.concatenate([np.ravel(requests[i][a]) for i in idx]) for a in range(3)]
            inside = np.ones(len(axes[0]), dtype=bool)
            for a in range(3):
                inside &= (axes[a] >= lo_mm[a]) & (axes[a] <= hi_mm[a])
            offs = self.offsets if g_idx == 1 else np.zeros(1)
            if g_idx == 0:
                assert self.slab_raw is not None
                src, lo = self.slab_raw, self.slab_lo
            else:  # the box the points (and their taps) span, a voxel to spare
                lo_pt = np.array([axes[a].min() for a in range(3)])
                hi_pt = np.array([axes[a].max() for a in range(3)])
                lo_pt[2] += offs.min()
                hi_pt[2] += offs.max()
                lo, hi = self._voxel_box(lo_pt, hi_pt, 1)
                src = self._region(lo, hi)[None, None]
            size = np.asarray(src.shape[2:], dtype=np.float64)
            denom = np.maximum(size - 1, 1)
            # grid_sample's normalised coordinate of grid mm c on axis a: c * scale[a] + shift[a]
            scale = 2.0 / (self.spacing * denom)
            shift = -2.0 * lo / denom - 1.0
            # grid_sample wants (x, y, z)
            pts = np.stack([(axes[a] * scale[a] + shift[a]).astype(np.float32) for a in (2, 1, 0)], axis=1)
            grid = torch.from_numpy(pts).to(self.device)
            if len(offs) > 1:  # the taps across x, averaged
                dxn = torch.from_numpy((offs * scale[2]).astype(np.float32)).to(self.device)
                grid = grid.unsqueeze(0).repeat(len(offs), 1, 1)
                grid[:, :, 0] += dxn[:, None]
                grid = grid.reshape(-1, 3)
            out = F.grid_sample(src, grid[None, None, None], mode="bilinear", padding_mode="border", align_corners=True)
            out = out.reshape(len(offs), -1).mean(dim=0)
            vals = np.where(inside, out.cpu().numpy(), np.float32(-1000.0)).astype(np.float32, copy=False)
            at = 0
            for i in idx:
                z = requests[i][0]
                m = int(np.size(z))
                res[i] = vals[at : at + m].reshape(np.shape(z))
                at += m
        return res  # type: ignore[return-value]


@dataclass
class Straightened:
    """The spine sampled along its canal: rows ``s`` (arc length, caudal->cranial), columns ``u``.

    Attributes
    ----------
    image
        float32 HU, shape ``(len(s), len(u))``.
    s_mm, u_mm
        Row and column coordinates (mm). ``u`` is the distance anterior of the canal centre
        along the local sagittal normal (negative values: posterior).
    cz, cy, cx
        Grid-mm position of the canal centre at each row.
    nz, ny
        The anterior normal (sagittal plane) at each row; ``(z, y) = (cz, cy) + u * (nz, ny)``.
    """

    image: np.ndarray
    s_mm: np.ndarray
    u_mm: np.ndarray
    cz: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    nz: np.ndarray
    ny: np.ndarray
    sampler: SpineSampler | None = None

    def to_zy(self, s: np.ndarray | float, u: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Grid-mm ``(z, y)`` of straightened coordinates ``(s, u)``."""
        cz = np.interp(s, self.s_mm, self.cz)
        cy = np.interp(s, self.s_mm, self.cy)
        nz = np.interp(s, self.s_mm, self.nz)
        ny = np.interp(s, self.s_mm, self.ny)
        return cz + np.asarray(u) * nz, cy + np.asarray(u) * ny

    def x_at_s(self, s: np.ndarray | float) -> np.ndarray:
        return np.interp(s, self.s_mm, self.cx)


def straighten(
    volume: CTVolume,
    path: CanalPath,
    device: torch.device,
    step_mm: float = 1.0,
    u_range: tuple[float, float] = (-20.0, 85.0),
    sampler: SpineSampler | None = None,
) -> Straightened:
    """Sample the straightened mid-sagittal image along the canal (see :class:`Straightened`)."""
    sampler = sampler if sampler is not None else SpineSampler(volume, path, device)
    dzdz = np.gradient(path.y_mm, path.z_mm)
    seg = np.sqrt(1.0 + dzdz**2)
    arc = np.concatenate([[0.0], np.cumsum(0.5 * (seg[1:] + seg[:-1]) * np.diff(path.z_mm))])
    s = np.arange(0.0, arc[-1] + 1e-6, step_mm)
    cz = np.interp(s, arc, path.z_mm)
    cy = np.interp(s, arc, path.y_mm)
    cx = np.interp(s, arc, path.x_mm)
    slope = np.interp(cz, path.z_mm, dzdz)
    tz, ty = 1.0 / np.sqrt(1 + slope**2), slope / np.sqrt(1 + slope**2)
    nz, ny = ty, -tz  # anterior normal: straight spine -> (0, -1)
    u = np.arange(u_range[0], u_range[1] + 1e-6, step_mm)
    zz = cz[:, None] + u[None, :] * nz[:, None]
    yy = cy[:, None] + u[None, :] * ny[:, None]
    xx = np.interp(zz, path.z_mm, path.x_mm)
    img = sampler.sample(zz, yy, xx)
    return Straightened(img, s, u, cz, cy, cx, nz, ny, sampler)


@dataclass
class SagittalReformat:
    """The curved mid-sagittal reformat for display.

    Attributes
    ----------
    image
        float32 HU, shape ``(len(z_mm), len(y_mm))``; row 0 is the most *inferior* row (flip
        vertically to show head up).
    z_mm, y_mm
        Grid-mm coordinates of rows and columns.
    x_mm
        Grid-mm ``x`` of the plane at each row (the plane follows the canal).
    """

    image: np.ndarray
    z_mm: np.ndarray
    y_mm: np.ndarray
    x_mm: np.ndarray


def sagittal_reformat(
    volume: CTVolume,
    path: CanalPath,
    device: torch.device,
    step_mm: float = 1.0,
    margin_mm: tuple[float, float] = (110.0, 45.0),
    sampler: SpineSampler | None = None,
) -> SagittalReformat:
    """Sample the curved mid-sagittal plane on a regular ``(z, y)`` grid.

    Parameters
    ----------
    margin_mm
        How far anterior and posterior of the canal to show.
    """
    zmax = (volume.shape[0] - 1) * volume.spacing[0]
    ymax = (volume.shape[1] - 1) * volume.spacing[1]
    z = np.arange(0.0, zmax + 1e-6, step_mm)
    y0 = max(0.0, float(path.y_mm.min()) - margin_mm[0])
    y1 = min(ymax, float(path.y_mm.max()) + margin_mm[1])
    y = np.arange(y0, y1 + 1e-6, step_mm)
    # beyond the found canal, keep the plane where it was last seen
    xrow = np.interp(z, path.z_mm, path.x_mm)
    zz, yy = np.meshgrid(z, y, indexing="ij")
    xx = np.broadcast_to(xrow[:, None], zz.shape)
    sampler = sampler if sampler is not None else SpineSampler(volume, path, device)
    img = sampler.sample(zz, yy, xx)
    return SagittalReformat(img, z, y, xrow)


# --------------------------------------------------------------------------------------------
# discs and bodies
# --------------------------------------------------------------------------------------------


@dataclass
class BodySpan:
    """A vertebral body between two discs in straightened coordinates.

    Attributes
    ----------
    s_inf, s_sup
        Centres of the discs below and above (mm along ``s``).
    u_post, u_ant
        Posterior and anterior wall of the body (mm along ``u``), from its middle rows.
    level
        Level name once labelled, else ``None``.
    """

    s_inf: float
    s_sup: float
    u_post: float
    u_ant: float
    level: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def s_mid(self) -> float:
        return 0.5 * (self.s_inf + self.s_sup)


def _gauss1d(x: np.ndarray, sigma: float, axis: int = 0) -> np.ndarray:
    """Gaussian smoothing (``sigma`` in samples, kernel cut at 3 sigma) along ``axis``, with the
    edge samples repeated beyond the ends; a 2-D array is smoothed column by column at once."""
    if sigma <= 0:
        return x
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    if x.ndim == 1:
        return np.convolve(np.pad(x, (r, r), mode="edge"), k, mode="valid")
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.moveaxis(np.pad(x, pad, mode="edge"), axis, 0)
    n = x.shape[axis]
    out = k[0] * xp[:n]
    for j in range(1, 2 * r + 1):  # loop over kernel taps
        out = out + k[j] * xp[j : j + n]
    return np.moveaxis(out, 0, axis)


def _running_max(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """max of ``x[i+lo .. i+hi]`` (clipped to the array) for each ``i``."""
    n = len(x)
    out = np.full(n, -np.inf)
    for k in range(lo, hi + 1):
        src = np.full(n, -np.inf)
        if k >= 0:
            src[: n - k] = x[k:] if k < n else src[:0]
        else:
            src[-k:] = x[: n + k]
        out = np.maximum(out, src)
    return out


def posterior_wall(st: Straightened) -> float:
    """Typical distance (mm) from the canal centre to the posterior wall of the bodies."""
    u = st.u_mm
    prof = np.median(st.image, axis=0)
    sel = (u > 1.0) & (u < 25.0)
    us, ps = u[sel], prof[sel]
    # the steepest rise from canal contents into bone
    g = np.gradient(_gauss1d(ps, 1.0))
    return float(us[int(np.argmax(g))])


def _beyond_slices(st: Straightened, cols: np.ndarray) -> np.ndarray:
    """Per row of the straightened image: do its columns ``cols`` reach beyond the first or
    last slice of the volume (where the sampler reads air)?"""
    if st.sampler is None:  # no geometry at hand: rows mostly sampled as air
        return (st.image < -900).mean(axis=1) > 0.5
    dz = float(st.sampler.spacing[0])
    z = st.cz[:, None] + st.u_mm[None, cols] * st.nz[:, None]
    return ((z < -0.5 * dz) | (z > (float(st.sampler.vol_shape[0]) - 0.5) * dz)).any(axis=1)


#: where the next disc is due, in pitches on from the last one at either end of the column
#: (:func:`_grow_discs`, :func:`_end_discs`)
NEXT_DISC_WINDOW = (0.65, 1.4)
#: a disc at either end of the column where the view goes on past it (:func:`_end_discs`)
#: may score this fraction of the clearest discs (grown discs: 0.15)
END_DISC_MIN = 0.05
#: where no such disc lies where the next one is due (0.65-1.4 pitches on), one from this
#: fraction of a pitch on: the disc beside a crushed end body (:func:`_end_discs`). A body's
#: own dark band lies at 0.4-0.5 (the real CT's L1: 0.41)
END_DISC_NEAR = 0.55
#: how far (mm) past an end disc the view must go on: the next body's endplate in view
END_DISC_REACH_MM = 8.0
#: a strong disc (one that sets the pitch) dips to at least this fraction of a clear disc's
#: depth in each of the three cues of :func:`disc_cues`. Weakest cue measured: lumbar discs of
#: the real CT 0.68-1.5, phantoms' discs beside crushed L4s 0.37 and 0.2994 (held back, then
#: put back by :func:`_put_back_held`), a phantom's upper thoracic disc 0.17 (grown back at the
#: local pitch); dark bands inside bodies 0.0-0.2, and 0.28 for the thin core left in a
#: half-crushed real L3. No margin on the cue: docs/screening-method.md, Known gaps
STRONG_MIN_CUE = 0.3
#: a held-back strong disc is put back in a gap longer than this many local pitches
#: (:func:`_put_back_held`)
HELD_GAP_PITCHES = 1.3
#: a body's box (the middle 60% of its span, wall to wall) has at least 3% of it above 120 HU
BODY_BONE_PERCENTILE = 97


def disc_score(st: Straightened, valley_mm: float = 6.0) -> np.ndarray:
    """Per row of the straightened image, evidence that it is the middle of a disc.

    A disc is a narrow dark gap flanked within ``valley_mm`` by bright endplates, seen in the
    body's mean HU, in its anterior cortex and in its posterior wall at once. The body's own
    trabecular interior is a wider gap (its endplates lie further apart), so a narrow window
    scores discs well above body interiors. See :func:`disc_cues` for the three cues.
    """
    return disc_cues(st, valley_mm)[0]


def disc_cues(
    st: Straightened, valley_mm: float = 6.0, upw: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: :func:`disc_score`, the weakest of its three cues (each on its own scale, 1 =
    a clear disc), and whether the row's cue band reaches beyond the first or last slice.

    A disc dips in all three cues, while a dark band inside a body (its basivertebral veins,
    the thin trabecular core left in a crushed body) lacks one. ``upw`` is the posterior
    wall (:func:`posterior_wall`), computed here when not given.
    """
    img = st.image
    u = st.u_mm
    step = float(st.s_mm[1] - st.s_mm[0]) if len(st.s_mm) > 1 else 1.0
    upw = posterior_wall(st) if upw is None else upw
    sig = 1.0 / step
    band = (u >= upw - 3.0) & (u <= upw + 55.0)  # the posterior wall to beyond the anterior cortex
    mean_band = _gauss1d(img[:, (u >= upw + 2.0) & (u <= upw + 25.0)].mean(axis=1).astype(np.float64), sig)
    row_max = _gauss1d(img[:, band].max(axis=1).astype(np.float64), sig)
    wall = _gauss1d(img[:, (u >= upw - 3.0) & (u <= upw + 3.0)].max(axis=1).astype(np.float64), sig)
    w = max(2, int(round(valley_mm / step)))

    def valley(x: np.ndarray) -> np.ndarray:
        return np.clip(np.minimum(_running_max(x, -w, 0), _running_max(x, 0, w)) - x, 0.0, None)

    # Each cue on its own scale, then the median of the three: a disc dips in all of them
    # (mean HU, the brightest pixel of the row, the posterior wall), while a hollow
    # osteoporotic body dips only in its mean (its cortical walls run on) and the
    # basivertebral foramen only in the posterior wall.
    cues = []
    for c in (valley(mean_band), valley(row_max), valley(wall)):
        cues.append(np.clip(c / max(float(np.percentile(c, 97)), 20.0), 0.0, 1.5))
    score = 100.0 * np.median(np.stack(cues), axis=0)
    # and the mean must dip too: the basivertebral cleft darkens the wall and so the row
    # maximum, but not the body as a whole
    score[cues[0] < 0.2] = 0.0
    # a disc needs data on both sides: rows at the edge of the scanned volume (sampled as
    # -1000) would otherwise look like a gap after the last endplate. Rows whose cue bands
    # reach beyond the first or last slice, and two rows either side of them, never count; a
    # disc closer to the edge than that is still found when the endplate beyond it is in view
    # (the valley needs bone within reach on both sides, and outside rows are not bone). The
    # test is geometric: air inside the volume (bowel gas in front of the spine) reads as
    # -1000 too
    beyond = _beyond_slices(st, band)
    near_edge = _running_max(beyond.astype(np.float64), -2, 2) > 0
    score[near_edge] = 0.0
    return score, np.min(np.stack(cues), axis=0), beyond


def find_bodies(st: Straightened, min_body_mm: float = 8.0) -> list[BodySpan]:
    """Find the discs along the straightened spine and return the bodies between them.

    Parameters
    ----------
    st
        The straightened image.
    min_body_mm
        Smallest disc-to-disc distance accepted (a grade 3 fracture of a small thoracic body
        plus its discs).

    Returns
    -------
    list of BodySpan
        Caudal to cranial. Bodies between two discs have ``extra["partial"] = False``; a body
        cut by the edge of the view (one disc found, at least 10 mm of bone beyond it) is kept
        with ``extra["partial"] = True`` so that it can be labelled, not measured.
    """
    img = st.image
    u = st.u_mm
    step = float(st.s_mm[1] - st.s_mm[0]) if len(st.s_mm) > 1 else 1.0
    upw = posterior_wall(st)
    score, weakest, beyond = disc_cues(st, upw=upw)
    sep = max(2, int(round(min_body_mm / step)))
    cand = sorted(_peaks(score, sep, 0.02 * max(float(np.percentile(score, 99)), 1.0)))
    if not cand:
        return []
    # the clearest discs set the scale; body interiors score well below half of them
    vals = np.sort(score[cand])[::-1]
    ref = float(np.mean(vals[:3]))
    strong = [c for c in cand if score[c] >= 0.5 * ref]
    # the strong discs set the pitch, so one dark band inside a body taken for a strong disc
    # halves it and lets every body's band in (the thin core left in a half-crushed real L3
    # did, and split every lumbar body). A strong disc dips clearly in all three cues; the
    # others stay candidates, added below only where the local pitch wants a disc (a phantom's
    # upper thoracic disc, its posterior wall cue faint, is). Where fewer than three dip
    # clearly (a posterior wall cue failing throughout), the score alone decides, as before
    clear = [c for c in strong if weakest[c] >= STRONG_MIN_CUE]
    held: list[int] = []
    if len(clear) >= 3:
        held = [c for c in strong if c not in clear]
        strong = clear
    weak_thr = 0.15 * ref
    discs = _grow_discs(strong, cand, score, weak_thr, step)
    discs = _put_back_held(discs, held, score, step)
    discs = _drop_split_discs(discs, score, ref)
    discs = _end_discs(discs, cand, score, END_DISC_MIN * ref, step, ~beyond)
    bodies: list[BodySpan] = []
    for a, b in zip(discs[:-1], discs[1:]):
        length = (b - a) * step
        if length < min_body_mm or length > 70.0:
            continue
        bodies.append(BodySpan(float(st.s_mm[a]), float(st.s_mm[b]), upw, upw + 30.0, extra={"partial": False}))
    # bodies cut by the edge of the view, above the top disc and below the bottom one
    valid_rows = np.nonzero((img > -900).mean(axis=1) > 0.5)[0]
    if discs and len(valid_rows):
        pitch = float(np.median(np.diff(discs)) * step) if len(discs) > 1 else 30.0
        top_end = float(st.s_mm[valid_rows[-1]])
        s_top = float(st.s_mm[discs[-1]])
        if top_end - s_top >= 10.0:
            bodies.append(BodySpan(s_top, min(top_end, s_top + pitch), upw, upw + 30.0, extra={"partial": True}))
        bot_end = float(st.s_mm[valid_rows[0]])
        s_bot = float(st.s_mm[discs[0]])
        if s_bot - bot_end >= 10.0:
            bodies.insert(0, BodySpan(max(bot_end, s_bot - pitch), s_bot, upw, upw + 30.0, extra={"partial": True}))
    for bd in bodies:
        bd.u_post, bd.u_ant = _body_walls(st, bd, upw)
    # drop spans that do not look like a vertebral body: some depth, and bone in the box. In
    # an osteoporotic body the bone is its cortex (the trabecular core can read 30-50 HU), a
    # few per cent of the box: its 90th percentile swung from 142 to 89 HU with the span one
    # row shorter (a phantom's L2, then dropped, and every level left empty), its 97th holds
    keep = []
    for bd in bodies:
        h = bd.s_sup - bd.s_inf
        rows = (st.s_mm > bd.s_inf + 0.2 * h) & (st.s_mm < bd.s_sup - 0.2 * h)
        cols = (u >= bd.u_post) & (u <= bd.u_ant)
        if rows.sum() == 0 or cols.sum() == 0:
            continue
        if not _box_has_bone(img[rows][:, cols]) or bd.u_ant - bd.u_post < 12.0:
            log.debug("dropping span %.0f-%.0f mm: no bone in its box or depth %.0f mm", bd.s_inf, bd.s_sup,
                      bd.u_ant - bd.u_post)
            continue
        keep.append(bd)
    return keep


def _box_has_bone(box: np.ndarray) -> bool:
    """Whether a body's box (HU) holds bone: at least 3% of it above 120 HU
    (``BODY_BONE_PERCENTILE``), which an osteoporotic body's cortex gives and soft tissue
    does not."""
    return float(np.percentile(box, BODY_BONE_PERCENTILE)) >= 120.0


def _grow_discs(strong: list[int], cand: list[int], score: np.ndarray, thr: float, step: float) -> list[int]:
    """Add weaker discs where the strong ones leave a gap of about two vertebrae, and at the
    ends where the next disc is due one vertebra further on."""
    discs = sorted(strong)
    if len(discs) < 2:
        return discs
    cand_arr = np.asarray(cand)
    discs = _fill_gaps(discs, cand_arr, score, thr, step, 1.55, 20.0)
    for direction in (1, -1):
        while True:
            gaps = np.diff(discs)
            pitch = float(gaps[-1] if direction == 1 else gaps[0])
            last = discs[-1] if direction == 1 else discs[0]
            lo, hi = sorted(last + direction * f * pitch for f in NEXT_DISC_WINDOW)
            j = _best_peak(cand_arr, score, thr, lo, hi)
            if j is None:
                break
            if direction == 1:
                discs.append(j)
            else:
                discs.insert(0, j)
    return discs


def _best_peak(cand: np.ndarray, score: np.ndarray, thr: float, lo: float, hi: float) -> int | None:
    """The highest-scoring candidate row strictly between ``lo`` and ``hi`` that scores at
    least ``thr`` (the first of equals), or ``None``."""
    sel = cand[(cand > lo) & (cand < hi)]
    sel = sel[score[sel] >= thr]
    return int(sel[np.argmax(score[sel])]) if len(sel) else None


def _fill_gaps(
    discs: list[int], pool: np.ndarray, score: np.ndarray, thr: float, step: float, ratio: float, min_mm: float
) -> list[int]:
    """Insert discs from ``pool`` (rows scoring at least ``thr``) into gaps longer than
    ``ratio`` local pitches (:func:`_local_pitch`: gaps of 15 mm or more, so two close peaks at
    the edges of one tall gap above a crushed body never set the pitch) and than ``min_mm``:
    the best one 0.3-0.7 of the way across, one at a time, until no gap takes one."""
    if not len(pool):
        return discs
    changed = True
    while changed:
        changed = False
        gaps = np.diff(discs)
        for i, g in enumerate(gaps):
            if g > ratio * _local_pitch(gaps, i, step) and g * step > min_mm:
                j = _best_peak(pool, score, thr, discs[i] + 0.3 * g, discs[i + 1] - 0.3 * g)
                if j is not None:
                    discs.insert(i + 1, j)
                    changed = True
                    break
    return discs


def _local_pitch(gaps: np.ndarray, i: int, step: float) -> float:
    """The pitch around gap ``i``: the median of up to two gaps either side of it (of at
    least 15 mm), else of all the others, else the gap itself. Bodies grow from ~15 mm (upper
    thoracic) to ~30 mm (lumbar), and against the whole column's median a missing upper
    thoracic disc (a 41 mm gap among 21 mm ones) passes as one body."""
    near = np.concatenate([gaps[max(0, i - 2) : i], gaps[i + 1 : i + 3]])
    near = near[near * step >= 15.0]
    if not len(near):
        near = np.delete(gaps, i)
        near = near[near * step >= 15.0]
    return float(np.median(near)) if len(near) else float(gaps[i])


def _put_back_held(discs: list[int], held: list[int], score: np.ndarray, step: float) -> list[int]:
    """Put back a strong disc held back for a weak cue (see :func:`find_bodies`) where the gap
    it lies in is more than one body: longer than ``HELD_GAP_PITCHES`` local pitches, with the
    disc 0.3-0.7 of the way across it.

    One body split at a dark band inside it makes two spans that add up to about one pitch
    (the half-crushed real L3's core: 10 + 10 mm against 30); a crushed body beside a normal
    one makes at least 1.4 (a phantom's L4 crush: 17 + 30 mm against 33), and the disc between
    them can dip weakly in one cue (0.2994 there). Growing needs 1.55 pitches, with no strong
    disc to go on.
    """
    return _fill_gaps(sorted(discs), np.asarray(held, dtype=int), score, -np.inf, step, HELD_GAP_PITCHES, 0.0)


def _end_discs(
    discs: list[int], cand: list[int], score: np.ndarray, thr: float, step: float, inside: np.ndarray
) -> list[int]:
    """One more disc at each end of the column, on fainter evidence, where the view goes on
    well past where it is due.

    Beyond the last disc found, the body there is kept as cut by the view (labelled, not
    measured). But where the scan continues past the next disc's place (its whole window,
    one pitch on and 10 mm more, inside the slices), that body is whole, and its far disc is
    only faint: a fractured body's dented or wedged endplate widens the disc beside it past
    the valley the score looks for (the real CT's T12/L1 disc scored 48 intact and 10-12
    beside a dented or wedged L1). The faint peak is taken only in the window where the next
    disc is due (0.65 to 1.4 pitches on, as when growing) and only where it is the best one
    there; a body's own dark band lies nearer its middle, at half a pitch. ``inside`` flags
    the rows whose cue band lies within the slices (:func:`disc_cues`).
    """
    if len(discs) < 2:
        return discs
    cand_arr = np.asarray(cand)
    reach = int(round(END_DISC_REACH_MM / step))
    out = list(discs)
    for direction in (1, -1):
        gaps = np.diff(out)
        pitch = float(gaps[-1] if direction == 1 else gaps[0])
        last = out[-1] if direction == 1 else out[0]
        for start in (NEXT_DISC_WINDOW[0], END_DISC_NEAR):
            lo, hi = sorted((last + direction * start * pitch, last + direction * NEXT_DISC_WINDOW[1] * pitch))
            j = _best_peak(cand_arr, score, thr, lo, hi)
            if j is not None:
                break
        if j is None:
            continue
        a, b = sorted((last, j + direction * reach))
        if a >= 0 and b < len(inside) and inside[a : b + 1].all():
            if direction == 1:
                out.append(j)
            else:
                out.insert(0, j)
    return out


def _drop_split_discs(discs: list[int], score: np.ndarray, ref: float) -> list[int]:
    """Drop a middling disc that cuts one body in two.

    Two neighbouring spans both shorter than 70% of the local pitch (the median of up to two
    spans either side of the pair), together no longer than 1.3 pitches, are one body split at
    a dark band inside it (a basivertebral cleft, a Schmorl node, the trabecular pattern of a
    3 mm scan) unless the disc between them is as clear as the clearest discs (at least 75% of
    them): two crushed bodies side by side keep their disc. A crushed body between ordinary
    ones is one short span, never two, and is left alone. The pitch is local because bodies
    grow from ~15 mm (upper thoracic) to ~30 mm (lumbar).
    """
    discs = list(discs)
    while len(discs) >= 4:
        spans = np.diff(discs).astype(float)
        merged = False
        # the weakest offending disc first, so that one bad disc never costs a good one
        for k in sorted(range(1, len(discs) - 1), key=lambda k: score[discs[k]]):
            around = np.concatenate([spans[max(0, k - 3) : k - 1], spans[k + 1 : k + 3]])
            if not len(around) or score[discs[k]] >= 0.75 * ref:
                continue
            pitch = float(np.median(around))
            a, b = spans[k - 1], spans[k]
            if a < 0.7 * pitch and b < 0.7 * pitch and a + b <= 1.3 * pitch:
                log.debug("disc at row %d dropped: it splits a %.0f-row body", discs[k], a + b)
                del discs[k]
                merged = True
                break
        if not merged:
            break
    return discs


def _peaks(score: np.ndarray, min_sep: int, thr: float) -> list[int]:
    """Greedy non-maximum suppression of a 1-D score."""
    order = np.argsort(score)[::-1]
    taken: list[int] = []
    for i in order:
        if score[i] < thr:
            break
        if all(abs(int(i) - j) >= min_sep for j in taken):
            taken.append(int(i))
    return taken


def _body_walls(st: Straightened, bd: BodySpan, upw: float) -> tuple[float, float]:
    """Posterior and anterior wall (u, mm) of one body from its middle rows."""
    u = st.u_mm
    h = bd.s_sup - bd.s_inf
    rows = (st.s_mm > bd.s_inf + 0.3 * h) & (st.s_mm < bd.s_sup - 0.3 * h)
    if rows.sum() == 0:
        return upw, upw + 25.0
    prof = _gauss1d(st.image[rows].mean(axis=0).astype(np.float64), 0.7)
    # posterior wall: steepest rise near the typical wall position
    sel = (u > upw - 6.0) & (u < upw + 6.0)
    g = np.gradient(prof)
    up = float(u[sel][int(np.argmax(g[sel]))]) if sel.any() else upw
    # anterior wall: the first strong fall from bone to soft tissue beyond 0.65 disc-to-disc
    # spans (a body is deeper than tall), at most 65 mm anterior of the posterior wall
    from fracture_qi.screening.morphometry import (
        _first_fall,  # shared rule, no import cycle at load
    )

    ua = _first_fall(u, g, up + max(12.0, 0.65 * h), up + 65.0, up + 25.0)
    return up, ua


# --------------------------------------------------------------------------------------------
# level labelling
# --------------------------------------------------------------------------------------------


def _lateral_runs(
    grid: CoarseGrid,
    z0: float,
    z1: float,
    yc: float,
    y0: float,
    y1: float,
    xc: float,
    gap_mm: float,
    bone_hu: float,
) -> tuple[float, float]:
    """Reach (mm) of bone from the midline to the right and left in a slab.

    Bone is projected (max) over slices ``z0..z1`` and rows ``yc+y0..yc+y1`` (grid mm); a run
    starts at the midline ``xc`` and continues across gaps no wider than ``gap_mm``.
    """
    dz, dy, dx = grid.spacing
    k0 = int(np.clip(np.floor((z0 - grid.offset[0]) / dz), 0, grid.bone_max.shape[0] - 1))
    k1 = int(np.clip(np.ceil((z1 - grid.offset[0]) / dz), k0 + 1, grid.bone_max.shape[0]))
    i0 = int(np.clip(np.floor((yc + y0 - grid.offset[1]) / dy), 0, grid.bone_max.shape[1] - 1))
    i1 = int(np.clip(np.ceil((yc + y1 - grid.offset[1]) / dy), i0 + 1, grid.bone_max.shape[1]))
    occ = (grid.bone_max[k0:k1, i0:i1] > bone_hu).any(axis=(0, 1))
    j = int(np.clip(round((xc - grid.offset[2]) / dx), 0, len(occ) - 1))
    maxgap = max(1, int(round(gap_mm / dx)))

    def reach(direction: int) -> float:
        last = j
        k = j
        miss = 0
        while 0 <= k + direction < len(occ):
            k += direction
            if occ[k]:
                last = k
                miss = 0
            else:
                miss += 1
                if miss > maxgap:
                    break
        return abs(last - j) * dx

    return reach(-1), reach(1)


def sacral_width(grid: CoarseGrid, st: Straightened, s: float, u_post: float, u_ant: float) -> float:
    """Width (mm) of the bone continuous with the body at arc length ``s``.

    Sacral alae make S1 much wider (> 120 mm, continuous with the ilia) than any lumbar body
    (40-55 mm; with L5's transverse processes up to about 90 mm). The threshold is low
    (150 HU) because a body's trabecular core is what links its two lateral cortices.
    """
    z, y_post = st.to_zy(s, u_post)
    _, y_ant = st.to_zy(s, u_post + 0.8 * (u_ant - u_post))
    xc = float(st.x_at_s(s))
    ya, yb = float(min(y_ant, y_post)), float(max(y_ant, y_post))
    r, l = _lateral_runs(grid, float(z) - 3.0, float(z) + 3.0, 0.0, ya, yb, xc, 6.0, 150.0)
    return r + l


def rib_reach(grid: CoarseGrid, st: Straightened, bd: BodySpan) -> float:
    """Lateral reach (mm, mean of both sides) of bone attached beside a body.

    A rib runs from the costovertebral joint 70 mm or more laterally; lumbar transverse
    processes stop at about 40-55 mm from the midline.
    """
    h = bd.s_sup - bd.s_inf
    # the upper four fifths of the span: a rib leaves its vertebra at the upper body and pedicle
    z_hi, yc = st.to_zy(bd.s_sup, 0.0)
    z_lo, _ = st.to_zy(bd.s_inf + 0.2 * h, 0.0)
    xc = float(st.x_at_s(bd.s_mid))
    # from 20 mm in front of the canal to 50 mm behind it: the rib neck and the angle of the rib
    r, l = _lateral_runs(grid, float(z_lo), float(z_hi), float(yc), -20.0, 50.0, xc, 6.0, 200.0)
    return 0.5 * (r + l)


@dataclass
class LevelAnchors:
    """What the labelling saw (for logs and tests)."""

    sacral_index: int | None = None  # index (in the caudal->cranial body list) of L5
    rib_index: int | None = None  # index of the last rib-bearing body (T12)
    sacral_widths: list[float] = field(default_factory=list)
    rib_reaches: list[float] = field(default_factory=list)
    rib_head_excess: list[float] = field(default_factory=list)
    agree: bool | None = None


def label_levels(
    grid: CoarseGrid,
    st: Straightened,
    bodies: list[BodySpan],
    rib_mm: float = 62.0,
    sacrum_mm: float = 110.0,
    rib_head_mm: float = 6.5,
) -> LevelAnchors:
    """Name the bodies in place (``BodySpan.level``) from the sacrum and/or the last rib.

    Parameters
    ----------
    grid, st, bodies
        Outputs of :func:`coarse_grid`, :func:`straighten`, :func:`find_bodies`.
    rib_mm
        Lateral reach (see :func:`rib_reach`) above which a body is called rib-bearing.
    rib_head_mm
        Or: mean reach of bone beyond the body's margin at its back corner (see
        :func:`rib_head_excess`) above which it is called rib-bearing (thoracic 7-14 mm,
        lumbar -10 to +6 mm in the synthetic cohort).
    sacrum_mm
        Width of continuous bone above which a segment is called sacral.

    Returns
    -------
    LevelAnchors
    """
    anchors = LevelAnchors()
    if not bodies:
        return anchors
    # -- sacrum: the first segment below a disc that is as wide as the sacral alae
    widths = [sacral_width(grid, st, bd.s_mid, bd.u_post, bd.u_ant) for bd in bodies]
    anchors.sacral_widths = widths
    below = bodies[0].s_inf - 0.5 * (bodies[0].s_sup - bodies[0].s_inf)
    width_below = (
        sacral_width(grid, st, max(below, float(st.s_mm[0])), bodies[0].u_post, bodies[0].u_ant)
        if below >= st.s_mm[0] - 2.0
        else 0.0
    )
    seq = [width_below] + widths
    l5 = None
    for i in range(1, len(seq)):
        if seq[i - 1] >= sacrum_mm and seq[i] < sacrum_mm:
            l5 = i - 1  # body index whose caudal neighbour is sacral
    # a sacral-looking body above a lumbar-looking one is implausible: keep the lowest transition
    for i in range(1, len(seq)):
        if seq[i - 1] >= sacrum_mm and seq[i] < sacrum_mm:
            l5 = i - 1
            break
    anchors.sacral_index = l5
    # -- ribs, two ways. (a) The topmost run of bodies with bone far sideways at their level
    # (rib shafts attached in the image) ends at T12. (b) Rib heads: bone beyond the body's
    # margin at its posterolateral corner (costovertebral joint and rib neck), seen even where
    # the shaft is cut off or not attached in the image.
    reaches = [rib_reach(grid, st, bd) for bd in bodies]
    anchors.rib_reaches = reaches
    heads = [0.5 * (r + l) for r, l in rib_head_excess(st, bodies)]
    anchors.rib_head_excess = heads
    # a "sacrum" whose L5 and L4 carry rib heads is the rib cage seen wide (a chest scan), not
    # the sacrum (beside a real L5 the iliac crests can look like rib heads; beside L4 they do not)
    if l5 is not None and l5 + 1 < len(bodies) and heads[l5] >= rib_head_mm + 1.0 and heads[l5 + 1] >= rib_head_mm:
        log.debug("sacral anchor at body %d dropped: rib heads beside it (%.1f mm)", l5, heads[l5])
        l5 = None
        anchors.sacral_index = None
    t12_reach = None
    # the run must start at the topmost body: a chest whose upper bodies show no ribs (or a
    # 12th rib that is not seen) would otherwise be counted from the wrong rib
    top = len(bodies) - 1
    if reaches[top] >= rib_mm:
        t12_reach = top
        while t12_reach - 1 >= 0 and reaches[t12_reach - 1] >= rib_mm:
            t12_reach -= 1
        if t12_reach == 0 and l5 is None:
            # the run reaches the bottom of the view: cannot tell where the ribs stop
            t12_reach = None
    # T12 by the rib heads: clear heads (the lower thoracic ones are the clearest), heads on
    # the body above too, and clearly none on the two bodies below (L1, L2)
    strong = rib_head_mm + 1.0
    t12_heads = [
        k
        for k in range(1, len(bodies))
        if heads[k] >= strong
        and (k + 1 >= len(bodies) or heads[k + 1] >= rib_head_mm)
        and heads[k - 1] < rib_head_mm - 2.5
        and (k < 2 or heads[k - 2] < rib_head_mm - 2.5)
    ]
    t12_head = t12_heads[0] if len(t12_heads) == 1 else None
    if t12_reach is not None and t12_head is not None and t12_reach != t12_head:
        log.info("rib anchors disagree (rib shafts say body %s is T12, rib heads %s)", t12_reach, t12_head)
        t12 = None
    else:
        t12 = t12_head if t12_head is not None else t12_reach
    anchors.rib_index = t12
    names: list[str | None] = [None] * len(bodies)
    i_l5 = LEVELS.index("L5")
    i_t12 = LEVELS.index("T12")
    from_sacrum = from_ribs = None
    if l5 is not None:
        from_sacrum = [_name(i_l5 - (k - l5)) for k in range(len(bodies))]
    if t12 is not None:
        from_ribs = [_name(i_t12 - (k - t12)) for k in range(len(bodies))]
    if from_sacrum and from_ribs:
        anchors.agree = from_sacrum == from_ribs
        if anchors.agree:
            names = from_sacrum
        else:
            log.info("level anchors disagree (sacrum says body %s is L5, ribs say %s is T12)", l5, t12)
    elif from_sacrum:
        names = from_sacrum
    elif from_ribs:
        names = from_ribs
    for bd, n in zip(bodies, names):
        bd.level = n
    return anchors


def _name(i: int) -> str | None:
    return LEVELS[i] if 0 <= i < len(LEVELS) else None


def rib_head_excess(st: Straightened, bodies: list[BodySpan], bone_hu: float = 250.0) -> list[tuple[float, float]]:
    """How far (mm, right and left) bone continues sideways beyond the body at its back corner.

    A rib head articulates with the posterolateral corner of a thoracic body (costovertebral
    joint) and its neck runs from there, just in front of or beside the pedicle, to the
    transverse process: in an axial section through the upper body, bone continues from the
    posterior wall well beyond the body's lateral margin. A lumbar body has nothing there (its
    transverse processes leave the arch behind the canal's front edge). The body's own half
    widths come from its middle third of depth; the reach at its back from a band 3 mm behind
    to 4 mm in front of the posterior wall; both are bone runs from the midline projected over
    the upper body (the rib neck sits above the mid-height).

    All bodies are sampled in one call (:meth:`SpineSampler.sample_many`).

    Parameters
    ----------
    st
        The straightened image (with its sampler).
    bodies
        Body spans with their walls.
    bone_hu
        HU above which a sample is bone.

    Returns
    -------
    list of (float, float)
        Per body, the reach of bone at the back beyond the body's half width, right and left
        (mm; negative when the back is narrower than the middle).
    """
    assert st.sampler is not None
    xo = np.arange(-45.0, 45.0 + 1e-6, 1.0)
    j0 = int(np.argmin(np.abs(xo)))
    reqs = []
    for bd in bodies:
        h = bd.s_sup - bd.s_inf
        depth = max(bd.u_ant - bd.u_post, 10.0)
        s = np.arange(bd.s_mid - 0.1 * h, bd.s_sup + 1e-6, 1.0)
        # the canal frame varies with s only: look it up per row, then broadcast
        cz, cy = st.to_zy(s, 0.0)
        nz = np.interp(s, st.s_mm, st.nz)[:, None, None]
        ny = np.interp(s, st.s_mm, st.ny)[:, None, None]
        cx = np.interp(s, st.s_mm, st.cx)[:, None, None]
        for ub in (np.arange(bd.u_post - 3.0, bd.u_post + 4.0 + 1e-6, 1.0),
                   np.arange(bd.u_post + 0.33 * depth, bd.u_post + 0.67 * depth + 1e-6, 1.0)):
            U = ub[None, :, None]
            z, y, x = np.broadcast_arrays(cz[:, None, None] + U * nz, cy[:, None, None] + U * ny,
                                          cx + xo[None, None, :])
            reqs.append((z, y, x, False))
    vals = st.sampler.sample_many(reqs)

    def reach(occ: np.ndarray, direction: int) -> float:
        # a run from the midline across gaps of at most 2 mm
        last = k = j0
        miss = 0
        while 0 <= k + direction < len(occ):
            k += direction
            if occ[k]:
                last, miss = k, 0
            else:
                miss += 1
                if miss > 2:
                    break
        return abs(float(xo[last]))

    out = []
    for i in range(len(bodies)):
        back = vals[2 * i].max(axis=(0, 1)) > bone_hu
        # the body's width at a lower threshold: real trabecular bone (150-250 HU) links the
        # lateral cortices, so the run reaches the body's margins, not a gap in its core
        mid = vals[2 * i + 1].max(axis=(0, 1)) > min(bone_hu, 150.0)
        out.append((reach(back, -1) - reach(mid, -1), reach(back, 1) - reach(mid, 1)))
    return out
