// Every kernel against its plain C++ reference on small odd shapes (row / column / K tails, masks, sample
// boundaries inside a tile). Built twice from this one source: g++ + the SIMT emulation (CI, here) and nvcc (on a
// device, by kernels/device/run.sh). Prints one line per check and exits non-zero on any failure.
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../ref/reference.h"
#include "../src/device_memory.h"
#include "../src/kernels.cuh"

using namespace sana;

namespace {
int failures = 0;
std::mt19937 rng(1234);

std::vector<float> randn(size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto &x : v) x = d(rng);
  return v;
}

template <class T>
std::vector<T> download(const Buffer &b, size_t n) {
  std::vector<T> v(n);
  toHost(v.data(), b.ptr, n * sizeof(T), nullptr);
#if defined(__CUDACC__)
  check(cudaDeviceSynchronize(), "download");
#endif
  return v;
}

/** max |a - b| / max |b| must stay under `limit`. */
void expectClose(const std::string &what, const std::vector<float> &got, const std::vector<float> &want, double limit) {
  double maxErr = 0, maxRef = 0;
  bool sizeOk = got.size() == want.size();
  for (size_t i = 0; sizeOk && i < got.size(); i++) {
    maxErr = std::max(maxErr, std::fabs((double)got[i] - want[i]));
    maxRef = std::max(maxRef, std::fabs((double)want[i]));
    if (!std::isfinite(got[i])) maxErr = INFINITY;
  }
  const double rel = maxRef > 0 ? maxErr / maxRef : maxErr;
  const bool ok = sizeOk && rel <= limit;
  failures += !ok;
  std::printf("%-4s %-58s rel err %.3e (limit %.1e)\n", ok ? "ok" : "FAIL", what.c_str(), rel, limit);
}

/** int8 rows: the dequantized values agree within one step of either scale (ties may round either way). */
void expectInt8Rows(const std::string &what, const std::vector<int8_t> &q, const std::vector<float> &s, const ref::Emitted &want) {
  double worst = 0;
  for (int r = 0; r < want.rows; r++) {
    const double step = std::max(s[r], want.scale[r]);
    for (int c = 0; c < want.cols; c++) {
      const size_t i = (size_t)r * want.cols + c;
      const double diff = std::fabs((double)q[i] * s[r] - (double)want.q[i] * want.scale[r]);
      worst = std::max(worst, step > 0 ? diff / step : diff);
    }
    worst = std::max(worst, std::fabs((double)s[r] - want.scale[r]) / std::max(1e-30, (double)want.scale[r]) * 1e3);
  }
  const bool ok = worst <= 1.0 + 1e-3;
  failures += !ok;
  std::printf("%-4s %-58s worst |Δ| %.3f int8 steps (limit 1)\n", ok ? "ok" : "FAIL", what.c_str(), worst);
}

Buffer up(const std::vector<float> &v) { return upload(v); }

