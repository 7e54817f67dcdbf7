"""The storage SCP: the DICOM endpoint the PACS (or a router) forwards CT studies to.

One pynetdicom :class:`~pynetdicom.AE` with our AE title, listening on the manifest's
``listener.bind``:``listener.port``. Associations are accepted only when the calling AE
title is in ``listener.allowed_callers`` and the called AE title is ours; every storage SOP
class is accepted (a router forwarding "the whole study" also sends dose reports and
secondary captures: refusing them would make it retry for ever; the index sorts them out as
``NOT_CT`` / ``NO_PIXEL_DATA``), in the transfer syntaxes the suite decodes. Each C-STORE is
stored durably (:func:`fracture_qi.listener.storage.store_instance`) before "success" is
answered, so what the sender was told is stored survives any crash.

C-STORE status codes answered (PS3.4 B.2.3): ``0x0000`` stored; ``0xA900`` refused, the
dataset's UIDs are not valid UIDs; ``0xA700`` out of resources (the disk or the database
could not take it: the sender should retry later); ``0xC000`` the dataset cannot be parsed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracture_qi.errors import ConfigError
from fracture_qi.listener.storage import StorageError, is_own_result, store_instance

log = logging.getLogger(__name__)

#: C-STORE statuses (PS3.4 Annex B.2.3)
STORED = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: DIMSE/ACSE/network timeouts of the SCP (s): a silent peer is dropped after this
NETWORK_TIMEOUT_S = 60.0
#: the most associations served at once (pynetdicom's default is 10)
MAX_ASSOCIATIONS = 10


@dataclass
class Counters:
    """What the SCP did since it started (for the log and the benchmark)."""

    stored: int = 0
    copies: int = 0
    refused: int = 0
    bytes: int = 0
    associations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def _transfer_syntaxes() -> list[str]:
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

    from fracture_qi.dicom.dimse import decodable_transfer_syntaxes

    return list(dict.fromkeys([*decodable_transfer_syntaxes(), ExplicitVRBigEndian,
                               DeflatedExplicitVRLittleEndian]))


def make_handler(area: Path, engine: Any, counters: Counters,
                 on_stored: Callable[[str, bool], None] | None = None) -> Callable[[Any], int]:
    """The ``EVT_C_STORE`` handler: store durably, answer the status."""

    def handle(event: Any) -> int:
        caller = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            study = str(ds.get("StudyInstanceUID", "") or "")
            series = str(ds.get("SeriesInstanceUID", "") or "")
            sop = str(event.request.AffectedSOPInstanceUID or ds.get("SOPInstanceUID", ""))
            sop_class = str(event.request.AffectedSOPClassUID or ds.get("SOPClassUID", ""))
            if is_own_result(ds):  # our SR/key image routed back with the study
                log.debug("C-STORE from %s: one of our own result objects, not stored", caller)
                return STORED
            data = event.encoded_dataset(include_meta=True)
        except Exception as e:  # noqa: BLE001 - a dataset pydicom cannot parse
            log.warning("C-STORE from %s: dataset cannot be parsed (%s): refused", caller, e)
            counters.add(refused=1)
            return CANNOT_UNDERSTAND
        try:
            got = store_instance(area, engine, data, study=study, series=series, sop=sop,
                                 sop_class=sop_class, calling_aet=caller, origin="dimse")
        except StorageError as e:
            log.error("C-STORE from %s refused: %s", caller, e)
            counters.add(refused=1)
            bad_uid = "not a valid UID" in str(e)
            return DATA_SET_DOES_NOT_MATCH if bad_uid else OUT_OF_RESOURCES
        except Exception as e:  # noqa: BLE001 - the database is down: the sender retries
            log.error("C-STORE from %s: not recorded (%s): answered out of resources so the "
                      "sender retries", caller, e)
            counters.add(refused=1)
            return OUT_OF_RESOURCES
        counters.add(stored=int(got.new), copies=int(not got.new), bytes=len(data))
        if on_stored is not None:
            on_stored(got.study_instance_uid, got.new)
        return STORED

    return handle


def start_scp(config: Any, area: Path, engine: Any, counters: Counters,
              on_stored: Callable[[str, bool], None] | None = None) -> Any:
    """Start the storage SCP in background threads; returns the pynetdicom server.

    Raises
    ------
    ConfigError
        When ``allowed_callers`` is empty (the SCP would accept anyone) or the port cannot
        be bound.
    """
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    if not config.allowed_callers:
        raise ConfigError(
            "listener.allowed_callers is empty: the listener would accept studies from any "
            "system on the network. Fix: list the AE title(s) of the PACS or router, e.g. "
            "allowed_callers: [PACS_ROUTER]")
    ae = AE(ae_title=config.ae_title)
    ae.require_calling_aet = list(config.allowed_callers)
    ae.require_called_aet = True
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = NETWORK_TIMEOUT_S
    syntaxes = _transfer_syntaxes()
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)

    def opened(event: Any) -> None:
        counters.add(associations=1)
        log.info("association from %s (%s:%s)", str(event.assoc.requestor.ae_title).strip(),
                 event.assoc.requestor.address, event.assoc.requestor.port)

    def rejected(event: Any) -> None:
        log.warning("association from %s (%s) rejected: calling AE title not in "
                    "listener.allowed_callers %s (or called AE title not %s)",
                    str(event.assoc.requestor.ae_title).strip(), event.assoc.requestor.address,
                    list(config.allowed_callers), config.ae_title)

    handlers = [(evt.EVT_C_STORE, make_handler(area, engine, counters, on_stored)),
                (evt.EVT_ACCEPTED, opened), (evt.EVT_REJECTED, rejected)]
    try:
        server = ae.start_server((config.bind, int(config.port)), block=False,
                                 evt_handlers=handlers)
    except OSError as e:
        raise ConfigError(f"cannot listen on {config.bind}:{config.port} ({e.strerror or e}). "
                          "Fix: choose a free listener.port (or stop what holds it)") from e
    log.info("storage SCP %s listening on %s:%s, accepting %s", config.ae_title, config.bind,
             config.port, ", ".join(config.allowed_callers))
    return server


__all__ = ["Counters", "make_handler", "start_scp"]
