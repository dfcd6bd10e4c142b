// The thin SIMT layer every kernel is written against. Under nvcc it is plain CUDA; under g++ (test support, not
// product) it maps the same source onto an emulation: each thread of a block is a fiber on one host thread, and
// __syncthreads / warp collectives / mma.sync are scheduling points where the fibers meet.
//
// Kernels use only: threadIdx/blockIdx/blockDim/gridDim, __shared__ (static sizes), __syncthreads, the warp
// shuffles below, atomicAdd on float, and the two tensor-core shapes in mma_s8 / mma_bf16, whose register fragments
// follow the PTX ISA layout (emulated element by element from that layout, so a wrongly loaded fragment gives a
// wrong product here exactly as it would on the device).
#pragma once
#include <cstdint>
#include <cstddef>
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define SIMT_DEVICE __device__ __forceinline__
#define SIMT_UNROLL _Pragma("unroll")
#define SIMT_HOST_DEVICE __host__ __device__ __forceinline__
#define SIMT_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
namespace simt {
using Stream = cudaStream_t;
constexpr bool kEmulated = false;
}  // namespace simt
#else
#include <functional>
#define __global__ inline
#define __launch_bounds__(...)
#define __align__(n)
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define SIMT_DEVICE inline
#define SIMT_UNROLL
#define SIMT_HOST_DEVICE inline
// shared memory is per block; the fibers of a block share the host thread, so thread_local statics are exactly that
#define __shared__ alignas(16) static thread_local

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace simt {
using Stream = void *;
constexpr bool kEmulated = true;

struct ThreadState {
  dim3 tid, bid, bdim, gdim;
  unsigned lane, warp;
};
extern thread_local ThreadState *current;

/** Runs `body` for every thread of every block of the grid (blocks in order, threads as fibers). */
void launch(dim3 grid, dim3 block, const std::function<void()> &body);
/** Block-wide barrier. */
void syncthreads();
/** Warp-wide meeting point: every live lane of the warp deposits `bytes` at its slot, then reads back the whole warp. */
void warp_exchange(const void *mine, void *all, size_t bytes);
}  // namespace simt

#define threadIdx (simt::current->tid)
#define blockIdx (simt::current->bid)
#define blockDim (simt::current->bdim)
#define gridDim (simt::current->gdim)
#define SIMT_LAUNCH(kernel, grid, block, stream, ...) \
  simt::launch((grid), (block), [&]() { kernel(__VA_ARGS__); })

inline void __syncthreads() { simt::syncthreads(); }
inline float atomicAdd(float *p, float v) {
  float old = *p;  // fibers only switch at barriers: a read-modify-write is atomic here
  *p = old + v;
  return old;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int laneMask) {
  T all[32];
  simt::warp_exchange(&v, all, sizeof(T));
  return all[(simt::current->lane ^ laneMask) & 31];
}
template <class T>
inline T __shfl_sync(unsigned, T v, int srcLane) {
  T all[32];
  simt::warp_exchange(&v, all, sizeof(T));
  return all[srcLane & 31];
}
inline int __float2int_rn(float v) { return (int)std::nearbyint(v); }  // default FP env: round half to even
inline float __int_as_float(int v) { float f; __builtin_memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; __builtin_memcpy(&v, &f, 4); return v; }
inline float __uint_as_float(unsigned v) { float f; __builtin_memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; __builtin_memcpy(&v, &f, 4); return v; }
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
#endif

