"""What the adjudication app shows beside the images: the patient, the AI's result, the history
a nurse needs to answer "was it already known?", and the page's style.

Pure functions from a :class:`~.worklist.CaseRecord` to HTML (escaped), so they are tested
without widgets. Identifiers appear only here, in the nurse's view.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from fracture_qi.adjudication.viewer import Finding, PreparedCase, name_findings
from fracture_qi.adjudication.worklist import CaseRecord

BOLD = " style='font-weight:600'"
#: how the worklist stratum is named once the nurse may know it
STRATUM_LABELS = {"flagged": "AI flagged", "audit_negative": "audit sample (AI negative)"}

#: the app fills the window (a ward laptop is 1280x720): the three columns scroll on their
#: own and the buttons stay at the bottom of the form, always in view
CSS = """
<style>
.fqi-app {font-family: system-ui, sans-serif; font-size: 14px; height: calc(100vh - 24px);
          box-sizing: border-box;}
.fqi-app .fqi-title {font-size: 16px; font-weight: 700; margin-right: 6px;}
.fqi-app .fqi-fields > * {flex-shrink: 0;}
.fqi-banner {background:#fff3cd; border:1px solid #e0c36c; padding:2px 8px; border-radius:4px;}
.fqi-status-ok {color:#11642a; font-weight:600;}
.fqi-status-error {color:#a40e26; font-weight:600;}
.fqi-status-info {color:#24466b;}
.fqi-panel {border:1px solid #d0d7de; border-radius:6px; padding:4px 8px; margin:2px;}
.fqi-patient td {padding:0 8px 0 0;}
.fqi-findings td, .fqi-findings th {padding:1px 6px; text-align:left;}
.fqi-section {font-weight:600; margin-top:4px;}
.fqi-app .mod-active {background:#1f5fbf !important; color:white !important;}
.fqi-app img.fqi-sagittal {max-height: calc(100vh - 190px); width: auto !important;}
.fqi-app img.fqi-axial {max-width: 100%; height: auto !important;}
.fqi-actions {border-top: 1px solid #d0d7de; padding-top: 4px; background: white;}
.fqi-confirm {background:#fff3cd; border:1px solid #e0c36c; border-radius:4px; padding:4px;}
.fqi-reveal {background:#e8f1fb; border:1px solid #9cc0e8; border-radius:4px; padding:4px;}
.fqi-history {font-size: 13px; color: #24292f; background: #f6f8fa; border-radius: 4px;
              padding: 2px 8px; margin-left: 8px;}
.fqi-history td {padding: 0 6px 0 0; vertical-align: top;}
.fqi-ai-ident {font-size: 12px; color: #57606a; padding-left: 4px; line-height: 28px;}
.fqi-blind-note {color:#57606a; font-style: italic;}
</style>
"""


def esc(v: Any) -> str:
    """HTML-escaped text ('' for None)."""
    return html.escape("" if v is None else str(v))


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def patient_html(rec: CaseRecord, *, show_stratum: bool) -> str:
    """The patient panel. *show_stratum* is False while an audit-sample case is read blind:
    the worklist it came from would tell the nurse the AI's answer."""
    c = rec.case
    dob = rec.birth_date.isoformat() if rec.birth_date else ""
    rows = [
        ("Name", esc(rec.patient_name)), ("NHS number", esc(rec.nhs_number)),
        ("MRN", esc(rec.mrn)), ("Date of birth", esc(dob)), ("Sex", esc(rec.sex)),
        ("Referral source", esc(rec.referral_source)),
        ("CT date", esc(rec.study_date.isoformat() if rec.study_date else "")),
        ("Accession", esc(rec.accession_number)), ("Study", esc(rec.description)),
        ("Site", esc(rec.site)), ("Case", esc(f"study {c.study_id}, read {c.read_number}")),
    ]
    if show_stratum:
        rows.append(("Worklist", esc(STRATUM_LABELS.get(c.stratum, c.stratum))
                     + (" &middot; double read" if c.double_read else "")))
    body = "".join(f"<tr><td>{k}</td><td><b>{v}</b></td></tr>" for k, v in rows)
    return ("<div class='fqi-panel fqi-patient'><div class='fqi-section'>Patient "
            f"(confidential)</div><table>{body}</table></div>")


def findings_html(rec: CaseRecord, prep: PreparedCase | None) -> str:
    """The AI's result: flag, highest grade, model, and one row per vertebra."""
    head = (f"<div>{'<b>Flagged</b>' if rec.flagged else 'Not flagged'} &middot; highest "
            f"grade {rec.max_grade} &middot; model {esc(rec.model)}"
            + (f" &middot; L1 {rec.l1_hu:.0f} HU" if rec.l1_hu is not None else "")
            + (" (low density)" if rec.low_density else "") + "</div>")
    fs = prep.findings if prep else name_findings([Finding.from_row(r) for r in rec.findings])
    fs = sorted(fs, key=lambda f: -(f.centre_zyx or (0.0,))[0])  # cranial first, as shown
    rows = "".join(
        f"<tr{BOLD if f.grade >= 1 else ''}><td>{esc(f.ident)}"
        f"</td><td>{f.grade}</td><td>{esc(f.morph_type)}</td><td>{_fmt(f.ha_mm)}</td>"
        f"<td>{_fmt(f.hm_mm)}</td><td>{_fmt(f.hp_mm)}</td></tr>" for f in fs)
    return head + (
        "<table class='fqi-findings'><tr><th>Level</th><th>Grade</th><th>Type</th>"
        f"<th>Ha mm</th><th>Hm mm</th><th>Hp mm</th></tr>{rows}</table>" if rows else "")


#: shown in place of the AI's result while an audit-sample case is read blind
BLIND_FINDINGS_HTML = (
    "<div class='fqi-blind-note fqi-ai-hidden'>The AI's result is hidden for this case: "
    "record your own reading first. After you save it, you may ask to see the AI's result; "
    "your first answer is kept as the blind read.</div>")


def _yes_no(v: bool | None) -> str:
    return "not recorded" if v is None else ("yes" if v else "no")


def _date(v: dt.date | None) -> str:
    return v.isoformat() if isinstance(v, dt.date) else ""


def history_html(rec: CaseRecord) -> str:
    """Age at the CT and the patient's FLS and therapy history, beside the question
    "was it already known?" (FLS records imported with ``fracture-qi import-fls``)."""
    age = f"{rec.age_years:.0f} at this CT" if rec.age_years is not None else "not recorded"
    rows = [("Age", esc(age))]
    eps = rec.fls_history
    if not eps:
        rows.append(("FLS", "no FLS record for this patient"))
        rows.append(("Bone therapy", "no record"))
    else:
        known = any(e.get("known_to_fls") for e in eps) or any(e.get("referral_date")
                                                                for e in eps)
        first_ref = next((e["referral_date"] for e in eps if e.get("referral_date")), None)
        fls = ("known to the FLS" + (f" (referred {_date(first_ref)})" if first_ref else "")
               if known else "records, not under the FLS")
        assessed = [e["assessment_date"] for e in eps if e.get("assessment_date")]
        if assessed:
            fls += f"; assessed {_date(max(assessed))}"
        rows.append(("FLS", esc(fls)))
        reported = [e.get("reported_by_radiology") for e in eps
                    if e.get("reported_by_radiology") is not None]
        if reported:
            rows.append(("Radiology report", esc("fracture reported" if any(reported)
                                                 else "not reported")))
        therapy = []
        if any(e.get("on_therapy_before") for e in eps):
            therapy.append("on therapy before this CT")
        for e in eps:
            if e.get("therapy_start_date") or e.get("drug"):
                therapy.append(" ".join(x for x in (
                    e.get("drug") or "therapy", f"started {_date(e.get('therapy_start_date'))}"
                    if e.get("therapy_start_date") else "recommended") if x))
            if e.get("adherent_52w") is not None:
                therapy.append(f"adherent at 52 weeks: {_yes_no(e.get('adherent_52w'))}")
        rows.append(("Bone therapy", esc("; ".join(dict.fromkeys(therapy)) or "none recorded")))
    body = "".join(f"<tr><td>{k}</td><td><b>{v}</b></td></tr>" for k, v in rows)
    return f"<div class='fqi-history'><table>{body}</table></div>"


__all__ = [
    "BLIND_FINDINGS_HTML",
    "CSS",
    "STRATUM_LABELS",
    "findings_html",
    "history_html",
    "patient_html",
]
