"""Spine localisation, reformat, body detection and the reference screener on small phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.errors import ScreeningError
from fracture_qi.screening import spine
from fracture_qi.screening.device import pick_device
from fracture_qi.screening.reference import ReferenceScreener

CPU = torch.device("cpu")


def test_pick_device_cpu_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setenv("FRACTURE_QI_DEVICE", "cpu")
    assert pick_device("auto").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ScreeningError, match="CUDA"):
            pick_device("cuda")


def test_no_spine_is_an_error_result_not_an_exception() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 15, size=(40, 64, 64)).astype(np.int16)  # a block of soft tissue
    res = ReferenceScreener(device="cpu").screen(CTVolume(hu=hu, spacing=(3.0, 2.0, 2.0)))
    assert res.status == "error" and res.reason == "NO_VERTEBRAE" and res.detail
    tiny = CTVolume(hu=np.zeros((2, 8, 8), np.int16), spacing=(1.0, 1.0, 1.0))
    assert ReferenceScreener(device="cpu").screen(tiny).status == "error"


@pytest.fixture(scope="module")
def lumbar_phantom():  # type: ignore[no-untyped-def]
    phantom = pytest.importorskip("fracture_qi.synth.phantom")
    rng = np.random.default_rng(11)
    spec = phantom.random_patient_spec(rng, age=74, sex="F", fractures=[("L1", "wedge", 2)])
    vol, truth = phantom.make_spine_volume(
        spec, fov="abdomen_pelvis", shape=(150, 160, 160), spacing=(2.5, 1.8, 1.8), rng=rng, noise_sd=15
    )
    return vol, truth


def test_canal_and_reformat_follow_the_spine(lumbar_phantom) -> None:  # type: ignore[no-untyped-def]
    vol, truth = lumbar_phantom
    path = spine.locate_canal(vol, CPU)
    assert path is not None and path.length_mm > 150
    # the canal lies posterior of every body centre, within ~10-40 mm, and near its x
    for _, row in truth[truth.fully_in_view].iterrows():
        z = row.centre_z_mm - vol.origin[2]
        y = row.centre_y_mm - vol.origin[1]
        x = row.centre_x_mm - vol.origin[0]
        if path.z_mm[0] <= z <= path.z_mm[-1]:
            assert 8.0 < path.y_at(z) - y < 45.0, row.level
            assert abs(path.x_at(z) - x) < 8.0, row.level
    ref = spine.sagittal_reformat(vol, path, CPU)
    assert ref.image.shape == (len(ref.z_mm), len(ref.y_mm)) and ref.image.dtype == np.float32



def test_screener_finds_the_planted_wedge(lumbar_phantom) -> None:  # type: ignore[no-untyped-def]
    vol, truth = lumbar_phantom
    res = ReferenceScreener(device="cpu").screen(vol)
    assert res.status == "ok", res.detail
    assert res.keyimage is not None and res.keyimage.dtype == np.uint8 and res.keyimage.shape[2] == 3
    l1 = truth.set_index("level").loc["L1"]
    z_l1 = l1.centre_z_mm - vol.origin[2]
    near = [v for v in res.vertebrae if v.geometry and abs(v.geometry["centre_zyx_mm"][0] - z_l1) < 12.0]
    assert near, "no body found at L1"
    v = near[0]
    assert abs(v.genant_grade - 2) <= 1 and v.genant_grade >= 1
    assert res.flagged == (res.max_grade >= 2)
    # heights of the unfractured lumbar bodies: median error within 2.5 mm
    errs = []
    for lv in ("L2", "L3", "L4"):
        t = truth.set_index("level").loc[lv]
        z = t.centre_z_mm - vol.origin[2]
        m = [x for x in res.vertebrae if x.ha_mm and abs(x.geometry["centre_zyx_mm"][0] - z) < 12.0]
        if m:
            errs += [abs(m[0].ha_mm - t.ha_mm), abs(m[0].hp_mm - t.hp_mm)]
    assert len(errs) >= 4 and float(np.median(errs)) < 2.5


def test_sample_many_equals_separate_calls(lumbar_phantom) -> None:  # type: ignore[no-untyped-def]
    vol, _ = lumbar_phantom
    path = spine.locate_canal(vol, CPU)
    assert path is not None
    sampler = spine.SpineSampler(vol, path, CPU)
    rng = np.random.default_rng(3)
    reqs = []
    for shape, slab in (((7, 5), True), ((4, 3, 2), False), ((11,), True)):
        z = rng.uniform(0, vol.extent_mm[0] + 20.0, size=shape)  # some beyond the volume: air
        y = path.y_at(z) - rng.uniform(0, 60, size=shape)
        x = path.x_at(z) + rng.uniform(-10, 10, size=shape)
        reqs.append((z, y, x, slab))
    together = sampler.sample_many(reqs)
    for (z, y, x, slab), got in zip(reqs, together):
        alone = sampler.sample(z, y, x, slab=slab)
        assert got.shape == z.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, alone, rtol=0, atol=1e-3)
    assert np.any(together[0] == -1000.0)


def test_batched_body_measurement_equals_one_by_one(lumbar_phantom) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.screening import morphometry

    vol, _ = lumbar_phantom
    path = spine.locate_canal(vol, CPU)
    st = spine.straighten(vol, path, CPU)
    bodies = spine.find_bodies(st)
    assert len(bodies) >= 4
    batch = morphometry.measure_bodies(vol, st, bodies, CPU)
    # single-tap samples come from a float copy of the box a call's points span, so a batch
    # and a lone body differ in the float32 rounding of their grid coordinates (~1e-5 HU)
    for bd, mb in zip(bodies, batch):
        m1 = morphometry.measure_body(vol, st, bd, CPU)
        assert m1.partial == mb.partial
        for a, b in ((m1.ha, mb.ha), (m1.hm, mb.hm), (m1.hp, mb.hp)):
            assert (a is None and b is None) or abs(a - b) < 1e-3  # type: ignore[operator]
        assert m1.trabecular_hu == pytest.approx(mb.trabecular_hu, abs=1e-3)


def test_chest_only_scan_is_labelled_from_the_rib_heads() -> None:
    """No sacrum in view and the synthetic rib shafts start away from the spine: the levels come
    from the rib heads beside the bodies (T12 the last body with them)."""
    phantom = pytest.importorskip("fracture_qi.synth.phantom")
    rng = np.random.default_rng(3)
    spec = phantom.random_patient_spec(rng, age=70, sex="F", fractures=[])
    vol, truth = phantom.make_spine_volume(
        spec, fov="chest", shape=(150, 180, 180), spacing=(2.0, 1.8, 1.8), rng=rng, noise_sd=15
    )
    res = ReferenceScreener(device="cpu", keyimage=False).screen(vol)
    assert res.status == "ok", res.detail
    truth = truth[truth.fully_in_view]
    ok = n = 0
    for v in res.vertebrae:
        near = truth[np.abs(truth.centre_z_mm - vol.origin[2] - v.geometry["centre_zyx_mm"][0]) < 10.0]
        if len(near):
            n += 1
            ok += int(near.level.iloc[0] == v.level)
    assert n >= 10 and ok >= n - 1, [v.level for v in res.vertebrae]
    # the rib-head reach itself separates thoracic from lumbar bodies
    path = spine.locate_canal(vol, CPU)
    st = spine.straighten(vol, path, CPU)
    bodies = spine.find_bodies(st)
    grid = spine.coarse_grid(vol, CPU)
    anchors = spine.label_levels(grid, st, bodies)
    heads = dict(zip([b.level for b in bodies], anchors.rib_head_excess))
    assert heads["T12"] > 7.5 and heads["L1"] < 4.0, heads


def test_thick_volume_is_refused_not_graded(lumbar_phantom) -> None:  # type: ignore[no-untyped-def]
    vol, _ = lumbar_phantom
    # every 2nd slice of the 2.5 mm phantom: a 5 mm volume over the same anatomy
    thick = CTVolume(hu=vol.hu[::2], spacing=(5.0, *vol.spacing[1:]), origin=vol.origin)
    res = ReferenceScreener(device="cpu", keyimage=False).screen(thick)
    assert (res.status, res.reason) == ("error", "SLICE_TOO_THICK")
    assert not res.vertebrae and not res.flagged and "5.00 mm" in res.detail
    # the limit is a setting: at 5 mm allowed the same volume is graded
    loose = ReferenceScreener(device="cpu", keyimage=False, max_slice_mm=5.0).screen(thick)
    assert loose.status == "ok" and loose.vertebrae
    with pytest.raises(ValueError):
        ReferenceScreener(device="cpu", max_slice_mm=0)


def test_slab_band_stands_for_the_taps() -> None:
    """On a sub-millimetre x grid, slab samples come from the band pre-averaged across x (one
    tap per pixel): exactly the mean of the five taps at whole voxels, and close to it between
    them (interpolating the means rather than averaging interpolations)."""
    phantom = pytest.importorskip("fracture_qi.synth.phantom")
    rng = np.random.default_rng(5)
    spec = phantom.random_patient_spec(rng, age=74, sex="F", fractures=[("L1", "wedge", 2)])
    vol, _ = phantom.make_spine_volume(
        spec, fov="abdomen_pelvis", shape=(120, 300, 300), spacing=(2.5, 0.8, 0.8), rng=rng, noise_sd=15
    )
    path = spine.locate_canal(vol, CPU)
    sampler = spine.SpineSampler(vol, path, CPU)
    assert sampler.slab_raw is not None
    z = np.linspace(path.z_mm[0], path.z_mm[-1], 200)[:, None]
    y = np.interp(z, path.z_mm, path.y_mm) - np.linspace(-10.0, 60.0, 150)[None, :]
    z = np.broadcast_to(z, y.shape)
    x_path = np.interp(z, path.z_mm, path.x_mm)
    for x, tol_max, tol_p99, tol_median in (
        (np.round(x_path / 0.8) * 0.8, 0.05, 0.01, 0.01),  # whole voxels: float32 rounding only
        (x_path + rng.uniform(-0.4, 0.4, z.shape), 80.0, 12.0, 1.5),  # anywhere
    ):
        band = sampler.sample(z, y, x)
        taps = np.mean(sampler.sample_many([(z, y, x + o, False) for o in sampler.offsets]), axis=0)
        d = np.abs(band - taps)
        assert taps.max() - taps.min() > 1000.0  # bone and soft tissue in the sample
        assert d.max() < tol_max and np.percentile(d, 99) < tol_p99 and np.median(d) < tol_median
    # a plane beside the canal, beyond the band's x (a body off its canal), is sampled with
    # the taps, not read off the band's edge
    x = x_path + 15.0
    assert x.max() > sampler.slab_x_mm[1]
    beside = sampler.sample(z, y, x)
    taps = np.mean(sampler.sample_many([(z, y, x + o, False) for o in sampler.offsets]), axis=0)
    assert np.abs(beside - taps).max() < 0.05
    # a coarse x grid keeps the taps: the band would widen the slab there
    coarse = CTVolume(hu=vol.hu[:, ::4, ::4], spacing=(2.5, 3.2, 3.2), origin=vol.origin)
    assert spine.SpineSampler(coarse, path, CPU).slab_raw is None


def test_a_disc_splitting_one_body_is_dropped() -> None:
    """Two short spans that together make one body, cut by a middling 'disc' (a dark band in
    the body), become one body; a clear disc between two crushed bodies stays, and so do the
    short spans of small upper thoracic bodies among their like."""
    score = np.zeros(400)
    lumbar = [100, 130, 160, 174, 190, 220, 250]  # the body 160-190 cut at 174
    for d in lumbar:
        score[d] = 100.0
    score[174] = 50.0
    assert spine._drop_split_discs(lumbar, score, ref=100.0) == [100, 130, 160, 190, 220, 250]
    score[174] = 90.0  # as clear as the clearest discs: two crushed bodies side by side
    assert spine._drop_split_discs(lumbar, score, ref=100.0) == lumbar
    thoracic = [100, 115, 130, 146, 162, 178]  # bodies of ~15 mm, all alike
    score[thoracic] = 50.0
    assert spine._drop_split_discs(thoracic, score, ref=100.0) == thoracic


def test_a_faint_disc_at_the_end_is_taken_where_the_view_goes_on() -> None:
    """Beyond the last disc found, the body is kept as cut by the view unless the scan goes
    on past where its far disc is due: then the best faint peak in that window (0.65 to 1.4
    pitches on) is its disc. A dark band at half a pitch (a body's own middle) is not, and
    nothing is taken where the view ends inside the window."""
    discs = [100, 130, 160, 190]
    score = np.zeros(400)
    score[discs] = 100.0
    score[[70, 205, 214]] = [8.0, 40.0, 8.0]  # 205: the top body's own dark band
    cand = sorted(discs + [70, 205, 214])
    inside = np.ones(400, dtype=bool)
    assert spine._end_discs(discs, cand, score, 5.0, 1.0, inside) == [70] + discs + [214]
    # the faint peak must still clear a floor
    assert spine._end_discs(discs, cand, score, 10.0, 1.0, inside) == discs
    # the scan ends 5 mm past the faint peak: the body above may be cut, left as it was
    inside[220:] = False
    assert spine._end_discs(discs, cand, score, 5.0, 1.0, inside) == [70] + discs


def test_the_disc_beside_a_crushed_end_body_is_taken_short_of_a_pitch() -> None:
    """A crushed body at the end of the column puts its far disc 0.55-0.65 pitches on, short
    of where the next disc is due (the real CT's L1 crushed by 35% and 50%: 0.64 and 0.58).
    Where nothing lies in the usual window, a peak from 0.55 pitches on is that disc; a body's
    own dark band (0.4-0.5 pitches on) is not, and a peak in the usual window comes first."""
    discs = [100, 130, 160, 190]
    score = np.zeros(400)
    score[discs] = 100.0
    score[[203, 208]] = [40.0, 8.0]  # 203: a dark band at 0.43 pitches; 208: the disc at 0.6
    cand = sorted(discs + [203, 208])
    inside = np.ones(400, dtype=bool)
    assert spine._end_discs(discs, cand, score, 5.0, 1.0, inside) == discs + [208]
    # the view must go on 8 mm past it (the next body's endplate in view)
    inside[215:] = False
    assert spine._end_discs(discs, cand, score, 5.0, 1.0, inside) == discs
    inside[:] = True
    # a faint peak where the next disc is due wins over the nearer one
    score[218] = 6.0
    assert spine._end_discs(discs, sorted(cand + [218]), score, 5.0, 1.0, inside) == discs + [218]
    # without the 0.6 peak, the band alone is never taken
    score[[208, 218]] = 0.0
    assert spine._end_discs(discs, [*discs, 203], score, 5.0, 1.0, inside) == discs


def test_a_held_back_disc_is_put_back_beside_a_crushed_body() -> None:
    """A strong disc that dips weakly in one cue is held back (a body's dark band could halve
    the pitch), then put back where its gap holds more than one body: beside a crushed body
    the two spans add up to 1.4 pitches or more (a phantom's L4 crush: 17 + 30 mm against 33,
    its disc's weakest cue 0.2994), while a body split at its own dark band adds up to about
    one (the half-crushed real L3's core: 10 + 10 mm)."""
    discs = [0, 33, 66, 113, 146, 179]  # 66..113: a crushed body (17) and a normal one (30)
    score = np.full(200, 0.0)
    assert spine._put_back_held(discs, [83], score, 1.0) == [0, 33, 66, 83, 113, 146, 179]
    # a band splitting one body (66..96 among 30 mm spans) stays out
    discs = [0, 30, 60, 96, 126, 156]
    assert spine._put_back_held(discs, [78], score, 1.0) == discs
    # as does a held-back disc near the end of its gap (not where a body would end)
    discs = [0, 33, 66, 113, 146, 179]
    assert spine._put_back_held(discs, [70], score, 1.0) == discs


def test_an_osteoporotic_body_has_bone_in_its_box() -> None:
    """A body is kept only with bone in the middle of its span. An osteoporotic body's core
    reads 30-50 HU: its bone is its cortex, a few per cent of the box (two walls a pixel or
    two thick across a body 39 mm deep, sampled at 1 mm). The 90th percentile missed it by a row or two (a
    phantom's L2 read 142 HU, then 89 with the span a row shorter, and was dropped: every level
    of that study was left empty); the box must be told from soft tissue all the same."""
    rng = np.random.default_rng(0)
    box = rng.normal(40.0, 20.0, size=(17, 40))
    box[:, :1] = 450.0  # posterior wall (partly outside the box, as the walls are found)
    box[::2, -1] = 350.0  # anterior cortex, thinner and broken by vessels' foramina
    assert np.percentile(box, 90) < 120.0
    assert spine._box_has_bone(box)
    soft = rng.normal(60.0, 20.0, size=(17, 40))
    assert not spine._box_has_bone(soft)


def test_a_missing_disc_is_grown_at_the_local_pitch() -> None:
    """Bodies grow from ~15 mm (upper thoracic) to ~30 mm (lumbar). A missing upper thoracic
    disc leaves a 41 mm gap among 21 mm ones: against the whole column's median pitch (28 mm)
    that gap passed as one body, measured at half its height and graded 3 in a phantom.
    Against the pitch either side of it, the candidate in its middle is taken."""
    strong = [0, 30, 60, 90, 120, 150, 180, 208, 232, 253, 274, 295, 336]
    score = np.zeros(400)
    score[strong] = 100.0
    score[316] = 60.0
    cand = sorted(strong + [316])
    assert spine._grow_discs(strong, cand, score, 15.0, 1.0) == sorted(strong + [316])
    # a lumbar gap of the same length among lumbar gaps is a body, not two
    lumbar = [0, 36, 72, 108, 144, 185, 221]
    score[lumbar] = 100.0
    score[165] = 60.0
    assert spine._grow_discs(lumbar, sorted(lumbar + [165]), score, 15.0, 1.0) == lumbar
