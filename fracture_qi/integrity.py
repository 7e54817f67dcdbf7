"""What the code and the files are: SHA-256 of files and text, and the code version.

One home for the file hashing and the code version that the manifest (input checksums),
the screening engine (``ScreeningRun.code_version``), model files and the audit provenance
all record, below ``screening`` and ``reporting`` so that every layer can use it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from fracture_qi import __version__

#: bytes read per block when hashing a file
HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path, chunk: int = HASH_CHUNK) -> str:
    """Hex SHA-256 of a file, read in blocks (any size, little memory).

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> sha256_file(f.name)[:16]
    'ba7816bf8f01cfea'
    >>> os.remove(f.name)
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str | bytes) -> str:
    """Hex SHA-256 of a string (UTF-8) or bytes.

    Examples
    --------
    >>> sha256_text("abc")[:16]
    'ba7816bf8f01cfea'
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: one spelling per value, for hashing.

    Examples
    --------
    >>> canonical_json({"b": 1, "a": [1, 2]})
    '{"a":[1,2],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def code_version(start: str | Path | None = None) -> dict[str, Any]:
    """The git commit of the code and whether the working tree was clean.

    Parameters
    ----------
    start
        A folder inside the repository (default: this package's folder).

    Returns
    -------
    dict
        ``package_version``; ``commit`` (hex, or ``None`` outside git or before the first
        commit); ``clean`` (``True``/``False``, ``None`` when unknown); ``describe`` (a short
        human label: ``<commit 12>[-dirty]`` or ``fracture-qi X (not a git checkout)``).
    """
    where = Path(start) if start else Path(__file__).resolve().parent
    info: dict[str, Any] = {"package_version": __version__, "commit": None, "clean": None}

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=where, capture_output=True, text=True, timeout=20,
                check=False,  # a non-zero status (no commits yet) is an answer, not an error
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None:
        info["describe"] = f"fracture-qi {__version__} (not a git checkout)"
        return info
    info["commit"] = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    info["clean"] = None if status is None else status == ""
    if info["commit"] is None:
        info["describe"] = f"fracture-qi {__version__} (git repository without commits)"
        info["clean"] = False
    else:
        dirty = "" if info["clean"] else "-dirty"
        info["describe"] = f"{info['commit'][:12]}{dirty}"
    return info


def code_label(start: str | Path | None = None) -> str:
    """A short code version for a row or a page footer: ``<commit 12>[-dirty]`` or the
    package version (at most 64 characters, as ``ScreeningRun.code_version`` holds).

    Examples
    --------
    >>> len(code_label()) <= 64
    True
    """
    info = code_version(start)
    return str(info.get("describe") or info.get("package_version"))[:64]
