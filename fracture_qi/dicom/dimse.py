"""DIMSE access with pynetdicom: C-ECHO, C-FIND (study, series, image), C-GET and C-MOVE.

Used through :mod:`fracture_qi.dicom.pacs`. Retrieval asks for every transfer syntax this
suite can decode, each in its own presentation context, so the PACS can send what it stores
without transcoding. C-MOVE runs the suite's own storage SCP on the source's
``storage_port`` only for the duration of the move, and that SCP accepts only associations
from the PACS's AE title and only instances of the series being moved.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.dataset import Dataset

from fracture_qi.dicom import codecs
from fracture_qi.errors import CodecUnavailableError, PacsError

logger = logging.getLogger(__name__)

CT_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
)
#: keys asked for in IMAGE-level C-FIND: what the index needs from each instance header
IMAGE_KEYS = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate",
    "SeriesDate", "AcquisitionDate", "AccessionNumber", "Modality", "Manufacturer",
    "InstitutionName", "StationName", "StudyDescription", "SeriesDescription",
    "ManufacturerModelName", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientSex", "PatientAge", "BodyPartExamined", "ContrastBolusAgent",
    "SliceThickness", "SpacingBetweenSlices", "ProtocolName", "GantryDetectorTilt",
    "ConvolutionKernel", "SeriesNumber", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "NumberOfFrames", "Rows", "Columns", "PixelSpacing",
    "BitsAllocated", "SamplesPerPixel", "RescaleIntercept", "RescaleSlope",
    "CurrentPatientLocation",
)

PENDING = (0xFF00, 0xFF01)


def _transfer_syntaxes() -> list[str]:
    """Native syntaxes plus every compressed one a decoder is installed for."""
    out = [codecs.EXPLICIT_LE, codecs.IMPLICIT_LE]
    for uid in codecs.CODECS:
        try:
            codecs.choose_plugin(uid)
        except CodecUnavailableError:
            logger.debug("not offering %s: no decoder installed", codecs.syntax_name(uid))
            continue
        out.append(uid)
    return out


def decodable_transfer_syntaxes() -> list[str]:
    """Transfer syntaxes this installation decodes (native ones, then installed codecs)."""
    return _transfer_syntaxes()


def _ae(source: Any) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=source.calling_aet)
    t = float(source.timeout_s)
    ae.acse_timeout = t
    ae.dimse_timeout = t
    ae.network_timeout = t
    ae.connection_timeout = t
    return ae


def _associate(ae: Any, source: Any, **kw: Any) -> Any:
    assoc = ae.associate(source.host, int(source.port), ae_title=source.called_aet, **kw)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise ConnectionError(
            f"association with {source.called_aet}@{source.host}:{source.port} {why}. Fix: "
            f"check host/port, that the PACS knows AE title {source.calling_aet!r} (and our "
            "address), and called_aet"
        )
    return assoc


def echo(source: Any) -> None:
    """C-ECHO the peer.

    Raises
    ------
    ConnectionError
        When no association is made or the echo fails (retried by the caller).
    """
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = _ae(source)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, source)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or status.Status != 0x0000:
        raise ConnectionError(f"C-ECHO to {source.called_aet} failed (status "
                              f"{getattr(status, 'Status', None)})")


def find(source: Any, level: str, keys: dict[str, Any]) -> list[Dataset]:
    """One C-FIND in the Study Root model; returns the matches.

    Raises
    ------
    ConnectionError
        Association or network failure (retried by the caller).
    PacsError
        The peer refused the query (not retried).
    """
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel  # type: ignore[attr-defined]

    ae = _ae(source)
    ae.add_requested_context(FindModel)
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ident, k, v)
    assoc = _associate(ae, source)
    out: list[Dataset] = []
    try:
        for status, match in assoc.send_c_find(ident, FindModel):
            if not status:
                raise ConnectionError(f"C-FIND {level} to {source.called_aet}: no response "
                                      f"within {source.timeout_s} s")
            if status.Status in PENDING and match is not None:
                out.append(match)
            elif status.Status != 0x0000:
                raise PacsError(f"C-FIND {level} refused by {source.called_aet} (status "
                                f"0x{status.Status:04X}). Fix: check the PACS allows queries "
                                f"from AE {source.calling_aet}")
    finally:
        assoc.release()
    return out


def search_studies(source: Any, date_range: str, max_studies: int | None) -> list[dict[str, Any]]:
    keys: dict[str, Any] = {"StudyInstanceUID": "", "StudyDate": "" if date_range == "-"
                            else date_range, "ModalitiesInStudy": "CT"}
    found = find(source, "STUDY", keys)
    studies = [{"study_uid": str(d.get("StudyInstanceUID", "")),
                "study_date": str(d.get("StudyDate", ""))} for d in found]
    studies = [s for s in studies if s["study_uid"]]
    studies.sort(key=lambda s: (s["study_date"], s["study_uid"]))
    return studies[:max_studies] if max_studies else studies


def search_series(source: Any, study_uid: str) -> list[dict[str, Any]]:
    found = find(source, "SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "",
                                    "Modality": "CT", "NumberOfSeriesRelatedInstances": None})
    out = []
    for d in found:
        if str(d.get("Modality", "CT")).upper() not in ("CT", ""):
            continue
        n = d.get("NumberOfSeriesRelatedInstances")
        out.append({"series_uid": str(d.get("SeriesInstanceUID", "")),
                    "n_instances": int(n) if n not in (None, "") else None})
    return [s for s in out if s["series_uid"]]


def series_headers(source: Any, study_uid: str, series_uid: str) -> list[Dataset]:
    """Instance headers from an IMAGE-level C-FIND (what the peer returns of IMAGE_KEYS)."""
    keys: dict[str, Any] = {k: None for k in IMAGE_KEYS}  # None: return this key, empty
    keys["StudyInstanceUID"] = study_uid
    keys["SeriesInstanceUID"] = series_uid
    return find(source, "IMAGE", keys)


def list_instances(source: Any, study_uid: str, series_uid: str) -> list[str]:
    found = find(source, "IMAGE", {"StudyInstanceUID": study_uid,
                                   "SeriesInstanceUID": series_uid, "SOPInstanceUID": ""})
    return sorted({str(d.get("SOPInstanceUID", "")) for d in found} - {""})


def _identifier(study_uid: str, series_uid: str, sop_uids: Iterable[str] | None) -> Dataset:
    ident = Dataset()
    ident.StudyInstanceUID = study_uid
    ident.SeriesInstanceUID = series_uid
    sops = list(sop_uids or [])
    if sops:
        ident.QueryRetrieveLevel = "IMAGE"
        ident.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
    else:
        ident.QueryRetrieveLevel = "SERIES"
    return ident


def _store_handler(series_uid: str, write: Callable[[str, bytes], None],
                   requestor_aet: str | None) -> Callable[[Any], int]:
    def handle(event: Any) -> int:
        if requestor_aet and event.assoc.requestor.ae_title.strip() != requestor_aet:
            logger.warning("refused C-STORE from unexpected AE %r",
                           event.assoc.requestor.ae_title)
            return 0xA801  # refused: move destination unknown / not permitted
        ds = event.dataset
        if str(ds.get("SeriesInstanceUID", "")) != series_uid:
            logger.warning("refused C-STORE of an instance of another series")
            return 0xA900  # does not match what was asked for
        write(str(ds.SOPInstanceUID), event.encoded_dataset())
        return 0x0000
    return handle


def _check_final(status: Any, what: str, source: Any) -> None:
    if not status:
        raise ConnectionError(f"{what} from {source.called_aet}: no response within "
                              f"{source.timeout_s} s")
    code = int(status.Status)
    if code == 0x0000:
        return
    failed = status.get("NumberOfFailedSuboperations", "?")
    if code == 0xB000:
        raise ConnectionError(f"{what}: {failed} sub-operation(s) failed (status 0xB000)")
    raise PacsError(f"{what} refused by {source.called_aet} (status 0x{code:04X}). Fix: "
                    f"check the PACS allows {what.split()[0]} from AE {source.calling_aet}"
                    + (f" and knows move destination {source.move_destination}"
                       if what.startswith("C-MOVE") else ""))


def get(source: Any, study_uid: str, series_uid: str, sop_uids: Iterable[str] | None,
        write: Callable[[str, bytes], None]) -> None:
    """C-GET a series (or some of its instances); *write(sop_uid, bytes)* stores each."""
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GetModel  # type: ignore[attr-defined]

    ae = _ae(source)
    ae.add_requested_context(GetModel)
    roles = []
    for sop_class in CT_STORAGE_CLASSES:
        for ts in _transfer_syntaxes():
            ae.add_requested_context(sop_class, [ts])
        roles.append(build_role(sop_class, scp_role=True))
    handler = _store_handler(series_uid, write, None)
    assoc = _associate(ae, source, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handler)])
    try:
        final = None
        for status, _ in assoc.send_c_get(_identifier(study_uid, series_uid, sop_uids), GetModel):
            final = status
            if status and status.Status not in PENDING:
                break
    finally:
        assoc.release()
    _check_final(final, "C-GET", source)


_SCP_LOCK = threading.Lock()


def move(source: Any, study_uid: str, series_uid: str, sop_uids: Iterable[str] | None,
         write: Callable[[str, bytes], None], bind: str | None = None) -> None:
    """C-MOVE a series to our own storage SCP, started on ``source.storage_port`` for it.

    Parameters
    ----------
    bind
        Address the SCP listens on; default ``$FRACTURE_QI_STORAGE_BIND`` or ``0.0.0.0``
        (the PACS must reach it; only the PACS's AE title is accepted).
    """
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MoveModel  # type: ignore[attr-defined]

    address = bind or os.environ.get("FRACTURE_QI_STORAGE_BIND", "0.0.0.0")
    scp = AE(ae_title=source.move_destination)
    scp.network_timeout = scp.acse_timeout = scp.dimse_timeout = float(source.timeout_s)
    for sop_class in CT_STORAGE_CLASSES:
        scp.add_supported_context(sop_class, _transfer_syntaxes())
    handler = _store_handler(series_uid, write, source.called_aet)
    with _SCP_LOCK:  # one SCP per port at a time in this process
        try:
            server = scp.start_server((address, int(source.storage_port)), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, handler)])
        except OSError as e:
            raise PacsError(
                f"cannot listen on {address}:{source.storage_port} for C-MOVE ({e}). Fix: "
                "choose a free storage_port, or use retrieve: get"
            ) from e
        try:
            ae = _ae(source)
            ae.add_requested_context(MoveModel)
            assoc = _associate(ae, source)
            try:
                final = None
                for status, _ in assoc.send_c_move(_identifier(study_uid, series_uid, sop_uids),
                                                   source.move_destination, MoveModel):
                    final = status
                    if status and status.Status not in PENDING:
                        break
            finally:
                assoc.release()
        finally:
            if server is not None:
                server.shutdown()
    _check_final(final, "C-MOVE", source)


def store(source: Any, datasets: Iterable[Dataset]) -> list[str]:
    """C-STORE *datasets* to the peer in one association; returns the SOP Instance UIDs stored.

    Each dataset is offered in its own transfer syntax (its file meta's, explicit VR little
    endian when it has none).

    Raises
    ------
    ConnectionError
        Association or network failure (retried by the caller).
    PacsError
        The peer refused an instance (not retried): the status and the fix.
    """
    from pydicom.uid import ExplicitVRLittleEndian

    items = list(datasets)
    if not items:
        return []
    ae = _ae(source)
    contexts: set[tuple[str, str]] = set()
    for ds in items:
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "") if meta is not None else "") or ExplicitVRLittleEndian
        contexts.add((str(ds.SOPClassUID), ts))
    for sop_class, ts in sorted(contexts):
        ae.add_requested_context(sop_class, [ts])
    assoc = _associate(ae, source)
    stored: list[str] = []
    try:
        for ds in items:
            status = assoc.send_c_store(ds)
            if not status:
                raise ConnectionError(f"C-STORE to {source.called_aet}: no response within "
                                      f"{source.timeout_s} s")
            code = int(status.Status)
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success and warnings
                name = getattr(ds.SOPClassUID, "name", str(ds.SOPClassUID))
                raise PacsError(
                    f"C-STORE of a {name} instance refused by {source.called_aet} (status 0x{code:04X}). Fix: check the PACS "
                    f"accepts storage from AE {source.calling_aet} and this SOP class")
            stored.append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return stored


def retrieve(source: Any, study_uid: str, series_uid: str, sop_uids: Iterable[str] | None,
             write: Callable[[str, bytes], None]) -> None:
    """C-GET or C-MOVE, as the source says."""
    if source.retrieve == "move":
        move(source, study_uid, series_uid, sop_uids, write)
    else:
        get(source, study_uid, series_uid, sop_uids, write)


__all__ = ["decodable_transfer_syntaxes", "echo", "find", "get", "list_instances", "move", "retrieve", "search_series",
           "search_studies", "series_headers", "store"]
