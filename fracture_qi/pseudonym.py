"""Pseudonymous patient keys: HMAC-SHA256 of a normalised identifier with a per-site secret.

The secret never enters the database, the repository or an output. It is named in the
manifest as ``env:VARNAME`` or ``file:/path/outside/the/repo`` and read at run time.
The same identifier and secret always give the same key, so FLS records and DICOM
studies link without either side holding the other's identifiers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

from fracture_qi.errors import PseudonymisationKeyError

#: the secret must carry at least this many bytes of material
MIN_KEY_BYTES = 16

#: the well-known, non-secret key used only by the synthetic demo cohort
DEMO_KEY = "fracture-qi-demo-key-not-secret-0001"


def read_key(spec: str, *, base: Path | None = None) -> bytes:
    """Read the pseudonymisation secret from ``env:NAME`` or ``file:PATH``.

    Parameters
    ----------
    spec
        ``env:FRACTURE_QI_KEY`` reads that environment variable; ``file:/etc/fqi/key``
        reads the file (surrounding whitespace stripped). Relative file paths are taken
        relative to *base*.
    base
        Folder for relative ``file:`` paths (the manifest's folder).

    Raises
    ------
    PseudonymisationKeyError
        When the spec is malformed, the variable is unset, the file is missing, or the
        secret is shorter than :data:`MIN_KEY_BYTES`.
    """
    kind, _, ref = spec.partition(":")
    if kind == "env" and ref:
        value = os.environ.get(ref)
        if not value:
            raise PseudonymisationKeyError(
                f"pseudonymisation key: environment variable {ref} is not set. "
                f"Fix: export {ref}=<the site's secret> (at least {MIN_KEY_BYTES} characters), "
                "or point pseudonymisation_key at file:/path/to/keyfile"
            )
        secret = value.encode()
    elif kind == "file" and ref:
        path = Path(ref)
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            secret = path.read_bytes().strip()
        except OSError as e:
            raise PseudonymisationKeyError(
                f"pseudonymisation key: cannot read key file {path}: {e.strerror}. "
                "Fix: create it (e.g. `python -c 'import secrets;print(secrets.token_hex(32))' > FILE`, "
                "chmod 600) outside the repository, or use env:VARNAME"
            ) from e
    else:
        raise PseudonymisationKeyError(
            f"pseudonymisation key spec {spec!r} is not understood. "
            "Fix: use env:VARNAME or file:/path/to/keyfile"
        )
    if len(secret) < MIN_KEY_BYTES:
        raise PseudonymisationKeyError(
            f"pseudonymisation key from {kind}:{ref} is {len(secret)} bytes; at least "
            f"{MIN_KEY_BYTES} are needed. Fix: generate a longer random secret"
        )
    return secret


_NON_ALNUM = re.compile(r"[^0-9A-Za-z]")


def normalise_identifier(identifier: str) -> str:
    """Strip spaces, dashes and case so '943 476 5919' and '9434765919' give one key."""
    return _NON_ALNUM.sub("", identifier).upper()


def patient_key(secret: bytes, identifier: str, namespace: str = "NHS") -> str:
    """Return the 64-hex-digit pseudonymous key for a patient identifier.

    Parameters
    ----------
    secret
        The site's secret from :func:`read_key`.
    identifier
        An NHS number (preferred) or a local MRN.
    namespace
        ``"NHS"`` for NHS numbers, ``"MRN:<issuer>"`` for local numbers, so that an MRN
        can never collide with an NHS number of the same digits.

    Examples
    --------
    >>> k = patient_key(b"0123456789abcdef", "943 476 5919")
    >>> k == patient_key(b"0123456789abcdef", "9434765919") and len(k) == 64
    True
    """
    norm = normalise_identifier(identifier)
    if not norm:
        raise ValueError("cannot pseudonymise an empty identifier")
    msg = f"{namespace}|{norm}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def nhs_number_is_valid(number: str) -> bool:
    """Check an NHS number's modulus-11 check digit.

    Examples
    --------
    >>> nhs_number_is_valid("943 476 5919")
    True
    >>> nhs_number_is_valid("9434765918")
    False
    """
    digits = normalise_identifier(number)
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    if check == 10:
        return False
    return check == int(digits[9])
