"""Follow an Orthanc's changes feed: each ``StableStudy`` is copied into the storage area.

For sites that route CTs through Orthanc rather than forwarding them by C-STORE: the
listener polls ``GET /changes?since=N&limit=100`` every ``poll_seconds``; for each
``StableStudy`` (Orthanc received nothing new for the study for its ``StableAge``) it
downloads the study's instances (``GET /studies/{id}/instances``, ``GET
/instances/{id}/file``) into the storage area exactly as received C-STOREs are stored, and
the study is then complete at once. The feed's position is kept in the database
(``service_state``) only after a study is stored, so a restart picks up where it stopped and
at worst downloads one study again (which changes nothing). A listener that has never
followed this Orthanc starts at its current end: history is left to ``fracture-qi index``.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread

from fracture_qi.errors import PacsError
from fracture_qi.listener.storage import StorageError, store_instance
from fracture_qi.store.db import session_scope
from fracture_qi.store.schema import ServiceState, utcnow

log = logging.getLogger(__name__)

#: changes read per request
PAGE = 100


class OrthancFeed:
    """A reader of one Orthanc's ``/changes``, storing stable studies into the area."""

    def __init__(self, config: Any, area: Path, engine: Any, *, base: Path | None = None) -> None:
        self.config = config
        self.area = area
        self.engine = engine
        self.key = f"orthanc-changes:{config.url}"
        self._auth: str | None = None
        auth = getattr(config, "auth", None)
        if auth is not None:
            from fracture_qi.manifest import read_secret_ref

            if auth.kind == "basic":
                secret = read_secret_ref(auth.password, base=base)
                self._auth = "Basic " + b64encode(f"{auth.username}:{secret}".encode()).decode()
            else:
                self._auth = "Bearer " + read_secret_ref(auth.token, base=base)

    # --------------------------------------------------------------------------- REST
    def _get(self, path: str) -> bytes:
        req = urllib.request.Request(self.config.url + path)
        if self._auth:
            req.add_header("Authorization", self._auth)
        ctx = None
        verify = getattr(self.config, "verify_tls", True)
        if self.config.url.startswith("https") and verify is not True:
            import ssl

            if verify:  # the hospital's CA bundle
                ctx = ssl.create_default_context(cafile=str(verify))
            else:  # the site said verify_tls: false
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(req, timeout=float(self.config.timeout_s),
                                        context=ctx) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise PacsError(f"Orthanc {self.config.url}{path}: HTTP {e.code}. Fix: check "
                            "listener.orthanc.url and its auth") from e
        except (urllib.error.URLError, OSError) as e:
            raise PacsError(f"Orthanc {self.config.url} unreachable ({e}). Fix: check the "
                            "URL and that Orthanc runs") from e

    def _json(self, path: str) -> Any:
        return json.loads(self._get(path))

    # --------------------------------------------------------------------------- cursor
    def cursor(self) -> int:
        """The last change already handled (the feed's current end on first use)."""
        with session_scope(self.engine) as s:
            row = s.get(ServiceState, self.key)
            if row is not None and row.value is not None:
                return int(row.value)
        last = int(self._json("/changes?last").get("Last", 0))
        self._save(last)
        log.info("following %s from change %d (earlier studies: use fracture-qi index)",
                 self.config.url, last)
        return last

    def _save(self, seq: int) -> None:
        with session_scope(self.engine) as s:
            row = s.get(ServiceState, self.key)
            if row is None:
                s.add(ServiceState(key=self.key, value=str(seq), updated_at=utcnow()))
            else:
                row.value, row.updated_at = str(seq), utcnow()

    # --------------------------------------------------------------------------- polling
    def store_study(self, orthanc_id: str) -> tuple[str | None, int]:
        """Copy one Orthanc study into the storage area; (StudyInstanceUID, new instances).

        Instances already received are not downloaded again, nor are the suite's own result
        objects (an SR sent back makes the study "stable" once more).
        """
        from io import BytesIO

        from fracture_qi.listener.storage import is_own_result, known_instances

        study = self._json(f"/studies/{orthanc_id}")
        study_uid = str(study.get("MainDicomTags", {}).get("StudyInstanceUID", "")) or None
        instances = self._json(f"/studies/{orthanc_id}/instances")
        have = known_instances(self.engine, [str(i.get("MainDicomTags", {}).get(
            "SOPInstanceUID", "")) for i in instances])
        n = 0
        for inst in instances:
            if str(inst.get("MainDicomTags", {}).get("SOPInstanceUID", "")) in have:
                continue
            data = self._get(f"/instances/{inst['ID']}/file")
            ds = dcmread(BytesIO(data), stop_before_pixels=True, force=True)
            if is_own_result(ds):
                continue
            study_uid = str(ds.get("StudyInstanceUID", ""))
            try:
                store_instance(self.area, self.engine, data, study=study_uid,
                               series=str(ds.get("SeriesInstanceUID", "")),
                               sop=str(ds.get("SOPInstanceUID", "")),
                               sop_class=str(ds.get("SOPClassUID", "")),
                               calling_aet="ORTHANC-FEED", origin="orthanc")
                n += 1
            except StorageError as e:
                log.error("Orthanc instance %s not stored: %s", inst["ID"], e)
        return study_uid, n

    def poll(self, on_study: Callable[[str], None], should_stop: Callable[[], bool]) -> int:
        """Handle the changes since the cursor; returns how many studies were stored."""
        since = self.cursor()
        stored = 0
        while not should_stop():
            page = self._json(f"/changes?since={since}&limit={PAGE}")
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "StableStudy":
                    t0 = time.perf_counter()
                    uid, n = self.store_study(change["ID"])
                    if uid:
                        log.info("Orthanc stable study ...%s: %d instance(s) stored in %.1f s",
                                 uid[-12:], n, time.perf_counter() - t0)
                        on_study(uid)
                        stored += 1
                since = int(change.get("Seq", since))
                self._save(since)
                if should_stop():
                    return stored
            since = max(since, int(page.get("Last", since)))
            self._save(since)
            if page.get("Done", True):
                break
        return stored


__all__ = ["OrthancFeed"]
