"""Scan an output folder for the patient identifiers held in the database.

A publication-mode audit run must leave no patient identifier in ``reports/NAME/``. Rather
than trusting that aggregate code never leaks one, the run reads every identifier the
database holds (patient names, NHS numbers, MRNs, birth dates, study and series UIDs,
accession numbers) and looks for each of them in every file it wrote: CSV, HTML, JSON,
executed notebooks (their text, not base64 image payloads) and the text chunks of PNGs.

Matching is by candidate token, so the cost is one pass over each file plus set look-ups,
whatever the number of patients:

* NHS numbers in any spacing (``943 476 5919``, ``943-476-5919``, ``9434765919``);
* UIDs (dotted digit strings) and alphanumeric codes (MRNs, accession numbers), compared
  case-insensitively with separators removed;
* birth dates written ``YYYY-MM-DD``, ``YYYYMMDD``, ``DD/MM/YYYY`` or ``DD.MM.YYYY``;
* names as two- or three-word sequences in either order (``SMITH^JOHN``, ``John Smith``,
  ``Smith, John``), case-insensitive. A surname alone is not matched: it would fire on
  ordinary words and place names.

The error names the file and the kind of identifier, never the identifier itself.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from fracture_qi.errors import DisclosureError
from fracture_qi.store import schema as S

log = logging.getLogger(__name__)

_NHS = re.compile(r"(?<![0-9])[0-9](?:[ \-.]?[0-9]){9}(?![0-9])")
_UID = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+)+(?![0-9])")
_CODE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_\-/]*[A-Za-z0-9])?")
_DATE_ISO = re.compile(r"(?<![0-9])((?:18|19|20)[0-9]{2})-?([01][0-9])-?([0-3][0-9])(?![0-9])")
_DATE_UK = re.compile(r"(?<![0-9])([0-3][0-9])[/.]([01][0-9])[/.]((?:18|19|20)[0-9]{2})(?![0-9])")
_WORD = re.compile(r"[^\W\d_]+(?:['\-][^\W\d_]+)*", re.UNICODE)
#: notebook output payloads that are binary images: scanned as images, not as text
_BINARY_MIME = {"image/png", "image/jpeg", "image/gif", "application/pdf"}
#: codes shorter than this are not matched as MRN/accession (they would match counts)
MIN_CODE_LENGTH = 5


def _norm_code(s: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "", s).upper()


def _name_variants(name: str) -> set[str]:
    # DICOM PN: FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX; free text: "Given Family" or "Family, Given"
    parts = [p for p in re.split(r"[\^,]", name) if p.strip()]
    words = [w.lower() for p in parts[:3] for w in _WORD.findall(p)]
    out: set[str] = set()
    if len(words) >= 2:
        fam, giv = words[0], words[1]
        out.update({f"{fam} {giv}", f"{giv} {fam}"})
        if len(words) >= 3:
            out.update({" ".join(words[:3]), f"{words[1]} {words[2]} {words[0]}"})
    return out


@dataclass
class IdentifierIndex:
    """The identifiers to look for, normalised for fast look-up."""

    nhs_numbers: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    codes: dict[str, str] = field(default_factory=dict)  # normalised code -> kind
    birth_dates: set[dt.date] = field(default_factory=set)
    names: set[str] = field(default_factory=set)

    @classmethod
    def from_engine(cls, engine: Engine) -> IdentifierIndex:
        """Read every identifier the database holds.

        Parameters
        ----------
        engine
            The audit's database.

        Returns
        -------
        IdentifierIndex
        """
        idx = cls()
        with engine.connect() as c:
            for name, nhs, mrn, birth in c.execute(
                select(S.Patient.name, S.Patient.nhs_number, S.Patient.mrn, S.Patient.birth_date)
            ):
                idx.add_patient(name=name, nhs_number=nhs, mrn=mrn, birth_date=birth)
            for uid, acc in c.execute(select(S.Study.study_instance_uid, S.Study.accession_number)):
                idx.add_uid(uid)
                idx.add_code(acc, "accession number")
            for (uid,) in c.execute(select(S.Series.series_instance_uid)):
                idx.add_uid(uid)
        return idx

    def add_patient(
        self,
        *,
        name: str | None = None,
        nhs_number: str | None = None,
        mrn: str | None = None,
        birth_date: dt.date | str | None = None,
    ) -> None:
        """Add one patient's identifiers."""
        if nhs_number:
            digits = re.sub(r"[^0-9]", "", nhs_number)
            if len(digits) == 10:
                self.nhs_numbers.add(digits)
            else:
                self.add_code(nhs_number, "NHS number")
        self.add_code(mrn, "MRN")
        if isinstance(birth_date, str):
            try:
                birth_date = dt.date.fromisoformat(birth_date)
            except ValueError:
                birth_date = None
        if isinstance(birth_date, dt.date):
            self.birth_dates.add(birth_date)
        if name:
            self.names.update(_name_variants(name))

    def add_uid(self, uid: str | None) -> None:
        """Add a study/series/instance UID."""
        if uid:
            self.uids.add(uid.strip())

    def add_code(self, code: str | None, kind: str) -> None:
        """Add an alphanumeric identifier (MRN, accession number)."""
        if code:
            n = _norm_code(code)
            if len(n) >= MIN_CODE_LENGTH:
                self.codes[n] = kind

    def __len__(self) -> int:
        return (
            len(self.nhs_numbers) + len(self.uids) + len(self.codes) + len(self.birth_dates)
            + len(self.names)
        )

    def find(self, text: str) -> set[str]:
        """Kinds of identifier present in *text* (empty set when none).

        Examples
        --------
        >>> idx = IdentifierIndex()
        >>> idx.add_patient(name="SMITH^Jane", nhs_number="9434765919", mrn="RX0012345")
        >>> sorted(idx.find("seen: jane smith, NHS 943 476 5919"))
        ['NHS number', 'name']
        >>> idx.find("counts 10, 15, 20")
        set()
        """
        found: set[str] = set()
        if self.nhs_numbers:
            for m in _NHS.finditer(text):
                if re.sub(r"[^0-9]", "", m.group()) in self.nhs_numbers:
                    found.add("NHS number")
                    break
        if self.uids:
            for m in _UID.finditer(text):
                if m.group() in self.uids:
                    found.add("UID")
                    break
        if self.codes:
            for m in _CODE.finditer(text):
                kind = self.codes.get(_norm_code(m.group()))
                if kind:
                    found.add(kind)
        if self.birth_dates:
            for y, mo, d in _DATE_ISO.findall(text):
                if _date(y, mo, d) in self.birth_dates:
                    found.add("birth date")
                    break
            for d, mo, y in _DATE_UK.findall(text):
                if _date(y, mo, d) in self.birth_dates:
                    found.add("birth date")
                    break
        if self.names:
            words = [w.lower() for w in _WORD.findall(text)]
            for i in range(len(words) - 1):
                if f"{words[i]} {words[i + 1]}" in self.names or (
                    i + 2 < len(words) and f"{words[i]} {words[i + 1]} {words[i + 2]}" in self.names
                ):
                    found.add("name")
                    break
        return found


