"""Screening over a Dask LocalCluster gives what the local engine gives."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sqlalchemy import select

from fracture_qi.screening.engine import SeriesJob, run_screening, screen_series
from fracture_qi.screening.models import file_sha256, load_model
from fracture_qi.store.db import connect, session_scope
from fracture_qi.store.schema import Screening, ScreeningRun, VertebraFinding

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dicomgen
from test_engine import _Manifest, make_db

distributed = pytest.importorskip("distributed")


class BoneFraction(torch.nn.Module):
    """Per-level grades from the fraction of bright voxels: differs between the series."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frac = (x > 0.5).float().mean(dim=(1, 2, 3, 4))[:, None]
        return frac * torch.tensor([[0.0, 10.0, 20.0]])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dask")
    model_path = root / "bone.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(BoneFraction()), str(model_path))
    (root / "bone.pt.card.yaml").write_text(yaml.safe_dump({
        "name": "bone-fraction", "version": "1.0",
        "input": {"kind": "volume", "shape": [8, 8, 8], "hu_window": [-1000, 1000]},
        "output": {"kind": "level_grades", "levels": ["T12", "L1", "L2"]}}))
    jobs = []
    rng = np.random.default_rng(3)
    for i in range(5):
        study = dicomgen.new_uid("dask-study", i)
        hu = np.full((12, 16, 16), -1000, dtype=np.int16)
        k = 2 + 3 * i  # more bone in later series
        hu[:, 8 - k // 2: 8 + (k + 1) // 2, :] = 700 + rng.integers(0, 50)
        drop = [3, 8] if i == 3 else []  # one series with two missing slices (a gap)
        paths = dicomgen.write_ct_series(root / f"s{i}", n=12, rows=16, cols=16, spacing=2.0,
                                         hu=hu, drop=drop, StudyInstanceUID=study)
        import pydicom

        series = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
        jobs.append(SeriesJob(key=f"s{i}", study_instance_uid=study, series_instance_uid=series,
                              paths=[str(p) for p in paths], path=str(root / f"s{i}")))
    entry = {"kind": "torchscript", "path": str(model_path), "sha256": file_sha256(model_path)}
    return {"root": root, "jobs": jobs, "model": entry}


def summary_of(outcomes) -> dict:
    return {o.job.key: (o.result.status, o.result.reason, o.result.flagged,
                        [v.genant_grade for v in o.result.vertebrae]) for o in outcomes}


def test_inprocess_cluster_equals_local_engine(setup: dict) -> None:
    model = load_model(setup["model"], device="cpu")
    local = summary_of(screen_series(setup["jobs"], model, workers=0))
    assert local["s3"][:2] == ("error", "SLICE_GAP")
    assert len({tuple(v[3]) for v in local.values()}) >= 3  # the grades really differ
    from fracture_qi.screening.distributed import screen_with_dask

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        remote = summary_of(screen_with_dask(setup["jobs"], model,
                                             address=cluster.scheduler_address))
    assert remote == local


@pytest.mark.slow
def test_dask_local_run_into_database_equals_local_run(setup: dict, tmp_path: Path) -> None:
    results = {}
    for mode in ("local", "dask"):
        url = f"sqlite:///{tmp_path / f'{mode}.db'}"
        jobs = make_db(url, setup["jobs"])
        engine = connect(url)
        model = load_model(setup["model"], device="cpu")
        summary = run_screening(_Manifest(tmp_path / mode), engine, model=model, workers=2,
                                progress=False, jobs=jobs,
                                dask="local" if mode == "dask" else None)
        assert (summary.n_ok, summary.n_error) == (4, 1)
        with session_scope(engine) as s:
            rows = s.scalars(select(Screening).order_by(Screening.series_id)).all()
            results[mode] = [(r.series_id, r.status, r.reason, r.flagged, r.max_grade,
                              [f.genant_grade for f in r.findings]) for r in rows]
            run = s.scalars(select(ScreeningRun)).one()
            assert run.params["dask"] == ("local" if mode == "dask" else None)
            assert s.scalar(select(VertebraFinding.id).limit(1)) is not None
        engine.dispose()
    assert results["dask"] == results["local"]


def test_single_machine_run_imports_no_dask(setup: dict) -> None:
    code = textwrap.dedent(f"""
        import sys
        from fracture_qi.screening.engine import screen_series, SeriesJob
        from fracture_qi.screening.models import load_model
        model = load_model({setup['model']!r}, device="cpu")
        jobs = [SeriesJob(**j) for j in {[j.__dict__ for j in setup['jobs'][:2]]!r}]
        out = list(screen_series(jobs, model, workers=1))
        assert all(o.result.status == "ok" for o in out), out
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
        assert not leaked, leaked
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
