// SANA Linear-DiT kernels, written once against simt.h (CUDA under nvcc, the fiber emulation under g++).
//
// Row convention: activations are token-major [M = batch·tokens, channels], row = b·tokens + y·width + x.
// Every kernel that feeds a W8A8 GEMM ends by emitting its row as int8 with one scale per token (the shared recipe:
// s = max|row| / 127, q = round-half-even(v / s) clamped to ±127), or in the bf16 mode as split bf16: the row as two
// bf16 planes hi = bf16(v), lo = bf16(v − hi) (simt::bf16_low_part), which the GEMM multiplies as three bf16 products.
#pragma once
#include <vector>

#include "simt.h"

namespace sana {

constexpr int kBlockThreads = 128;
constexpr int kMaxCaptionTokens = 300;
constexpr float kInt8Max = 127.0f;

enum class Emit : int { Int8 = 0, Bf16 = 1, F32 = 2 };

/** Where a row-producing kernel writes its output: int8 + per-row scale, split bf16 (hi and lo planes), or fp32. */
struct RowOut {
  Emit kind;
  int8_t *q;
  float *scale;
  uint16_t *bf16;
  uint16_t *bf16Lo;
  float *f32;
  int ld;
};

enum class Act : int { None = 0, Relu = 1, Silu = 2, GeluTanh = 3 };

SIMT_DEVICE float activate(float v, Act act) {
  switch (act) {
    case Act::Relu: return v > 0.f ? v : 0.f;
    case Act::Silu: return v / (1.f + expf(-v));
    case Act::GeluTanh: return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    default: return v;
  }
}

SIMT_DEVICE float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  v = simt::warp_sum(v);
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < warps ? partial[lane] : 0.f;
    s = simt::warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

SIMT_DEVICE float block_max(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  v = simt::warp_max(v);
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < warps ? partial[lane] : 0.f;
    s = simt::warp_max(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

/**
 * Second half of every row producer: the row's values were written by this same thread to `scratch` (columns
 * threadIdx.x, +blockDim.x, ...); `absMax` is this thread's share of max|v|. Emits the row as `out` asks.
 */
SIMT_DEVICE void emit_row(const float *scratch, int cols, float absMax, int row, const RowOut &out) {
  if (out.kind == Emit::Int8) {
    const float rowMax = block_max(absMax);
    const float s = rowMax / kInt8Max;  // [1] per-token scale
    if (threadIdx.x == 0) out.scale[row] = s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      int q = s == 0.f ? 0 : __float2int_rn(scratch[c] / s);
      out.q[(size_t)row * out.ld + c] = (int8_t)(q > 127 ? 127 : (q < -127 ? -127 : q));
    }
  } else if (out.kind == Emit::Bf16) {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const uint16_t hi = simt::f32_to_bf16(scratch[c]);
      out.bf16[(size_t)row * out.ld + c] = hi;
      out.bf16Lo[(size_t)row * out.ld + c] = simt::bf16_low_part(scratch[c], hi);
    }
  }
}

// ---- (a) LayerNorm + adaLN modulate + per-token quantize, one block per row ----
struct NormModulate {
  bool normalize;          // false: the row as it is (quantizing the residual stream or an attention output)
  float eps;
  const float *lnWeight;   // [cols] or null (elementwise_affine = false)
  const float *lnBias;
  const float *shift;      // [B, ·] rows of the modulation table, or null
  const float *scale;      // adds (1 + scale)
  int modBatchStride;      // floats between batch rows of shift / scale
  int rowsPerBatch;        // tokens per sample
};

__global__ void norm_modulate_emit(const float *__restrict__ x, int rows, int cols, NormModulate nm, RowOut out,
                                   float *__restrict__ scratch) {
  const int row = blockIdx.x;
  const float *xr = x + (size_t)row * cols;  // [cols]
  float *sr = out.kind == Emit::F32 ? out.f32 + (size_t)row * out.ld : scratch + (size_t)row * cols;
  float mean = 0.f, rstd = 1.f;
  if (nm.normalize) {
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    mean = block_sum(s) / cols;
    float v = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) v += (xr[c] - mean) * (xr[c] - mean);
    rstd = rsqrtf(block_sum(v) / cols + nm.eps);
  }
  const int b = row / nm.rowsPerBatch;
  const float *shift = nm.shift ? nm.shift + (size_t)b * nm.modBatchStride : nullptr;
  const float *scale = nm.scale ? nm.scale + (size_t)b * nm.modBatchStride : nullptr;
  float absMax = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float y = (xr[c] - mean) * rstd;
    if (nm.lnWeight) y = y * nm.lnWeight[c] + (nm.lnBias ? nm.lnBias[c] : 0.f);
    if (scale) y = y * (1.f + scale[c]) + shift[c];
    sr[c] = y;
    absMax = fmaxf(absMax, fabsf(y));
  }
  (void)rows;
  emit_row(sr, cols, absMax, row, out);
}

