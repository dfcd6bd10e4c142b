// Plain C++ references (test support). Accumulations in double so that the reference is the exact side.
#include "reference.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "../include/simt.h"

namespace ref {
using sana::HostDit;

float activate(float v, int act) {
  switch (act) {
    case 1: return v > 0.f ? v : 0.f;
    case 2: return (float)(v / (1.0 + std::exp(-(double)v)));
    case 3: return (float)(0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * (double)v * v * v))));
    default: return v;
  }
}

std::vector<float> normModulate(const float *x, int rows, int cols, bool normalize, float eps, const float *lnWeight,
                                const float *lnBias, const float *shift, const float *scale, int modBatchStride,
                                int rowsPerBatch) {
  std::vector<float> y((size_t)rows * cols);
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * cols;
    double mean = 0, var = 0;
    if (normalize) {
      for (int c = 0; c < cols; c++) mean += xr[c];
      mean /= cols;
      for (int c = 0; c < cols; c++) var += (xr[c] - mean) * (xr[c] - mean);
      var /= cols;
    }
    const double rstd = normalize ? 1.0 / std::sqrt(var + eps) : 1.0;
    const int b = r / rowsPerBatch;
    for (int c = 0; c < cols; c++) {
      double v = (xr[c] - mean) * rstd;
      if (lnWeight) v = v * lnWeight[c] + (lnBias ? lnBias[c] : 0.f);
      if (scale) v = v * (1.0 + scale[(size_t)b * modBatchStride + c]) + shift[(size_t)b * modBatchStride + c];
      y[(size_t)r * cols + c] = (float)v;
    }
  }
  return y;
}

Emitted emit(std::vector<float> values, int rows, int cols, Emit kind) {
  Emitted e{kind, rows, cols, std::move(values), {}, {}, {}, {}};
  if (kind == Emit::Int8) {
    e.q.resize((size_t)rows * cols);
    e.scale.resize(rows);
    for (int r = 0; r < rows; r++) {
      float absMax = 0.f;
      for (int c = 0; c < cols; c++) absMax = std::max(absMax, std::fabs(e.values[(size_t)r * cols + c]));
      const float s = absMax / 127.0f;
      e.scale[r] = s;
      for (int c = 0; c < cols; c++) {
        const float v = s == 0.f ? 0.f : std::nearbyint(e.values[(size_t)r * cols + c] / s);
        e.q[(size_t)r * cols + c] = (int8_t)std::max(-127.f, std::min(127.f, v));
      }
    }
  } else if (kind == Emit::Bf16) {
    e.bf16.resize(e.values.size());
    e.bf16Lo.resize(e.values.size());
    for (size_t i = 0; i < e.values.size(); i++) {
      e.bf16[i] = simt::f32_to_bf16(e.values[i]);
      e.bf16Lo[i] = simt::bf16_low_part(e.values[i], e.bf16[i]);
    }
  }
  return e;
}

std::vector<float> linear(const Emitted &x, const sana::QuantizedWeight *wq, const float *w, int n, const float *bias,
                          int act) {
  const int m = x.rows, k = x.cols;
  std::vector<float> y((size_t)m * n);
  for (int r = 0; r < m; r++)
    for (int o = 0; o < n; o++) {
      double v;
      if (x.kind == Emit::Int8) {
        if (!wq || wq->cols != k || wq->rows != n) throw std::runtime_error("ref::linear: int8 weight shape");
        int64_t acc = 0;
        for (int i = 0; i < k; i++) acc += (int)x.q[(size_t)r * k + i] * (int)wq->values[(size_t)o * k + i];
        v = (float)((float)acc * x.scale[r] * wq->scales[o]);
      } else if (x.kind == Emit::Bf16) {
        double acc = 0;
        for (int i = 0; i < k; i++) {
          const float wv = w[(size_t)o * k + i];
          const uint16_t wHi = simt::f32_to_bf16(wv);
          const double ah = simt::bf16_to_f32(x.bf16[(size_t)r * k + i]), al = simt::bf16_to_f32(x.bf16Lo[(size_t)r * k + i]);
          const double wh = simt::bf16_to_f32(wHi), wl = simt::bf16_to_f32(simt::bf16_low_part(wv, wHi));
          acc += ah * wh + ah * wl + al * wh;
        }
        v = acc;
      } else {
        double acc = 0;
        for (int i = 0; i < k; i++) acc += (double)x.values[(size_t)r * k + i] * w[(size_t)o * k + i];
        v = acc;
      }
      y[(size_t)r * n + o] = activate((float)(v + (bias ? bias[o] : 0.f)), act);
    }
  return y;
}

