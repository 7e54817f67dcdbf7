"""End to end: papermill runs the audit notebooks on a small cohort, twice, identically;
a failing notebook fails the run; a publication run holds no identifier from the database,
in any file, the slides included; the provenance says who ran it, where and how, and an
edit of it is noticed; a copied site verifies.

The cohort is written straight into the database by the simulation (no DICOM); the audit
reads it without screening (the default); the screening path of the cohort notebook is the
engine's, tested in tests/test_engine.py. Each notebook costs a kernel start (about 5-20 s
on 2 busy cores), so the module runs the full audit once plus its verification rerun.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import nbformat
import pytest
from sqlalchemy.orm import Session

from fracture_qi.cli.main import main
from fracture_qi.errors import ReportError
from fracture_qi.simulation import identifiers, make_fixture_site
from fracture_qi.reporting.run import AUDIT_NOTEBOOKS, run_audit
from fracture_qi.reporting.verify import verify_audit
from fracture_qi.store import open_store
from fracture_qi.store import schema as S

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("audit-site")
    manifest = make_fixture_site(folder, studies=700, seed=21)
    engine = open_store(str(manifest))
    out = folder / "reports" / "q-test"
    result = run_audit(manifest, out, {"period_start": "2024-01-01"}, publish=True, jobs=2,
                       command="fracture-qi audit --manifest data_manifest.yaml --out q-test")
    yield manifest, engine, out, result
    engine.dispose()


def test_audit_run_writes_every_output(audited) -> None:  # type: ignore[no-untyped-def]
    _, engine, out, result = audited
    assert result.status == "ok" and result.published, result.summary()
    for nb in AUDIT_NOTEBOOKS:
        stem = nb.removesuffix(".ipynb")
        executed = nbformat.read(out / "notebooks" / nb, as_version=4)
        assert executed.metadata["papermill"]["parameters"]["publish"] is True
        assert executed.metadata["fracture_qi"]["mode"] == "publish"
        html = (out / "html" / f"{stem}.html").read_text()
        assert "ctx = AuditContext.open" not in html  # no code in the HTML
    tables = {p.name for p in (out / "tables").glob("*.csv")}
    assert {"funnel.csv", "accuracy.csv", "kpis.csv", "spc_ppv.csv", "pack_headline.csv",
            "ppv_by_site.csv", "time_to_therapy.csv"} <= tables
    for fig in ("funnel", "spc_ppv", "time_to_therapy", "pack_funnel"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "figures" / f"{fig}.html").stat().st_size > 1000
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["mode"] == "publish" and prov["status"] == "ok"
    assert "screen" not in prov["parameters"] and prov["defaults"]["screen"] == "False"
    # an audit reads: the database it audits is unchanged (nothing screened)
    assert prov["database_state"]["before"] == prov["database_state"]["after"]
    assert prov["model"] == "reference:1.0"
    # who ran it, where and how; the manifest relative to the run (a copied site verifies)
    assert prov["ran_by"]["user"] and prov["ran_by"]["host"]
    assert prov["ran_by"]["command"].startswith("fracture-qi audit --manifest")
    assert prov["manifest_path"] == "../../data_manifest.yaml"
    assert prov["data_label"] == "synthetic demo data" and "SYNTHETIC DEMO DATA" in prov["context_line"]
    from fracture_qi.reporting.provenance import provenance_hash

    assert prov["integrity"]["sha256"] == provenance_hash(prov)
    assert "ctx.table" not in (out / "html" / "03_treatment_kpis.html").read_text()
    assert prov["database_state"]["after"]["tables"]["studies"]["rows"] == 700
    assert prov["inputs"]["manifest"]["sha256"]
    assert prov["packages"]["papermill"] and "commit" in prov["code"]
    assert prov["disclosure"].startswith("scanned: no patient identifier")
    with Session(engine) as s:
        row = s.get(S.AuditRun, result.audit_run_id)
    assert (row.status, row.published, row.db_state_hash, row.provenance_sha256) == (
        "ok", True, prov["database_state"]["after"]["sha256"], prov["integrity"]["sha256"])
    # every page states the run, the code version and that the data are synthetic
    page = (out / "html" / "02_ai_vs_nurse.html").read_text()
    assert "q-test" in page and prov["code"]["describe"] in page
    assert "SYNTHETIC DEMO DATA" in page
    # every count in the published funnel is suppressed/rounded
    funnel = (out / "tables" / "funnel.csv").read_text().splitlines()[1:]
    numbers = [line.split(",")[1] for line in funnel]
    assert all(n == "*" or (n.isdigit() and int(n) % 5 == 0) for n in numbers), numbers


def test_no_identifier_in_any_file_of_a_publication_run(audited) -> None:  # type: ignore[no-untyped-def]
    """Independent of the run's own scan: plain substring search over every file's bytes."""
    _, engine, out, _ = audited
    ids = identifiers(engine)
    needles: set[str] = set()
    for nhs in ids["nhs_numbers"]:
        needles |= {nhs, f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}", f"{nhs[:3]}-{nhs[3:6]}-{nhs[6:]}"}
    for name in ids["names"]:
        family, given = name.split("^")[:2]
        needles |= {name, f"{given} {family.title()}", f"{family.title()}, {given}",
                    f"{given} {family}"}
    needles |= set(ids["mrns"]) | set(ids["accession_numbers"])
    needles |= {u for u in ids["study_uids"] + ids["series_uids"]}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 30
    from fracture_qi.reporting.disclosure import file_texts

    for p in files:
        # the slides are zipped XML and a PDF: read what a reader would see
        text = "\n".join(file_texts(p)) if p.suffix in (".pptx", ".pdf") else \
            p.read_bytes().decode("utf-8", "replace")
        low = text.lower()
        hits = [n for n in needles if n.lower() in low]
        # UIDs are dotted numbers: make sure a hit is not just the prefix of a longer UID
        hits = [n for n in hits if not n[0].isdigit() or "." not in n
                or any(not text[i + len(n): i + len(n) + 1].isdigit()
                       for i in _positions(text, n))]
        assert not hits, f"{p.relative_to(out)} holds identifiers"


def _positions(text: str, needle: str) -> list[int]:
    out, i = [], text.find(needle)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + 1)
    return out


def test_the_pack_holds_the_run_s_headline_numbers(audited) -> None:  # type: ignore[no-untyped-def]
    from pptx import Presentation

    _, _, out, result = audited
    assert result.provenance["slides"] == {"pptx": "slides/conference-pack.pptx",
                                           "pdf": "slides/conference-pack.pdf"}
    deck = Presentation(str(out / "slides" / "conference-pack.pptx"))
    texts, notes = [], []
    for slide in deck.slides:
        for shape in slide.shapes:
            if shape.has_text_frame:
                texts.append(shape.text_frame.text)
            if shape.has_table:
                texts += [c.text for row in shape.table.rows for c in row.cells]
        notes.append(slide.notes_slide.notes_text_frame.text)
    text = "\n".join(texts)
    head = (out / "tables" / "pack_headline.csv").read_text().splitlines()[1:]
    for line in head:
        measure, value = line.split(",", 1)
        assert value.strip('"') in text, (measure, value)
    kpis = (out / "tables" / "pack_kpis.csv").read_text()
    assert "FLS assessment within 90 days" in text and "FLS assessment within 90 days" in kpis
    assert "SYNTHETIC DEMO DATA" in text and "Publication mode" in text
    assert any("Provenance: run q-test" in n for n in notes)
    assert len(deck.slides) >= 8


def test_the_pdf_renders_and_holds_no_identifier(audited, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.reporting.disclosure import IdentifierIndex, file_texts

    _, engine, out, _ = audited
    pdf = out / "slides" / "conference-pack.pdf"
    got = subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "3", str(pdf),
                          str(tmp_path / "page")], capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stderr
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pages)
    text = "\n".join(file_texts(pdf))
    assert "Headline" in text and "SYNTHETIC DEMO DATA" in text
    assert IdentifierIndex.from_engine(engine).find(text) == set()


def test_a_copied_site_verifies_with_identical_tables(audited, tmp_path) -> None:  # type: ignore[no-untyped-def]
    manifest, _, out, _ = audited
    copy = tmp_path / "copied-site"
    shutil.copytree(manifest.parent, copy, ignore=shutil.ignore_patterns("*.verify"))
    run = copy / "reports" / out.name
    result = verify_audit(run, jobs=2)
    assert result.identical, result.report()
    assert result.tables_compared >= 20
    for p in (run / "tables").glob("*.csv"):
        assert (result.rerun_dir / "tables" / p.name).read_bytes() == p.read_bytes(), p.name  # type: ignore[operator]
    # the provenance explains nothing changed in the data
    assert not [d for d in result.differences if d.startswith("database state")]


def test_an_edited_provenance_is_noticed(audited, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.reporting.provenance import provenance_hash
    from fracture_qi.reporting.verify import check_integrity, check_recorded_hash

    manifest, _, out, _ = audited
    prov = json.loads((out / "provenance.json").read_text())
    assert check_integrity(prov) == [] and check_recorded_hash(prov, manifest) == []
    edited = {**prov, "parameters": {**prov["parameters"], "period_start": "2025-01-01"}}
    assert "edited after the run" in check_integrity(edited)[0]
    # recomputing the file's own hash does not help: the database kept the original
    edited["integrity"] = {"sha256": provenance_hash(edited)}
    assert check_integrity(edited) == []
    assert "does not match the hash the database recorded" in check_recorded_hash(edited, manifest)[0]


def test_verify_reports_a_changed_table(audited, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fracture_qi.reporting.verify import compare_tables

    _, _, out, _ = audited
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out / "tables", copy / "tables")
    p = copy / "tables" / "funnel.csv"
    p.write_text(p.read_text().replace("CT studies,700", "CT studies,705"))
    assert "CT studies,705" in p.read_text()
    (copy / "tables" / "extra.csv").write_text("a\n1\n")
    diffs, _ = compare_tables(out, copy)
    assert any(d.startswith("table funnel.csv: differs from line 2") for d in diffs), diffs
    assert "table extra.csv: new in the rerun" in diffs


KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
          "language_info": {"name": "python"}}

BROKEN = """\
manifest: str = "data_manifest.yaml"  # set by the runner
out_dir: str = "."  # set by the runner
publish: bool = True  # set by the runner
flag_grade: int = 2  # a grade
"""


def test_failing_notebook_fails_the_run_and_is_kept(audited, tmp_path) -> None:  # type: ignore[no-untyped-def]
    manifest, engine, _, _ = audited
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(BROKEN, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "if flag_grade == 3:\n    raise ValueError('grade 3 chosen: this notebook fails')\n"),
    ]
    nb.metadata = KERNEL
    nbformat.write(nb, nbdir / "broken.ipynb")
    out = tmp_path / "run"
    with pytest.raises(ReportError) as e:
        run_audit(manifest, out, {"flag_grade": "3"}, publish=True, notebook_dir=nbdir,
                  notebooks=["broken.ipynb"])
    assert "broken.ipynb: ValueError: grade 3 chosen" in str(e.value)
    result = e.value.result  # type: ignore[attr-defined]
    assert result.status == "failed" and not result.published
    kept = nbformat.read(out / "notebooks" / "broken.ipynb", as_version=4)
    banner = "".join(kept.cells[0].source)
    assert "An Exception was encountered" in banner  # papermill's error banner, at the top
    assert (out / "html" / "broken.html").exists()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "failed"
    with Session(engine) as s:
        row = s.get(S.AuditRun, result.audit_run_id)
    assert row.status == "failed" and row.published is False and "grade 3" in row.error


def test_cli_failing_run_exits_1(audited, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    manifest, _, _, _ = audited
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(BROKEN, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("1 / 0")]
    nb.metadata = KERNEL
    nbformat.write(nb, nbdir / "zero.ipynb")
    # the CLI runs packaged notebooks by name; point it at this one through the library
    from fracture_qi.reporting import run as run_mod

    original = run_mod.NOTEBOOK_DIR
    run_mod.NOTEBOOK_DIR = nbdir
    try:
        rc = main(["audit", "--manifest", str(manifest), "--out", str(tmp_path / "r"),
                   "--notebooks", "zero.ipynb", "--internal"])
    finally:
        run_mod.NOTEBOOK_DIR = original
    assert rc == 1
    captured = capsys.readouterr()
    assert "ZeroDivisionError" in captured.err and "failed" in captured.out
