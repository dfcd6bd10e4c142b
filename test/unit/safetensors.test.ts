import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../services/common/dtype.ts';
import { Checkpoint, CheckpointError, writeSafetensors } from '../../services/common/safetensors.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('safetensors');

/** Writes a safetensors file from a raw header object and data bytes. */
function rawFile(name: string, header: unknown, data: Uint8Array): string {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const file = path.join(root, name);
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
  return file;
}

function expectCheckpointError(fn: () => unknown, file: string, tensor: string | undefined, message: RegExp) {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(CheckpointError);
  const e = error as CheckpointError;
  expect(e.file).toBe(file);
  expect(e.tensor).toBe(tensor);
  expect(e.message).toContain(path.basename(file));
  if (tensor) expect(e.message).toContain(tensor);
  expect(e.message).toMatch(message);
}

describe('safetensors reader', () => {
  test('round-trips F32, F16 and BF16 tensors, single file and sharded', () => {
    const values = Float32Array.from({ length: 24 }, (_, i) => (i - 11.5) / 7);
    const specs = [
      { name: 'a.weight', shape: [4, 3] },
      { name: 'b.weight', shape: [12] },
    ];
    const produce = (name: string) => (name === 'a.weight' ? values.subarray(0, 12) : values.subarray(12));
    for (const dtype of ['F32', 'F16', 'BF16'] as const) {
      const dir = path.join(root, `rt-${dtype}`);
      writeSafetensors(dir, 'model', specs, produce, { dtype, maxShardBytes: dtype === 'F32' ? 48 : undefined });
      const ckpt = Checkpoint.open(dir, 'model');
      if (dtype === 'F32') {
        expect(ckpt.files.length).toBe(2);
        expect(fs.existsSync(path.join(dir, 'model.safetensors.index.json'))).toBe(true);
      }
      const a = ckpt.readF32('a.weight', [4, 3]);
      const expected = dtype === 'F32' ? values.subarray(0, 12) : dtype === 'F16' ? f16ToF32(f32ToF16(values.subarray(0, 12))) : bf16ToF32(f32ToBf16(values.subarray(0, 12)));
      expect(Array.from(a)).toEqual(Array.from(expected));
      expect(ckpt.entry('b.weight').dtype).toBe(dtype);
    }
  });

  test('f16 and bf16 conversions round to nearest even and keep specials', () => {
    const specials = new Float32Array([0, -0, 1, -2.5, 65504, 1e-8, 6.1e-5, Infinity, -Infinity, NaN, 1 + 2 ** -11, 1 + 3 * 2 ** -11]);
    const half = f16ToF32(f32ToF16(specials));
    expect(Array.from(half.subarray(0, 5))).toEqual([0, -0, 1, -2.5, 65504]);
    expect(half[5]).toBe(0); // below half the smallest subnormal
    expect(half[6]).toBe(Math.round(Math.fround(6.1e-5) * 2 ** 24) * 2 ** -24); // a subnormal: the 2^-24 grid
    expect(half[7]).toBe(Infinity);
    expect(half[8]).toBe(-Infinity);
    expect(Number.isNaN(half[9])).toBe(true);
    expect(half[10]).toBe(1); // tie → even
    expect(half[11]).toBe(1 + 2 * 2 ** -10); // tie → even (up)
    const bf = bf16ToF32(f32ToBf16(new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, NaN])));
    expect(bf[0]).toBe(1);
    expect(bf[1]).toBe(1 + 2 ** -6);
    expect(Number.isNaN(bf[2])).toBe(true);
  });

  const good = new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer);

  test('a missing tensor names the checkpoint and the tensor', () => {
    const file = rawFile('missing.safetensors', { x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, good);
    expectCheckpointError(() => Checkpoint.open(file).readF32('y'), file, 'y', /missing/);
  });

  test('a wrong shape names the file and tensor', () => {
    const file = rawFile('shape.safetensors', { x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, good);
    expectCheckpointError(() => Checkpoint.open(file).readF32('x', [2, 3]), file, 'x', /shape \[4\].*\[2,3\]/);
  });

  test('a truncated file is detected from the header', () => {
    const file = rawFile('trunc.safetensors', { x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, good.subarray(0, 10));
    expectCheckpointError(() => Checkpoint.open(file), file, 'x', /outside the file/);
  });

  test('a header pointing outside the file is rejected', () => {
    const file = rawFile('outside.safetensors', { x: { dtype: 'F32', shape: [4], data_offsets: [1000, 1016] } }, good);
    expectCheckpointError(() => Checkpoint.open(file), file, 'x', /outside the file/);
  });

  test('an unknown dtype is rejected', () => {
    const file = rawFile('dtype.safetensors', { x: { dtype: 'F8_E9M9', shape: [4], data_offsets: [0, 16] } }, good);
    expectCheckpointError(() => Checkpoint.open(file), file, 'x', /unknown dtype "F8_E9M9"/);
  });

  test('dtype/size disagreement and overlapping tensors are rejected', () => {
    const size = rawFile('size.safetensors', { x: { dtype: 'F16', shape: [4], data_offsets: [0, 16] } }, good);
    expectCheckpointError(() => Checkpoint.open(size), size, 'x', /holds 16 bytes but F16\[4\] needs 8/);
    const overlap = rawFile(
      'overlap.safetensors',
      { x: { dtype: 'F32', shape: [3], data_offsets: [0, 12] }, y: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } },
      good,
    );
    expectCheckpointError(() => Checkpoint.open(overlap), overlap, 'y', /overlaps tensor x/);
  });

  test('a header length beyond the file and non-JSON headers are rejected', () => {
    const file = path.join(root, 'badlen.safetensors');
    const buf = Buffer.alloc(16);
    buf.writeBigUInt64LE(1000n);
    fs.writeFileSync(file, buf);
    expectCheckpointError(() => Checkpoint.open(file), file, undefined, /header length 1000 exceeds the file/);
    const junk = path.join(root, 'junk.safetensors');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(3n);
    fs.writeFileSync(junk, Buffer.concat([len, Buffer.from('{x]')]));
    expectCheckpointError(() => Checkpoint.open(junk), junk, undefined, /not valid JSON/);
  });

  test('a sharded index naming a tensor its shard lacks is rejected', () => {
    const dir = path.join(root, 'badindex');
    writeSafetensors(dir, 'model', [{ name: 'a', shape: [2] }, { name: 'b', shape: [2] }], () => new Float32Array(2), { maxShardBytes: 8 });
    const indexFile = path.join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
    index.weight_map.c = index.weight_map.a;
    fs.writeFileSync(indexFile, JSON.stringify(index));
    expect(() => Checkpoint.open(dir, 'model')).toThrow(/\[c\]: listed in the index but missing from the shard/);
  });
});
