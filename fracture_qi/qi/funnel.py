"""The screening-to-treatment funnel: how many CTs become patients started on bone therapy.

Each stage is a subset of its *parent* stage, counted in CT studies
(``AnalysisData.studies`` rows; a patient with two CTs in the period can appear twice up to
``confirmed``, the FLS pathway is attached to the CT it was linked to). Events dated after
the data cut-off count as not yet happened.

========================  =====================  ============================================
stage                     parent                 definition
========================  =====================  ============================================
ct                        (none)                 CT studies indexed in the period
eligible                  ct                     aged >= 50, thoracolumbar spine in view
screened                  eligible               the AI model returned a result (status ok)
flagged                   screened               AI-flagged (grade >= flag grade)
adjudicated               flagged                a nurse recorded a first-read decision
confirmed                 adjudicated            the nurse confirmed a vertebral fracture
newly_identified          confirmed              not previously reported nor known to FLS
referred                  newly_identified       nurse action refer_fls, or an FLS referral
assessed                  referred               FLS assessment date recorded
dxa                       assessed               DXA date recorded
therapy_recommended       assessed               bone therapy recommended
therapy_started           therapy_recommended    therapy start date recorded
adherent_52w              therapy_started        adherent at 52 weeks (FLS record)
========================  =====================  ============================================
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd

from fracture_qi.qi.suppression import Mode, format_count, publishable_percent

logger = logging.getLogger(__name__)

#: (stage, parent, label, definition)
STAGES: tuple[tuple[str, str | None, str, str], ...] = (
    ("ct", None, "CT studies", "CT studies indexed in the period"),
    ("eligible", "ct", "Eligible", "aged 50 or over with the thoracolumbar spine in view"),
    ("screened", "eligible", "Screened", "the AI model returned a result"),
    ("flagged", "screened", "AI-flagged", "the AI found a fracture at or above the flag grade"),
    ("adjudicated", "flagged", "Adjudicated", "a nurse recorded a first-read decision"),
    ("confirmed", "adjudicated", "Confirmed", "the nurse confirmed a vertebral fracture"),
    (
        "newly_identified",
        "confirmed",
        "Newly identified",
        "not previously reported by radiology nor known to the FLS",
    ),
    (
        "referred",
        "newly_identified",
        "Referred to FLS",
        "nurse chose refer to FLS, or the FLS recorded a referral",
    ),
    ("assessed", "referred", "FLS assessment", "FLS assessment date recorded"),
    ("dxa", "assessed", "DXA", "DXA scan date recorded"),
    ("therapy_recommended", "assessed", "Therapy recommended", "bone therapy recommended"),
    ("therapy_started", "therapy_recommended", "Therapy started", "therapy start date recorded"),
    (
        "adherent_52w",
        "therapy_started",
        "Adherent at 52 weeks",
        "still on therapy at 52 weeks (FLS record)",
    ),
)


def stage_masks(studies: pd.DataFrame, cutoff: dt.date | None = None) -> dict[str, pd.Series]:
    """Boolean mask per funnel stage over *studies* (each within its parent stage).

    Parameters
    ----------
    studies
        ``AnalysisData.studies``.
    cutoff
        Dates after it count as not yet happened (default: no limit).

    Returns
    -------
    dict of str to pandas.Series
    """
    cut = pd.Timestamp(cutoff) if cutoff is not None else None

    def happened(col: str) -> pd.Series:
        d = pd.to_datetime(studies[col], errors="coerce")
        return d.notna() & ((d <= cut) if cut is not None else True)

    m: dict[str, pd.Series] = {}
    m["ct"] = pd.Series(True, index=studies.index)
    m["eligible"] = m["ct"] & studies["eligible"].eq(True)
    m["screened"] = m["eligible"] & studies["screened"].eq(True)
    m["flagged"] = m["screened"] & studies["ai_flagged"].eq(True)
    m["adjudicated"] = m["flagged"] & studies["adjudicated"].eq(True)
    m["confirmed"] = m["adjudicated"] & studies["confirmed"].eq(True)
    m["newly_identified"] = m["confirmed"] & studies["newly_identified"].eq(True)
    m["referred"] = m["newly_identified"] & studies["referred"].eq(True)
    m["assessed"] = m["referred"] & happened("fls_assessment_date")
    m["dxa"] = m["assessed"] & happened("dxa_date")
    m["therapy_recommended"] = m["assessed"] & studies["therapy_recommended"].eq(True)
    m["therapy_started"] = m["therapy_recommended"] & happened("therapy_start_date")
    m["adherent_52w"] = m["therapy_started"] & studies["adherent_52w"].eq(True)
    return m


def funnel(studies: pd.DataFrame, cutoff: dt.date | None = None) -> pd.DataFrame:
    """Counts at every stage of the funnel (definitions in the module docstring).

    Parameters
    ----------
    studies
        ``AnalysisData.studies``.
    cutoff
        Data cut-off (``AnalysisData.cutoff``).

    Returns
    -------
    pandas.DataFrame
        ``stage, label, n, parent, n_parent, pct_of_parent, pct_of_ct, definition`` (exact,
        unsuppressed: format with :func:`funnel_table` for display).

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"eligible": [True, True, False], "screened": [True, True, False],
    ...     "ai_flagged": [True, False, False], "adjudicated": [True, False, False],
    ...     "confirmed": [True, False, False], "newly_identified": [True, False, False],
    ...     "referred": [True, False, False],
    ...     "fls_assessment_date": pd.to_datetime(["2025-03-01", None, None]),
    ...     "dxa_date": pd.NaT, "therapy_recommended": [True, None, None],
    ...     "therapy_start_date": pd.NaT, "adherent_52w": None})
    >>> funnel(s)[["stage", "n"]].head(4).values.tolist()
    [['ct', 3], ['eligible', 2], ['screened', 2], ['flagged', 1]]
    """
    masks = stage_masks(studies, cutoff)
    rows = []
    n_ct = int(masks["ct"].sum())
    for stage, parent, label, definition in STAGES:
        n = int(masks[stage].sum())
        n_par = int(masks[parent].sum()) if parent else None
        rows.append(
            {
                "stage": stage,
                "label": label,
                "n": n,
                "parent": parent,
                "n_parent": n_par,
                "pct_of_parent": 100 * n / n_par if n_par else None,
                "pct_of_ct": 100 * n / n_ct if n_ct else None,
                "definition": definition,
            }
        )
    return pd.DataFrame(rows)


def funnel_table(f: pd.DataFrame, *, mode: Mode) -> pd.DataFrame:
    """The funnel for display: counts and percentages of the parent stage.

    In ``publish`` mode counts 1-7 show ``*``, others are rounded to 5, and percentages are
    computed from the rounded counts; ``internal`` shows exact numbers.

    Returns
    -------
    pandas.DataFrame
        ``Stage, Number, % of previous stage, Definition`` as strings.
    """
    out = []
    for r in f.itertuples():
        out.append(
            {
                "Stage": r.label,
                "Number": format_count(r.n, mode),
                "% of previous stage": (
                    publishable_percent(r.n, int(r.n_parent), mode=mode)
                    if r.parent is not None and not pd.isna(r.n_parent)
                    else ""
                ),
                "Definition": r.definition,
            }
        )
    return pd.DataFrame(out)
