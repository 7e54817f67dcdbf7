"""Genant grading of measured bodies (no images needed: measurements are built by hand)."""

from __future__ import annotations

import pytest

from fracture_qi.screening.morphometry import (
    NORMAL_HA_HP,
    NORMAL_HM_HP,
    NORMAL_HP,
    BodyMeasurement,
    deformity_score,
    grade_bodies,
    grade_from_reduction,
)

LUMBAR = ["T11", "T12", "L1", "L2", "L3"]


def _normal(level: str, scale: float = 1.0) -> BodyMeasurement:
    hp = NORMAL_HP[level] * scale
    return BodyMeasurement(level=level, partial=False, ha=hp * NORMAL_HA_HP[level], hm=hp * NORMAL_HM_HP[level], hp=hp)


def _column(levels: list[str]) -> list[BodyMeasurement]:
    # caudal to cranial, as the screener orders them
    return [_normal(lv) for lv in reversed(levels)]


@pytest.mark.parametrize("red,grade", [(0.0, 0), (0.19, 0), (0.21, 1), (0.26, 2), (0.39, 2), (0.41, 3)])
def test_grade_cutoffs(red: float, grade: int) -> None:
    assert grade_from_reduction(red) == grade


def test_score_is_monotone() -> None:
    scores = [deformity_score(r) for r in (0.0, 0.1, 0.2, 0.3, 0.5)]
    assert scores == sorted(scores) and scores[0] < 0.01 and scores[-1] > 0.99


def test_normal_column_is_grade_0() -> None:
    out = grade_bodies(_column(["T6", "T7", "T8", "T9", "T10"] + LUMBAR + ["L4", "L5"]))
    assert all(d is not None and d.grade == 0 for d in out)


def test_physiological_midthoracic_wedge_not_flagged() -> None:
    # T7 at Ha/Hp 0.80 is ~1 SD below its level's normal 0.87: not a fracture
    meas = _column(["T5", "T6", "T7", "T8", "T9"])
    t7 = next(m for m in meas if m.level == "T7")
    t7.ha = t7.hp * 0.80  # type: ignore[operator]
    d = grade_bodies(meas)[meas.index(t7)]
    assert d is not None and d.grade == 0


def test_l5_is_not_graded_by_its_wedge_ratio_but_by_crush() -> None:
    meas = _column(["L3", "L4", "L5"])
    l5 = meas[0]
    assert l5.level == "L5"
    d = grade_bodies(meas)[0]
    assert d is not None and d.grade == 0
    l5.ha = l5.hp * 0.8  # a "forward wedge" L5: within its wide normal range, not graded
    d = grade_bodies(meas)[0]
    assert d is not None and d.grade == 0
    l5.ha, l5.hm, l5.hp = (h * 0.62 for h in (l5.hp * 1.15, l5.hp * 0.88, l5.hp))  # crushed
    d = grade_bodies(meas)[0]
    assert d is not None and d.grade == 2 and d.morph_type == "crush"


@pytest.mark.parametrize(
    "kind,loss,grade",
    [("wedge", 0.22, 1), ("wedge", 0.32, 2), ("biconcave", 0.30, 2), ("crush", 0.45, 3), ("crush", 0.30, 2)],
)
def test_planted_deformities(kind: str, loss: float, grade: int) -> None:
    meas = _column(LUMBAR)
    m = next(x for x in meas if x.level == "L1")
    if kind == "wedge":
        m.ha = m.ha * (1 - loss)  # type: ignore[operator]
    elif kind == "biconcave":
        m.hm = m.hm * (1 - loss)  # type: ignore[operator]
    else:  # the whole body lower than its neighbours
        m.ha, m.hm, m.hp = (h * (1 - loss) for h in (m.ha, m.hm, m.hp))  # type: ignore[operator]
    d = grade_bodies(meas)[meas.index(m)]
    assert d is not None
    assert d.grade == grade and d.morph_type == kind
    # neighbours stay normal even though a crushed body sits next to them
    assert all(x is not None and x.grade == 0 for i, x in enumerate(grade_bodies(meas)) if meas[i] is not m)


def test_partial_bodies_are_not_graded() -> None:
    meas = _column(LUMBAR)
    meas[0] = BodyMeasurement(level="L3", partial=True)
    assert grade_bodies(meas)[0] is None