// ---- (b) W8A8 / split-bf16 GEMM on tensor cores with fused epilogues ----
// C[M,N] = A[M,K] · B[N,K]ᵀ (A row-major activations, B the checkpoint's [out, in] weight as it is: the "col"
// operand of mma.row.col). Block tile 64×64, 64 bytes of K per stage (int8: 2 × k32 steps; bf16: 2 × k16 steps),
// 4 warps each 32×32 = 2 (m16) × 4 (n8) mma tiles.
// bf16 is error-compensated ("3xTF32" with bf16 halves): each operand comes as hi + lo planes and the fp32
// accumulator takes A_hi·B_hi + A_hi·B_lo + A_lo·B_hi (A_lo·B_lo, ≤ 2^-18 relative, is dropped). B_lo is null when
// the weights are bf16 numbers already (a bf16 checkpoint): then its product is zero and skipped.
constexpr int kTileM = 64, kTileN = 64, kTileKBytes = 64, kSmemStride = kTileKBytes + 16;  // +16: conflict-free

enum class Epi : int { Store = 0, GateResidual = 1, QkvLinearAttention = 2 };

struct GemmEpilogue {
  const float *rowScale;   // int8: s_x[M]
  const float *colScale;   // int8: s_w[N]
  const float *bias;       // [N] or null
  Act act;
  float *out;              // Store: [M, ldo]; GateResidual: the residual stream x [M, ldo] (+=)
  int ldo;
  const float *gate;       // GateResidual: [B, ·] rows (gate_msa / gate_mlp), null for gate 1
  int gateBatchStride;
  int rowsPerBatch;
  // QkvLinearAttention: columns [0, qCols) are Q (stored ReLU'd to `out`), the rest are per-tile groups of heads laid
  // out [k_h | v_h] (2·headDim columns each); those never leave the block: ReLU(K)ᵀ[V 1] is accumulated into kv.
  int qCols;
  float *kv;               // [B, heads, headDim, headDim + 1] fp32, zeroed before the GEMM
  int heads, headDim;
};

SIMT_DEVICE void load_tile(unsigned char (*tile)[kSmemStride], const unsigned char *__restrict__ src, int rows,
                           int rowBytes, int r0, int kb) {
  // 64 rows × 64 bytes = 256 chunks of 16 bytes, two per thread; tails (rows, K) filled with zeros
  const bool aligned = (rowBytes & 15) == 0;
  for (int chunk = threadIdx.x; chunk < kTileM * kTileKBytes / 16; chunk += blockDim.x) {
    const int r = chunk >> 2, cb = (chunk & 3) * 16;
    const int gr = r0 + r, gk = kb + cb;
    unsigned char *dst = &tile[r][cb];
    if (gr < rows && aligned && gk + 16 <= rowBytes) {
      *(uint4 *)dst = *(const uint4 *)(src + (size_t)gr * rowBytes + gk);
    } else {
      for (int i = 0; i < 16; i++) dst[i] = (gr < rows && gk + i < rowBytes) ? src[(size_t)gr * rowBytes + gk + i] : 0;
    }
  }
}

/**
 * Row order of the fused QKV weight: for each device row, the source row in the stacked [W_q; W_k; W_v] (3D rows),
 * or -1 for a zero pad row. Q first, padded to whole 64-column tiles; then per tile 64 / (2d) heads as [k_h | v_h].
 */
