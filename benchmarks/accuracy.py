"""Accuracy of the reference screener on held-out synthetic patients (issue 3, accuracy section).

Usage::

    .venv/bin/python benchmarks/accuracy.py --patients 20 --seed 2027 [--full] [--out FILE.json]

Per-vertebra sensitivity by true grade, per-vertebra and per-study specificity, exact level
labelling and the median height error, matched by body centre (within 12 mm along z).
``--full`` uses 512x512 x 1 mm slices (slow on CPU); the default grid is 256x256 at 1.5 mm.

Which bodies count: every body the truth calls fully in view, except those whose extent comes
within ``EDGE_MARGIN_MM`` of the first or last slice. An endplate on the last slice has no disc
beyond it to show where it ends; the screener reports such a body as cut by the view (named,
not graded), as a reader would. The JSON gives the sensitivity over all fully-in-view bodies
too (``sensitivity_by_grade_incl_edge``) and how many bodies the margin set aside.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from tqdm.auto import tqdm

from fracture_qi.screening.reference import ReferenceScreener
from fracture_qi.synth.phantom import make_spine_volume, random_patient_spec

#: levels safely inside each field of view, for planted fractures
FOV_LEVELS = {
    "chest": [f"T{i}" for i in range(4, 12)],
    "abdomen_pelvis": ["L1", "L2", "L3", "L4"],
    "cap": [f"T{i}" for i in range(4, 13)] + ["L1", "L2", "L3", "L4"],
}


#: bodies closer than this (mm) to the first or last slice are not assessable
EDGE_MARGIN_MM = 2.0


def edge_margin(row, z0: float, z1: float) -> float:  # type: ignore[no-untyped-def]
    """Distance (mm) from a truth body's z extent to the nearer end of the scan, the extent
    from its tallest column, depth and width tilted as the truth table says."""
    sag, cor = np.radians(row.tilt_sagittal_deg), np.radians(row.tilt_coronal_deg)
    h = max(row.ha_mm, row.hm_mm, row.hp_mm)
    ext = abs(np.cos(sag) * np.cos(cor)) * h / 2 + abs(np.sin(sag)) * row.depth_mm / 2 + abs(np.sin(cor)) * row.width_mm / 2
    return float(min(row.centre_z_mm - ext - z0, z1 - (row.centre_z_mm + ext)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2027, help="held-out seed (not used in tests)")
    ap.add_argument("--full", action="store_true", help="512x512, 1 mm slices")
    ap.add_argument("--flag-grade", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    model = ReferenceScreener(device="auto", flag_grade=args.flag_grade, keyimage=False)
    tp = {1: 0, 2: 0, 3: 0}
    pos = {1: 0, 2: 0, 3: 0}
    tp_edge = {1: 0, 2: 0, 3: 0}  # the bodies within the edge margin, counted apart
    pos_edge = {1: 0, 2: 0, 3: 0}
    set_aside = 0
    tn = neg = 0
    lab_ok = lab_n = 0
    herr: list[float] = []
    normal_red: list[float] = []  # largest reduction of each unfractured body found
    lab_none = 0
    conf = np.zeros((4, 4), dtype=int)  # true grade x found grade (unmatched bodies not counted)
    missed: list[str] = []
    by_fov: dict[str, list[int]] = {}  # fov -> [exact, empty, matched]
    st_tn = st_neg = 0
    secs = []
    for _ in tqdm(range(args.patients), desc="patients"):
        fov = str(rng.choice(["cap", "abdomen_pelvis", "chest"]))
        # half the patients carry 1-2 planted fractures at levels their field of view holds,
        # so that every grade and type is represented; the rest follow the cohort priors
        fractures = None
        if rng.random() < 0.5:
            levels = FOV_LEVELS[fov]
            n = 1 + int(rng.random() < 0.3)
            chosen = rng.choice(levels, size=n, replace=False)
            fractures = [
                (str(lv), str(rng.choice(["wedge", "biconcave", "crush"])), int(rng.integers(1, 4)))
                for lv in chosen
            ]
        spec = random_patient_spec(
            rng, age=float(rng.uniform(55, 90)), sex=str(rng.choice(["F", "M"])), fractures=fractures
        )
        if args.full:
            shape, spacing = (400, 512, 512), (1.0, 0.78, 0.78)
        else:
            shape, spacing = (260, 256, 256), (1.5, 1.5, 1.5)
        vol, truth = make_spine_volume(spec, fov=fov, shape=shape, spacing=spacing, rng=rng, noise_sd=20)
        t0 = time.perf_counter()
        res = model.screen(vol)
        secs.append(time.perf_counter() - t0)
        found = [v for v in res.vertebrae if v.geometry and v.geometry.get("centre_zyx_mm")]
        truth = truth[truth.fully_in_view]
        z_first = float(vol.origin[2])
        z_last = z_first + (vol.shape[0] - 1) * float(vol.spacing[0])
        for _, row in truth.iterrows():
            z = row.centre_z_mm - vol.origin[2]
            near = [v for v in found if abs(v.geometry["centre_zyx_mm"][0] - z) < 12.0]
            g = int(row.genant_grade)
            hit = near[0] if near else None
            detected = hit is not None and hit.genant_grade >= 1
            if edge_margin(row, z_first, z_last) < EDGE_MARGIN_MM:
                set_aside += 1
                if g > 0:
                    pos_edge[g] += 1
                    tp_edge[g] += int(detected)
                continue
            if g > 0:
                pos[g] += 1
                tp[g] += int(detected)
                if not detected:
                    what = "not found" if hit is None else f"grade {hit.genant_grade}"
                    if hit is not None:
                        # what was measured against the truth, to tell a missed body from a
                        # mis-measured one
                        red = (hit.geometry or {}).get("reductions")
                        what += (
                            f" (found {hit.level} Ha/Hm/Hp {hit.ha_mm}/{hit.hm_mm}/{hit.hp_mm}, true "
                            f"{row.ha_mm:.1f}/{row.hm_mm:.1f}/{row.hp_mm:.1f}, reductions {red})"
                        )
                    missed.append(f"patient {len(secs) - 1} {fov} {row.level} {row.morph_type} g{g}: {what}")
            else:
                neg += 1
                tn += int(not detected)
            if hit is not None:
                lab_n += 1
                lab_ok += int(hit.level == row.level)
                lab_none += int(hit.level is None)
                f = by_fov.setdefault(fov, [0, 0, 0])
                f[0] += int(hit.level == row.level)
                f[1] += int(hit.level is None)
                f[2] += 1
                conf[g, int(hit.genant_grade)] += 1
                red = (hit.geometry or {}).get("reductions")
                if g == 0 and red:
                    normal_red.append(max(red.values()))
                if hit.ha_mm is not None and g == 0:
                    herr += [abs(hit.ha_mm - row.ha_mm), abs(hit.hm_mm - row.hm_mm), abs(hit.hp_mm - row.hp_mm)]
        if (int(truth.genant_grade.max()) if len(truth) else 0) < args.flag_grade:
            st_neg += 1
            st_tn += int(not res.flagged)
    out = {
        "patients": args.patients,
        "seed": args.seed,
        "grid": "512x512x400 @ 1 mm" if args.full else "256x256x260 @ 1.5 mm",
        "sensitivity_by_grade": {g: (tp[g] / pos[g] if pos[g] else None) for g in (1, 2, 3)},
        "positives_by_grade": pos,
        "edge_margin_mm": EDGE_MARGIN_MM,
        "bodies_set_aside_at_the_edge": set_aside,
        "fractures_set_aside_at_the_edge": {g: f"{tp_edge[g]}/{pos_edge[g]}" for g in (1, 2, 3)},
        "sensitivity_by_grade_incl_edge": {
            g: ((tp[g] + tp_edge[g]) / (pos[g] + pos_edge[g]) if pos[g] + pos_edge[g] else None) for g in (1, 2, 3)
        },
        "vertebra_specificity": tn / neg if neg else None,
        "study_specificity": st_tn / st_neg if st_neg else None,
        "level_exact": lab_ok / lab_n if lab_n else None,
        "level_empty": lab_none / lab_n if lab_n else None,
        "level_exact_empty_by_fov": {
            k: [round(v[0] / v[2], 3), round(v[1] / v[2], 3), v[2]] for k, v in by_fov.items() if v[2]
        },
        "grade_confusion_true_by_found": conf.tolist(),
        "missed": missed,
        "normal_reduction_p99_max": (
            [round(float(np.percentile(normal_red, 99)), 3), round(float(max(normal_red)), 3)] if normal_red else None
        ),
        "height_error_median_mm": float(np.median(herr)) if herr else None,
        "seconds_per_series_median": float(np.median(secs)),
    }
    text = json.dumps(out, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
