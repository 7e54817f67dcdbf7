"""Typed settings from ``FRACTURE_QI_*`` environment variables.

Environment variables override the manifest where both say something, so an operator can
point the same manifest at another database or key without editing it:

=============================  =========================================================
``FRACTURE_QI_DATABASE``       database URL used instead of the manifest's ``database``
``FRACTURE_QI_KEY``            the pseudonymisation secret itself (read by the default
                               ``pseudonymisation_key: env:FRACTURE_QI_KEY``)
``FRACTURE_QI_KEY_FILE``       a key file used instead of the manifest's
                               ``pseudonymisation_key`` (``file:`` spec)
``FRACTURE_QI_MANIFEST``       manifest used by commands run without ``--manifest``
``FRACTURE_QI_WORKERS``        worker processes for header scans (default: CPU count, max 8)
=============================  =========================================================

Settings are read when :func:`settings` is called (not at import), so tests and notebooks
can change the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fracture_qi.errors import ConfigError

PREFIX = "FRACTURE_QI_"
#: the environment variable the default manifest spec ``env:FRACTURE_QI_KEY`` reads
KEY_ENV = "FRACTURE_QI_KEY"


@dataclass(frozen=True)
class Settings:
    """Environment settings (``None`` where unset).

    Attributes
    ----------
    database
        URL overriding the manifest's ``database``.
    key_file
        Key file overriding the manifest's ``pseudonymisation_key``.
    manifest
        Default manifest path for the command line.
    workers
        Worker processes for header scans.
    """

    database: str | None = None
    key_file: Path | None = None
    manifest: Path | None = None
    workers: int | None = None

    @property
    def key_spec(self) -> str | None:
        """``file:PATH`` when FRACTURE_QI_KEY_FILE is set, else None."""
        return f"file:{self.key_file}" if self.key_file else None


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from *environ* (default ``os.environ``).

    Raises
    ------
    ConfigError
        When a variable is set to a value of the wrong type (named, with the fix).

    Examples
    --------
    >>> settings({"FRACTURE_QI_WORKERS": "3", "FRACTURE_QI_DATABASE": "sqlite:///x.db"})
    Settings(database='sqlite:///x.db', key_file=None, manifest=None, workers=3)
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(PREFIX + name, "").strip()
        return value or None

    workers = get("WORKERS")
    n_workers: int | None = None
    if workers is not None:
        try:
            n_workers = int(workers)
            if n_workers < 1:
                raise ValueError
        except ValueError as e:
            raise ConfigError(
                f"{PREFIX}WORKERS = {workers!r} is not a positive whole number. "
                f"Fix: export {PREFIX}WORKERS=2 (or unset it for the default)"
            ) from e
    key_file = get("KEY_FILE")
    manifest = get("MANIFEST")
    return Settings(
        database=get("DATABASE"),
        key_file=Path(key_file).expanduser() if key_file else None,
        manifest=Path(manifest).expanduser() if manifest else None,
        workers=n_workers,
    )


def default_workers(environ: Mapping[str, str] | None = None) -> int:
    """Worker processes for header scans: FRACTURE_QI_WORKERS, else CPUs (at most 8)."""
    s = settings(environ)
    if s.workers:
        return s.workers
    return max(1, min(8, os.cpu_count() or 1))