inline std::vector<int> qkvRowLayout(int inner, int heads, int headDim) {
  const int qCols = (inner + kTileN - 1) / kTileN * kTileN, headsPerTile = kTileN / (2 * headDim);
  const int kvTiles = (heads + headsPerTile - 1) / headsPerTile;
  std::vector<int> rows(qCols + kvTiles * kTileN, -1);
  for (int r = 0; r < inner; r++) rows[r] = r;
  for (int h = 0; h < heads; h++)
    for (int j = 0; j < headDim; j++) {
      const int base = qCols + (h / headsPerTile) * kTileN + (h % headsPerTile) * 2 * headDim;
      rows[base + j] = inner + h * headDim + j;
      rows[base + headDim + j] = 2 * inner + h * headDim + j;
    }
  return rows;
}

/** A warp's A fragments (2 m16 tiles) and B fragments (4 n8 tiles) of one 32-byte K step from the shared tiles. */
SIMT_DEVICE void load_fragments_a(uint32_t (&a)[2][4], const unsigned char (*tile)[kSmemStride], int wm, int ks, int g, int tig) {
  SIMT_UNROLL
  for (int mi = 0; mi < 2; mi++) {
    const int r = wm + mi * 16 + g;
    a[mi][0] = *(const uint32_t *)&tile[r][ks + tig * 4];
    a[mi][1] = *(const uint32_t *)&tile[r + 8][ks + tig * 4];
    a[mi][2] = *(const uint32_t *)&tile[r][ks + 16 + tig * 4];
    a[mi][3] = *(const uint32_t *)&tile[r + 8][ks + 16 + tig * 4];
  }
}
SIMT_DEVICE void load_fragments_b(uint32_t (&b)[4][2], const unsigned char (*tile)[kSmemStride], int wn, int ks, int g, int tig) {
  SIMT_UNROLL
  for (int ni = 0; ni < 4; ni++) {
    const int n = wn + ni * 8 + g;
    b[ni][0] = *(const uint32_t *)&tile[n][ks + tig * 4];
    b[ni][1] = *(const uint32_t *)&tile[n][ks + 16 + tig * 4];
  }
}
template <bool kInt8, class Acc>
SIMT_DEVICE void mma_warp_tile(Acc (&acc)[2][4][4], const uint32_t (&a)[2][4], const uint32_t (&b)[4][2]) {
  SIMT_UNROLL
  for (int mi = 0; mi < 2; mi++)
    SIMT_UNROLL
    for (int ni = 0; ni < 4; ni++) {
      if constexpr (kInt8) simt::mma_s8(acc[mi][ni], a[mi], b[ni]);
      else simt::mma_bf16(acc[mi][ni], a[mi], b[ni]);
    }
}

