"""The screening engine with a small real model (grades bright bands by height).

The fake model is a genuine ScreeningModel: it finds bright "bodies" stacked along z in the
centre of the volume, measures each one's height and grades its loss against the median
height with Genant's bands. The engine is tested on real DICOM files written with
tests/dicomgen.py and decoded by fracture_qi.dicom.volume.load_series, in-process and with
decode worker processes, against the database, and killed with SIGKILL mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.screening.engine import (
    RunSummary,
    SeriesJob,
    run_screening,
    screen_series,
)
from fracture_qi.screening.types import LEVELS, SeriesResult, VertebraResult
from fracture_qi.store.db import connect, session_scope
from fracture_qi.store.schema import (
    Base,
    Screening,
    ScreeningRun,
    Series,
    Study,
    VertebraFinding,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dicomgen

BODY_MM = 10
GAP_MM = 4


# --------------------------------------------------------------------------------------------
# a small real model
# --------------------------------------------------------------------------------------------
class BandHeightModel:
    """Grades bright bands (vertebral bodies) along z by their height loss.

    Bodies are runs of slices whose centre patch is > 200 HU; each run's height is compared
    with the median height; Genant bands (20/25/40 %) give the grade. Levels are counted
    up from the lowest body as L5, L4, ... A volume with no body gives NO_VERTEBRAE.
    """

    model_id = "test-band-height"
    model_version = "1.0"
    sha256 = None
    device = "cpu"

    def __init__(self, flag_grade: int = 2, delay: float = 0.0, fail_on_study: str = "",
                 keyimage: bool = True) -> None:
        self.flag_grade = flag_grade
        self.delay = delay
        self.fail_on_study = fail_on_study
        self.keyimage = keyimage
        self.calls_many = 0

    def screen(self, volume: CTVolume) -> SeriesResult:
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on_study and volume.study_instance_uid == self.fail_on_study:
            raise RuntimeError("planted model failure")
        z, y, x = volume.hu.shape
        patch = volume.hu[:, y // 3: 2 * y // 3, x // 3: 2 * x // 3]
        bright = (patch > 200).mean(axis=(1, 2)) > 0.5
        edges = np.flatnonzero(np.diff(np.r_[0, bright.astype(np.int8), 0]))
        runs = list(zip(edges[::2], edges[1::2]))
        if not runs:
            return SeriesResult(status="error", reason="NO_VERTEBRAE", detail="no bright band")
        heights = np.array([(b - a) * volume.spacing[0] for a, b in runs], dtype=float)
        ref = float(np.median(heights))
        names = list(reversed(LEVELS))  # L5 first (lowest)
        verts = []
        for i, h in enumerate(heights):
            loss = round(1.0 - h / ref, 6)
            grade = 3 if loss > 0.40 else 2 if loss > 0.25 else 1 if loss >= 0.20 else 0
            verts.append(VertebraResult(
                level=names[i] if i < len(names) else None, genant_grade=grade,
                morph_type="crush" if grade else "normal", ha_mm=h, hm_mm=h, hp_mm=h,
                score=float(max(0.0, loss)), geometry={"z_mm": [float(runs[i][0]), float(runs[i][1])]},
            ))
        max_grade = max(v.genant_grade for v in verts)
        img = None
        if self.keyimage:
            img = np.zeros((z, y, 3), dtype=np.uint8)
            img[..., 0] = np.clip(volume.hu[:, :, x // 2] / 8, 0, 255).astype(np.uint8)
        return SeriesResult(status="ok", flagged=max_grade >= self.flag_grade,
                            score=max(v.score or 0 for v in verts), max_grade=max_grade,
                            vertebrae=verts, keyimage=img)

    def screen_many(self, volumes: list[CTVolume]) -> list[SeriesResult]:
        self.calls_many += 1
        return [self.screen(v) for v in volumes]


def spine_hu(n_bodies: int = 4, short: dict[int, float] | None = None, rows: int = 16,
             cols: int = 16) -> np.ndarray:
    """A (z, rows, cols) HU stack of bodies BODY_MM high (1 mm slices), some shortened."""
    short = short or {}
    heights = [round(BODY_MM * (1 - short.get(i, 0.0))) for i in range(n_bodies)]
    nz = sum(heights) + GAP_MM * (n_bodies + 1)
    hu = np.zeros((nz, rows, cols), dtype=np.int16)
    z = GAP_MM
    for h in heights:
        hu[z: z + h, rows // 4: 3 * rows // 4, cols // 4: 3 * cols // 4] = 400
        z += h + GAP_MM
    return hu


def write_series(folder: Path, hu: np.ndarray, study: str, **kw) -> list[str]:
    paths = dicomgen.write_ct_series(folder, n=hu.shape[0], rows=hu.shape[1], cols=hu.shape[2],
                                     spacing=1.0, hu=hu, StudyInstanceUID=study, **kw)
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[SeriesJob]:
    """Six series: 3 normal, 1 grade 3, 1 grade 1, and one with two missing slices."""
    root = tmp_path_factory.mktemp("engine-cohort")
    specs = [({}, "normal0"), ({2: 0.5}, "g3"), ({}, "normal1"), ({1: 0.2}, "g1"),
             ({}, "normal2"), ("gap", "gap")]
    jobs = []
    for i, (short, name) in enumerate(specs):
        study = dicomgen.new_uid("engine-study", i)
        hu = spine_hu(short=short if isinstance(short, dict) else None)
        kw = {"drop": [20, 40]} if short == "gap" else {}  # two missing: not interpolated
        paths = write_series(root / name, hu, study, **kw)
        import pydicom
        series_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
        jobs.append(SeriesJob(key=name, study_instance_uid=study, series_instance_uid=series_uid,
                              paths=paths, path=str(root / name)))
    return jobs


def by_key(outcomes) -> dict:
    return {o.job.key: o for o in outcomes}


# --------------------------------------------------------------------------------------------
# the engine core
# --------------------------------------------------------------------------------------------
def test_inline_grades_and_reasons(cohort: list[SeriesJob]) -> None:
    out = by_key(screen_series(cohort, BandHeightModel(), workers=0))
    assert set(out) == {j.key for j in cohort}
    assert out["normal0"].result.status == "ok" and out["normal0"].result.max_grade == 0
    assert not out["normal0"].result.flagged
    g3 = out["g3"].result
    assert g3.flagged and g3.max_grade == 3 and g3.n_vertebrae == 4
    assert [v.level for v in g3.vertebrae] == ["L5", "L4", "L3", "L2"]
    assert g3.vertebrae[2].genant_grade == 3 and g3.vertebrae[2].ha_mm == pytest.approx(5.0)
    g1 = out["g1"].result
    assert g1.max_grade == 1 and not g1.flagged  # flag threshold is grade 2
    gap = out["gap"].result
    assert gap.status == "error" and gap.reason == "SLICE_GAP"  # the loader's reason kept
    assert all(o.result.seconds is not None for o in out.values())


def assert_same_result(a: SeriesResult, b: SeriesResult) -> None:
    """Two screenings of one series agree: status, reason, flag, grades."""
    assert (a.status, a.reason, a.flagged, a.max_grade) == (b.status, b.reason, b.flagged,
                                                             b.max_grade)
    assert [v.genant_grade for v in a.vertebrae] == [v.genant_grade for v in b.vertebrae]


def _shm_blocks() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("psm_*")} if shm.is_dir() else set()


def test_workers_match_inline_and_batch(cohort: list[SeriesJob]) -> None:
    before = _shm_blocks()  # other processes on the machine may hold blocks of their own
    inline = by_key(screen_series(cohort, BandHeightModel(), workers=0))
    model = BandHeightModel()
    pooled = list(screen_series(cohort, model, workers=2, batch_size=3))
    assert len(pooled) == len(cohort)
    for o in pooled:
        a = o.result
        assert_same_result(a, inline[o.job.key].result)
        if a.status == "ok":
            assert o.worker_peak_rss_mb and o.worker_peak_rss_mb > 10
            assert a.keyimage is not None and a.keyimage.shape[2] == 3
    # no shared-memory block created by this run is left behind
    assert not _shm_blocks() - before


def test_model_exception_does_not_stop_batch(cohort: list[SeriesJob]) -> None:
    bad_study = cohort[2].study_instance_uid
    model = BandHeightModel(fail_on_study=bad_study)
    out = by_key(screen_series(cohort, model, workers=0, batch_size=2))
    failed = out["normal1"].result
    assert failed.status == "error" and failed.reason == "SCREEN_FAILED"
    assert "planted model failure" in failed.detail
    # the batch partner of the failing series still got its own result
    assert sum(o.result.status == "ok" for o in out.values()) == 4
    assert model.calls_many >= 1


class ConcurrencyModel(BandHeightModel):
    """BandHeightModel that records how many of its calls ran at once."""

    def __init__(self, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.threads: set[str] = set()

    def screen(self, volume: CTVolume) -> SeriesResult:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            return super().screen(volume)
        finally:
            with self._lock:
                self.running -= 1


def test_model_streams_screen_every_series_once_as_one_stream_does(
        cohort: list[SeriesJob]) -> None:
    """Issue 20 part 2: with three model streams, batches are in the model at once (on
    threads of their own), every job yields exactly one outcome, the results are those of the
    model on the main thread, the decode failure passes through, and no shared memory is left
    behind."""
    before = _shm_blocks()
    one = by_key(screen_series(cohort, BandHeightModel(), workers=2, model_streams=1))
    model = ConcurrencyModel(delay=0.4)
    outcomes = list(screen_series(cohort, model, workers=2, prefetch=3, model_streams=3))
    assert sorted(str(o.job.key) for o in outcomes) == sorted(str(j.key) for j in cohort)
    for o in outcomes:
        assert_same_result(o.result, one[o.job.key].result)
        if o.result.status == "ok":
            assert o.screen_seconds >= 0.4 and o.decode_seconds > 0
    assert model.most >= 2, "the streams never overlapped"
    assert all(t.startswith("fqi-model") for t in model.threads)
    assert one["gap"].result.reason == "SLICE_GAP"
    assert not _shm_blocks() - before


def test_a_model_exception_stays_with_its_series_on_streams(cohort: list[SeriesJob]) -> None:
    model = BandHeightModel(fail_on_study=cohort[2].study_instance_uid)
    out = by_key(screen_series(cohort, model, workers=2, batch_size=2, model_streams=2))
    assert set(out) == {j.key for j in cohort}
    failed = out["normal1"].result
    assert failed.status == "error" and failed.reason == "SCREEN_FAILED"
    assert "planted model failure" in failed.detail
    assert sum(o.result.status == "ok" for o in out.values()) == 4


@pytest.mark.parametrize("streams", [1, 3])
def test_stopping_early_frees_every_volume(cohort: list[SeriesJob], streams: int) -> None:
    """A consumer that stops after the first outcome (a notebook interrupted): the batches
    still in the model finish, and their volumes and the pool's are freed at once (with one
    stream the waiting volumes stayed in shared memory until the interpreter exited)."""
    before = _shm_blocks()
    gen = screen_series(cohort, ConcurrencyModel(delay=0.3), workers=2, model_streams=streams)
    first = next(gen)
    assert first.job.key in {j.key for j in cohort}
    gen.close()
    assert not _shm_blocks() - before


def test_model_streams_out_of_range_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.cli.main import main

    assert main(["screen", str(tmp_path), "--out", str(tmp_path / "o"), "--model-streams",
                 "0"]) != 0
    err = capsys.readouterr().err
    assert "--model-streams 0 is out of range" in err and "Fix:" in err


# --------------------------------------------------------------------------------------------
# database mode
# --------------------------------------------------------------------------------------------
def make_db(url: str, jobs: list[SeriesJob]) -> list[SeriesJob]:
    """Create the schema and one study/series row per job; return jobs with series ids."""
    engine = connect(url)
    Base.metadata.create_all(engine)
    out = []
    with session_scope(engine) as s:
        for j in jobs:
            st = Study(study_instance_uid=j.study_instance_uid, eligible=True)
            s.add(st)
            s.flush()
            se = Series(series_instance_uid=j.series_instance_uid, study_id=st.id, path=j.path,
                        modality="CT", status="ok", chosen=True, n_instances=len(j.paths))
            s.add(se)
            s.flush()
            out.append(SeriesJob(key=se.id, series_id=se.id,
                                 study_instance_uid=j.study_instance_uid,
                                 series_instance_uid=j.series_instance_uid, paths=j.paths,
                                 path=j.path))
    engine.dispose()
    return out


class _Manifest:
    """The attributes run_screening reads from a manifest."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.model = {"kind": "reference"}
        self.screening = {"flag_grade": 2}
        self.outputs = {"keyimages": "keyimages/"}


