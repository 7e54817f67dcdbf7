"""Read AI results back from DICOM: TID 1500 SRs, simple vendor SRs, flagged Secondary Captures.

The ``vendor`` model's DICOM mode (:class:`fracture_qi.screening.models.VendorResults` with a
folder or ``.dcm`` file as ``path``) reads a commercial AI's DICOM output with this module,
so a service running that AI audits it exactly as it audits the reference screener, without
a CSV export. Three shapes are understood:

1. **TID 1500 measurement reports** (the suite's own, :mod:`.sr`, and other AIs' that follow
   the template): one vertebra per Measurement Group, its level from the finding site (SNOMED
   CT vertebra codes) or the tracking identifier (``T12``), its Genant grade, deformity type,
   quality code and heights from the concepts of :mod:`.codes`; a grade given as a code whose
   meaning says mild / moderate / severe (or grade 0-3) is understood too; the study flag
   from "Suspected vertebral fracture (AI flag)" or, without one, from the grades.
2. **Simple vendor SRs** with a study-level finding: a CODE or TEXT content item whose name
   speaks of a finding / fracture / impression and whose value says positive or negative
   (Present / Absent, Yes / No, "Vertebral compression fracture detected"...). A level named
   in the text (``"L1"``) is kept.
3. **Secondary Captures** whose Series Description says the study is flagged (``POSITIVE``,
   ``SUSPECTED FRACTURE``...) or not (``NEGATIVE``, ``NO FRACTURE``...).

Per study the most detailed answer wins (TID 1500 with vertebrae, then a vendor SR, then a
Secondary Capture), and among equals the newest (Content Date/Time). Files that are none of
these are ignored (counted in :attr:`DicomResults.ignored`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from fracture_qi.results_dicom import codes
from fracture_qi.screening.types import SeriesResult, VertebraResult

log = logging.getLogger(__name__)

#: Series Description of a flagged vendor Secondary Capture (case-insensitive)
POSITIVE = re.compile(
    r"\b(POSITIVE|SUSPECT\w*|FLAGGED|FRACTURES? (DETECTED|FOUND|PRESENT|SUSPECTED)|"
    r"(VCF|FRACTURE) DETECTED|PRESENT|YES)\b", re.IGNORECASE)
#: ... and of a negative one (checked first: "NOT FLAGGED" is negative)
NEGATIVE = re.compile(
    r"\b(NEGATIVE|NOT (FLAGGED|DETECTED|SUSPECTED)|NO (VERTEBRAL |COMPRESSION )?FRACTURES?|"
    r"ABSENT|NONE DETECTED|NO)\b", re.IGNORECASE)
_LEVEL = re.compile(r"\b([TL])(\d{1,2})\b", re.IGNORECASE)
_FINDING_NAME = re.compile(r"finding|fracture|impression|result|conclusion|vcf", re.IGNORECASE)
_GRADE_WORDS = {"normal": 0, "mild": 1, "moderate": 2, "severe": 3}
_SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
}
_SC_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
}
#: precedence of the kinds of result for one study (higher wins)
RANK = {"tid1500": 3, "vendor-sr": 2, "sc": 1}


@dataclass
class DicomResult:
    """One AI result found in one DICOM object."""

    study_instance_uid: str
    kind: str  # tid1500 | vendor-sr | sc
    result: SeriesResult
    path: str
    when: str = ""  # ContentDate + ContentTime, for "newest"
    referenced_series: set[str] = field(default_factory=set)
    algorithm: str = ""


@dataclass
class DicomResults:
    """Every result found, the best per study, and what was not understood."""

    by_study: dict[str, DicomResult] = field(default_factory=dict)
    n_files: int = 0
    ignored: int = 0

    def add(self, r: DicomResult) -> None:
        old = self.by_study.get(r.study_instance_uid)
        if old is None or (RANK[r.kind], bool(r.result.vertebrae), r.when) > (
                RANK[old.kind], bool(old.result.vertebrae), old.when):
            self.by_study[r.study_instance_uid] = r


def _code(item: Dataset, seq: str) -> tuple[str, str, str]:
    s = item.get(seq)
    if not s:
        return ("", "", "")
    c = s[0]
    return (str(c.get("CodeValue", "") or c.get("LongCodeValue", "") or ""),
            str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeMeaning", "")))


def _name(item: Dataset) -> tuple[str, str, str]:
    return _code(item, "ConceptNameCodeSequence")


def _is(code: tuple[str, str, str], concept: Any) -> bool:
    return code[0] == concept.value and code[1] == concept.scheme_designator


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []) or [])


def _walk(item: Dataset, *, into_groups: bool = True) -> Iterable[Dataset]:
    """Every content item under *item*, depth first (not inside Measurement Groups unless
    *into_groups*: a group is read as a whole by :func:`_group`)."""
    for child in _children(item):
        yield child
        if into_groups or _name(child)[0] != "125007":
            yield from _walk(child, into_groups=into_groups)


def _num(item: Dataset) -> float | None:
    mv = item.get("MeasuredValueSequence")
    if not mv:
        return None
    try:
        return float(mv[0].NumericValue)
    except (AttributeError, TypeError, ValueError):
        return None


def _level_of(site: tuple[str, str, str], text: str = "") -> str | None:
    if site[0] in codes.LEVEL_OF_CODE and site[1] == "SCT":
        return codes.LEVEL_OF_CODE[site[0]]
    for t in (site[2], text):
        m = _LEVEL.search(t or "")
        if m:
            level = f"{m.group(1).upper()}{int(m.group(2))}"
            if (level[0] == "T" and 1 <= int(m.group(2)) <= 12) or (
                    level[0] == "L" and 1 <= int(m.group(2)) <= 5):
                return level
    return None


def _grade_of(value: tuple[str, str, str]) -> int | None:
    if value[0] in codes.GRADE_OF_CODE and value[1] == codes.SCHEME:
        return codes.GRADE_OF_CODE[value[0]]
    meaning = value[2].lower()
    for word, g in _GRADE_WORDS.items():
        if word in meaning:
            return g
    m = re.search(r"grade\s*([0-3])\b", meaning)
    return int(m.group(1)) if m else None


def _polarity(text: str) -> bool | None:
    if NEGATIVE.search(text or ""):
        return False
    if POSITIVE.search(text or ""):
        return True
    return None


def _group(group: Dataset) -> tuple[str, VertebraResult | None, dict[str, Any]]:
    """One Measurement Group: ('vertebra', result, {}) or ('density', None, facts)."""
    site = ("", "", "")
    tracking = ""
    finding_type = ("", "", "")
    values: dict[str, Any] = {}
    for it in _walk(group):
        name = _name(it)
        vt = it.get("ValueType", "")
        if vt == "CODE":
            value = _code(it, "ConceptCodeSequence")
            if name[0] == "363698007":  # Finding Site
                site = value
            elif name[0] == "121071" or name[0] == "G-C0E3":  # Finding (type)
                finding_type = value
            elif _is(name, codes.GENANT_GRADE) or "grade" in name[2].lower():
                values["grade"] = _grade_of(value)
            elif _is(name, codes.MORPH_TYPE):
                values["morph"] = codes.MORPH_OF_CODE.get(value[0], "")
            elif _is(name, codes.QUALITY):
                values["quality"] = codes.QUALITY_OF_CODE.get(value[0], "low_confidence")
            elif _is(name, codes.LOW_DENSITY):
                values["low_density"] = _is(value, codes.PRESENT)
            elif _is(name, codes.CONTRAST_PHASE):
                values["phase"] = codes.CONTRAST_OF_CODE.get(value[0])
            elif _FINDING_NAME.search(name[2]) and _polarity(value[2]) is not None:
                values["fracture"] = _polarity(value[2])
        elif vt == "NUM":
            number = _num(it)
            for attr, concept in codes.HEIGHTS.items():
                if _is(name, concept):
                    values[attr] = number
            if _is(name, codes.MEAN_ATTENUATION):
                values["hu"] = number
        elif vt == "TEXT" and name[0] == "112039":  # Tracking Identifier
            tracking = str(it.get("TextValue", ""))
    if _is(finding_type, codes.DENSITY_GROUP) or tracking == "bone density":
        values["level"] = _level_of(site)
        return "density", None, values
    level = _level_of(site, tracking)
    if level is None and site[0] not in (codes.VERTEBRA.value, "") and not values:
        return "other", None, {}
    quality = values.get("quality", "ok")
    grade = values.get("grade")
    if grade is None and values.get("fracture"):
        grade = 1  # a vendor that says "fracture" without a grade: at least mild
    morph = values.get("morph", "")
    if not morph and (grade or 0) == 0 and quality == "ok":
        morph = "normal"
    return "vertebra", VertebraResult(
        level=level, genant_grade=int(grade or 0), morph_type=morph,
        ha_mm=values.get("ha_mm"), hm_mm=values.get("hm_mm"), hp_mm=values.get("hp_mm"),
        trabecular_hu=values.get("hu"), quality=quality,
    ), {}


def _references(ds: Dataset) -> set[str]:
    out = set()
    for seq in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(seq, []) or []:
            for series in study.get("ReferencedSeriesSequence", []) or []:
                out.add(str(series.get("SeriesInstanceUID", "")))
    return out - {""}


def read_sr(ds: Dataset, path: str = "", *, flag_grade: int = 2) -> DicomResult | None:
    """An AI result from one SR, or ``None`` when it holds none this module understands."""
    study = str(ds.get("StudyInstanceUID", ""))
    if not study:
        return None
    root = ds
    is_1500 = any(str(t.get("TemplateIdentifier", "")) == "1500"
                  for t in ds.get("ContentTemplateSequence", []) or [])
    vertebrae: list[VertebraResult] = []
    density: dict[str, Any] = {}
    flag: bool | None = None
    max_grade: int | None = None
    study_finding: bool | None = None
    finding_levels: list[str] = []
    for it in _walk(root, into_groups=False):
        name = _name(it)
        if it.get("ValueType") == "CONTAINER" and name[0] == "125007":  # Measurement Group
            what, v, facts = _group(it)
            if what == "vertebra" and v is not None:
                vertebrae.append(v)
            elif what == "density":
                density = facts
            continue
        if it.get("ValueType") == "CODE":
            value = _code(it, "ConceptCodeSequence")
            if _is(name, codes.STUDY_FLAG):
                flag = _is(value, codes.PRESENT)
            elif _is(name, codes.MAX_GRADE):
                max_grade = _grade_of(value)
            elif _FINDING_NAME.search(name[2]) and not _is(name, codes.LOW_DENSITY):
                p = _polarity(value[2])
                if p is not None and study_finding is not True:
                    study_finding = p
                lv = _level_of(("", "", ""), value[2])
                if lv:
                    finding_levels.append(lv)
        elif it.get("ValueType") == "TEXT" and _FINDING_NAME.search(name[2]):
            text = str(it.get("TextValue", ""))
            p = _polarity(text)
            if p is not None and study_finding is not True:
                study_finding = p
            finding_levels += [f"{a.upper()}{b}" for a, b in _LEVEL.findall(text)]
    graded = [v.genant_grade for v in vertebrae if v.quality == "ok"]
    if vertebrae or flag is not None:
        kind = "tid1500" if is_1500 else "vendor-sr"
        mg = max_grade if max_grade is not None else max(graded, default=0)
        flagged = flag if flag is not None else mg >= flag_grade
    elif study_finding is not None:
        kind = "vendor-sr"
        flagged = study_finding
        mg = 0
        vertebrae = [VertebraResult(level=lv, genant_grade=0, morph_type="", ha_mm=None,
                                    hm_mm=None, hp_mm=None) for lv in dict.fromkeys(finding_levels)
                     if lv] if flagged else []
    else:
        return None
    result = SeriesResult(
        status="ok", flagged=bool(flagged), max_grade=int(mg), vertebrae=vertebrae,
        l1_hu=density.get("hu"), bone_density_level=density.get("level"),
        low_density=density.get("low_density"), contrast_phase=density.get("phase"),
    )
    when = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
    algorithm = " ".join(str(x) for x in (ds.get("ManufacturerModelName", ""),)).strip()
    return DicomResult(study, kind, result, path, when, _references(ds), algorithm)


def read_sc(ds: Dataset, path: str = "") -> DicomResult | None:
    """A flag from a Secondary Capture's Series Description, or ``None`` when it says none."""
    study = str(ds.get("StudyInstanceUID", ""))
    flagged = _polarity(str(ds.get("SeriesDescription", "")))
    if not study or flagged is None:
        return None
    when = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
    return DicomResult(study, "sc", SeriesResult(status="ok", flagged=flagged), path, when)


def read_file(path: str | os.PathLike[str], *, flag_grade: int = 2) -> DicomResult | None:
    """The result in one file (SR or Secondary Capture), ``None`` for anything else."""
    p = str(path)
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
    except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the import
        log.debug("%s: not read (%s)", p, e)
        return None
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _SR_CLASSES or ds.get("Modality", "") == "SR":
        return read_sr(ds, p, flag_grade=flag_grade)
    if sop_class in _SC_CLASSES:
        return read_sc(ds, p)
    return None


def read_results(paths: Iterable[str | os.PathLike[str]], *, flag_grade: int = 2) -> DicomResults:
    """The best result per study in files and folders (walked recursively).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     print(len(read_results([d]).by_study))
    0
    """
    from fracture_qi.dicom.scan import iter_files

    out = DicomResults()
    for f in iter_files([Path(p) for p in paths]):
        out.n_files += 1
        r = read_file(f, flag_grade=flag_grade)
        if r is None:
            out.ignored += 1
            continue
        out.add(r)
    return out


__all__ = ["NEGATIVE", "POSITIVE", "DicomResult", "DicomResults", "read_file", "read_results",
           "read_sc", "read_sr"]
