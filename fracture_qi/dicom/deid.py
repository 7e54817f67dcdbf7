"""De-identification of any DICOM the suite exports (DICOM PS3.15 Annex E).

:func:`deidentify` applies the **Basic Application Level Confidentiality Profile**
(PS3.15 Table E.1-1, "Basic Profile" column) to a copy of a dataset, recursively into
sequences:

* ``X`` remove, ``Z`` empty, ``D`` dummy value, ``K`` keep, ``U`` replace UID; compound
  actions are resolved the conservative way that keeps the IOD valid (``X/Z`` -> ``Z``,
  ``X/D``, ``Z/D``, ``X/Z/D`` -> ``D``, ``X/Z/U*`` -> replace UIDs inside);
* every UID that is not a registered DICOM UID (SOP classes, transfer syntaxes, coding
  schemes stay) is replaced by ``2.25.<int>`` derived with HMAC-SHA256 from the site's
  secret, so the same original UID always maps to the same new one (series stay together,
  references stay valid) and nobody without the secret can map it back;
* private attributes, curves (50xx), overlay data and comments (60xx3000, 60xx4000) are
  removed; person names not listed in the table are emptied too;
* the profile and options used are recorded: Patient Identity Removed ``YES``,
  De-identification Method, De-identification Method Code Sequence (CID 7050: 113100 Basic
  Application Confidentiality Profile, plus 113107/113108/113109 for options used),
  Longitudinal Temporal Information Modified.

Options (:class:`DeidOptions`): retain patient characteristics (age, sex, size, weight...;
113108), retain device identity (113109), retain longitudinal temporal information with
modified dates (dates shifted by a per-patient number of days derived from the secret;
113107). Burned-in text is not looked for: the suite only de-identifies images it renders
itself (no text) or source CT slices, which carry none.

:func:`export_keyimage_dicom` wraps an RGB key image as a de-identified Secondary Capture
in the de-identified study of its source series.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, UID_dictionary

from fracture_qi import __version__

logger = logging.getLogger(__name__)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# PS3.15 Table E.1-1, Basic Profile column, as (group, element) -> action.
# Compound actions are already resolved (see module docstring).
_X, _Z, _D, _U = "X", "Z", "D", "U"
BASIC_PROFILE: dict[int, str] = {
    0x00001000: _X,  # Affected SOP Instance UID
    0x00001001: _U,  # Requested SOP Instance UID
    0x00020003: _U,  # Media Storage SOP Instance UID
    0x00041511: _U,  # Referenced SOP Instance UID in File
    0x00080012: _X,  # Instance Creation Date
    0x00080013: _X,  # Instance Creation Time
    0x00080014: _U,  # Instance Creator UID
    0x00080018: _U,  # SOP Instance UID
    0x00080020: _Z,  # Study Date
    0x00080021: _X,  # Series Date
    0x00080022: _X,  # Acquisition Date
    0x00080023: _D,  # Content Date (Z/D)
    0x00080024: _X,  # Overlay Date
    0x00080025: _X,  # Curve Date
    0x0008002A: _X,  # Acquisition DateTime
    0x00080030: _Z,  # Study Time
    0x00080031: _X,  # Series Time
    0x00080032: _X,  # Acquisition Time
    0x00080033: _D,  # Content Time (Z/D)
    0x00080034: _X,  # Overlay Time
    0x00080035: _X,  # Curve Time
    0x00080050: _Z,  # Accession Number
    0x00080058: _U,  # Failed SOP Instance UID List
    0x00080080: _D,  # Institution Name (X/Z/D)
    0x00080081: _X,  # Institution Address
    0x00080082: _D,  # Institution Code Sequence (X/Z/D)
    0x00080090: _Z,  # Referring Physician's Name
    0x00080092: _X,  # Referring Physician's Address
    0x00080094: _X,  # Referring Physician's Telephone Numbers
    0x00080096: _X,  # Referring Physician Identification Sequence
    0x0008010D: _U,  # Context Group Extension Creator UID
    0x00080201: _X,  # Timezone Offset From UTC
    0x00081010: _D,  # Station Name (X/Z/D)
    0x00081030: _X,  # Study Description
    0x0008103E: _X,  # Series Description
    0x00081040: _X,  # Institutional Department Name
    0x00081048: _X,  # Physician(s) of Record
    0x00081049: _X,  # Physician(s) of Record Identification Sequence
    0x00081050: _X,  # Performing Physicians' Name
    0x00081052: _X,  # Performing Physician Identification Sequence
    0x00081060: _X,  # Name of Physician(s) Reading Study
    0x00081062: _X,  # Physician(s) Reading Study Identification Sequence
    0x00081070: _D,  # Operators' Name (X/Z/D)
    0x00081072: _D,  # Operators' Identification Sequence (X/D)
    0x00081080: _X,  # Admitting Diagnoses Description
    0x00081084: _X,  # Admitting Diagnoses Code Sequence
    0x00081110: _Z,  # Referenced Study Sequence (X/Z)
    0x00081111: _D,  # Referenced Performed Procedure Step Sequence (X/Z/D)
    0x00081120: _X,  # Referenced Patient Sequence
    0x00081155: _U,  # Referenced SOP Instance UID
    0x00081195: _U,  # Transaction UID
    0x00082111: _X,  # Derivation Description
    0x00083010: _U,  # Irradiation Event UID
    0x00084000: _X,  # Identifying Comments
    0x00089123: _U,  # Creator Version UID
    0x00100010: _Z,  # Patient's Name
    0x00100020: _Z,  # Patient ID
    0x00100021: _X,  # Issuer of Patient ID
    0x00100030: _Z,  # Patient's Birth Date
    0x00100032: _X,  # Patient's Birth Time
    0x00100040: _Z,  # Patient's Sex
    0x00100050: _X,  # Patient's Insurance Plan Code Sequence
    0x00100101: _X,  # Patient's Primary Language Code Sequence
    0x00100102: _X,  # Patient's Primary Language Modifier Code Sequence
    0x00101000: _X,  # Other Patient IDs
    0x00101001: _X,  # Other Patient Names
    0x00101002: _X,  # Other Patient IDs Sequence
    0x00101005: _X,  # Patient's Birth Name
    0x00101010: _X,  # Patient's Age
    0x00101020: _X,  # Patient's Size
    0x00101030: _X,  # Patient's Weight
    0x00101040: _X,  # Patient's Address
    0x00101050: _X,  # Insurance Plan Identification
    0x00101060: _X,  # Patient's Mother's Birth Name
    0x00101080: _X,  # Military Rank
    0x00101081: _X,  # Branch of Service
    0x00101090: _X,  # Medical Record Locator
    0x00102000: _X,  # Medical Alerts
    0x00102110: _X,  # Allergies
    0x00102150: _X,  # Country of Residence
    0x00102152: _X,  # Region of Residence
    0x00102154: _X,  # Patient's Telephone Numbers
    0x00102160: _X,  # Ethnic Group
    0x00102180: _X,  # Occupation
    0x001021A0: _X,  # Smoking Status
    0x001021B0: _X,  # Additional Patient History
    0x001021C0: _X,  # Pregnancy Status
    0x001021D0: _X,  # Last Menstrual Date
    0x001021F0: _X,  # Patient's Religious Preference
    0x00102203: _Z,  # Patient's Sex Neutered (X/Z)
    0x00102297: _X,  # Responsible Person
    0x00102299: _X,  # Responsible Organization
    0x00104000: _X,  # Patient Comments
    0x00180010: _D,  # Contrast/Bolus Agent (Z/D)
    0x00181000: _D,  # Device Serial Number (X/Z/D)
    0x00181002: _U,  # Device UID
    0x00181004: _X,  # Plate ID
    0x00181005: _X,  # Generator ID
    0x00181007: _X,  # Cassette ID
    0x00181008: _X,  # Gantry ID
    0x00181030: _D,  # Protocol Name (X/D)
    0x00181400: _D,  # Acquisition Device Processing Description (X/D)
    0x00184000: _X,  # Acquisition Comments
    0x0018700A: _D,  # Detector ID (X/D)
    0x00189424: _X,  # Acquisition Protocol Description
    0x0018A003: _X,  # Contribution Description
    0x0020000D: _U,  # Study Instance UID
    0x0020000E: _U,  # Series Instance UID
    0x00200010: _Z,  # Study ID
    0x00200052: _U,  # Frame of Reference UID
    0x00200200: _U,  # Synchronization Frame of Reference UID
    0x00203401: _X,  # Modifying Device ID
    0x00203404: _X,  # Modifying Device Manufacturer
    0x00203406: _X,  # Modified Image Description
    0x00204000: _X,  # Image Comments
    0x00209158: _X,  # Frame Comments
    0x00209161: _U,  # Concatenation UID
    0x00209164: _U,  # Dimension Organization UID
    0x00281214: _U,  # Large Palette Color Lookup Table UID
    0x00284000: _X,  # Image Presentation Comments
    0x00320012: _X,  # Study ID Issuer
    0x00321020: _X,  # Scheduled Study Location
    0x00321021: _X,  # Scheduled Study Location AE Title
    0x00321030: _X,  # Reason for Study
    0x00321032: _X,  # Requesting Physician
    0x00321033: _X,  # Requesting Service
    0x00321060: _Z,  # Requested Procedure Description (X/Z)
    0x00321070: _X,  # Requested Contrast Agent
    0x00324000: _X,  # Study Comments
    0x00380004: _X,  # Referenced Patient Alias Sequence
    0x00380010: _X,  # Admission ID
    0x00380011: _X,  # Issuer of Admission ID
    0x0038001E: _X,  # Scheduled Patient Institution Residence
    0x00380020: _X,  # Admitting Date
    0x00380021: _X,  # Admitting Time
    0x00380040: _X,  # Discharge Diagnosis Description
    0x00380050: _X,  # Special Needs
    0x00380060: _X,  # Service Episode ID
    0x00380061: _X,  # Issuer of Service Episode ID
    0x00380062: _X,  # Service Episode Description
    0x00380300: _X,  # Current Patient Location
    0x00380400: _X,  # Patient's Institution Residence
    0x00380500: _X,  # Patient State
    0x00384000: _X,  # Visit Comments
    0x00400001: _X,  # Scheduled Station AE Title
    0x00400002: _X,  # Scheduled Procedure Step Start Date
    0x00400003: _X,  # Scheduled Procedure Step Start Time
    0x00400004: _X,  # Scheduled Procedure Step End Date
    0x00400005: _X,  # Scheduled Procedure Step End Time
    0x00400006: _X,  # Scheduled Performing Physician Name
    0x00400007: _X,  # Scheduled Procedure Step Description
    0x0040000B: _X,  # Scheduled Performing Physician Identification Sequence
    0x00400010: _X,  # Scheduled Station Name
    0x00400011: _X,  # Scheduled Procedure Step Location
    0x00400012: _X,  # Pre-Medication
    0x00400241: _X,  # Performed Station AE Title
    0x00400242: _X,  # Performed Station Name
    0x00400243: _X,  # Performed Location
    0x00400244: _X,  # Performed Procedure Step Start Date
    0x00400245: _X,  # Performed Procedure Step Start Time
    0x00400253: _X,  # Performed Procedure Step ID
    0x00400254: _X,  # Performed Procedure Step Description
    0x00400275: _X,  # Request Attributes Sequence
    0x00400280: _X,  # Comments on the Performed Procedure Step
    0x00400555: _X,  # Acquisition Context Sequence
    0x00401001: _X,  # Requested Procedure ID
    0x00401004: _X,  # Patient Transport Arrangements
    0x00401005: _X,  # Requested Procedure Location
    0x00401010: _X,  # Names of Intended Recipients of Results
    0x00401011: _X,  # Intended Recipients of Results Identification Sequence
    0x00401101: _D,  # Person Identification Code Sequence
    0x00401102: _X,  # Person's Address
    0x00401103: _X,  # Person's Telephone Numbers
    0x00401400: _X,  # Requested Procedure Comments
    0x00402001: _X,  # Reason for the Imaging Service Request
    0x00402008: _X,  # Order Entered By
    0x00402009: _X,  # Order Enterer's Location
    0x00402010: _X,  # Order Callback Phone Number
    0x00402016: _Z,  # Placer Order Number / Imaging Service Request
    0x00402017: _Z,  # Filler Order Number / Imaging Service Request
    0x00402400: _X,  # Imaging Service Request Comments
    0x00403001: _X,  # Confidentiality Constraint on Patient Data Description
    0x00404023: _U,  # Referenced General Purpose Scheduled Procedure Step Transaction UID
    0x00404025: _X,  # Scheduled Station Name Code Sequence
    0x00404027: _X,  # Scheduled Station Geographic Location Code Sequence
    0x00404028: _X,  # Performed Station Name Code Sequence
    0x00404030: _X,  # Performed Station Geographic Location Code Sequence
    0x00404034: _X,  # Scheduled Human Performers Sequence
    0x00404035: _X,  # Actual Human Performers Sequence
    0x00404036: _X,  # Human Performers Organization
    0x00404037: _X,  # Human Performers Name
    0x0040A027: _X,  # Verifying Organization
    0x0040A073: _D,  # Verifying Observer Sequence
    0x0040A075: _D,  # Verifying Observer Name
    0x0040A078: _X,  # Author Observer Sequence
    0x0040A07A: _X,  # Participant Sequence
    0x0040A07C: _X,  # Custodial Organization Sequence
    0x0040A088: _Z,  # Verifying Observer Identification Code Sequence
    0x0040A123: _D,  # Person Name
    0x0040A124: _U,  # UID
    0x0040A171: _U,  # Observation UID
    0x0040A730: _X,  # Content Sequence
    0x0040DB0C: _U,  # Template Extension Organization UID
    0x0040DB0D: _U,  # Template Extension Creator UID
    0x00700001: _D,  # Graphic Annotation Sequence
    0x00700084: _Z,  # Content Creator's Name
    0x00700086: _X,  # Content Creator's Identification Code Sequence
    0x0070031A: _U,  # Fiducial UID
    0x00880140: _U,  # Storage Media File-set UID
    0x00880200: _X,  # Icon Image Sequence
    0x00880904: _X,  # Topic Title
    0x00880906: _X,  # Topic Subject
    0x00880910: _X,  # Topic Author
    0x00880912: _X,  # Topic Keywords
    0x20300020: _X,  # Text String
    0x30060024: _U,  # Referenced Frame of Reference UID
    0x300600C2: _U,  # Related Frame of Reference UID
    0x300A0013: _U,  # Dose Reference UID
    0x300E0008: _Z,  # Reviewer Name (X/Z)
    0x40000010: _X,  # Arbitrary
    0x40004000: _X,  # Text Comments
    0x40080042: _X,  # Results ID Issuer
    0x40080102: _X,  # Interpretation Recorder
    0x4008010A: _X,  # Interpretation Transcriber
    0x4008010B: _X,  # Interpretation Text
    0x4008010C: _X,  # Interpretation Author
    0x40080111: _X,  # Interpretation Approver Sequence
    0x40080114: _X,  # Physician Approving Interpretation
    0x40080115: _X,  # Interpretation Diagnosis Description
    0x40080118: _X,  # Results Distribution List Sequence
    0x40080119: _X,  # Distribution Name
    0x4008011A: _X,  # Distribution Address
    0x40080202: _X,  # Interpretation ID Issuer
    0x40080300: _X,  # Impressions
    0x40084000: _X,  # Results Comments
    0x04000100: _X,  # Digital Signature UID
    0x04000402: _X,  # Referenced Digital Signature Sequence
    0x04000403: _X,  # Referenced SOP Instance MAC Sequence
    0x04000404: _X,  # MAC
    0x04000550: _X,  # Modified Attributes Sequence
    0x04000561: _X,  # Original Attributes Sequence
    0xFFFAFFFA: _X,  # Digital Signatures Sequence
    0xFFFCFFFC: _X,  # Data Set Trailing Padding
}

#: kept under the Retain Patient Characteristics Option (113108)
PATIENT_CHARACTERISTICS = frozenset({
    0x00100040, 0x00101010, 0x00101020, 0x00101030, 0x00102160, 0x001021A0, 0x001021C0,
    0x00102203,
})
#: kept under the Retain Device Identity Option (113109)
DEVICE_IDENTITY = frozenset({
    0x00081010, 0x00181000, 0x00181002, 0x00181004, 0x00181005, 0x00181007, 0x00181008,
    0x0018700A, 0x00203401,
})
#: dates kept (shifted) under the Retain Longitudinal ... Modified Dates Option (113107)
DATES = frozenset({
    0x00080012, 0x00080020, 0x00080021, 0x00080022, 0x00080023, 0x0008002A, 0x00080024,
    0x00080025, 0x00380020, 0x00400002, 0x00400004, 0x00400244,
})
TIMES = frozenset({0x00080013, 0x00080030, 0x00080031, 0x00080032, 0x00080033, 0x00380021,
                   0x00400003, 0x00400005, 0x00400245})

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                       "TM", "UC", "UI", "UR", "UT"})

#: UI attributes that name DICOM-registered things and are never replaced
_REGISTERED_UID_KEYWORDS = frozenset({
    "SOPClassUID", "MediaStorageSOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "AffectedSOPClassUID", "RequestedSOPClassUID",
    "ReferencedSOPClassUIDInFile", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
    "MappingResourceUID", "PrivateInformationCreatorUID",
})

CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain_longitudinal_modified_dates": (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
}


@dataclass(frozen=True)
class DeidOptions:
    """Options of the basic profile (PS3.15 E.3), each recorded in the output when used.

    Attributes
    ----------
    retain_patient_characteristics
        Keep age, sex, size, weight, ethnic group, smoking and pregnancy status (113108).
        Useful for osteoporosis research extracts; a re-identification risk for rare cases.
    retain_device_identity
        Keep station name, device serial number and detector/gantry ids (113109).
    retain_longitudinal_modified_dates
        Keep dates, shifted back by a number of days (1-3650) derived from the secret and
        the patient, so intervals within a patient survive (113107).
    patient_pseudonym
        Put this in PatientID and PatientName instead of emptying them (e.g. the first 16
        hex digits of the suite's HMAC patient key), so an extract links to FLS outcomes.
    """

    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_longitudinal_modified_dates: bool = False
    patient_pseudonym: str | None = None


def pseudo_uid(secret: bytes, uid: str) -> str:
    """The replacement UID of *uid*: ``2.25.`` + a 128-bit HMAC-SHA256 derived integer.

    Examples
    --------
    >>> u = pseudo_uid(b"0123456789abcdef", "1.2.3")
    >>> u.startswith("2.25.") and len(u) <= 64 and u == pseudo_uid(b"0123456789abcdef", "1.2.3")
    True
    """
    digest = hmac.new(secret, b"uid|" + uid.encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def date_shift_days(secret: bytes, patient_id: str) -> int:
    """Days (1..3650) that dates of this patient move back under option 113107."""
    digest = hmac.new(secret, b"dateshift|" + patient_id.encode(), hashlib.sha256).digest()
    return 1 + int.from_bytes(digest[:4], "big") % 3650


def _dummy(elem: DataElement) -> Any:
    """A dummy value of the element's VR (action D)."""
    vr = elem.VR
    if vr == "SQ":
        return Sequence([])  # a dummy item would need the macro's attributes: empty is safer
    return {
        "PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000",
        "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
        "UT": "ANONYMIZED", "CS": "ANONYMIZED", "AE": "ANONYMIZED", "UI": "",
        "AS": "000Y", "IS": "0", "DS": "0", "UC": "ANONYMIZED",
    }.get(vr, None)


def _shift_date(value: str, days: int) -> str:
    try:
        d = dt.datetime.strptime(value[:8], "%Y%m%d").date() - dt.timedelta(days=days)
    except ValueError:
        return ""
    return d.strftime("%Y%m%d") + value[8:]


def _is_registered(uid: str) -> bool:
    return uid in UID_dictionary


def _walk(ds: Dataset, visit: Callable[[Dataset, DataElement], None]) -> None:
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value or []:
                _walk(item, visit)
        visit(ds, elem)


def deidentify(ds: Dataset, *, secret: bytes, options: DeidOptions | None = None) -> Dataset:
    """A de-identified copy of *ds* under the PS3.15 basic profile (and *options*).

    Parameters
    ----------
    ds
        Any DICOM dataset (with or without file meta). It is not changed.
    secret
        The site's pseudonymisation secret (:func:`fracture_qi.pseudonym.read_key`): UIDs
        and date shifts derive from it.
    options
        Profile options; each one used is recorded in the code sequence.

    Returns
    -------
    pydicom.dataset.Dataset
        The copy, with Patient Identity Removed ``YES`` and the method recorded.

    Raises
    ------
    ValueError
        When *secret* is empty.

    Examples
    --------
    >>> from pydicom.dataset import Dataset
    >>> src = Dataset(); src.PatientName = "Doe^Jane"; src.PatientID = "MRN1"
    >>> src.StudyInstanceUID = "1.2.3"; src.Modality = "CT"
    >>> out = deidentify(src, secret=b"0123456789abcdef")
    >>> (str(out.PatientName), out.PatientID, out.Modality, out.PatientIdentityRemoved)
    ('', '', 'CT', 'YES')
    """
    if not secret:
        raise ValueError("deidentify needs the site's secret. Fix: pass read_key(...)")
    opts = options or DeidOptions()
    patient = str(ds.get("PatientID", "") or "")
    shift = date_shift_days(secret, patient) if opts.retain_longitudinal_modified_dates else 0
    out = copy.deepcopy(ds)  # the caller's dataset is never changed
    out.remove_private_tags()

    def visit(container: Dataset, elem: DataElement) -> None:
        tag = int(elem.tag)
        group = tag >> 16
        if (0x5000 <= group <= 0x50FF and group % 2 == 0) or (
                0x6000 <= group <= 0x60FF and group % 2 == 0 and (tag & 0xFFFF) in (0x3000, 0x4000)):
            del container[elem.tag]  # curves; overlay data and comments
            return
        action = BASIC_PROFILE.get(tag)
        if opts.retain_patient_characteristics and tag in PATIENT_CHARACTERISTICS:
            return
        if opts.retain_device_identity and tag in DEVICE_IDENTITY:
            if elem.VR == "UI" and elem.value:
                elem.value = pseudo_uid(secret, str(elem.value))
            return
        if opts.retain_longitudinal_modified_dates and tag in DATES | TIMES:
            if tag in DATES and elem.value:
                elem.value = _shift_date(str(elem.value), shift)
            return
        if action == _X:
            del container[elem.tag]
        elif action == _Z:
            elem.value = Sequence([]) if elem.VR == "SQ" else ("" if elem.VR in _TEXT_VRS else None)
        elif action == _D:
            elem.value = _dummy(elem)
        elif elem.VR == "UI" and elem.value and elem.keyword not in _REGISTERED_UID_KEYWORDS:
            # U, and every other instance UID: consistent HMAC replacement
            values = elem.value if isinstance(elem.value, list | pydicom.multival.MultiValue) \
                else [elem.value]
            new = [str(v) if _is_registered(str(v)) else pseudo_uid(secret, str(v))
                   for v in values]
            elem.value = new if len(new) > 1 else new[0]
        elif elem.VR == "PN" and elem.value:
            elem.value = ""  # a person's name the table does not list: still a name

    _walk(out, visit)
    if hasattr(out, "file_meta") and "MediaStorageSOPInstanceUID" in out.file_meta:
        sop = str(ds.file_meta.MediaStorageSOPInstanceUID)
        out.file_meta.MediaStorageSOPInstanceUID = UID(pseudo_uid(secret, sop))

    if opts.patient_pseudonym:
        out.PatientID = opts.patient_pseudonym
        out.PatientName = opts.patient_pseudonym
    used = ["basic"] + [name for name in ("retain_longitudinal_modified_dates",
                                          "retain_patient_characteristics",
                                          "retain_device_identity") if getattr(opts, name)]
    out.PatientIdentityRemoved = "YES"
    # LO is at most 64 characters: one value per fact
    out.DeidentificationMethod = (
        [f"fracture-qi {__version__}", "DICOM PS3.15 E.1 Basic Profile"]
        + [CODES[u][1] for u in used[1:]]
        + ["Private attributes removed", "UIDs replaced: HMAC-SHA256 2.25 UIDs"]
    )
    items = []
    for u in used:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
            CODES[u][0], "DCM", CODES[u][1])
        items.append(code)
    out.DeidentificationMethodCodeSequence = Sequence(items)
    out.LongitudinalTemporalInformationModified = (
        "MODIFIED" if opts.retain_longitudinal_modified_dates else "REMOVED")
    return out


