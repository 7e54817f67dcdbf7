"""Accuracy of the reference screener on held-out synthetic patients built on real anatomy.

Usage::

    .venv/bin/python benchmarks/accuracy.py --patients 40 --seed 2027 [--full] [--out FILE.json]
    .venv/bin/python benchmarks/accuracy.py --phantom ...     # the geometric block phantom

Each patient is one of the real base scans of the synthetic cohort (the chest CT lidc0001,
T1-L2; the TotalSegmentator abdomen, T12-sacrum; or both joined, chest-abdomen-pelvis),
changed by ``fracture_qi.synth.realct`` (size, curvature, bone density, contrast phase) and
rendered as a thin bone-kernel series with noise, as ``fracture-qi synth`` writes it. Half
the patients carry 1-2 planted fractures at levels their field of view holds (random type
and grade), the rest follow the cohort's priors. Per-vertebra sensitivity by true grade,
per-vertebra and per-study specificity, exact level labelling and the median height error,
matched by body centre (within 12 mm along z). ``--full`` renders 512 x 512 (0.7-0.9 mm
pixels; the default is the demo's 256 x 256); slices are the base scans' own (2.5 mm chest,
3 mm abdomen).

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

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.screening.reference import ReferenceScreener
from fracture_qi.synth.phantom import add_noise, make_spine_volume, random_patient_spec

#: levels safely inside each field of view, for planted fractures (block phantom)
FOV_LEVELS = {
    "chest": [f"T{i}" for i in range(4, 12)],
    "abdomen_pelvis": ["L1", "L2", "L3", "L4"],
    "cap": [f"T{i}" for i in range(4, 13)] + ["L1", "L2", "L3", "L4"],
}


#: bodies closer than this (mm) to the first or last slice are not assessable
EDGE_MARGIN_MM = 2.0
#: real anatomy: the levels each base holds whole, for planted fractures (T4 down: T1-T3 are
#: not screened and rarely fracture, ANATOMY 4b)
REAL_LEVELS = {
    "chest": [f"T{i}" for i in range(4, 13)] + ["L1", "L2"],
    "abdomen_pelvis": ["L1", "L2", "L3", "L4", "L5"],
    "cap": [f"T{i}" for i in range(4, 13)] + ["L1", "L2", "L3", "L4", "L5"],
}
#: noise of the thin bone-kernel series (ANATOMY 5 at 1 mm, scaled to the slice), as synth
BONE_NOISE_SD_1MM = (40.0, 80.0)


def real_patient(rng: np.random.Generator, protocols: list[str], full: bool):  # type: ignore[no-untyped-def]
    """One synthetic patient on real anatomy as ``(CTVolume, truth, protocol)``."""
    from fracture_qi.synth.realct import render_study
    from fracture_qi.synth.realmaps import BASE_DZ, PROTOCOL_BASE, plan_coverage, study_grid
    from fracture_qi.synth.realpatient import random_real_patient
    from fracture_qi.synth.realtruth import study_truth
    from fracture_qi.synth.writer import apply_kernel

    fov = str(rng.choice(protocols))
    base = PROTOCOL_BASE[fov]
    fractures = None
    if rng.random() < 0.5:
        n = 1 + int(rng.random() < 0.3)
        chosen = rng.choice(REAL_LEVELS[fov], size=n, replace=False)
        fractures = [(str(lv), str(rng.choice(["wedge", "biconcave", "crush"])), int(rng.integers(1, 4)))
                     for lv in chosen]
    p = random_real_patient(rng, age=float(rng.uniform(55, 90)), sex=str(rng.choice(["F", "M"])),
                            fractures=fractures)
    phase = str(rng.choice(["none", "arterial", "portal_venous"]))
    lo, hi = plan_coverage(p, fov, rng)
    matrix = 512 if full else 256
    grid = study_grid(p, base, (lo, hi), BASE_DZ[base], matrix, float(np.clip(360 * p.size_xy, 330, 420)))
    hu, _ = render_study(p, base, grid, phase, fast=not full)
    apply_kernel(hu, "bone")
    add_noise(hu, float(rng.uniform(*BONE_NOISE_SD_1MM)) / np.sqrt(grid.spacing[0]), rng, sharp=True)
    truth = study_truth(p, base, grid, phase)
    truth = truth[truth["in_view"]].reset_index(drop=True)
    vol = CTVolume(hu=hu, spacing=grid.spacing, origin=grid.origin, meta={"synthetic": True})
    return vol, truth, fov


def edge_margin(row, z0: float, z1: float) -> float:  # type: ignore[no-untyped-def]
    """Distance (mm) from a truth body's z extent to the nearer end of the scan, the extent
    from its tallest column, depth and width tilted as the truth table says."""
    sag, cor = np.radians(row.tilt_sagittal_deg), np.radians(row.tilt_coronal_deg)
    h = max(row.ha_mm, row.hm_mm, row.hp_mm)
    ext = abs(np.cos(sag) * np.cos(cor)) * h / 2 + abs(np.sin(sag)) * row.depth_mm / 2 + abs(np.sin(cor)) * row.width_mm / 2
    return float(min(row.centre_z_mm - ext - z0, z1 - (row.centre_z_mm + ext)))


class Tally:
    """Counts for every screened patient (see the module docstring for what counts)."""

    def __init__(self, flag_grade: int) -> None:
        self.flag_grade = flag_grade
        self.tp = {1: 0, 2: 0, 3: 0}
        self.pos = {1: 0, 2: 0, 3: 0}
        self.tp_edge = {1: 0, 2: 0, 3: 0}  # the bodies within the edge margin, counted apart
        self.pos_edge = {1: 0, 2: 0, 3: 0}
        self.set_aside = 0
        self.tn = self.neg = 0
        self.lab_ok = self.lab_n = self.lab_none = 0
        self.herr: list[float] = []
        self.normal_red: list[float] = []  # largest reduction of each unfractured body found
        self.conf = np.zeros((4, 4), dtype=int)  # true grade x found grade (matched bodies)
        self.missed: list[str] = []
        self.by_fov: dict[str, list[int]] = {}  # fov -> [exact, empty, matched]
        self.st_tn = self.st_neg = 0
        self.patients = 0

    def score(self, vol, res, truth, fov: str) -> None:  # type: ignore[no-untyped-def]
        found = [v for v in res.vertebrae if v.geometry and v.geometry.get("centre_zyx_mm")]
        truth = truth[truth.fully_in_view.astype(bool)]
        z_first = float(vol.origin[2])
        z_last = z_first + (vol.shape[0] - 1) * float(vol.spacing[0])
        for _, row in truth.iterrows():
            z = row.centre_z_mm - vol.origin[2]
            near = [v for v in found if abs(v.geometry["centre_zyx_mm"][0] - z) < 12.0]
            g = int(row.genant_grade)
            hit = near[0] if near else None
            detected = hit is not None and hit.genant_grade >= 1
            if edge_margin(row, z_first, z_last) < EDGE_MARGIN_MM:
                self.set_aside += 1
                if g > 0:
                    self.pos_edge[g] += 1
                    self.tp_edge[g] += int(detected)
                continue
            if g > 0:
                self.pos[g] += 1
                self.tp[g] += int(detected)
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
                    self.missed.append(f"patient {self.patients} {fov} {row.level} {row.morph_type} g{g}: {what}")
            else:
                self.neg += 1
                self.tn += int(not detected)
            if hit is not None:
                self.lab_n += 1
                self.lab_ok += int(hit.level == row.level)
                self.lab_none += int(hit.level is None)
                f = self.by_fov.setdefault(fov, [0, 0, 0])
                f[0] += int(hit.level == row.level)
                f[1] += int(hit.level is None)
                f[2] += 1
                self.conf[g, int(hit.genant_grade)] += 1
                red = (hit.geometry or {}).get("reductions")
                if g == 0 and red:
                    self.normal_red.append(max(red.values()))
                if hit.ha_mm is not None and g == 0:
                    self.herr += [abs(hit.ha_mm - row.ha_mm), abs(hit.hm_mm - row.hm_mm),
                                  abs(hit.hp_mm - row.hp_mm)]
        if (int(truth.genant_grade.max()) if len(truth) else 0) < self.flag_grade:
            self.st_neg += 1
            self.st_tn += int(not res.flagged)
        self.patients += 1

    def summary(self) -> dict:  # type: ignore[type-arg]
        tp, pos, tp_edge, pos_edge = self.tp, self.pos, self.tp_edge, self.pos_edge
        return {
            "sensitivity_by_grade": {g: (tp[g] / pos[g] if pos[g] else None) for g in (1, 2, 3)},
            "positives_by_grade": pos,
            "edge_margin_mm": EDGE_MARGIN_MM,
            "bodies_set_aside_at_the_edge": self.set_aside,
            "fractures_set_aside_at_the_edge": {g: f"{tp_edge[g]}/{pos_edge[g]}" for g in (1, 2, 3)},
            "sensitivity_by_grade_incl_edge": {
                g: ((tp[g] + tp_edge[g]) / (pos[g] + pos_edge[g]) if pos[g] + pos_edge[g] else None)
                for g in (1, 2, 3)
            },
            "vertebra_specificity": self.tn / self.neg if self.neg else None,
            "vertebrae_unfractured": self.neg,
            "study_specificity": self.st_tn / self.st_neg if self.st_neg else None,
            "studies_negative": self.st_neg,
            "level_exact": self.lab_ok / self.lab_n if self.lab_n else None,
            "level_empty": self.lab_none / self.lab_n if self.lab_n else None,
            "bodies_matched": self.lab_n,
            "level_exact_empty_by_fov": {
                k: [round(v[0] / v[2], 3), round(v[1] / v[2], 3), v[2]] for k, v in self.by_fov.items() if v[2]
            },
            "grade_confusion_true_by_found": self.conf.tolist(),
            "missed": self.missed,
            "normal_reduction_p99_max": (
                [round(float(np.percentile(self.normal_red, 99)), 3), round(float(max(self.normal_red)), 3)]
                if self.normal_red else None
            ),
            "height_error_median_mm": float(np.median(self.herr)) if self.herr else None,
        }


def phantom_patient(rng: np.random.Generator, full: bool):  # type: ignore[no-untyped-def]
    """One block-phantom patient as ``(CTVolume, truth, protocol)`` (the previous benchmark)."""
    fov = str(rng.choice(["cap", "abdomen_pelvis", "chest"]))
    # half the patients carry 1-2 planted fractures at levels their field of view holds,
    # so that every grade and type is represented; the rest follow the cohort priors
    fractures = None
    if rng.random() < 0.5:
        n = 1 + int(rng.random() < 0.3)
        chosen = rng.choice(FOV_LEVELS[fov], size=n, replace=False)
        fractures = [
            (str(lv), str(rng.choice(["wedge", "biconcave", "crush"])), int(rng.integers(1, 4)))
            for lv in chosen
        ]
    spec = random_patient_spec(
        rng, age=float(rng.uniform(55, 90)), sex=str(rng.choice(["F", "M"])), fractures=fractures
    )
    if full:
        shape, spacing = (400, 512, 512), (1.0, 0.78, 0.78)
    else:
        shape, spacing = (260, 256, 256), (1.5, 1.5, 1.5)
    vol, truth = make_spine_volume(spec, fov=fov, shape=shape, spacing=spacing, rng=rng, noise_sd=20)
    return vol, truth, fov


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2027, help="held-out seed (not used in tests)")
    ap.add_argument("--full", action="store_true",
                    help="512x512 (real anatomy; block phantom: 512x512x400 at 1 mm)")
    ap.add_argument("--phantom", action="store_true", help="the geometric block phantom, not real CT")
    ap.add_argument("--flag-grade", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    model = ReferenceScreener(device="auto", flag_grade=args.flag_grade, keyimage=False)
    tally = Tally(args.flag_grade)
    secs = []
    protocols = ["cap", "abdomen_pelvis", "chest"]
    note = ""
    if not args.phantom:
        from fracture_qi.synth.cohort import resolve_anatomy

        bases, note = resolve_anatomy("real", fetch=True, progress=True)
        if note:
            print(f"note: {note}")
        if "chest" not in bases:
            protocols = ["abdomen_pelvis"]
    for _ in tqdm(range(args.patients), desc="patients"):
        if args.phantom:
            vol, truth, fov = phantom_patient(rng, args.full)
        else:
            vol, truth, fov = real_patient(rng, protocols, args.full)
        t0 = time.perf_counter()
        res = model.screen(vol)
        secs.append(time.perf_counter() - t0)
        tally.score(vol, res, truth, fov)
    if args.phantom:
        grid = "block phantom, " + ("512x512x400 @ 1 mm" if args.full else "256x256x260 @ 1.5 mm")
    else:
        grid = ("real anatomy (" + ", ".join(protocols) + "), "
                + ("512x512" if args.full else "256x256") + ", 2.5 mm chest / 3 mm abdomen")
    out = {
        "patients": args.patients,
        "seed": args.seed,
        "grid": grid,
        "model": f"{getattr(model, 'model_id', 'fqi-reference')} {model.model_version}",
        "anatomy_note": note,
        **tally.summary(),
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
