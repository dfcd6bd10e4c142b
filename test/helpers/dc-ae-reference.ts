// A direct, loop-by-loop float64 evaluation of the AutoencoderDC decoder, module by module as diffusers runs it
// (nearest ×2 then a 3×3 conv, repeat_interleave + pixel_shuffle shortcuts, the attention switching between its
// linear and quadratic form at H·W ≤ attention_head_dim). Slow; for tiny checkpoints in tests. It is checked
// against the reference's own golden output (tiny-a) and then stands in for it on configurations the golden
// does not cover (batch norm, pixel-shuffle up-sampling, a head up-sampler, other activations and scales).
import path from 'node:path';
import { Checkpoint } from '../../services/common/safetensors.ts';
import { decoderLayout, loadDcAeConfig, type UpStage } from '../../services/decoder/dc-ae.ts';

/** One image [C, H, W] in float64. */
interface Img {
  c: number;
  h: number;
  w: number;
  d: Float64Array;
}

const img = (c: number, h: number, w: number): Img => ({ c, h, w, d: new Float64Array(c * h * w) });

function conv(x: Img, weight: Float32Array, outC: number, k: number, groups: number, bias?: Float32Array): Img {
  const y = img(outC, x.h, x.w);
  const inPerGroup = x.c / groups;
  const outPerGroup = outC / groups;
  const pad = k >> 1;
  for (let o = 0; o < outC; o++) {
    const g = Math.floor(o / outPerGroup);
    for (let yy = 0; yy < x.h; yy++) {
      for (let xx = 0; xx < x.w; xx++) {
        let sum = bias ? bias[o] : 0;
        for (let ci = 0; ci < inPerGroup; ci++) {
          const c = g * inPerGroup + ci;
          for (let ky = 0; ky < k; ky++) {
            const sy = yy + ky - pad;
            if (sy < 0 || sy >= x.h) continue;
            for (let kx = 0; kx < k; kx++) {
              const sx = xx + kx - pad;
              if (sx < 0 || sx >= x.w) continue;
              sum += weight[((o * inPerGroup + ci) * k + ky) * k + kx] * x.d[(c * x.h + sy) * x.w + sx];
            }
          }
        }
        y.d[(o * x.h + yy) * x.w + xx] = sum;
      }
    }
  }
  return y;
}

const map = (x: Img, fn: (v: number) => number): Img => ({ ...x, d: x.d.map(fn) });
const add = (a: Img, b: Img): Img => ({ ...a, d: a.d.map((v, i) => v + b.d[i]) });

function activation(x: Img, name: string | null): Img {
  const erf = (v: number) => {
    // Maclaurin series: accurate to ~1e-11 for |v| ≤ 4; beyond, 1 - |erf| < 2e-8
    if (Math.abs(v) > 4) return Math.sign(v);
    let sum = v;
    let term = v;
    for (let n = 1; n < 200; n++) {
      term *= (-v * v) / n;
      const next = term / (2 * n + 1);
      sum += next;
      if (Math.abs(next) < 1e-17) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  };
  switch (name) {
    case null:
      return x;
    case 'silu':
    case 'swish':
      return map(x, (v) => v / (1 + Math.exp(-v)));
    case 'relu':
      return map(x, (v) => Math.max(v, 0));
    case 'gelu':
      return map(x, (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)));
    case 'mish':
      return map(x, (v) => v * Math.tanh(Math.log1p(Math.exp(v))));
    default:
      throw new Error(`activation ${name}`);
  }
}

function repeatInterleave(x: Img, r: number): Img {
  const y = img(x.c * r, x.h, x.w);
  const plane = x.h * x.w;
  for (let c = 0; c < y.c; c++) y.d.set(x.d.subarray(Math.floor(c / r) * plane, (Math.floor(c / r) + 1) * plane), c * plane);
  return y;
}

function pixelShuffle(x: Img): Img {
  const y = img(x.c / 4, x.h * 2, x.w * 2);
  for (let c = 0; c < y.c; c++)
    for (let i = 0; i < x.h; i++)
      for (let j = 0; j < x.w; j++)
        for (let a = 0; a < 2; a++) for (let b = 0; b < 2; b++) y.d[(c * y.h + 2 * i + a) * y.w + 2 * j + b] = x.d[((c * 4 + a * 2 + b) * x.h + i) * x.w + j];
  return y;
}