/** aLo / bLo: the bf16 low planes (bf16 mode; bLo may be null), null in int8 mode. */
template <bool kInt8, Epi kEpi>
__global__ void __launch_bounds__(kBlockThreads, 4) gemm_tc(const void *__restrict__ aPtr, const void *__restrict__ aLoPtr,
                                                         const void *__restrict__ bPtr, const void *__restrict__ bLoPtr,
                                                         int M, int N, int K, GemmEpilogue ep) {
  using Acc = typename std::conditional<kInt8, int32_t, float>::type;
  constexpr int kLoRows = kInt8 ? 1 : kTileM;  // the low-part tiles exist in the bf16 instantiation only
  __shared__ __align__(16) unsigned char As[kTileM][kSmemStride];
  __shared__ __align__(16) unsigned char Bs[kTileN][kSmemStride];
  __shared__ __align__(16) unsigned char AsLo[kLoRows][kSmemStride];
  __shared__ __align__(16) unsigned char BsLo[kLoRows][kSmemStride];
  const unsigned char *A = (const unsigned char *)aPtr, *ALo = (const unsigned char *)aLoPtr;
  const unsigned char *B = (const unsigned char *)bPtr, *BLo = (const unsigned char *)bLoPtr;
  const int rowBytes = kInt8 ? K : 2 * K;
  const int m0 = blockIdx.y * kTileM, n0 = blockIdx.x * kTileN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;

  Acc acc[2][4][4];
  SIMT_UNROLL
  for (int mi = 0; mi < 2; mi++)
    SIMT_UNROLL
    for (int ni = 0; ni < 4; ni++)
      SIMT_UNROLL
      for (int i = 0; i < 4; i++) acc[mi][ni][i] = 0;

  for (int kb = 0; kb < rowBytes; kb += kTileKBytes) {
    load_tile(As, A, M, rowBytes, m0, kb);
    load_tile(Bs, B, N, rowBytes, n0, kb);
    if constexpr (!kInt8) {
      load_tile(AsLo, ALo, M, rowBytes, m0, kb);
      if (BLo) load_tile(BsLo, BLo, N, rowBytes, n0, kb);
    }
    __syncthreads();
    SIMT_UNROLL
    for (int ks = 0; ks < kTileKBytes; ks += 32) {
      uint32_t a[2][4], b[4][2];
      load_fragments_a(a, As, wm, ks, g, tig);
      load_fragments_b(b, Bs, wn, ks, g, tig);
      mma_warp_tile<kInt8>(acc, a, b);
      if constexpr (!kInt8) {
        if (BLo) {  // A_hi·B_lo
          uint32_t bLo[4][2];
          load_fragments_b(bLo, BsLo, wn, ks, g, tig);
          mma_warp_tile<kInt8>(acc, a, bLo);
        }
        load_fragments_a(a, AsLo, wm, ks, g, tig);  // A_lo·B_hi
        mma_warp_tile<kInt8>(acc, a, b);
      }
    }
    __syncthreads();
  }

  // epilogue: dequantize (int8), bias, then the layer's tail
  auto value = [&](int mi, int ni, int i, int &row, int &col) -> float {
    row = m0 + wm + mi * 16 + g + 8 * (i >> 1);
    col = n0 + wn + ni * 8 + tig * 2 + (i & 1);
    if (row >= M || col >= N) return 0.f;
    float v = kInt8 ? (float)acc[mi][ni][i] * ep.rowScale[row] * ep.colScale[col] : (float)acc[mi][ni][i];
    if (ep.bias) v += ep.bias[col];
    return v;
  };

  if constexpr (kEpi == Epi::QkvLinearAttention) {
    if (n0 >= ep.qCols) {
      // this tile holds [k_h | v_h] for 64 / (2·headDim) heads: stage ReLU(K), V in shared memory, reduce over rows
      __shared__ float kvTile[kTileM][kTileN + 1];
      SIMT_UNROLL
      for (int mi = 0; mi < 2; mi++)
        SIMT_UNROLL
        for (int ni = 0; ni < 4; ni++)
          SIMT_UNROLL
          for (int i = 0; i < 4; i++) {
            int row, col;
            float v = value(mi, ni, i, row, col);
            const int local = col - n0;
            if ((local % (2 * ep.headDim)) < ep.headDim) v = v > 0.f ? v : 0.f;  // K half: ReLU
            kvTile[row - m0][local] = row < M ? v : 0.f;
          }
      __syncthreads();
      const int d = ep.headDim, headsPerTile = kTileN / (2 * d);
      const int firstHead = (n0 - ep.qCols) / (2 * d);
      const int stateSize = d * (d + 1);
      for (int idx = threadIdx.x; idx < headsPerTile * stateSize; idx += blockDim.x) {
        const int hh = idx / stateSize, ij = idx % stateSize, i = ij / (d + 1), j = ij % (d + 1);
        const int h = firstHead + hh;
        if (h >= ep.heads) continue;
        const int kc = hh * 2 * d + i, vc = hh * 2 * d + d + j;
        float sum = 0.f;
        int batch = m0 / ep.rowsPerBatch;
        for (int r = 0; r < kTileM && m0 + r < M; r++) {
          const int rb = (m0 + r) / ep.rowsPerBatch;
          if (rb != batch) {  // the tile crosses a sample boundary: flush this sample's share
            atomicAdd(&ep.kv[(((size_t)batch * ep.heads + h) * d + i) * (d + 1) + j], sum);
            sum = 0.f;
            batch = rb;
          }
          sum += kvTile[r][kc] * (j < d ? kvTile[r][vc] : 1.f);
        }
        atomicAdd(&ep.kv[(((size_t)batch * ep.heads + h) * d + i) * (d + 1) + j], sum);
      }
      return;
    }
  }

  SIMT_UNROLL

  for (int mi = 0; mi < 2; mi++)
    SIMT_UNROLL
    for (int ni = 0; ni < 4; ni++)
      SIMT_UNROLL
      for (int i = 0; i < 4; i++) {
        int row, col;
        float v = value(mi, ni, i, row, col);
        if (row >= M || col >= N) continue;
        if constexpr (kEpi == Epi::GateResidual) {
          const float gate = ep.gate ? ep.gate[(size_t)(row / ep.rowsPerBatch) * ep.gateBatchStride + col] : 1.f;
          ep.out[(size_t)row * ep.ldo + col] += gate * v;
        } else if constexpr (kEpi == Epi::QkvLinearAttention) {
          if (col < ep.ldo) ep.out[(size_t)row * ep.ldo + col] = v > 0.f ? v : 0.f;  // ReLU(Q); pad columns dropped
        } else {
          ep.out[(size_t)row * ep.ldo + col] = activate(v, ep.act);
        }
      }
}