def test_database_rows_run_and_keyimages(tmp_path: Path, cohort: list[SeriesJob]) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = make_db(url, cohort)
    engine = connect(url)
    summary = run_screening(_Manifest(tmp_path), engine, model=BandHeightModel(), workers=0,
                            progress=False, jobs=jobs)
    assert isinstance(summary, RunSummary)
    assert (summary.n_ok, summary.n_error, summary.n_flagged) == (5, 1, 1)
    assert summary.reasons == {"SLICE_GAP": 1}
    with session_scope(engine) as s:
        run = s.scalars(select(ScreeningRun)).one()
        assert (run.status, run.n_ok, run.n_error) == ("finished", 5, 1)
        assert run.model_id == "test-band-height" and run.host and run.code_version
        assert run.params["n_planned"] == 6
        rows = s.scalars(select(Screening)).all()
        assert len(rows) == 6
        g3 = next(r for r in rows if r.max_grade == 3)
        assert g3.flagged and g3.n_vertebrae == 4 and g3.run_id == run.id
        assert len(g3.findings) == 4 and g3.findings[2].genant_grade == 3
        assert g3.findings[0].geometry == {"z_mm": [4.0, 14.0]}
        assert g3.keyimage_path and Path(g3.keyimage_path).is_file()
        assert Path(g3.keyimage_path).parent == tmp_path / "keyimages"
        assert Path(g3.keyimage_path).name == f"screening-{g3.id:08d}.png"
        gap = next(r for r in rows if r.status == "error")
        assert gap.reason == "SLICE_GAP" and gap.keyimage_path is None
    # a second run with the same jobs writes nothing new
    again = run_screening(_Manifest(tmp_path), engine, model=BandHeightModel(), workers=0,
                          progress=False, jobs=jobs)
    assert again.n_skipped == 6 and again.n_ok == 0
    with session_scope(engine) as s:
        assert s.scalar(select(func.count(Screening.id))) == 6
    engine.dispose()


