"""Mid-sagittal pictures of synthetic patients for the docs (``docs/images/``).

Run ``python -m fracture_qi.synth.figures docs/images`` to regenerate them. Pictures show
bone-window mid-sagittal reformats labelled with level names, the planted grade and shape;
no identifier of any kind (the patients are synthetic anyway).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.synth.phantom import (
    PatientSpec,
    add_noise,
    default_grid,
    random_patient_spec,
    render,
)
from fracture_qi.synth.spine import Grid

log = logging.getLogger(__name__)

BONE_WINDOW = (-450.0, 1050.0)  # level 300, width 1500


def mid_sagittal_volume(
    spec: PatientSpec,
    z_range: tuple[float, float],
    pixel: float = 0.5,
    noise_sd: float = 45.0,
    seed: int = 0,
    contrast: str = "none",
) -> CTVolume:
    """Render a thin slab (3 columns) through the spine's mean x, at *pixel* mm in z and y.

    Cheap: the torso painter and the vertebra boxes only touch the slab's voxels.
    """
    lay = spec.layout()
    zs = np.linspace(z_range[0], z_range[1], 20)
    x_mid = float(np.mean(lay.at_z(zs)[0]))
    nz = int(round((z_range[1] - z_range[0]) / pixel)) + 1
    base = default_grid(
        spec, "cap", (nz, int(round(330 / pixel)), 3), (pixel, pixel, pixel), z_range
    )
    grid = Grid(
        origin=(x_mid - pixel, base.origin[1], base.origin[2]),
        spacing=base.spacing,
        shape=base.shape,
    )
    hu = render(spec, "cap", grid, contrast)
    # bone-kernel noise, made in a wider array so the correlated texture is right
    add_noise(hu, noise_sd, np.random.default_rng(seed), sharp=True)
    return CTVolume(hu=hu, spacing=grid.spacing, origin=grid.origin)


def _save(fig, path: Path, dpi: int) -> None:
    """Save as a palette PNG (grey images compress far better than RGBA): docs stay small."""
    from PIL import Image

    fig.savefig(path, dpi=dpi)
    with Image.open(path) as im:
        q = im.convert("RGB").quantize(
            colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    q.save(path, optimize=True)


def _panel(
    ax,
    vol: CTVolume,
    spec: PatientSpec,
    levels: list[str],
    title: str,
    y_crop: tuple[float, float] | None,
) -> None:
    img = vol.hu[::-1, :, vol.hu.shape[2] // 2].astype(np.float32)
    dz, dy, _ = vol.spacing
    _, oy, oz = vol.origin
    z_top = oz + (vol.hu.shape[0] - 1) * dz
    extent = (oy, oy + img.shape[1] * dy, oz, z_top)
    ax.imshow(
        img,
        cmap="gray",
        vmin=BONE_WINDOW[0],
        vmax=BONE_WINDOW[1],
        extent=extent,
        interpolation="bilinear",
    )
    lay = spec.layout()
    for lv in levels:
        p = lay.placements[lv]
        if oz <= p.centre[2] <= z_top:
            v = spec.vertebrae[lv]
            label = lv + (f" G{v.genant_grade}" if v.fractured else "")
            ax.text(
                p.centre[1] - v.depth / 2 - 6,
                p.centre[2],
                label,
                color="yellow" if v.fractured else "white",
                fontsize=7,
                ha="right",
                va="center",
            )
    if y_crop:
        ax.set_xlim(*y_crop)
    ax.set_ylim(oz, z_top)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _fracture_patient(seed: int, level: str, morph: str, grade: int) -> PatientSpec:
    rng = np.random.default_rng(seed)
    age = float(rng.uniform(62, 88))
    sex = "F" if rng.random() < 0.65 else "M"
    spec = random_patient_spec(rng, age=age, sex=sex, fractures=[(level, morph, grade)])
    spec.scoliosis_cobb_deg = 0.0  # keep the whole column in one sagittal plane
    spec._layout = None
    return spec


def fracture_grid(morph: str, path: Path, seed: int = 11) -> Path:
    """3 x 3 grid: rows are three patients (fracture at T7, T12, L2), columns grades 1-3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fracture_qi.synth.priors import SPINE_LEVELS

    levels_rows = ["T7", "T12", "L2"]
    fig, axes = plt.subplots(3, 3, figsize=(7.5, 9.0))
    for r, level in enumerate(levels_rows):
        for c, grade in enumerate((1, 2, 3)):
            spec = _fracture_patient(seed + 10 * r, level, morph, grade)
            lay = spec.layout()
            zc = lay.level_z(level)
            vol = mid_sagittal_volume(spec, (zc - 62, zc + 62), seed=seed + r + c)
            v = spec.vertebrae[level]
            y0 = lay.placements[level].centre[1]
            title = f"{morph} grade {grade} at {level} (loss {100 * v.loss:.0f}%)"
            _panel(axes[r, c], vol, spec, list(SPINE_LEVELS), title, (y0 - 45, y0 + 80))
    fig.suptitle(
        f"Synthetic CT, mid-sagittal bone window: {morph} fractures (Genant grades 1-3)", fontsize=9
    )
    fig.tight_layout()
    _save(fig, path, 90)
    plt.close(fig)
    return path


