#!/usr/bin/env bash
# Fetch, here (where the package registry is reachable), what benchmarks/gpu_check.sh needs on
# a lent GPU machine that reaches no registry, into .whl/ (ignored by git, carried by the
# device tool: `carry: [".whl"]`).
#
#   bash benchmarks/gpu_wheels.sh            # then: run `bash benchmarks/gpu_check.sh` there
#
# The lent machines run Python 3.12 with PyTorch built for CUDA 13 (numpy, scipy, pillow,
# pyyaml, tqdm, psutil, pytest already there: /work/.library/device/KINDS.md), so only the
# rest travels, as cp312 manylinux x86_64 wheels, without dependencies (each one named):
#   nvImageCodec + nvJPEG2000 for CUDA 13 (a site on a CUDA 12 driver installs the project's
#   `gpu` extra, the -cu12 wheels, instead), pydicom and the pylibjpeg decoders (OpenJPEG is
#   the CPU reference the GPU is checked against), pydantic and its parts.
# python-gdcm (13 MB) is left out to stay under the 64 MiB a call may carry: on the GPU
# machine the CPU decoder is pylibjpeg-openjpeg (within 1% of gdcm here: benchmarks/README.md).
# The 20 real JPEG 2000 slices of ../shared/realdata travel too (.whl/realdata, never
# committed), so tests/test_gpu_decode.py checks real anatomy there.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
mkdir -p "$DEST"
pin() {  # the version constraints.txt pins (the project's tested versions)
  grep -i "^$1==" constraints.txt | head -1 | cut -d= -f3
}
PKGS=(
  "nvidia-nvimgcodec-cu13==0.9.0.20"
  "nvidia-nvjpeg2k-cu13==0.11.0.51"
  "pydicom==$(pin pydicom)"
  "pylibjpeg==$(pin pylibjpeg)"
  "pylibjpeg-openjpeg==$(pin pylibjpeg-openjpeg)"
  "pylibjpeg-rle==$(pin pylibjpeg-rle)"
  "pydantic==$(pin pydantic)"
  "pydantic_core==$(pin pydantic_core)"
  "annotated-types==$(pin annotated-types)"
  "typing-inspection==$(pin typing-inspection)"
  "typing_extensions==$(pin typing_extensions)"
)
for p in "${PKGS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "$p"
done
REAL=../shared/realdata/totalsegmentator/example_ct_dicom
if [ -d "$REAL" ]; then
  mkdir -p "$DEST/realdata/totalsegmentator"
  cp -r "$REAL" "$DEST/realdata/totalsegmentator/"
fi
du -sh "$DEST"
ls "$DEST"
