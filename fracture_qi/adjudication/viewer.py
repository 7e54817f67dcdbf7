"""The nurse's image viewer: curved sagittal reformat, axial slice at a level, key image.

Pixels are rendered here with numpy and Pillow into PNG bytes shown by ``ipywidgets.Image``:
a PNG of a few hundred kB crosses the Voila websocket faster than a plotly figure of the same
image and needs no JavaScript library.

:func:`prepare_case` does the slow part once per case (decode the series, sample the planes
around the spine) and is run ahead of time in a background thread by the app, so the next
case opens at once. Everything after that (:func:`render_sagittal`, :func:`render_axial`) is
a slice, a window and a resize: tens of milliseconds.

Coordinates are *grid mm* of the :class:`~fracture_qi.dicom.geometry.CTVolume`:
millimetres from voxel ``[0, 0, 0]`` along ``(z, y, x)`` = (inferior->superior,
anterior->posterior, right->left), the convention of the screener's overlay geometry.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.errors import AdjudicationError

logger = logging.getLogger(__name__)

#: window presets: name -> (level, width) in HU
WINDOWS: dict[str, tuple[float, float]] = {
    "bone": (400.0, 1800.0),
    "soft tissue": (40.0, 400.0),
}
#: overlay colour per Genant grade (RGB): green normal, yellow mild, orange moderate, red severe
GRADE_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (60, 200, 110), 1: (255, 215, 0), 2: (255, 140, 0), 3: (235, 45, 45),
}
#: planes sampled either side of the spine's mid-sagittal curve (mm); the slab slider's range
MAX_SLAB_MM = 30
#: output height (pixels) of the sagittal image at zoom 1
SAGITTAL_HEIGHT_PX = 640
#: output height (pixels) of the axial image
AXIAL_HEIGHT_PX = 320


@dataclass
class Finding:
    """One vertebra as the AI reported it, with the overlay geometry it gave (grid mm)."""

    level: str | None
    grade: int
    morph_type: str
    ha_mm: float | None
    hm_mm: float | None
    hp_mm: float | None
    centre_zyx: tuple[float, float, float] | None = None
    outline_zy: list[tuple[float, float]] = field(default_factory=list)
    points_zy: list[tuple[float, float]] = field(default_factory=list)
    #: how the viewer names it: the level, or ``#n`` counted from the top when unlabelled
    ident: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Finding:
        """From a ``vertebra_findings`` row as :func:`~.worklist.load_case_record` gives it.

        Geometry keys understood: ``centre_zyx_mm`` (or ``centre_zyx``), ``outline_zy_mm``
        (a polygon), ``points_zy_mm`` or ``corners_zy_mm`` (six landmarks: superior
        anterior, middle, posterior, then inferior anterior, middle, posterior). Unknown or
        malformed geometry is ignored (the finding is still listed).

        Examples
        --------
        >>> f = Finding.from_row({"level": "L1", "genant_grade": 2, "morph_type": "wedge",
        ...     "ha_mm": 14.0, "hm_mm": 18.0, "hp_mm": 22.0,
        ...     "geometry": {"centre_zyx_mm": [100, 80, 120]}})
        >>> f.centre_zyx, f.label
        ((100.0, 80.0, 120.0), 'L1 G2')
        """
        g = row.get("geometry") or {}
        centre = g.get("centre_zyx_mm", g.get("centre_zyx"))

        def pts(value: Any) -> list[tuple[float, float]]:
            try:
                out = [(float(p[0]), float(p[1])) for p in (value or [])]
            except (TypeError, ValueError, IndexError):
                return []
            return out if all(np.isfinite(out).ravel()) else []

        try:
            c = tuple(float(v) for v in centre) if centre is not None else None
            centre_t = c if c is not None and len(c) == 3 and np.isfinite(c).all() else None
        except (TypeError, ValueError):
            centre_t = None
        return cls(
            level=row.get("level"),
            grade=int(row.get("genant_grade") or 0),
            morph_type=str(row.get("morph_type") or "normal"),
            ha_mm=row.get("ha_mm"), hm_mm=row.get("hm_mm"), hp_mm=row.get("hp_mm"),
            centre_zyx=centre_t,  # type: ignore[arg-type]
            outline_zy=pts(g.get("outline_zy_mm")),
            points_zy=pts(g.get("points_zy_mm", g.get("corners_zy_mm"))),
        )

    @property
    def label(self) -> str:
        return f"{self.ident or self.level or '?'} G{self.grade}"


@dataclass
class PreparedCase:
    """A case's pixels made ready for fast rendering.

    Attributes
    ----------
    cumsum
        float32 cumulative sum over the sampled planes, shape ``(n_planes + 1, z, y)``: the
        mean of planes ``a..b`` is ``(cumsum[b + 1] - cumsum[a]) / (b + 1 - a)``.
    plane_offsets_mm
        Offset of each plane from the mid-sagittal curve (mm, + towards patient left).
    shape, spacing
        Shape and voxel size (mm) of the decoded volume, ``(z, y, x)``.
    axial
        For each finding with a position (by ident): its slice index and that axial slice
        (int16 HU). Only these slices are kept, not the volume: a prepared case holds tens of
        megabytes instead of hundreds, so many nurses can share one server.
    findings
        AI findings with geometry.
    keyimage_png
        The screener's key image, where there is one.
    seconds
        Time taken to prepare.
    """

    cumsum: np.ndarray
    plane_offsets_mm: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    axial: dict[str, tuple[int, np.ndarray]]
    findings: list[Finding]
    keyimage_png: bytes | None
    seconds: float

    def levels(self) -> list[str]:
        """Idents of vertebrae with a known position, cranial first (the axial-level menu)."""
        with_pos = [f for f in self.findings if f.centre_zyx is not None and f.ident]
        return [f.ident for f in sorted(with_pos, key=lambda f: -f.centre_zyx[0])]  # type: ignore[index]

    def finding(self, ident: str | None) -> Finding | None:
        """The finding shown as *ident* (a level, or ``#n`` when unlabelled)."""
        if not ident:
            return None
        return next((f for f in self.findings if f.ident == ident and f.centre_zyx), None)


def name_findings(findings: list[Finding]) -> list[Finding]:
    """Give every finding an ident: its level, or ``#n`` counted from the top when the AI
    could not name the level (or named it twice).

    Examples
    --------
    >>> fs = name_findings([Finding("L1", 0, "normal", None, None, None, (50.0, 0, 0)),
    ...                     Finding(None, 1, "wedge", None, None, None, (80.0, 0, 0))])
    >>> [f.ident for f in fs]
    ['L1', '#1']
    """
    order = sorted(range(len(findings)), key=lambda i: -(findings[i].centre_zyx or (-1e9,))[0])
    rank = {i: n + 1 for n, i in enumerate(order)}
    seen: set[str] = set()
    for i, f in enumerate(findings):
        if f.level and f.level not in seen:
            f.ident = f.level
        else:
            f.ident = f"#{rank[i]}"
        seen.add(f.ident)
    return findings


def load_volume(paths: Sequence[str]) -> CTVolume:
    """Decode a series for viewing (the DICOM helper's loader, lenient mode)."""
    if not paths:
        raise AdjudicationError(
            "this study has no stored image files to show. Fix: re-index the study's folder "
            "(fracture-qi index), or record the case as not_assessable"
        )
    from fracture_qi.dicom.volume import load_series

    return load_series(list(paths), strict=False)


def spine_curve_x(volume: CTVolume, findings: Sequence[Finding]) -> np.ndarray:
    """Grid-mm ``x`` of the mid-sagittal curve at every slice.

    Taken from the AI's vertebral centres where it gave them (interpolated between levels,
    held constant beyond them); else from the screener's canal finder; else the body's
    midline (centroid of tissue above -400 HU) per slice.
    """
    nz = volume.shape[0]
    dz, _, dx = volume.spacing
    z = np.arange(nz) * dz
    pts = sorted((f.centre_zyx[0], f.centre_zyx[2]) for f in findings if f.centre_zyx)
    if pts:
        zs, xs = zip(*pts)
        return np.interp(z, zs, xs)
    try:
        from fracture_qi.screening.device import pick_device
        from fracture_qi.screening.spine import locate_canal

        path = locate_canal(volume, pick_device("cpu"))
        if path is not None:
            return np.interp(z, path.z_mm, path.x_mm)
    except Exception:  # the viewer must open even when the canal finder cannot run
        logger.warning("canal finder failed; using the body midline", exc_info=True)
    body = volume.hu > -400
    cols = body.sum(axis=1).astype(np.float64)  # (z, x)
    mass = cols.sum(axis=1)
    centre = np.where(mass > 0, (cols * np.arange(volume.shape[2])).sum(axis=1) / np.maximum(mass, 1),
                      volume.shape[2] / 2)
    return centre * dx


def sample_planes(volume: CTVolume, curve_x_mm: np.ndarray, max_slab_mm: float = MAX_SLAB_MM
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative sums of sagittal planes parallel to the curve, for O(1) slab averages.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``cumsum`` of shape ``(n + 1, z, y)`` (float32) and the planes' offsets (mm).
    """
    nz, ny, nx = volume.shape
    dx = volume.spacing[2]
    half = max(int(round(max_slab_mm / 2 / dx)), 0)
    offsets = np.arange(-half, half + 1)
    xi = np.clip(np.round(curve_x_mm / dx).astype(int)[None, :] + offsets[:, None], 0, nx - 1)
    kk = np.arange(nz)[None, :, None]
    yy = np.arange(ny)[None, None, :]
    planes = volume.hu[kk, yy, xi[:, :, None]]  # (n, z, y) via fancy indexing, no copy of the volume
    cumsum = np.zeros((len(offsets) + 1, nz, ny), dtype=np.float32)
    np.cumsum(planes, axis=0, dtype=np.float32, out=cumsum[1:])
    return cumsum, offsets * dx


def _read_keyimage(path: str | None, root: Path | None) -> bytes | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = root / p
    try:
        data = p.read_bytes()
    except OSError:
        logger.warning("key image %s not found", p)
        return None
    return data if data[:8] == b"\x89PNG\r\n\x1a\n" else None


def prepare_case(
    paths: Sequence[str],
    findings: Sequence[dict[str, Any]],
    *,
    keyimage_path: str | None = None,
    keyimage_root: Path | None = None,
    loader: Callable[[Sequence[str]], CTVolume] = load_volume,
) -> PreparedCase:
    """Decode a case and sample its sagittal planes (the slow part; run it ahead of time).

    Parameters
    ----------
    paths
        The chosen series' files (``instances.path``).
    findings
        ``vertebra_findings`` rows (dicts with ``geometry``).
    keyimage_path, keyimage_root
        The screening's key image (relative paths are under *keyimage_root*).
    loader
        Turns paths into a :class:`CTVolume` (the DICOM loader by default).

    Raises
    ------
    AdjudicationError
        No image files. Decoding errors from the loader pass through
        (:class:`~fracture_qi.errors.VolumeError`).
    """
    t0 = time.perf_counter()
    volume = loader(paths)
    fs = name_findings([Finding.from_row(r) for r in findings])
    curve = spine_curve_x(volume, fs)
    cumsum, offsets = sample_planes(volume, curve)
    axial = {}
    for f in fs:
        if f.centre_zyx is not None:
            k = int(np.clip(round(f.centre_zyx[0] / volume.spacing[0]), 0, volume.shape[0] - 1))
            axial[f.ident] = (k, volume.hu[k].copy())
    return PreparedCase(cumsum, offsets, volume.shape, volume.spacing, axial, fs,
                        _read_keyimage(keyimage_path, keyimage_root), time.perf_counter() - t0)


def window_to_uint8(img: np.ndarray, window: str | tuple[float, float]) -> np.ndarray:
    """Map HU through a window preset (or ``(level, width)``) to 0-255.

    Examples
    --------
    >>> window_to_uint8(np.array([-1000.0, 40.0, 3000.0]), "soft tissue").tolist()
    [0, 127, 255]
    """
    level, width = WINDOWS[window] if isinstance(window, str) else window
    lo = level - width / 2
    out = (np.asarray(img, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(out, 0, 255).astype(np.uint8)


def to_png(img: Image.Image) -> bytes:
    """PNG bytes, fast compression (speed matters more than size on a local network)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


@dataclass(frozen=True)
class ViewState:
    """What the viewer's controls say; every field validated (widget values are untrusted)."""

    window: str = "bone"
    slab_mm: float = 4.0
    offset_mm: float = 0.0
    zoom: float = 1.0
    overlay: bool = True
    level: str | None = None

    def clean(self, prepared: PreparedCase) -> ViewState:
        """Clamp every value to what the case allows.

        """
        return self.clamp(float(prepared.plane_offsets_mm.max(initial=0.0)),
                          set(prepared.levels()))

    def clamp(self, half: float, levels: set[str]) -> ViewState:
        """Clamp to a slab of at most ``2 * half`` mm and the given levels.

        Examples
        --------
        >>> ViewState(window="evil", slab_mm=1e9, zoom=-3, level="X9").clamp(15.0, {"L1"})
        ViewState(window='bone', slab_mm=30.0, offset_mm=0.0, zoom=1.0, overlay=True, level=None)
        """
        def num(v: Any, lo: float, hi: float, default: float) -> float:
            try:
                f = float(v)
            except (TypeError, ValueError):
                return default
            return min(max(f, lo), hi) if np.isfinite(f) else default

        return ViewState(
            window=self.window if self.window in WINDOWS else "bone",
            slab_mm=num(self.slab_mm, 0.0, 2 * half, 4.0),
            offset_mm=num(self.offset_mm, -half, half, 0.0),
            zoom=num(self.zoom, 1.0, 4.0, 1.0),
            overlay=bool(self.overlay),
            level=self.level if self.level in levels else None,
        )


def slab_image(prepared: PreparedCase, slab_mm: float, offset_mm: float = 0.0) -> np.ndarray:
    """Mean of the planes within ``slab_mm`` around ``offset_mm`` of the curve: (z, y) HU."""
    offs = prepared.plane_offsets_mm
    inside = np.nonzero(np.abs(offs - offset_mm) <= max(slab_mm / 2, 1e-6) + 1e-6)[0]
    if len(inside) == 0:
        inside = np.array([int(np.argmin(np.abs(offs - offset_mm)))])
    a, b = int(inside[0]), int(inside[-1])
    return (prepared.cumsum[b + 1] - prepared.cumsum[a]) / float(b + 1 - a)


def render_sagittal(prepared: PreparedCase, state: ViewState) -> bytes:
    """The curved sagittal reformat as PNG: head up, anterior on the left, mm-true aspect.

    The AI overlay (when ``state.overlay``) outlines each vertebral body in its grade's
    colour, draws the anterior/middle/posterior heights and names the level and grade; the
    level chosen for the axial view is marked with a line.
    """
    st = state.clean(prepared)
    dz, dy, _ = prepared.spacing
    img = slab_image(prepared, st.slab_mm, st.offset_mm)
    nz, ny = img.shape
    u8 = window_to_uint8(img[::-1], st.window)  # row 0 = most superior
    h_mm, w_mm = nz * dz, ny * dy
    scale = SAGITTAL_HEIGHT_PX / h_mm  # pixels per mm at zoom 1
    full_w, full_h = max(int(round(w_mm * scale)), 1), SAGITTAL_HEIGHT_PX
    z_top = (nz - 0.5) * dz

    # zoom: crop a window of (1/zoom) of the image around the chosen level or the spine
    focus = prepared.finding(st.level)
    if focus is None:
        cs = [f.centre_zyx for f in prepared.findings if f.centre_zyx]
        cz = float(np.mean([c[0] for c in cs])) if cs else h_mm / 2
        cy = float(np.mean([c[1] for c in cs])) if cs else w_mm / 2
    else:
        cz, cy = focus.centre_zyx[0], focus.centre_zyx[1]  # type: ignore[index]
    view_h, view_w = h_mm / st.zoom, w_mm / st.zoom
    top = min(max(z_top - cz - view_h / 2, 0.0), h_mm - view_h)  # mm from the image top
    left = min(max(cy + dy / 2 - view_w / 2, 0.0), w_mm - view_w)
    pil = Image.fromarray(u8, mode="L")
    box = (left / dy, top / dz, (left + view_w) / dy, (top + view_h) / dz)
    pil = pil.resize((full_w, full_h), Image.Resampling.BILINEAR, box=box).convert("RGB")
    if not st.overlay and focus is None:
        return to_png(pil)

    px_per_mm = full_h / view_h

    def to_px(z_mm: float, y_mm: float) -> tuple[float, float]:
        return ((y_mm + dy / 2 - left) * px_per_mm, (z_top - z_mm - top) * px_per_mm)

    draw = ImageDraw.Draw(pil)
    font = _font(max(12, int(13 * min(st.zoom, 2))))
    if st.overlay:
        for f in prepared.findings:
            colour = GRADE_COLOURS.get(f.grade, GRADE_COLOURS[3])
            width = 3 if f.grade >= 2 else 2
            if len(f.outline_zy) >= 3:
                draw.polygon([to_px(z, y) for z, y in f.outline_zy], outline=colour, width=width)
            if len(f.points_zy) == 6:
                sup, inf = f.points_zy[:3], f.points_zy[3:]
                if len(f.outline_zy) < 3:  # no outline: the landmarks make one
                    ring = [*sup, *inf[::-1]]
                    draw.polygon([to_px(z, y) for z, y in ring], outline=colour, width=width)
                for (z1, y1), (z2, y2) in zip(sup, inf):  # Ha, Hm, Hp
                    draw.line([to_px(z1, y1), to_px(z2, y2)], fill=colour, width=1)
            if f.centre_zyx is not None:
                x, y = to_px(f.centre_zyx[0], f.centre_zyx[1])
                text = f.label if f.grade else f.ident
                # label just in front of the body (anterior = left), on a dark box
                ys = [p[1] for p in (f.outline_zy or f.points_zy)]
                front = to_px(f.centre_zyx[0], min(ys))[0] if ys else x - 25 * st.zoom
                tw = draw.textlength(text, font=font)
                tx = max(front - tw - 8, 2)
                bbox = draw.textbbox((tx, y - 8), text, font=font)
                draw.rectangle(bbox, fill=(0, 0, 0))
                draw.text((tx, y - 8), text, fill=colour, font=font)
    if focus is not None:
        _, y = to_px(focus.centre_zyx[0], 0.0)  # type: ignore[index]
        draw.line([(0, y), (12, y)], fill=(0, 170, 255), width=3)
        draw.line([(full_w - 12, y), (full_w, y)], fill=(0, 170, 255), width=3)
    return to_png(pil)


def render_axial(prepared: PreparedCase, state: ViewState) -> bytes | None:
    """The axial slice through the chosen level's centre (anterior up, patient right on the
    left), or ``None`` when no level with a position is chosen."""
    st = state.clean(prepared)
    f = prepared.finding(st.level)
    if f is None or f.centre_zyx is None or f.ident not in prepared.axial:
        return None
    _, dy, dx = prepared.spacing
    k, hu = prepared.axial[f.ident]
    u8 = window_to_uint8(hu, st.window)
    ny, nx = u8.shape
    scale = AXIAL_HEIGHT_PX / (ny * dy)
    size = (max(int(round(nx * dx * scale)), 1), AXIAL_HEIGHT_PX)
    pil = Image.fromarray(u8, mode="L").resize(size, Image.Resampling.BILINEAR).convert("RGB")
    if st.overlay:
        draw = ImageDraw.Draw(pil)
        colour = GRADE_COLOURS.get(f.grade, GRADE_COLOURS[3])
        cx, cy = (f.centre_zyx[2] + dx / 2) * scale, (f.centre_zyx[1] + dy / 2) * scale
        r = 10
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=2)
        draw.text((6, 4), f"{f.label}  slice {k + 1}/{prepared.shape[0]}",
                  fill=colour, font=_font(13))
    return to_png(pil)
