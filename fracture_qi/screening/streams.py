"""Several model streams in the process that holds the model (issue 20, part 2).

On a GPU machine with fifteen decode workers the model, one series at a time, was the
bottleneck (0.20-0.29 s a series against 0.047 s of decoding, ``benchmarks/README.md``). The
reference screener cannot batch volumes of different shapes into one tensor, so instead
:func:`screen_concurrently` keeps ``streams`` batches in the model at once: each on its own
thread and, on CUDA, its own ``torch.cuda.Stream``, so that one series' kernels run while
another's host-side work (numpy, the key image) is done. torch releases the GIL in its
kernels and copies; the share that a stream gains is measured, not assumed
(``benchmarks/screen_speed.py --streams``).

Every batch yields its outcomes exactly once, in completion order; a model exception stays
with its own series (:func:`~fracture_qi.screening.batch.screen_batch`); the volumes of a
batch are released as soon as its results are in, and, if the consumer stops early, after
the batches still in the model have finished.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from fracture_qi.screening.batch import screen_batch
from fracture_qi.screening.decode import ReadyVolume
from fracture_qi.screening.jobs import SeriesOutcome

log = logging.getLogger(__name__)

#: the most model streams a run may ask for: each holds a batch of decoded volumes (about
#: 200 MB for a 400-slice 512 x 512 series) besides the ``workers + prefetch`` the pool bounds
MAX_STREAMS = 16

#: what a finished batch becomes: ``to_outcomes(batch, screened)``
ToOutcomes = Callable[[list[ReadyVolume], list[tuple[Any, float]]], list[SeriesOutcome]]


def stream_context(device: str | None) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A per-thread context for the model's work: its own CUDA stream on a CUDA device (made
    once per thread), nothing on the CPU or where torch is not loaded."""
    torch = sys.modules.get("torch")
    if torch is None or not str(device or "cpu").startswith("cuda"):
        return contextlib.nullcontext
    local = threading.local()

    def ctx() -> contextlib.AbstractContextManager[Any]:
        s = getattr(local, "stream", None)
        if s is None:
            s = local.stream = torch.cuda.Stream(device=device)
        return torch.cuda.stream(s)

    return ctx


def _screen_on_stream(model: Any, batch: list[ReadyVolume],
                      ctx: Callable[[], contextlib.AbstractContextManager[Any]]
                      ) -> list[tuple[Any, float]]:
    with ctx():
        out = screen_batch(model, batch)
        if ctx is not contextlib.nullcontext:
            sys.modules["torch"].cuda.current_stream().synchronize()  # this stream's work is done
    return out


def screen_concurrently(
    source: Iterable[SeriesOutcome | list[ReadyVolume]],
    model: Any,
    streams: int,
    to_outcomes: ToOutcomes,
    device: str | None = None,
) -> Iterator[SeriesOutcome]:
    """Screen the batches of *source* on up to *streams* model streams at once.

    Parameters
    ----------
    source
        Decode failures (passed through) and batches of ready volumes, as
        :func:`~fracture_qi.screening.pool.pooled_volumes` yields them.
    model
        Screens a batch through :func:`~fracture_qi.screening.batch.screen_batch`; it must
        not keep per-call state that another thread would overwrite (the reference
        screener keeps none but ``last_reformat``, a notebook convenience).
    streams
        Batches in the model at once (1 to :data:`MAX_STREAMS`).
    to_outcomes
        Turns a screened batch into its outcomes (called on this thread).
    device
        The model's device: ``cuda...`` gives each stream its own CUDA stream.

    Yields
    ------
    SeriesOutcome
        One per job, in completion order.
    """
    streams = max(1, min(MAX_STREAMS, int(streams)))
    ctx = stream_context(device)
    pending: dict[Future[list[tuple[Any, float]]], list[ReadyVolume]] = {}

    def finish(done: Iterable[Future[list[tuple[Any, float]]]]) -> Iterator[SeriesOutcome]:
        for f in done:
            batch = pending.pop(f)
            try:
                screened = f.result()
            finally:
                for r in batch:
                    r.release()
            yield from to_outcomes(batch, screened)

    pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="fqi-model")
    held: list[ReadyVolume] = []  # a batch taken from the source, not yet in a stream
    try:
        for item in source:
            if isinstance(item, SeriesOutcome):  # a decode failure
                yield item
                continue
            held = item
            while len(pending) >= streams:  # every stream busy: wait for one
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                yield from finish(done)
            pending[pool.submit(_screen_on_stream, model, item, ctx)] = item
            held = []
            yield from finish([f for f in list(pending) if f.done()])
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            yield from finish(done)
    finally:
        # stopped early (the consumer closed the generator, or an error): let the batches in
        # the model finish, then free their volumes
        for f, batch in list(pending.items()):
            try:
                f.result()
            except Exception:  # already logged by screen_batch where it was the model's
                log.debug("a model stream failed while the run stopped", exc_info=True)
            for r in batch:
                r.release()
        pending.clear()
        for r in held:
            r.release()
        pool.shutdown(wait=True)


__all__ = ["MAX_STREAMS", "screen_concurrently", "stream_context"]
