// Tensors and image files cut into bounded messages for gRPC streams, and put back together with every
// property of the run checked (dtype, shape, size limit, contiguous offsets, finite values), so a malformed
// stream is an INVALID_ARGUMENT naming its field rather than a crash or an unbounded allocation.
import os from 'node:os';
import { InvalidArgumentError } from './errors.ts';
import { DType, type Tensor } from './gen/sana/v1/tensor.ts';
import { ImageFormat as ProtoImageFormat, type ImageChunk, type ImageTile as ProtoImageTile } from './gen/sana/v1/image.ts';
import { LIMITS } from './limits.ts';
import type { DecodedImage, ImageFormat, ImageTile } from './stages.ts';
import { firstNonFinite, type HostTensor, type TensorData, type TensorType } from './tensor.ts';

/** Payload bytes per message: tensors and images of any size stream as runs of these. */
export const CHUNK_BYTES = 1 << 20;
/**
 * The message size limit of every server and client, for both directions: gRPC's default receive limit, not
 * raised, since chunking keeps every message near 1 MiB (the largest unchunked message, a GenerateRequest at its
 * documented limits of 16 prompts of 64 KiB, is about 1.1 MiB).
 */
export const MAX_MESSAGE_BYTES = 4 << 20;

// the wire format is little-endian and typed arrays use the host's order: only little-endian hosts are supported
if (os.endianness() !== 'LE') throw new Error('SANA Serve needs a little-endian host');

const DTYPES: Record<TensorType, { dtype: DType; make: (buffer: ArrayBuffer, length: number) => TensorData; itemSize: number }> = {
  float32: { dtype: DType.DTYPE_FLOAT32, make: (b, n) => new Float32Array(b, 0, n), itemSize: 4 },
  int64: { dtype: DType.DTYPE_INT64, make: (b, n) => new BigInt64Array(b, 0, n), itemSize: 8 },
  int32: { dtype: DType.DTYPE_INT32, make: (b, n) => new Int32Array(b, 0, n), itemSize: 4 },
  uint8: { dtype: DType.DTYPE_UINT8, make: (b, n) => new Uint8Array(b, 0, n), itemSize: 1 },
  int8: { dtype: DType.DTYPE_INT8, make: (b, n) => new Int8Array(b, 0, n), itemSize: 1 },
  float64: { dtype: DType.DTYPE_FLOAT64, make: (b, n) => new Float64Array(b, 0, n), itemSize: 8 },
};

export function dtypeName(dtype: DType): string {
  const entry = Object.entries(DTYPES).find(([, d]) => d.dtype === dtype);
  return entry ? entry[0] : `unknown dtype ${dtype}`;
}

/** Views of consecutive `chunkBytes` slices of `view`'s memory (one empty slice for no bytes), with their offsets. */
function* byteChunks(view: ArrayBufferView, chunkBytes: number): Generator<{ offset: number; data: Buffer }> {
  const bytes = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
  let offset = 0;
  do {
    const data = bytes.subarray(offset, offset + chunkBytes);
    yield { offset, data };
    offset += data.length;
  } while (offset < bytes.length);
}

/** The messages of one tensor's run; `data` views the tensor's memory (no copy until protobuf encodes it). */
export function* tensorChunks(t: HostTensor, chunkBytes = CHUNK_BYTES): Generator<Tensor> {
  const dtype = DTYPES[t.type].dtype;
  for (const chunk of byteChunks(t.data, chunkBytes)) yield { dtype, shape: t.dims, ...chunk };
}

export interface TensorExpectation<T extends TensorType> {
  /** the field name used in error messages (the proto field) */
  field: string;
  type: T;
  rank: number;
  /** upper bound on the tensor's bytes, so a client cannot make us allocate without limit */
  maxBytes: number;
  /** reject NaN and ±Infinity (float32 tensors) */
  finite?: boolean;
}

type DataOf<T extends TensorType> = T extends 'float32'
  ? Float32Array
  : T extends 'int64'
    ? BigInt64Array
    : T extends 'int32'
      ? Int32Array
      : T extends 'uint8'
        ? Uint8Array
        : T extends 'int8'
          ? Int8Array
          : Float64Array;