def _date(y: str, m: str, d: str) -> dt.date | None:
    try:
        return dt.date(int(y), int(m), int(d))
    except ValueError:
        return None


def _notebook_texts(obj: Any) -> Iterable[str]:
    # every string in the notebook JSON except base64 image payloads
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _BINARY_MIME:
                continue
            yield str(k)
            yield from _notebook_texts(v)
    elif isinstance(obj, list):
        strings = [v for v in obj if isinstance(v, str)]
        if strings and len(strings) == len(obj):
            yield "".join(strings)  # multi-line sources are lists of lines
        else:
            for v in obj:
                yield from _notebook_texts(v)
    elif isinstance(obj, str):
        yield obj
    elif obj is not None:
        yield str(obj)


def file_texts(path: Path) -> Iterable[str]:
    """The text in a file that a reader could see, for scanning.

    Notebooks are parsed (their strings, without base64 images); PNGs give their text
    chunks; slide decks (``.pptx``, ``.docx``, ``.xlsx``: zipped XML) give the text of every
    XML part (slides, notes, properties); PDFs give their text layer (``pdftotext`` from
    poppler-utils; without it the PDF's own text strings, and a warning); any other file is
    decoded as UTF-8 (invalid bytes replaced), so binary files are still searched for ASCII
    identifiers.
    """
    suffix = path.suffix.lower()
    if suffix in (".pptx", ".docx", ".xlsx"):
        yield from _office_texts(path)
        return
    if suffix == ".pdf":
        yield from _pdf_texts(path)
        return
    if suffix == ".ipynb":
        try:
            yield from _notebook_texts(json.loads(path.read_text(encoding="utf-8")))
            return
        except (ValueError, UnicodeDecodeError):
            log.warning("%s is not valid notebook JSON; scanning it as text", path)
    if suffix == ".png":
        from PIL import Image

        try:
            with Image.open(path) as im:
                yield " ".join(f"{k} {v}" for k, v in im.info.items() if isinstance(v, str))
            return
        except OSError:
            log.warning("%s is not a readable PNG; scanning its bytes as text", path)
    yield path.read_bytes().decode("utf-8", errors="replace")


