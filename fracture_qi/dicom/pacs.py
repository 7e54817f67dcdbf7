"""PACS sources: find CT studies, choose the series like the folder index, fetch only those.

Two kinds of manifest source (:mod:`fracture_qi.manifest`):

* ``dicomweb``: QIDO-RS search for CT studies in a date range, QIDO-RS series search,
  WADO-RS *metadata* of each CT series (headers only, no pixels) to decide eligibility and
  choose a series exactly as :mod:`fracture_qi.dicom.scan` does for folders, then WADO-RS
  retrieval of the chosen series' instances only (:mod:`fracture_qi.dicom.dicomweb`).
* ``dimse``: C-FIND at STUDY, SERIES and IMAGE level (the image-level keys carry the same
  header facts), then C-GET or C-MOVE of the chosen series (:mod:`fracture_qi.dicom.dimse`).
  A peer that does not return image-level geometry in C-FIND has its CT series retrieved
  to read the headers (to the cache if one is configured, else a temporary folder that is
  removed).

Indexed instances get ``pacs://SOURCE/studies/STUDY/series/SERIES/SOP`` paths, so the
database says where each came from; :func:`materialise` turns such paths back into local
files when a series is screened (into ``cache_dir`` if configured, else into a temporary
folder deleted as soon as the volume is decoded: nothing identifiable stays on disk).

Every network call has the source's ``timeout_s`` and is retried ``retries`` times with
exponential backoff (``backoff_s``, doubling) on transient failures (connection refused or
reset, timeouts, HTTP 5xx/429, DIMSE association failures); refusals (HTTP 4xx, a DIMSE
failure status) are not retried. Fetching is resumable: instances already on disk in the
destination are kept and only the missing ones are asked for.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import FetchError, PacsError

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEME = "pacs://"
#: suffix of a file being written; renamed when complete, so a killed fetch leaves no
#: half file that a rerun would take for a complete one
PART = ".part"


# --------------------------------------------------------------------------------------------
# pacs:// paths


@dataclass(frozen=True)
class PacsRef:
    """Where an indexed instance (or series) lives on a PACS."""

    source: str
    study_uid: str
    series_uid: str
    sop_uid: str | None = None


def series_uri(source: str, study_uid: str, series_uid: str) -> str:
    """``pacs://SOURCE/studies/STUDY/series/SERIES``: the ``path`` of a PACS series.

    Examples
    --------
    >>> series_uri("pacs", "1.2", "1.2.3")
    'pacs://pacs/studies/1.2/series/1.2.3'
    """
    return f"{SCHEME}{source}/studies/{study_uid}/series/{series_uid}"


def instance_uri(source: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """``pacs://SOURCE/studies/STUDY/series/SERIES/SOP``: the ``path`` of a PACS instance."""
    return f"{series_uri(source, study_uid, series_uid)}/{sop_uid}"


def parse_uri(path: str) -> PacsRef | None:
    """The :class:`PacsRef` of a ``pacs://`` path, or ``None`` for a local path.

    Examples
    --------
    >>> parse_uri("pacs://p/studies/1.2/series/1.2.3/1.2.3.4")
    PacsRef(source='p', study_uid='1.2', series_uid='1.2.3', sop_uid='1.2.3.4')
    >>> parse_uri("/data/ct/IM0001") is None
    True
    """
    if not str(path).startswith(SCHEME):
        return None
    parts = str(path)[len(SCHEME):].split("/")
    if len(parts) < 5 or parts[1] != "studies" or parts[3] != "series":
        raise PacsError(f"malformed PACS path {path!r}. Fix: re-index the source")
    return PacsRef(parts[0], parts[2], parts[4], parts[5] if len(parts) > 5 else None)


# --------------------------------------------------------------------------------------------
# retries


def _is_transient(e: BaseException) -> bool:
    """Worth retrying: network trouble and server overload, not refusals."""
    try:
        import requests

        if isinstance(e, requests.HTTPError) and e.response is not None:
            return e.response.status_code >= 500 or e.response.status_code == 429
        if isinstance(e, requests.RequestException):
            return True
    except ImportError:  # requests comes with dicomweb-client; DIMSE works without it
        pass
    return isinstance(e, ConnectionError | TimeoutError | OSError)