std::vector<float> gemmF32(const float *a, const float *w, int m, int n, int k, const float *bias, int act) {
  std::vector<float> y((size_t)m * n);
  for (int r = 0; r < m; r++)
    for (int o = 0; o < n; o++) {
      double acc = 0;
      for (int i = 0; i < k; i++) acc += (double)a[(size_t)r * k + i] * w[(size_t)o * k + i];
      y[(size_t)r * n + o] = activate((float)(acc + (bias ? bias[o] : 0.f)), act);
    }
  return y;
}

void rmsNorm(float *x, int rows, int ld, int cols, const float *w, float eps, int act) {
  for (int r = 0; r < rows; r++) {
    float *xr = x + (size_t)r * ld;
    double s = 0;
    for (int i = 0; i < cols; i++) s += (double)xr[i] * xr[i];
    const double rr = 1.0 / std::sqrt(s / cols + eps);
    for (int i = 0; i < cols; i++) xr[i] = activate((float)(xr[i] * rr * w[i]), act);
  }
}

std::vector<float> linearAttention(const std::vector<float> &q, const std::vector<float> &k, const std::vector<float> &v,
                                   int batch, int tokens, int heads, int d) {
  const int D = heads * d;
  std::vector<float> out((size_t)batch * tokens * D);
  std::vector<double> kv((size_t)d * (d + 1));
  auto relu = [](float x) { return x > 0.f ? (double)x : 0.0; };
  for (int b = 0; b < batch; b++)
    for (int h = 0; h < heads; h++) {
      std::fill(kv.begin(), kv.end(), 0.0);
      for (int n = 0; n < tokens; n++) {
        const size_t row = (size_t)(b * tokens + n) * D + h * d;
        for (int i = 0; i < d; i++) {
          const double ki = relu(k[row + i]);
          for (int j = 0; j < d; j++) kv[i * (d + 1) + j] += ki * v[row + j];
          kv[i * (d + 1) + d] += ki;
        }
      }
      for (int n = 0; n < tokens; n++) {
        const size_t row = (size_t)(b * tokens + n) * D + h * d;
        double den = 0;
        for (int i = 0; i < d; i++) den += relu(q[row + i]) * kv[i * (d + 1) + d];
        for (int j = 0; j < d; j++) {
          double num = 0;
          for (int i = 0; i < d; i++) num += relu(q[row + i]) * kv[i * (d + 1) + j];
          out[row + j] = (float)(num / (den + sana::kLinearAttentionEps));
        }
      }
    }
  return out;
}

std::vector<float> dwconvGlu(const std::vector<float> &u, const float *w, const float *bias, int batch, int height,
                             int width, int hidden) {
  const int tokens = height * width;
  std::vector<float> out((size_t)batch * tokens * hidden);
  for (int b = 0; b < batch; b++)
    for (int y = 0; y < height; y++)
      for (int x = 0; x < width; x++)
        for (int c = 0; c < hidden; c++) {
          double val = bias[c], gate = bias[hidden + c];
          for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
              const int yy = y + ky - 1, xx = x + kx - 1;
              if (yy < 0 || yy >= height || xx < 0 || xx >= width) continue;
              const float *ur = &u[((size_t)b * tokens + yy * width + xx) * 2 * hidden];
              val += (double)w[c * 9 + ky * 3 + kx] * ur[c];
              gate += (double)w[(hidden + c) * 9 + ky * 3 + kx] * ur[hidden + c];
            }
          out[((size_t)b * tokens + y * width + x) * hidden + c] = (float)(val * (gate / (1.0 + std::exp(-gate))));
        }
  return out;
}

std::vector<float> crossAttention(const std::vector<float> &q, const std::vector<float> &k, const std::vector<float> &v,
                                  const float *maskBias, int batch, int tokens, int captionLen, int heads, int d) {
  const int D = heads * d;
  std::vector<float> out((size_t)batch * tokens * D);
  std::vector<double> p(captionLen);
  for (int b = 0; b < batch; b++)
    for (int n = 0; n < tokens; n++)
      for (int h = 0; h < heads; h++) {
        const float *qh = &q[((size_t)b * tokens + n) * D + h * d];
        double m = -INFINITY, sum = 0;
        for (int l = 0; l < captionLen; l++) {
          double s = 0;
          for (int i = 0; i < d; i++) s += (double)qh[i] * k[((size_t)b * captionLen + l) * D + h * d + i];
          p[l] = s / std::sqrt((double)d) + maskBias[(size_t)b * captionLen + l];
          m = std::max(m, p[l]);
        }
        for (int l = 0; l < captionLen; l++) sum += (p[l] = std::exp(p[l] - m));
        for (int j = 0; j < d; j++) {
          double o = 0;
          for (int l = 0; l < captionLen; l++) o += p[l] * v[((size_t)b * captionLen + l) * D + h * d + j];
          out[((size_t)b * tokens + n) * D + h * d + j] = (float)(o / sum);
        }
      }
  return out;
}

