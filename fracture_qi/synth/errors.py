"""Errors of the synthetic cohort."""

from __future__ import annotations

from fracture_qi.errors import FractureQIError


class SynthError(FractureQIError):
    """Raised when a synthetic cohort cannot be written (output folder not empty...)."""


class AnatomyUnavailableError(SynthError):
    """Raised when a real base scan (the chest CT ``lidc0001``) can be neither found nor fetched.

    The message is one line: what is missing, why, and the fix. :func:`generate_cohort
    <fracture_qi.synth.cohort.generate_cohort>` catches it, logs that line, and goes on with
    the anatomy it has (the abdomen shipped in the package).

    Parameters
    ----------
    source
        The base scan's name (``lidc0001``).
    reason
        What went wrong (a network error, a checksum mismatch, a missing file).
    fix
        What the user can do about it.
    """

    def __init__(self, source: str, reason: str, fix: str) -> None:
        self.source = source
        self.reason = reason
        self.fix = fix
        super().__init__(f"{source}: {reason}. Fix: {fix}")
