"""``fracture-qi screen`` and ``fracture-qi export`` on folders nobody prepared."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from fracture_qi.cli.main import main
from fracture_qi.screening.engine import screen_paths
from fracture_qi.screening.models import file_sha256
from fracture_qi.screening.results import STUDIES_COLUMNS, VERTEBRAE_COLUMNS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dicomgen
from test_engine import BandHeightModel, spine_hu


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A folder as a PACS export leaves it: several studies, a scout, an under-50,
    a note, a truncated copy, a stray binary and a DICOMDIR-less nesting."""
    root = tmp_path_factory.mktemp("messy")
    s1 = dicomgen.new_uid("cli-study", 1)
    s2 = dicomgen.new_uid("cli-study", 2)
    s3 = dicomgen.new_uid("cli-study", 3)
    fractured = spine_hu(short={1: 0.5})
    # study 1: a thin series with a grade-3 body, a thick series, and a localizer
    dicomgen.write_ct_series(root / "p1" / "thin", n=fractured.shape[0], rows=16, cols=16,
                             spacing=1.0, hu=fractured, StudyInstanceUID=s1,
                             SeriesNumber=3, ConvolutionKernel="B60f", SliceThickness="1.0")
    dicomgen.write_localizer(root / "p1" / "scout", StudyInstanceUID=s1)
    # study 2: normal spine, nested deeper, with a note beside it
    normal = spine_hu()
    dicomgen.write_ct_series(root / "p2" / "a" / "b", n=normal.shape[0], rows=16, cols=16,
                             spacing=1.0, hu=normal, StudyInstanceUID=s2, PatientAge="081Y")
    dicomgen.write_junk(root / "p2" / "README.txt", "exported by PACS\n")
    # study 3: a 42-year-old
    young = dicomgen.write_ct_series(root / "p3", n=20, rows=16, cols=16, spacing=1.0,
                                     hu=spine_hu()[:20], StudyInstanceUID=s3, PatientAge="042Y",
                                     PatientBirthDate="19830101")
    # a truncated copy of one file, and binary junk
    trunc = root / "copy" / "IM9999.dcm"
    trunc.parent.mkdir()
    trunc.write_bytes(young[0].read_bytes())
    dicomgen.truncate(trunc, keep=0.5)
    (root / "copy" / "thumbs.db").write_bytes(bytes(range(256)) * 4)
    return {"root": root, "fractured": s1, "normal": s2, "young": s3}


def test_screen_paths_on_messy_folder(messy: dict, tmp_path: Path) -> None:
    out = tmp_path / "r"
    summary = screen_paths([messy["root"]], out, model=BandHeightModel(), workers=1,
                           progress=False)
    assert summary.n_ok == 2 and summary.n_error == 0
    cols, rows = read_csv(out / "studies.csv")
    assert tuple(cols) == STUDIES_COLUMNS
    by_study = {}
    for r in rows:
        by_study.setdefault(r["study_instance_uid"], []).append(r)
    f = [r for r in by_study[messy["fractured"]] if r["status"] == "ok"]
    assert len(f) == 1 and f[0]["flagged"] == "1" and f[0]["max_grade"] == "3"
    assert f[0]["n_vertebrae"] == "4" and float(f[0]["seconds"]) > 0
    assert f[0]["path"].endswith("thin")
    scout = [r for r in by_study[messy["fractured"]] if r["status"] != "ok"]
    assert [(r["status"], r["reason"], r["flagged"]) for r in scout] == [
        ("excluded", "LOCALIZER", "")]
    assert [(r["status"], r["flagged"]) for r in by_study[messy["normal"]]] == [("ok", "0")]
    assert [(r["status"], r["reason"]) for r in by_study[messy["young"]]] == [
        ("excluded", "AGE_UNDER_50")]
    file_rows = {Path(r["path"]).name: r for r in by_study[""]}
    assert file_rows["IM9999.dcm"]["status"] == "error"
    # cut inside its header: the scan's code for it (TRUNCATED or UNREADABLE) is passed on
    assert file_rows["IM9999.dcm"]["reason"] in {"TRUNCATED", "UNREADABLE"}
    assert file_rows["README.txt"]["reason"] == "NOT_DICOM"
    assert file_rows["thumbs.db"]["reason"] == "NOT_DICOM"
    vcols, vrows = read_csv(out / "vertebrae.csv")
    assert tuple(vcols) == VERTEBRAE_COLUMNS
    assert len(vrows) == 8
    g3 = [r for r in vrows if r["genant_grade"] == "3"]
    assert len(g3) == 1 and g3[0]["study_instance_uid"] == messy["fractured"]
    assert g3[0]["level"] == "L4" and g3[0]["morph_type"] == "crush"
    assert float(g3[0]["ha_mm"]) == pytest.approx(5.0)
    # key images: one per screened series, non-identifying names, mapped in index.csv
    pngs = sorted((out / "keyimages").glob("*.png"))
    assert len(pngs) == 2 and all(p.name.startswith("k-") for p in pngs)
    _, idx = read_csv(out / "keyimages" / "index.csv")
    assert {r["study_instance_uid"] for r in idx} == {messy["fractured"], messy["normal"]}
    assert not list(out.glob("*.partial"))
    # --limit screens the first N chosen series; the others are still listed, not screened
    lim = screen_paths([messy["root"]], tmp_path / "lim", model=BandHeightModel(), workers=0,
                       progress=False, limit=1)
    assert (lim.n_planned, lim.n_ok) == (1, 1)
    _, lrows = read_csv(tmp_path / "lim" / "studies.csv")
    assert sum(r["status"] == "ok" for r in lrows) == 1 and len(lrows) == len(rows) - 1


