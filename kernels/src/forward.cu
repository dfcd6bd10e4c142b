// The Linear-DiT forward on the kernels of kernels.cuh, and the C API around it. Compiled by nvcc for the device
// build and by g++ (as C++) for the emulation build; only the memory calls differ.
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../ref/reference.h"
#include "device_memory.h"
#include "dit_model.h"
#include "kernels.cuh"
#include "sana_kernels.h"

namespace sana {
namespace {

/** A block GEMM weight on the device: int8 values + per-row scales, or split bf16 (weightLo empty when every weight
 * is a bf16 number already, as in a bf16 checkpoint). */
struct DeviceLinear {
  Buffer weight, weightLo, scales, bias;
  int rows = 0, cols = 0;
};

struct DeviceBlock {
  Buffer scaleShiftTable, norm2Weight, norm2Bias, crossK, crossKBias, crossV, crossVBias, convDepth, convDepthBias;
  Buffer normQ, normK, crossNormQ, crossNormK;  // qk_norm only
  DeviceLinear qkv, attnOut, crossQ, crossOut, inverted, point;
  int qkvQCols = 0;  // the fused layout's Q columns; 0 for the plain [Q; K; V] layout of qk_norm configs
};


}  // namespace
}  // namespace sana

struct SanaDit {
  sana::HostDit host;
  bool keepHost = false;
  bool finalized = false;
  std::map<std::string, sana::Buffer> f32;  // high-precision weights by checkpoint key
  std::vector<sana::DeviceBlock> blocks;
};