def normal_spine(path: Path, seed: int = 4) -> Path:
    """Whole thoraco-lumbar spine of a patient without fracture, with a soft-tissue view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fracture_qi.synth.priors import SPINE_LEVELS

    rng = np.random.default_rng(seed)
    spec = random_patient_spec(rng, age=58, sex="F", fractures=[], bmd_l1_hu=150.0)
    spec.scoliosis_cobb_deg = 0.0
    spec._layout = None
    lay = spec.layout()
    z_lo = lay.sacrum[-1].centre[2] - 30
    z_hi = lay.level_z("T1") + 30
    vol = mid_sagittal_volume(spec, (z_lo, z_hi), pixel=0.7, seed=seed, contrast="portal_venous")
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 9.0))
    y0 = lay.placements["T12"].centre[1]
    _panel(
        axes[0],
        vol,
        spec,
        list(SPINE_LEVELS),
        "no fracture: bone window (L300/W1500)",
        (y0 - 90, y0 + 95),
    )
    img = vol.hu[::-1, :, 1].astype(np.float32)
    dz, dy, _ = vol.spacing
    _, oy, oz = vol.origin
    axes[1].imshow(
        img,
        cmap="gray",
        vmin=-160,
        vmax=240,
        extent=(oy, oy + img.shape[1] * dy, oz, oz + img.shape[0] * dz),
    )
    axes[1].set_title("same plane, soft-tissue window (L40/W400)", fontsize=8)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.suptitle("Synthetic CT chest-abdomen-pelvis, mid-sagittal (age 58, L1 150 HU)", fontsize=9)
    fig.tight_layout()
    _save(fig, path, 90)
    plt.close(fig)
    return path


def axial_montage(path: Path, seed: int = 5) -> Path:
    """Axial slices at six levels of one patient (soft-tissue window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    spec = random_patient_spec(rng, age=71, sex="M", fractures=[("L1", "wedge", 2)])
    lay = spec.layout()
    levels = ["T4", "T8", "T11", "L1", "L4", "S3"]
    fig, axes = plt.subplots(2, 3, figsize=(9.0, 6.4))
    for ax, lv in zip(axes.flat, levels):
        z = lay.level_z(lv)
        grid0 = default_grid(spec, "cap", (1, 512, 512), (1.0, 0.8, 0.8), (z, z))
        hu = render(spec, "cap", grid0, "portal_venous")
        add_noise(hu, 12.0, np.random.default_rng(1))
        ax.imshow(hu[0], cmap="gray", vmin=-160, vmax=240)
        ax.set_title(f"axial at {lv}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Synthetic CT, axial slices (soft-tissue window, portal venous contrast)", fontsize=9
    )
    fig.tight_layout()
    _save(fig, path, 80)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write every docs picture into the folder given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "docs/images")
    out.mkdir(parents=True, exist_ok=True)
    normal_spine(out / "synth-normal-spine.png")
    axial_montage(out / "synth-axial-levels.png")
    for morph in ("wedge", "biconcave", "crush"):
        fracture_grid(morph, out / f"synth-{morph}-grades.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
