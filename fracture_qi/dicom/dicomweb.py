"""DICOMweb access (QIDO-RS search, WADO-RS metadata and retrieval) with dicomweb-client.

Used through :mod:`fracture_qi.dicom.pacs`, which adds retries, resumable fetching and the
index/screening hooks. Every request has the source's timeout; authentication secrets are
read from their ``env:``/``file:`` references at connection time and never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from fracture_qi.errors import PacsError

logger = logging.getLogger(__name__)

#: ask for the stored transfer syntax ("*"): no transcoding on the server, our codecs decode
RETRIEVE_MEDIA_TYPES = (("application/dicom", "*"),)
#: QIDO fields asked for at each level (servers add the required ones)
STUDY_FIELDS = ("StudyDate", "StudyInstanceUID", "ModalitiesInStudy", "AccessionNumber",
                "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                 "NumberOfSeriesRelatedInstances", "BodyPartExamined")


def client_for(source: Any, base: Path | None = None) -> Any:
    """A :class:`dicomweb_client.api.DICOMwebClient` for a manifest DICOMweb source.

    Parameters
    ----------
    source
        A :class:`fracture_qi.manifest.DicomWebSource` (url, timeout_s, auth, verify_tls,
        qido_prefix, wado_prefix).
    base
        The manifest's folder, for ``file:`` secret references.

    Raises
    ------
    ManifestError
        When an auth secret reference cannot be read.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    from fracture_qi.manifest import read_secret_ref

    session = requests.Session()
    auth = getattr(source, "auth", None)
    if auth is not None:
        if auth.kind == "basic":
            session.auth = (auth.username, read_secret_ref(auth.password, base=base))
        else:
            session.headers["Authorization"] = f"Bearer {read_secret_ref(auth.token, base=base)}"
    verify = getattr(source, "verify_tls", True)
    session.verify = str(verify) if isinstance(verify, Path) else bool(verify)
    client = DICOMwebClient(
        url=source.url,
        session=session,
        qido_url_prefix=getattr(source, "qido_prefix", None),
        wado_url_prefix=getattr(source, "wado_prefix", None),
        timeout=float(source.timeout_s),
    )
    # dicomweb-client would retry every failure 5 times with its own backoff (up to a
    # minute on a refused connection); retries are the source's, done by pacs.with_retries
    client.set_http_retry_params(retry=False)
    return client


#: QIDO page size; results are read page by page with limit/offset
PAGE = 500


def _paged(search: Any, *args: Any, **kw: Any) -> list[dict[str, Any]]:
    """All results of a QIDO search, read with explicit limit/offset pages.

    dicomweb-client's ``get_remaining`` loops for ever on servers that ignore ``offset``
    without ``limit`` (Orthanc's plugin 1.7 does), so paging is done here, and stops when a
    page is short or repeats the previous one.
    """
    out: list[dict[str, Any]] = []
    offset = 0
    previous: list[dict[str, Any]] | None = None
    while True:
        page = search(*args, limit=PAGE, offset=offset, **kw)
        if not page or page == previous:
            break
        out.extend(page)
        if len(page) < PAGE:
            break
        previous = page
        offset += len(page)
    return out


def _uid(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def search_studies(client: Any, date_range: str, max_studies: int | None) -> list[dict[str, Any]]:
    """CT studies in a DICOM date range (``YYYYMMDD-YYYYMMDD``; either side may be empty)."""
    filters: dict[str, Any] = {"ModalitiesInStudy": "CT"}
    if date_range != "-":
        filters["StudyDate"] = date_range
    found = _paged(client.search_for_studies, search_filters=filters, fields=list(STUDY_FIELDS))
    studies = [{"study_uid": _uid(s, "0020000D"), "study_date": _uid(s, "00080020")}
               for s in found]
    # some servers ignore ModalitiesInStudy: checked again at series level
    studies = [s for s in studies if s["study_uid"]]
    studies.sort(key=lambda s: (s["study_date"], s["study_uid"]))
    return studies[:max_studies] if max_studies else studies


def search_series(client: Any, study_uid: str) -> list[dict[str, Any]]:
    """The CT series of one study."""
    found = _paged(client.search_for_series, study_uid, search_filters={"Modality": "CT"},
                   fields=list(SERIES_FIELDS))
    out = []
    for s in found:
        modality = _uid(s, "00080060")
        if modality and modality.upper() != "CT":
            continue
        n = _uid(s, "00201209")
        out.append({"series_uid": _uid(s, "0020000E"),
                    "n_instances": int(n) if n.isdigit() else None})
    return [s for s in out if s["series_uid"]]


def list_instances(client: Any, study_uid: str, series_uid: str) -> list[str]:
    """SOP Instance UIDs of a series."""
    found = _paged(client.search_for_instances, study_uid, series_uid,
                   fields=["SOPInstanceUID"])
    return sorted({_uid(i, "00080018") for i in found} - {""})


def series_headers(client: Any, study_uid: str, series_uid: str) -> list[Dataset]:
    """Instance headers of a series from WADO-RS metadata (no pixel data is transferred)."""
    items = client.retrieve_series_metadata(study_uid, series_uid)
    out = []
    for item in items:
        ts = _uid(item, "00083002")  # AvailableTransferSyntaxUID, where the server gives it
        ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *a: b"")
        ds.file_meta = FileMetaDataset()
        if ts:
            ds.file_meta.TransferSyntaxUID = UID(ts)
        sop_class = ds.get("SOPClassUID")
        if sop_class:
            ds.file_meta.MediaStorageSOPClassUID = sop_class
        out.append(ds)
    return out


def iter_series(client: Any, study_uid: str, series_uid: str) -> Iterator[Dataset]:
    """Every instance of a series, streamed (one multipart response)."""
    yield from client.iter_series(study_uid, series_uid, media_types=RETRIEVE_MEDIA_TYPES)


def retrieve_instance(client: Any, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
    """One instance."""
    return client.retrieve_instance(study_uid, series_uid, sop_uid,
                                    media_types=RETRIEVE_MEDIA_TYPES)


def store_instances(client: Any, datasets: list[Dataset]) -> list[str]:
    """STOW-RS *datasets* into the server; returns the SOP Instance UIDs it stored.

    Raises
    ------
    PacsError
        When the server reports instances it did not store (Failed SOP Sequence).
    """
    answer = client.store_instances(datasets)
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        reasons = ", ".join(f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed)
        raise PacsError(f"STOW-RS: the server refused {len(failed)} of {len(datasets)} "
                        f"instance(s) (failure reason {reasons}). Fix: check the server accepts "
                        "these SOP classes and that this account may store")
    return [str(ds.SOPInstanceUID) for ds in datasets]


def echo(client: Any) -> None:
    """A cheap QIDO request that proves the URL, the TLS settings and the credentials.

    Raises
    ------
    PacsError
        When the server answers with something other than a (possibly empty) result.
    """
    result = client.search_for_studies(limit=1)
    if not isinstance(result, list):
        raise PacsError(f"DICOMweb server at {client.base_url} answered QIDO-RS with "
                        f"{type(result).__name__}, not a list. Fix: check the URL's path "
                        "(e.g. .../dicom-web) and qido_prefix")