namespace simt {
constexpr unsigned kFullMask = 0xffffffffu;

SIMT_HOST_DEVICE unsigned lane_id() {
#if defined(__CUDACC__)
  return threadIdx.x & 31;
#else
  return current->lane;
#endif
}

/** bf16 kept as raw bits so host, device and emulation round identically (to nearest even, NaN kept quiet). */
SIMT_HOST_DEVICE unsigned float_bits(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
SIMT_HOST_DEVICE float bits_float(unsigned u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
SIMT_HOST_DEVICE uint16_t f32_to_bf16(float f) {
  unsigned u = float_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
SIMT_HOST_DEVICE float bf16_to_f32(uint16_t b) { return bits_float((unsigned)b << 16); }
/**
 * The split-bf16 low part: v ≈ hi + lo with hi = bf16(v) and lo = bf16(v − hi) (v − hi is exact in fp32), so the pair
 * carries 16 significant bits: |v − hi − lo| ≤ 2^-9·|lo| ≤ 2^-18·|v|.
 */
SIMT_HOST_DEVICE uint16_t bf16_low_part(float v, uint16_t hi) { return f32_to_bf16(v - bf16_to_f32(hi)); }

// ---- tensor cores ----
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (PTX ISA, "Matrix fragments for mma.m16n8k32", .s8):
//   groupID = lane >> 2, tig = lane % 4
//   A (16×32, 4 regs × 4 s8): a_i  row = groupID (+8 for i in 4..7, 12..15), col = tig*4 + (i&3) (+16 for i >= 8)
//   B (32×8,  2 regs × 4 s8): b_i  row(k) = tig*4 + (i&3) (+16 for i >= 4), col(n) = groupID
//   C/D (16×8, 4 s32):        c_i  row = groupID (+8 for i >= 2), col = tig*2 + (i&1)
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 has the same layout in bytes (2 bf16 per register instead of
// 4 s8): a_i row as above, col = tig*2 + (i&1) (+8 for i >= 4); b_i row(k) = tig*2 + (i&1) (+8 for i >= 2).
#if !defined(__CUDACC__)
namespace emu {
// element (r, k) of A and (k, n) of B for lane-held register fragments gathered from the whole warp
inline int a_s8(const uint32_t (*a)[4], int r, int k) {
  int g = r & 7, hiRow = r >> 3, hiK = k >> 4, tig = (k & 15) >> 2;
  uint32_t reg = a[g * 4 + tig][hiRow + 2 * hiK];
  return (int8_t)(reg >> (8 * (k & 3)));
}
inline int b_s8(const uint32_t (*b)[2], int k, int n) {
  int hiK = k >> 4, tig = (k & 15) >> 2;
  uint32_t reg = b[n * 4 + tig][hiK];
  return (int8_t)(reg >> (8 * (k & 3)));
}
inline float a_bf16(const uint32_t (*a)[4], int r, int k) {
  int g = r & 7, hiRow = r >> 3, hiK = k >> 3, tig = (k & 7) >> 1;
  uint32_t reg = a[g * 4 + tig][hiRow + 2 * hiK];
  return bf16_to_f32((uint16_t)(reg >> (16 * (k & 1))));
}
inline float b_bf16(const uint32_t (*b)[2], int k, int n) {
  int hiK = k >> 3, tig = (k & 7) >> 1;
  uint32_t reg = b[n * 4 + tig][hiK];
  return bf16_to_f32((uint16_t)(reg >> (16 * (k & 1))));
}
}  // namespace emu
#endif

/** d += A·B for one 16×8×32 int8 tile held in PTX fragments by the 32 lanes of a warp. */
SIMT_DEVICE void mma_s8(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDACC__)
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  uint32_t as[32][4], bs[32][2];
  warp_exchange(a, as, sizeof(a));
  warp_exchange(b, bs, sizeof(b));
  unsigned lane = current->lane, g = lane >> 2, tig = lane & 3;
  for (int i = 0; i < 4; i++) {
    int r = g + 8 * (i >> 1), n = tig * 2 + (i & 1);
    int32_t acc = 0;
    for (int k = 0; k < 32; k++) acc += emu::a_s8(as, r, k) * emu::b_s8(bs, k, n);
    d[i] += acc;
  }
#endif
}

/** d += A·B for one 16×8×16 bf16 tile (fp32 accumulate). */
SIMT_DEVICE void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDACC__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  uint32_t as[32][4], bs[32][2];
  warp_exchange(a, as, sizeof(a));
  warp_exchange(b, bs, sizeof(b));
  unsigned lane = current->lane, g = lane >> 2, tig = lane & 3;
  for (int i = 0; i < 4; i++) {
    int r = g + 8 * (i >> 1), n = tig * 2 + (i & 1);
    float acc = 0;
    for (int k = 0; k < 16; k++) acc += emu::a_bf16(as, r, k) * emu::b_bf16(bs, k, n);
    d[i] += acc;
  }
#endif
}

/** Orders shared-memory writes of a warp's lanes before their reads by other lanes. */
SIMT_DEVICE void syncwarp() {
#if defined(__CUDACC__)
  __syncwarp();
#else
  char none;
  warp_exchange(&none, nullptr, 0);
#endif
}

// ---- block reductions (blockDim.x a multiple of 32, ≤ 1024) ----
SIMT_DEVICE float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
SIMT_DEVICE float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
}  // namespace simt
