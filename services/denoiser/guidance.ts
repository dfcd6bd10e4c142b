// Classifier-free guidance in one batch, laid out as SanaPipeline lays it out: unconditional rows first.
import type { HostTensor } from '../common/tensor.ts';
import { tensor } from '../common/tensor.ts';

/**
 * noise_uncond + scale·(noise_text − noise_uncond), from a prediction whose first half of rows is
 * unconditional and second half conditional. Computed in float32 in the reference's order.
 */
export function applyGuidance(prediction: Float32Array, guidanceScale: number): Float32Array {
  const half = prediction.length / 2;
  const out = new Float32Array(half);
  const scale = Math.fround(guidanceScale);
  for (let i = 0; i < half; i++) {
    const uncond = prediction[i];
    const diff = Math.fround(prediction[half + i] - uncond);
    out[i] = Math.fround(uncond + Math.fround(scale * diff));
  }
  return out;
}

/** Keeps the first `channels` channels of each row of [B, 2C, h, w] (SANA's learned-sigma split). */
export function firstChannels(data: Float32Array, batch: number, channels: number, plane: number): Float32Array {
  const total = data.length / batch;
  const out = new Float32Array(batch * channels * plane);
  for (let b = 0; b < batch; b++) out.set(data.subarray(b * total, b * total + channels * plane), b * channels * plane);
  return out;
}
