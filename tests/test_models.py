"""Plug-in models: TorchScript and ONNX files with model cards, vendor results, checksums."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.errors import ModelError
from fracture_qi.screening.engine import SeriesJob, screen_series
from fracture_qi.screening.models import (
    ModelSpec,
    OnnxModel,
    TorchScriptModel,
    VendorResults,
    file_sha256,
    load_model,
    parse_levels,
    read_card,
    resolve_spec,
)

LEVELS4 = ["T12", "L1", "L2", "L3"]


class LevelGrader(torch.nn.Module):
    """Grades per level from the mean windowed intensity: a tiny, fully predictable model.

    Uniform 0 HU in a [-1000, 2000] window is 1/3 after scaling, so grades are
    ``w / 3`` = 0, 1, 2, 3 for the four levels; uniform -1000 HU gives all zeros.
    """

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.0, 3.0, 6.0, 9.0]]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3, 4))[:, None] * self.w


class StudyScorer(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))[:, None]  # (B, 1): mean of a sagittal slab image


CARD = {
    "name": "site-level-grader",
    "version": "0.3.1",
    "description": "test model",
    "input": {"kind": "volume", "shape": [8, 16, 16], "hu_window": [-1000, 2000]},
    "output": {"kind": "level_grades", "levels": LEVELS4},
}


def volume(value: int, shape=(20, 24, 24), study: str = "1.2.3") -> CTVolume:
    return CTVolume(hu=np.full(shape, value, dtype=np.int16), spacing=(2.0, 1.0, 1.0),
                    study_instance_uid=study, series_instance_uid=study + ".1")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    ts = d / "grader.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still a site format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(LevelGrader().eval()), str(ts))
        score = d / "scorer.pt"
        torch.jit.save(torch.jit.script(StudyScorer().eval()), str(score))
    (d / "grader.pt.card.yaml").write_text(yaml.safe_dump({**CARD, "format": "torchscript"}))
    onnx_path = d / "grader.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LevelGrader().eval(), (torch.rand(2, 1, 8, 16, 16),), str(onnx_path),
                          input_names=["ct"], output_names=["grades"],
                          dynamic_axes={"ct": {0: "b"}, "grades": {0: "b"}}, dynamo=False)
    (d / "grader.card.json").write_text(json.dumps({**CARD, "format": "onnx"}))
    (d / "scorer.pt.card.yaml").write_text(yaml.safe_dump({
        "name": "site-study-scorer", "version": "1", "input": {
            "kind": "sagittal_slab", "shape": [16, 16], "hu_window": [-1000, 1000],
            "slab_mm": 6},
        "output": {"kind": "study_score", "threshold": 0.6}}))
    return {"ts": ts, "onnx": onnx_path, "score": score, "dir": d}


def spec(path: Path, **kw) -> dict:
    return {"kind": "onnx" if path.suffix == ".onnx" else "torchscript", "path": str(path),
            "sha256": file_sha256(path), **kw}


@pytest.mark.parametrize("which", ["ts", "onnx"])
def test_plugin_model_end_to_end(files: dict[str, Path], which: str) -> None:
    model = load_model(spec(files[which]), flag_grade=2, device="cpu")
    assert isinstance(model, TorchScriptModel if which == "ts" else OnnxModel)
    assert (model.model_id, model.model_version) == ("site-level-grader", "0.3.1")
    assert model.sha256 == file_sha256(files[which])
    res = model.screen(volume(0))
    assert res.status == "ok"
    assert [(v.level, v.genant_grade) for v in res.vertebrae] == list(zip(LEVELS4, [0, 1, 2, 3]))
    assert res.max_grade == 3 and res.flagged and res.score == pytest.approx(1.0)
    assert res.vertebrae[0].morph_type == "normal" and res.vertebrae[1].morph_type == ""
    air = model.screen(volume(-1000))
    assert air.max_grade == 0 and not air.flagged
    # batched in one forward pass gives the same as one by one
    many = model.screen_many([volume(0), volume(-1000), volume(0, shape=(30, 40, 40))])
    assert [r.max_grade for r in many] == [3, 0, 3]


def test_torchscript_and_onnx_agree_through_the_engine(files: dict[str, Path]) -> None:
    vols = {f"s{i}": volume(v, study=f"1.2.{i}") for i, v in enumerate([-1000, -400, 0, 400])}

    def loader_for(vs):  # in-process decoding: the loader may be any callable
        return lambda job: vs[job.key]

    jobs = [SeriesJob(key=k, study_instance_uid=v.study_instance_uid,
                      series_instance_uid=v.series_instance_uid) for k, v in vols.items()]
    got = {}
    for which in ("ts", "onnx"):
        model = load_model(spec(files[which]), device="cpu")
        got[which] = {o.job.key: [v.genant_grade for v in o.result.vertebrae]
                      for o in screen_series(jobs, model, workers=0, batch_size=2,
                                             loader=loader_for(vols))}
    assert got["ts"] == got["onnx"]
    assert got["ts"]["s0"] == [0, 0, 0, 0] and got["ts"]["s1"] == [0, 1, 1, 2]
    assert got["ts"]["s2"] == [0, 1, 2, 3] and got["ts"]["s3"] == [0, 1, 3, 3]


def test_study_score_model_on_sagittal_slab(files: dict[str, Path]) -> None:
    model = load_model(spec(files["score"]), device="cpu")
    vol = volume(-1000, shape=(20, 24, 40))
    vol.hu[:, 8:16, 18:22] = 1000  # a bright midline column: the slab is centred on it
    res = model.screen(vol)
    assert res.status == "ok" and res.vertebrae == [] and res.max_grade == 0
    # slab of 7 columns (6 mm at 1 mm, centred on x=19) holds the 4 bright columns, in 8 of
    # 24 rows: mean 4/7 * 8/24 (area resampling keeps the mean up to edge effects)
    assert res.score == pytest.approx(4 / 7 * 8 / 24, abs=0.03)
    assert not res.flagged  # below the card's threshold 0.6
    bright = model.screen(volume(1000, shape=(20, 24, 40)))
    assert bright.flagged and bright.score == pytest.approx(1.0)


def test_sha256_mismatch_names_file_and_fix(files: dict[str, Path]) -> None:
    bad = spec(files["ts"], sha256="0" * 64)
    with pytest.raises(ModelError) as e:
        load_model(bad)
    msg = str(e.value)
    assert str(files["ts"]) in msg and "0" * 64 in msg and file_sha256(files["ts"]) in msg
    assert "update model.sha256" in msg
    with pytest.raises(ModelError, match="has no sha256 in the manifest"):
        load_model({"kind": "torchscript", "path": str(files["ts"])})
    with pytest.raises(ModelError, match="file not found"):
        load_model({"kind": "onnx", "path": str(files["dir"] / "nope.onnx"), "sha256": "ab"})


def test_card_problems(files: dict[str, Path], tmp_path: Path) -> None:
    lone = tmp_path / "lone.pt"
    lone.write_bytes(files["ts"].read_bytes())
    with pytest.raises(ModelError, match=r"has no model card.*lone\.pt\.card\.yaml"):
        load_model(spec(lone))
    card = tmp_path / "lone.pt.card.yaml"
    card.write_text(yaml.safe_dump({**CARD, "vesion": "1"}))  # a typo must not pass
    with pytest.raises(ModelError, match="vesion"):
        load_model(spec(lone))
    card.write_text(yaml.safe_dump({**CARD, "output": {"kind": "level_grades",
                                                       "levels": ["T12", "X9"]}}))
    with pytest.raises(ModelError, match="X9"):
        read_card(card)
    card.write_text(yaml.safe_dump({**CARD, "sha256": "f" * 64}))
    with pytest.raises(ModelError, match="card belongs to another build"):
        load_model(spec(lone))
    card.write_text(yaml.safe_dump(CARD))
    with pytest.raises(ModelError, match="model.version"):
        load_model(spec(lone, version="9.9"))
    assert load_model(spec(lone)).model_version == "0.3.1"


def test_manifest_model_config_is_accepted(files: dict[str, Path]) -> None:
    from fracture_qi.manifest import ModelConfig

    cfg = ModelConfig(kind="torchscript", path=files["ts"].name, sha256=file_sha256(files["ts"]))
    model = load_model(cfg, base=files["dir"], device="cpu")
    assert model.spec.path == str(files["ts"]) and model.spec.kind == "torchscript"
    assert resolve_spec("reference", flag_grade=1) == ModelSpec(kind="reference", flag_grade=1)
    with pytest.raises(ModelError, match="flag_grade"):
        resolve_spec("reference", flag_grade=4)


VENDOR_CSV = """study_instance_uid,flag,score,levels
1.2.1,1,0.91,T12:2;L1:3:wedge
1.2.2,0,0.05,
1.2.3,0,0.30,L2:1
"""


def test_vendor_results(tmp_path: Path) -> None:
    csv_path = tmp_path / "vendor.csv"
    csv_path.write_text(VENDOR_CSV)
    entry = {"kind": "vendor", "path": str(csv_path), "sha256": file_sha256(csv_path),
             "id": "acme-spine", "version": "3.2"}
    model = load_model(entry)
    assert isinstance(model, VendorResults) and len(model) == 3 and not model.needs_pixels
    assert (model.model_id, model.model_version) == ("acme-spine", "3.2")
    jobs = [SeriesJob(key=i, study_instance_uid=f"1.2.{i}", series_instance_uid=f"9.{i}")
            for i in (1, 2, 3, 4)]
    out = {o.job.key: o.result for o in screen_series(jobs, model, workers=2)}  # nothing decoded
    assert out[1].flagged and out[1].max_grade == 3 and out[1].score == pytest.approx(0.91)
    assert [(v.level, v.genant_grade, v.morph_type) for v in out[1].vertebrae] == [
        ("T12", 2, ""), ("L1", 3, "wedge")]
    assert out[2].status == "ok" and not out[2].flagged and out[2].vertebrae == []
    assert out[3].max_grade == 1 and not out[3].flagged  # the vendor's own flag is kept
    assert out[4].status == "error" and out[4].reason == "NO_MODEL_RESULT"
    with pytest.raises(ModelError, match="needs model.id and model.version"):
        load_model({**entry, "id": None})


def test_vendor_csv_errors_name_row_and_fix(tmp_path: Path) -> None:
    p = tmp_path / "v.csv"
    for text, pattern in [
        ("study_instance_uid,flag,score\n1,1,0.2\n", r"missing column\(s\) \['levels'\]"),
        ("study_instance_uid,flag,score,levels\n1,maybe,0.2,\n", "row 2: flag 'maybe'"),
        ("study_instance_uid,flag,score,levels\n1,1,0.2,T12-2\n", "row 2: item 'T12-2'"),
        ("study_instance_uid,flag,score,levels\n1,1,x,\n", "row 2: score 'x'"),
        ("study_instance_uid,flag,score,levels\n1,1,,\n1,0,,\n", "row 3: study 1 appears twice"),
    ]:
        p.write_text(text)
        with pytest.raises(ModelError, match=pattern):
            VendorResults(ModelSpec(kind="vendor", path=str(p), sha256=file_sha256(p),
                                    model_id="v", model_version="1"))
    assert [v.level for v in parse_levels(" L5:0 ;T4:1:crush")] == ["L5", "T4"]


def test_vendor_results_stored_like_any_model(tmp_path: Path) -> None:
    import sys

    from sqlalchemy import select

    from fracture_qi.screening.engine import run_screening
    from fracture_qi.store.db import connect, session_scope
    from fracture_qi.store.schema import Screening, ScreeningRun

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_engine import _Manifest, make_db

    csv_path = tmp_path / "vendor.csv"
    csv_path.write_text(VENDOR_CSV)
    manifest = _Manifest(tmp_path)
    manifest.model = {"kind": "vendor", "path": "vendor.csv", "sha256": file_sha256(csv_path),
                      "id": "acme-spine", "version": "3.2"}
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    jobs = make_db(url, [SeriesJob(key=i, study_instance_uid=f"1.2.{i}",
                                   series_instance_uid=f"9.{i}") for i in (1, 2, 4)])
    engine = connect(url)
    summary = run_screening(manifest, engine, workers=2, progress=False, jobs=jobs)
    assert (summary.n_ok, summary.n_error, summary.n_flagged) == (2, 1, 1)
    with session_scope(engine) as s:
        uid_of = {j.series_id: j.series_instance_uid for j in jobs}
        rows = {uid_of[r.series_id]: r for r in s.scalars(select(Screening))}
        assert {(r.model_id, r.model_version) for r in rows.values()} == {("acme-spine", "3.2")}
        assert rows["9.1"].flagged and rows["9.1"].max_grade == 3
        assert [(f.level, f.genant_grade) for f in rows["9.1"].findings] == [("T12", 2), ("L1", 3)]
        assert rows["9.4"].reason == "NO_MODEL_RESULT" and rows["9.4"].keyimage_path is None
        run = s.scalars(select(ScreeningRun)).one()
        assert run.model_sha256 == file_sha256(csv_path) and run.device == "none"
        assert run.params["model_kind"] == "vendor"
    engine.dispose()