void testNormModulate() {
  const int rows = 7, cols = 45, perBatch = 3;  // 3 samples, the last one short
  const auto x = randn(rows * cols, 2.f), w = randn(cols), b = randn(cols), mod = randn(3 * 2 * cols, 0.5f);
  Buffer dx = up(x), dw = up(w), db = up(b), dm = up(mod), q(rows * cols * 2), qLo(rows * cols * 2), s(rows * 4), scratch(rows * cols * 4),
      f(rows * cols * 4);
  for (bool normalize : {true, false}) {
    const float *shift = normalize ? dm.as<float>() : nullptr, *scale = normalize ? dm.as<float>() + cols : nullptr;
    NormModulate nm{normalize, 1e-6f, normalize ? dw.as<float>() : nullptr, normalize ? db.as<float>() : nullptr, shift, scale, 2 * cols, perBatch};
    const auto want = ref::normModulate(x.data(), rows, cols, normalize, 1e-6f, normalize ? w.data() : nullptr, normalize ? b.data() : nullptr,
                                        normalize ? mod.data() : nullptr, normalize ? mod.data() + cols : nullptr, 2 * cols, perBatch);
    const std::string tag = normalize ? "norm+modulate" : "row as is";
    SIMT_LAUNCH(norm_modulate_emit, rows, kBlockThreads, nullptr, dx.as<float>(), rows, cols, nm,
                (RowOut{Emit::F32, nullptr, nullptr, nullptr, nullptr, f.as<float>(), cols}), scratch.as<float>());
    expectClose("(a) " + tag + " → fp32 [7×45]", download<float>(f, rows * cols), want, 1e-5);
    SIMT_LAUNCH(norm_modulate_emit, rows, kBlockThreads, nullptr, dx.as<float>(), rows, cols, nm,
                (RowOut{Emit::Int8, q.as<int8_t>(), s.as<float>(), nullptr, nullptr, nullptr, cols}), scratch.as<float>());
    expectInt8Rows("(a) " + tag + " → int8 per token", download<int8_t>(q, rows * cols), download<float>(s, rows),
                   ref::emit(want, rows, cols, ref::Emit::Int8));
    SIMT_LAUNCH(norm_modulate_emit, rows, kBlockThreads, nullptr, dx.as<float>(), rows, cols, nm,
                (RowOut{Emit::Bf16, nullptr, nullptr, q.as<uint16_t>(), qLo.as<uint16_t>(), nullptr, cols}), scratch.as<float>());
    const auto hi = download<uint16_t>(q, rows * cols), lo = download<uint16_t>(qLo, rows * cols);
    std::vector<float> got(hi.size()), gotHi(hi.size()), wantHi(hi.size());
    const auto e = ref::emit(want, rows, cols, ref::Emit::Bf16);
    for (size_t i = 0; i < hi.size(); i++) {
      got[i] = simt::bf16_to_f32(hi[i]) + simt::bf16_to_f32(lo[i]);
      gotHi[i] = simt::bf16_to_f32(hi[i]), wantHi[i] = simt::bf16_to_f32(e.bf16[i]);
    }
    expectClose("(a) " + tag + " → bf16 high part", gotHi, wantHi, 8e-3);
    // hi + lo keeps 16 significant bits: 2^-17 of each value, and the fp32 row itself differs from the double one
    expectClose("(a) " + tag + " → split bf16 hi + lo", got, want, 1e-5);
  }
}

/** The bf16 planes of an emitted matrix on the device. */
Buffer uploadBf16(const std::vector<uint16_t> &v) { return upload(v.data(), v.size() * 2); }

/**
 * One GEMM case: activations emitted by the reference, the device computes with the same bytes. bf16: split
 * operands; `bf16Weights` rounds the weights to bf16 first (a bf16 checkpoint: no weight low plane, two products).
 */
