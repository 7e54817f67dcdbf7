"""One root exception for the suite, with structured subclasses.

Every error raised on purpose by fracture-qi derives from :class:`FractureQIError`, so a
command-line front end can catch one type, print a one-line reason and exit non-zero.
Messages name the thing (file, field, row, value) and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FractureQIError(Exception):
    """Raised when the suite cannot do what was asked; the root of every error here."""

    #: exit status used by the command line for this kind of error
    exit_code: int = 2


class ManifestError(FractureQIError):
    """Raised when data_manifest.yaml is missing, malformed, or points at bad inputs.

    Parameters
    ----------
    field
        Dotted path of the offending key, e.g. ``dicom_sources[0].path``.
    value
        The value found there (never a secret).
    fix
        What the user should do about it.
    manifest
        Path of the manifest, where known.
    """

    def __init__(
        self,
        field: str,
        value: Any,
        problem: str,
        fix: str,
        manifest: Path | str | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        self.manifest = manifest
        where = f"{manifest}: " if manifest else ""
        super().__init__(f"{where}{field} = {value!r}: {problem}. Fix: {fix}")


class ConfigError(FractureQIError):
    """Raised when a setting (environment variable or option) is invalid or missing."""


class PseudonymisationKeyError(ConfigError):
    """Raised when the per-site pseudonymisation secret cannot be read or is too weak."""


class DicomError(FractureQIError):
    """Raised when a DICOM file or series cannot be used.

    Parameters
    ----------
    reason
        A stable reason code (see :class:`fracture_qi.dicom.reasons.ReasonCode`).
    path
        The file or folder concerned.
    detail
        A human sentence: what was wrong and, where there is one, the fix.
    """

    def __init__(self, reason: str, path: Path | str | None, detail: str) -> None:
        self.reason = str(reason)
        self.path = path
        self.detail = detail
        where = f"{path}: " if path else ""
        super().__init__(f"{where}[{self.reason}] {detail}")


class VolumeError(DicomError):
    """Raised when slices cannot be assembled into a trustworthy HU volume."""


class CodecUnavailableError(DicomError):
    """Raised when pixel data use a transfer syntax for which no decoder is installed."""


class PacsError(FractureQIError):
    """Raised when a PACS (DICOMweb or DIMSE) cannot be reached or refuses a request."""


class FetchError(PacsError):
    """Raised when a series cannot be retrieved after the configured retries.

    Attributes
    ----------
    reason
        Always ``FETCH_FAILED`` (a :class:`~fracture_qi.dicom.reasons.ReasonCode` value), so
        a batch can record it like any other per-series failure.
    """

    reason = "FETCH_FAILED"


class StoreError(FractureQIError):
    """Raised when the database cannot be opened, migrated or written."""


class ImmutableEventError(StoreError):
    """Raised when code tries to update or delete an append-only adjudication event."""


class ScreeningError(FractureQIError):
    """Raised when a screening run cannot proceed (model missing, device unusable...)."""


class ModelError(ScreeningError):
    """Raised when a plug-in model or its model card is invalid or fails its checksum."""


class AdjudicationError(FractureQIError):
    """Raised when a decision cannot be recorded."""


class ConflictError(AdjudicationError):
    """Raised when another reviewer saved a decision on the same case first.

    Attributes
    ----------
    existing_event_id
        The event that got there first.
    """

    def __init__(self, message: str, existing_event_id: int | None = None) -> None:
        self.existing_event_id = existing_event_id
        super().__init__(message)


class ValidationError(FractureQIError):
    """Raised when input (a decision form, an FLS record) fails validation.

    Attributes
    ----------
    problems
        One human-readable line per problem, each naming the field (and row) and the fix.
    """

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        shown = "; ".join(self.problems[:10])
        more = f" (+{len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"{head}{len(self.problems)} problem(s): {shown}{more}")


class ReportError(FractureQIError):
    """Raised when an audit run, notebook execution or verification fails."""


class DisclosureError(ReportError):
    """Raised when a publication-mode output would contain a patient identifier."""


class OptionalDependencyError(FractureQIError):
    """Raised when a feature needs a package that is not installed."""


class AccountError(FractureQIError):
    """Raised when an account cannot be created or changed (unknown user, weak password...)."""


class SignInError(FractureQIError):
    """Raised when a sign-in is refused.

    The message is the same whatever the reason (unknown user, wrong password, disabled
    account, too many tries), so that it tells a guesser nothing; ``reason`` says which, for
    the access log.

    Attributes
    ----------
    reason
        ``unknown_user``, ``wrong_password``, ``disabled``, ``no_password`` or ``locked``.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        super().__init__(message or "Sign-in failed: check your user name and password. "
                         "After five failed tries, wait five minutes.")
