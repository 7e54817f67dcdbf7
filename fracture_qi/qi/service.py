"""The service's own measures, beside the FLS-DB KPIs: what the AI could not assess, and
what it found that the radiology report did not say.

Over ``AnalysisData.studies`` (one model's counted results,
:mod:`fracture_qi.screening.counting`):

=================  ==========================================  ==================================
measure            numerator                                   denominator
=================  ==========================================  ==================================
ai_unassessable    eligible studies whose counted result is    eligible studies with a counted
                   not ``ok``: ``error``, or ``excluded``      result from the model
                   (e.g. ``NO_ASSESSABLE_VERTEBRAE``: vertebrae
                   found, none could be graded)
not_in_report      confirmed AI-flagged fractures that the     confirmed AI-flagged fractures
                   nurse found not mentioned in the radiology  (first read)
                   report (previously known: not ``reported``)
=================  ==========================================  ==================================

Lower is better for the first (the share of CTs the AI gives back unread); the second is the
AI's added value (fractures radiology did not report), neither good nor bad in itself.
"""

from __future__ import annotations

import pandas as pd

#: measure -> (label, numerator, denominator, improvement direction)
SERVICE_MEASURES: dict[str, tuple[str, str, str, str | None]] = {
    "ai_unassessable": (
        "Eligible CTs the AI could not assess",
        "counted result not ok (error, or excluded as not assessable)",
        "eligible CTs with a result from the model", "down"),
    "not_in_report": (
        "Confirmed fractures not in the radiology report",
        "AI-flagged fractures confirmed by the nurse, not mentioned in the report",
        "AI-flagged fractures confirmed by the nurse", None),
}


def service_masks(studies: pd.DataFrame) -> dict[str, pd.Series]:
    """Row masks: ``result, unassessable, error, excluded`` (ai_unassessable) and
    ``conf_flagged, not_reported`` (not_in_report)."""
    st = studies
    status = st["screening_status"].astype(object)
    result = st["eligible"].eq(True) & status.notna()
    conf_flagged = st["ai_flagged"].eq(True) & st["read1_decision"].eq("confirmed")
    return {
        "result": result,
        "unassessable": result & status.ne("ok"),
        "error": result & status.eq("error"),
        "excluded": result & status.eq("excluded"),
        "conf_flagged": conf_flagged,
        "not_reported": conf_flagged & st["read1_previously_known"].astype(object).ne("reported"),
    }


def unassessable_reasons(studies: pd.DataFrame) -> pd.DataFrame:
    """Eligible studies the AI could not assess, by status and reason code (exact counts)."""
    m = service_masks(studies)["unassessable"]
    s = studies[m]
    out = (s.assign(reason=s["screening_reason"].fillna("(no reason code)"))
           .groupby(["screening_status", "reason"], sort=True).size()
           .rename("studies").reset_index())
    out["studies"] = out["studies"].astype(int)
    return out.rename(columns={"screening_status": "status"})


__all__ = ["SERVICE_MEASURES", "service_masks", "unassessable_reasons"]
