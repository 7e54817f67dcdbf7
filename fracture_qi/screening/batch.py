"""Handing decoded volumes to the model: a batch at a time, one bad volume never costs the rest.

Runs in the process that holds the model (the engine's main process, or a Dask worker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import ScreeningError
from fracture_qi.screening.decode import ReadyVolume
from fracture_qi.screening.jobs import SeriesJob, failure
from fracture_qi.screening.types import SeriesResult

log = logging.getLogger(__name__)


def checked(result: Any, job: SeriesJob) -> SeriesResult:
    """*result* as a well-formed :class:`SeriesResult` (an error result when it is not one).

    A status other than ``ok`` becomes ``error`` with a reason (``SCREEN_FAILED`` if none).
    """
    if not isinstance(result, SeriesResult):
        return failure(ReasonCode.SCREEN_FAILED,
                       f"the model returned {type(result).__name__}, not a SeriesResult")
    if result.status != "ok":
        result.status = "error"
        result.reason = str(result.reason or ReasonCode.SCREEN_FAILED)
    elif result.reason is not None:
        result.reason = str(result.reason)
    return result


def screen_one(model: Any, ready: ReadyVolume) -> SeriesResult:
    """``model.screen`` on one volume; an exception becomes ``SCREEN_FAILED`` (logged)."""
    try:
        return checked(model.screen(ready.volume), ready.job)
    except Exception as e:  # one bad series never stops the batch
        log.exception("model %s failed on series %s", getattr(model, "model_id", "?"),
                      ready.job.key)
        return failure(ReasonCode.SCREEN_FAILED, f"{type(e).__name__}: {e}")


def screen_batch(model: Any, batch: Sequence[ReadyVolume]) -> list[tuple[SeriesResult, float]]:
    """Screen a batch (``screen_many`` where the model has it); ``(result, seconds)`` each.

    If the batched call fails, the volumes are screened one by one so that one volume's
    exception never costs the others their result.
    """
    t0 = time.perf_counter()
    many = getattr(model, "screen_many", None)
    if len(batch) > 1 and callable(many):
        try:
            results = list(many([r.volume for r in batch]))
            if len(results) != len(batch):
                raise ScreeningError(f"screen_many returned {len(results)} results for "
                                     f"{len(batch)} volumes")
            each = (time.perf_counter() - t0) / len(batch)
            return [(checked(res, r.job), each) for res, r in zip(results, batch)]
        except Exception:  # fall back to one at a time to isolate the bad one
            log.warning("batched screening failed; retrying the %d series one by one",
                        len(batch), exc_info=True)
    out = []
    for r in batch:
        t1 = time.perf_counter()
        res = screen_one(model, r)
        out.append((res, time.perf_counter() - t1))
    return out


__all__ = ["checked", "screen_batch", "screen_one"]