def test_mild_cutoff_allows_for_the_spread_of_normal_shape() -> None:
    """A measured 17% wedge is grade 1 (a true >= 20% loss on a body that was a little more
    wedged than its level's mean); a body one SD off its level's normal ratio is not."""
    from fracture_qi.screening.morphometry import MILD_REDUCTION

    assert 0.12 < MILD_REDUCTION < 0.20
    meas = _column(LUMBAR)
    m = next(x for x in meas if x.level == "L2")
    m.ha = m.hp * NORMAL_HA_HP["L2"] * (1 - 0.17)  # type: ignore[operator]
    d = grade_bodies(meas)[meas.index(m)]
    assert d is not None and d.grade == 1 and d.morph_type == "wedge"
    m.ha = m.hp * (NORMAL_HA_HP["L2"] - 0.05)  # type: ignore[operator]
    d = grade_bodies(meas)[meas.index(m)]
    assert d is not None and d.grade == 0


def test_mild_wedge_by_ratio_alone_is_not_graded() -> None:
    """A body with a 17% Ha/Hp reduction whose Hp is tall for its level (Ha normal against the
    neighbours), like L1 of the real example CT, is an unusual shape, not a grade-1 fracture."""
    meas = _column(LUMBAR)
    m = next(x for x in meas if x.level == "L2")
    m.hp = m.hp * 1.12  # type: ignore[operator]
    m.ha = m.hp * NORMAL_HA_HP["L2"] * (1 - 0.17)  # type: ignore[operator]
    d = grade_bodies(meas)[meas.index(m)]
    assert d is not None and d.grade == 0 and 0.16 < d.reductions["wedge"] < 0.18


def _patch(body_lo: float, body_hi: float, step: float = 0.5) -> tuple:  # type: ignore[type-arg]
    """A sagittal patch (rows h, columns a; mm) of one body between discs: disc 70 HU, bone
    200 HU, a 1 mm cortical endplate of 500 HU at each end of the body."""
    import numpy as np

    h = np.arange(-18.0, 18.0 + 1e-6, step)
    a = np.arange(-25.0, 25.0 + 1e-6, step)
    col = np.full(len(h), 70.0)
    col[(h >= body_lo) & (h <= body_hi)] = 200.0
    col[(h >= body_lo) & (h < body_lo + 1.0)] = 500.0
    col[(h > body_hi - 1.0) & (h <= body_hi)] = 500.0
    img = np.repeat(col[:, None], len(a), axis=1).astype(np.float32)
    return img, h, a


def test_endplate_beyond_the_usual_reach_is_sought_once_more() -> None:
    """A crushed body between ordinary discs sits off the disc centres found beside it: its
    inferior endplate lies past the reach its small height sets (half-height 6.5 mm: 1 mm
    past the disc centre) and is found on the second, wider look."""
    from fracture_qi.screening import morphometry

    img, h, a = _patch(-8.5, 4.5)
    cols = [-10.0, 0.0, 10.0]
    sup, inf = morphometry._endplates(img, h, a, cols, half_h=6.5)
    assert all(s is not None and abs(s - 4.5) < 1.0 for s in sup), sup
    assert all(i is not None and abs(i + 8.5) < 1.0 for i in inf), inf
    # within the usual reach nothing changes: the same body centred on its span
    sup0, inf0 = morphometry._endplates(*_patch(-6.5, 6.5), cols, half_h=6.5)
    assert all(abs(s - 6.5) < 1.0 for s in sup0) and all(abs(i + 6.5) < 1.0 for i in inf0)
    assert morphometry.WIDEN_MM == 3.0


def test_a_measurement_that_fails_is_retried_with_a_wider_reach() -> None:
    """Real 3 mm bodies are not boxes: L4 of the example CT has its inferior endplate a few
    millimetres lower in front, beyond the usual reach, and a fainter step inside the body
    there. The usual look takes the inner step (an anterior height of half the posterior,
    which the measurement rejects); the wider look it then retries with finds the endplate.
    The wider look also reaches further inward, where a severe wedge's superior endplate lies."""
    import numpy as np

    from fracture_qi.screening import morphometry

    img, h, a = _patch(-13.0, 13.0)
    front = a > 8.0
    col = np.full(len(h), 70.0)
    col[(h >= -17.0) & (h <= 13.0)] = 200.0
    col[(h >= -17.0) & (h < 0.0)] = 130.0  # darker bone below a faint inner step
    col[(h >= -17.0) & (h < -16.0)] = 500.0
    col[(h > 12.0) & (h <= 13.0)] = 500.0
    img[:, front] = col[:, None]
    cols = [14.0, 0.0, -14.0]  # anterior, middle, posterior
    _, inf = morphometry._endplates(img, h, a, cols, half_h=13.0)
    assert abs(inf[0] - 0.0) < 1.5 and abs(inf[2] + 13.0) < 1.0, inf  # the inner step
    _, inf = morphometry._endplates(img, h, a, cols, half_h=13.0, widen=morphometry.WIDEN_MM)
    assert abs(inf[0] + 17.0) < 1.0 and abs(inf[2] + 13.0) < 1.0, inf
    # a severe wedge: the superior endplate in front lies below the body's centre
    img, h, a = _patch(-13.0, 13.0)
    col = np.full(len(h), 70.0)
    col[(h >= -13.0) & (h <= -2.5)] = 200.0
    col[(h >= -13.0) & (h < -12.0)] = 500.0
    col[(h > -3.5) & (h <= -2.5)] = 500.0
    img[:, front] = col[:, None]
    sup, _ = morphometry._endplates(img, h, a, cols, half_h=13.0)
    assert sup[0] is None or abs(sup[0] + 2.5) > 1.5  # out of the usual reach
    sup, _ = morphometry._endplates(img, h, a, cols, half_h=13.0, widen=morphometry.WIDEN_MM)
    assert abs(sup[0] + 2.5) < 1.0 and abs(sup[2] - 13.0) < 1.0, sup
    # the first look's retry only reaches outward (a concave endplate's rim past the span)
    sup, _ = morphometry._endplates(img, h, a, cols, half_h=13.0, widen=morphometry.WIDEN_MM, inward=False)
    assert sup[0] is None or abs(sup[0] + 2.5) > 1.5


