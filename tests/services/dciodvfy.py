"""``dciodvfy`` (Debian package ``dicom3tools``): David Clunie's DICOM IOD validator.

:func:`dciodvfy_errors` runs it on a file and returns its ``Error`` lines (warnings, such as
the suite's private ``99FQI`` coding scheme being unknown to it, are not errors). Where the
binary is missing the test skips with the install command; in CI (``CI=true``) it fails
instead, since scripts/install-system-deps.sh installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for *path* (empty: the object is valid)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        message = ("dciodvfy not found. Fix: `make system-deps` "
                   "(apt-get install dicom3tools)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