namespace sana {
namespace {

void fail(char *err, size_t len, const std::string &msg) {
  if (err && len) std::snprintf(err, len, "%s", msg.c_str());
}

/**
 * Builds one block GEMM weight from checkpoint rows. `rowsOf` lists, for each output row of the device matrix, the
 * (key, row) it comes from, or an empty key for a zero pad row.
 */
DeviceLinear buildLinear(const HostDit &h, const std::vector<std::pair<const std::string *, int>> &rowsOf, int cols,
                         const std::string *biasKeys[], bool anyBias) {
  DeviceLinear out;
  out.rows = (int)rowsOf.size();
  out.cols = cols;
  std::vector<float> bias(out.rows, 0.f);
  if (h.mode == SANA_DIT_INT8) {
    std::vector<int8_t> values((size_t)out.rows * cols, 0);
    std::vector<float> scales(out.rows, 0.f);
    for (int r = 0; r < out.rows; r++) {
      if (!rowsOf[r].first) continue;
      const QuantizedWeight &q = h.quantized(*rowsOf[r].first + ".weight");
      if (q.cols != cols) throw std::runtime_error(*rowsOf[r].first + ": int8 weight has " + std::to_string(q.cols) + " columns, expected " + std::to_string(cols));
      std::memcpy(&values[(size_t)r * cols], &q.values[(size_t)rowsOf[r].second * cols], cols);
      scales[r] = q.scales[rowsOf[r].second];
    }
    out.weight = upload(values.data(), values.size());
    out.scales = upload(scales);
  } else {
    std::vector<uint16_t> hi((size_t)out.rows * cols, 0), lo((size_t)out.rows * cols, 0);
    bool anyLo = false;
    for (int r = 0; r < out.rows; r++) {
      if (!rowsOf[r].first) continue;
      const float *w = h.get(*rowsOf[r].first + ".weight").data() + (size_t)rowsOf[r].second * cols;
      for (int c = 0; c < cols; c++) {
        const size_t i = (size_t)r * cols + c;
        hi[i] = simt::f32_to_bf16(w[c]);
        lo[i] = simt::bf16_low_part(w[c], hi[i]);
        anyLo |= lo[i] != 0;
      }
    }
    out.weight = upload(hi.data(), hi.size() * 2);
    if (anyLo) out.weightLo = upload(lo.data(), lo.size() * 2);
  }
  if (anyBias) {
    for (int r = 0; r < out.rows; r++)
      if (rowsOf[r].first && biasKeys[r]) bias[r] = h.get(*biasKeys[r] + ".bias")[rowsOf[r].second];
    out.bias = upload(bias);
  }
  return out;
}

DeviceLinear plainLinear(const HostDit &h, const std::string &key, int rows, int cols, bool bias) {
  std::vector<std::pair<const std::string *, int>> rowsOf(rows);
  std::vector<const std::string *> biasKeys(rows, bias ? &key : nullptr);
  for (int r = 0; r < rows; r++) rowsOf[r] = {&key, r};
  return buildLinear(h, rowsOf, cols, biasKeys.data(), bias);
}

/**
 * The fused QKV weight: Q rows padded to a multiple of the 64-column tile, then per tile 64 / (2d) heads laid out
 * [k_h | v_h], so each K/V tile holds whole heads and the linear-attention state is reduced inside the GEMM.
 * qk_norm configs normalize K over its whole row before the ReLU, so there the rows stay [Q; K; V] and the state is
 * a separate pass (linear_attention_state).
 */
DeviceBlock buildBlock(const HostDit &h, int i, const std::vector<std::string> &keys) {
  const SanaDitConfig &c = h.c;
  const int D = h.inner(), d = c.attention_head_dim, heads = c.num_attention_heads;
  const std::string &q = keys[0], &k = keys[1], &v = keys[2];
  std::vector<int> layout(3 * D);
  for (int r = 0; r < 3 * D; r++) layout[r] = r;
  if (!c.qk_norm) layout = qkvRowLayout(D, heads, d);
  const int qCols = c.qk_norm ? 0 : roundUp(D, kTileN);
  std::vector<std::pair<const std::string *, int>> rowsOf(layout.size(), {nullptr, 0});
  for (size_t r = 0; r < layout.size(); r++) {
    const int src = layout[r];
    if (src >= 0) rowsOf[r] = {src < D ? &q : src < 2 * D ? &k : &v, src % D};
  }
  std::vector<const std::string *> biasKeys(rowsOf.size());
  for (size_t r = 0; r < rowsOf.size(); r++) biasKeys[r] = rowsOf[r].first;
  DeviceBlock b;
  b.qkv = buildLinear(h, rowsOf, D, biasKeys.data(), c.attention_bias != 0);
  b.qkvQCols = qCols;
  const std::string blk = "transformer_blocks." + std::to_string(i) + ".";
  const int Dx = h.crossInner(), F = c.ff_hidden;
  b.attnOut = plainLinear(h, blk + "attn1.to_out.0", D, D, true);
  b.crossQ = plainLinear(h, blk + "attn2.to_q", Dx, D, true);
  b.crossOut = plainLinear(h, blk + "attn2.to_out.0", D, Dx, true);
  b.inverted = plainLinear(h, blk + "ff.conv_inverted", 2 * F, D, true);
  b.point = plainLinear(h, blk + "ff.conv_point", D, F, false);
  b.scaleShiftTable = upload(h.get(blk + "scale_shift_table"));
  if (c.norm_elementwise_affine) {
    b.norm2Weight = upload(h.get(blk + "norm2.weight"));
    b.norm2Bias = upload(h.get(blk + "norm2.bias"));
  }
  b.crossK = upload(h.get(blk + "attn2.to_k.weight"));
  b.crossKBias = upload(h.get(blk + "attn2.to_k.bias"));
  b.crossV = upload(h.get(blk + "attn2.to_v.weight"));
  b.crossVBias = upload(h.get(blk + "attn2.to_v.bias"));
  b.convDepth = upload(h.get(blk + "ff.conv_depth.weight"));
  b.convDepthBias = upload(h.get(blk + "ff.conv_depth.bias"));
  if (c.qk_norm) {
    b.normQ = upload(h.get(blk + "attn1.norm_q.weight"));
    b.normK = upload(h.get(blk + "attn1.norm_k.weight"));
    b.crossNormQ = upload(h.get(blk + "attn2.norm_q.weight"));
    b.crossNormK = upload(h.get(blk + "attn2.norm_k.weight"));
  }
  return b;
}

/** Activations emitted for a block GEMM: int8 + per-row scale, or split bf16 (values = hi, valuesLo = lo). */
struct ActBuffer {
  Buffer values, valuesLo, scales, scratch;
  int cols = 0;
  RowOut out(bool int8) const {
    return RowOut{int8 ? Emit::Int8 : Emit::Bf16, values.as<int8_t>(), scales.as<float>(), values.as<uint16_t>(),
                  valuesLo.as<uint16_t>(), nullptr, cols};
  }
};

ActBuffer actBuffer(int rows, int cols, bool int8) {
  ActBuffer a;
  a.values = Buffer((size_t)rows * cols * (int8 ? 1 : 2));
  if (!int8) a.valuesLo = Buffer((size_t)rows * cols * 2);
  a.scales = Buffer((size_t)rows * sizeof(float));
  a.scratch = Buffer((size_t)rows * cols * sizeof(float));
  a.cols = cols;
  return a;
}

class Forward {
 public:
  Forward(SanaDit &dit, const SanaDitInputs &in, simt::Stream stream) : dit_(dit), h_(dit.host), in_(in), s_(stream) {}

