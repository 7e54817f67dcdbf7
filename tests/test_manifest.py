"""data_manifest.yaml: the synthetic generator's shape validates; every error names the field,
the value and the fix; sha256 verification; relative paths; secrets by reference only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fracture_qi.cli.main import main
from fracture_qi.config import settings
from fracture_qi.errors import ManifestError, PseudonymisationKeyError
from fracture_qi.manifest import (
    DicomWebSource,
    DimseSource,
    FolderSource,
    read_manifest,
    read_manifest_text,
    rehash,
)
from fracture_qi.pseudonym import DEMO_KEY

GOOD = """\
version: 1
name: synthetic-cohort-seed7
synthetic: {synthetic}
database: sqlite:///fracture_qi.db          # relative to this file
pseudonymisation_key: env:FQI_TEST_KEY
dicom_sources:
  - {{name: synthetic, kind: folder, path: dicom/}}
  - {{name: pacs, kind: dicomweb, url: "http://127.0.0.1:8042/dicom-web", timeout_s: 5, retries: 2,
      auth: {{username: fqi, password: env:PACS_PASSWORD}}}}
  - {{name: pacs-dimse, kind: dimse, host: 127.0.0.1, port: 4242, called_aet: ORTHANC,
      calling_aet: FRACTUREQI, retrieve: move, move_destination: FQISCP, storage_port: 11113}}
fls_records:
  - {{name: fls, kind: csv, path: fls_records.csv, sha256: "{sha}"}}