def export_keyimage_dicom(rgb: np.ndarray, source_ds: Dataset, secret: bytes, *,
                          options: DeidOptions | None = None,
                          description: str = "fracture-qi key image") -> Dataset:
    """A de-identified RGB Secondary Capture of a key image, in its source's study.

    Parameters
    ----------
    rgb
        ``uint8`` array ``(rows, columns, 3)``: the rendered key image (it must carry no
        patient identifier: the suite's renderer draws levels, grades and heights only).
    source_ds
        Any slice (or header) of the screened series: its study, patient and equipment
        attributes are carried over, then de-identified with :func:`deidentify`, so the key
        image joins the same de-identified study as other exports of that series.
    secret
        The site's pseudonymisation secret.
    options
        See :class:`DeidOptions`.
    description
        Series Description of the key image series (written after de-identification).

    Returns
    -------
    pydicom.dataset.Dataset
        With file meta (Explicit VR Little Endian), ready for ``save_as``.

    Raises
    ------
    ValueError
        When *rgb* is not a ``(rows, columns, 3)`` uint8 array.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"key image must be uint8 (rows, columns, 3); got {arr.dtype} "
                         f"{arr.shape}. Fix: render to an 8-bit RGB array")
    keep = Dataset()
    for kw in ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate",
               "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "StudyInstanceUID",
               "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
               "ReferringPhysicianName", "Manufacturer", "InstitutionName", "StationName"):
        if kw in source_ds:
            keep[kw] = source_ds[kw]
    series = str(source_ds.get("SeriesInstanceUID", ""))
    sop = str(source_ds.get("SOPInstanceUID", ""))
    out = deidentify(keep, secret=secret, options=options)
    # new series and instance, derived from the source so a re-export replaces, not adds
    out.SeriesInstanceUID = pseudo_uid(secret, f"keyimage-series|{series}")
    out.SOPInstanceUID = pseudo_uid(secret, f"keyimage|{sop or series}")
    out.SOPClassUID = SECONDARY_CAPTURE
    out.Modality = "OT"
    out.ConversionType = "WSD"
    out.SeriesNumber = 9999
    out.InstanceNumber = 1
    out.SeriesDescription = description
    out.ImageType = ["DERIVED", "SECONDARY"]
    out.BurnedInAnnotation = "NO"
    out.Rows, out.Columns = int(arr.shape[0]), int(arr.shape[1])
    out.SamplesPerPixel = 3
    out.PhotometricInterpretation = "RGB"
    out.PlanarConfiguration = 0
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 8, 8, 7, 0
    out.PixelData = np.ascontiguousarray(arr).tobytes()
    out["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = UID(str(out.SOPInstanceUID))
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    out.file_meta = meta
    return out


def identifying_values(ds: Dataset) -> set[str]:
    """Values of *ds* a de-identified copy must not contain (for checks and tests).

    Person names, IDs, birth date, addresses, accession number, dates and every
    non-registered UID, walked through sequences; empty and very short values are ignored.
    """
    found: set[str] = set()

    def visit(_: Dataset, elem: DataElement) -> None:
        tag: BaseTag = Tag(elem.tag)
        if elem.VR == "SQ" or elem.value in (None, "", b""):
            return
        if elem.VR == "UI":
            for v in (elem.value if isinstance(elem.value, list | pydicom.multival.MultiValue)
                      else [elem.value]):
                if not _is_registered(str(v)):
                    found.add(str(v))
            return
        if BASIC_PROFILE.get(int(tag)) in (_X, _Z, _D) or elem.VR == "PN":
            value = str(elem.value)
            if len(value) >= 4:
                found.add(value)

    _walk(ds, visit)
    return found
