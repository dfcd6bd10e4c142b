// Host-side description of a loaded Linear-DiT checkpoint, shared by the device forward and the C++ reference.
#pragma once
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "sana_kernels.h"

namespace sana {

struct QuantizedWeight {
  std::vector<int8_t> values;  // [rows, cols]
  std::vector<float> scales;   // [rows]
  int rows = 0, cols = 0;
};

/** Checkpoint layers that run W8A8 (the shared recipe's DIT_INT8_LAYERS), relative to transformer_blocks.{i}. */
inline const std::vector<std::string> &int8Layers() {
  static const std::vector<std::string> layers = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                                  "attn2.to_q", "attn2.to_out.0", "ff.conv_inverted", "ff.conv_point"};
  return layers;
}

constexpr int kTimestepChannels = 256;
constexpr float kCaptionNormEps = 1e-5f;
constexpr float kFinalNormEps = 1e-6f;
constexpr float kMaskBias = -10000.f;
constexpr float kLinearAttentionEps = 1e-15f;

struct HostDit {
  SanaDitConfig c{};
  int mode = SANA_DIT_INT8;  // SanaDitMode, or kReferenceF32 for the reference only
  std::map<std::string, std::vector<float>> f32;
  std::map<std::string, QuantizedWeight> int8;

  int inner() const { return c.num_attention_heads * c.attention_head_dim; }
  int crossInner() const { return c.num_cross_attention_heads * c.cross_attention_head_dim; }

  const std::vector<float> &get(const std::string &key) const {
    auto it = f32.find(key);
    if (it == f32.end()) throw std::runtime_error("checkpoint tensor " + key + " was not set");
    return it->second;
  }
  const float *maybe(const std::string &key) const {
    auto it = f32.find(key);
    return it == f32.end() ? nullptr : it->second.data();
  }
  const QuantizedWeight &quantized(const std::string &key) const {
    auto it = int8.find(key);
    if (it == int8.end()) throw std::runtime_error("int8 weight " + key + " was not set");
    return it->second;
  }
};

/** The reference forward also runs without any rounding: the check of the reference itself against ONNX fp32. */
constexpr int kReferenceF32 = 2;

/** Timesteps(256, flip_sin_to_cos=True): [cos(t·f), sin(t·f)], frequencies rounded to fp32 as torch does. */
std::vector<float> timestepSinusoid(const float *t, int batch);
/** Caption mask [B, L] (1 keep / 0 drop) → additive bias (1 - m)·-10000. */
std::vector<float> maskBias(const float *mask, int count);

}  // namespace sana