class MeanGrader(torch.nn.Module):
    """Per-level grades from the mean windowed value (predictable, tiny)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3, 4))[:, None] * torch.tensor([[0.0, 30.0]])


def test_cli_screen_folder_with_plugin_model(messy: dict, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(MeanGrader()), str(model))
    (tmp_path / "m.pt.card.yaml").write_text(yaml.safe_dump({
        "name": "mean-grader", "version": "2", "input": {"kind": "volume", "shape": [8, 8, 8],
                                                         "hu_window": [-1000, 1000]},
        "output": {"kind": "level_grades", "levels": ["L1", "L2"]}}))
    out = tmp_path / "r"
    rc = main(["screen", str(messy["root"]), "--out", str(out), "--model", str(model),
               "--model-sha256", file_sha256(model), "--workers", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mean-grader 2" in printed and "2 screened ok" in printed
    _, rows = read_csv(out / "studies.csv")
    assert len(rows) == 7  # 4 series + 3 unusable files
    assert sum(r["status"] == "ok" for r in rows) == 2
    _, vrows = read_csv(out / "vertebrae.csv")
    assert [r["level"] for r in vrows] == ["L1", "L2", "L1", "L2"]
    # a wrong checksum stops the run before anything is read: exit 2, one line
    rc = main(["screen", str(messy["root"]), "--out", str(tmp_path / "r2"), "--model",
               str(model), "--model-sha256", "0" * 64, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "sha256" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_cli_argument_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["screen"]) == 2
    assert main(["screen", str(tmp_path)]) == 2  # PATH without --out
    assert "--out" in capsys.readouterr().err
    assert main(["screen", str(tmp_path), "--manifest", "m.yaml"]) == 2
    assert main(["screen", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("screen", "export"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and "exit status" in text


def _rows_without_seconds(path: Path) -> list[tuple]:
    _, rows = read_csv(path)
    return sorted(tuple(v for k, v in r.items() if k != "seconds") for r in rows)


def test_manifest_index_screen_export_match_folder_mode(
        messy: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTURE_QI_KEY", "a-test-secret-of-sufficient-length")
    model = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(MeanGrader()), str(model))
    (tmp_path / "m.pt.card.yaml").write_text(yaml.safe_dump({
        "name": "mean-grader", "version": "2", "input": {"kind": "volume", "shape": [8, 8, 8],
                                                         "hu_window": [-1000, 1000]},
        "output": {"kind": "level_grades", "levels": ["L1", "L2"]}}))
    manifest = tmp_path / "data_manifest.yaml"
    manifest.write_text(yaml.safe_dump({
        "version": 1, "name": "cli-test", "database": "sqlite:///fqi.db",
        "pseudonymisation_key": "env:FRACTURE_QI_KEY",
        "dicom_sources": [{"name": "archive", "kind": "folder", "path": str(messy["root"])}],
        "model": {"kind": "torchscript", "path": "m.pt", "sha256": file_sha256(model)},
        "screening": {"flag_grade": 2, "workers": 1},
        "outputs": {"reports": "reports/", "keyimages": "keyimages/"},
    }))
    assert main(["index", "--manifest", str(manifest)]) == 0
    capsys.readouterr()
    assert main(["screen", "--manifest", str(manifest), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mean-grader 2" in printed and "2 screened ok" in printed
    # resumable: a second run finds nothing left to do
    assert main(["screen", "--manifest", str(manifest), "--no-progress"]) == 0
    assert "nothing to screen" in capsys.readouterr().out
    assert main(["export", "--manifest", str(manifest), "--out", str(tmp_path / "exp")]) == 0
    assert "mean-grader 2" in capsys.readouterr().out
    assert main(["screen", str(messy["root"]), "--out", str(tmp_path / "dir"), "--model",
                 str(model), "--model-sha256", file_sha256(model), "--no-progress"]) == 0
    for name, columns in (("studies.csv", STUDIES_COLUMNS), ("vertebrae.csv", VERTEBRAE_COLUMNS)):
        cols, _ = read_csv(tmp_path / "exp" / name)
        assert tuple(cols) == columns
        assert _rows_without_seconds(tmp_path / "exp" / name) == \
            _rows_without_seconds(tmp_path / "dir" / name), name
    # a model with no results is a mistake to name, not an empty export
    assert main(["export", "--manifest", str(manifest), "--out", str(tmp_path / "exp2"),
                 "--model-id", "no-such-model"]) == 2
    assert "no screening results" in capsys.readouterr().err
    assert not (tmp_path / "exp2" / "studies.csv").exists()


@pytest.mark.realdata
def test_real_jpeg2000_slices_end_to_end(realdata: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The 20 real JPEG 2000 slices (2 mm, T11/T12 region) through decode workers and the
    reference screener, then through the command line."""
    from fracture_qi.screening.engine import SeriesJob, screen_series
    from fracture_qi.screening.models import load_model

    src = realdata / "totalsegmentator" / "example_ct_dicom"
    paths = sorted(str(p) for p in src.iterdir())
    model = load_model("reference", device="cpu")
    (o,) = screen_series([SeriesJob(key="real", study_instance_uid="", series_instance_uid="",
                                    paths=paths)], model, workers=1)
    assert o.n_slices == 20 and o.decode_seconds > 0  # decoded from JPEG 2000 in a worker
    # 40 mm of spine: the screener measures bodies or says there are none, nothing else
    assert o.result.status == "ok" or o.result.reason == "NO_VERTEBRAE", o.result
    # the command line on the folder: these anonymised files carry no UIDs, so the scan
    # reports each as a file it cannot place (or, if it groups them, one series): never a crash
    out = tmp_path / "r"
    rc = main(["screen", str(src), "--out", str(out), "--workers", "1", "--device", "cpu",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    cols, rows = read_csv(out / "studies.csv")
    assert tuple(cols) == STUDIES_COLUMNS
    assert len(rows) in (1, 20) and all(r["status"] in ("ok", "excluded", "error") for r in rows)
    assert all(r["reason"] for r in rows if r["status"] != "ok")


@pytest.mark.realdata
def test_real_slices_without_uids_or_age_end_to_end(realdata, tmp_path):
    """20 real anonymised slices (no UIDs, no age): AGE_UNKNOWN by default; --ignore-age
    screens them (reason blank when ok, else the screener's honest reason)."""
    folder = realdata / "totalsegmentator" / "example_ct_dicom"
    out = tmp_path / "r"
    assert main(["screen", str(folder), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    _, rows = read_csv(out / "studies.csv")
    assert [(r["status"], r["reason"]) for r in rows] == [("excluded", "AGE_UNKNOWN")]
    assert rows[0]["series_instance_uid"].startswith("2.25.")
    out2 = tmp_path / "r2"
    assert main(["screen", str(folder), "--out", str(out2), "--no-progress", "--workers", "1",
                 "--ignore-age"]) == 0
    _, (row,) = read_csv(out2 / "studies.csv")
    assert row["series_instance_uid"] == rows[0]["series_instance_uid"]  # deterministic
    if row["status"] == "ok":
        assert row["reason"] == "" and list((out2 / "keyimages").glob("*.png"))
    else:  # 20 slices x 2 mm: the reference screener may see too little spine to measure
        assert (row["status"], row["reason"]) == ("error", "NO_VERTEBRAE")


def test_ignore_age_is_refused_with_manifest(tmp_path):
    assert main(["screen", "--manifest", str(tmp_path / "m.yaml"), "--ignore-age"]) == 2
    assert main(["screen", str(tmp_path), "--out", str(tmp_path / "o"), "--timeout", "0"]) == 2


def test_max_slice_mm_option(tmp_path: Path) -> None:
    # a 5 mm series: SLICE_TOO_THICK by default, graded when the limit is raised (research)
    root = tmp_path / "in"
    dicomgen.write_ct_series(root / "thick", n=12, rows=16, cols=16, spacing=5.0)
    assert main(["screen", str(root), "--out", str(tmp_path / "d"), "--workers", "0",
                 "--no-progress"]) == 0
    _, rows = read_csv(tmp_path / "d" / "studies.csv")
    assert [(r["status"], r["reason"]) for r in rows] == [("excluded", "SLICE_TOO_THICK")]
    assert main(["screen", str(root), "--out", str(tmp_path / "l"), "--workers", "0",
                 "--no-progress", "--max-slice-mm", "5"]) == 0
    _, rows = read_csv(tmp_path / "l" / "studies.csv")
    assert rows[0]["reason"] != "SLICE_TOO_THICK"
    assert main(["screen", str(root), "--out", str(tmp_path / "x"), "--max-slice-mm", "0"]) == 2
    assert main(["screen", "--manifest", str(tmp_path / "m.yaml"), "--max-slice-mm", "5"]) == 2
