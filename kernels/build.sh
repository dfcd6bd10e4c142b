#!/usr/bin/env bash
# npm run kernels:build — compiles kernels/ twice from the same sources:
#   emulation (g++, the SIMT fiber layer):  build/kernels/emu/{sana_kernels.node, kernel-tests}
#   CUDA (nvcc, sm_80 / sm_89 / sm_90):      build/kernels/cuda/{sana_kernels.node, kernel-tests}, ptxas-report.txt
# Warnings are errors in both; the ptxas report must show no spills in the GEMM and attention kernels.
# --emu-only / --cuda-only build one half (the device script builds the CUDA half where no g++ emulation is needed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${SANA_KERNELS_BUILD:-build/kernels}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$([ -x "$CUDA_HOME/bin/nvcc" ] && echo "$CUDA_HOME/bin/nvcc" || command -v nvcc)}
NODE_API_INCLUDE=${NODE_API_INCLUDE:-node_modules/node-api-headers/include}
ARCHS=${SANA_CUDA_ARCHS:-80 89 90}
JOBS=${SANA_KERNELS_JOBS:-2}  # 1: one nvcc at a time
want_emu=1
want_cuda=1
case "${1:-}" in
  --emu-only) want_cuda=0 ;;
  --cuda-only) want_emu=0 ;;
  "") ;;
  *) echo "usage: build.sh [--emu-only|--cuda-only]" >&2; exit 2 ;;
esac

CXXFLAGS=(-std=c++17 -O2 -Wall -Wextra -Werror -fPIC -Ikernels/include)
HOST_SOURCES=(kernels/ref/reference.cpp kernels/src/dit_host.cpp)

build_emu() {
  local dir=$OUT/emu obj=$OUT/emu/obj
  mkdir -p "$obj"
  local objs=()
  for src in kernels/emu/simt_emu.cpp "${HOST_SOURCES[@]}"; do
    g++ "${CXXFLAGS[@]}" -c "$src" -o "$obj/$(basename "$src").o" &
    objs+=("$obj/$(basename "$src").o")
  done
  # the .cu sources compiled as plain C++ against the emulation side of simt.h
  g++ "${CXXFLAGS[@]}" -x c++ -c kernels/src/forward.cu -o "$obj/forward.o" &
  g++ "${CXXFLAGS[@]}" -x c++ -c kernels/test/kernel_tests.cu -o "$obj/kernel_tests.o" &
  g++ "${CXXFLAGS[@]}" -I"$NODE_API_INCLUDE" -c kernels/addon/addon.cpp -o "$obj/addon.o" &
  wait_all
  g++ -o "$dir/kernel-tests" "$obj/kernel_tests.o" "${objs[@]}"
  g++ -shared -o "$dir/sana_kernels.node" "$obj/addon.o" "$obj/forward.o" "${objs[@]}"
  echo "kernels: emulation build in $dir"
}

build_cuda() {
  local dir=$OUT/cuda obj=$OUT/cuda/obj
  mkdir -p "$obj"
  local gencode=()
  for a in $ARCHS; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
  local nvflags=(-std=c++17 -O3 "${gencode[@]}" -Werror all-warnings -Xptxas -v -Xcompiler -fPIC,-Wall,-Werror -Ikernels/include)
  "$NVCC" "${nvflags[@]}" -c kernels/src/forward.cu -o "$obj/forward.o" 2>"$obj/ptxas-forward.txt" &
  local p1=$!
  [ "$JOBS" = 1 ] && { wait "$p1" || { cat "$obj/ptxas-forward.txt" >&2; exit 1; }; }
  "$NVCC" "${nvflags[@]}" -c kernels/test/kernel_tests.cu -o "$obj/kernel_tests.o" 2>"$obj/ptxas-tests.txt" &
  local p2=$!
  for src in "${HOST_SOURCES[@]}"; do g++ "${CXXFLAGS[@]}" -c "$src" -o "$obj/$(basename "$src").o"; done
  g++ "${CXXFLAGS[@]}" -DSANA_CUDA_BUILD -I"$NODE_API_INCLUDE" -c kernels/addon/addon.cpp -o "$obj/addon.o"
  [ "$JOBS" = 1 ] || wait "$p1" || { cat "$obj/ptxas-forward.txt" >&2; exit 1; }
  wait "$p2" || { cat "$obj/ptxas-tests.txt" >&2; exit 1; }
  local cudalib=$CUDA_HOME/lib64
  [ -f "$cudalib/libcudart_static.a" ] || cudalib=$(dirname "$(dirname "$(readlink -f "$NVCC")")")/lib64
  local host_objs=("$obj/reference.cpp.o" "$obj/dit_host.cpp.o")
  g++ -o "$dir/kernel-tests" "$obj/kernel_tests.o" "${host_objs[@]}" -L"$cudalib" -lcudart_static -ldl -lrt -lpthread
  g++ -shared -o "$dir/sana_kernels.node" "$obj/addon.o" "$obj/forward.o" "${host_objs[@]}" -L"$cudalib" -lcudart_static -ldl -lrt -lpthread
  node kernels/ptxas-report.mjs "$obj/ptxas-forward.txt" > "$dir/ptxas-report.txt"
  echo "kernels: CUDA build (sm_${ARCHS// /, sm_}) in $dir; ptxas report $dir/ptxas-report.txt"
}

wait_all() {
  local rc=0
  for job in $(jobs -p); do wait "$job" || rc=1; done
  [ $rc = 0 ] || exit 1
}

[ $want_emu = 1 ] && build_emu
[ $want_cuda = 1 ] && build_cuda
exit 0
