"""Which screening result counts for a study: one rule for export, worklist, audit and dashboard.

A database can hold several results for one study: one per screening model version, and
(after a re-index chose another series) one per series. Every consumer (``fracture-qi
export``, the nurses' worklist, ``load_analysis`` behind the audit notebooks, and the QI
dashboard's cube) picks the result through this module, so with two models they all report
the same result for every study.

**The rule**

1. A *model* is a ``(model_id, model_version)`` pair, written ``model_id:model_version``.
2. A study's *counted result* for model M is M's **current** screening of the study's
   **chosen series** (``studies.chosen_series_id``, set by the index). A screening is
   current when no later one supersedes it: a series that gained instances after M
   screened it (the rest of a study arriving late at the listener) is screened again, and
   the new screening supersedes the old one, which is kept but never counts
   (``screenings.supersedes_id``, :func:`fracture_qi.store.schema.screening_is_current`).
   There is at most one current screening per series and model (one first screening per
   series, model id and version; each superseded at most once). A study without a chosen
   series, or whose chosen series M has not screened, has no result for M ("not
   screened"). Results on other series of the study are kept (``fracture-qi export`` lists
   them per series) but never count for the study.
3. A model named by its id alone means its **current version**: the version with the most
   recent screening (the highest screening id).
4. The **default model**, when none is named: the model with the most counted results
   (rule 2), ties broken by the most recent screening. It changes only when another model
   has screened more of the chosen series, not because someone tried a model on a handful
   of studies.

Status of a counted result: ``ok`` (assessed), ``excluded`` (the model looked and found
nothing assessable, e.g. ``NO_ASSESSABLE_VERTEBRAE``) or ``error``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Engine, and_, func, select

from fracture_qi.errors import ConfigError
from fracture_qi.store.schema import Screening, Study, screening_is_current

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """One screening model version.

    Examples
    --------
    >>> ModelRef("reference", "0.8.0").label
    'reference:0.8.0'
    >>> ModelRef.parse("vendor-x:2.3")
    ModelRef(model_id='vendor-x', model_version='2.3')
    """

    model_id: str
    model_version: str

    @property
    def label(self) -> str:
        """``model_id:model_version``."""
        return f"{self.model_id}:{self.model_version}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Read ``model_id:model_version`` (split at the first colon)."""
        mid, sep, ver = text.partition(":")
        if not sep or not mid or not ver:
            raise ConfigError(f"model {text!r}: write it as model_id:model_version")
        return cls(mid, ver)


def counted_on() -> Any:
    """Join condition of a study's counted screenings (rule 2, any model):
    ``screenings.series_id = studies.chosen_series_id`` and the screening is current (not
    superseded)."""
    return and_(Screening.series_id == Study.chosen_series_id, screening_is_current())


def counted_join(model: ModelRef | None) -> Any:
    """Join condition (``Study`` to ``Screening``) selecting the counted result of *model*.

    With ``model=None`` the condition matches nothing (no model in the database).
    """
    if model is None:
        return and_(counted_on(), Screening.id.is_(None))
    return and_(counted_on(), Screening.model_id == model.model_id,
                Screening.model_version == model.model_version)


def models_table(conn: Any) -> pd.DataFrame:
    """Every model with screenings: ``model_id, model_version, model, n, last``.

    ``n`` counts its counted results (screenings of chosen series), ``last`` its highest
    screening id (any series), so a model whose results are all on other series still
    appears (with ``n`` 0).
    """
    n_counted = (
        select(Screening.model_id, Screening.model_version, func.count().label("n"))
        .join(Study, counted_on())
        .group_by(Screening.model_id, Screening.model_version)
        .subquery()
    )
    rows = conn.execute(
        select(Screening.model_id, Screening.model_version, func.max(Screening.id))
        .group_by(Screening.model_id, Screening.model_version)
    ).all()
    counts = {(a, b): int(n) for a, b, n in conn.execute(select(n_counted)).all()}
    df = pd.DataFrame(
        [(a, b, counts.get((a, b), 0), int(last)) for a, b, last in rows],
        columns=["model_id", "model_version", "n", "last"],
    )
    df.insert(2, "model", df["model_id"].astype(str) + ":" + df["model_version"].astype(str))
    return df.sort_values("model").reset_index(drop=True)


def default_model(models: pd.DataFrame) -> ModelRef | None:
    """Rule 4 over :func:`models_table`: most counted results, then most recent.

    Examples
    --------
    >>> t = pd.DataFrame({"model_id": ["a", "b"], "model_version": ["1", "2"],
    ...                   "n": [10, 10], "last": [5, 9]})
    >>> default_model(t).label
    'b:2'
    """
    if models.empty:
        return None
    top = models.sort_values(["n", "last"], ascending=False, kind="mergesort").iloc[0]
    return ModelRef(str(top["model_id"]), str(top["model_version"]))


def choose_model(models: pd.DataFrame, model: str | ModelRef | None) -> ModelRef | None:
    """Resolve what a user named (``None``, ``id`` or ``id:version``) under rules 3 and 4.

    Raises
    ------
    ConfigError
        When the name matches no model with results (the message lists those there).

    Examples
    --------
    >>> t = pd.DataFrame({"model_id": ["a", "a"], "model_version": ["1", "2"],
    ...                   "n": [10, 3], "last": [5, 9]})
    >>> choose_model(t, "a").label, choose_model(t, None).label
    ('a:2', 'a:1')
    """
    if isinstance(model, ModelRef):
        model = model.label
    if not model:
        return default_model(models)
    mid, _, ver = str(model).partition(":")
    cand = models[models["model_id"] == mid]
    if ver:
        cand = cand[cand["model_version"] == ver]
    if cand.empty:
        there = ", ".join(models["model_id"] + ":" + models["model_version"]) or "none"
        raise ConfigError(
            f"model {model!r} has no screening results in the database; models there: {there}. "
            "Fix: pass one of those (model_id or model_id:version)"
        )
    top = cand.sort_values("last", ascending=False, kind="mergesort").iloc[0]
    return ModelRef(str(top["model_id"]), str(top["model_version"]))


def resolve_model(engine: Engine, model: str | ModelRef | None = None) -> ModelRef | None:
    """:func:`choose_model` against the database (one small grouped query)."""
    with engine.connect() as conn:
        return choose_model(models_table(conn), model)


def counted_results(engine: Engine, model: str | ModelRef | None = None) -> pd.DataFrame:
    """The counted result of every study for *model* (default: the default model).

    Returns
    -------
    pandas.DataFrame
        ``study_id, series_id, screening_id, model, status, reason, flagged, max_grade``;
        one row per study that has a counted result (studies without one are left out).
    """
    ref = resolve_model(engine, model)
    cols = ["study_id", "series_id", "screening_id", "model", "status", "reason", "flagged",
            "max_grade"]
    if ref is None:
        return pd.DataFrame(columns=cols)
    stmt = (
        select(Study.id, Screening.series_id, Screening.id, Screening.status, Screening.reason,
               Screening.flagged, Screening.max_grade)
        .join(Screening, counted_join(ref))
        .order_by(Study.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    df = pd.DataFrame(rows, columns=["study_id", "series_id", "screening_id", "status", "reason",
                                     "flagged", "max_grade"])
    df.insert(3, "model", ref.label)
    return df[cols]


__all__ = [
    "ModelRef",
    "choose_model",
    "counted_join",
    "counted_on",
    "counted_results",
    "default_model",
    "models_table",
    "resolve_model",
]