template <Epi kEpi>
void gemmCase(bool int8, int M, int N, int K, int perBatch, Act act, const std::string &what, bool bf16Weights = false) {
  const auto a = randn((size_t)M * K), bias = randn(N), gate = randn((size_t)ceilDiv(M, perBatch) * N);
  auto w = randn((size_t)N * K, 0.2f);
  if (bf16Weights)
    for (auto &v : w) v = simt::bf16_to_f32(simt::f32_to_bf16(v));
  const auto x0 = randn((size_t)M * N);
  const ref::Emitted ea = ref::emit(a, M, K, int8 ? ref::Emit::Int8 : ref::Emit::Bf16);
  QuantizedWeight wq;
  Buffer dw, dwLo, dws, daLo;
  if (int8) {
    const ref::Emitted ew = ref::emit(w, N, K, ref::Emit::Int8);  // per output channel = per row of W
    wq = QuantizedWeight{ew.q, ew.scale, N, K};
    dw = upload(ew.q.data(), ew.q.size());
    dws = upload(ew.scale);
  } else {
    const ref::Emitted ew = ref::emit(w, N, K, ref::Emit::Bf16);
    dw = uploadBf16(ew.bf16);
    if (!bf16Weights) dwLo = uploadBf16(ew.bf16Lo);
    daLo = uploadBf16(ea.bf16Lo);
  }
  Buffer da = int8 ? upload(ea.q.data(), ea.q.size()) : uploadBf16(ea.bf16);
  Buffer das = int8 ? upload(ea.scale) : Buffer(4), db = up(bias), dg = up(gate), out = up(x0);
  GemmEpilogue ep{};
  ep.rowScale = das.as<float>();
  ep.colScale = dws.as<float>();
  ep.bias = db.as<float>();
  ep.act = act;
  ep.out = out.as<float>();
  ep.ldo = N;
  ep.gate = dg.as<float>();
  ep.gateBatchStride = N;
  ep.rowsPerBatch = perBatch;
  auto kernel = int8 ? gemm_tc<true, kEpi> : gemm_tc<false, kEpi>;
  SIMT_LAUNCH(kernel, dim3(ceilDiv(N, kTileN), ceilDiv(M, kTileM)), kBlockThreads, nullptr, da.ptr, daLo.ptr, dw.ptr, dwLo.ptr, M, N, K, ep);
  const auto tail = [&](std::vector<float> y) {
    if (kEpi == Epi::GateResidual)
      for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) y[(size_t)r * N + c] = x0[(size_t)r * N + c] + gate[(size_t)(r / perBatch) * N + c] * y[(size_t)r * N + c];
    return y;
  };
  const int refAct = kEpi == Epi::Store ? (int)act : 0;
  const auto got = download<float>(out, (size_t)M * N);
  expectClose(what, got, tail(ref::linear(ea, int8 ? &wq : nullptr, w.data(), N, bias.data(), refAct)), int8 ? 2e-6 : 2e-5);
  // split bf16 against unrounded fp32: each operand within 2^-18 relative, the dropped lo·lo product 2^-18, summed
  // over K terms of both signs (relative to the largest output, not to each term)
  if (!int8) expectClose(what + " vs fp32", got, tail(ref::gemmF32(a.data(), w.data(), M, N, K, bias.data(), refAct)), 1e-4);
}

void testGemm() {
  for (bool int8 : {true, false}) {
    const std::string t = int8 ? "(b) W8A8 " : "(b) bf16 ";
    gemmCase<Epi::Store>(int8, 70, 72, 100, 70, Act::None, t + "store M70 N72 K100 (all tails, unaligned K)");
    gemmCase<Epi::Store>(int8, 129, 64, 256, 129, Act::Silu, t + "store+SiLU M129 N64 K256 (vector loads)");
    gemmCase<Epi::GateResidual>(int8, 75, 40, 64, 25, Act::None, t + "gate×residual M75 N40 K64, 3 samples");
  }
  gemmCase<Epi::Store>(false, 70, 72, 100, 70, Act::None, "(b) bf16 store, bf16 weights (no weight low plane)", true);
}

