// Random checkpoints in the diffusers layout the released SANA checkpoints use: tiny ones for tests, the
// real shapes for benchmarks. Random weights give noise images; they prove shapes, speed and plumbing.
import fs from 'node:fs';
import path from 'node:path';
import { writeSafetensors, type StoredDtype } from './safetensors.ts';

/** How one checkpoint component is laid out and initialised. */
export interface ComponentSpec {
  /** folder inside the pipeline checkpoint */
  folder: 'transformer' | 'vae' | 'text_encoder';
  /** safetensors file stem as diffusers / transformers write it */
  weightsStem: string;
  config: Record<string, unknown>;
  /** every tensor the component stores, with its shape */
  shapes: Map<string, number[]>;
  /** parameter init: 'norm' weights start at 1, biases and 'zero' at 0, matrices uniform with std 1/sqrt(fan_in) */
  init?: (name: string, shape: number[]) => 'norm' | 'zero' | 'matrix' | { std: number; mean?: number };
  /** edits a tensor after its random init (e.g. planted activation outliers) */
  plant?: (name: string, shape: number[], values: Float32Array) => void;
}

export interface WriteOptions {
  dtype?: StoredDtype;
  /** shard the weights into files of at most this many bytes (with an index json) */
  maxShardBytes?: number;
  seed?: number;
}

/** Deterministic, fast uniform PRNG (xorshift128+ folded to 32 bits) — weights need speed, not torch parity. */
export class Xorshift {
  private s0: number;
  private s1: number;
  constructor(seed: number) {
    this.s0 = (seed ^ 0x9e3779b9) >>> 0 || 1;
    this.s1 = (Math.imul(seed, 0x85ebca6b) ^ 0xc2b2ae35) >>> 0 || 2;
  }
  /** uniform in [0, 1) */
  next(): number {
    let x = this.s0;
    const y = this.s1;
    this.s0 = y;
    x ^= x << 23;
    x ^= x >>> 17;
    x ^= y ^ (y >>> 26);
    this.s1 = x >>> 0;
    return ((this.s0 + this.s1) >>> 0) / 4294967296;
  }
}

function hashName(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** Biases, running means and scalars (batch-norm counters) zero; other vectors (norm weights, running variances) one. */
export function defaultInit(name: string, shape: number[]): 'norm' | 'zero' | 'matrix' {
  const leaf = name.split('.').pop()!;
  if (leaf === 'bias' || leaf === 'running_mean' || shape.length === 0) return 'zero';
  if (shape.length === 1) return 'norm';
  return 'matrix';
}

function randomTensor(spec: ComponentSpec, name: string, shape: number[], seed: number): Float32Array {
  const count = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(count);
  const rule = (spec.init ?? defaultInit)(name, shape);
  if (rule === 'zero') return out;
  if (rule === 'norm') return out.fill(1);
  const fanIn = shape.length > 1 ? shape.slice(1).reduce((a, b) => a * b, 1) : shape[0];
  const std = rule === 'matrix' ? 1 / Math.sqrt(fanIn) : rule.std;
  const mean = rule === 'matrix' ? 0 : (rule.mean ?? 0);
  const half = std * Math.sqrt(3); // uniform(-a, a) has std a/√3
  const rng = new Xorshift(seed ^ hashName(name));
  for (let i = 0; i < count; i++) out[i] = mean + (2 * rng.next() - 1) * half;
  return out;
}

function initTensor(spec: ComponentSpec, name: string, shape: number[], seed: number): Float32Array {
  const out = randomTensor(spec, name, shape, seed);
  spec.plant?.(name, shape, out);
  return out;
}

/** Writes one component folder: config.json and its safetensors (one file or shards + index). */
export function writeComponent(root: string, spec: ComponentSpec, options: WriteOptions = {}): string {
  const dir = path.join(root, spec.folder);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), `${JSON.stringify(spec.config, null, 2)}\n`);
  const specs = [...spec.shapes].map(([name, shape]) => ({ name, shape }));
  writeSafetensors(dir, spec.weightsStem, specs, (name) => initTensor(spec, name, spec.shapes.get(name)!, options.seed ?? 0), {
    dtype: options.dtype,
    maxShardBytes: options.maxShardBytes,
  });
  return dir;
}