  void run(float *output) {
    const SanaDitConfig &c = h_.c;
    const bool int8 = h_.mode == SANA_DIT_INT8;
    const int B = in_.batch, p = c.patch_size, hh = in_.height / p, ww = in_.width / p, N = hh * ww, M = B * N;
    const int D = h_.inner(), Dx = h_.crossInner(), F = c.ff_hidden, L = in_.caption_length;

    // inputs
    Buffer hidden = up(in_.hidden_states, (size_t)B * c.in_channels * in_.height * in_.width);
    Buffer caption = up(in_.encoder_hidden_states, (size_t)B * L * c.caption_channels);
    const std::vector<float> biasHost = maskBias(in_.encoder_attention_mask, B * L);
    Buffer mask = up(biasHost.data(), biasHost.size());
    const std::vector<float> sinusHost = timestepSinusoid(in_.timestep, B);
    Buffer sinus = up(sinusHost.data(), sinusHost.size());

    // patch embedding → x [M, D] (+ sin-cos position table)
    const int cpp = c.in_channels * p * p;
    Buffer patches((size_t)M * cpp * 4), x((size_t)M * D * 4);
    SIMT_LAUNCH(patchify, ceilDiv(M * cpp, 256), 256, s_, hidden.as<float>(), B, c.in_channels, in_.height, in_.width, p, patches.as<float>());
    gemmF32(patches, M, cpp, "patch_embed.proj", Act::None, x);
    if (in_.pos_embed) {
      Buffer pos = up(in_.pos_embed, (size_t)N * D);
      SIMT_LAUNCH(add_position, ceilDiv(M * D, 256), 256, s_, x.as<float>(), pos.as<float>(), M * D, N * D);
      checkLaunch("add_position");
    }

    // timestep → tEmb [B, D], t6 [B, 6D]
    Buffer t1((size_t)B * D * 4), tEmb((size_t)B * D * 4), tSilu((size_t)B * D * 4), t6((size_t)B * 6 * D * 4);
    gemmF32(sinus, B, kTimestepChannels, "time_embed.emb.timestep_embedder.linear_1", Act::Silu, t1);
    gemmF32(t1, B, D, "time_embed.emb.timestep_embedder.linear_2", Act::None, tEmb);
    SIMT_LAUNCH(elementwise_act, ceilDiv(B * D, 256), 256, s_, tEmb.as<float>(), tSilu.as<float>(), B * D, Act::Silu);
    gemmF32(tSilu, B, D, "time_embed.linear", Act::None, t6);

    // caption → y [B·L, D]
    Buffer c1((size_t)B * L * D * 4), c2((size_t)B * L * D * 4), y((size_t)B * L * D * 4);
    gemmF32(caption, B * L, c.caption_channels, "caption_projection.linear_1", Act::GeluTanh, c1);
    gemmF32(c1, B * L, D, "caption_projection.linear_2", Act::None, c2);
    SIMT_LAUNCH(rms_norm, B * L, kBlockThreads, s_, c2.as<float>(), D, dit_.f32.at("caption_norm.weight").as<float>(), D, kCaptionNormEps, Act::None,
                y.as<float>());

    // per-block work buffers
    Buffer mod((size_t)B * 6 * D * 4), q((size_t)M * D * 4), kv((size_t)B * D * (c.attention_head_dim + 1) * 4);
    Buffer cq((size_t)M * Dx * 4), ck((size_t)B * L * Dx * 4), cv((size_t)B * L * Dx * 4), co((size_t)M * Dx * 4);
    Buffer u((size_t)M * 2 * F * 4), qkvRows = c.qk_norm ? Buffer((size_t)M * 3 * D * 4) : Buffer();
    ActBuffer actD = actBuffer(M, D, int8), actDx = actBuffer(M, Dx, int8), actF = actBuffer(M, F, int8);

    for (int i = 0; i < c.num_layers; i++) {
      const DeviceBlock &blk = dit_.blocks[i];
      float *m = mod.as<float>();
      SIMT_LAUNCH(modulation_table, ceilDiv(B * 6 * D, 256), 256, s_, blk.scaleShiftTable.as<float>(), t6.as<float>(), B, 6, D, 6 * D, D, m);
      // 1. x += gate_msa · out(LinearAttention(norm1(x)))
      normEmit(x, M, D, NormModulate{true, c.norm_eps, nullptr, nullptr, m, m + D, 6 * D, N}, actD.out(int8), actD.scratch);
      deviceZero(kv.ptr, kv.bytes, s_);
      const float *reluQ = q.as<float>();
      int ldq = D;
      if (c.qk_norm) {
        // Q, K, V rows to memory, RMSNorm over the whole Q and K widths (+ ReLU), then the state in its own pass
        GemmEpilogue qkv{};
        qkv.bias = blk.qkv.bias.as<float>();
        qkv.out = qkvRows.as<float>();
        qkv.ldo = 3 * D;
        qkv.rowsPerBatch = N;
        gemm<Epi::Store>(actD, blk.qkv, M, qkv);
        float *rows = qkvRows.as<float>();
        rmsNorm(rows, M, 3 * D, blk.normQ, D, Act::Relu);
        rmsNorm(rows + D, M, 3 * D, blk.normK, D, Act::Relu);
        SIMT_LAUNCH(linear_attention_state, dim3(B * c.num_attention_heads, ceilDiv(N, kStateTokensPerBlock)), kBlockThreads, s_,
                    rows + D, rows + 2 * D, 3 * D, N, c.num_attention_heads, c.attention_head_dim, kv.as<float>());
        checkLaunch("linear_attention_state");
        reluQ = rows;
        ldq = 3 * D;
      } else {
        GemmEpilogue qkv{};
        qkv.bias = blk.qkv.bias.as<float>();
        qkv.out = q.as<float>();
        qkv.ldo = D;
        qkv.rowsPerBatch = N;
        qkv.qCols = blk.qkvQCols;
        qkv.kv = kv.as<float>();
        qkv.heads = c.num_attention_heads;
        qkv.headDim = c.attention_head_dim;
        gemm<Epi::QkvLinearAttention>(actD, blk.qkv, M, qkv);
      }
      SIMT_LAUNCH(linear_attention_divide, M, kBlockThreads, s_, reluQ, ldq, kv.as<float>(), M, c.num_attention_heads,
                  c.attention_head_dim, N, actD.out(int8), actD.scratch.as<float>());
      checkLaunch("linear_attention_divide");
      gemm<Epi::GateResidual>(actD, blk.attnOut, M, residual(blk.attnOut, x, D, m + 2 * D, 6 * D, N));
      // 2. x += out(CrossAttention(x, y))
      normEmit(x, M, D, NormModulate{false, 0.f, nullptr, nullptr, nullptr, nullptr, 0, N}, actD.out(int8), actD.scratch);
      GemmEpilogue store{};
      store.bias = blk.crossQ.bias.as<float>();
      store.out = cq.as<float>();
      store.ldo = Dx;
      store.rowsPerBatch = N;
      gemm<Epi::Store>(actD, blk.crossQ, M, store);
      gemmF32Raw(y.as<float>(), B * L, D, blk.crossK.as<float>(), Dx, blk.crossKBias.as<float>(), Act::None, ck.as<float>());
      gemmF32Raw(y.as<float>(), B * L, D, blk.crossV.as<float>(), Dx, blk.crossVBias.as<float>(), Act::None, cv.as<float>());
      if (c.qk_norm) {
        rmsNorm(cq.as<float>(), M, Dx, blk.crossNormQ, Dx, Act::None);
        rmsNorm(ck.as<float>(), B * L, Dx, blk.crossNormK, Dx, Act::None);
      }
      const int headsPerBlock = kBlockThreads / 32;
      SIMT_LAUNCH(cross_attention, dim3(M, ceilDiv(c.num_cross_attention_heads, headsPerBlock)), kBlockThreads, s_, cq.as<float>(),
                  ck.as<float>(), cv.as<float>(), mask.as<float>(), M, c.num_cross_attention_heads, c.cross_attention_head_dim, L, N, co.as<float>());
      checkLaunch("cross_attention");
      normEmit(co, M, Dx, NormModulate{false, 0.f, nullptr, nullptr, nullptr, nullptr, 0, N}, actDx.out(int8), actDx.scratch);
      gemm<Epi::GateResidual>(actDx, blk.crossOut, M, residual(blk.crossOut, x, D, nullptr, 0, N));
      // 3. x += gate_mlp · point(GLU(dwconv(SiLU(inverted(norm2(x))))))
      normEmit(x, M, D, NormModulate{true, c.norm_eps, blk.norm2Weight.as<float>(), blk.norm2Bias.as<float>(), m + 3 * D, m + 4 * D, 6 * D, N},
               actD.out(int8), actD.scratch);
      GemmEpilogue inv{};
      inv.bias = blk.inverted.bias.as<float>();
      inv.act = Act::Silu;
      inv.out = u.as<float>();
      inv.ldo = 2 * F;
      inv.rowsPerBatch = N;
      gemm<Epi::Store>(actD, blk.inverted, M, inv);
      SIMT_LAUNCH(dwconv_glu_emit, M, kBlockThreads, s_, u.as<float>(), blk.convDepth.as<float>(), blk.convDepthBias.as<float>(), M, hh, ww, F,
                  actF.out(int8), actF.scratch.as<float>());
      checkLaunch("dwconv_glu_emit");
      gemm<Epi::GateResidual>(actF, blk.point, M, residual(blk.point, x, D, m + 5 * D, 6 * D, N));
    }

    // final: norm_out modulated by (table + tEmb), proj_out, unpatchify
    Buffer fmod((size_t)B * 2 * D * 4), xf((size_t)M * D * 4);
    SIMT_LAUNCH(modulation_table, ceilDiv(B * 2 * D, 256), 256, s_, dit_.f32.at("scale_shift_table").as<float>(), tEmb.as<float>(), B, 2, D, D, 0, fmod.as<float>());
    RowOut f32out{Emit::F32, nullptr, nullptr, nullptr, nullptr, xf.as<float>(), D};
    normEmit(x, M, D, NormModulate{true, kFinalNormEps, nullptr, nullptr, fmod.as<float>(), fmod.as<float>() + D, 2 * D, N}, f32out, Buffer());
    const int pc = p * p * c.out_channels;
    Buffer tokens((size_t)M * pc * 4), image((size_t)B * c.out_channels * in_.height * in_.width * 4);
    gemmF32(xf, M, D, "proj_out", Act::None, tokens);
    SIMT_LAUNCH(unpatchify, ceilDiv((int)(image.bytes / 4), 256), 256, s_, tokens.as<float>(), B, c.out_channels, hh, ww, p, image.as<float>());
    checkLaunch("unpatchify");
    toHost(output, image.ptr, image.bytes, s_);
#if defined(__CUDACC__)
    check(cudaStreamSynchronize(s_), "forward");
#endif
  }