/** QKV GEMM with ReLU + the fused K/V state, then the divide kernel, against the reference linear attention. */
void testLinearAttention(bool int8, int batch, int tokens, int heads, int d) {
  const int D = heads * d, M = batch * tokens;
  const auto a = randn((size_t)M * D), wq = randn((size_t)D * D, 0.3f), wk = randn((size_t)D * D, 0.3f), wv = randn((size_t)D * D, 0.3f);
  const ref::Emitted ea = ref::emit(a, M, D, int8 ? ref::Emit::Int8 : ref::Emit::Bf16);
  const auto layout = qkvRowLayout(D, heads, d);
  const int N = (int)layout.size();
  std::vector<float> fused((size_t)N * D, 0.f);
  for (int r = 0; r < N; r++)
    if (layout[r] >= 0) {
      const auto &src = layout[r] < D ? wq : layout[r] < 2 * D ? wk : wv;
      for (int c = 0; c < D; c++) fused[(size_t)r * D + c] = src[(size_t)(layout[r] % D) * D + c];
    }
  const ref::Emitted ew = ref::emit(fused, N, D, int8 ? ref::Emit::Int8 : ref::Emit::Bf16);
  Buffer da = int8 ? upload(ea.q.data(), ea.q.size()) : uploadBf16(ea.bf16), daLo = int8 ? Buffer() : uploadBf16(ea.bf16Lo);
  Buffer dw = int8 ? upload(ew.q.data(), ew.q.size()) : uploadBf16(ew.bf16), dwLo = int8 ? Buffer() : uploadBf16(ew.bf16Lo);
  Buffer das = int8 ? upload(ea.scale) : Buffer(4), dws = int8 ? upload(ew.scale) : Buffer(4);
  Buffer q((size_t)M * D * 4), kv((size_t)batch * heads * d * (d + 1) * 4), out((size_t)M * D * 4), scratch((size_t)M * D * 4);
  deviceZero(kv.ptr, kv.bytes, nullptr);
  GemmEpilogue ep{};
  ep.rowScale = das.as<float>();
  ep.colScale = dws.as<float>();
  ep.out = q.as<float>();
  ep.ldo = D;
  ep.rowsPerBatch = tokens;
  ep.qCols = roundUp(D, kTileN);
  ep.kv = kv.as<float>();
  ep.heads = heads;
  ep.headDim = d;
  auto kernel = int8 ? gemm_tc<true, Epi::QkvLinearAttention> : gemm_tc<false, Epi::QkvLinearAttention>;
  SIMT_LAUNCH(kernel, dim3(N / kTileN, ceilDiv(M, kTileM)), kBlockThreads, nullptr, da.ptr, daLo.ptr, dw.ptr, dwLo.ptr, M, N, D, ep);
  SIMT_LAUNCH(linear_attention_divide, M, kBlockThreads, nullptr, q.as<float>(), D, kv.as<float>(), M, heads, d, tokens,
              (RowOut{Emit::F32, nullptr, nullptr, nullptr, nullptr, nullptr, D}), scratch.as<float>());
  // reference: the same rounded operands through separate Q, K, V layers
  QuantizedWeight qw{ew.q, ew.scale, N, D};
  const auto all = ref::linear(ea, int8 ? &qw : nullptr, fused.data(), N, nullptr, 0);  // [M, N] in the fused order
  std::vector<float> rq((size_t)M * D), rk((size_t)M * D), rv((size_t)M * D);
  for (int r = 0; r < M; r++)
    for (int c = 0; c < N; c++) {
      const int src = layout[c];
      if (src < 0) continue;
      auto &dst = src < D ? rq : src < 2 * D ? rk : rv;
      dst[(size_t)r * D + src % D] = all[(size_t)r * N + c];
    }
  std::vector<float> rqRelu(rq.size());
  for (size_t i = 0; i < rq.size(); i++) rqRelu[i] = rq[i] > 0 ? rq[i] : 0;
  const std::string tag = std::string(int8 ? "W8A8" : "bf16") + " B" + std::to_string(batch) + " N" + std::to_string(tokens) + " h" +
                          std::to_string(heads) + " d" + std::to_string(d);
  expectClose("(b) QKV epilogue ReLU(Q) " + tag, download<float>(q, (size_t)M * D), rqRelu, 2e-5);
  expectClose("(b+c) fused ReLU(K)ᵀ[V 1] + divide " + tag, download<float>(scratch, (size_t)M * D),
              ref::linearAttention(rq, rk, rv, batch, tokens, heads, d), 1e-4);
}

/**
 * qk_norm's path: [Q K V] rows, RMSNorm + ReLU in place over the whole Q and K widths, the state in its own pass
 * (token chunks of several blocks per sample), the divide reading Q with the row stride 3D.
 */