def _across(walls: tuple[float, float], core: float, rim: float, outside: float, step: float = 0.5):  # type: ignore[no-untyped-def]
    """Lines across a body (5 x 5 of them, x from -45 to 45 mm): ``core`` HU between the
    walls, a 1.5 mm cortical rim of ``rim`` HU inside each wall, ``outside`` beyond."""
    import numpy as np

    xs = np.arange(-45.0, 45.0 + 1e-6, step)
    prof = np.full(len(xs), outside, dtype=np.float64)
    inside = (xs >= walls[0]) & (xs <= walls[1])
    prof[inside] = core
    prof[inside & ((xs - walls[0] < 1.5) | (walls[1] - xs < 1.5))] = rim
    rng = np.random.default_rng(0)
    vals = prof[None, None, :] + rng.normal(0.0, 10.0, (5, 5, len(xs)))
    return vals, xs


def test_the_sagittal_plane_is_centred_between_the_lateral_walls() -> None:
    """The body's lateral cortex is found on each side of the canal's plane, so that the
    middle column passes through the centre of a central depression."""
    from fracture_qi.screening import morphometry

    # a body 4 mm to the right of its canal, lung either side
    got = morphometry._lateral_walls(*_across((-16.0, 24.0), 150.0, 450.0, -800.0))
    assert got is not None and abs(got[0] + 16.0) < 1.0 and abs(got[1] - 24.0) < 1.0, got
    # osteoporotic bone as dark as the psoas beside it: the rims still show the walls
    got = morphometry._lateral_walls(*_across((-20.0, 20.0), 45.0, 300.0, 45.0))
    assert got is not None and abs(got[0] + 20.0) < 1.0 and abs(got[1] - 20.0) < 1.0, got
    # a contrast-filled vessel against the wall: no wall that leaves the body, no guess
    vals, xs = _across((-20.0, 20.0), 150.0, 400.0, -800.0)
    vals[..., (xs > 20.0) & (xs < 40.0)] = 330.0
    assert morphometry._lateral_walls(vals, xs) is None
    # no cortex at all (the sample missed the body): no guess either
    assert morphometry._lateral_walls(*_across((-20.0, 20.0), 150.0, 150.0, 150.0)) is None


def test_a_body_far_taller_than_its_neighbours_is_left_unmeasured() -> None:
    """Two bodies measured as one (a disc missed) are not a body: left unmeasured, and their
    height no longer makes the neighbours look crushed. A normal body beside a single crushed
    neighbour is not 'too tall'."""
    from fracture_qi.screening.morphometry import drop_implausibly_tall

    meas = _column(LUMBAR)
    i = next(k for k, x in enumerate(meas) if x.level == "L2")
    m = meas[i]
    m.ha, m.hm, m.hp = 2 * m.ha, 2 * m.hm, 2 * m.hp  # type: ignore[operator]
    before = grade_bodies(meas)
    assert any(d is not None and d.morph_type == "crush" for k, d in enumerate(before) if k != i)
    assert drop_implausibly_tall(meas) == [i]
    assert m.partial and m.hp is None and m.extra["implausible_heights"]
    after = grade_bodies(meas)
    assert after[i] is None and all(d is None or d.grade == 0 for d in after)
    # the end of a short column: one neighbour, crushed to half, is no reference
    two = _column(LUMBAR)[:2]
    two[0].hp = two[0].hp * 0.5  # type: ignore[operator]
    assert drop_implausibly_tall(two) == []


