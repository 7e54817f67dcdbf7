"""Measures broken down by site, scanner, referral source, age band, sex and AI model.

:func:`stratified` applies the funnel counts and the accuracy measures within each group of
``AnalysisData.studies``; :func:`by_model` compares the frames of each screening model (a
study has one counted result per model, so models are compared on the same studies). Pure
functions of the frames: the read model loads them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from fracture_qi.qi.accuracy import accuracy
from fracture_qi.qi.funnel import stage_masks

logger = logging.getLogger(__name__)

#: stratifier name -> column of AnalysisData.studies
STRATA: dict[str, str] = {
    "site": "site",
    "scanner": "scanner",
    "referral_source": "referral_source",
    "age_band": "age_band",
    "sex": "sex",
    "model": "model",
}

#: funnel stages counted per group by :func:`stratified`
COUNT_STAGES = (
    "ct",
    "eligible",
    "screened",
    "flagged",
    "adjudicated",
    "confirmed",
    "newly_identified",
    "referred",
    "therapy_started",
)


def group_summary(s: pd.DataFrame, *, confidence: float = 0.95) -> dict[str, Any]:
    """Counts and accuracy for one group of studies (one row of :func:`stratified`)."""
    masks = stage_masks(s)
    row: dict[str, Any] = {f"n_{k}": int(masks[k].sum()) for k in COUNT_STAGES}
    acc = accuracy(s, confidence=confidence).set_index("measure")
    for m in ("ppv", "sensitivity", "specificity"):
        row[m] = float(acc.loc[m, "estimate"])
        row[f"{m}_low"] = float(acc.loc[m, "low"])
        row[f"{m}_high"] = float(acc.loc[m, "high"])
        row[f"{m}_n"] = int(acc.loc[m, "n"])
    return row


def stratified(
    studies: pd.DataFrame,
    by: str | Sequence[str],
    *,
    summary: Callable[[pd.DataFrame], dict[str, Any]] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """A summary per stratum (default: :func:`group_summary`).

    Parameters
    ----------
    studies
        ``AnalysisData.studies``.
    by
        A key of :data:`STRATA` (or a column name), or several for a cross-classification.
    summary
        Function from a group's rows to a dict of values (default counts + accuracy).
    confidence
        Level for the default summary's intervals.

    Returns
    -------
    pandas.DataFrame
        One row per group (groups with missing labels shown as ``unknown``), columns of the
        stratifiers then the summary's keys; exact (format for publication with
        :func:`fracture_qi.qi.suppression.suppress_table`).

    Raises
    ------
    KeyError
        When a stratifier names no column (the message lists those available).
    """
    keys = [by] if isinstance(by, str) else list(by)
    cols = [STRATA.get(k, k) for k in keys]
    missing = [c for c in cols if c not in studies.columns]
    if missing:
        raise KeyError(f"cannot stratify by {missing}: use one of {sorted(STRATA)}")
    fn = summary or (lambda g: group_summary(g, confidence=confidence))
    df = studies.copy()
    for c in cols:
        df[c] = df[c].astype(object).where(df[c].notna(), "unknown").astype(str)
    rows = []
    for key, g in df.groupby(cols, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **fn(g)})
    return pd.DataFrame(rows)


def by_model(datasets: Mapping[str, Any], *, confidence: float = 0.95) -> pd.DataFrame:
    """:func:`group_summary` for each screening model, compared on the same studies.

    Parameters
    ----------
    datasets
        ``{model label: AnalysisData}``, e.g. from
        :func:`fracture_qi.outcomes.readmodel.load_analysis_by_model` (the same selection
        loaded once per model: a study has one counted result per model).
    confidence
        Interval level.

    Returns
    -------
    pandas.DataFrame
        One row per model, sorted by model.
    """
    rows = [{"model": m, **group_summary(d.studies, confidence=confidence)}
            for m, d in sorted(datasets.items())]
    return pd.DataFrame(rows)