void testQkNormLinearAttention(int batch, int tokens, int heads, int d) {
  const int D = heads * d, M = batch * tokens;
  const float normEps = 1e-5f;
  const auto rows = randn((size_t)M * 3 * D), wq = randn(D, 0.5f), wk = randn(D, 0.5f);
  Buffer dr = up(rows), dwq = up(wq), dwk = up(wk), kv((size_t)batch * heads * d * (d + 1) * 4), out((size_t)M * D * 4), scratch((size_t)M * D * 4);
  deviceZero(kv.ptr, kv.bytes, nullptr);
  float *r = dr.as<float>();
  SIMT_LAUNCH(rms_norm, M, kBlockThreads, nullptr, r, 3 * D, dwq.as<float>(), D, normEps, Act::Relu, r);
  SIMT_LAUNCH(rms_norm, M, kBlockThreads, nullptr, r + D, 3 * D, dwk.as<float>(), D, normEps, Act::Relu, r + D);
  SIMT_LAUNCH(linear_attention_state, dim3(batch * heads, ceilDiv(tokens, kStateTokensPerBlock)), kBlockThreads, nullptr, r + D, r + 2 * D,
              3 * D, tokens, heads, d, kv.as<float>());
  SIMT_LAUNCH(linear_attention_divide, M, kBlockThreads, nullptr, r, 3 * D, kv.as<float>(), M, heads, d, tokens,
              (RowOut{Emit::F32, nullptr, nullptr, nullptr, nullptr, nullptr, D}), scratch.as<float>());
  std::vector<float> rq((size_t)M * D), rk((size_t)M * D), rv((size_t)M * D);
  for (int m = 0; m < M; m++)
    for (int c = 0; c < D; c++) {
      rq[(size_t)m * D + c] = rows[(size_t)m * 3 * D + c];
      rk[(size_t)m * D + c] = rows[(size_t)m * 3 * D + D + c];
      rv[(size_t)m * D + c] = rows[(size_t)m * 3 * D + 2 * D + c];
    }
  ref::rmsNorm(rq.data(), M, D, D, wq.data(), normEps, 0);
  ref::rmsNorm(rk.data(), M, D, D, wk.data(), normEps, 0);
  std::vector<float> rqRelu(rq.size());
  for (size_t i = 0; i < rq.size(); i++) rqRelu[i] = rq[i] > 0 ? rq[i] : 0;
  auto qGot = download<float>(dr, (size_t)M * 3 * D);
  std::vector<float> qNormed((size_t)M * D);
  for (int m = 0; m < M; m++)
    for (int c = 0; c < D; c++) qNormed[(size_t)m * D + c] = qGot[(size_t)m * 3 * D + c];
  const std::string tag = "B" + std::to_string(batch) + " N" + std::to_string(tokens) + " h" + std::to_string(heads) + " d" + std::to_string(d);
  expectClose("qk_norm RMSNorm + ReLU in place, row stride 3D " + tag, qNormed, rqRelu, 1e-5);
  expectClose("qk_norm state pass + divide " + tag, download<float>(scratch, (size_t)M * D), ref::linearAttention(rq, rk, rv, batch, tokens, heads, d), 1e-4);
}

void testDwconvGlu() {
  const int B = 2, H = 3, W = 5, F = 37, M = B * H * W;
  const auto u = randn((size_t)M * 2 * F), w = randn((size_t)2 * F * 9, 0.4f), b = randn(2 * F);
  Buffer du = up(u), dw = up(w), db = up(b), q((size_t)M * F * 2), s(M * 4), scratch((size_t)M * F * 4);
  SIMT_LAUNCH(dwconv_glu_emit, M, kBlockThreads, nullptr, du.as<float>(), dw.as<float>(), db.as<float>(), M, H, W, F,
              (RowOut{Emit::Int8, q.as<int8_t>(), s.as<float>(), nullptr, nullptr, nullptr, F}), scratch.as<float>());
  const auto want = ref::dwconvGlu(u, w.data(), b.data(), B, H, W, F);
  expectClose("(d) depthwise 3×3 + GLU(SiLU) B2 3×5 F37", download<float>(scratch, (size_t)M * F), want, 1e-5);
  expectInt8Rows("(d) … emitted int8 per token", download<int8_t>(q, (size_t)M * F), download<float>(s, M), ref::emit(want, M, F, ref::Emit::Int8));
}

