// PyTorch's CPU random generator, re-implemented so that a seed means the same initial noise here as in
// diffusers on CPU: `torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed), dtype=float32)`.
//
//   manual_seed(s) ─► mt19937 seeded with the low 32 bits of s (torch keeps 64 bits but the engine uses 32)
//   float32 randn, numel >= 16: draw numel uniforms u = (random() & 2^24-1)·2^-24, then Box-Muller in blocks
//       of 16 (u[j] and u[j+8] give normals j and j+8); when numel % 16 != 0 the LAST 16 slots are drawn
//       again (16 fresh uniforms) and transformed as one more block, overwriting what was there.
//   numel < 16: per element, a float64 Box-Muller normal from two 53-bit uniforms (random64); the second
//       value of each pair is cached in the generator and returned by the next draw.
//
// torch's vectorised and scalar float32 paths differ in the last bits (different log/sin/cos), so a match
// is within ~1e-6, not bit for bit; the uniform stream itself is exact.
import { InvalidArgumentError } from './errors.ts';

const STATE_SIZE = 624;
const SHIFT_SIZE = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;
/** torch.Generator('cpu') without manual_seed starts from this seed (c10 default_rng_seed_val). */
export const TORCH_DEFAULT_SEED = 67280421310721n;
/** torch switches from the scalar path to the 16-wide Box-Muller blocks at this many float32 elements. */
const VECTOR_PATH_MIN_NUMEL = 16;
const TWO_PI = 2 * Math.PI;
const TWO_POW_MINUS_24 = 2 ** -24;
const TWO_POW_MINUS_53 = 2 ** -53;
const TWO_POW_32 = 2 ** 32;
const TWO_POW_64 = 1n << 64n;
const fround = Math.fround;

/** A seed as torch accepts it: an integer in [-2^63, 2^64); negative seeds wrap as two's complement. */
export function normalizeSeed(seed: number | bigint, field = 'seed'): bigint {
  let value: bigint;
  if (typeof seed === 'bigint') value = seed;
  else if (Number.isSafeInteger(seed)) value = BigInt(seed);
  else throw new InvalidArgumentError(field, `must be an integer (a safe integer or a bigint), got ${seed}`);
  if (value < -(1n << 63n) || value >= TWO_POW_64) {
    throw new InvalidArgumentError(field, `must be in [-2^63, 2^64), got ${value}`);
  }
  return value < 0n ? value + TWO_POW_64 : value;
}

/** The state of one torch CPU generator: mt19937 plus the cached second value of a float64 Box-Muller pair. */
export class TorchGenerator {
  private readonly state = new Uint32Array(STATE_SIZE);
  private left = 1;
  private next = 0;
  private cachedNormal: number | null = null;

  constructor(seed: number | bigint = TORCH_DEFAULT_SEED) {
    this.manualSeed(seed);
  }

  /** torch.Generator.manual_seed: reseeds the engine and drops the cached normal. */
  manualSeed(seed: number | bigint): this {
    const state = this.state;
    state[0] = Number(normalizeSeed(seed) & 0xffffffffn);
    for (let j = 1; j < STATE_SIZE; j++) {
      const prev = state[j - 1];
      state[j] = (Math.imul(1812433253, prev ^ (prev >>> 30)) + j) >>> 0;
    }
    this.left = 1;
    this.next = 0;
    this.cachedNormal = null;
    return this;
  }

  /** One 32-bit output of the engine (CPUGeneratorImpl::random). */
  random(): number {
    if (--this.left === 0) this.regenerate();
    let y = this.state[this.next++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** float32 uniform in [0, 1): the low 24 bits of one engine output (uniform_real_distribution<float>). */
  uniformFloat32(): number {
    return (this.random() & 0xffffff) * TWO_POW_MINUS_24;
  }

  /** float64 uniform in [0, 1): the low 53 bits of random64() = (first << 32) | second. */
  uniformFloat64(): number {
    const high = this.random();
    const low = this.random();
    return ((high & 0x1fffff) * TWO_POW_32 + low) * TWO_POW_MINUS_53;
  }

  /** normal_distribution<double>(0, 1): Box-Muller on two float64 uniforms, second value cached. */
  normalFloat64(): number {
    if (this.cachedNormal !== null) {
      const cached = this.cachedNormal;
      this.cachedNormal = null;
      return cached;
    }
    const u1 = this.uniformFloat64();
    const u2 = this.uniformFloat64();
    const radius = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = TWO_PI * u1;
    this.cachedNormal = radius * Math.sin(theta);
    return radius * Math.cos(theta);
  }

  /** torch.randn(shape, generator=this, dtype=torch.float32): consumes this generator's stream. */
  randn(shape: readonly number[]): Float32Array {
    const numel = numelOf(shape);
    const out = new Float32Array(numel);
    if (numel < VECTOR_PATH_MIN_NUMEL) {
      for (let i = 0; i < numel; i++) out[i] = this.normalFloat64();
      return out;
    }
    for (let i = 0; i < numel; i++) out[i] = this.uniformFloat32();
    for (let start = 0; start + 16 <= numel; start += 16) boxMullerBlock16(out, start);
    if (numel % 16 !== 0) {
      const start = numel - 16;
      for (let i = start; i < numel; i++) out[i] = this.uniformFloat32();
      boxMullerBlock16(out, start);
    }
    return out;
  }

  private regenerate(): void {
    const s = this.state;
    const twist = (u: number, v: number) =>
      ((((u & UPPER_MASK) | (v & LOWER_MASK)) >>> 1) ^ (v & 1 ? MATRIX_A : 0)) >>> 0;
    let k = 0;
    for (; k < STATE_SIZE - SHIFT_SIZE; k++) s[k] = (s[k + SHIFT_SIZE] ^ twist(s[k], s[k + 1])) >>> 0;
    for (; k < STATE_SIZE - 1; k++) s[k] = (s[k + SHIFT_SIZE - STATE_SIZE] ^ twist(s[k], s[k + 1])) >>> 0;
    s[STATE_SIZE - 1] = (s[SHIFT_SIZE - 1] ^ twist(s[STATE_SIZE - 1], s[0])) >>> 0;
    this.left = STATE_SIZE;
    this.next = 0;
  }
}

/**
 * float32 Box-Muller on 16 uniforms in place: (u[j], u[j+8]) -> (r·cos θ, r·sin θ) with r = sqrt(-2 ln(1-u[j])),
 * θ = 2π·u[j+8], each operation rounded to float32 as torch's float kernel does.
 */
function boxMullerBlock16(data: Float32Array, start: number): void {
  for (let j = start; j < start + 8; j++) {
    const u1 = fround(1 - data[j]); // [0,1) -> (0,1] so the log is finite
    const u2 = data[j + 8];
    const radius = fround(Math.sqrt(fround(-2 * fround(Math.log(u1)))));
    const theta = fround(TWO_PI * u2);
    data[j] = fround(radius * fround(Math.cos(theta)));
    data[j + 8] = fround(radius * fround(Math.sin(theta)));
  }
}

function numelOf(shape: readonly number[]): number {
  let numel = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new InvalidArgumentError('shape', `dimensions must be non-negative integers, got [${shape}]`);
    numel *= d;
  }
  if (!Number.isSafeInteger(numel) || numel > 2 ** 31) throw new InvalidArgumentError('shape', `[${shape}] has too many elements`);
  return numel;
}

/** torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed), dtype=torch.float32). */
export function torchRandn(shape: readonly number[], seed: number | bigint): Float32Array {
  return new TorchGenerator(seed).randn(shape);
}
