"""What the screening engine passes around: a job, its outcome, and the run's summary.

No pixel data lives here and nothing here imports torch: decode workers, the engine, the
Dask tasks and the sinks all share these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.screening.types import SeriesResult


@dataclass
class SeriesJob:
    """One series to screen.

    Attributes
    ----------
    key
        Identifies the job in this run (the database ``series.id`` in database mode).
    study_instance_uid, series_instance_uid
        The series' UIDs (only ever written to identifiable outputs).
    paths
        Its files (any order; the loader sorts them).
    path
        The folder it came from, for ``studies.csv``.
    series_id
        ``series.id`` in the database, or ``None`` without one.
    n_instances
        The series' instance count in the index when the job was made (recorded with its
        screening: a series that holds more later is screened again), or ``None``.
    """

    key: int | str
    study_instance_uid: str
    series_instance_uid: str
    paths: list[str] = field(default_factory=list)
    path: str = ""
    series_id: int | None = None
    n_instances: int | None = None


@dataclass
class SeriesOutcome:
    """What happened to one job: the model's result plus timings (no pixel data)."""

    job: SeriesJob
    result: SeriesResult
    decode_seconds: float | None = None
    screen_seconds: float | None = None
    worker_peak_rss_mb: float | None = None
    n_slices: int | None = None
    #: what decoded its pixels (``numpy``, ``gdcm``, ``nvimgcodec``...), where it was decoded
    decoder: str | None = None

    @property
    def ok(self) -> bool:
        return self.result.status == "ok"


def failure(reason: str | ReasonCode, detail: str) -> SeriesResult:
    """An error result with a reason code and a one-line detail.

    >>> failure(ReasonCode.TIMEOUT, "too slow").reason
    'TIMEOUT'
    """
    return SeriesResult(status="error", reason=str(reason), detail=detail)


def failed_outcome(
    job: SeriesJob,
    reason: str | ReasonCode,
    detail: str,
    *,
    seconds: float = 0.0,
    peak_rss_mb: float | None = None,
) -> SeriesOutcome:
    """The outcome of a job that produced no volume (decode error, dead worker, timeout)."""
    res = failure(reason, detail)
    res.seconds = round(seconds, 4)
    return SeriesOutcome(job, res, decode_seconds=seconds, worker_peak_rss_mb=peak_rss_mb)


@dataclass
class RunSummary:
    """Counts and timings of one screening run."""

    n_planned: int = 0
    n_ok: int = 0
    n_error: int = 0
    n_skipped: int = 0
    n_flagged: int = 0
    seconds: float = 0.0
    run_id: int | None = None
    model_id: str = ""
    model_version: str = ""
    device: str | None = None
    out_dir: str | None = None
    keyimage_dir: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    max_worker_rss_mb: float | None = None
    #: earlier runs found dead (left ``running``) and marked ``interrupted`` when this one began
    interrupted_runs: list[int] = field(default_factory=list)
    #: series per decoder (``nvimgcodec`` is the GPU), as the outcomes report them
    decoders: dict[str, int] = field(default_factory=dict)
    #: the run's decoder choice as asked (``auto``/``cpu``/``gpu``), as resolved, and why
    decoder_requested: str | None = None
    decoder_choice: str | None = None
    decoder_reason: str | None = None

    @property
    def studies_per_hour(self) -> float | None:
        done = self.n_ok + self.n_error
        return round(done * 3600.0 / self.seconds, 1) if self.seconds > 0 and done else None

    def count(self, outcome: SeriesOutcome) -> None:
        """Add one outcome to the counts."""
        if outcome.ok:
            self.n_ok += 1
            self.n_flagged += int(bool(outcome.result.flagged))
        else:
            self.n_error += 1
            reason = str(outcome.result.reason or ReasonCode.SCREEN_FAILED)
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if outcome.worker_peak_rss_mb is not None:
            self.max_worker_rss_mb = max(self.max_worker_rss_mb or 0.0, outcome.worker_peak_rss_mb)
        if outcome.decoder:
            self.decoders[outcome.decoder] = self.decoders.get(outcome.decoder, 0) + 1

    def lines(self) -> list[str]:
        """Human summary for the command line."""
        out = [
            f"model {self.model_id} {self.model_version} on {self.device or '?'}: "
            f"{self.n_ok} screened ok ({self.n_flagged} flagged), {self.n_error} error(s), "
            f"{self.n_skipped} already screened, in {self.seconds:.1f} s"
            + (f" ({self.studies_per_hour:.0f} series/hour)" if self.studies_per_hour else "")
        ]
        for reason, n in sorted(self.reasons.items()):
            out.append(f"  {reason}: {n}")
        if self.decoders:
            used = ", ".join(f"{name} {n}" for name, n in sorted(self.decoders.items()))
            out.append(f"  decoded with: {used}")
        if self.decoder_requested == "gpu" and self.decoder_choice == "cpu":
            out.append(f"  decoder gpu was asked for; decoded on the CPU: {self.decoder_reason}")
        if self.interrupted_runs:
            ids = ", ".join(str(i) for i in self.interrupted_runs)
            out.append(f"  earlier run(s) {ids} had stopped without finishing (killed?): now "
                       "marked interrupted; their screened series were kept")
        return out


__all__ = ["RunSummary", "SeriesJob", "SeriesOutcome", "failed_outcome", "failure"]