void testCrossAttention(int B, int N, int L, int heads, int d) {
  const int Dx = heads * d, M = B * N;
  const auto q = randn((size_t)M * Dx), k = randn((size_t)B * L * Dx), v = randn((size_t)B * L * Dx);
  std::vector<float> mask(B * L, 1.f);
  for (int l = L / 2 + 1; l < L; l++) mask[l] = 0.f;  // sample 0: only the first half + 1 tokens are real
  mask[(B - 1) * L] = 0.f;                              // last sample: first token dropped
  const auto bias = maskBias(mask.data(), B * L);
  Buffer dq = up(q), dk = up(k), dv = up(v), dm = up(bias), out((size_t)M * Dx * 4);
  SIMT_LAUNCH(cross_attention, dim3(M, ceilDiv(heads, kBlockThreads / 32)), kBlockThreads, nullptr, dq.as<float>(), dk.as<float>(),
              dv.as<float>(), dm.as<float>(), M, heads, d, L, N, out.as<float>());
  expectClose("(e) masked cross-attention B" + std::to_string(B) + " N" + std::to_string(N) + " L" + std::to_string(L) + " h" +
                  std::to_string(heads) + " d" + std::to_string(d),
              download<float>(out, (size_t)M * Dx), ref::crossAttention(q, k, v, bias.data(), B, N, L, heads, d), 2e-6);
}

void testGemmF32() {
  const int M = 67, N = 45, K = 33;
  const auto a = randn((size_t)M * K), w = randn((size_t)N * K), b = randn(N);
  Buffer da = up(a), dw = up(w), db = up(b), out((size_t)M * N * 4);
  SIMT_LAUNCH(gemm_f32, dim3(ceilDiv(N, kF32Tile), ceilDiv(M, kF32Tile)), 256, nullptr, da.as<float>(), dw.as<float>(), M, N, K, db.as<float>(),
              Act::GeluTanh, out.as<float>(), N);
  expectClose("fp32 GEMM + GELU-tanh M67 N45 K33", download<float>(out, (size_t)M * N), ref::gemmF32(a.data(), w.data(), M, N, K, b.data(), 3), 1e-5);
}

void testPatchRoundTrip() {
  const int B = 2, C = 3, H = 6, W = 4, p = 2, M = B * (H / p) * (W / p);
  const auto x = randn((size_t)B * C * H * W);
  Buffer dx = up(x), patches((size_t)M * C * p * p * 4), back(x.size() * 4);
  SIMT_LAUNCH(patchify, ceilDiv(M * C * p * p, 256), 256, nullptr, dx.as<float>(), B, C, H, W, p, patches.as<float>());
  // a patch's (c, ky, kx) order and unpatchify's (py, px, c) order differ: undo by permuting on the host
  auto pt = download<float>(patches, (size_t)M * C * p * p);
  std::vector<float> tokens(pt.size());
  for (int m = 0; m < M; m++)
    for (int c = 0; c < C; c++)
      for (int ky = 0; ky < p; ky++)
        for (int kx = 0; kx < p; kx++) tokens[(size_t)m * C * p * p + (ky * p + kx) * C + c] = pt[(size_t)m * C * p * p + (c * p + ky) * p + kx];
  Buffer dt = up(tokens);
  SIMT_LAUNCH(unpatchify, ceilDiv((int)x.size(), 256), 256, nullptr, dt.as<float>(), B, C, H / p, W / p, p, back.as<float>());
  expectClose("patchify → unpatchify round trip p2", download<float>(back, x.size()), x, 0);
}
}  // namespace

int main() {
#if defined(__CUDACC__)
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "kernel tests: no usable CUDA device: %s\n", e != cudaSuccess ? cudaGetErrorString(e) : "none visible");
    return 2;
  }
#endif
  std::printf("kernel tests on %s\n", simt::kEmulated ? "the SIMT emulation (g++)" : "a CUDA device");
  testNormModulate();
  testGemm();
  for (bool int8 : {true, false}) {
    testLinearAttention(int8, 2, 37, 3, 16);  // D 48: Q tile padded, 2 heads per K/V tile, samples inside a tile
    testLinearAttention(int8, 3, 25, 2, 32);  // one head per tile
    testLinearAttention(int8, 1, 70, 5, 8);   // 4 heads per tile, last tile half empty, two row tiles
  }
  testQkNormLinearAttention(2, 37, 3, 8);
  testQkNormLinearAttention(2, 300, 2, 16);  // two token chunks per sample
  testDwconvGlu();
  testCrossAttention(2, 7, 13, 3, 12);
  testCrossAttention(1, 3, 300, 5, 8);  // the caption limit, a partly idle last warp group
  testGemmF32();
  testPatchRoundTrip();
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