// ---- fp32 SIMT GEMM for the high-precision layers (patch embed, timestep and caption MLPs, cross K/V, proj_out) ----
constexpr int kF32Tile = 64, kF32K = 16;

__global__ void __launch_bounds__(256) gemm_f32(const float *__restrict__ A, const float *__restrict__ B, int M, int N,
                                                int K, const float *__restrict__ bias, Act act, float *__restrict__ C,
                                                int ldc) {
  __shared__ float As[kF32K][kF32Tile + 1];
  __shared__ float Bs[kF32K][kF32Tile + 1];
  const int m0 = blockIdx.y * kF32Tile, n0 = blockIdx.x * kF32Tile;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;  // 16×16 threads, 4×4 outputs each
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kF32K) {
    for (int e = threadIdx.x; e < kF32Tile * kF32K; e += blockDim.x) {
      const int r = e / kF32K, k = e % kF32K;
      As[k][r] = (m0 + r < M && k0 + k < K) ? A[(size_t)(m0 + r) * K + k0 + k] : 0.f;
      Bs[k][r] = (n0 + r < N && k0 + k < K) ? B[(size_t)(n0 + r) * K + k0 + k] : 0.f;
    }
    __syncthreads();
    for (int k = 0; k < kF32K; k++)
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] += As[k][ty * 4 + i] * Bs[k][tx * 4 + j];
    __syncthreads();
  }
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) {
      const int r = m0 + ty * 4 + i, c = n0 + tx * 4 + j;
      if (r < M && c < N) C[(size_t)r * ldc + c] = activate(acc[i][j] + (bias ? bias[c] : 0.f), act);
    }
}

// ---- (c) linear attention: ReLU(Q)·KV divided by the ones column + eps, then emitted for the out projection ----
__global__ void linear_attention_divide(const float *__restrict__ q, int ldq, const float *__restrict__ kv, int rows, int heads,
                                        int headDim, int rowsPerBatch, RowOut out, float *__restrict__ scratch) {
  const int row = blockIdx.x, cols = heads * headDim, d = headDim;
  const float *qr = q + (size_t)row * ldq;  // ReLU'd by the QKV epilogue (or by the qk-norm pass)
  const float *kvb = kv + (size_t)(row / rowsPerBatch) * heads * d * (d + 1);
  float *sr = scratch + (size_t)row * cols;
  float absMax = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const int h = c / d, j = c % d;
    const float *state = kvb + (size_t)h * d * (d + 1);  // [d, d+1]
    float num = 0.f, den = 0.f;
    for (int i = 0; i < d; i++) {
      const float qi = qr[h * d + i];
      num += qi * state[i * (d + 1) + j];
      den += qi * state[i * (d + 1) + d];
    }
    const float v = num / (den + 1e-15f);
    sr[c] = v;
    absMax = fmaxf(absMax, fabsf(v));
  }
  (void)rows;
  emit_row(sr, cols, absMax, row, out);
}

