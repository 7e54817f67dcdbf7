#!/usr/bin/env bash
# The GPU checks of issue 20, as ONE short script for a lent GPU machine (about 6-8 minutes on
# one H100/H200 with 16 cores, at most 10; the lent machines reach no package registry).
#
# Here, first (registry reachable):   bash benchmarks/gpu_wheels.sh        # fills .whl/
# Then, with the device tool:          run(command="bash benchmarks/gpu_check.sh",
#                                           carry=[".whl"], timeout_s=600)
# What it prints (and writes under $OUT: gpu_check.log, *.json) goes into benchmarks/README.md
# ("## GPU"), with the card named.
#
# STEPS="3 5" bash benchmarks/gpu_check.sh reruns only those steps (1 and 2 always run).
# Steps, each bounded by `timeout` so that one hang costs its step, not the lease:
#   1. install the carried wheels into /tmp/site (no index, no dependencies);
#   2. the machine: nvidia-smi, python, torch, nvImageCodec, and whether GPU decoding starts
#      (fracture_qi.dicom.accel.gpu_status: the identity check against OpenJPEG included);
#   3. the gpu-marked tests (GPU decode == CPU decode, bit for bit) and the CPU-side tests of
#      the choice and fallback (tests/test_gpu_decode.py, tests/test_accel.py);
#   4. decode speed, 400 slices of 512 x 512: JPEG 2000 and HTJ2K, one CPU process, every
#      core (forked helpers), and the GPU (benchmarks/decode_speed.py --accel);
#   5. screening speed, 15 decode workers, the model on cuda, decoder auto, with where the time
#      goes, with 1, 2 and 4 model streams (benchmarks/screen_speed.py; issue 20 part 2).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$LOG") 2>&1
PY=${PYTHON:-python3}
STEPS=${STEPS:-"3 4 5"}
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }
want() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }

step "1. wheels"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl/ here: run benchmarks/gpu_wheels.sh where the registry is reachable first"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d .whl/realdata ] && [ ! -e ../shared/realdata ]; then  # tests look in ../shared/realdata
  mkdir -p ../shared && ln -s "$PWD/.whl/realdata" ../shared/realdata
fi

step "2. the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc
timeout 90 $PY - <<'EOF'
import platform, torch
from fracture_qi.dicom import accel
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
try:
    from nvidia import nvimgcodec
    print("nvimgcodec", getattr(nvimgcodec, "__version__", "?"))
except ImportError as e:
    print("nvimgcodec missing:", e)
status = accel.gpu_status(0)
print("GPU decoding:", status.available, "-", status.reason)
if status.available:
    print("signed JPEG 2000 on the GPU:", accel.gpu_decoder(0).signed_ok)
EOF

if want 3; then
step "3. tests: GPU decode identical to the CPU; choice and fallback"
timeout 150 $PY -m pytest tests/test_gpu_decode.py tests/test_accel.py -q -rs \
  -p no:cacheprovider -o addopts="" --import-mode=importlib -s 2>&1 | tail -30
fi

if want 4; then
step "4. decode speed (400 x 512 x 512): one process, every core, GPU"
timeout 150 $PY benchmarks/decode_speed.py --slices 400 --repeat 1 --syntax jpeg2000 htj2k \
  --accel --no-plugins --workdir /tmp/fqi-decode-bench 2>&1 | tail -20
fi

if want 5; then
step "5. screening speed: 15 workers, cuda, decoder auto, batch 4, model streams 1/2/4"
timeout 240 $PY benchmarks/screen_speed.py --device cuda --workers 15 --copies 30 \
  --batch-size 4 --decoder auto --repeat 2 --pipe-repeat 1 --rss-slices 400 --streams 1,2,4 \
  --workdir /tmp/fqi-screen-bench --json "$OUT/screen_speed.json" 2>&1 \
  | grep -v '^ *["{}\[\]0-9-]' | tail -40
fi

step "done"
ls -la "$OUT"