model: {{kind: reference}}
screening: {{flag_grade: 2, low_density_hu: 110, device: auto, batch_size: 4, workers: 2}}
adjudication: {{audit_negative_rate: 0.1, double_read_rate: 0.2, lease_minutes: 30}}
outputs: {{reports: reports/, keyimages: {{path: keyimages/, sensitivity: identifiable}}}}
truth: {{path: truth/}}
"""


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    (tmp_path / "dicom").mkdir()
    (tmp_path / "truth").mkdir()
    (tmp_path / "fls_records.csv").write_text("record_id,nhs_number\n1,9990000018\n")
    return tmp_path


def write(folder: Path, synthetic: str = "true", **replace: str) -> Path:
    sha = hashlib.sha256((folder / "fls_records.csv").read_bytes()).hexdigest()
    text = GOOD.format(synthetic=synthetic, sha=sha)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    p = folder / "data_manifest.yaml"
    p.write_text(text)
    return p


def error_of(path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    return info.value


def test_generator_shape_is_valid_and_paths_are_relative_to_the_manifest(cohort, monkeypatch):
    monkeypatch.delenv("FRACTURE_QI_DATABASE", raising=False)
    m = read_manifest(write(cohort))
    assert m.path == (cohort / "data_manifest.yaml").resolve() and m.base == cohort.resolve()
    folder, web, dimse = m.dicom_sources
    assert isinstance(folder, FolderSource) and folder.path == cohort.resolve() / "dicom"
    assert isinstance(web, DicomWebSource) and web.timeout_s == 5 and web.retries == 2
    assert web.auth is not None and web.auth.password == "env:PACS_PASSWORD"
    assert isinstance(dimse, DimseSource) and dimse.retrieve == "move" and dimse.port == 4242
    assert m.fls_records[0].path == cohort.resolve() / "fls_records.csv"
    assert m.outputs.reports.path == cohort.resolve() / "reports"
    assert m.outputs.keyimages.sensitivity == "identifiable"
    assert m.outputs.reports.sensitivity == "pseudonymous"
    assert m.truth is not None and m.truth.path == cohort.resolve() / "truth"
    assert m.database_url == f"sqlite:///{cohort.resolve() / 'fracture_qi.db'}"
    assert m.folder_sources() == [folder] and m.pacs_sources() == [web, dimse]
    assert m.screening.flag_grade == 2 and m.adjudication.lease_minutes == 30


def test_folder_argument_finds_data_manifest(cohort):
    write(cohort)
    assert read_manifest(cohort).name == "synthetic-cohort-seed7"


@pytest.mark.parametrize(
    ("replace", "field", "words"),
    [
        ({"kind: folder, path: dicom/": "kind: folder, pathh: dicom/"},
         "dicom_sources[0].pathh", ["unknown key", "allowed keys here: name, kind, path"]),
        ({"lease_minutes: 30": "lease_minute: 30"},
         "adjudication.lease_minute", ["unknown key", "lease_minutes"]),
        ({"version: 1": "version: 1\ndatabse: x"}, "databse", ["unknown key", "database"]),
        ({"kind: dicomweb": "kind: dicomwebb"}, "dicom_sources[1]", ["dicomwebb", "folder|dicomweb|dimse"]),
        ({"port: 4242": "port: 99999"}, "dicom_sources[2].port", ["65535"]),
        ({"called_aet: ORTHANC,": ""}, "dicom_sources[2].called_aet", ["required key missing"]),
        ({"flag_grade: 2": "flag_grade: 5"}, "screening.flag_grade", ["3"]),
        ({"device: auto": "device: gpu"}, "screening.device", ["cuda"]),
        ({"version: 1": "version: 2"}, "version", ["version"]),
        ({"env:FQI_TEST_KEY": "hunter2hunter2hunter2"}, "pseudonymisation_key", ["never the secret"]),
        ({"password: env:PACS_PASSWORD": "password: hunter2"}, "dicom_sources[1].auth.password",
         ["env:"]),
        ({"sensitivity: identifiable": "sensitivity: secret"}, "outputs.keyimages.sensitivity",
         ["publishable"]),
        ({"sqlite:///fracture_qi.db": "postgresql://u:pw@host/db"}, "database", ["password"]),
    ],
)
def test_each_error_names_field_value_and_fix(cohort, replace, field, words):
    e = error_of(write(cohort, **replace))
    assert e.field == field, str(e)
    assert e.fix and str(e.manifest).endswith("data_manifest.yaml")
    for w in words:
        assert w in str(e), (w, str(e))


def test_missing_folder_and_file_name_the_path(cohort):
    e = error_of(write(cohort, **{"path: dicom/": "path: nowhere/"}))
    assert e.field == "dicom_sources[0].path" and "nowhere" in str(e.value) and "not found" in e.problem
    e = error_of(write(cohort, **{"path: fls_records.csv": "path: gone.csv"}))
    assert e.field == "fls_records[0].path" and str(e.value).endswith("gone.csv")


def test_sha256_mismatch_then_rehash(cohort, capsys):
    p = write(cohort)
    (cohort / "fls_records.csv").write_text("record_id,nhs_number\n1,9990000018\n2,9990000026\n")
    e = error_of(p)
    assert e.field == "fls_records[0].sha256"
    assert "changed since the manifest was written" in e.problem and "--rehash" in e.fix
    comment = "# relative to this file"
    assert main(["manifest", "--manifest", str(p), "--rehash"]) == 0
    assert "fls_records[0].sha256" in capsys.readouterr().out
    assert comment in p.read_text()  # layout and comments kept
    read_manifest(p)
    assert rehash(p) == {}


def test_bad_sha256_format_and_yaml_errors(cohort):
    e = error_of(write(cohort, **{'sha256: "': 'sha256: "zz'}))
    assert e.field == "fls_records[0].sha256" and "64 hexadecimal" in e.problem
    (cohort / "data_manifest.yaml").write_text("version: 1\ndicom_sources: [\n")
    e = error_of(cohort / "data_manifest.yaml")
    assert e.field == "(file)" and "line" in str(e.value)
    (cohort / "data_manifest.yaml").write_text("")
    assert "empty" in error_of(cohort / "data_manifest.yaml").problem
    assert "not found" in error_of(cohort / "nope.yaml").problem


def test_record_kind_is_inferred_from_the_sketch_shape(tmp_path):
    m = read_manifest_text(
        "version: 1\nfls_records:\n  - {name: a, path: a.csv}\n  - {name: b, path: b.xlsx}\n"
        "  - {name: c, url: env:FLS_DB, query: select 1}\n", tmp_path,
    )
    assert [r.kind for r in m.fls_records] == ["csv", "excel", "sql"]
    with pytest.raises(ManifestError, match="password"):
        read_manifest_text(
            "version: 1\nfls_records:\n  - {name: c, url: 'postgresql://u:pw@h/db', query: q}\n",
            tmp_path,
        )


def test_duplicate_source_names_are_refused(tmp_path):
    with pytest.raises(ManifestError, match="unique"):
        read_manifest_text(
            "version: 1\ndicom_sources:\n  - {name: a, kind: folder, path: x}\n"
            "  - {name: a, kind: folder, path: y}\n", tmp_path,
        )


def test_model_file_is_verified(cohort):
    (cohort / "m.pt").write_bytes(b"model")
    sha = hashlib.sha256(b"model").hexdigest()
    p = write(cohort, **{"model: {kind: reference}": f"model: {{kind: torchscript, path: m.pt, sha256: {sha}}}"})
    assert read_manifest(p).model.path == cohort.resolve() / "m.pt"
    (cohort / "m.pt").write_bytes(b"other")
    assert error_of(p).field == "model.sha256"
    e = error_of(write(cohort, **{"model: {kind: reference}": "model: {kind: onnx}"}))
    assert e.field == "model" and "needs path" in e.problem


def test_secret_env_demo_fallback_and_real_refusal(cohort, monkeypatch, caplog):
    monkeypatch.delenv("FQI_TEST_KEY", raising=False)
    monkeypatch.delenv("FRACTURE_QI_KEY_FILE", raising=False)
    m = read_manifest(write(cohort))
    assert m.secret() == DEMO_KEY.encode()
    assert "demo key" in caplog.text
    real = read_manifest(write(cohort, synthetic="false"))
    with pytest.raises(PseudonymisationKeyError, match="FQI_TEST_KEY"):
        real.secret()
    monkeypatch.setenv("FQI_TEST_KEY", "a-real-site-secret-0123456789")
    assert real.secret() == b"a-real-site-secret-0123456789"
    keyfile = cohort.parent / "site.key"
    keyfile.write_text("key-from-file-0123456789abcdef\n")
    monkeypatch.setenv("FRACTURE_QI_KEY_FILE", str(keyfile))
    assert real.secret() == b"key-from-file-0123456789abcdef"


def test_environment_overrides_database(cohort, monkeypatch):
    monkeypatch.setenv("FRACTURE_QI_DATABASE", "postgresql://fqi@dbhost/fqi")
    assert read_manifest(write(cohort)).database_url == "postgresql+psycopg://fqi@dbhost/fqi"
    monkeypatch.setenv("FRACTURE_QI_WORKERS", "zero")
    with pytest.raises(Exception, match="FRACTURE_QI_WORKERS"):
        settings()


def test_cli_manifest_check(cohort, capsys, monkeypatch):
    monkeypatch.setenv("PACS_PASSWORD", "not-a-real-one")
    from fracture_qi.store import open_store

    open_store(f"sqlite:///{cohort / 'fracture_qi.db'}").dispose()
    assert main(["manifest", "--manifest", str(write(cohort))]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "schema" in out and "current" in out
    assert main(["manifest", "--manifest", str(write(cohort, lease_minutes="lease_minute"))]) == 2
    err = capsys.readouterr().err
    assert "adjudication.lease_minute" in err and "Fix:" in err


SECRET_VALUE = "Xq7-s3cr3t-value-9Zp"


@pytest.mark.parametrize(
    "replace,field",
    [
        ({"env:FQI_TEST_KEY": SECRET_VALUE}, "pseudonymisation_key"),
        ({"password: env:PACS_PASSWORD": f"password: {SECRET_VALUE}"},
         "dicom_sources[1].auth.password"),
        ({"password: env:PACS_PASSWORD": f"password: env:PACS_PASSWORD, token: {SECRET_VALUE}"},
         "dicom_sources[1].auth.token"),
        ({"sqlite:///fracture_qi.db": f"postgresql://fqi:{SECRET_VALUE}@db.trust.nhs.uk/fqi"},
         "database"),
        ({"http://127.0.0.1:8042/dicom-web": f"http://fqi:{SECRET_VALUE}@127.0.0.1:8042/dicom-web"},
         "dicom_sources[1].url"),
    ],
)
def test_a_secret_written_into_the_manifest_is_refused_without_printing_it(
        cohort, capsys, replace, field):
    """Issue 21, item 6: the refusal names the key and the fix, never the secret itself."""
    path = write(cohort, **replace)
    e = error_of(path)
    assert e.field.startswith(field), str(e)
    assert SECRET_VALUE not in str(e) and SECRET_VALUE not in repr(e.value), str(e)
    assert "Fix:" in str(e)
    assert main(["manifest", "--manifest", str(path)]) == 2
    out = capsys.readouterr()
    assert SECRET_VALUE not in out.err + out.out and field.split("[")[0] in out.err


def test_an_fls_database_password_in_the_manifest_is_not_printed(tmp_path):
    text = ("version: 1\npseudonymisation_key: env:FQI_TEST_KEY\nfls_records:\n"
            f"  - {{name: fls, kind: sql, url: 'postgresql://fls:{SECRET_VALUE}@fls-db/fls', "
            "query: 'SELECT 1'}\n")
    with pytest.raises(ManifestError) as info:
        read_manifest_text(text, tmp_path)
    assert info.value.field == "fls_records[0].url" and SECRET_VALUE not in str(info.value)
    assert "fls:***@fls-db" in str(info.value)


def test_manifest_check_refuses_a_database_file_that_does_not_exist(cohort, capsys, monkeypatch):
    """Issue 18, item 8: a typo in the SQLite name passed the check and then created an empty
    database ("screened studies considered 0", exit 0) in every command."""
    monkeypatch.setenv("PACS_PASSWORD", "not-a-real-one")
    from fracture_qi.store import open_store

    open_store(f"sqlite:///{cohort / 'fracture_qi.db'}").dispose()
    typo = write(cohort, **{"sqlite:///fracture_qi.db": "sqlite:///fracture_qi.bd"})
    assert main(["manifest", "--manifest", str(typo)]) == 2
    err = capsys.readouterr().err
    assert "fracture_qi.bd does not exist" in err and "did you mean fracture_qi.db" in err
    assert "fracture-qi index" in err and err.count("\n") == 1
    for command in (["worklist"], ["export", "--out", str(cohort / "out")], ["dashboard"]):
        assert main([command[0], "--manifest", str(typo), *command[1:]]) == 2, command
        err = capsys.readouterr().err
        assert "does not exist" in err and "Traceback" not in err
    assert not (cohort / "fracture_qi.bd").exists()


def test_manifest_check_reads_postgres_urls_and_reports_a_down_server_in_one_line(
        cohort, capsys, monkeypatch):
    """Issue 18, item 8: postgres://... passed the check, then died with a traceback."""
    monkeypatch.setenv("PACS_PASSWORD", "not-a-real-one")
    path = write(cohort, **{"sqlite:///fracture_qi.db": "postgres://fqi@127.0.0.1:9/fqi"})
    assert read_manifest(path).database_url == "postgresql+psycopg://fqi@127.0.0.1:9/fqi"
    assert main(["manifest", "--manifest", str(path)]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1" in err and "Fix:" in err and "Traceback" not in err
    assert main(["worklist", "--manifest", str(path)]) == 2
    err = capsys.readouterr().err
    assert "NoSuchModuleError" not in err and "Traceback" not in err and "Fix:" in err
    other = write(cohort, **{"sqlite:///fracture_qi.db": "mysql://fqi@127.0.0.1/fqi"})
    assert main(["manifest", "--manifest", str(other)]) == 2
    assert "postgresql://" in capsys.readouterr().err


def test_manifest_check_reports_every_secret_the_site_has_not_set(cohort, capsys, monkeypatch):
    """Issue 18, item 8: a key the site needs but has not set is reported by the check."""
    monkeypatch.delenv("PACS_PASSWORD", raising=False)
    monkeypatch.delenv("FQI_TEST_KEY", raising=False)
    monkeypatch.delenv("FRACTURE_QI_KEY_FILE", raising=False)
    path = write(cohort, synthetic="false")
    assert main(["manifest", "--manifest", str(path), "--no-database"]) == 2
    err = capsys.readouterr().err
    assert "2 secret(s)" in err and "FQI_TEST_KEY" in err and "PACS_PASSWORD" in err
    monkeypatch.setenv("FQI_TEST_KEY", "k" * 32)
    monkeypatch.setenv("PACS_PASSWORD", "p")
    assert main(["manifest", "--manifest", str(path), "--no-database"]) == 0
