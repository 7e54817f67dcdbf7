"""Render the key image of a screened series: the curved mid-sagittal reformat in a bone window,
bodies outlined and coloured by Genant grade, level names, grades and Ha/Hm/Hp.

No patient identifier, UID or date is ever drawn: the image carries only anatomy, levels and
measurements, so it can travel into audit packs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fracture_qi.screening.spine import SagittalReformat
from fracture_qi.screening.types import VertebraResult

#: outline colour by Genant grade: green, yellow, orange, red
GRADE_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (60, 200, 90),
    1: (240, 220, 40),
    2: (255, 140, 0),
    3: (230, 30, 30),
}
#: bone window (centre, width) in HU
BONE_WINDOW = (400.0, 1800.0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def render_keyimage(
    reformat: SagittalReformat,
    vertebrae: Sequence[VertebraResult],
    scale: float = 2.0,
    window: tuple[float, float] = BONE_WINDOW,
    title: str | None = None,
) -> np.ndarray:
    """Draw the key image.

    Parameters
    ----------
    reformat
        The curved mid-sagittal reformat (row 0 inferior).
    vertebrae
        Results whose ``geometry`` holds ``outline_zy_mm`` and ``points_zy_mm`` (grid mm).
    scale
        Output pixels per mm.
    window
        Display window (centre, width) in HU.
    title
        Optional line at the top (e.g. "flagged: L1 grade 2"); never an identifier.

    Returns
    -------
    numpy.ndarray
        RGB ``uint8`` array ``(H, W, 3)``, head up, anterior on the left.

    Examples
    --------
    >>> import numpy as np
    >>> from fracture_qi.screening.spine import SagittalReformat
    >>> r = SagittalReformat(np.zeros((50, 40), np.float32), np.arange(50.0), np.arange(40.0), np.zeros(50))
    >>> render_keyimage(r, []).shape
    (100, 80, 3)
    """
    c, w = window
    img = np.clip((reformat.image - (c - w / 2)) / w, 0.0, 1.0)
    img = (img[::-1] * 255).astype(np.uint8)  # head up
    h0, w0 = img.shape
    H, W = max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale)))
    pil = Image.fromarray(img, mode="L").resize((W, H), Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(pil)
    z0, dzs = float(reformat.z_mm[0]), float(reformat.z_mm[1] - reformat.z_mm[0]) if len(reformat.z_mm) > 1 else 1.0
    y0, dys = float(reformat.y_mm[0]), float(reformat.y_mm[1] - reformat.y_mm[0]) if len(reformat.y_mm) > 1 else 1.0

    def to_px(z: float, y: float) -> tuple[float, float]:
        col = (y - y0) / dys * scale
        row = (h0 - 1 - (z - z0) / dzs) * scale
        return col, row

    font = _font(max(10, int(6 * scale)))
    for v in vertebrae:
        g = v.geometry or {}
        colour = GRADE_COLOURS.get(int(v.genant_grade), (200, 200, 200))
        outline = g.get("outline_zy_mm")
        if outline:
            pts = [to_px(z, y) for z, y in outline]
            draw.line(pts + [pts[0]], fill=colour, width=max(1, int(scale)))
        points = g.get("points_zy_mm")
        if points and len(points) == 6:
            for k in range(3):
                a, b = to_px(*points[k]), to_px(*points[k + 3])
                draw.line([a, b], fill=colour, width=1)
        centre = g.get("centre_zyx_mm")
        if centre:
            # label to the posterior side (right of the image), clear of the body
            cx, cy = to_px(centre[0], centre[1] + 0.5 * float(g.get("depth_mm") or 30.0) + 22.0)
            name = v.level or "?"
            if v.ha_mm is not None and v.hm_mm is not None and v.hp_mm is not None:
                text = f"{name} G{v.genant_grade}\n{v.ha_mm:.0f}/{v.hm_mm:.0f}/{v.hp_mm:.0f}"
            else:
                text = f"{name}"
            draw.multiline_text((cx, cy - 6 * scale), text, fill=colour, font=font, spacing=1)
    if title:
        # one clause per line: a narrow reformat cannot hold the whole title on one
        draw.multiline_text((4, 4), title.replace(" | ", "\n"), fill=(255, 255, 255), font=font, spacing=1)
    draw.text((4, H - 8 * scale - 4), "A", fill=(255, 255, 255), font=font)
    draw.text((W - 6 * scale - 4, H - 8 * scale - 4), "P", fill=(255, 255, 255), font=font)
    return np.asarray(pil, dtype=np.uint8)