def _alive(pids: list[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


KILL_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("engine_test_mod", sys.argv[1])
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    from fracture_qi.screening.engine import SeriesJob, run_screening
    from fracture_qi.store.db import connect
    from pathlib import Path
    jobs = [SeriesJob(**j) for j in json.loads(Path(sys.argv[3]).read_text())]
    run_screening(mod._Manifest(Path(sys.argv[4])), connect(sys.argv[2]),
                  model=mod.BandHeightModel(delay=0.4), workers=1, progress=False, jobs=jobs)
""")


def test_killed_run_resumes_without_duplicates(tmp_path: Path, cohort: list[SeriesJob]) -> None:
    import json

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = make_db(url, cohort * 1)
    # more work than the kill leaves time for: the same series files under 12 series rows
    more = []
    for k in range(6):
        more += [SeriesJob(key=f"x{k}-{j.key}", study_instance_uid=f"{j.study_instance_uid}.{k}",
                           series_instance_uid=f"{j.series_instance_uid}.{k}", paths=j.paths,
                           path=j.path) for j in cohort[:2]]
    jobs += make_db(url, more)
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps([j.__dict__ for j in jobs]))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, __file__, url, str(jobs_file),
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    engine = connect(url)
    deadline = time.time() + 120
    done = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            with session_scope(engine) as s:
                done = s.scalar(select(func.count(Screening.id))) or 0
            if done >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        import psutil

        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert children  # the decode worker (and multiprocessing's resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    # the killed run's decode worker does not outlive it (it would hold memory forever)
    deadline = time.time() + 20
    while time.time() < deadline and _alive(children):
        time.sleep(0.2)
    assert not _alive(children)
    with session_scope(engine) as s:
        done = s.scalar(select(func.count(Screening.id)))
        assert 3 <= done < len(jobs)
        killed_run = s.scalars(select(ScreeningRun)).one()
        assert killed_run.status == "running" and killed_run.n_ok + killed_run.n_error == done
    # rerun everything: what was done is skipped, the rest is screened, nothing twice
    summary = run_screening(_Manifest(tmp_path), engine, model=BandHeightModel(), workers=2,
                            progress=False, jobs=jobs)
    assert summary.n_skipped == done
    assert summary.n_ok + summary.n_error == len(jobs) - done
    # the killed run no longer claims to be running (issue 21)
    assert summary.interrupted_runs == [killed_run.id]
    with session_scope(engine) as s:
        again = s.get(ScreeningRun, killed_run.id)
        assert again.status == "interrupted" and again.finished_at is not None
    with session_scope(engine) as s:
        assert s.scalar(select(func.count(Screening.id))) == len(jobs)
        assert s.scalar(select(func.count(func.distinct(Screening.series_id)))) == len(jobs)
        n_find = s.scalar(select(func.count(VertebraFinding.id)))
        assert n_find == sum(r.n_vertebrae for r in s.scalars(select(Screening)))
    engine.dispose()


POISON_LOADER = textwrap.dedent("""
    import os
    import signal
    from fracture_qi.screening.engine import load_job

    def loader(job):
        if str(job.key).startswith("poison"):
            with open(job.path, "a") as f:  # count the attempts
                f.write("attempt\\n")
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would end it
        return load_job(job)
""")


def test_dead_worker_is_isolated_and_batch_goes_on(tmp_path: Path, cohort: list[SeriesJob],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A series that kills its worker every time: retried once, then WORKER_DIED."""
    # the loader must be importable by the spawned workers: a module on sys.path
    (tmp_path / "poison_loader.py").write_text(POISON_LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import poison_loader  # type: ignore[import-not-found]

    attempts = tmp_path / "attempts.txt"
    poison = SeriesJob(key="poison", study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                       paths=cohort[0].paths, path=str(attempts))
    jobs = [cohort[0], poison, cohort[1], cohort[2]]
    out = by_key(screen_series(jobs, BandHeightModel(), workers=2, loader=poison_loader.loader))
    assert set(out) == {"poison", "normal0", "g3", "normal1"}
    assert out["poison"].result.reason == "WORKER_DIED"
    assert "died" in out["poison"].result.detail and "signal 9" in out["poison"].result.detail
    assert attempts.read_text().count("attempt") == 2  # the first try and one retry
    assert all(out[k].result.status == "ok" for k in ("normal0", "g3", "normal1"))


# --------------------------------------------------------------------------------------------
# the reference screener through the engine, on a small synthetic cohort written as DICOM
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reference_screener_through_engine_and_database(tmp_path: Path) -> None:
    phantom = pytest.importorskip("fracture_qi.synth.phantom")
    from fracture_qi.dicom.volume import load_series
    from fracture_qi.screening.models import load_model

    jobs = []
    for i, fractures in enumerate([[("L1", "wedge", 3)], []]):
        rng = np.random.default_rng(40 + i)
        spec = phantom.random_patient_spec(rng, age=78, sex="F", fractures=fractures)
        vol, _ = phantom.make_spine_volume(spec, fov="abdomen_pelvis", shape=(150, 160, 160),
                                           spacing=(2.5, 1.8, 1.8), rng=rng, noise_sd=15)
        study = dicomgen.new_uid("ref-study", i)
        paths = dicomgen.write_ct_series(
            tmp_path / f"p{i}", n=vol.hu.shape[0], rows=160, cols=160, spacing=2.5,
            hu=vol.hu, StudyInstanceUID=study, PixelSpacing=[1.8, 1.8], SliceThickness="2.5")
        import pydicom

        series = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
        jobs.append(SeriesJob(key=f"p{i}", study_instance_uid=study, series_instance_uid=series,
                              paths=[str(p) for p in paths], path=str(tmp_path / f"p{i}")))
    model = load_model("reference", device="cpu")
    assert model.model_id == "fqi-reference" and model.spec.kind == "reference"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db_jobs = make_db(url, jobs)
    engine = connect(url)
    summary = run_screening(_Manifest(tmp_path), engine, model=model, workers=2, progress=False,
                            jobs=db_jobs)
    assert summary.n_ok + summary.n_error == 2 and summary.device == "cpu"
    with session_scope(engine) as s:
        rows = {r.series_id: r for r in s.scalars(select(Screening))}
        for job in db_jobs:
            direct = model.screen(load_series(job.paths))  # same files, no engine
            row = rows[job.series_id]
            assert (row.status, row.reason, row.flagged, row.max_grade, row.n_vertebrae) == (
                direct.status, direct.reason, direct.flagged, direct.max_grade,
                direct.n_vertebrae)
            assert [(f.level, f.genant_grade, f.morph_type) for f in row.findings] == [
                (v.level, v.genant_grade, v.morph_type) for v in direct.vertebrae]
            if row.status == "ok":
                assert row.findings[0].geometry and "centre_zyx_mm" in row.findings[0].geometry
                from PIL import Image

                png = np.asarray(Image.open(row.keyimage_path).convert("RGB"))
                assert png.shape == direct.keyimage.shape
                assert np.array_equal(png, direct.keyimage)
        run = s.scalars(select(ScreeningRun)).one()
        assert run.model_id == "fqi-reference" and run.device == "cpu"
        assert run.params["model_kind"] == "reference"
    engine.dispose()


SLOW_LOADER = textwrap.dedent("""
    import time
    from fracture_qi.screening.engine import load_job

    def loader(job):
        if str(job.key).startswith("stuck"):
            time.sleep(120)  # a decoder that never comes back
        return load_job(job)
""")


def test_decode_timeout_is_enforced_and_batch_goes_on(tmp_path: Path, cohort: list[SeriesJob],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "slow_loader.py").write_text(SLOW_LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import slow_loader  # type: ignore[import-not-found]

    stuck = SeriesJob(key="stuck", study_instance_uid="1.2.3", series_instance_uid="1.2.3.9",
                      paths=cohort[0].paths)
    jobs = [cohort[0], stuck, cohort[1], cohort[2]]
    t0 = time.perf_counter()
    out = by_key(screen_series(jobs, BandHeightModel(), workers=2, loader=slow_loader.loader,
                               timeout_s=3.0))
    elapsed = time.perf_counter() - t0
    assert set(out) == {"stuck", "normal0", "g3", "normal1"}
    assert out["stuck"].result.status == "error"
    assert out["stuck"].result.reason == "TIMEOUT"
    assert "timeout_s" in out["stuck"].result.detail
    assert out["stuck"].decode_seconds is not None and out["stuck"].decode_seconds >= 3.0
    assert all(out[k].result.status == "ok" for k in ("normal0", "g3", "normal1"))
    assert elapsed < 60  # nobody waited for the 120 s sleep


def test_timeout_from_manifest_reaches_the_pool(tmp_path: Path, cohort: list[SeriesJob],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fracture_qi.screening import engine as engine_mod

    seen: dict[str, object] = {}

    def spy(jobs, model, **kw):
        seen.update(kw)
        return iter(())

    monkeypatch.setattr(engine_mod, "screen_series", spy)
    manifest = _Manifest(tmp_path)
    manifest.screening = {"timeout_s": 7.5}
    db = connect(f"sqlite:///{tmp_path / 'fqi.db'}")
    Base.metadata.create_all(db)
    run_screening(manifest, db, model=BandHeightModel(), workers=1, progress=False,
                  jobs=cohort[:1])
    assert seen["timeout_s"] == 7.5
    run_screening(manifest, db, model=BandHeightModel(), workers=1, progress=False,
                  jobs=cohort[:1], timeout_s=2.0)
    assert seen["timeout_s"] == 2.0


# --------------------------------------------------------------------------------------------
# a decode worker killed mid-run (issue 21, item 4), a run killed outright (item 6)
# --------------------------------------------------------------------------------------------
PACED_LOADER = textwrap.dedent("""
    import time
    from fracture_qi.screening.engine import load_job

    def loader(job):
        time.sleep(0.8)  # a series that takes a while to decode
        return load_job(job)
""")


def decode_worker_pids() -> list[int]:
    """This process's decode workers (spawned children, not multiprocessing's tracker)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=False):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            out.append(child.pid)
    return out


class WorkerKillingModel(BandHeightModel):
    """SIGKILLs the decode workers (as the OOM killer would) when given its 2nd volume."""

    def __init__(self, settle_s: float = 0.0) -> None:
        super().__init__()
        self.calls = 0
        self._lock = threading.Lock()
        self.settle_s = settle_s
        self.killed: list[int] = []

    def screen(self, volume: CTVolume) -> SeriesResult:
        with self._lock:  # the model may run on two stream threads at once
            self.calls += 1
            second = self.calls == 2
        if second:
            time.sleep(self.settle_s)  # long enough for the worker to finish and wait idle
            for pid in decode_worker_pids():
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
        return super().screen(volume)


@pytest.mark.parametrize("when", ["while_decoding", "while_idle"])
def test_worker_killed_mid_run_is_replaced_and_every_series_finishes(
        tmp_path: Path, cohort: list[SeriesJob], monkeypatch: pytest.MonkeyPatch,
        when: str) -> None:
    from fracture_qi.screening.engine import load_job

    loader = load_job
    if when == "while_decoding":
        (tmp_path / "paced_loader.py").write_text(PACED_LOADER)
        monkeypatch.syspath_prepend(str(tmp_path))
        import paced_loader  # type: ignore[import-not-found]

        loader = paced_loader.loader
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    good = [j for j in cohort if j.key != "gap"]
    jobs = make_db(url, good)
    engine = connect(url)
    model = WorkerKillingModel(settle_s=1.5 if when == "while_idle" else 0.0)
    # "while idle" needs the model on the main thread: a model thread sleeping there lets the
    # main thread decode the rest and close the pool, and there is no worker left to kill
    streams = 1 if when == "while_idle" else None
    summary = run_screening(_Manifest(tmp_path), engine, model=model, workers=1, progress=False,
                            jobs=jobs, loader=loader, model_streams=streams)
    assert model.killed, "the test did not kill a worker"
    assert summary.n_ok == len(jobs) and summary.n_error == 0, summary.lines()
    with session_scope(engine) as s:
        rows = list(s.scalars(select(Screening)))
        assert sorted(r.series_id for r in rows) == sorted(j.series_id for j in jobs)
        assert all(r.status == "ok" for r in rows), [(r.series_id, r.reason) for r in rows]
        run = s.scalars(select(ScreeningRun)).one()
        assert run.status == "finished" and run.n_ok == len(jobs)
    engine.dispose()


def test_a_dead_running_run_is_marked_interrupted_when_the_next_run_starts(
        tmp_path: Path, cohort: list[SeriesJob]) -> None:
    import datetime as dt

    from fracture_qi.screening.runs import STALE_AFTER_S, host_name

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = make_db(url, cohort[:1])
    engine = connect(url)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs (a run killed by SIGKILL)
    now = dt.datetime.now(dt.timezone.utc)
    old = now - dt.timedelta(seconds=STALE_AFTER_S + 60)
    rows = {
        "killed_here": dict(host=host_name(), pid=gone.pid, started_at=now, heartbeat_at=now),
        "alive_here": dict(host=host_name(), pid=os.getpid(), started_at=now, heartbeat_at=now),
        "silent_elsewhere": dict(host="other-node", pid=4242, started_at=old, heartbeat_at=old),
        "beating_elsewhere": dict(host="other-node", pid=4243, started_at=old, heartbeat_at=now),
    }
    ids = {}
    with session_scope(engine) as s:
        for name, kw in rows.items():
            run = ScreeningRun(model_id="m", model_version="1", params={}, status="running",
                               n_ok=3, n_error=0, **kw)
            s.add(run)
            s.flush()
            ids[name] = run.id
    summary = run_screening(_Manifest(tmp_path), engine, model=BandHeightModel(), workers=0,
                            progress=False, jobs=jobs)
    assert sorted(summary.interrupted_runs) == sorted([ids["killed_here"],
                                                       ids["silent_elsewhere"]])
    assert any("interrupted" in line for line in summary.lines())
    with session_scope(engine) as s:
        status = {name: s.get(ScreeningRun, i).status for name, i in ids.items()}
        assert status == {"killed_here": "interrupted", "alive_here": "running",
                          "silent_elsewhere": "interrupted", "beating_elsewhere": "running"}
        assert s.get(ScreeningRun, ids["silent_elsewhere"]).finished_at is not None
        this_run = s.get(ScreeningRun, summary.run_id)
        assert this_run.status == "finished" and this_run.pid == os.getpid()
        assert this_run.heartbeat_at is not None
    engine.dispose()