/**
 * The linear-attention state without the fused epilogue (qk_norm configs, whose K needs its whole row normalized
 * before ReLU): kv[b, h, i, j] += Σ_n ReLU(K)[n, h·d+i] · [V 1][n, h·d+j] over one chunk of a sample's tokens per
 * block (grid: batch·heads × token chunks); k is ReLU'd already, kv zeroed before.
 */
constexpr int kStateTokensPerBlock = 256;

__global__ void linear_attention_state(const float *__restrict__ k, const float *__restrict__ v, int ld, int tokens,
                                       int heads, int headDim, float *__restrict__ kv) {
  const int b = blockIdx.x / heads, h = blockIdx.x % heads, d = headDim;
  const int n0 = blockIdx.y * kStateTokensPerBlock, n1 = n0 + kStateTokensPerBlock < tokens ? n0 + kStateTokensPerBlock : tokens;
  for (int ij = threadIdx.x; ij < d * (d + 1); ij += blockDim.x) {
    const int i = ij / (d + 1), j = ij % (d + 1);
    float sum = 0.f;
    for (int n = n0; n < n1; n++) {
      const size_t row = ((size_t)b * tokens + n) * ld + h * d;
      sum += k[row + i] * (j < d ? v[row + j] : 1.f);
    }
    atomicAdd(&kv[(((size_t)b * heads + h) * d + i) * (d + 1) + j], sum);
  }
}

// ---- (d) Mix-FFN: depthwise 3×3 (+bias) over SiLU(inverted conv), GLU value·SiLU(gate), emitted for conv_point ----
__global__ void dwconv_glu_emit(const float *__restrict__ u, const float *__restrict__ w, const float *__restrict__ bias,
                                int rows, int height, int width, int hidden, RowOut out, float *__restrict__ scratch) {
  const int row = blockIdx.x, tokens = height * width;
  const int b = row / tokens, y = (row % tokens) / width, x = row % width;
  const int ch2 = 2 * hidden;
  float *sr = scratch + (size_t)row * hidden;
  float absMax = 0.f;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float val = bias[c], gate = bias[hidden + c];
    for (int ky = 0; ky < 3; ky++) {
      const int yy = y + ky - 1;
      if (yy < 0 || yy >= height) continue;
      for (int kx = 0; kx < 3; kx++) {
        const int xx = x + kx - 1;
        if (xx < 0 || xx >= width) continue;
        const float *ur = u + ((size_t)b * tokens + yy * width + xx) * ch2;  // [2F]
        val += w[c * 9 + ky * 3 + kx] * ur[c];
        gate += w[(hidden + c) * 9 + ky * 3 + kx] * ur[hidden + c];
      }
    }
    const float v = val * (gate / (1.f + expf(-gate)));
    sr[c] = v;
    absMax = fmaxf(absMax, fabsf(v));
  }
  (void)rows;
  emit_row(sr, hidden, absMax, row, out);
}

