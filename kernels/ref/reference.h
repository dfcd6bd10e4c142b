// Plain C++ references of every kernel and of the whole forward (test support): loops over host vectors, no SIMT.
#pragma once
#include <cstdint>
#include <vector>

#include "../src/dit_model.h"

namespace ref {

enum class Emit { Int8, Bf16, F32 };

struct Emitted {
  Emit kind;
  int rows, cols;
  std::vector<float> values;   // the row values before rounding
  std::vector<int8_t> q;       // Int8
  std::vector<float> scale;    // Int8: per row
  std::vector<uint16_t> bf16;  // Bf16: the high part
  std::vector<uint16_t> bf16Lo;  // Bf16: the low part (simt::bf16_low_part)
};

std::vector<float> normModulate(const float *x, int rows, int cols, bool normalize, float eps, const float *lnWeight,
                                const float *lnBias, const float *shift, const float *scale, int modBatchStride,
                                int rowsPerBatch);
Emitted emit(std::vector<float> values, int rows, int cols, Emit kind);
/**
 * y[M,N] = act(x · Wᵀ + b) with the activation and weight rounded as `x.kind` says (int8: the recipe's W8A8; bf16: both
 * split into hi + lo, summing hi·hi + hi·lo + lo·hi as the split-bf16 GEMM does).
 */
std::vector<float> linear(const Emitted &x, const sana::QuantizedWeight *wq, const float *w, int n, const float *bias,
                          int act);
std::vector<float> gemmF32(const float *a, const float *w, int m, int n, int k, const float *bias, int act);
/** RMSNorm with weight over each row of `cols` values (rows `ld` apart), in place, then `act`. */
void rmsNorm(float *x, int rows, int ld, int cols, const float *w, float eps, int act);
/** ReLU(Q)·(ReLU(K)ᵀ[V 1]) per sample and head, numerator / (ones column + eps); q, k, v [M, heads·d]. */
std::vector<float> linearAttention(const std::vector<float> &q, const std::vector<float> &k, const std::vector<float> &v,
                                   int batch, int tokens, int heads, int d);
std::vector<float> dwconvGlu(const std::vector<float> &u, const float *w, const float *bias, int batch, int height,
                             int width, int hidden);
std::vector<float> crossAttention(const std::vector<float> &q, const std::vector<float> &k, const std::vector<float> &v,
                                  const float *maskBias, int batch, int tokens, int captionLen, int heads, int d);
float activate(float v, int act);

/** The whole transformer forward with the rounding of `mode` (SanaDitMode or sana::kReferenceF32). */
std::vector<float> forward(const sana::HostDit &dit, const SanaDitInputs &in, int mode);

}  // namespace ref
