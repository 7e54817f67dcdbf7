"""``fracture-qi listen --manifest M``: the service the PACS forwards CT studies to."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

DESCRIPTION = """\
Run the DICOM service the PACS (or a router) forwards CT studies to, until stopped.

A storage SCP with the manifest's listener.ae_title and listener.port accepts C-STORE from
the AE titles in listener.allowed_callers and stores every instance under the manifest's
first folder source (the storage area), recording each before answering "stored". When a
study has had nothing new for listener.quiet_seconds it is indexed, its chosen series
screened, the results sent back into the PACS as DICOM (when results_to_pacs is set: a
TID 1500 SR and the key image, in the same study) and the nurses' worklist refreshed; no
other command is needed. With listener.orthanc the changes feed of an Orthanc is followed
instead (each StableStudy is copied and processed).

SIGTERM (systemctl stop) or Ctrl-C finishes the current step and exits 0; what was
received and not yet processed is processed on the next start, and a study half-received
when it stopped is finished when the rest arrives. Logs go to stderr (journald under
systemd): one line per association and per study, a summary every 5 minutes."""

EPILOG = """\
manifest:
  dicom_sources: [{name: received, kind: folder, path: /srv/fracture-qi/received}, ...]
  listener: {ae_title: FRACTUREQI, port: 11112, allowed_callers: [PACS], quiet_seconds: 10}
  results_to_pacs: {source: pacs}        # optional: a dicomweb or dimse source

examples:
  fracture-qi listen --manifest /etc/fracture-qi/site.yaml
  fracture-qi -v listen --manifest site.yaml          # INFO log lines (the default here)
  systemd unit: docs/systemd/fracture-qi-listen.service

exit status: 0 when stopped by SIGTERM/SIGINT; 2 when it could not start (manifest,
database, model, port in use, no allowed callers). docs: docs/pacs-and-dicom.md"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "listen", help="the DICOM service the PACS forwards CTs to (screens as they arrive)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", "-m", default=os.environ.get("FRACTURE_QI_MANIFEST"),
                   help="data_manifest.yaml with a listener: section "
                   "(default: $FRACTURE_QI_MANIFEST)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from fracture_qi.errors import ConfigError
    from fracture_qi.listener.service import listen
    from fracture_qi.manifest import read_manifest, verify_inputs

    if not args.manifest:
        raise ConfigError("no manifest given. Fix: fracture-qi listen --manifest "
                          "path/to/data_manifest.yaml (or set FRACTURE_QI_MANIFEST)")
    if logging.getLogger().level > logging.INFO:  # a service logs what it does by default
        logging.getLogger().setLevel(logging.INFO)
    for noisy in ("pynetdicom", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    manifest = read_manifest(args.manifest, verify=False)
    area = manifest.storage_area()
    area.path.mkdir(parents=True, exist_ok=True)  # a fresh installation: create it
    verify_inputs(manifest)
    summary = listen(manifest)
    print(f"fracture-qi listen: stopped; {summary.line()}")
    return 0
