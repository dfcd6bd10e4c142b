#!/usr/bin/env bash
# kernels/device/run.sh — everything a lent GPU is for, in one call of at most 8 minutes:
#   1. build the CUDA addon and kernel tests there (nvcc for the device's own arch; ptxas report),
#   2. run the kernel tests natively,
#   3. parity of the backend (bf16, int8) on the golden variants' transformers,
#   4. time the forward (sana-600m shapes, 512/1024/2048/4096 px, batch 2, bf16 and int8) and PyTorch bf16 eager
#      on the same shapes (kernels/device/torch_reference.py),
# and write $OUT/kernels-report.json (+ the logs beside it).
#
#   run.sh --prepare   here, before spending device time: bundles kernels/device/check.ts into
#                      build/device-carry/check.mjs and xz-compresses this machine's node binary into
#                      build/device-carry/node.xz (the device image has nvcc, Python and PyTorch, no Node.js).
#                      Carry: build/device-carry and node_modules/node-api-headers.
#   run.sh --emulate   the same steps on this CPU with the SIMT emulation build and tiny shapes: how the script is
#                      exercised end to end where no device is lent (torch baseline only if torch is installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CARRY=$ROOT/build/device-carry
MODE=device
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --emulate) MODE=emulate ;;
  "") ;;
  *) echo "usage: run.sh [--prepare|--emulate]" >&2; exit 2 ;;
esac
OUT=${OUT:-$ROOT/build/kernels/device-out}
mkdir -p "$OUT"
started=$(date +%s)
step() { echo "=== [$(( $(date +%s) - started )) s] $*"; }

prepare() {
  mkdir -p "$CARRY"
  step "bundling kernels/device/check.ts"
  node_modules/.bin/esbuild kernels/device/check.ts --bundle --platform=node --format=esm --log-level=warning \
    --banner:js="import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" \
    --outfile="$CARRY/check.mjs"
  if [ ! -f "$CARRY/node.xz" ] || [ "$(command -v node)" -nt "$CARRY/node.xz" ]; then
    step "compressing $(command -v node) ($(node -v))"
    xz -T1 -6 -c "$(command -v node)" > "$CARRY/node.xz.tmp" && mv "$CARRY/node.xz.tmp" "$CARRY/node.xz"
  fi
  du -sh "$CARRY"/* | sed 's/^/  /'
}

if [ $MODE = prepare ]; then prepare; exit 0; fi
if [ $MODE = emulate ]; then  # the bundle only: node.xz is used when present, this machine's node otherwise
  mkdir -p "$CARRY"
  node_modules/.bin/esbuild kernels/device/check.ts --bundle --platform=node --format=esm --log-level=warning \
    --banner:js="import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" \
    --outfile="$CARRY/check.mjs"
fi
[ -f "$CARRY/check.mjs" ] || { echo "run.sh: $CARRY/check.mjs missing: run kernels/device/run.sh --prepare first and carry build/device-carry" >&2; exit 1; }

# node: the carried binary (decompressed with Python's lzma: no xz needed on the device), else this machine's
if [ -f "$CARRY/node.xz" ]; then
  NODE_DIR=$(mktemp -d)
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$CARRY/node.xz" "$NODE_DIR/node"
  chmod +x "$NODE_DIR/node"
  export PATH=$NODE_DIR:$PATH
fi
command -v node >/dev/null || { echo "run.sh: no node binary (carry build/device-carry/node.xz)" >&2; exit 1; }
step "node $(node -v)"

if [ $MODE = device ]; then
  export PATH=$PATH:/usr/local/cuda/bin
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.' || true)
  export SANA_CUDA_ARCHS=${SANA_CUDA_ARCHS:-${cap:-90}}
  step "building the CUDA addon for sm_$SANA_CUDA_ARCHS"
  bash kernels/build.sh --cuda-only > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
  BUILD=$ROOT/${SANA_KERNELS_BUILD:-build/kernels}/cuda
  cp "$BUILD/ptxas-report.txt" "$OUT/"
  PRESET=sana-600m-1024 SIZES=512,1024,2048,4096 CAPTION=300 REPEATS=5
else
  BUILD=$ROOT/${SANA_KERNELS_BUILD:-build/kernels}/emu
  if [ "${SANA_KERNELS_PREBUILT:-0}" = 1 ] && [ -f "$BUILD/sana_kernels.node" ]; then
    step "using the emulation build in $BUILD"
  else
    step "building the emulation addon"
    bash kernels/build.sh --emu-only > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
  fi
  PRESET=tiny-transformer SIZES=128,256 CAPTION=20 REPEATS=1
fi

step "kernel tests"
set +e
"$BUILD/kernel-tests" > "$OUT/kernel-tests.txt" 2>&1
tests_rc=$?
tail -1 "$OUT/kernel-tests.txt"

step "backend parity and timing ($PRESET at $SIZES px)"
goldens=()
for g in test/fixtures/golden/*/; do goldens+=(--golden "$g"); done
node "$CARRY/check.mjs" --addon "$BUILD/sana_kernels.node" "${goldens[@]}" --preset "$PRESET" --sizes "$SIZES" --batch 2 \
  --caption "$CAPTION" --repeats "$REPEATS" --out "$OUT/backend.json" 2>&1 | tee "$OUT/backend.log"
check_rc=${PIPESTATUS[0]}

step "PyTorch bf16 eager baseline"
torch_rc=0
if python3 -c "import torch" 2>/dev/null && [ -f "$OUT/backend.json" ]; then
  python3 -c "import json, sys; json.dump(json.load(open(sys.argv[1]))['config'], open(sys.argv[2], 'w'))" "$OUT/backend.json" "$OUT/config.json"
  python3 kernels/device/torch_reference.py --config "$OUT/config.json" --sizes "$SIZES" --batch 2 --caption "$CAPTION" \
    --repeats "$REPEATS" --out "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log"
  torch_rc=${PIPESTATUS[0]}
else
  echo "  skipped: torch is not installed here" | tee "$OUT/torch.log"
fi
set -e

step "report"
node kernels/device/report.mjs "$OUT" "$MODE" "$tests_rc" "$check_rc" "$torch_rc"
