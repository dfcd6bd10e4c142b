#!/usr/bin/env bash
# npm run kernels:test — every kernel against its C++ reference through the SIMT emulation, then kernels/device/run.sh
# --emulate end to end (build check, kernel tests, backend parity on the golden transformers, timing table), so the
# script a lent GPU runs is never first exercised on the device. The TypeScript side (forward parity vs the ONNX
# engine, the denoiser stage with device cuda) is test/unit/cuda-backend.test.ts in npm test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/kernels/emu/kernel-tests ] || { echo "kernels:test: run npm run kernels:build first" >&2; exit 1; }
build/kernels/emu/kernel-tests
SANA_KERNELS_PREBUILT=1 OUT=build/kernels/emulated-device-run bash kernels/device/run.sh --emulate