def _office_texts(path: Path) -> Iterable[str]:
    """The text of every XML part of an Office file (tags dropped, runs joined)."""
    import re
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            for name in sorted(z.namelist()):
                if name.endswith((".xml", ".rels")):
                    xml = z.read(name).decode("utf-8", errors="replace")
                    # one run per text node: a name split over two runs is still one string
                    yield " ".join(re.findall(r">([^<>]+)<", xml))
                    yield re.sub(r"<[^>]+>", "", xml)
    except zipfile.BadZipFile:
        log.warning("%s is not a readable Office file; scanning its bytes as text", path)
        yield path.read_bytes().decode("utf-8", errors="replace")


def _pdf_texts(path: Path) -> Iterable[str]:
    """A PDF's text layer (``pdftotext``), plus its raw bytes (document properties)."""
    import shutil
    import subprocess

    raw = path.read_bytes()
    yield raw.decode("latin-1", errors="replace")
    exe = shutil.which("pdftotext")
    if exe is None:
        log.warning("pdftotext (Debian poppler-utils) not found: %s scanned as raw bytes only",
                    path)
        return
    out = subprocess.run([exe, "-layout", str(path), "-"], capture_output=True, timeout=120,
                         check=False)
    if out.returncode != 0:
        log.warning("pdftotext could not read %s: %s", path, out.stderr.decode(errors="replace"))
    yield out.stdout.decode("utf-8", errors="replace")


def scan_paths(paths: Iterable[Path], index: IdentifierIndex) -> dict[Path, set[str]]:
    """Which files hold which kinds of identifier.

    Parameters
    ----------
    paths
        Files to scan.
    index
        Identifiers to look for.

    Returns
    -------
    dict
        File -> kinds found, for files with at least one finding.
    """
    hits: dict[Path, set[str]] = {}
    for p in paths:
        kinds: set[str] = set()
        for text in file_texts(p):
            kinds |= index.find(text)
        if kinds:
            hits[p] = kinds
    return hits


def scan_output_folder(out_dir: str | Path, index: IdentifierIndex) -> dict[str, set[str]]:
    """Scan every file under *out_dir*; return ``{relative path: kinds}`` of the hits."""
    root = Path(out_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    hits = scan_paths(files, index)
    log.info("disclosure scan: %d files, %d identifiers, %d hits", len(files), len(index), len(hits))
    return {str(p.relative_to(root)): k for p, k in hits.items()}


def check_no_identifiers(out_dir: str | Path, index: IdentifierIndex) -> None:
    """Raise :class:`DisclosureError` if any file under *out_dir* holds an identifier.

    Parameters
    ----------
    out_dir
        The run's output folder.
    index
        Identifiers from :meth:`IdentifierIndex.from_engine`.

    Raises
    ------
    DisclosureError
        Naming each offending file and the kind of identifier (never the identifier).
    """
    hits = scan_output_folder(out_dir, index)
    if hits:
        listed = "; ".join(f"{p} ({', '.join(sorted(k))})" for p, k in sorted(hits.items()))
        raise DisclosureError(
            f"{len(hits)} file(s) under {out_dir} contain patient identifiers: {listed}. "
            "The run is not published. Fix: find the notebook or table that prints row-level "
            "data and aggregate or remove it, then rerun; do not share this folder"
        )