function nearest2(x: Img): Img {
  const y = img(x.c, x.h * 2, x.w * 2);
  for (let c = 0; c < x.c; c++)
    for (let i = 0; i < y.h; i++) for (let j = 0; j < y.w; j++) y.d[(c * y.h + i) * y.w + j] = x.d[(c * x.h + (i >> 1)) * x.w + (j >> 1)];
  return y;
}

export class DcAeReference {
  private readonly ckpt: Checkpoint;
  readonly config;
  readonly layout;

  constructor(vaeDir: string) {
    this.config = loadDcAeConfig(path.join(vaeDir, 'config.json'));
    this.layout = decoderLayout(this.config);
    this.ckpt = Checkpoint.open(vaeDir, 'diffusion_pytorch_model');
  }

  private t(name: string): Float32Array {
    return this.ckpt.readF32(name);
  }

  private conv(x: Img, prefix: string, opts: { bias?: boolean; groups?: number } = {}): Img {
    const shape = this.ckpt.entry(`${prefix}.weight`).shape;
    const k = shape.length === 4 ? shape[2] : 1;
    return conv(x, this.t(`${prefix}.weight`), shape[0], k, opts.groups ?? 1, opts.bias === false ? undefined : this.t(`${prefix}.bias`));
  }

  private norm(x: Img, prefix: string, type: 'rms_norm' | 'batch_norm'): Img {
    const w = this.t(`${prefix}.weight`);
    const b = this.t(`${prefix}.bias`);
    const y = img(x.c, x.h, x.w);
    const plane = x.h * x.w;
    if (type === 'batch_norm') {
      const mean = this.t(`${prefix}.running_mean`);
      const variance = this.t(`${prefix}.running_var`);
      for (let c = 0; c < x.c; c++) {
        for (let p = 0; p < plane; p++) y.d[c * plane + p] = ((x.d[c * plane + p] - mean[c]) / Math.sqrt(variance[c] + 1e-5)) * w[c] + b[c];
      }
      return y;
    }
    for (let p = 0; p < plane; p++) {
      let ms = 0;
      for (let c = 0; c < x.c; c++) ms += x.d[c * plane + p] ** 2;
      const inv = 1 / Math.sqrt(ms / x.c + 1e-5);
      for (let c = 0; c < x.c; c++) y.d[c * plane + p] = x.d[c * plane + p] * inv * w[c] + b[c];
    }
    return y;
  }

  private upBlock(x: Img, prefix: string, outC: number, shortcut: boolean): Img {
    const y = this.layout.interpolate ? this.conv(nearest2(x), `${prefix}.conv`) : pixelShuffle(this.conv(x, `${prefix}.conv`));
    return shortcut ? add(y, pixelShuffle(repeatInterleave(x, (4 * outC) / x.c))) : y;
  }

