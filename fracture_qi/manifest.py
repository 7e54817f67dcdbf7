"""``data_manifest.yaml``: the typed declaration of every input, output and setting of a run.

:func:`read_manifest` parses the YAML, validates it against the models below (unknown keys
are errors: a typo must not pass silently), resolves relative paths against the manifest's
folder, checks that declared files exist and that those carrying a ``sha256`` still have it.
Every problem is a :class:`~fracture_qi.errors.ManifestError` naming the dotted field
(``fls_records[0].sha256``), the value found and the fix.

Secrets never appear in a manifest: the pseudonymisation key and any PACS/SQL password are
references, ``env:VARNAME`` or ``file:/path/outside/the/repo``, read at run time.

See docs/manifest.md for every key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url

from fracture_qi.config import settings
from fracture_qi.errors import ManifestError, PseudonymisationKeyError
from fracture_qi.integrity import sha256_file

log = logging.getLogger(__name__)

#: manifest format versions this code reads
SUPPORTED_VERSIONS = (1,)
_SECRET_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class _Strict(BaseModel):
    """Base of every manifest model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_secret_ref(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not _SECRET_REF.match(value):
        raise ValueError(
            f"{what} must be a reference (env:VARNAME or file:/path), never the secret itself"
        )
    return value


def read_secret_ref(ref: str, *, base: Path | None = None) -> str:
    """Read the text an ``env:NAME`` / ``file:PATH`` reference points at.

    Raises
    ------
    ManifestError
        When the variable is unset or the file unreadable.
    """
    kind, _, name = ref.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise ManifestError(name, ref, "the environment variable is not set",
                                f"export {name}=... before running")
        return value
    p = Path(name).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    try:
        return p.read_text().strip()
    except OSError as e:
        raise ManifestError(ref, str(p), f"cannot read the file ({e.strerror})",
                            "create it (chmod 600) or fix the path") from e


# --------------------------------------------------------------------------------------
# DICOM sources
# --------------------------------------------------------------------------------------


class FolderSource(_Strict):
    """DICOM files in a folder tree (walked recursively; DICOMDIR understood)."""

    name: str = Field(min_length=1, description="Short name, recorded on every indexed series")
    kind: Literal["folder"]
    path: Path = Field(description="Folder (relative paths are relative to the manifest)")


class DicomWebAuth(_Strict):
    """HTTP authentication for a DICOMweb server; secrets by reference only."""

    kind: Literal["basic", "bearer"] = "basic"
    username: str | None = None
    password: str | None = Field(None, description="env:VAR or file:PATH")
    token: str | None = Field(None, description="env:VAR or file:PATH (bearer)")

    @field_validator("password", "token")
    @classmethod
    def _refs(cls, v: str | None) -> str | None:
        return _check_secret_ref(v, "password/token")

    @model_validator(mode="after")
    def _complete(self) -> DicomWebAuth:
        if self.kind == "basic" and not (self.username and self.password):
            raise ValueError("basic auth needs username and password (password: env:VAR)")
        if self.kind == "bearer" and not self.token:
            raise ValueError("bearer auth needs token: env:VAR")
        return self


class _PacsCommon(_Strict):
    name: str = Field(min_length=1)
    timeout_s: float = Field(30.0, gt=0, description="per request / association")
    retries: int = Field(3, ge=0, le=20, description="retries after the first try")
    backoff_s: float = Field(2.0, ge=0, description="first retry delay; doubles each retry")
    cache_dir: Path | None = Field(
        None, description="keep retrieved files here; without it nothing identifiable stays on disk"
    )
    since: dt.date | None = Field(None, description="earliest study date to query")
    until: dt.date | None = Field(None, description="latest study date to query")
    max_studies: int | None = Field(None, gt=0)


class DicomWebSource(_PacsCommon):
    """A DICOMweb server (QIDO-RS search, WADO-RS retrieval)."""

    kind: Literal["dicomweb"]
    url: str = Field(description="base URL, e.g. http://127.0.0.1:8042/dicom-web")
    qido_prefix: str | None = None
    wado_prefix: str | None = None
    auth: DicomWebAuth | None = None
    verify_tls: bool | Path = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must start with http:// or https:// and name a host")
        if re.match(r"^https?://[^/\s]*:[^/\s]*@", v):
            raise ValueError("must not carry a password; use auth: {username, password: env:VAR}")
        return v.rstrip("/")


class DimseSource(_PacsCommon):
    """A DIMSE peer (C-FIND, then C-GET or C-MOVE to the suite's own storage SCP)."""

    kind: Literal["dimse"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    called_aet: str = Field(min_length=1, max_length=16)
    calling_aet: str = Field("FRACTUREQI", min_length=1, max_length=16)
    retrieve: Literal["get", "move"] = "get"
    move_destination: str | None = Field(
        None, max_length=16, description="AE title the peer knows for our storage SCP (move)"
    )
    storage_port: int | None = Field(None, ge=1, le=65535, description="local SCP port (move)")

    @model_validator(mode="after")
    def _move(self) -> DimseSource:
        if self.retrieve == "move" and not (self.move_destination and self.storage_port):
            raise ValueError("retrieve: move needs move_destination (AE title) and storage_port")
        return self


DicomSource = Annotated[FolderSource | DicomWebSource | DimseSource, Field(discriminator="kind")]


# --------------------------------------------------------------------------------------
# FLS records
# --------------------------------------------------------------------------------------


class _Records(_Strict):
    name: str = Field(min_length=1)
    columns: dict[str, str] = Field(
        default_factory=dict, description="site column name -> standard column name"
    )
    ignore_columns: list[str] = Field(
        default_factory=list,
        description="export columns to leave out (any other unknown column is refused)",
    )


class CsvRecords(_Records):
    """An FLS export as CSV."""

    kind: Literal["csv"]
    path: Path
    sha256: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    max_mb: float | None = Field(
        None, gt=0, description="largest file read, MB (default 25: about 45x in memory)")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_hex(v)


class ExcelRecords(_Records):
    """An FLS export as an Excel workbook (.xlsx)."""

    kind: Literal["excel"]
    path: Path
    sha256: str | None = None
    sheet: str | int = 0
    max_mb: float | None = Field(None, gt=0, description="largest file read, MB (default 25)")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_hex(v)


class SqlRecords(_Records):
    """An FLS database queried directly (read-only)."""

    kind: Literal["sql"]
    url: str = Field(description="env:VAR holding the URL, or a URL without a password")
    query: str = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _no_inline_password(cls, v: str) -> str:
        if _SECRET_REF.match(v):
            return v
        try:
            u = make_url(v)
        except Exception as e:
            raise ValueError("neither env:VAR/file:PATH nor a SQLAlchemy URL") from e
        if u.password:
            raise ValueError("must not carry a password; put the URL in an env var: url: env:VAR")
        return v

    def resolved_url(self, base: Path | None = None) -> str:
        """The URL itself, read from the environment/file when given by reference."""
        return read_secret_ref(self.url, base=base) if _SECRET_REF.match(self.url) else self.url


def _check_hex(v: str | None) -> str | None:
    if v is None:
        return None
    if not _HEX64.match(v):
        raise ValueError("must be 64 hexadecimal digits (sha256)")
    return v.lower()


FlsRecordSource = Annotated[CsvRecords | ExcelRecords | SqlRecords, Field(discriminator="kind")]


# --------------------------------------------------------------------------------------
# model, settings, outputs
# --------------------------------------------------------------------------------------


class ModelConfig(_Strict):
    """The screening model: the built-in reference, a plug-in file, or vendor results."""

    kind: Literal["reference", "torchscript", "onnx", "vendor"] = "reference"
    path: Path | None = Field(
        None, description="model file (torchscript/onnx); vendor: results CSV, or a folder / "
        ".dcm file of the vendor's DICOM results (SR, flagged Secondary Captures)")
    sha256: str | None = None
    card: Path | None = Field(None, description="model card (YAML/JSON) next to the file")
    id: str | None = None
    version: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_hex(v)

    @model_validator(mode="after")
    def _needs_path(self) -> ModelConfig:
        if self.kind != "reference" and self.path is None:
            raise ValueError(f"kind {self.kind} needs path (and sha256)")
        return self


class ScreeningConfig(_Strict):
    """Screening settings (None: the engine's default)."""

    flag_grade: int = Field(2, ge=1, le=3, description="flag studies at or above this Genant grade")
    low_density_hu: float | None = Field(None, description="L1 trabecular HU below which density is low")
    device: str | None = Field(None, description="auto | cpu | cuda | cuda:N | mps")
    batch_size: int | None = Field(None, ge=1)
    model_streams: int | None = Field(
        None, ge=1, le=16, description="batches in the model at once, each on its own thread "
        "and CUDA stream (default 2; 1: on the main thread); more for a GPU whose model lags its "
        "decode workers")
    workers: int | None = Field(None, ge=0)
    timeout_s: float | None = Field(None, gt=0, description="per-series limit")
    decoder: str | None = Field(
        None, description="auto | cpu | gpu: where JPEG 2000/HTJ2K frames are decoded (auto: "
        "the GPU where nvImageCodec decodes identically, else the CPU)")
    max_slice_mm: float = Field(
        3.0, gt=0, le=10,
        description="coarsest slice spacing (mm) screened; thicker series are SLICE_TOO_THICK",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("decoder")
    @classmethod
    def _decoder(cls, v: str | None) -> str | None:
        if v is not None and v not in ("auto", "cpu", "gpu"):
            raise ValueError("must be auto, cpu or gpu")
        return v


class AdjudicationConfig(_Strict):
    """Worklist sampling and leases."""

    audit_negative_rate: float = Field(0.1, ge=0, le=1)
    double_read_rate: float = Field(0.2, ge=0, le=1)
    lease_minutes: int = Field(30, gt=0)
    seed: int | None = Field(None, description="sampling seed (reproducible worklists)")


class QiChange(_Strict):
    """A change to the service, from which SPC limits are recalculated."""

    date: dt.date
    label: str = Field("QI change", max_length=120)
    rebase: bool = Field(
        False, description="recalculate SPC limits from this date (Making Data Count: only "
        "once a sustained shift with a known cause is seen); otherwise the change is annotated")


class FlsConfig(_Strict):
    """What the FLS-DB KPIs and the SPC charts need to know about the service."""

    expected_caseload_per_year: int | None = Field(
        None, ge=1,
        description="expected fragility fractures a year in the FLS's catchment (the local "
        "estimate FLS-DB supplies); the denominator of KPI 2, identification")
    changes: list[QiChange] = Field(
        default_factory=list,
        description="QI changes (date, label): SPC charts recalculate their limits from each "
        "and annotate it, in the dashboard and the audit")


Sensitivity = Literal["identifiable", "pseudonymous", "publishable"]


class OutputSpec(_Strict):
    """A folder the suite writes, with what it may contain."""

    path: Path
    sensitivity: Sensitivity = "pseudonymous"


def _output(default_sensitivity: Sensitivity) -> Any:
    def coerce(v: Any) -> Any:
        if isinstance(v, (str, Path)):
            return {"path": v, "sensitivity": default_sensitivity}
        if isinstance(v, dict) and "sensitivity" not in v:
            return {**v, "sensitivity": default_sensitivity}
        return v

    return coerce


class OutputsConfig(_Strict):
    """Output folders. A plain string is a path with the default sensitivity."""

    reports: OutputSpec = OutputSpec(path=Path("reports"), sensitivity="pseudonymous")
    keyimages: OutputSpec = OutputSpec(path=Path("keyimages"), sensitivity="identifiable")
    exports: OutputSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _strings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            defaults = {"reports": "pseudonymous", "keyimages": "identifiable", "exports": "pseudonymous"}
            return {k: _output(defaults.get(k, "pseudonymous"))(v) for k, v in data.items()}
        return data

    def get(self, name: str, default: Any = None) -> Any:
        """Dict-style access (``outputs.get("keyimages")``) returning the path."""
        spec = getattr(self, name, None)
        return spec.path if isinstance(spec, OutputSpec) else default


class OrthancFeed(_Strict):
    """An Orthanc whose ``/changes`` feed is followed (sites routing through Orthanc)."""

    url: str = Field(description="Orthanc's REST root, e.g. http://127.0.0.1:8042")
    auth: DicomWebAuth | None = None
    poll_seconds: float = Field(2.0, gt=0, le=600, description="wait between polls (s)")
    timeout_s: float = Field(30.0, gt=0, description="per HTTP request")
    verify_tls: bool | Path = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must start with http:// or https:// and name a host")
        if re.match(r"^https?://[^/\s]*:[^/\s]*@", v):
            raise ValueError("must not carry a password; use auth: {username, password: env:VAR}")
        return v.rstrip("/")


class ListenerConfig(_Strict):
    """``fracture-qi listen``: the DICOM storage SCP the PACS (or a router) forwards CTs to.

    Received instances are stored under the manifest's first ``folder`` source (the storage
    area); a study counts as complete once nothing new arrived for ``quiet_seconds``.
    """

    ae_title: str = Field("FRACTUREQI", min_length=1, max_length=16,
                          description="our AE title (the PACS sends to it)")
    port: int = Field(11112, ge=1, le=65535, description="TCP port of the storage SCP")
    bind: str = Field("0.0.0.0", min_length=1,
                      description="address to listen on (one interface, or 0.0.0.0 for all)")
    allowed_callers: list[str] = Field(
        default_factory=list,
        description="calling AE titles accepted (the PACS/router); empty: refuse everyone",
    )
    quiet_seconds: float = Field(
        10.0, gt=0, le=3600,
        description="a study is complete when nothing new arrived for this long (s)",
    )
    orthanc: OrthancFeed | None = Field(
        None, description="follow an Orthanc's changes feed (StableStudy) instead of C-STORE",
    )

    @field_validator("ae_title")
    @classmethod
    def _aet(cls, v: str) -> str:
        if not re.fullmatch(r"[ -~]{1,16}", v) or "\\" in v or not v.strip():
            raise ValueError("an AE title is 1-16 printable ASCII characters without backslash")
        return v.strip()

    @field_validator("allowed_callers")
    @classmethod
    def _callers(cls, v: list[str]) -> list[str]:
        out = []
        for aet in v:
            if not isinstance(aet, str) or not 0 < len(aet.strip()) <= 16:
                raise ValueError(f"{aet!r} is not an AE title (1-16 characters)")
            out.append(aet.strip())
        return out


ResultObject = Literal["sr", "keyimage", "seg"]


class ResultsToPacsConfig(_Strict):
    """Send screening results back into the study on the PACS as DICOM (off when absent).

    ``source`` names a ``dicomweb`` (STOW-RS) or ``dimse`` (C-STORE) entry of
    ``dicom_sources``.
    """

    source: str = Field(min_length=1, description="name of a dicomweb or dimse source")
    objects: list[ResultObject] = Field(
        default_factory=lambda: ["sr", "keyimage"],
        description="what to send: sr (TID 1500 measurement report), keyimage (Secondary "
        "Capture), seg (vertebral bodies, where the result carries outlines)",
    )
    series_number: int = Field(
        9701, ge=1, le=2**31 - 1,
        description="SeriesNumber of the first result series (SR; key image +1, SEG +2)",
    )

    @field_validator("objects")
    @classmethod
    def _objects(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one of sr, keyimage, seg (or remove results_to_pacs)")
        return list(dict.fromkeys(v))


class TruthConfig(_Strict):
    """Known truth of a synthetic cohort."""

    path: Path


# --------------------------------------------------------------------------------------
# the manifest
# --------------------------------------------------------------------------------------


class Manifest(_Strict):
    """A parsed, validated ``data_manifest.yaml`` (paths absolute).

    Attributes
    ----------
    path
        The manifest file.
    base
        Its folder; relative paths in the file are relative to it.
    """

    version: int = 1
    name: str | None = None
    synthetic: bool = False
    site: str | None = Field(
        None, description="hospital/site code: MRN namespace where DICOM gives no issuer"
    )
    database: str = "sqlite:///fracture_qi.db"
    pseudonymisation_key: str = "env:FRACTURE_QI_KEY"
    dicom_sources: list[DicomSource] = Field(default_factory=list)
    fls_records: list[FlsRecordSource] = Field(default_factory=list)
    model: ModelConfig = ModelConfig()
    screening: ScreeningConfig = ScreeningConfig()
    adjudication: AdjudicationConfig = AdjudicationConfig()
    fls: FlsConfig = FlsConfig()
    outputs: OutputsConfig = OutputsConfig()
    truth: TruthConfig | None = None
    listener: ListenerConfig | None = None
    results_to_pacs: ResultsToPacsConfig | None = None

    _path: Path = PrivateAttr(default=Path("data_manifest.yaml"))

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v not in SUPPORTED_VERSIONS:
            raise ValueError(f"this fracture-qi reads manifest version {SUPPORTED_VERSIONS}")
        return v

    @field_validator("pseudonymisation_key")
    @classmethod
    def _key(cls, v: str) -> str:
        return _check_secret_ref(v, "pseudonymisation_key") or v

    @field_validator("database")
    @classmethod
    def _database(cls, v: str) -> str:
        try:
            u = make_url(v)
        except Exception as e:
            raise ValueError("not a database URL (sqlite:///file.db or postgresql://user@host/db)") from e
        if u.password:
            raise ValueError(
                "must not carry a password; set FRACTURE_QI_DATABASE in the environment instead"
            )
        if not u.drivername.startswith(("sqlite", "postgres")):
            raise ValueError(
                f"{u.drivername!r} databases are not supported; use sqlite:///file.db or "
                "postgresql://user@host/db (postgres:// is read as PostgreSQL)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _infer_record_kind(cls, data: Any) -> Any:
        # the architecture sketch writes {name, path, sha256} without kind: infer it
        if isinstance(data, dict) and isinstance(data.get("fls_records"), list):
            recs = []
            for r in data["fls_records"]:
                if isinstance(r, dict) and "kind" not in r:
                    if "query" in r:
                        r = {**r, "kind": "sql"}
                    elif str(r.get("path", "")).lower().endswith((".xlsx", ".xlsm", ".xls")):
                        r = {**r, "kind": "excel"}
                    elif "path" in r:
                        r = {**r, "kind": "csv"}
                recs.append(r)
            data = {**data, "fls_records": recs}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        for what, items in (("dicom_sources", self.dicom_sources), ("fls_records", self.fls_records)):
            names = [s.name for s in items]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"{what} names must be unique; repeated: {sorted(dup)}")
        return self

    @model_validator(mode="after")
    def _service_sections(self) -> Manifest:
        if self.results_to_pacs is not None:
            name = self.results_to_pacs.source
            target = next((s for s in self.dicom_sources if s.name == name), None)
            if target is None or isinstance(target, FolderSource):
                pacs = [s.name for s in self.dicom_sources if not isinstance(s, FolderSource)]
                raise ValueError(
                    f"results_to_pacs.source {name!r} must name a dicomweb or dimse entry of "
                    f"dicom_sources (PACS sources here: {pacs or 'none'})")
        if self.listener is not None and not self.folder_sources():
            raise ValueError("listener needs a folder source in dicom_sources: received "
                             "studies are stored under the first one (e.g. {name: received, "
                             "kind: folder, path: received/})")
        return self

    # -- derived --------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def base(self) -> Path:
        return self._path.parent

    @property
    def database_url(self) -> str:
        """The database URL: FRACTURE_QI_DATABASE if set, else ``database``; sqlite paths
        relative to the manifest's folder are made absolute."""
        from fracture_qi.store.db import normalise_url

        return normalise_url(settings().database or self.database, self.base)

    def key_spec(self) -> str:
        """The key reference in force: FRACTURE_QI_KEY_FILE if set, else the manifest's."""
        return settings().key_spec or self.pseudonymisation_key

    def secret(self) -> bytes:
        """The pseudonymisation secret.

        For a synthetic cohort (``synthetic: true``) whose key is not set, the public
        :data:`fracture_qi.pseudonym.DEMO_KEY` is used (with a warning).

        Raises
        ------
        PseudonymisationKeyError
            For a real manifest whose key cannot be read.
        """
        from fracture_qi.pseudonym import DEMO_KEY, read_key

        try:
            return read_key(self.key_spec(), base=self.base)
        except PseudonymisationKeyError:
            if not self.synthetic:
                raise
            log.warning(
                "%s: synthetic cohort and %s not available: using the public demo key "
                "(fine for synthetic data, never for patients)", self.path, self.key_spec(),
            )
            return DEMO_KEY.encode()

    def folder_sources(self) -> list[FolderSource]:
        return [s for s in self.dicom_sources if isinstance(s, FolderSource)]

    def pacs_sources(self) -> list[DicomWebSource | DimseSource]:
        return [s for s in self.dicom_sources if not isinstance(s, FolderSource)]

    def storage_area(self) -> FolderSource:
        """The folder ``fracture-qi listen`` stores received studies in: the first folder source.

        Raises
        ------
        ManifestError
            When the manifest has no folder source.
        """
        folders = self.folder_sources()
        if not folders:
            raise ManifestError("dicom_sources", None, "no folder source to store received "
                                "studies in", "add {name: received, kind: folder, path: "
                                "received/} to dicom_sources", self.path)
        return folders[0]

    def results_destination(self) -> DicomWebSource | DimseSource | None:
        """The PACS source named by ``results_to_pacs.source`` (None when sending is off)."""
        if self.results_to_pacs is None:
            return None
        for s in self.pacs_sources():
            if s.name == self.results_to_pacs.source:
                return s
        return None  # pragma: no cover - refused when the manifest is read

    def output_dir(self, name: str) -> Path:
        """Absolute folder of output *name* (``reports``, ``keyimages``, ``exports``)."""
        spec = getattr(self.outputs, name, None)
        if spec is None:
            raise ManifestError(f"outputs.{name}", None, "not declared",
                                f"add outputs: {{{name}: {name}/}}", self.path)
        return spec.path


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------

_TAGGED: dict[str, dict[str, type[BaseModel]]] = {
    "dicom_sources": {"folder": FolderSource, "dicomweb": DicomWebSource, "dimse": DimseSource},
    "fls_records": {"csv": CsvRecords, "excel": ExcelRecords, "sql": SqlRecords},
}


def _dotted(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """Dotted field path for a pydantic error location, and the model that holds its key."""
    out = ""
    cls: type[BaseModel] | None = Manifest
    list_field: str | None = None
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if list_field and part in _TAGGED.get(list_field, {}) and i > 0 and isinstance(loc[i - 1], int):
            cls = _TAGGED[list_field][part]
            list_field = None
            continue
        if part.startswith(("function-", "union")) or part in ("str", "bool", "int", "float", "Path"):
            continue
        out += f".{part}" if out else part
        if i == len(loc) - 1:
            break
        nxt: type[BaseModel] | None = None
        if cls is not None and part in cls.model_fields:
            if part in _TAGGED and cls is Manifest:
                list_field = part
            ann = cls.model_fields[part].annotation
            for t in _flatten(ann):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    nxt = t
                    break
        cls = nxt
    return out or "(top level)", cls


def _flatten(ann: Any) -> list[Any]:
    args = typing.get_args(ann)
    if not args:
        return [ann]
    out = []
    for a in args:
        out += _flatten(a)
    return out


_FIXES = {
    "extra_forbidden": "remove it or correct the spelling; allowed keys here: {allowed}",
    "missing": "add it (see docs/manifest.md)",
    "union_tag_not_found": "add kind: with one of {tags}",
    "union_tag_invalid": "use kind: one of {tags}",
    "literal_error": "use one of the values listed",
}


#: keys whose value is a secret (or a reference to one): an error never shows what was found
SECRET_KEYS = frozenset({"pseudonymisation_key", "password", "token", "secret", "key",
                         "api_key", "passphrase", "private_key"})
#: keys holding a URL, which may carry a password: an error shows it with the password hidden
URL_KEYS = frozenset({"database", "url"})
#: what an error shows in place of a secret
HIDDEN = "<hidden>"


def shown_value(field: str, value: Any) -> Any:
    """*value* as an error message may show it for the key *field*: never a secret.

    Examples
    --------
    >>> shown_value("dicom_sources[1].auth.password", "hunter2")
    '<hidden>'
    >>> shown_value("database", "postgresql://fqi:pw@db/fqi")
    'postgresql://fqi:***@db/fqi'
    >>> shown_value("screening.flag_grade", 5)
    5
    """
    key = re.sub(r"\[\d+\]$", "", field.rsplit(".", 1)[-1]).lower()
    if value is None or isinstance(value, bool | int | float):
        return value
    if key in SECRET_KEYS:
        return HIDDEN
    if key in URL_KEYS and isinstance(value, str):
        if _SECRET_REF.match(value):
            return value  # env:NAME / file:PATH name where the secret is, not the secret
        try:
            return make_url(value).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (an http URL...)
            return re.sub(r"(://[^/\s:@]*):[^/\s@]*@", r"\1:***@", value)
    return value


def _translate(err: ValidationError, manifest: Path) -> ManifestError:
    errors = err.errors(include_url=False)
    # a misspelt key also makes the right one "missing": report the misspelling first
    errors.sort(key=lambda x: x["type"] != "extra_forbidden")
    e = errors[0]
    field, holder = _dotted(tuple(e["loc"]))
    kind = e["type"]
    allowed = ", ".join(holder.model_fields) if holder is not None else "?"
    top = field.split("[")[0].split(".")[0]
    tags = "|".join(_TAGGED.get(top, {})) or "?"
    fix = _FIXES.get(kind, "correct the value (see docs/manifest.md)").format(allowed=allowed, tags=tags)
    problem = re.sub(r"^(Value|Assertion) error, ", "", e["msg"])
    value = e.get("input")
    if isinstance(value, (dict, list)):
        value = "{...}" if isinstance(value, dict) else "[...]"
    if kind == "extra_forbidden":
        problem, value = "unknown key", field.rsplit(".", 1)[-1]
    elif kind == "missing":
        problem, value = "required key missing", None
    more = len(err.errors()) - 1
    if more:
        problem += f" (and {more} more problem(s) in this manifest)"
    shown = shown_value(field, value)
    if shown != value and kind == "value_error":  # a secret was written into the manifest
        fix = ("keep the secret out of the manifest: put it in an environment variable or a "
               "chmod-600 file and write env:VARNAME or file:/path here (docs/manifest.md); "
               "if the manifest was shared or committed, change the secret")
    return ManifestError(field, shown, problem, fix, manifest)


def _resolve(m: Manifest, base: Path) -> None:
    def rel(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base / p)

    for s in m.dicom_sources:
        if isinstance(s, FolderSource):
            s.path = rel(s.path)  # type: ignore[assignment]
        elif s.cache_dir is not None:
            s.cache_dir = rel(s.cache_dir)
        if isinstance(s, DicomWebSource) and isinstance(s.verify_tls, Path):
            s.verify_tls = rel(s.verify_tls)  # type: ignore[assignment]
    feed = m.listener.orthanc if m.listener is not None else None
    if feed is not None and isinstance(feed.verify_tls, Path):
        feed.verify_tls = rel(feed.verify_tls)  # type: ignore[assignment]
    for r in m.fls_records:
        if isinstance(r, (CsvRecords, ExcelRecords)):
            r.path = rel(r.path)  # type: ignore[assignment]
    m.model.path = rel(m.model.path)
    m.model.card = rel(m.model.card)
    for name in ("reports", "keyimages", "exports"):
        spec = getattr(m.outputs, name)
        if spec is not None:
            spec.path = rel(spec.path)
    if m.truth is not None:
        m.truth.path = rel(m.truth.path)  # type: ignore[assignment]


def _file_inputs(m: Manifest) -> list[tuple[str, Path, str | None]]:
    """(field, absolute path, declared sha256) of every file input."""
    out: list[tuple[str, Path, str | None]] = []
    for i, r in enumerate(m.fls_records):
        if isinstance(r, (CsvRecords, ExcelRecords)):
            out.append((f"fls_records[{i}]", r.path, r.sha256))
    if m.model.path is not None:
        out.append(("model", m.model.path, m.model.sha256))
    if m.model.card is not None:
        out.append(("model.card", m.model.card, None))
    return out


def secret_references(m: Manifest) -> list[tuple[str, str]]:
    """``(field, reference)`` of every ``env:NAME`` / ``file:PATH`` secret the site names.

    The pseudonymisation key is given as the reference in force (``FRACTURE_QI_KEY_FILE``
    wins over the manifest).
    """
    out: list[tuple[str, str]] = [("pseudonymisation_key", m.key_spec())]

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str) and where != "pseudonymisation_key" \
                and _SECRET_REF.match(value):
            out.append((where, value))

    walk(m.model_dump(mode="json"), "")
    return out


def missing_secrets(m: Manifest) -> list[str]:
    """One line per secret the site needs but that cannot be read now (unset, unreadable).

    A synthetic cohort without its key is not reported: it uses the public demo key.

    Examples
    --------
    >>> import os
    >>> os.environ.pop("FQI_DOCTEST_UNSET", None)
    >>> m = read_manifest_text("version: 1\\npseudonymisation_key: env:FQI_DOCTEST_UNSET\\n", ".")
    >>> missing_secrets(m)  # doctest: +ELLIPSIS
    ['pseudonymisation_key: env:FQI_DOCTEST_UNSET: the environment variable is not set. Fix: export FQI_DOCTEST_UNSET=... before running...']
    """
    problems: list[str] = []
    for field, ref in secret_references(m):
        if field == "pseudonymisation_key" and m.synthetic:
            continue
        try:
            read_secret_ref(ref, base=m.base)
        except ManifestError as e:
            problems.append(f"{field}: {ref}: {e.problem}. Fix: {e.fix}"
                            + (" (a secret the site needs; docs/manifest.md)"
                               if field == "pseudonymisation_key" else ""))
    return problems


def verify_inputs(m: Manifest) -> None:
    """Check that every declared input exists and every declared sha256 still matches.

    Raises
    ------
    ManifestError
        Naming the field, the path and the fix.
    """
    for i, s in enumerate(m.dicom_sources):
        if isinstance(s, FolderSource) and not s.path.is_dir():
            raise ManifestError(
                f"dicom_sources[{i}].path", str(s.path), "folder not found",
                "correct the path (relative paths are relative to the manifest's folder)", m.path,
            )
    for field, path, digest in _file_inputs(m):
        key = f"{field}.path"
        if field == "model" and m.model.kind == "vendor" and path.is_dir():
            continue  # vendor DICOM results arriving in a folder: no fixed checksum
        if not path.is_file():
            raise ManifestError(
                key, str(path), "file not found",
                "correct the path (relative paths are relative to the manifest's folder)", m.path,
            )
        if digest is not None:
            actual = sha256_file(path)
            if actual != digest:
                raise ManifestError(
                    f"{field}.sha256", digest,
                    f"file changed since the manifest was written ({path.name} now has "
                    f"sha256 {actual[:12]}...)",
                    "if the change is intended run `fracture-qi manifest --manifest "
                    f"{m.path} --rehash` or update the hash; otherwise restore the file",
                    m.path,
                )
    if m.truth is not None and not m.truth.path.is_dir():
        raise ManifestError("truth.path", str(m.truth.path), "folder not found",
                            "correct the path or remove truth:", m.path)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ManifestError("(file)", str(path), "manifest not found",
                            "give the path of data_manifest.yaml (fracture-qi synth writes one)") from e
    except OSError as e:
        raise ManifestError("(file)", str(path), f"cannot read ({e.strerror})",
                            "check the path and permissions") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ManifestError("(file)", where, f"not valid YAML: {getattr(e, 'problem', e)}",
                            "fix the YAML syntax at that position", path) from e
    if data is None:
        raise ManifestError("(file)", "", "the manifest is empty",
                            "write at least version: 1 and dicom_sources (see docs/manifest.md)", path)
    if not isinstance(data, dict):
        raise ManifestError("(top level)", type(data).__name__, "must be a mapping of keys",
                            "start with version: 1 (see docs/manifest.md)", path)
    return data


def parse_manifest(data: dict[str, Any], path: Path) -> Manifest:
    """Validate a loaded mapping as a manifest located at *path* (no file checks)."""
    path = Path(path).resolve()
    try:
        m = Manifest.model_validate(data)
    except ValidationError as e:
        raise _translate(e, path) from None
    m._path = path
    _resolve(m, path.parent)
    return m


def read_manifest(path: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read, validate and check ``data_manifest.yaml``.

    Parameters
    ----------
    path
        The manifest file (or a folder holding ``data_manifest.yaml``).
    verify
        Check that input files exist and match their sha256 (default). ``False`` only
        validates the YAML (used by ``--rehash``).

    Returns
    -------
    Manifest
        With absolute paths, ``.path`` and ``.base``.

    Raises
    ------
    ManifestError
        For every problem, naming the dotted field, the value and the fix.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     d = pathlib.Path(tmp); (d / "dicom").mkdir()
    ...     _ = (d / "data_manifest.yaml").write_text(
    ...         "version: 1\\ndicom_sources:\\n  - {name: a, kind: folder, path: dicom/}\\n")
    ...     m = read_manifest(d / "data_manifest.yaml")
    ...     print(m.dicom_sources[0].path == d.resolve() / "dicom")
    True
    >>> try:
    ...     read_manifest_text("version: 1\\ndatabse: x\\n", ".")
    ... except ManifestError as e:
    ...     print(e.field, e.problem)
    databse unknown key
    """
    p = Path(path)
    if p.is_dir():
        p = p / "data_manifest.yaml"
    m = parse_manifest(_load_yaml(p), p)
    if verify:
        verify_inputs(m)
    return m


def read_manifest_text(text: str, base: str | os.PathLike[str], *, verify: bool = False) -> Manifest:
    """Validate manifest YAML given as text, as if written in folder *base* (for tests/tools)."""
    p = Path(base) / "data_manifest.yaml"
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ManifestError("(top level)", type(data).__name__, "must be a mapping of keys",
                            "start with version: 1 (see docs/manifest.md)", p)
    m = parse_manifest(data, p)
    if verify:
        verify_inputs(m)
    return m


def rehash(path: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """Rewrite the sha256 of every file input whose file changed; keep everything else.

    The file is edited textually (the old hash replaced by the new one), so comments and
    layout survive. Inputs without a declared sha256 are left alone.

    Returns
    -------
    dict
        field -> (old, new) for each hash changed.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "data_manifest.yaml"
    m = read_manifest(p, verify=False)
    text = p.read_text(encoding="utf-8")
    changed: dict[str, tuple[str, str]] = {}
    for field, fpath, digest in _file_inputs(m):
        if digest is None:
            continue
        if not fpath.is_file():
            raise ManifestError(f"{field}.path", str(fpath), "file not found",
                                "correct the path before rehashing", p)
        new = sha256_file(fpath)
        if new != digest:
            n = len(re.findall(re.escape(digest), text, flags=re.IGNORECASE))
            if n != 1:
                raise ManifestError(f"{field}.sha256", digest,
                                    f"the hash appears {n} times in the file, cannot rewrite safely",
                                    "edit the hash by hand", p)
            text = re.sub(re.escape(digest), new, text, flags=re.IGNORECASE)
            changed[field] = (digest, new)
    if changed:
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    return changed


__all__ = [
    "AdjudicationConfig",
    "CsvRecords",
    "DicomWebAuth",
    "DicomWebSource",
    "DimseSource",
    "ExcelRecords",
    "FolderSource",
    "ListenerConfig",
    "Manifest",
    "ModelConfig",
    "OutputSpec",
    "OrthancFeed",
    "OutputsConfig",
    "ResultsToPacsConfig",
    "ScreeningConfig",
    "SqlRecords",
    "TruthConfig",
    "parse_manifest",
    "read_manifest",
    "read_manifest_text",
    "missing_secrets",
    "read_secret_ref",
    "rehash",
    "secret_references",
    "sha256_file",
    "verify_inputs",
]
