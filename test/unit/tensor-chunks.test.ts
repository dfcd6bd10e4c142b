// Tensor and image chunking: round trips through the real protobuf encoding, and every malformed run rejected
// with an InvalidArgumentError that names its field.
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import { ImageChunk } from '../../services/common/gen/sana/v1/image.ts';
import { DType, Tensor } from '../../services/common/gen/sana/v1/tensor.ts';
import { tensor } from '../../services/common/tensor.ts';
import { CHUNK_BYTES, ImageAssembler, imageChunks, MAX_MESSAGE_BYTES, TensorAssembler, tensorChunks } from '../../services/common/tensor-chunks.ts';

const wire = (m: Tensor) => Tensor.decode(Tensor.encode(m).finish());

function invalid(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidArgumentError);
    return e as InvalidArgumentError;
  }
  throw new Error('expected an InvalidArgumentError');
}

describe('tensor chunks', () => {
  it('round-trips a float32 tensor bigger than one chunk through protobuf, every message under the size limit', () => {
    const count = 3 * 300 * 2304; // three prompts' embeddings: 8.3 MB
    const data = Float32Array.from({ length: count }, (_, i) => Math.sin(i) * 1e3);
    const chunks = [...tensorChunks(tensor(data, [3, 300, 2304]))];
    expect(chunks.length).toBe(Math.ceil((count * 4) / CHUNK_BYTES));
    const assembler = new TensorAssembler({ field: 'prompt_embeds', type: 'float32', rank: 3, maxBytes: count * 4, finite: true });
    for (const c of chunks) {
      const bytes = Tensor.encode(c).finish();
      expect(bytes.length).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
      assembler.add(Tensor.decode(bytes));
    }
    const out = assembler.result();
    expect(out.dims).toEqual([3, 300, 2304]);
    // compared as bytes: a deep equality over 2 million elements takes the test runner tens of seconds
    expect(Buffer.from(out.data.buffer).equals(Buffer.from(data.buffer))).toBe(true);
  });

  it('round-trips int64 masks, small tensors in one message, and views with a byte offset', () => {
    const mask = BigInt64Array.from({ length: 2 * 7 }, (_, i) => BigInt(i % 3 === 0));
    const chunks = [...tensorChunks(tensor(mask, [2, 7]))];
    expect(chunks).toHaveLength(1);
    const a = new TensorAssembler({ field: 'prompt_attention_mask', type: 'int64', rank: 2, maxBytes: 1024 });
    a.add(wire(chunks[0]));
    expect(a.result().data).toEqual(mask);

    const backing = Float32Array.from({ length: 10 }, (_, i) => i);
    const view = backing.subarray(3, 9);
    const b = new TensorAssembler({ field: 'latents', type: 'float32', rank: 4, maxBytes: 1024 });
    for (const c of tensorChunks(tensor(view, [1, 1, 2, 3]), 8)) b.add(wire(c));
    expect(Array.from(b.result().data)).toEqual([3, 4, 5, 6, 7, 8]);
  });

  it('rejects a wrong dtype, rank, oversize shape, gap, overflow, short run, changed shape and NaN, naming the field', () => {
    const f = (over: Partial<Tensor> = {}): Tensor => ({ dtype: DType.DTYPE_FLOAT32, shape: [1, 2], offset: 0, data: Buffer.alloc(8), ...over });
    const make = (maxBytes = 64) => new TensorAssembler({ field: 'latents', type: 'float32', rank: 2, maxBytes, finite: true });

    expect(invalid(() => make().add(f({ dtype: DType.DTYPE_INT64 }))).message).toBe('latents: dtype must be float32, got int64');
    expect(invalid(() => make().add(f({ shape: [2] }))).field).toBe('latents');
    expect(invalid(() => make().add(f({ shape: [0, 2] }))).message).toMatch(/each at least 1/);
    expect(invalid(() => make(4).add(f())).message).toBe('latents: shape [1,2] is 8 bytes; the limit is 4');
    expect(invalid(() => make().add(f({ offset: 4, data: Buffer.alloc(4) }))).message).toMatch(/offset 4 does not continue the 0 bytes/);
    expect(invalid(() => make().add(f({ data: Buffer.alloc(12) }))).message).toMatch(/more than the 8 bytes/);

    const short = make();
    short.add(f({ data: Buffer.alloc(4) }));
    expect(invalid(() => short.result()).message).toBe('latents: ended after 4 of 8 bytes');
    expect(invalid(() => short.add(f({ shape: [2, 1], offset: 4, data: Buffer.alloc(4) }))).message).toMatch(/same in every message/);
    expect(invalid(() => make().result()).message).toBe('latents: is required');

    const nan = make();
    nan.add(f({ data: Buffer.from(new Float32Array([1, NaN]).buffer) }));
    expect(invalid(() => nan.result()).message).toBe('latents: holds a non-finite value at flat index 1');
  });
});

describe('image chunks', () => {
  it('round-trips several images in bounded chunks and rejects a cut-short stream', () => {
    const images = [0, 1].map((k) => ({
      bytes: Uint8Array.from({ length: 2500 + k * 1000 }, (_, i) => (i * 7 + k) & 255),
      width: 64,
      height: 32,
      format: 'webp' as const,
    }));
    const assembler = new ImageAssembler(1 << 20);
    let messages = 0;
    for (const [i, image] of images.entries()) {
      for (const chunk of imageChunks(image, i, 1000)) {
        assembler.add(ImageChunk.decode(ImageChunk.encode(chunk).finish()));
        messages++;
      }
    }
    expect(messages).toBe(3 + 4);
    expect(assembler.result()).toEqual(images);

    const cut = new ImageAssembler(1 << 20);
    cut.add([...imageChunks(images[0], 0, 1000)][0]);
    expect(() => cut.result()).toThrow('image 0 ended after 1000 of 2500 bytes');

    const one = new ImageAssembler(1 << 20, 1);
    for (const chunk of imageChunks(images[0], 0)) one.add(chunk);
    expect(() => one.add([...imageChunks(images[1], 1)][0])).toThrow('more than 1 images');
  });
});