 private:
  SanaDit &dit_;
  const HostDit &h_;
  const SanaDitInputs &in_;
  simt::Stream s_;

  Buffer up(const float *data, size_t count) {
    Buffer b(count * sizeof(float));
    toDevice(b.ptr, data, b.bytes, s_);
    return b;
  }

  void gemmF32Raw(const float *a, int m, int k, const float *w, int n, const float *bias, Act act, float *out) {
    SIMT_LAUNCH(gemm_f32, dim3(ceilDiv(n, kF32Tile), ceilDiv(m, kF32Tile)), 256, s_, a, w, m, n, k, bias, act, out, n);
    checkLaunch("gemm_f32");
  }
  void gemmF32(const Buffer &a, int m, int k, const std::string &key, Act act, const Buffer &out) {
    const Buffer &w = dit_.f32.at(key + ".weight");
    const int n = (int)(w.bytes / 4 / k);
    gemmF32Raw(a.as<float>(), m, k, w.as<float>(), n, dit_.f32.at(key + ".bias").as<float>(), act, out.as<float>());
  }
  /** qk_norm in place: RMSNorm over `cols` values of each row (rows `ld` apart), then `act`. */
  void rmsNorm(float *x, int rows, int ld, const Buffer &weight, int cols, Act act) {
    SIMT_LAUNCH(rms_norm, rows, kBlockThreads, s_, x, ld, weight.as<float>(), cols, h_.c.qk_norm_eps, act, x);
    checkLaunch("rms_norm");
  }
  void normEmit(const Buffer &x, int rows, int cols, NormModulate nm, RowOut out, const Buffer &scratch) {
    SIMT_LAUNCH(norm_modulate_emit, rows, kBlockThreads, s_, x.as<float>(), rows, cols, nm, out, scratch.as<float>());
    checkLaunch("norm_modulate_emit");
  }
  GemmEpilogue residual(const DeviceLinear &w, const Buffer &x, int D, const float *gate, int gateStride, int rowsPerBatch) {
    GemmEpilogue e{};
    e.bias = w.bias.as<float>();
    e.out = x.as<float>();
    e.ldo = D;
    e.gate = gate;
    e.gateBatchStride = gateStride;
    e.rowsPerBatch = rowsPerBatch;
    return e;
  }
  template <Epi kEpi>
  void gemm(const ActBuffer &a, const DeviceLinear &w, int m, GemmEpilogue ep) {
    const bool int8 = h_.mode == SANA_DIT_INT8;
    ep.rowScale = a.scales.as<float>();
    ep.colScale = w.scales.as<float>();
    const dim3 grid(ceilDiv(w.rows, kTileN), ceilDiv(m, kTileM));
    auto kernel = int8 ? gemm_tc<true, kEpi> : gemm_tc<false, kEpi>;
    SIMT_LAUNCH(kernel, grid, kBlockThreads, s_, a.values.ptr, a.valuesLo.ptr, w.weight.ptr, w.weightLo.ptr, m, w.rows, w.cols, ep);
    checkLaunch("gemm_tc");
  }
};

/** Every checkpoint key the model reads, with its element count (mirrors linear-dit.ts's ditTensorShapes). */
std::vector<std::pair<std::string, size_t>> requiredKeys(const HostDit &h) {
  const SanaDitConfig &c = h.c;
  const size_t D = h.inner(), Dx = h.crossInner(), F = c.ff_hidden, p = c.patch_size;
  std::vector<std::pair<std::string, size_t>> k = {
      {"patch_embed.proj.weight", D * c.in_channels * p * p}, {"patch_embed.proj.bias", D},
      {"time_embed.emb.timestep_embedder.linear_1.weight", D * kTimestepChannels},
      {"time_embed.emb.timestep_embedder.linear_1.bias", D},
      {"time_embed.emb.timestep_embedder.linear_2.weight", D * D}, {"time_embed.emb.timestep_embedder.linear_2.bias", D},
      {"time_embed.linear.weight", 6 * D * D}, {"time_embed.linear.bias", 6 * D},
      {"caption_projection.linear_1.weight", D * c.caption_channels}, {"caption_projection.linear_1.bias", D},
      {"caption_projection.linear_2.weight", D * D}, {"caption_projection.linear_2.bias", D},
      {"caption_norm.weight", D}, {"scale_shift_table", 2 * D},
      {"proj_out.weight", p * p * c.out_channels * D}, {"proj_out.bias", p * p * c.out_channels}};
  for (int i = 0; i < c.num_layers; i++) {
    const std::string b = "transformer_blocks." + std::to_string(i) + ".";
    k.push_back({b + "scale_shift_table", 6 * D});
    for (const char *proj : {"to_q", "to_k", "to_v"}) {
      k.push_back({b + "attn1." + proj + ".weight", D * D});
      if (c.attention_bias) k.push_back({b + "attn1." + proj + ".bias", D});
    }
    k.push_back({b + "attn1.to_out.0.weight", D * D});
    k.push_back({b + "attn1.to_out.0.bias", D});
    k.push_back({b + "attn2.to_q.weight", Dx * D});
    k.push_back({b + "attn2.to_q.bias", Dx});
    for (const char *proj : {"to_k", "to_v"}) {
      k.push_back({b + "attn2." + proj + ".weight", Dx * D});
      k.push_back({b + "attn2." + proj + ".bias", Dx});
    }
    k.push_back({b + "attn2.to_out.0.weight", D * Dx});
    k.push_back({b + "attn2.to_out.0.bias", D});
    if (c.norm_elementwise_affine) {
      k.push_back({b + "norm2.weight", D});
      k.push_back({b + "norm2.bias", D});
    }
    k.push_back({b + "ff.conv_inverted.weight", 2 * F * D});
    k.push_back({b + "ff.conv_inverted.bias", 2 * F});
    k.push_back({b + "ff.conv_depth.weight", 2 * F * 9});
    k.push_back({b + "ff.conv_depth.bias", 2 * F});
    k.push_back({b + "ff.conv_point.weight", D * F});
    if (c.qk_norm) {
      k.push_back({b + "attn1.norm_q.weight", D});
      k.push_back({b + "attn1.norm_k.weight", D});
      k.push_back({b + "attn2.norm_q.weight", Dx});
      k.push_back({b + "attn2.norm_k.weight", Dx});
    }
  }
  return k;
}

std::string validateConfig(const SanaDitConfig &c) {
  const int d = c.attention_head_dim;
  if (d != 8 && d != 16 && d != 32) return "attention_head_dim " + std::to_string(d) + " is not supported by the CUDA backend (8, 16 or 32)";
  if (c.cross_attention_head_dim < 1 || c.num_cross_attention_heads < 1) return "cross-attention heads must be positive";
  if (c.patch_size < 1 || c.ff_hidden < 1 || c.num_layers < 0) return "patch_size and ff_hidden must be positive";
  return "";
}

}  // namespace
}  // namespace sana

