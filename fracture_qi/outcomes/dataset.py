"""The analysis frames every measure takes: :class:`AnalysisData` and its column contract.

The frames are built from the database by the read model,
:func:`fracture_qi.outcomes.readmodel.load_analysis`; every measure in
:mod:`fracture_qi.qi` is a pure function of them. Their columns are a contract documented in
``docs/measures.md`` (section "Analysis frames"); add columns, never rename them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: age bands used for stratification (lower bounds; the last is open)
AGE_BANDS = (0, 50, 60, 70, 80, 90)

#: columns of ``AnalysisData.studies`` (a contract: add, never rename)
STUDY_COLUMNS = (
    "study_id",
    "patient_key",
    "sex",
    "age_years",
    "age_band",
    "study_date",
    "month",
    "site",
    "referral_source",
    "eligible",
    "reason",
    "series_id",
    "manufacturer",
    "scanner",
    "model",
    "screening_status",
    "screening_reason",
    "screened",
    "ai_flagged",
    "ai_max_grade",
    "ai_score",
    "low_density",
    "stratum",
    "sampling_probability",
    "weight",
    "double_read",
    "read1_decision",
    "read1_max_grade",
    "read1_levels",
    "read1_previously_known",
    "read1_action",
    "read1_reviewer",
    "read1_at",
    "read2_decision",
    "read2_max_grade",
    "read2_levels",
    "read2_reviewer",
    "read2_at",
    "adjudicated",
    "assessable",
    "confirmed",
    "newly_identified",
    "referred",
    "fls_episode_id",
    "fls_referral_date",
    "fls_assessment_date",
    "dxa_date",
    "dxa_t_score",
    "therapy_recommended",
    "therapy_recommended_date",
    "drug",
    "therapy_start_date",
    "adherent_52w",
    "death_date",
    "on_therapy_before",
    "known_to_fls_before",
    "reported_by_radiology",
    "fls_n_problems",
)

#: columns of ``AnalysisData.episodes``
EPISODE_COLUMNS = (
    "episode_id",
    "source",
    "record_id",
    "patient_key",
    "study_id",
    "linked_study",
    "ct_identified",
    "index_date",
    "month",
    "site",
    "referral_date",
    "assessment_date",
    "dxa_date",
    "dxa_t_score",
    "therapy_recommended",
    "therapy_recommended_date",
    "drug",
    "therapy_start_date",
    "adherent_52w",
    "death_date",
    "on_therapy_before",
    "known_to_fls_before",
    "reported_by_radiology",
    "n_problems",
    "problem_codes",
    "index_fracture_site",
    "falls_assessment_date",
    "strength_balance_date",
    "followup_date",
)

#: columns of ``AnalysisData.reads``
READ_COLUMNS = (
    "study_id",
    "read_number",
    "event_id",
    "decision",
    "max_grade",
    "levels",
    "previously_known",
    "action",
    "reviewer",
    "first_recorded_at",
    "recorded_at",
    "n_events",
    "simulated",
)


@dataclass
class AnalysisData:
    """Everything the measures need, as pandas frames (see ``docs/measures.md``).

    Attributes
    ----------
    studies
        One row per CT study in the selection (:data:`STUDY_COLUMNS`): eligibility, the
        chosen model's result on the chosen series, worklist stratum and sampling weight,
        first and second read, and the linked FLS pathway dates.
    episodes
        One row per FLS episode whose index date falls in the period
        (:data:`EPISODE_COLUMNS`), linked to a CT or not: the denominators of the FLS KPIs.
    reads
        One row per (study, read) that counts (:data:`READ_COLUMNS`): the latest event of
        each correction chain.
    models
        Screening models in the database with their counts (``model``, ``n``).
    model
        The model whose results are in ``studies`` (``model_id:version``), or None.
    flag_grade
        Genant grade at or above which a study counts as AI-flagged (None: the engine's flag).
    period
        ``(start, end)`` dates (inclusive) or None.
    sites
        Sites selected, or None for all.
    audit
        Worklist audit name used for strata and weights.
    cutoff
        Data cut-off date: events after it are not counted; unfinished pathways are censored
        at it.
    seconds
        Time taken to load.
    """

    studies: pd.DataFrame
    episodes: pd.DataFrame
    reads: pd.DataFrame
    models: pd.DataFrame
    model: str | None
    flag_grade: int | None
    period: tuple[dt.date, dt.date] | None
    sites: list[str] | None
    audit: str | None
    cutoff: dt.date
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def subset(
        self,
        *,
        period: tuple[dt.date | str, dt.date | str] | None = None,
        sites: Sequence[str] | None = None,
    ) -> AnalysisData:
        """The same selection :func:`load_analysis` would return for *period* and *sites*,
        taken in memory from this (wider) load: milliseconds instead of a database round trip.

        Load once without filters, then call this on every filter change (the dashboard).

        Parameters
        ----------
        period
            ``(start, end)`` study dates, inclusive; must lie within this data's period.
        sites
            Sites to keep.

        Returns
        -------
        AnalysisData
            With ``cutoff`` set to the end of *period* when given (as :func:`load_analysis`).
        """
        st, ep, rd = self.studies, self.episodes, self.reads
        p0 = p1 = None
        cut = self.cutoff
        if period is not None:
            p0, p1 = (pd.Timestamp(x).date() for x in period)
            st = st[st["study_date"].between(pd.Timestamp(p0), pd.Timestamp(p1))]
            ep = ep[ep["index_date"].between(pd.Timestamp(p0), pd.Timestamp(p1))]
            cut = p1
        site_list = list(sites) if sites else None
        if site_list:
            st = st[st["site"].isin(site_list)]
            ep = ep[ep["site"].isin(site_list)]
        rd = rd[rd["study_id"].isin(st["study_id"])]
        params = {
            **self.params,
            "sites": site_list,
            "cutoff": str(cut),
            "period": [str(p0), str(p1)] if p0 else self.params.get("period"),
        }
        return AnalysisData(
            studies=st.reset_index(drop=True),
            episodes=ep.reset_index(drop=True),
            reads=rd.reset_index(drop=True),
            models=self.models,
            model=self.model,
            flag_grade=self.flag_grade,
            period=(p0, p1) if p0 is not None and p1 is not None else self.period,
            sites=site_list,
            audit=self.audit,
            cutoff=cut,
            seconds=0.0,
            params=params,
        )


def age_band(age: pd.Series) -> pd.Series:
    """Age bands ``<50, 50-59, 60-69, 70-79, 80-89, 90+`` (ordered categorical).

    Examples
    --------
    >>> [str(x) for x in age_band(pd.Series([49.9, 50, 79, 95, None]))]
    ['<50', '50-59', '70-79', '90+', 'nan']
    """
    labels = ["<50", "50-59", "60-69", "70-79", "80-89", "90+"]
    return pd.cut(age, bins=[-np.inf, 50, 60, 70, 80, 90, np.inf], right=False, labels=labels)


def __getattr__(name: str) -> Any:
    # the loaders moved to the read model (fracture_qi.outcomes.readmodel); old imports of
    # ``fracture_qi.outcomes.dataset.load_analysis`` keep working
    if name in ("load_analysis", "load_reads", "load_analysis_by_model"):
        from fracture_qi.outcomes import readmodel

        return getattr(readmodel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
