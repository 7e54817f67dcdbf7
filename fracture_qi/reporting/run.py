"""Run the audit notebooks with papermill into ``reports/NAME/``.

``run_audit`` is what ``fracture-qi audit`` and ``make demo`` call. One run:

1. reads the manifest and opens the database; in publication mode (the default) requires
   the pseudonymisation key (publication outputs are refused without it);
2. reads the parameters the notebooks declare and checks the user's values against them
   (an unknown key, a wrong type or a value outside the allowed ones stops the run before a
   kernel starts, naming the key and what is allowed);
3. records an ``audit_runs`` row (status ``running``);
4. executes each notebook with papermill into ``notebooks/`` (the screening notebook first:
   it may screen new studies; the others read only); a failing notebook is kept, with
   papermill's error banner at its top, and the remaining notebooks still run;
5. renders each executed notebook to ``html/`` without code; the notebooks themselves write
   ``tables/*.csv`` and ``figures/*.{html,png}``;
6. writes ``provenance.json`` (parameters, code version and tree state, package versions,
   manifest and input hashes, model id, database state hash before and after, times) and
   copies it into each executed notebook's metadata;
7. scans every file it wrote for patient identifiers held in the database; in publication
   mode a hit fails the run with :class:`~fracture_qi.errors.DisclosureError`;
8. marks the ``audit_runs`` row ``ok`` (and ``published`` in publication mode) or
   ``failed``. A failed run is never marked published and raises :class:`ReportError`.

Layout of ``reports/NAME/``::

    provenance.json
    notebooks/01_cohort_screening.ipynb ...   executed notebooks (the record of the run)
    html/01_cohort_screening.html ...         the same without code, for readers
    tables/*.csv                              byte-stable tables
    figures/*.html, figures/*.png             interactive and static figures
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fracture_qi.errors import (
    DisclosureError,
    FractureQIError,
    PseudonymisationKeyError,
    ReportError,
)
from fracture_qi.reporting import provenance as prov
from fracture_qi.reporting.params import notebook_parameters, validate_parameters

log = logging.getLogger(__name__)

#: the packaged notebooks (the single source of truth; ``notebooks/`` holds user copies)
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
#: the audit notebooks, in the order they run (the screening notebook first: it writes)
AUDIT_NOTEBOOKS: tuple[str, ...] = (
    "01_cohort_screening.ipynb",
    "02_ai_vs_nurse.ipynb",
    "03_treatment_kpis.ipynb",
    "04_spc.ipynb",
    "05_conference_pack.ipynb",
)
#: notebooks that write to the database and must run alone, before the others
WRITERS: tuple[str, ...] = ("01_cohort_screening.ipynb",)
PROVENANCE = "provenance.json"


@dataclass
class NotebookOutcome:
    """What happened to one notebook of a run."""

    notebook: str
    status: str  # ok | failed
    seconds: float
    output: str  # path relative to the run folder
    html: str | None = None
    error: str | None = None


@dataclass
class AuditResult:
    """The outcome of :func:`run_audit`.

    Attributes
    ----------
    name
        Run name (the output folder's name).
    out_dir
        The run folder.
    status
        ``"ok"`` or ``"failed"``.
    published
        True only for a successful publication-mode run.
    notebooks
        One :class:`NotebookOutcome` per notebook.
    audit_run_id
        The ``audit_runs`` row.
    provenance
        The provenance written to ``provenance.json``.
    error
        Why the run failed (``None`` when it did not).
    """

    name: str
    out_dir: Path
    status: str
    published: bool
    notebooks: list[NotebookOutcome] = field(default_factory=list)
    audit_run_id: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def tables(self) -> list[Path]:
        """CSV tables written by the run, sorted."""
        return sorted((self.out_dir / "tables").glob("*.csv"))

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [f"audit run {self.name}: {self.status}"
                 + (" (published)" if self.published else "") + f" in {self.seconds:.0f} s"]
        for nb in self.notebooks:
            lines.append(f"  {nb.status:6s} {nb.notebook} ({nb.seconds:.0f} s)"
                         + (f": {nb.error}" if nb.error else ""))
        lines.append(f"  outputs: {self.out_dir}")
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


def notebook_paths(names: Sequence[str] | None = None, folder: Path | None = None) -> list[Path]:
    """Paths of the audit notebooks (default: all of :data:`AUDIT_NOTEBOOKS`)."""
    base = folder or NOTEBOOK_DIR
    paths = [base / n for n in (names or AUDIT_NOTEBOOKS)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ReportError(
            f"audit notebooks not found: {missing}. Fix: reinstall fracture-qi "
            "(pip install -e .) so the packaged notebooks are present"
        )
    return paths


def open_manifest(manifest_path: str | Path, *, migrate: bool = True) -> tuple[Any, Any]:
    """Read the manifest and open its database.

    Parameters
    ----------
    manifest_path
        ``data_manifest.yaml``.
    migrate
        Bring the schema up to date (``False``: only check the revision; readers such as
        the dashboard use that: it is faster and never writes).

    Returns
    -------
    (Manifest, Engine)
    """
    from fracture_qi.manifest import read_manifest
    from fracture_qi.store import open_store

    manifest = read_manifest(manifest_path)
    engine = open_store(manifest, migrate=migrate)
    return manifest, engine


def _known_values(engine: Any) -> tuple[list[str], list[str]]:
    from sqlalchemy import select

    from fracture_qi.store import schema as S

    with engine.connect() as c:
        sites = [r[0] for r in c.execute(select(S.Study.site).distinct()) if r[0]]
        models = [
            r[0] for r in c.execute(select(S.Screening.model_id).distinct()) if r[0]
        ] + [
            f"{a}:{b}"
            for a, b in c.execute(select(S.Screening.model_id, S.Screening.model_version).distinct())
        ]
    return sites, models


def _default_model(engine: Any) -> str | None:
    """The model the notebooks report on when ``model`` is not given (the default model of
    :mod:`fracture_qi.screening.counting`, as ``load_analysis`` chooses it)."""
    from fracture_qi.screening.counting import resolve_model

    ref = resolve_model(engine)
    return ref.label if ref else None


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ReportError(
                f"output folder {out} is not empty. Fix: choose a new --out name, or pass "
                "--overwrite to replace it"
            )
        if not (out / PROVENANCE).exists() and not (out / "notebooks").exists():
            raise ReportError(
                f"{out} is not empty and does not look like an audit run (no {PROVENANCE}); "
                "refusing to delete it. Fix: choose another --out"
            )
        shutil.rmtree(out)
    for sub in ("notebooks", "html", "tables", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _execute(nb: Path, out: Path, parameters: dict[str, Any], kernel_name: str,
             timeout: int | None) -> NotebookOutcome:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    target = out / "notebooks" / nb.name
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        papermill.execute_notebook(
            str(nb), str(target), parameters=parameters, kernel_name=kernel_name,
            progress_bar=False, log_output=False, cwd=str(out),
            request_save_on_cell_execute=False, execution_timeout=timeout,
        )
    except PapermillExecutionError as e:
        status = "failed"
        error = f"{e.ename}: {e.evalue} (cell {e.exec_count})"
    except Exception as e:  # noqa: BLE001 - kernel died, timeout...: the run goes on, this notebook fails
        status = "failed"
        error = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    if status == "failed":
        log.error("notebook %s failed: %s; kept at %s", nb.name, error, target)
    return NotebookOutcome(nb.name, status, seconds, str(target.relative_to(out)), error=error)


def run_audit(
    manifest_path: str | Path,
    out_dir: str | Path,
    params: Mapping[str, Any] | None = None,
    publish: bool = True,
    *,
    notebooks: Sequence[str] | None = None,
    notebook_dir: str | Path | None = None,
    overwrite: bool = False,
    jobs: int = 1,
    kernel_name: str = "python3",
    timeout: int | None = 1800,
    raise_on_failure: bool = True,
    progress: bool = False,
    command: str | None = None,
) -> AuditResult:
    """Run the audit notebooks for a manifest into *out_dir*.

    Parameters
    ----------
    manifest_path
        The site's ``data_manifest.yaml``.
    out_dir
        The run folder, e.g. ``reports/2025-q1``; must be new or empty (or *overwrite*).
    params
        Notebook parameters (``{"period_start": "2025-01-01", "sites": ["North"]}``); values
        may be strings as typed on the command line.
    publish
        Publication mode: every table and figure suppressed, the key required, the outputs
        scanned for identifiers and the run marked published when it succeeds. ``False``
        gives an internal (unsuppressed) run, never published.
    notebooks
        Which notebooks to run (file names in *notebook_dir*; default all).
    notebook_dir
        Where the notebooks are (default: the packaged ones).
    overwrite
        Replace an existing run folder.
    jobs
        Notebooks run at once after the screening notebook (each in its own kernel).
    kernel_name
        Jupyter kernel for papermill.
    timeout
        Seconds allowed per cell.
    raise_on_failure
        Raise :class:`ReportError` (after writing everything) when the run failed.
    progress
        Show a progress bar over the notebooks.
    command
        The command that started the run, for the provenance (the CLI passes its own
        command line; default: this function call).

    Returns
    -------
    AuditResult

    Raises
    ------
    ReportError
        Bad parameter or output folder (before anything runs), or a failed run.
    DisclosureError
        A publication-mode output holds a patient identifier.
    PseudonymisationKeyError
        Publication mode without the pseudonymisation key.
    """
    t_start = time.perf_counter()
    started = prov.utc_now_iso()
    out = Path(out_dir).resolve()
    nb_paths = notebook_paths(notebooks, Path(notebook_dir) if notebook_dir else None)
    specs = notebook_parameters(nb_paths)
    manifest, engine = open_manifest(manifest_path)
    sites, models = _known_values(engine)
    user = validate_parameters(dict(params or {}), specs, sites=sites, models=models)
    if publish:
        try:
            manifest.secret()
        except PseudonymisationKeyError as e:
            raise PseudonymisationKeyError(
                f"publication outputs need the pseudonymisation key: {e}"
            ) from e
    _prepare_out_dir(out, overwrite)

    base = {"manifest": str(Path(manifest.path).resolve()), "out_dir": str(out), "publish": publish}
    code = prov.code_version()
    inputs = prov.manifest_inputs(manifest)
    state_before = prov.db_state_hash(engine)
    run_row = _start_row(engine, out, {**user, "publish": publish}, code, inputs, state_before)

    outcomes: list[NotebookOutcome] = []
    writers = [p for p in nb_paths if p.name in WRITERS]
    readers = [p for p in nb_paths if p.name not in WRITERS]

    def params_for(nb: Path) -> dict[str, Any]:
        declared = {k for k, s in specs.items() if nb.name in s.notebooks}
        return {k: v for k, v in {**base, **user}.items() if k in declared}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(nb_paths), desc="audit notebooks", unit="nb")
    for nb in writers:
        outcomes.append(_execute(nb, out, params_for(nb), kernel_name, timeout))
        if bar:
            bar.update(1)
    if jobs > 1 and len(readers) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_execute, nb, out, params_for(nb), kernel_name, timeout)
                       for nb in readers]
            for f in futures:
                outcomes.append(f.result())
                if bar:
                    bar.update(1)
    else:
        for nb in readers:
            outcomes.append(_execute(nb, out, params_for(nb), kernel_name, timeout))
            if bar:
                bar.update(1)
    if bar:
        bar.close()

    state_after = prov.db_state_hash(engine)
    model_ids = sorted({m for m in models if ":" in m})
    label = _data_label(manifest)
    provenance: dict[str, Any] = {
        "run": out.name,
        "audit_run_id": run_row,
        "mode": "publish" if publish else "internal",
        "parameters": {**user, "publish": publish},
        "defaults": {k: s.default for k, s in specs.items() if k not in base},
        # relative to the run folder: a copied site (manifest, database and reports) verifies
        "manifest_path": os.path.relpath(base["manifest"], out),
        "code": code,
        "packages": prov.package_versions(),
        "environment": prov.environment(),
        "ran_by": prov.ran_by(command or _call_text(manifest_path, out, user, publish)),
        "inputs": inputs,
        "models_in_database": model_ids,
        "model": user.get("model") or _default_model(engine),
        "database_state": {"before": state_before, "after": state_after},
        "notebooks": [asdict(o) for o in outcomes],
        "started_at": started,
        "data_label": label,
        "kpi_source": _kpi_source(),
        "data_cutoff": _data_cutoff(engine),
    }
    provenance["context_line"] = _context_line(provenance, code)
    failures = [o for o in outcomes if o.status != "ok"]
    for o in outcomes:
        target = out / o.output
        if target.exists():
            _stamp_notebook(target, provenance)
            html = out / "html" / (Path(o.output).stem + ".html")
            try:
                from fracture_qi.reporting.export import notebook_to_html

                notebook_to_html(target, html)
                o.html = str(html.relative_to(out))
            except ReportError as e:
                log.error("%s", e)
                failures.append(o)
                o.status, o.error = "failed", str(e)
    error: str | None = None
    try:
        from fracture_qi.reporting.pack import build_pack

        pack = build_pack(out, provenance)
        provenance["slides"] = {k: str(v.relative_to(out)) for k, v in pack.items()}
    except Exception as e:  # noqa: BLE001 - a pack that cannot be drawn fails the run, named
        log.error("conference pack not written: %s", e)
        failures.append(NotebookOutcome("slides", "failed", 0.0, "slides",
                                        error=f"{type(e).__name__}: {e}"))
    if failures:
        error = "; ".join(f"{o.notebook}: {o.error}" for o in failures) + (
            f". The failed notebooks are kept in {out / 'notebooks'} with the error at the top"
        )
    provenance["notebooks"] = [asdict(o) for o in outcomes]
    provenance["finished_at"] = prov.utc_now_iso()
    provenance["status"] = "failed" if failures else "ok"
    _write_provenance(out, provenance)

    disclosure_error: DisclosureError | None = None
    try:
        from fracture_qi.reporting.disclosure import IdentifierIndex, check_no_identifiers

        check_no_identifiers(out, IdentifierIndex.from_engine(engine))
    except DisclosureError as e:
        if publish:
            disclosure_error = e
            error = f"{error}; {e}" if error else str(e)
            provenance["status"] = "failed"
            provenance["disclosure"] = "FAILED: identifiers found (see audit_runs.error)"
        else:
            log.warning("internal run holds identifiers (never publish it): %s", e)
            provenance["disclosure"] = "internal run: identifiers found; not for publication"
    else:
        provenance["disclosure"] = "scanned: no patient identifier found"

    status = "failed" if error else "ok"
    published = bool(publish and status == "ok")
    digest = _write_provenance(out, provenance)
    _finish_row(engine, run_row, status, published, error, state_after, digest)
    result = AuditResult(
        name=out.name, out_dir=out, status=status, published=published, notebooks=outcomes,
        audit_run_id=run_row, provenance=provenance, error=error,
        seconds=time.perf_counter() - t_start,
    )
    log.info("%s", result.summary())
    if disclosure_error is not None and raise_on_failure:
        raise disclosure_error
    if status == "failed" and raise_on_failure:
        err = ReportError(f"audit run {out.name} failed: {error}")
        err.result = result  # type: ignore[attr-defined]
        raise err
    return result


def _write_provenance(out: Path, provenance: dict[str, Any]) -> str:
    """Write ``provenance.json`` with its own hash (``integrity.sha256``: SHA-256 of the
    canonical JSON of everything else), and return that hash (kept in ``audit_runs``)."""
    provenance.pop("integrity", None)
    digest = prov.provenance_hash(provenance)
    provenance["integrity"] = {"sha256": digest, "covers": "canonical JSON of every other key"}
    (out / PROVENANCE).write_text(
        json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    return digest


def _data_label(manifest: Any) -> str:
    from fracture_qi.reporting.stamp import data_label, meta_from_manifest

    return data_label(meta_from_manifest(manifest))


def _data_cutoff(engine: Any) -> str:
    from fracture_qi.outcomes.readmodel import data_cutoff

    return data_cutoff(engine).isoformat()


def _kpi_source() -> str:
    from fracture_qi.qi.kpi import NATIONAL_SOURCE

    return NATIONAL_SOURCE


def _context_line(provenance: dict[str, Any], code: dict[str, Any]) -> str:
    from fracture_qi.reporting.stamp import context, context_line

    params = provenance["parameters"]
    filters: dict[str, Any] = {}
    if params.get("period_start") or params.get("period_end"):
        filters["month"] = (params.get("period_start") or "start",
                            params.get("period_end") or "end")
    if params.get("sites"):
        filters["site"] = list(params["sites"])
    filters["model"] = provenance.get("model") or "none"
    cutoff = params.get("cutoff") or params.get("period_end") or provenance.get("data_cutoff")
    label = provenance.get("data_label") or ""
    return context_line(context(filters=filters, mode=provenance["mode"], cutoff=str(cutoff),
                                run=provenance["run"], code_version=str(code.get("describe")),
                                meta={"synthetic": bool(label),
                                      "simulated": "SIMULATED" in label}))


def _call_text(manifest_path: Any, out: Path, user: dict[str, Any], publish: bool) -> str:
    args = " ".join(f"-p {k} {v}" for k, v in user.items())
    return (f"fracture_qi.reporting.run.run_audit(manifest={str(manifest_path)!r}, "
            f"out={out.name!r}, publish={publish}) {args}").strip()


def _stamp_notebook(path: Path, provenance: dict[str, Any]) -> None:
    # the executed notebook carries its own provenance (papermill already records parameters)
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001 - an unreadable output notebook is reported, not fatal
        log.warning("cannot stamp %s: %s", path, e)
        return
    nb.metadata["fracture_qi"] = {
        "code": provenance["code"],
        "inputs": provenance["inputs"],
        "database_state_sha256": provenance["database_state"]["after"]["sha256"],
        "mode": provenance["mode"],
        "run": provenance["run"],
        "context": provenance.get("context_line"),
    }
    nbformat.write(nb, path)


def _start_row(engine: Any, out: Path, params: dict[str, Any], code: dict[str, Any],
               inputs: dict[str, Any], state: dict[str, Any]) -> int:
    from fracture_qi.store import schema as S
    from fracture_qi.store.db import session_scope

    with session_scope(engine) as s:
        row = S.AuditRun(
            name=out.name, out_dir=str(out), params=json.loads(json.dumps(params, default=str)),
            code_version=code.get("commit") or code.get("describe"), tree_clean=code.get("clean"),
            input_hashes=inputs, db_state_hash=state["sha256"], status="running", published=False,
        )
        s.add(row)
        s.flush()
        return int(row.id)


def _finish_row(engine: Any, row_id: int, status: str, published: bool, error: str | None,
               state: dict[str, Any], provenance_sha256: str | None = None) -> None:
    from fracture_qi.store import schema as S
    from fracture_qi.store.db import session_scope

    with session_scope(engine) as s:
        row = s.get(S.AuditRun, row_id)
        if row is None:  # someone deleted it meanwhile; nothing to update
            return
        row.status = status
        row.published = published
        row.error = error
        row.db_state_hash = state["sha256"]
        row.provenance_sha256 = provenance_sha256
        row.finished_at = dt.datetime.now(dt.UTC)


#: notebooks copied to the repository's top-level ``notebooks/`` for users to open
USER_NOTEBOOKS: tuple[str, ...] = AUDIT_NOTEBOOKS + ("dashboard.ipynb",)


def sync_user_notebooks(target: str | Path, *, check: bool = False) -> list[str]:
    """Copy the packaged notebooks (the source of truth) to a user-facing folder.

    ``fracture_qi/notebooks/`` is what ``fracture-qi audit`` runs (it ships with the
    package); the repository's ``notebooks/`` holds byte-identical copies for people who
    open them in JupyterLab. A test checks they agree.

    Parameters
    ----------
    target
        The folder (``notebooks/`` at the top of the repository).
    check
        Only compare; copy nothing.

    Returns
    -------
    list of str
        Names that differed (and, unless *check*, were copied).
    """
    out = Path(target)
    stale = []
    for name in USER_NOTEBOOKS:
        src = NOTEBOOK_DIR / name
        dst = out / name
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            stale.append(name)
            if not check:
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return stale


def read_provenance(report_dir: str | Path) -> dict[str, Any]:
    """Load ``provenance.json`` of a run folder.

    Raises
    ------
    ReportError
        When the folder has none (not an audit run) or it is not valid JSON.
    """
    p = Path(report_dir) / PROVENANCE
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(
            f"{p} not found: {report_dir} is not an audit run folder. Fix: point --verify at "
            "a folder written by `fracture-qi audit --out`"
        ) from None
    except ValueError as e:
        raise ReportError(f"{p} is not valid JSON ({e}); the run folder was edited") from e


if __name__ == "__main__":  # python -m fracture_qi.reporting.run --sync-notebooks [FOLDER]
    import sys

    if len(sys.argv) >= 2 and sys.argv[1] == "--sync-notebooks":
        folder = Path(sys.argv[2]) if len(sys.argv) > 2 else Path.cwd() / "notebooks"
        for n in sync_user_notebooks(folder):
            sys.stderr.write(f"updated {folder / n}\n")
    else:
        sys.stderr.write("usage: python -m fracture_qi.reporting.run --sync-notebooks [FOLDER]\n")
        sys.exit(2)


__all__ = [
    "AUDIT_NOTEBOOKS",
    "NOTEBOOK_DIR",
    "AuditResult",
    "FractureQIError",
    "NotebookOutcome",
    "read_provenance",
    "run_audit",
    "sync_user_notebooks",
]