using namespace sana;

extern "C" {

int sana_device_probe(char *err, size_t err_len) {
#if defined(__CUDACC__)
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    fail(err, err_len, std::string("no usable CUDA device: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
    return 1;
  }
  if (count == 0) {
    fail(err, err_len, "no CUDA device is visible to this process");
    return 1;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.major < 8) {
    fail(err, err_len, std::string("CUDA device ") + prop.name + " has compute capability " + std::to_string(prop.major) + "." +
                           std::to_string(prop.minor) + "; the int8/bf16 mma kernels need 8.0 or newer");
    return 1;
  }
  return 0;
#else
  (void)err;
  (void)err_len;
  return 0;
#endif
}

const char *sana_backend_description(void) {
#if defined(__CUDACC__)
  static std::string desc;
  cudaDeviceProp prop{};
  if (desc.empty()) desc = cudaGetDeviceProperties(&prop, 0) == cudaSuccess ? std::string("cuda ") + prop.name + " sm_" + std::to_string(prop.major * 10 + prop.minor) : "cuda (no device)";
  return desc.c_str();
#else
  return "emulation (SIMT fibers on the CPU)";
#endif
}

SanaDit *sana_dit_create(const SanaDitConfig *config, SanaDitMode mode, int keep_host_copy, char *err, size_t err_len) {
  const std::string bad = validateConfig(*config);
  if (!bad.empty()) {
    fail(err, err_len, bad);
    return nullptr;
  }
  if (sana_device_probe(err, err_len) != 0) return nullptr;
  auto *dit = new SanaDit();
  dit->host.c = *config;
  dit->host.mode = mode;
  dit->keepHost = keep_host_copy != 0;
  return dit;
}

int sana_dit_set_f32(SanaDit *dit, const char *key, const float *data, size_t count, char *, size_t) {
  dit->host.f32[key].assign(data, data + count);
  return 0;
}

int sana_dit_set_int8(SanaDit *dit, const char *key, const int8_t *values, const float *scales, int rows, int cols, char *, size_t) {
  QuantizedWeight &q = dit->host.int8[key];
  q.values.assign(values, values + (size_t)rows * cols);
  q.scales.assign(scales, scales + rows);
  q.rows = rows;
  q.cols = cols;
  return 0;
}

int sana_dit_finalize(SanaDit *dit, char *err, size_t err_len) {
  try {
    HostDit &h = dit->host;
    for (const auto &[key, count] : requiredKeys(h)) {
      auto q = h.int8.find(key);
      // int8 mode: the W8A8 layers need only their int8 copy
      const size_t have = h.mode == SANA_DIT_INT8 && q != h.int8.end() ? q->second.values.size() : h.get(key).size();
      if (have != count) throw std::runtime_error(key + " has " + std::to_string(have) + " values, expected " + std::to_string(count));
    }
    if (h.mode == SANA_DIT_INT8)
      for (int i = 0; i < h.c.num_layers; i++)
        for (const auto &layer : int8Layers()) h.quantized("transformer_blocks." + std::to_string(i) + "." + layer + ".weight");
    for (const char *key : {"patch_embed.proj.weight", "patch_embed.proj.bias", "time_embed.emb.timestep_embedder.linear_1.weight",
                            "time_embed.emb.timestep_embedder.linear_1.bias", "time_embed.emb.timestep_embedder.linear_2.weight",
                            "time_embed.emb.timestep_embedder.linear_2.bias", "time_embed.linear.weight", "time_embed.linear.bias",
                            "caption_projection.linear_1.weight", "caption_projection.linear_1.bias", "caption_projection.linear_2.weight",
                            "caption_projection.linear_2.bias", "caption_norm.weight", "scale_shift_table", "proj_out.weight", "proj_out.bias"})
      dit->f32[key] = upload(h.get(key));
    for (int i = 0; i < h.c.num_layers; i++) {
      const std::string b = "transformer_blocks." + std::to_string(i) + ".";
      dit->blocks.push_back(buildBlock(h, i, {b + "attn1.to_q", b + "attn1.to_k", b + "attn1.to_v"}));
    }
#if defined(__CUDACC__)
    check(cudaDeviceSynchronize(), "weight upload");
#endif
    if (!dit->keepHost) {
      h.f32.clear();
      h.int8.clear();
    }
    dit->finalized = true;
    return 0;
  } catch (const std::exception &e) {
    fail(err, err_len, e.what());
    return 1;
  }
}

int sana_dit_forward(SanaDit *dit, const SanaDitInputs *in, float *output, int reference, char *err, size_t err_len) {
  try {
    if (!dit->finalized) throw std::runtime_error("weights are not finalized");
    const SanaDitConfig &c = dit->host.c;
    if (in->batch < 1 || in->height < 1 || in->width < 1 || in->height % c.patch_size || in->width % c.patch_size)
      throw std::runtime_error("latent size must be positive multiples of patch_size");
    if (in->caption_length < 1 || in->caption_length > kMaxCaptionTokens)
      throw std::runtime_error("caption length " + std::to_string(in->caption_length) + " is outside [1, " + std::to_string(kMaxCaptionTokens) + "]");
    if ((in->pos_embed != nullptr) != (c.pos_embed != 0)) throw std::runtime_error("pos_embed must be given exactly when the config has one");
    if (reference) {
      if (!dit->keepHost) throw std::runtime_error("the reference forward needs keep_host_copy");
      const std::vector<float> out = ref::forward(dit->host, *in, reference == 2 ? kReferenceF32 : dit->host.mode);
      std::memcpy(output, out.data(), out.size() * sizeof(float));
      return 0;
    }
    simt::Stream stream = nullptr;
#if defined(__CUDACC__)
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    struct StreamGuard {
      cudaStream_t s;
      ~StreamGuard() { cudaStreamDestroy(s); }
    } guard{stream};
#endif
    Forward(*dit, *in, stream).run(output);
    return 0;
  } catch (const std::exception &e) {
    fail(err, err_len, e.what());
    return 1;
  }
}

void sana_dit_destroy(SanaDit *dit) { delete dit; }

}  // extern "C"
