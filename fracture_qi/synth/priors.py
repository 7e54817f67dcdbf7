"""Numbers the synthetic cohort is drawn from, each with its ANATOMY.md source key.

Everything here is a prior for *synthetic* data: rounded, sometimes ``[estimate]`` in
``../shared/docs/ANATOMY.md``. Keeping the numbers in one module lets the docs, the
generator and the tests agree on them.
"""

from __future__ import annotations

from typing import Final

#: levels the phantom builds, cranial to caudal (the sacrum is drawn separately)
SPINE_LEVELS: Final[tuple[str, ...]] = tuple(
    [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
)

#: ANATOMY 1a: pooled adult body dimensions, mm: (Ha, Hm, Hp, AP depth, width)
BODY_DIMS: Final[dict[str, tuple[float, float, float, float, float]]] = {
    "T1": (14.0, 13.0, 14.5, 16.0, 27.0),
    "T2": (15.0, 14.0, 16.0, 17.0, 27.0),
    "T3": (15.5, 14.5, 16.5, 18.0, 27.0),
    "T4": (16.0, 15.0, 17.0, 20.0, 27.0),
    "T5": (16.0, 15.5, 17.5, 22.0, 28.0),
    "T6": (16.5, 16.0, 18.5, 24.0, 29.0),
    "T7": (17.0, 16.5, 19.0, 25.0, 30.0),
    "T8": (17.5, 17.0, 19.5, 26.0, 31.0),
    "T9": (18.5, 18.0, 20.5, 27.0, 33.0),
    "T10": (19.5, 19.0, 21.5, 28.0, 35.0),
    "T11": (21.0, 20.5, 23.0, 29.5, 38.0),
    "T12": (22.5, 22.0, 24.5, 31.0, 40.0),
    "L1": (24.5, 23.5, 26.5, 33.0, 42.0),
    "L2": (25.5, 24.0, 27.0, 34.0, 44.0),
    "L3": (26.5, 24.5, 27.0, 35.0, 46.0),
    "L4": (26.5, 24.0, 26.5, 35.0, 48.0),
    "L5": (29.5, 25.0, 26.0, 35.0, 50.0),
}

#: ANATOMY 1d: normal Ha/Hp and Hm/Hp (mean, SD); T1-T3 borrowed from T4 [estimate].
#: Women's values; men subtract 0.015 (Ha/Hp) and 0.005 (Hm/Hp) [SKR98].
HEIGHT_RATIOS: Final[dict[str, tuple[float, float, float, float]]] = {
    "T1": (0.96, 0.04, 0.92, 0.04),
    "T2": (0.94, 0.04, 0.91, 0.04),
    "T3": (0.93, 0.05, 0.91, 0.05),
    "T4": (0.92, 0.05, 0.91, 0.05),
    "T5": (0.90, 0.05, 0.89, 0.05),
    "T6": (0.88, 0.06, 0.88, 0.05),
    "T7": (0.87, 0.06, 0.87, 0.05),
    "T8": (0.87, 0.06, 0.87, 0.05),
    "T9": (0.89, 0.06, 0.88, 0.05),
    "T10": (0.91, 0.05, 0.89, 0.05),
    "T11": (0.91, 0.05, 0.89, 0.05),
    "T12": (0.91, 0.05, 0.89, 0.05),
    "L1": (0.92, 0.05, 0.88, 0.05),
    "L2": (0.95, 0.05, 0.88, 0.05),
    "L3": (0.98, 0.05, 0.88, 0.05),
    "L4": (1.00, 0.06, 0.89, 0.05),
    "L5": (1.15, 0.07, 0.88, 0.06),
}

#: ANATOMY 1f phantom default mid-disc heights (mm), disc *below* each level
DISC_BELOW: Final[dict[str, float]] = {
    "T1": 4.0,
    "T2": 4.0,
    "T3": 4.0,
    "T4": 4.0,
    "T5": 4.0,
    "T6": 5.0,
    "T7": 5.0,
    "T8": 5.0,
    "T9": 5.0,
    "T10": 5.0,
    "T11": 6.0,
    "T12": 6.0,
    "L1": 8.0,
    "L2": 9.0,
    "L3": 10.0,
    "L4": 11.0,
    "L5": 10.0,
}

#: ANATOMY 1b phantom rule: women relative to men
FEMALE_HEIGHT_FACTOR: Final[float] = 0.935
FEMALE_WIDTH_FACTOR: Final[float] = 0.90

#: ANATOMY 3a: L1 trabecular HU falls 2.5 HU/year from ~226 HU at age 25 [JANG19]
L1_HU_AT_25: Final[float] = 226.0
L1_HU_SLOPE_PER_YEAR: Final[float] = -2.5
L1_HU_SD: Final[float] = 40.0
#: patients with a prevalent fracture have lower density (QCT 56 vs 91 mg/cm3) [FLSQCT20]
L1_HU_FRACTURE_SHIFT: Final[float] = -30.0
#: trabecular HU relative to L1 by level: L1 highest, falls caudally [HEND18] [estimate]
LEVEL_HU_OFFSET: Final[dict[str, float]] = {
    **{f"T{i}": 6.0 - 0.3 * i for i in range(1, 13)},
    "L1": 0.0,
    "L2": -4.0,
    "L3": -9.0,
    "L4": -12.0,
    "L5": -15.0,
}
#: ANATOMY 3b phantom rule: contrast phase -> HU added to trabecular bone
CONTRAST_BONE_HU: Final[dict[str, tuple[float, float]]] = {
    "none": (0.0, 0.0),
    "arterial": (10.0, 15.0),
    "portal_venous": (15.0, 20.0),
}

#: ANATOMY 4a: prevalence of >= 1 vertebral fracture by age band (lower bound, prevalence)
#: blended from EVOS/Tromso/RKEY so that the >= 50 mix averages ~20 % [estimate]
PREVALENCE_BY_AGE: Final[tuple[tuple[int, float], ...]] = (
    (30, 0.02),
    (50, 0.09),
    (60, 0.15),
    (70, 0.24),
    (80, 0.33),
)

#: ANATOMY 4b per-level share of prevalent fractures (T4-L5, %)
LEVEL_SHARE: Final[dict[str, float]] = {
    "T4": 2,
    "T5": 3,
    "T6": 6,
    "T7": 9,
    "T8": 10,
    "T9": 7,
    "T10": 5,
    "T11": 8,
    "T12": 15,
    "L1": 14,
    "L2": 8,
    "L3": 6,
    "L4": 5,
    "L5": 2,
}
#: ANATOMY 4b grade mix of prevalent fractures
GRADE_MIX: Final[dict[int, float]] = {1: 0.55, 2: 0.33, 3: 0.12}
#: ANATOMY 4b shape mix collapsed to the dominant shape (wedge / endplate / crush) [DEFDIST]
SHAPE_MIX: Final[dict[str, float]] = {"wedge": 0.55, "biconcave": 0.30, "crush": 0.15}
#: ANATOMY 4b ~30 % of fractured patients have >= 2 [TROMSO12]: P(n = 1, 2, 3)
N_FRACTURES_MIX: Final[dict[int, float]] = {1: 0.70, 2: 0.20, 3: 0.10}
#: ANATOMY 1e Genant bands; height loss is sampled strictly inside them (not on the edges)
GRADE_LOSS_BAND: Final[dict[int, tuple[float, float]]] = {
    1: (0.21, 0.24),
    2: (0.27, 0.38),
    3: (0.43, 0.58),
}

#: ANATOMY 4c synthetic "mentioned in the radiology report" prior by grade
P_REPORTED_BY_GRADE: Final[dict[int, float]] = {1: 0.1, 2: 0.5, 3: 0.7}


#: ANATOMY 2 supine priors (degrees): thoracic kyphosis T4-T12 and lumbar lordosis L1-S1
def kyphosis_prior(age: float) -> tuple[float, float]:
    """Mean and SD of supine thoracic kyphosis (T4-T12, degrees) at *age* (ANATOMY 2).

    Examples
    --------
    >>> kyphosis_prior(40)
    (30.0, 9.0)
    >>> kyphosis_prior(70)
    (40.0, 11.0)
    """
    if age < 50:
        return (30.0, 9.0)
    if age >= 65:
        return (40.0, 11.0)
    t = (age - 50.0) / 15.0  # linear bridge between the two published bands [estimate]
    return (30.0 + 10.0 * t, 9.0 + 2.0 * t)


LORDOSIS_PRIOR: Final[tuple[float, float]] = (40.0, 12.0)

#: ANATOMY 2 scoliosis prior (>= 65 y): P(lumbar Cobb in 0-9, 10-20, >20 degrees)
SCOLIOSIS_BANDS_OLD: Final[tuple[float, float, float]] = (0.65, 0.28, 0.07)
SCOLIOSIS_BANDS_YOUNG: Final[tuple[float, float, float]] = (0.90, 0.09, 0.01)

#: ANATOMY 3c tissue HU (unenhanced unless named)
HU: Final[dict[str, float]] = {
    "air": -1000.0,
    "gas": -950.0,
    "lung": -860.0,
    "fat": -95.0,
    "water": 0.0,
    "csf": 8.0,
    "cord": 32.0,
    "kidney": 30.0,
    "spleen": 45.0,
    "liver": 55.0,
    "blood": 45.0,
    "muscle": 45.0,
    "bowel_wall": 40.0,
    "bladder": 8.0,
    "disc": 85.0,
    "cortex": 1100.0,  # dense cortex; thin shells look 300-900 after partial volume
    "marrow": 220.0,  # ribs, pelvis, sacrum cancellous bone
    "brain": 34.0,
    "table_shell": 250.0,
    "table_core": -850.0,
}

#: ANATOMY 3c contrast-enhanced values by phase (blood pool, liver, kidney, spleen)
CONTRAST_HU: Final[dict[str, dict[str, float]]] = {
    "arterial": {"blood": 320.0, "liver": 75.0, "kidney": 180.0, "spleen": 110.0},
    "portal_venous": {"blood": 170.0, "liver": 110.0, "kidney": 160.0, "spleen": 115.0},
}

#: ANATOMY 5: image noise SD (HU) for 1 mm reference slices by kernel; scaled by
#: sqrt(1 mm / thickness) for other thicknesses
NOISE_SD_1MM: Final[dict[str, tuple[float, float]]] = {
    "soft": (20.0, 30.0),
    "bone": (40.0, 80.0),
}

#: ANATOMY 6: FLS timing priors (days from fracture identification)
FLS_ASSESSMENT = {"p": 0.85, "median": 45.0, "sigma": 0.75}
FLS_DXA = {"p": 0.75, "median": 70.0, "sigma": 0.8}
FLS_THERAPY_RECOMMENDED_P: Final[float] = 0.58
FLS_THERAPY_START = {"p": 0.70, "median": 95.0, "sigma": 0.5}
FLS_ADHERENT_52W_P: Final[float] = 0.47
FLS_DRUG_MIX: Final[dict[str, float]] = {
    "alendronate": 0.58,
    "risedronate": 0.08,
    "zoledronate": 0.15,
    "denosumab": 0.13,
    "teriparatide": 0.04,
    "romosozumab": 0.02,
}
