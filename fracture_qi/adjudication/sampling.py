"""Reproducible random samples for the worklist: the audit of AI-negatives and double reads.

A study is in a sample when a keyed hash of (audit name, purpose, study UID), read as a number
in [0, 1), falls below the sampling rate. This is a Bernoulli sample with a known inclusion
probability (the rate), which is what the sensitivity estimate needs (inverse-probability
weights), and it is:

* reproducible: the same audit gives the same sample on any machine, any day;
* stable as data grow: adding studies later never changes whether an earlier study was
  sampled, because each study's draw depends only on its own UID;
* independent between purposes: the audit sample and the double-read sample use different
  purposes, so being in one says nothing about the other;
* nested in the rate: raising the rate keeps every study sampled at the lower rate.

The UID never leaves this function; only the yes/no and the rate are stored.
"""

from __future__ import annotations

import hashlib
import math

#: purpose label of the audit sample of AI-negative studies
AUDIT_NEGATIVE = "audit_negative"
#: purpose label of the double-read sample
DOUBLE_READ = "double_read"


def check_rate(rate: float, name: str = "rate") -> float:
    """Return *rate* as a float in [0, 1] or raise ``ValueError`` naming it.

    Examples
    --------
    >>> check_rate(0.1)
    0.1
    >>> check_rate(1.5, "audit_negative_rate")
    Traceback (most recent call last):
    ...
    ValueError: audit_negative_rate = 1.5 is not a probability; use a number from 0 to 1 (e.g. 0.1 for 10%)
    """
    r = float(rate)
    if not (0.0 <= r <= 1.0) or math.isnan(r):
        raise ValueError(
            f"{name} = {rate} is not a probability; use a number from 0 to 1 (e.g. 0.1 for 10%)"
        )
    return r


def uniform_draw(audit: str, purpose: str, study_uid: str) -> float:
    """A deterministic pseudo-random number in [0, 1) for one study, audit and purpose.

    Parameters
    ----------
    audit
        Name of the audit (worklist); different audits draw independently.
    purpose
        :data:`AUDIT_NEGATIVE` or :data:`DOUBLE_READ`.
    study_uid
        The study's StudyInstanceUID (any stable study identifier).

    Returns
    -------
    float
        The first 64 bits of SHA-256 of ``"audit|purpose|uid"`` divided by 2**64.

    Examples
    --------
    >>> u = uniform_draw("default", AUDIT_NEGATIVE, "1.2.3")
    >>> 0.0 <= u < 1.0 and u == uniform_draw("default", AUDIT_NEGATIVE, "1.2.3")
    True
    >>> u != uniform_draw("default", DOUBLE_READ, "1.2.3")
    True
    """
    digest = hashlib.sha256(f"{audit}|{purpose}|{study_uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_sampled(audit: str, purpose: str, study_uid: str, rate: float) -> bool:
    """Whether a study falls in the *purpose* sample of *audit* at sampling *rate*.

    Examples
    --------
    >>> is_sampled("a", AUDIT_NEGATIVE, "1.2.3", 1.0), is_sampled("a", AUDIT_NEGATIVE, "1.2.3", 0.0)
    (True, False)
    >>> uids = [f"1.2.{i}" for i in range(20000)]
    >>> share = sum(is_sampled("a", AUDIT_NEGATIVE, u, 0.1) for u in uids) / len(uids)
    >>> 0.09 < share < 0.11
    True
    """
    r = check_rate(rate)
    if r >= 1.0:
        return True
    if r <= 0.0:
        return False
    return uniform_draw(audit, purpose, study_uid) < r
