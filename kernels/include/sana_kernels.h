// C API of the SANA Linear-DiT CUDA backend (the Node addon and the device tests call it).
// One handle owns the device copy of one checkpoint; every forward runs on its own CUDA stream.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The transformer/config.json keys the kernels need (sizes already derived). */
typedef struct SanaDitConfig {
  int in_channels, out_channels, caption_channels;
  int num_attention_heads, attention_head_dim;
  int num_cross_attention_heads, cross_attention_head_dim;
  int num_layers, patch_size, ff_hidden;
  float norm_eps;
  int attention_bias, norm_elementwise_affine, pos_embed;
  int qk_norm;        // 1: "rms_norm_across_heads" (RMSNorm with weight over the whole q / k projection width)
  float qk_norm_eps;  // its eps
} SanaDitConfig;

typedef enum SanaDitMode { SANA_DIT_INT8 = 0, SANA_DIT_BF16 = 1 } SanaDitMode;

typedef struct SanaDit SanaDit;

/** 0 when a CUDA device is usable (the emulation build: always); otherwise fills `err` with the cause. */
int sana_device_probe(char *err, size_t err_len);
/** Describes the build and the device ("emulation" or the device name and compute capability). */
const char *sana_backend_description(void);

SanaDit *sana_dit_create(const SanaDitConfig *config, SanaDitMode mode, int keep_host_copy, char *err, size_t err_len);
/** A checkpoint tensor by its key, as fp32. */
int sana_dit_set_f32(SanaDit *dit, const char *key, const float *data, size_t count, char *err, size_t err_len);
/** An int8 layer's weight quantized by the shared recipe: [rows, cols] values, one scale per row. */
int sana_dit_set_int8(SanaDit *dit, const char *key, const int8_t *values, const float *scales, int rows, int cols,
                      char *err, size_t err_len);
/** Uploads everything set so far (every key the config needs must be there). */
int sana_dit_finalize(SanaDit *dit, char *err, size_t err_len);

typedef struct SanaDitInputs {
  int batch, height, width, caption_length;
  const float *hidden_states;          // [B, in_channels, H, W]
  const float *encoder_hidden_states;  // [B, L, caption_channels]
  const float *encoder_attention_mask; // [B, L] 1 keep / 0 drop
  const float *timestep;               // [B]
  const float *pos_embed;              // [(H/p)·(W/p), D] or null
} SanaDitInputs;

/** output [B, out_channels, H, W]; `reference` = 1 runs the plain C++ reference forward (needs keep_host_copy). */
int sana_dit_forward(SanaDit *dit, const SanaDitInputs *inputs, float *output, int reference, char *err, size_t err_len);
void sana_dit_destroy(SanaDit *dit);

#ifdef __cplusplus
}
#endif