// ---- (e) cross-attention over the caption: one warp per (token, head), masked softmax in fp32 ----
__global__ void __launch_bounds__(kBlockThreads) cross_attention(const float *__restrict__ q, const float *__restrict__ k,
                                                                 const float *__restrict__ v,
                                                                 const float *__restrict__ maskBias, int rows, int heads,
                                                                 int headDim, int captionLen, int rowsPerBatch,
                                                                 float *__restrict__ out) {
  __shared__ float probs[kBlockThreads / 32][kMaxCaptionTokens];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x, h = blockIdx.y * (kBlockThreads / 32) + warp;
  if (h >= heads) return;  // warp-uniform; no block barrier below
  const int b = row / rowsPerBatch, dx = heads * headDim;
  const float *qh = q + (size_t)row * dx + h * headDim;          // [d]
  const float *kb = k + (size_t)b * captionLen * dx + h * headDim;  // [L, ·]
  const float *vb = v + (size_t)b * captionLen * dx + h * headDim;
  const float *mb = maskBias + (size_t)b * captionLen;
  const float scale = rsqrtf((float)headDim);
  float m = -INFINITY;
  for (int l = lane; l < captionLen; l += 32) {
    float s = 0.f;
    for (int i = 0; i < headDim; i++) s += qh[i] * kb[(size_t)l * dx + i];
    s = s * scale + mb[l];
    probs[warp][l] = s;
    m = fmaxf(m, s);
  }
  m = simt::warp_max(m);
  float sum = 0.f;
  for (int l = lane; l < captionLen; l += 32) {
    const float e = expf(probs[warp][l] - m);
    probs[warp][l] = e;
    sum += e;
  }
  sum = simt::warp_sum(sum);
  simt::syncwarp();  // every lane's probabilities, written above, are read by all lanes below
  const float inv = 1.f / sum;
  for (int j = lane; j < headDim; j += 32) {
    float o = 0.f;
    for (int l = 0; l < captionLen; l++) o += probs[warp][l] * vb[(size_t)l * dx + j];
    out[(size_t)row * dx + h * headDim + j] = o * inv;
  }
  (void)rows;
}

// ---- small elementwise kernels of the edges ----
/** RMSNorm with weight, then `act`, one block per row of `cols` values (rows `ld` apart); y may be x (each thread
 * rewrites only the elements it read). */
__global__ void rms_norm(const float *x, int ld, const float *__restrict__ w, int cols, float eps, Act act, float *y) {
  const int row = blockIdx.x;
  const float *xr = x + (size_t)row * ld;
  float s = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c] * xr[c];
  const float r = rsqrtf(block_sum(s) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) y[(size_t)row * ld + c] = activate(xr[c] * r * w[c], act);
}

/** y[i] = act(x[i]) over n elements. */
__global__ void elementwise_act(const float *__restrict__ x, float *__restrict__ y, int n, Act act) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = activate(x[i], act);
}

/** mod[b, r, c] = table[r, c] + t[b·tBatch + r·tRow + c] (adaLN: table [rows, D] + timestep embedding). */
__global__ void modulation_table(const float *__restrict__ table, const float *__restrict__ t, int batch, int tableRows,
                                 int cols, int tBatch, int tRow, float *__restrict__ mod) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= batch * tableRows * cols) return;
  const int c = i % cols, r = (i / cols) % tableRows, b = i / (cols * tableRows);
  mod[i] = table[r * cols + c] + t[(size_t)b * tBatch + r * tRow + c];
}

/** [B, C, H, W] latent → patches [B·(H/p)·(W/p), C·p·p] in the conv weight's (c, ky, kx) order. */
__global__ void patchify(const float *__restrict__ x, int batch, int channels, int height, int width, int p,
                         float *__restrict__ patches) {
  const int h = height / p, w = width / p, cols = channels * p * p;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= batch * h * w * cols) return;
  const int col = i % cols, tok = i / cols;
  const int b = tok / (h * w), ty = (tok % (h * w)) / w, tx = tok % w;
  const int c = col / (p * p), ky = (col / p) % p, kx = col % p;
  patches[i] = x[(((size_t)b * channels + c) * height + ty * p + ky) * width + tx * p + kx];
}

/** x[b, n, :] += pos[n, :] */
__global__ void add_position(float *__restrict__ x, const float *__restrict__ pos, int rows, int tokensCols) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < rows) x[i] += pos[i % tokensCols];
}

/** tokens [B·h·w, p·p·C] with channel order (py, px, c) → image [B, C, h·p, w·p] */
__global__ void unpatchify(const float *__restrict__ tokens, int batch, int channels, int h, int w, int p,
                           float *__restrict__ image) {
  const int H = h * p, W = w * p;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= batch * channels * H * W) return;
  const int X = i % W, Y = (i / W) % H, c = (i / (W * H)) % channels, b = i / (W * H * channels);
  const int tok = (b * h + Y / p) * w + X / p;
  image[i] = tokens[(size_t)tok * p * p * channels + ((Y % p) * p + X % p) * channels + c];
}

}  // namespace sana
