"""The reference screener on real anatomy: TotalSegmentator's example CT (3 mm, T11..sacrum)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from realdata_helpers import (
    TOTALSEG_LEVEL_IDS,
    load_example_body_mask,
    load_example_ct,
    load_example_labels,
    mask_heights,
)

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.screening.reference import ReferenceScreener

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def example(realdata: Path):  # type: ignore[no-untyped-def]
    vol = load_example_ct(realdata)
    lab = load_example_labels(realdata)
    body = load_example_body_mask(realdata) == 1  # 1 = vertebral bodies (2 = discs)
    res = ReferenceScreener(device="cpu").screen(vol)
    return vol, lab, body, res


def _centroid_z(mask: np.ndarray, dz: float) -> float:
    return float(np.nonzero(mask)[0].mean() * dz)


def test_t12_to_l5_found_and_labelled(example) -> None:  # type: ignore[no-untyped-def]
    vol, lab, body, res = example
    assert res.status == "ok", res.detail
    got = {v.level: v for v in res.vertebrae if v.level}
    for lv in ("T12", "L1", "L2", "L3", "L4", "L5"):
        assert lv in got, f"{lv} missing; found {list(got)}"
        true_z = _centroid_z((lab == TOTALSEG_LEVEL_IDS[lv]) & body, vol.spacing[0])
        tol = 20.0 if lv == "T12" else 8.0  # T12 is cut by the top of the scan
        assert abs(got[lv].geometry["centre_zyx_mm"][0] - true_z) < tol, lv
    # cranial to caudal order
    order = [v.level for v in res.vertebrae if v.level]
    assert order == sorted(order, key=lambda s: (s[0] != "T", int(s[1:])))


def test_heights_match_the_masks(example, realdata: Path) -> None:  # type: ignore[no-untyped-def]
    vol, lab, body, res = example
    got = {v.level: v for v in res.vertebrae if v.level}
    report = json.loads((realdata / "totalsegmentator/spine_report/spine_report.json").read_text())["results"]
    errs = []
    for lv in ("L1", "L2", "L3"):
        mh = mask_heights((lab == TOTALSEG_LEVEL_IDS[lv]) & body, vol.spacing, inset=0.12)
        v = got[lv]
        errs += [abs(v.ha_mm - mh["ha"]), abs(v.hp_mm - mh["hp"])]
        # TotalSegmentator measures differently (3 mm steps): agree loosely with it too
        assert abs(v.hp_mm - report[f"vertebrae_{lv}_height_posterior_mm"]) < 7.0
    assert max(errs) < 2.0, errs
    # the real CT holds no fracture at L1-L3
    assert all(got[lv].genant_grade == 0 for lv in ("L1", "L2", "L3"))
    assert res.l1_hu is not None and 60.0 < res.l1_hu < 250.0 and res.bone_density_level == "L1"


def plant(vol: CTVolume, mask: np.ndarray, kind: str, loss: float) -> CTVolume:
    """Compress one vertebral body along z (its axis in this CT) by warping its voxels.

    ``wedge``: the loss grows from 0 at the posterior wall to ``loss`` at the anterior wall;
    ``biconcave``: the loss is ``loss`` at the centre, falling to 0 at 70% of the radius;
    ``crush``: uniform.
    The superior endplate moves down; the space it leaves takes the HU of the disc above.
    """
    hu = vol.hu.astype(np.float32).copy()
    _, ii, jj = np.nonzero(mask)
    y0, y1 = ii.min(), ii.max()
    x0, x1 = jj.min(), jj.max()
    yc, xc = 0.5 * (y0 + y1), 0.5 * (x0 + x1)
    for i in range(y0, y1 + 1):  # loop over columns of one body (a few hundred), not voxels
        for j in range(x0, x1 + 1):
            col = np.nonzero(mask[:, i, j])[0]
            if len(col) < 3:
                continue
            z0, z1 = col.min(), col.max()
            if kind == "wedge":
                f = loss * (y1 - i) / max(y1 - y0, 1)  # anterior = small y
            elif kind == "biconcave":
                r = np.hypot((i - yc) / max(0.5 * (y1 - y0), 1), (j - xc) / max(0.5 * (x1 - x0), 1))
                f = loss * max(0.0, 1.0 - (r / 0.7) ** 2)  # endplate dome inside 70% of the radius
            else:
                f = loss
            h = (z1 - z0 + 1) * (1 - f)
            src = hu[z0 : z1 + 1, i, j].copy()
            disc = 70.0  # disc-like soft tissue fills the space the endplate left
            zs = np.arange(z0, z1 + 1)
            t = (zs - z0) / max(h, 1e-3) * (z1 - z0 + 1)
            new = np.interp(t, np.arange(z1 - z0 + 1), src)
            new[(zs - z0) >= h] = disc
            hu[z0 : z1 + 1, i, j] = new
    return CTVolume(hu=np.clip(hu, -1024, 3071).astype(np.int16), spacing=vol.spacing, origin=vol.origin)


#: planted bodies whose fill (70 HU, below this patient's 110-130 HU trabecular bone) is read
#: as a disc inside the body: the span is split and the body left unmeasured (see
#: docs/screening-method.md, "Known gaps")
KNOWN_GAP = "known gap: the planted gap is taken for a disc at 3 mm, the body is split"


def _expected_grade(before, kind: str, loss: float) -> int:  # type: ignore[no-untyped-def]
    """Genant grade the planted loss should produce, from the screener's own unplanted heights
    of that body and its grading rule: a planted wedge loses ``loss`` at the anterior wall
    but only ~(1 - inset) of it at the anterior column; a biconcave plant the full ``loss``
    at the middle column."""
    from fracture_qi.screening.morphometry import (
        COLUMN_INSET,
        NORMAL_HA_HP,
        NORMAL_HM_HP,
        grade_from_reduction,
    )

    ha, hm, hp = before.ha_mm, before.hm_mm, before.hp_mm
    e_a, e_m = NORMAL_HA_HP[before.level], NORMAL_HM_HP[before.level]
    if kind == "wedge":
        ha = ha * (1.0 - loss * (1.0 - COLUMN_INSET))
        red = 1.0 - (ha / hp) / e_a
    elif kind == "biconcave":
        red = 1.0 - (hm * (1.0 - loss) / max(ha / e_a, hp)) / e_m
    else:
        red = loss
    return grade_from_reduction(red)


@pytest.mark.parametrize(
    "level,kind,loss",
    [
        ("L2", "wedge", 0.40),
        pytest.param("L1", "wedge", 0.30, marks=pytest.mark.xfail(reason=KNOWN_GAP, strict=False)),
        pytest.param("L3", "crush", 0.45, marks=pytest.mark.xfail(reason=KNOWN_GAP, strict=False)),
        ("L2", "crush", 0.30),
        ("L2", "biconcave", 0.45),
        ("L3", "biconcave", 0.35),
    ],
)
def test_planted_compression_is_found(example, level: str, kind: str, loss: float) -> None:  # type: ignore[no-untyped-def]
    vol, lab, body, res0 = example
    before = {v.level: v for v in res0.vertebrae if v.level}[level]
    planted = plant(vol, (lab == TOTALSEG_LEVEL_IDS[level]) & body, kind, loss)
    res = ReferenceScreener(device="cpu", keyimage=False).screen(planted)
    got = {v.level: v for v in res.vertebrae if v.level}
    assert level in got, [v.level for v in res.vertebrae]
    grade = _expected_grade(before, kind, loss)
    v = got[level]
    assert grade >= 1
    assert v.genant_grade >= 1 and abs(v.genant_grade - grade) <= 1, (grade, v)
    assert res.flagged == (res.max_grade >= 2)
    # the untouched neighbours gain no moderate or severe deformity
    assert all(x.genant_grade < 2 for lv, x in got.items() if lv != level), res.vertebrae


def test_real_jpeg2000_dicom_slices_end_to_end(realdata: Path) -> None:
    """The 20 real JPEG 2000 slices (2 mm, T11/T12 both cut by the slab): decoded by the
    suite's loader and screened without an exception; no body is whole, so the honest answer
    is an error result with a reason, not a guess."""
    from fracture_qi.dicom.volume import load_series, series_files

    vol = load_series(series_files(realdata / "totalsegmentator" / "example_ct_dicom"))
    assert vol.shape == (20, 512, 512)
    res = ReferenceScreener(device="cpu").screen(vol)
    assert res.seconds is not None
    if res.status == "error":
        assert res.reason == "NO_VERTEBRAE" and res.detail
    else:  # if a body is ever measured here, it must be a plausible one
        assert all(v.ha_mm is None or 10.0 < v.ha_mm < 40.0 for v in res.vertebrae)
