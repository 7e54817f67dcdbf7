"""Coded concepts of the results the suite writes into DICOM (SR, SEG) and reads back.

Standard codes wherever one exists (SNOMED CT ``SCT`` vertebrae and findings, DICOM ``DCM``
and UCUM units, all as pydicom's code dictionary lists them); the suite's own coding scheme
``99FQI`` (a private scheme: DICOM PS3.16 8.2 reserves designators starting with ``99`` for
local use) for what no standard codes: the Genant grade, the deformity type, the per-vertebra
quality code, the three heights and the contrast phase. Every SR and SEG the suite writes
declares ``99FQI`` in its Coding Scheme Identification Sequence, so a reader knows whose codes
they are.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from highdicom.sr import CodedConcept

#: the suite's private coding scheme (PS3.16 8.2: "99" prefix for local schemes)
SCHEME = "99FQI"
SCHEME_VERSION = "1"
SCHEME_NAME = "fracture-qi vertebral fracture screening codes"


def fqi(value: str, meaning: str) -> CodedConcept:
    """A concept of the suite's own scheme.

    >>> fqi("GENANT", "Genant semi-quantitative grade").scheme_designator
    '99FQI'
    """
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def _c(code: object) -> CodedConcept:
    return CodedConcept(value=code.value, scheme_designator=code.scheme_designator,  # type: ignore[attr-defined]
                        meaning=code.meaning)  # type: ignore[attr-defined]


#: SNOMED CT codes of the vertebrae the screener reports (pydicom's codedict)
VERTEBRA_CODES: dict[str, CodedConcept] = {
    **{f"T{i}": _c(getattr(codes.SCT, f"T{i}Vertebra")) for i in range(1, 13)},
    **{f"L{i}": _c(getattr(codes.SCT, f"L{i}Vertebra")) for i in range(1, 6)},
}
#: SCT code value -> level, for reading SRs back
LEVEL_OF_CODE: dict[str, str] = {c.value: lv for lv, c in VERTEBRA_CODES.items()}
#: a vertebra whose level could not be named
VERTEBRA = _c(codes.SCT.Vertebra)
SPINE = _c(codes.SCT.Spine)
THORACOLUMBAR_SPINE = _c(codes.SCT.ThoracoLumbarSpine)

#: procedure reported (CID 100 allows any CT procedure code)
CT_PROCEDURE = CodedConcept("77477000", "SCT", "Computed tomography")

MM = _c(codes.UCUM.Millimeter)
HU = _c(codes.UCUM.HounsfieldUnit)

PRESENT = _c(codes.DCM.Present)
ABSENT = _c(codes.DCM.Absent)
FINDING = _c(codes.DCM.Finding)
MEAN_ATTENUATION = _c(codes.DCM.MeanAttenuationCoefficient)
QUALITATIVE_EVALUATIONS = CodedConcept("126010", "DCM", "Qualitative Evaluations")

# --- the suite's own concepts ------------------------------------------------------------------
ANTERIOR_HEIGHT = fqi("HA", "Anterior vertebral body height")
MIDDLE_HEIGHT = fqi("HM", "Middle vertebral body height")
POSTERIOR_HEIGHT = fqi("HP", "Posterior vertebral body height")
HEIGHTS = {"ha_mm": ANTERIOR_HEIGHT, "hm_mm": MIDDLE_HEIGHT, "hp_mm": POSTERIOR_HEIGHT}

GENANT_GRADE = fqi("GENANT", "Genant semi-quantitative grade")
GENANT_VALUES: dict[int, CodedConcept] = {
    0: fqi("GENANT-0", "Genant grade 0 (normal)"),
    1: fqi("GENANT-1", "Genant grade 1 (mild, 20-25% height loss)"),
    2: fqi("GENANT-2", "Genant grade 2 (moderate, 25-40% height loss)"),
    3: fqi("GENANT-3", "Genant grade 3 (severe, over 40% height loss)"),
}
GRADE_OF_CODE = {c.value: g for g, c in GENANT_VALUES.items()}

MORPH_TYPE = fqi("MORPH", "Vertebral deformity type")
MORPH_VALUES: dict[str, CodedConcept] = {
    "normal": fqi("MORPH-NORMAL", "No deformity"),
    "wedge": fqi("MORPH-WEDGE", "Wedge deformity"),
    "biconcave": fqi("MORPH-BICONCAVE", "Biconcave deformity"),
    "crush": fqi("MORPH-CRUSH", "Crush deformity"),
}
MORPH_OF_CODE = {c.value: m for m, c in MORPH_VALUES.items()}

QUALITY = fqi("QUALITY", "Vertebra assessability")
QUALITY_VALUES: dict[str, CodedConcept] = {
    "ok": fqi("QUALITY-OK", "Assessed"),
    "partial_fov": fqi("QUALITY-PARTIAL-FOV", "Not assessed: cut by the field of view"),
    "metal": fqi("QUALITY-METAL", "Not assessed: metal in or beside the body"),
    "low_confidence": fqi("QUALITY-LOW-CONFIDENCE", "Not assessed: low confidence"),
}
QUALITY_OF_CODE = {c.value: q for q, c in QUALITY_VALUES.items()}

STUDY_FLAG = fqi("VFX-FLAG", "Suspected vertebral fracture (AI flag)")
MAX_GRADE = fqi("MAX-GENANT", "Highest Genant grade")
LOW_DENSITY = fqi("LOW-DENSITY", "Low bone density (trabecular attenuation below threshold)")
DENSITY_GROUP = fqi("BONE-DENSITY", "Opportunistic bone density")
VERTEBRA_ASSESSMENT = fqi("VERTEBRA", "Vertebral body morphometry")

CONTRAST_PHASE = fqi("CONTRAST-PHASE", "Contrast phase (from aortic attenuation)")
CONTRAST_VALUES: dict[str, CodedConcept] = {
    "unenhanced": fqi("PHASE-UNENHANCED", "Unenhanced"),
    "arterial": fqi("PHASE-ARTERIAL", "Arterial phase"),
    "portal_venous": fqi("PHASE-PORTAL-VENOUS", "Portal venous or later phase"),
    "unknown": fqi("PHASE-UNKNOWN", "Contrast phase unknown"),
}
CONTRAST_OF_CODE = {c.value: p for p, c in CONTRAST_VALUES.items()}

#: segment of a DICOM SEG: a vertebral body
VERTEBRAL_BODY_CATEGORY = CodedConcept("91723000", "SCT", "Anatomical structure")


def coding_scheme_item() -> Dataset:
    """The Coding Scheme Identification Sequence item that declares ``99FQI``."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeVersion = SCHEME_VERSION
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "fracture-qi project"
    return item


__all__ = [name for name in dir() if name.isupper() or name in ("fqi", "coding_scheme_item")]
