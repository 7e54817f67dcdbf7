#!/usr/bin/env bash
# Debian packages the tests drive for real: Chromium (Voila pages, through Playwright),
# Orthanc with its DICOMweb plugin (the PACS), PostgreSQL (the second database),
# dicom3tools (dciodvfy validates the DICOM results the suite sends to the PACS),
# poppler-utils (pdftoppm renders the conference pack's PDF; pdftotext lets the identifier
# scan read it) and nginx (the TLS reverse proxy configuration docs/team-server.md documents
# is tested in front of fracture-qi serve).
# Idempotent: installs only what is missing. Needs root (or sudo) on Debian/Ubuntu.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present (chromium, orthanc, orthanc-dicomweb, postgresql, dicom3tools, poppler-utils, nginx)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: missing Debian packages: ${need[*]}; run as root: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packaged services try to start themselves; the suite runs its own instances.
for svc in orthanc postgresql nginx; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
echo "system packages installed"
