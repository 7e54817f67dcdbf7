"""The QI dashboard's aggregate: the whole database as one cached :class:`Aggregate`.

At hospital scale (500,000 screened studies) recomputing measures from the rows on every
filter change is too slow for a responsive page, so the database is read once into the
aggregate of :mod:`fracture_qi.qi.aggregate` (counts per month x site x scanner x referral x
model, FLS KPI counts per month x site, daily time histograms) and a filter is a mask and a
sum. The audit builds the same aggregate from its own selection, and both format it with
:mod:`fracture_qi.qi.published`: the dashboard and the pack agree for the same filter.

The rows come from :func:`fracture_qi.outcomes.readmodel.load_analysis`, once per screening
model (a study has one counted result per model), so the aggregate uses the package's
definitions exactly. It is cached (aggregates only: no row-level data, no identifier) in
``<reports>/.cache/qi-cube-<fingerprint>.npz``; the fingerprint changes with any new data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select

from fracture_qi.qi.aggregate import (
    EPISODE_DIMS,
    STUDY_DIMS,
    STUDY_MEASURES,
    UNKNOWN,
    Aggregate,
)
from fracture_qi.store import schema as S

log = logging.getLogger(__name__)

#: the dashboard's aggregate is a :class:`fracture_qi.qi.aggregate.Aggregate`
Cube = Aggregate
DIMENSIONS = STUDY_DIMS
MEASURES = STUDY_MEASURES
CUBE_VERSION = 3


def fingerprint(engine: Engine) -> str:
    """A cheap fingerprint of the data: row counts, highest ids and latest write times.

    Appends change every table's count and highest id (screenings, adjudication events and
    audit rows are append-only). Rows that can be rewritten in place carry their write time:
    studies (re-indexing), FLS episodes (re-import) and events (corrections are new rows,
    but the time is cheap on that small table). It is the cache key of the cube, not an
    audit hash (see :func:`fracture_qi.reporting.provenance.db_state_hash`);
    ``fracture-qi dashboard --refresh`` rebuilds the cube regardless.
    """
    parts: list[Any] = [CUBE_VERSION]
    stamps: dict[Any, Any] = {
        S.Study: S.Study.indexed_at, S.Series: None, S.Patient: None, S.Screening: None,
        S.WorklistItem: None, S.AdjudicationEvent: S.AdjudicationEvent.recorded_at,
        S.FlsEpisode: S.FlsEpisode.imported_at,
    }
    with engine.connect() as c:
        for model, stamp in stamps.items():
            cols = [func.count(), func.max(model.id)] + ([func.max(stamp)] if stamp is not None else [])
            row = c.execute(select(*cols).select_from(model)).one()
            parts.append([str(v) for v in row])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def build_from_engine(engine: Engine, *, meta: dict[str, Any] | None = None) -> Aggregate:
    """Read every model's analysis frames and reduce them to one :class:`Aggregate`."""
    from fracture_qi.outcomes.readmodel import load_analysis

    first = load_analysis(engine)
    frames = [first.studies]
    for m in first.models["model"]:
        if m != first.model:
            frames.append(load_analysis(engine, model=m, cutoff=first.cutoff).studies)
    return Aggregate.build(frames, first.episodes, first.cutoff,
                           default_model=first.model or UNKNOWN, meta=meta)


def _save(agg: Aggregate, path: Path) -> None:
    tmp = path.with_suffix(".tmp.npz")
    meta = {"cutoff": agg.cutoff, "default_model": agg.default_model,
            "first_month": agg.first_month, "last_month": agg.last_month, "meta": agg.meta,
            "episode_measures": agg.episode_measures}
    np.savez_compressed(
        tmp, meta=json.dumps(meta), values=agg.cells[list(STUDY_MEASURES)].to_numpy(float),
        ep_values=agg.episodes[agg.episode_measures].to_numpy(float),
        **{f"dim_{d}": agg.cells[d].to_numpy(str) for d in STUDY_DIMS},
        **{f"epdim_{d}": agg.episodes[d].to_numpy(str) for d in EPISODE_DIMS},
        **{f"hist_{k}": v for k, v in agg.hist.items()},
    )
    tmp.replace(path)


def _load(path: Path, fp: str) -> Aggregate:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        values, ep_values = z["values"], z["ep_values"]  # each access decompresses: read once
        cells = pd.DataFrame({**{d: z[f"dim_{d}"].astype(str) for d in STUDY_DIMS},
                              **{m: values[:, j] for j, m in enumerate(STUDY_MEASURES)}})
        episodes = pd.DataFrame({**{d: z[f"epdim_{d}"].astype(str) for d in EPISODE_DIMS},
                                 **{m: ep_values[:, j]
                                    for j, m in enumerate(meta["episode_measures"])}})
        hist = {k: z[f"hist_{k}"] for k in ("cell", "interval", "day", "event", "count")}
    return Aggregate(cells, episodes, hist, meta["cutoff"], default_model=meta["default_model"],
                     first_month=meta["first_month"], last_month=meta["last_month"],
                     meta=meta["meta"], fingerprint=fp)


def cube_from_engine(engine: Engine, *, cache_dir: str | Path | None = None,
                     refresh: bool = False, meta: dict[str, Any] | None = None) -> Aggregate:
    """Build (or load from *cache_dir*) the aggregate of a database.

    Parameters
    ----------
    engine
        The database.
    cache_dir
        Folder for ``qi-cube-<fingerprint>.npz``; ``None`` disables caching.
    refresh
        Rebuild from the database even when a cached cube matches.
    meta
        Context carried to every output (``name``, ``synthetic``, ``simulated``).

    Returns
    -------
    Aggregate
    """
    t0 = time.perf_counter()
    fp = fingerprint(engine)
    path = Path(cache_dir) / f"qi-cube-{fp}.npz" if cache_dir else None
    if path is None:
        return _built(engine, fp, meta, t0)
    with _build_lock(path):
        # several dashboards opened at once after new data (a team server's morning) build
        # the cube once: the first holds the lock while it builds, the others then load it
        if path.is_file() and not refresh:
            try:
                agg = _load(path, fp)
                agg.meta.update(meta or {})
                agg.seconds = time.perf_counter() - t0
                log.info("QI cube loaded from cache %s in %.2f s", path.name, agg.seconds)
                return agg
            except (OSError, KeyError, ValueError) as e:
                log.warning("ignoring unreadable cube cache %s: %s", path, e)
        agg = _built(engine, fp, meta, t0)
        try:
            _save(agg, path)
            for old in path.parent.glob("qi-cube-*.npz"):
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError as e:  # a read-only folder only costs speed
            log.warning("cannot cache the QI cube in %s: %s", cache_dir, e)
    return agg


def _built(engine: Engine, fp: str, meta: dict[str, Any] | None, t0: float) -> Aggregate:
    agg = build_from_engine(engine, meta=meta)
    agg.fingerprint = fp
    agg.seconds = time.perf_counter() - t0
    log.info("QI cube built: %d cells in %.2f s", len(agg.cells), agg.seconds)
    return agg


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock (``flock``) on ``<cache>/qi-cube.lock`` for as long as the block
    runs, or no lock where the folder cannot hold one (read-only) or the system has no
    ``fcntl``: then each caller builds for itself, as before."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.parent / "qi-cube.lock", "a+b")  # noqa: SIM115 - closed below
    except OSError:
        yield
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        f.close()  # closing releases the lock

__all__ = ["CUBE_VERSION", "Cube", "DIMENSIONS", "MEASURES", "build_from_engine",
           "cube_from_engine", "fingerprint"]