def _describe(e: BaseException, source: Any) -> str:
    try:
        import requests

        if isinstance(e, requests.HTTPError) and e.response is not None:
            code = e.response.status_code
            fix = {401: "check auth: username and the password/token reference",
                   403: "ask the PACS team to grant this account query/retrieve rights",
                   404: "check the URL path (e.g. .../dicom-web) and qido/wado prefixes"
                   }.get(code, "see the PACS server's log")
            return f"HTTP {code} from {getattr(source, 'url', '?')}. Fix: {fix}"
    except ImportError:
        pass
    return f"{type(e).__name__}: {e}"


def with_retries(fn: Callable[[], T], *, what: str, source: Any,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call *fn*, retrying transient failures with exponential backoff.

    Parameters
    ----------
    fn
        The network call.
    what
        What it does, for messages ("QIDO-RS study search").
    source
        The manifest source: ``retries`` and ``backoff_s`` are used.
    sleep
        Injected in tests.

    Raises
    ------
    PacsError
        At once for a refusal; after ``1 + retries`` tries for a transient failure.
    """
    retries = int(getattr(source, "retries", 3))
    delay = float(getattr(source, "backoff_s", 2.0))
    name = getattr(source, "name", "?")
    for attempt in range(retries + 1):
        try:
            return fn()
        except PacsError:
            raise
        except Exception as e:
            if not _is_transient(e):
                raise PacsError(f"{name}: {what} failed: {_describe(e, source)}") from e
            if attempt == retries:
                raise PacsError(f"{name}: {what} failed after {retries + 1} tries: "
                                f"{_describe(e, source)}. Fix: check the PACS is reachable "
                                "from this machine, or raise timeout_s/retries") from e
            logger.warning("%s: %s failed (%s); retry %d/%d in %.1f s", name, what,
                           _describe(e, source), attempt + 1, retries, delay)
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# queries


def _kind(source: Any) -> str:
    kind = getattr(source, "kind", None)
    if kind not in ("dicomweb", "dimse"):
        raise PacsError(f"source {getattr(source, 'name', '?')!r} of kind {kind!r} is not a "
                        "PACS source. Fix: use kind dicomweb or dimse")
    return str(kind)


def _client(source: Any, base: Path | None) -> Any:
    from fracture_qi.dicom import dicomweb

    return dicomweb.client_for(source, base)


def echo(source: Any, *, base: Path | None = None) -> float:
    """Prove the source answers (C-ECHO, or a one-result QIDO query); returns seconds.

    Raises
    ------
    PacsError
        With what failed and the fix.
    """
    t0 = time.perf_counter()
    if _kind(source) == "dicomweb":
        from fracture_qi.dicom import dicomweb

        client = _client(source, base)
        with_retries(lambda: dicomweb.echo(client), what="QIDO-RS echo", source=source)
    else:
        from fracture_qi.dicom import dimse

        with_retries(lambda: dimse.echo(source), what="C-ECHO", source=source)
    return time.perf_counter() - t0


def date_range(since: dt.date | None, until: dt.date | None) -> str:
    """A DICOM DA range (``YYYYMMDD-YYYYMMDD``, open-ended where a side is None).

    Examples
    --------
    >>> date_range(dt.date(2024, 1, 1), None)
    '20240101-'
    """
    a = since.strftime("%Y%m%d") if since else ""
    b = until.strftime("%Y%m%d") if until else ""
    return f"{a}-{b}"


def query_studies(source: Any, *, since: dt.date | None = None, until: dt.date | None = None,
                  base: Path | None = None) -> list[dict[str, Any]]:
    """CT studies of the source in a date range (default: the source's since/until).

    Returns
    -------
    list of dict
        ``{"study_uid", "study_date"}``, by date, at most ``max_studies``.
    """
    rng = date_range(since or getattr(source, "since", None),
                     until or getattr(source, "until", None))
    cap = getattr(source, "max_studies", None)
    if _kind(source) == "dicomweb":
        from fracture_qi.dicom import dicomweb

        client = _client(source, base)
        return with_retries(lambda: dicomweb.search_studies(client, rng, cap),
                            what="QIDO-RS study search", source=source)
    from fracture_qi.dicom import dimse

    return with_retries(lambda: dimse.search_studies(source, rng, cap),
                        what="C-FIND STUDY", source=source)


def query_series(source: Any, study_uid: str, *, base: Path | None = None,
                 client: Any = None) -> list[dict[str, Any]]:
    """The CT series of a study: ``{"series_uid", "n_instances"}``."""
    if _kind(source) == "dicomweb":
        from fracture_qi.dicom import dicomweb

        client = client or _client(source, base)
        return with_retries(lambda: dicomweb.search_series(client, study_uid),
                            what="QIDO-RS series search", source=source)
    from fracture_qi.dicom import dimse

    return with_retries(lambda: dimse.search_series(source, study_uid),
                        what="C-FIND SERIES", source=source)


def list_instances(source: Any, study_uid: str, series_uid: str, *, base: Path | None = None,
                   client: Any = None) -> list[str]:
    """SOP Instance UIDs of a series on the PACS."""
    if _kind(source) == "dicomweb":
        from fracture_qi.dicom import dicomweb

        client = client or _client(source, base)
        return with_retries(lambda: dicomweb.list_instances(client, study_uid, series_uid),
                            what="QIDO-RS instance search", source=source)
    from fracture_qi.dicom import dimse

    return with_retries(lambda: dimse.list_instances(source, study_uid, series_uid),
                        what="C-FIND IMAGE", source=source)


_GEOMETRY_KEYS = ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "PixelSpacing")


def series_headers(source: Any, study_uid: str, series_uid: str, *, base: Path | None = None,
                   client: Any = None) -> list[Dataset] | None:
    """Instance headers (no pixels) of a series, or ``None`` if the PACS cannot give them.

    DICOMweb: WADO-RS metadata. DIMSE: IMAGE-level C-FIND; ``None`` when the peer leaves
    out the image geometry (then the caller retrieves the series to read its headers).
    """
    if _kind(source) == "dicomweb":
        from fracture_qi.dicom import dicomweb

        client = client or _client(source, base)
        return with_retries(lambda: dicomweb.series_headers(client, study_uid, series_uid),
                            what="WADO-RS metadata", source=source)
    from fracture_qi.dicom import dimse

    found = with_retries(lambda: dimse.series_headers(source, study_uid, series_uid),
                         what="C-FIND IMAGE", source=source)
    multi = any(int(d.get("NumberOfFrames", 1) or 1) > 1 for d in found)
    if multi or not found or not all(all(d.get(k) not in (None, "") for k in _GEOMETRY_KEYS)
                                     for d in found):
        return None
    for d in found:
        from pydicom.dataset import FileMetaDataset

        d.file_meta = FileMetaDataset()
    return found


def store_instances(source: Any, datasets: Sequence[Dataset], *, base: Path | None = None
                    ) -> list[str]:
    """Send *datasets* to the PACS: STOW-RS (dicomweb) or C-STORE (dimse), with retries.

    Sending the same SOP Instance UID again replaces the stored copy on the usual archives
    (Orthanc, dcm4chee), so a retry after an interruption does not duplicate.

    Returns
    -------
    list of str
        The SOP Instance UIDs stored.

    Raises
    ------
    PacsError
        At once for a refusal; after the source's retries for a transient failure.
    """
    items = list(datasets)
    if _kind(source) == "dicomweb":
        from fracture_qi.dicom import dicomweb

        client = _client(source, base)
        return with_retries(lambda: dicomweb.store_instances(client, items),
                            what="STOW-RS", source=source)
    from fracture_qi.dicom import dimse

    return with_retries(lambda: dimse.store(source, items), what="C-STORE", source=source)


# --------------------------------------------------------------------------------------------
# fetching


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + PART)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _dataset_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _local_files(dest: Path) -> dict[str, Path]:
    """SOP UID -> complete file already in *dest* (files are named by SOP UID)."""
    out = {}
    if dest.is_dir():
        for p in dest.iterdir():
            if p.suffix == ".dcm" and p.is_file():
                out[p.stem] = p
    return out


def fetch_series(source: Any, study_uid: str, series_uid: str, dest: str | os.PathLike[str],
                 *, base: Path | None = None, expected: Sequence[str] | None = None
                 ) -> list[Path]:
    """Retrieve one series into *dest* (``<SOPInstanceUID>.dcm`` files); resumable.

    Instances already complete in *dest* are not fetched again: the first run asks for the
    whole series in one request, a rerun after an interruption only for what is missing.

    Parameters
    ----------
    source
        A DICOMweb or DIMSE manifest source.
    study_uid, series_uid
        The series.
    dest
        Folder to write into (created).
    base
        The manifest folder, for ``file:`` secret references.
    expected
        SOP Instance UIDs of the series if already known (saves a query).

    Returns
    -------
    list of Path
        The series' files in *dest*, sorted by name.

    Raises
    ------
    FetchError
        When the series (or some of its instances) could not be retrieved after the
        configured retries; files already written stay for the next try.
    """
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*" + PART):
        stale.unlink(missing_ok=True)  # a killed earlier run's half-written file
    kind = _kind(source)
    client = _client(source, base) if kind == "dicomweb" else None
    have = _local_files(out)
    try:
        wanted = list(expected) if expected else list_instances(
            source, study_uid, series_uid, base=base, client=client)
        missing = [u for u in wanted if u not in have]
        if not missing:
            logger.debug("%s: all %d instances already on disk", series_uid[-8:], len(wanted))
            return sorted(have[u] for u in wanted)

        def write(sop_uid: str, data: bytes) -> None:
            _atomic_write(out / f"{sop_uid}.dcm", data)

        whole = len(missing) == len(wanted)
        if kind == "dicomweb":
            from fracture_qi.dicom import dicomweb

            def get_all() -> None:
                for ds in dicomweb.iter_series(client, study_uid, series_uid):
                    write(str(ds.SOPInstanceUID), _dataset_bytes(ds))

            if whole:
                with_retries(get_all, what="WADO-RS series retrieval", source=source)
            else:
                for sop in missing:
                    if (out / f"{sop}.dcm").exists():
                        continue  # arrived in a retry of an earlier request
                    ds = with_retries(
                        functools.partial(dicomweb.retrieve_instance, client, study_uid,
                                          series_uid, sop),
                        what="WADO-RS instance retrieval", source=source)
                    write(sop, _dataset_bytes(ds))
        else:
            from fracture_qi.dicom import dimse

            def get_some() -> None:
                still = [u for u in missing if not (out / f"{u}.dcm").exists()]
                if still:
                    dimse.retrieve(source, study_uid, series_uid, None if whole else still,
                                   write)

            with_retries(get_some, what=f"C-{source.retrieve.upper()}", source=source)
    except PacsError as e:
        raise FetchError(f"[{ReasonCode.FETCH_FAILED}] series ...{series_uid[-12:]}: {e}") from e
    have = _local_files(out)
    lacking = [u for u in wanted if u not in have]
    if lacking:
        raise FetchError(
            f"[{ReasonCode.FETCH_FAILED}] {getattr(source, 'name', '?')}: {len(lacking)} of "
            f"{len(wanted)} instances of series ...{series_uid[-12:]} did not arrive. Fix: "
            "run again (the rest is kept), or check the PACS log"
        )
    return sorted(have[u] for u in wanted)


def cache_folder(source: Any, study_uid: str, series_uid: str) -> Path | None:
    """Where a series is kept when the source has a ``cache_dir`` (else ``None``)."""
    cache = getattr(source, "cache_dir", None)
    if cache is None:
        return None
    return Path(cache) / study_uid / series_uid


@contextlib.contextmanager
def fetched_series(source: Any, study_uid: str, series_uid: str, *,
                   base: Path | None = None) -> Iterator[list[Path]]:
    """Local files of a PACS series for the duration of a ``with`` block.

    With a ``cache_dir`` the files are fetched (resumably) into it and stay; without one
    they go to a private temporary folder that is removed when the block ends, whatever
    happens in it.
    """
    cached = cache_folder(source, study_uid, series_uid)
    if cached is not None:
        yield fetch_series(source, study_uid, series_uid, cached, base=base)
        return
    tmp = Path(tempfile.mkdtemp(prefix="fqi-fetch-"))
    try:
        os.chmod(tmp, 0o700)
        yield fetch_series(source, study_uid, series_uid, tmp, base=base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def materialise(paths: Sequence[str], sources: Iterable[Any], *,
                base: Path | None = None) -> Iterator[list[str]]:
    """Local file paths for a series' indexed paths; ``pacs://`` paths are fetched.

    The hook for the screening engine: ``with materialise(job.paths, manifest.dicom_sources)
    as files: vol = load_series(files)``. Local paths pass through unchanged.

    Raises
    ------
    FetchError
        When a ``pacs://`` path names a source the manifest does not have, or the series
        cannot be retrieved (``reason`` ``FETCH_FAILED``).
    """
    refs = [parse_uri(p) for p in paths]
    remote = [r for r in refs if r is not None]
    if not remote:
        yield list(paths)
        return
    by_name = {getattr(s, "name", None): s for s in sources}
    first = remote[0]
    if first.source not in by_name:
        raise FetchError(f"indexed path names PACS source {first.source!r}, which the manifest "
                        f"does not list (it has {sorted(n for n in by_name if n)}). Fix: "
                        "restore the source in dicom_sources or re-index")
    source = by_name[first.source]
    wanted = [r.sop_uid for r in remote if r.sop_uid]
    cached = cache_folder(source, first.study_uid, first.series_uid)
    local = [p for p, r in zip(paths, refs) if r is None]
    if cached is not None:
        files = fetch_series(source, first.study_uid, first.series_uid, cached, base=base,
                             expected=wanted or None)
        yield local + [str(f) for f in files]
        return
    tmp = Path(tempfile.mkdtemp(prefix="fqi-fetch-"))
    try:
        os.chmod(tmp, 0o700)
        files = fetch_series(source, first.study_uid, first.series_uid, tmp, base=base,
                             expected=wanted or None)
        yield local + [str(f) for f in files]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_pacs_series(paths: Sequence[str], sources: Sequence[Any], base: Path | None = None,
                     **load_kw: Any) -> Any:
    """Fetch (if need be) and decode a series: :func:`load_series` over :func:`materialise`.

    Returns
    -------
    CTVolume
    """
    from fracture_qi.dicom.volume import load_series

    with materialise(paths, sources, base=base) as files:
        return load_series(files, **load_kw)


def job_loader(sources: Sequence[Any], base: Path | None = None) -> Callable[[Any], Any]:
    """A picklable ``loader(job) -> CTVolume`` for the screening engine's worker processes.

    Handles jobs whose ``paths`` are local files and jobs whose paths are ``pacs://``.
    """
    return functools.partial(_load_job, sources=tuple(sources), base=base)


def _load_job(job: Any, *, sources: tuple[Any, ...], base: Path | None) -> Any:
    vol = load_pacs_series(list(job.paths), sources, base)
    if not vol.study_instance_uid:
        vol.study_instance_uid = job.study_instance_uid
    if not vol.series_instance_uid:
        vol.series_instance_uid = job.series_instance_uid
    return vol


# --------------------------------------------------------------------------------------------
# index


def scan_pacs(source: Any, *, since: dt.date | None = None, until: dt.date | None = None,
              base: Path | None = None, skip_studies: Iterable[str] = (),
              known_sops: dict[str, str] | None = None,
              known_studies: dict[Any, tuple[str, str]] | None = None,
              progress: bool = False, max_slice_mm: float | None = None) -> Any:
    """Query a PACS and decide eligibility and the chosen series, as for a folder.

    The result is the same :class:`fracture_qi.dicom.scan.ScanResult` that
    :func:`fracture_qi.dicom.scan.scan_paths` gives for the same files in a folder, except
    that paths are ``pacs://`` URIs and (DICOMweb) Pixel Data lengths are not checked
    until the series is fetched.

    Parameters
    ----------
    source
        DICOMweb or DIMSE manifest source.
    since, until
        Study date range (default: the source's ``since``/``until``).
    base
        The manifest's folder (for ``file:`` secrets).
    skip_studies
        Study UIDs already indexed: not queried again (resumable indexing).
    known_sops, known_studies
        Passed to :func:`fracture_qi.dicom.scan.assemble` (duplicate detection).
    progress
        A tqdm progress bar over studies.
    max_slice_mm
        Coarsest slice step screened (``SLICE_TOO_THICK`` beyond it; default 3 mm).

    Returns
    -------
    ScanResult
    """
    from fracture_qi.dicom import headers as hdr
    from fracture_qi.dicom.scan import MAX_SLICE_MM, assemble

    t0 = time.perf_counter()
    name = source.name
    client = _client(source, base) if _kind(source) == "dicomweb" else None
    studies = query_studies(source, since=since, until=until, base=base)
    skip = set(skip_studies)
    todo = [s for s in studies if s["study_uid"] not in skip]
    logger.info("%s: %d CT studies in range, %d already indexed", name, len(studies),
                len(studies) - len(todo))
    records: list[Any] = []
    iterator: Iterable[dict[str, Any]] = todo
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc=f"index {name}", unit="study")
    for study in iterator:
        suid = study["study_uid"]
        try:
            series = query_series(source, suid, base=base, client=client)
        except PacsError as e:
            logger.error("%s: study ...%s skipped: %s", name, suid[-8:], e)
            records.append(hdr.FileProblem(series_uri(name, suid, "?"),
                                           ReasonCode.FETCH_FAILED, str(e)))
            continue
        for se in series:
            records.extend(_series_records(source, suid, se["series_uid"], base, client))
    result = assemble(records, known_sops=known_sops, known_studies=known_studies,
                      max_slice_mm=MAX_SLICE_MM if max_slice_mm is None else max_slice_mm)
    result.n_files = sum(1 for r in records if not isinstance(r, hdr.FileProblem))
    result.seconds = time.perf_counter() - t0
    logger.info("%s: %d series (%d chosen) from %d studies in %.1f s", name,
                len(result.series), len(result.chosen()), len(todo), result.seconds)
    return result


def _series_records(source: Any, study_uid: str, series_uid: str, base: Path | None,
                    client: Any) -> list[Any]:
    """FileHeader records of one series, from metadata or, failing that, from its files."""
    from fracture_qi.dicom import headers as hdr

    name = source.name
    try:
        dsets = series_headers(source, study_uid, series_uid, base=base, client=client)
    except PacsError as e:
        return [hdr.FileProblem(series_uri(name, study_uid, series_uid),
                                ReasonCode.FETCH_FAILED, str(e))]
    out: list[Any] = []
    if dsets is not None:
        for ds in dsets:
            sop = str(ds.get("SOPInstanceUID", ""))
            h = hdr._from_dataset(ds, instance_uri(name, study_uid, series_uid, sop), False)
            if not h.transfer_syntax:
                h.transfer_syntax = ""
            out.append(h)
        return out
    # The peer gave no image-level geometry: read the headers from the files themselves.
    logger.info("%s: IMAGE-level C-FIND lacks geometry; retrieving series ...%s to read its "
                "headers", name, series_uid[-8:])
    try:
        with fetched_series(source, study_uid, series_uid, base=base) as files:
            for f in files:
                r = hdr.read_header(f)
                if isinstance(r, hdr.FileHeader):
                    r.path = instance_uri(name, study_uid, series_uid, r.sop_instance_uid)
                out.append(r)
    except PacsError as e:
        return [hdr.FileProblem(series_uri(name, study_uid, series_uid),
                                ReasonCode.FETCH_FAILED, str(e))]
    return out


def indexed_studies(engine: Any, source_name: str) -> set[str]:
    """Study UIDs already indexed from *source_name* (not queried again by default)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from fracture_qi.store.schema import Study

    with Session(engine) as s:
        return set(s.scalars(select(Study.study_instance_uid).where(Study.source == source_name)))


def index_pacs(source: Any, engine: Any, secret: bytes, *, since: dt.date | None = None,
               until: dt.date | None = None, base: Path | None = None,
               site: str | None = None, rescan: bool = False, progress: bool = False,
               max_slice_mm: float | None = None) -> Any:
    """Index a PACS source into the database, as :func:`~fracture_qi.dicom.index.index_folder`
    does for a folder.

    Studies already indexed from this source are not queried again unless *rescan*; the
    rows written (patients, studies, series with ``pacs://`` paths, instances, problems)
    are those the folder index writes for the same files.

    Parameters
    ----------
    source
        DICOMweb or DIMSE manifest source.
    engine
        The suite's database (``fracture_qi.store.open_store``).
    secret
        Pseudonymisation secret.
    since, until
        Study date range (default: the source's ``since``/``until``).
    base
        The manifest's folder (``file:`` secret references).
    site
        The manifest's ``site`` (last-resort MRN namespace).
    rescan
        Query every study in range again and re-decide eligibility.
    progress
        A progress bar over studies.
    max_slice_mm
        Coarsest slice step screened (manifest ``screening.max_slice_mm``; default 3 mm).

    Returns
    -------
    fracture_qi.dicom.index.IndexSummary

    Raises
    ------
    PacsError
        When the study search itself fails (a single study's failure is recorded as a
        ``FETCH_FAILED`` index problem and the run goes on).
    """
    from fracture_qi.dicom import index as idx

    t0 = time.perf_counter()
    known_sops, _, known_studies = idx._known(engine)
    mine = f"{SCHEME}{source.name}/"
    if rescan:  # this source's own earlier rows are not duplicates of what it finds again
        known_sops = {k: v for k, v in known_sops.items() if not v.startswith(mine)}
        known_studies = {k: v for k, v in known_studies.items() if not v[1].startswith(mine)}
    skip = set() if rescan else indexed_studies(engine, source.name)
    result = scan_pacs(source, since=since, until=until, base=base, skip_studies=skip,
                       known_sops=known_sops, known_studies=known_studies, progress=progress,
                       max_slice_mm=max_slice_mm)
    summary = idx._persist(result, engine, secret, source_name=source.name, site=site,
                           n_new_files=result.n_files)
    summary.sources = [source.name]
    idx._totals(engine, source.name, summary)
    summary.n_files = result.n_files
    summary.seconds = time.perf_counter() - t0
    return summary


def index_pacs_sources(manifest: Any, engine: Any, *, since: dt.date | None = None,
                       until: dt.date | None = None, sources: Sequence[str] | None = None,
                       rescan: bool = False, progress: bool = False) -> Any:
    """Index every PACS source of a manifest (or those named); returns the summed summary.

    The hook for ``fracture-qi index``: call it after
    :func:`fracture_qi.dicom.index.index_sources` (which indexes the folder sources).
    """
    from fracture_qi.dicom.index import IndexSummary, manifest_max_slice_mm

    secret = manifest.secret()
    base = manifest.base
    total = IndexSummary(database=engine.url.render_as_string(hide_password=True))
    for src in manifest.dicom_sources:
        if getattr(src, "kind", None) not in ("dicomweb", "dimse"):
            continue
        if sources is not None and src.name not in set(sources):
            continue
        total.add(index_pacs(src, engine, secret, since=since, until=until, base=base,
                             site=getattr(manifest, "site", None), rescan=rescan,
                             progress=progress,
                             max_slice_mm=manifest_max_slice_mm(manifest)))
    return total
