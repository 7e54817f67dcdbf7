"""Rerun an audit with its recorded parameters and report every difference.

``fracture-qi audit --verify reports/NAME`` is how an auditor checks a published number:
the run is repeated from ``provenance.json`` (same manifest, same parameters, same mode)
into ``reports/NAME.verify/``, and then

* every CSV table is compared byte for byte (tables carry no timestamps and have a stable
  order and float format, so equal inputs give equal bytes);
* the provenance is compared: code commit and tree state, package versions, manifest and
  input hashes, database state hash, parameters.

Any difference is listed; the tables decide the verdict, the provenance explains it (for
example "database state changed: fls_episodes 120 -> 131 rows").
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fracture_qi.reporting.run import read_provenance, run_audit

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    """What :func:`verify_audit` found.

    Attributes
    ----------
    identical
        True when every table is byte-identical and none is missing or extra.
    differences
        One line per difference (tables first, then provenance).
    rerun_dir
        Where the rerun was written.
    tables_compared
        Number of tables compared.
    """

    identical: bool
    differences: list[str] = field(default_factory=list)
    rerun_dir: Path | None = None
    tables_compared: int = 0

    def report(self) -> str:
        """Human-readable summary."""
        head = (
            f"verified: {self.tables_compared} tables byte-identical"
            if self.identical
            else f"NOT identical: {len(self.differences)} difference(s)"
        )
        return "\n".join([head, *(f"  - {d}" for d in self.differences),
                          f"  rerun in {self.rerun_dir}"])


def compare_tables(original: Path, rerun: Path) -> tuple[list[str], int]:
    """Compare ``tables/*.csv`` of two run folders byte for byte.

    Returns
    -------
    (list of str, int)
        Differences (with the first differing line of each changed table) and the number
        of tables compared.
    """
    a = {p.name: p for p in (original / "tables").glob("*.csv")}
    b = {p.name: p for p in (rerun / "tables").glob("*.csv")}
    diffs: list[str] = []
    for name in sorted(a.keys() - b.keys()):
        diffs.append(f"table {name}: missing from the rerun")
    for name in sorted(b.keys() - a.keys()):
        diffs.append(f"table {name}: new in the rerun")
    for name in sorted(a.keys() & b.keys()):
        x, y = a[name].read_bytes(), b[name].read_bytes()
        if x != y:
            lx = x.decode("utf-8", "replace").splitlines()
            ly = y.decode("utf-8", "replace").splitlines()
            first = next(
                (i for i, (p, q) in enumerate(zip(lx, ly)) if p != q), min(len(lx), len(ly))
            )
            delta = list(difflib.unified_diff(lx, ly, lineterm="", n=0))[2:6]
            diffs.append(
                f"table {name}: differs from line {first + 1} "
                f"({len(lx)} vs {len(ly)} lines): " + " | ".join(delta)
            )
    return diffs, len(a.keys() & b.keys())


def compare_provenance(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Explain what changed between two runs' provenance (inputs, code, packages, data)."""
    out: list[str] = []
    oc, nc = old.get("code", {}), new.get("code", {})
    if oc.get("commit") != nc.get("commit"):
        out.append(f"code commit: {oc.get('commit')} -> {nc.get('commit')}")
    if oc.get("clean") is False or nc.get("clean") is False:
        out.append("code: a working tree with uncommitted changes was used (results may not "
                   "be reproducible from the commit alone)")
    for pkg in sorted(set(old.get("packages", {})) | set(new.get("packages", {}))):
        a, b = old.get("packages", {}).get(pkg), new.get("packages", {}).get(pkg)
        if a != b:
            out.append(f"package {pkg}: {a} -> {b}")
    oi, ni = old.get("inputs", {}), new.get("inputs", {})
    if oi.get("manifest", {}).get("sha256") != ni.get("manifest", {}).get("sha256"):
        out.append("manifest file changed")
    for key in sorted(set(oi.get("inputs", {})) | set(ni.get("inputs", {}))):
        a = oi.get("inputs", {}).get(key, {}).get("sha256")
        b = ni.get("inputs", {}).get(key, {}).get("sha256")
        if a != b:
            out.append(f"input {key}: sha256 {str(a)[:12]} -> {str(b)[:12]}")
    od = old.get("database_state", {}).get("after", {})
    nd = new.get("database_state", {}).get("after", {})
    if od.get("sha256") != nd.get("sha256"):
        for t in sorted(set(od.get("tables", {})) | set(nd.get("tables", {}))):
            a = od.get("tables", {}).get(t, {})
            b = nd.get("tables", {}).get(t, {})
            if a.get("sha256") != b.get("sha256"):
                out.append(f"database state changed: {t} {a.get('rows')} -> {b.get('rows')} rows")
    if old.get("parameters") != new.get("parameters"):
        out.append(f"parameters: {old.get('parameters')} -> {new.get('parameters')}")
    return out


def verify_audit(report_dir: str | Path, *, jobs: int = 1, progress: bool = False) -> VerifyResult:
    """Rerun the audit in *report_dir* with its recorded parameters and compare.

    Parameters
    ----------
    report_dir
        A run folder written by :func:`fracture_qi.reporting.run.run_audit`.
    jobs
        Notebooks run at once.
    progress
        Show a progress bar.

    Returns
    -------
    VerifyResult

    Raises
    ------
    ReportError
        When the folder is not an audit run, or the rerun itself cannot start.
    """
    src = Path(report_dir).resolve()
    old = read_provenance(src)
    params = dict(old.get("parameters", {}))
    publish = bool(params.pop("publish", old.get("mode") == "publish"))
    notebooks = [n["notebook"] for n in old.get("notebooks", [])
                 if n.get("notebook", "").endswith(".ipynb")] or None
    manifest = Path(old["manifest_path"])
    if not manifest.is_absolute():  # recorded relative to the run folder
        manifest = (src / manifest).resolve()
    tampered = check_integrity(old)
    rerun = src.parent / f"{src.name}.verify"
    result = run_audit(
        manifest, rerun, params, publish, notebooks=notebooks, overwrite=True,
        jobs=jobs, raise_on_failure=False, progress=progress,
        command=f"fracture-qi audit --verify {src.name}",
    )
    tampered += check_recorded_hash(old, manifest)
    diffs, n = compare_tables(src, rerun)
    if result.status != "ok":
        diffs.insert(0, f"the rerun failed: {result.error}")
    explain = compare_provenance(old, result.provenance)
    identical = not diffs and not tampered
    return VerifyResult(identical, tampered + diffs + explain, rerun, n)


def check_integrity(provenance: dict[str, Any]) -> list[str]:
    """A difference line when ``provenance.json`` no longer matches its own hash."""
    from fracture_qi.reporting.provenance import provenance_hash

    recorded = (provenance.get("integrity") or {}).get("sha256")
    if not recorded:
        return ["provenance.json carries no integrity hash (written by an older version, or "
                "edited): its contents cannot be trusted"]
    actual = provenance_hash(provenance)
    if actual != recorded:
        return [f"provenance.json was edited after the run: its hash is {actual[:12]}, it "
                f"says {recorded[:12]}"]
    return []


def check_recorded_hash(provenance: dict[str, Any], manifest: Path) -> list[str]:
    """A difference line when the database's ``audit_runs`` row recorded another hash."""
    from fracture_qi.reporting.run import open_manifest
    from fracture_qi.store import schema as S

    run_id = provenance.get("audit_run_id")
    recorded = (provenance.get("integrity") or {}).get("sha256")
    if run_id is None or not recorded:
        return []
    _, engine = open_manifest(manifest, migrate=False)
    try:
        with engine.connect() as c:
            row = c.execute(select(S.AuditRun.provenance_sha256, S.AuditRun.name)
                            .where(S.AuditRun.id == int(run_id))).first()
    finally:
        engine.dispose()
    if row is None:
        return [f"audit run {run_id} is not in the database: this provenance.json comes from "
                "another database or was edited"]
    if row[0] and row[0] != recorded:
        return [f"provenance.json does not match the hash the database recorded for run "
                f"{row[1]!r} ({row[0][:12]} vs {recorded[:12]}): the file was replaced"]
    return []