def test_wall_slant_is_read_from_the_body_rows() -> None:
    """L5's axis takes its walls into account: the slant of each wall is read in the rows
    between its endplates (a line fit that a few rows off the wall do not pull), and a
    patch with too few body rows gives no slant."""
    import numpy as np

    from fracture_qi.screening import morphometry

    h = np.arange(-20.0, 20.0 + 1e-6, 0.5)
    a = np.arange(-35.0, 35.0 + 1e-6, 0.5)
    hh, aa = np.meshgrid(h, a, indexing="ij")
    # a trapezoid: the posterior wall upright, the anterior wall 0.4 mm forward per mm up
    inside = (np.abs(hh) <= 14.0) & (aa >= -16.0) & (aa <= 16.0 + 0.4 * hh)
    img = np.where(inside, 200.0, 20.0) + np.random.default_rng(1).normal(0.0, 8.0, hh.shape)
    img[np.abs(h - 3.0) < 0.3, :] = 20.0  # one dark row (a vessel channel): outvoted
    got = morphometry._wall_slopes(img, h, a, -16.0, 16.0, -14.0, 14.0)
    assert got is not None
    assert abs(got[0] - 0.4) < 0.05 and abs(got[1]) < 0.05, got
    # endplates 3 mm apart leave no middle rows to fit
    assert morphometry._wall_slopes(img, h, a, -16.0, 16.0, -1.5, 1.5) is None


def test_a_faint_column_on_a_step_is_placed_by_its_firm_neighbours() -> None:
    """A stepped endplate (the real CT's L1: its posterior part ~5 mm higher than its front)
    meets a column-wise search at a slant right at the step: that column has only faint
    edges above and below the step, and taking either read L1's Hm 2.5 mm off its mask.
    A faint reading between two firm ones takes their mean; firm readings stay as found."""
    import numpy as np

    from fracture_qi.screening import morphometry

    cols = np.linspace(-15.0, 15.0, 9)
    firm = 100.0
    cands = [np.array([[14.0, firm]])] * 4 + [np.array([[4.5, 16.0], [14.4, 15.0]])] + [np.array([[9.3, firm]])] * 4
    got = morphometry._endplate_path(cands, cols, 16.0)
    assert got[:4] == [14.0] * 4 and got[5:] == [9.3] * 4
    assert got[4] is not None and abs(got[4] - 0.5 * (14.0 + 9.3)) < 1e-9, got
    # a firm middle reading is kept, even off the line of its neighbours
    cands[4] = np.array([[12.5, 60.0]])
    assert morphometry._endplate_path(cands, cols, 16.0)[4] == 12.5
    # a faint reading at the wall column has one neighbour only: it stays as found
    cands[4] = np.array([[14.0, firm]])
    cands[8] = np.array([[7.0, 10.0]])
    assert morphometry._endplate_path(cands, cols, 16.0)[8] == 7.0


def test_a_faint_dent_floor_is_kept() -> None:
    """The floor of a biconcave dent can read faintly between firm readings on its slopes.
    Only a faint reading level with or beyond the outer neighbour is a step's edge (placed by
    its neighbours' mean); one inward of it is the dent, which their mean would make shallower:
    the real CT's L3 dented by 35% read Hm 22.5 mm (no fracture) with the mean, 20.2 without."""
    import numpy as np

    from fracture_qi.screening import morphometry

    cols = np.linspace(-15.0, 15.0, 9)
    firm = 100.0
    cands = (
        [np.array([[15.0, firm]])] * 3
        + [np.array([[13.7, 50.0], [4.6, 45.0]]), np.array([[7.5, 15.0], [13.3, 12.0]])]
        + [np.array([[5.9, firm]]), np.array([[6.3, firm]]), np.array([[8.2, firm]]), np.array([[14.0, firm]])]
    )
    got = morphometry._endplate_path(cands, cols, 16.0)
    assert got[5] == 5.9 and got[4] in (7.5, 4.6), got
    # the superior endplate's reading at 14.4 between 14.0 and 9.3 (the step) still takes the mean
    cands = [np.array([[14.0, firm]])] * 4 + [np.array([[14.4, 15.0]])] + [np.array([[9.3, firm]])] * 4
    got = morphometry._endplate_path(cands, cols, 16.0)
    assert got[4] is not None and abs(got[4] - 0.5 * (14.0 + 9.3)) < 1e-9
    # and the same for an inferior endplate (negative positions: outward is further down)
    neg = [np.array([[-c[0, 0], c[0, 1]]]) for c in cands]
    got = morphometry._endplate_path(neg, cols, 16.0)
    assert got[4] is not None and abs(got[4] + 0.5 * (14.0 + 9.3)) < 1e-9