/** Collects one tensor's run of messages, checking each against the expectation. */
export class TensorAssembler<T extends TensorType> {
  private target: Uint8Array | undefined;
  private data: TensorData | undefined;
  private dims: number[] = [];
  private received = 0;

  constructor(private readonly expect: TensorExpectation<T>) {}

  get started(): boolean {
    return this.target !== undefined;
  }

  get complete(): boolean {
    return this.target !== undefined && this.received === this.target.length;
  }

  add(chunk: Tensor): void {
    const { field } = this.expect;
    if (this.complete) throw new InvalidArgumentError(field, 'received more data after the tensor was complete');
    if (!this.target) this.begin(chunk);
    else if (chunk.dtype !== DTYPES[this.expect.type].dtype || !sameDims(chunk.shape, this.dims)) {
      throw new InvalidArgumentError(field, 'dtype and shape must be the same in every message of a tensor');
    }
    if (chunk.offset !== this.received) {
      throw new InvalidArgumentError(field, `chunk offset ${chunk.offset} does not continue the ${this.received} bytes received`);
    }
    if (this.received + chunk.data.length > this.target!.length) {
      throw new InvalidArgumentError(field, `holds more than the ${this.target!.length} bytes its shape [${this.dims}] needs`);
    }
    this.target!.set(chunk.data, this.received);
    this.received += chunk.data.length;
  }

  private begin(chunk: Tensor): void {
    const { field, type, rank, maxBytes } = this.expect;
    const spec = DTYPES[type];
    if (chunk.dtype !== spec.dtype) throw new InvalidArgumentError(field, `dtype must be ${type}, got ${dtypeName(chunk.dtype)}`);
    if (chunk.shape.length !== rank || chunk.shape.some((d) => d < 1)) {
      throw new InvalidArgumentError(field, `shape [${chunk.shape}] must have ${rank} dimensions, each at least 1`);
    }
    const count = chunk.shape.reduce((a, b) => a * b, 1);
    const bytes = count * spec.itemSize;
    if (bytes > maxBytes) throw new InvalidArgumentError(field, `shape [${chunk.shape}] is ${bytes} bytes; the limit is ${maxBytes}`);
    const buffer = new ArrayBuffer(bytes);
    this.target = new Uint8Array(buffer);
    this.data = spec.make(buffer, count);
    this.dims = [...chunk.shape];
  }

  /** The finished tensor; throws when the run was missing or cut short. */
  result(): HostTensor<DataOf<T>> {
    const { field, type, finite } = this.expect;
    if (!this.target) throw new InvalidArgumentError(field, 'is required');
    if (!this.complete) throw new InvalidArgumentError(field, `ended after ${this.received} of ${this.target.length} bytes`);
    if (finite && this.data instanceof Float32Array) {
      const bad = firstNonFinite(this.data);
      if (bad >= 0) throw new InvalidArgumentError(field, `holds a non-finite value at flat index ${bad}`);
    }
    return { type, dims: this.dims, data: this.data as DataOf<T> };
  }
}