std::vector<float> forward(const HostDit &dit, const SanaDitInputs &in, int mode) {
  const SanaDitConfig &c = dit.c;
  const int B = in.batch, p = c.patch_size, h = in.height / p, w = in.width / p, N = h * w, M = B * N;
  const int D = dit.inner(), Dx = dit.crossInner(), F = c.ff_hidden, L = in.caption_length;
  const Emit kind = mode == SANA_DIT_INT8 ? Emit::Int8 : mode == SANA_DIT_BF16 ? Emit::Bf16 : Emit::F32;
  auto f = [&](const std::string &key) { return dit.get(key).data(); };
  auto layer = [&](const Emitted &x, const std::string &key, int n, bool bias, int act = 0) {
    const sana::QuantizedWeight *wq = kind == Emit::Int8 ? &dit.quantized(key + ".weight") : nullptr;
    return linear(x, wq, f(key + ".weight"), n, bias ? f(key + ".bias") : nullptr, act);
  };

  // patch embedding [M, C·p·p] → x [M, D]
  const int cpp = c.in_channels * p * p;
  std::vector<float> patches((size_t)M * cpp);
  for (int b = 0; b < B; b++)
    for (int ty = 0; ty < h; ty++)
      for (int tx = 0; tx < w; tx++)
        for (int col = 0; col < cpp; col++) {
          const int ch = col / (p * p), ky = (col / p) % p, kx = col % p;
          patches[((size_t)(b * h + ty) * w + tx) * cpp + col] =
              in.hidden_states[(((size_t)b * c.in_channels + ch) * in.height + ty * p + ky) * in.width + tx * p + kx];
        }
  std::vector<float> x = gemmF32(patches.data(), f("patch_embed.proj.weight"), M, D, cpp, f("patch_embed.proj.bias"), 0);
  if (in.pos_embed)
    for (size_t i = 0; i < x.size(); i++) x[i] += in.pos_embed[i % ((size_t)N * D)];

  // timestep → tEmb [B, D], t6 [B, 6D]
  const std::vector<float> sinus = sana::timestepSinusoid(in.timestep, B);
  const auto t1 = gemmF32(sinus.data(), f("time_embed.emb.timestep_embedder.linear_1.weight"), B, D, sana::kTimestepChannels,
                          f("time_embed.emb.timestep_embedder.linear_1.bias"), 2);
  const auto tEmb = gemmF32(t1.data(), f("time_embed.emb.timestep_embedder.linear_2.weight"), B, D, D,
                            f("time_embed.emb.timestep_embedder.linear_2.bias"), 0);
  std::vector<float> tSilu(tEmb.size());
  for (size_t i = 0; i < tEmb.size(); i++) tSilu[i] = activate(tEmb[i], 2);
  const auto t6 = gemmF32(tSilu.data(), f("time_embed.linear.weight"), B, 6 * D, D, f("time_embed.linear.bias"), 0);

  // caption → y [B·L, D]
  const auto c1 = gemmF32(in.encoder_hidden_states, f("caption_projection.linear_1.weight"), B * L, D, c.caption_channels,
                          f("caption_projection.linear_1.bias"), 3);
  const auto c2 = gemmF32(c1.data(), f("caption_projection.linear_2.weight"), B * L, D, D, f("caption_projection.linear_2.bias"), 0);
  std::vector<float> y = c2;
  rmsNorm(y.data(), B * L, D, D, f("caption_norm.weight"), sana::kCaptionNormEps, 0);
  const std::vector<float> bias = sana::maskBias(in.encoder_attention_mask, B * L);

  for (int i = 0; i < c.num_layers; i++) {
    const std::string blk = "transformer_blocks." + std::to_string(i) + ".";
    std::vector<float> mod((size_t)B * 6 * D);
    for (int b = 0; b < B; b++)
      for (int j = 0; j < 6 * D; j++) mod[(size_t)b * 6 * D + j] = f(blk + "scale_shift_table")[j] + t6[(size_t)b * 6 * D + j];
    auto modPart = [&](int k) { return mod.data() + (size_t)k * D; };
    // self-attention
    Emitted h1 = emit(normModulate(x.data(), M, D, true, c.norm_eps, nullptr, nullptr, modPart(0), modPart(1), 6 * D, N), M, D, kind);
    auto q = layer(h1, blk + "attn1.to_q", D, c.attention_bias);
    auto k = layer(h1, blk + "attn1.to_k", D, c.attention_bias);
    const auto v = layer(h1, blk + "attn1.to_v", D, c.attention_bias);
    if (c.qk_norm) {
      rmsNorm(q.data(), M, D, D, f(blk + "attn1.norm_q.weight"), c.qk_norm_eps, 0);
      rmsNorm(k.data(), M, D, D, f(blk + "attn1.norm_k.weight"), c.qk_norm_eps, 0);
    }
    const Emitted a = emit(linearAttention(q, k, v, B, N, c.num_attention_heads, c.attention_head_dim), M, D, kind);
    const auto ao = layer(a, blk + "attn1.to_out.0", D, true);
    for (int r = 0; r < M; r++)
      for (int j = 0; j < D; j++) x[(size_t)r * D + j] += modPart(2)[(size_t)(r / N) * 6 * D + j] * ao[(size_t)r * D + j];
    // cross-attention on the un-normalised stream
    const Emitted xs = emit(x, M, D, kind);
    auto cq = layer(xs, blk + "attn2.to_q", Dx, true);
    auto ck = gemmF32(y.data(), f(blk + "attn2.to_k.weight"), B * L, Dx, D, f(blk + "attn2.to_k.bias"), 0);
    if (c.qk_norm) {
      rmsNorm(cq.data(), M, Dx, Dx, f(blk + "attn2.norm_q.weight"), c.qk_norm_eps, 0);
      rmsNorm(ck.data(), B * L, Dx, Dx, f(blk + "attn2.norm_k.weight"), c.qk_norm_eps, 0);
    }
    const auto cv = gemmF32(y.data(), f(blk + "attn2.to_v.weight"), B * L, Dx, D, f(blk + "attn2.to_v.bias"), 0);
    const Emitted ca = emit(crossAttention(cq, ck, cv, bias.data(), B, N, L, c.num_cross_attention_heads, c.cross_attention_head_dim), M, Dx, kind);
    const auto co = layer(ca, blk + "attn2.to_out.0", D, true);
    for (size_t j = 0; j < x.size(); j++) x[j] += co[j];
    // Mix-FFN
    const bool affine = c.norm_elementwise_affine;
    Emitted h2 = emit(normModulate(x.data(), M, D, true, c.norm_eps, affine ? f(blk + "norm2.weight") : nullptr,
                                   affine ? f(blk + "norm2.bias") : nullptr, modPart(3), modPart(4), 6 * D, N), M, D, kind);
    const auto u = layer(h2, blk + "ff.conv_inverted", 2 * F, true, 2);
    const Emitted g = emit(dwconvGlu(u, f(blk + "ff.conv_depth.weight"), f(blk + "ff.conv_depth.bias"), B, h, w, F), M, F, kind);
    const auto fo = layer(g, blk + "ff.conv_point", D, false);
    for (int r = 0; r < M; r++)
      for (int j = 0; j < D; j++) x[(size_t)r * D + j] += modPart(5)[(size_t)(r / N) * 6 * D + j] * fo[(size_t)r * D + j];
  }

  // final modulated norm and projection
  std::vector<float> fmod((size_t)B * 2 * D);
  for (int b = 0; b < B; b++)
    for (int r = 0; r < 2; r++)
      for (int j = 0; j < D; j++) fmod[((size_t)b * 2 + r) * D + j] = f("scale_shift_table")[r * D + j] + tEmb[(size_t)b * D + j];
  const auto xf = normModulate(x.data(), M, D, true, sana::kFinalNormEps, nullptr, nullptr, fmod.data(), fmod.data() + D, 2 * D, N);
  const int co = c.out_channels, pc = p * p * co;
  const auto out = gemmF32(xf.data(), f("proj_out.weight"), M, pc, D, f("proj_out.bias"), 0);
  std::vector<float> image((size_t)B * co * in.height * in.width);
  for (int b = 0; b < B; b++)
    for (int ch = 0; ch < co; ch++)
      for (int Y = 0; Y < in.height; Y++)
        for (int X = 0; X < in.width; X++) {
          const size_t tok = ((size_t)b * h + Y / p) * w + X / p;
          image[(((size_t)b * co + ch) * in.height + Y) * in.width + X] = out[tok * pc + ((Y % p) * p + X % p) * co + ch];
        }
  return image;
}

}  // namespace ref