  private attention(x: Img, prefix: string, st: UpStage): Img {
    const d = this.config.attention_head_dim;
    const inner = st.heads * d;
    const qkvWeight = new Float32Array(3 * inner * x.c);
    ['to_q', 'to_k', 'to_v'].forEach((p, i) => qkvWeight.set(this.t(`${prefix}.${p}.weight`), i * inner * x.c));
    const qkv = conv(x, qkvWeight, 3 * inner, 1, 1);
    const parts = [qkv];
    st.kernelSizes.forEach((_, m) => {
      const local = this.conv(qkv, `${prefix}.to_qkv_multiscale.${m}.proj_in`, { bias: false, groups: 3 * inner });
      parts.push(this.conv(local, `${prefix}.to_qkv_multiscale.${m}.proj_out`, { bias: false, groups: 3 * st.heads }));
    });
    const n = x.h * x.w;
    const groups = st.heads * parts.length;
    const all = new Float64Array(groups * 3 * d * n);
    parts.forEach((p, i) => all.set(p.d, i * p.d.length));
    const out = img(groups * d, x.h, x.w);
    const at = (g: number, row: number, col: number) => all[(g * 3 * d + row) * n + col];
    for (let g = 0; g < groups; g++) {
      const q = (i: number, col: number) => Math.max(at(g, i, col), 0);
      const k = (i: number, col: number) => Math.max(at(g, d + i, col), 0);
      const v = (i: number, col: number) => at(g, 2 * d + i, col);
      if (n > d) {
        // linear: [V; 1]·Kᵀ·Q, the first d rows over the last
        const vk = new Float64Array((d + 1) * d);
        for (let i = 0; i <= d; i++) for (let j = 0; j < d; j++) for (let m = 0; m < n; m++) vk[i * d + j] += (i < d ? v(i, m) : 1) * k(j, m);
        for (let col = 0; col < n; col++) {
          const o = new Float64Array(d + 1);
          for (let i = 0; i <= d; i++) for (let j = 0; j < d; j++) o[i] += vk[i * d + j] * q(j, col);
          for (let i = 0; i < d; i++) out.d[(g * d + i) * n + col] = o[i] / (o[d] + 1e-15);
        }
      } else {
        // quadratic: scores = KᵀQ normalised over the keys, then V·scores
        for (let col = 0; col < n; col++) {
          const scores = new Float64Array(n);
          for (let m = 0; m < n; m++) for (let j = 0; j < d; j++) scores[m] += k(j, m) * q(j, col);
          const total = scores.reduce((a, b) => a + b, 0) + 1e-15;
          for (let i = 0; i < d; i++) {
            let sum = 0;
            for (let m = 0; m < n; m++) sum += v(i, m) * (scores[m] / total);
            out.d[(g * d + i) * n + col] = sum;
          }
        }
      }
    }
    const projected = conv(out, this.t(`${prefix}.to_out.weight`), x.c, 1, 1);
    return add(this.norm(projected, `${prefix}.norm_out`, st.normType), x);
  }

  private glu(x: Img, prefix: string): Img {
    const expanded = activation(this.conv(x, `${prefix}.conv_inverted`), 'silu');
    const depth = this.conv(expanded, `${prefix}.conv_depth`, { groups: expanded.c });
    const hidden = depth.c / 2;
    const plane = x.h * x.w;
    const gated = img(hidden, x.h, x.w);
    for (let i = 0; i < hidden * plane; i++) {
      const gate = depth.d[hidden * plane + i];
      gated.d[i] = depth.d[i] * (gate / (1 + Math.exp(-gate)));
    }
    return add(this.norm(this.conv(gated, `${prefix}.conv_point`, { bias: false }), `${prefix}.norm`, 'rms_norm'), x);
  }

  /** Decodes one latent [C, h, w] (flat) to the sample [3, s·h, s·w] (flat, float64). */
  decode(latent: Float32Array, h: number, w: number): Float64Array {
    const c = this.config;
    const widths = c.decoder_block_out_channels;
    const z: Img = { c: c.latent_channels, h, w, d: Float64Array.from(latent) };
    let x = this.conv(z, 'decoder.conv_in');
    if (c.decoder_in_shortcut) x = add(x, repeatInterleave(z, widths[widths.length - 1] / c.latent_channels));
    for (const st of this.layout.stages) {
      let j = 0;
      if (st.upsample) x = this.upBlock(x, `decoder.up_blocks.${st.index}.${j++}`, st.channels, true);
      for (let l = 0; l < st.layers; l++, j++) {
        const b = `decoder.up_blocks.${st.index}.${j}`;
        if (st.blockType === 'ResBlock') {
          const inner = activation(this.conv(x, `${b}.conv1`), st.act);
          x = add(this.norm(this.conv(inner, `${b}.conv2`, { bias: false }), `${b}.norm`, st.normType), x);
        } else {
          x = this.glu(this.attention(x, `${b}.attn`, st), `${b}.conv_out`);
        }
      }
    }
    x = activation(this.norm(x, 'decoder.norm_out', 'rms_norm'), this.layout.convAct);
    x = this.layout.headUpsamples ? this.upBlock(x, 'decoder.conv_out', c.in_channels, false) : this.conv(x, 'decoder.conv_out');
    return x.d;
  }
}
