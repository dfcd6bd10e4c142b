// A golden variant folder: a diffusers-layout checkpoint plus golden.safetensors and golden.json.
import fs from 'node:fs';
import path from 'node:path';
import { parsePythonJson } from '../../services/common/config.ts';
import { Checkpoint } from '../../services/common/safetensors.ts';

export interface GoldenTensorInfo {
  dtype: string;
  shape: number[];
  description?: string;
}

export interface GoldenJson {
  variant?: string;
  tensors: Record<string, GoldenTensorInfo>;
  calls: Record<string, any>;
  notes?: Record<string, string>;
  configs?: Record<string, any>;
}

export class Golden {
  readonly json: GoldenJson;
  readonly tensors: Checkpoint;
  readonly variant: string;

  constructor(readonly dir: string) {
    this.json = parsePythonJson(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8')) as GoldenJson;
    this.tensors = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    this.variant = path.basename(path.resolve(dir));
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  shape(name: string): number[] {
    return this.tensors.entry(name).shape;
  }

  f32(name: string): Float32Array {
    return this.tensors.readF32(name);
  }

  /** Integer tensor as plain numbers (ids, masks, timesteps). */
  ints(name: string): number[] {
    return Array.from(this.tensors.readInt(name).values as ArrayLike<number | bigint>, Number);
  }

  i64(name: string): BigInt64Array {
    const { values } = this.tensors.readInt(name);
    return values instanceof BigInt64Array ? values : BigInt64Array.from(Array.from(values as ArrayLike<number>, BigInt));
  }

  u8(name: string): Uint8Array {
    return this.tensors.readInt(name).values as Uint8Array;
  }

  /** The variant's checkpoint component folder (transformer/, vae/, text_encoder/, scheduler/). */
  component(name: string): string {
    return path.join(this.dir, name);
  }
}

/** max |ours - ref| / max |ref|, the parity metric of every float output. */
export function maxRelErr(ours: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (ours.length !== ref.length) throw new Error(`length ${ours.length} vs reference ${ref.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(ours[i] - ref[i]);
    if (!(d <= diff)) diff = Number.isNaN(d) ? Infinity : d;
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

export function maxAbsErr(ours: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (ours.length !== ref.length) throw new Error(`length ${ours.length} vs reference ${ref.length}`);
  let diff = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(ours[i] - ref[i]);
    if (!(d <= diff)) diff = Number.isNaN(d) ? Infinity : d;
  }
  return diff;
}