function sameDims(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

// ---- images ----

const FORMATS: Record<ImageFormat, ProtoImageFormat> = {
  png: ProtoImageFormat.IMAGE_FORMAT_PNG,
  jpeg: ProtoImageFormat.IMAGE_FORMAT_JPEG,
  webp: ProtoImageFormat.IMAGE_FORMAT_WEBP,
};

export function toProtoFormat(format: ImageFormat): ProtoImageFormat {
  return FORMATS[format];
}

/** The proto enum as the stages name formats; UNSPECIFIED means PNG. */
export function fromProtoFormat(format: ProtoImageFormat, field = 'format'): ImageFormat {
  if (format === ProtoImageFormat.IMAGE_FORMAT_UNSPECIFIED) return 'png';
  const name = (Object.keys(FORMATS) as ImageFormat[]).find((k) => FORMATS[k] === format);
  if (!name) throw new InvalidArgumentError(field, `unknown image format ${format}; expected PNG, JPEG or WEBP`);
  return name;
}

export function* imageChunks(image: DecodedImage, index: number, chunkBytes = CHUNK_BYTES): Generator<ImageChunk> {
  const header = { index, format: toProtoFormat(image.format), width: image.width, height: image.height, size: image.bytes.byteLength };
  for (const chunk of byteChunks(image.bytes, chunkBytes)) yield { ...header, ...chunk };
}

/** Reassembles the images of an ImageChunk stream (images one after another, each chunks in order). */
export class ImageAssembler {
  private readonly images: DecodedImage[] = [];
  private current: { bytes: Uint8Array; received: number } | undefined;

  constructor(
    private readonly maxBytes: number,
    private readonly maxImages: number = LIMITS.images,
  ) {}

  add(chunk: ImageChunk): void {
    const expectedIndex = this.current ? this.images.length - 1 : this.images.length;
    if (chunk.index !== expectedIndex) throw new Error(`image chunk for image ${chunk.index} arrived while expecting image ${expectedIndex}`);
    if (!this.current) {
      if (expectedIndex >= this.maxImages) throw new Error(`more than ${this.maxImages} images`);
      if (chunk.size > this.maxBytes) throw new Error(`image ${chunk.index} is ${chunk.size} bytes; the limit is ${this.maxBytes}`);
      this.current = { bytes: new Uint8Array(chunk.size), received: 0 };
      this.images.push({ bytes: this.current.bytes, width: chunk.width, height: chunk.height, format: fromProtoFormat(chunk.format) });
    }
    const c = this.current;
    if (chunk.offset !== c.received || c.received + chunk.data.length > c.bytes.length) {
      throw new Error(`image ${chunk.index}: chunk at offset ${chunk.offset} (${chunk.data.length} bytes) does not continue ${c.received} of ${c.bytes.length} bytes`);
    }
    c.bytes.set(chunk.data, c.received);
    c.received += chunk.data.length;
    if (c.received === c.bytes.length) this.current = undefined;
  }

  /** All images; throws when the last one was cut short. */
  result(): DecodedImage[] {
    if (this.current) throw new Error(`image ${this.images.length - 1} ended after ${this.current.received} of ${this.current.bytes.length} bytes`);
    return this.images;
  }
}

// ---- tiles of a streamed decode ----

/** A finished tile as messages of whole pixel rows, each at most `chunkBytes` (one row at least). */
export function* tileMessages(tile: ImageTile, chunkBytes = CHUNK_BYTES): Generator<ProtoImageTile> {
  const rowBytes = tile.width * 3;
  const rowsPerMessage = Math.max(1, Math.floor(chunkBytes / rowBytes));
  for (let y = 0; y < tile.height; y += rowsPerMessage) {
    const height = Math.min(rowsPerMessage, tile.height - y);
    yield {
      index: tile.index,
      top: tile.top + y,
      left: tile.left,
      width: tile.width,
      height,
      imageWidth: tile.imageWidth,
      imageHeight: tile.imageHeight,
      pixels: Buffer.from(tile.pixels.buffer, tile.pixels.byteOffset + y * rowBytes, height * rowBytes),
    };
  }
}

/** A received tile message, checked: its pixels fill width × height × 3 bytes inside an image of at most the side limit. */
export function fromTileMessage(m: ProtoImageTile): ImageTile {
  const inside = m.imageWidth <= LIMITS.side.max * 2 && m.imageHeight <= LIMITS.side.max * 2 && m.left + m.width <= m.imageWidth && m.top + m.height <= m.imageHeight;
  if (!inside || m.index >= LIMITS.images) throw new Error(`tile ${m.width}×${m.height} at (${m.top}, ${m.left}) of image ${m.index} lies outside its ${m.imageWidth}×${m.imageHeight} image`);
  if (m.pixels.length !== m.width * m.height * 3) throw new Error(`tile ${m.width}×${m.height} carries ${m.pixels.length} bytes, not ${m.width * m.height * 3}`);
  const { pixels, ...place } = m;
  return { ...place, pixels: new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.length) };
}
