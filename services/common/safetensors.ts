// safetensors reading and writing: single files and sharded checkpoints (*.safetensors.index.json).
// Tensors are read one at a time straight from the file, so a multi-GB checkpoint is never held twice.
import fs from 'node:fs';
import path from 'node:path';
import {
  BYTES_PER_ELEMENT,
  bytesToF32,
  f32ToBf16,
  f32ToF16,
  isSafetensorsDtype,
  numel,
  type SafetensorsDtype,
} from './dtype.ts';

export class CheckpointError extends Error {
  constructor(
    readonly file: string,
    readonly tensor: string | undefined,
    message: string,
  ) {
    super(`${file}${tensor ? ` [${tensor}]` : ''}: ${message}`);
    this.name = 'CheckpointError';
  }
}

export interface TensorEntry {
  name: string;
  file: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  byteLength: number;
}

const MAX_HEADER_BYTES = 100 * 1024 * 1024; // the format's own limit

/** Parses and validates one file's header: bounds, overlaps, dtype/size agreement. */
export function readSafetensorsHeader(file: string): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new CheckpointError(file, undefined, `cannot open: ${(e as Error).message}`);
  }
  try {
    const fileSize = fs.fstatSync(fd).size;
    if (fileSize < 8) throw new CheckpointError(file, undefined, `file is ${fileSize} bytes, too short for a safetensors header`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(MAX_HEADER_BYTES) || Number(headerLen) + 8 > fileSize) {
      throw new CheckpointError(file, undefined, `header length ${headerLen} exceeds the file (${fileSize} bytes)`);
    }
    const headerBuf = Buffer.alloc(Number(headerLen));
    fs.readSync(fd, headerBuf, 0, headerBuf.length, 8);
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch (e) {
      throw new CheckpointError(file, undefined, `header is not valid JSON: ${(e as Error).message}`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new CheckpointError(file, undefined, 'header is not a JSON object');
    }
    const dataStart = 8 + Number(headerLen);
    const dataSize = fileSize - dataStart;
    const entries = new Map<string, TensorEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(header)) {
      if (name === '__metadata__') {
        metadata = (raw ?? {}) as Record<string, string>;
        continue;
      }
      const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (!isSafetensorsDtype(info?.dtype)) {
        throw new CheckpointError(file, name, `unknown dtype ${JSON.stringify(info?.dtype)}`);
      }
      const shape = info.shape;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
        throw new CheckpointError(file, name, `invalid shape ${JSON.stringify(shape)}`);
      }
      const offsets = info.data_offsets;
      if (
        !Array.isArray(offsets) ||
        offsets.length !== 2 ||
        !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
        offsets[1] < offsets[0]
      ) {
        throw new CheckpointError(file, name, `invalid data_offsets ${JSON.stringify(offsets)}`);
      }
      const [begin, end] = offsets as [number, number];
      if (end > dataSize) {
        throw new CheckpointError(file, name, `data [${begin}, ${end}) points outside the file's ${dataSize} data bytes (truncated?)`);
      }
      const expected = numel(shape) * BYTES_PER_ELEMENT[info.dtype];
      if (end - begin !== expected) {
        throw new CheckpointError(file, name, `holds ${end - begin} bytes but ${info.dtype}${JSON.stringify(shape)} needs ${expected}`);
      }
      entries.set(name, { name, file, dtype: info.dtype, shape, offset: dataStart + begin, byteLength: expected });
    }
    const sorted = [...entries.values()].filter((e) => e.byteLength > 0).sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1];
      if (sorted[i].offset < prev.offset + prev.byteLength) {
        throw new CheckpointError(file, sorted[i].name, `data overlaps tensor ${prev.name}`);
      }
    }
    return { entries, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

/** A checkpoint: every tensor of one safetensors file or of all shards named by an index. */
export class Checkpoint {
  private constructor(
    readonly source: string,
    readonly files: string[],
    private readonly entries: Map<string, TensorEntry>,
  ) {}

  /** Opens `<dir>/<stem>.safetensors` or `<dir>/<stem>.safetensors.index.json`, or a single file path. */
  static open(fileOrDir: string, stem?: string): Checkpoint {
    if (!fs.existsSync(fileOrDir)) throw new CheckpointError(fileOrDir, undefined, 'no such file or folder');
    if (fs.statSync(fileOrDir).isFile()) {
      return fileOrDir.endsWith('.index.json') ? Checkpoint.openIndex(fileOrDir) : Checkpoint.openFiles(fileOrDir, [fileOrDir]);
    }
    const candidates = fs.readdirSync(fileOrDir);
    const pick = (suffix: string) =>
      candidates.filter((f) => f.endsWith(suffix) && (stem === undefined || f === `${stem}${suffix}`)).sort();
    const indexes = pick('.safetensors.index.json');
    if (indexes.length > 0) return Checkpoint.openIndex(path.join(fileOrDir, indexes[0]));
    const singles = pick('.safetensors');
    if (singles.length === 1) return Checkpoint.openFiles(fileOrDir, [path.join(fileOrDir, singles[0])]);
    if (singles.length === 0) throw new CheckpointError(fileOrDir, undefined, 'no *.safetensors file or *.safetensors.index.json in the folder');
    throw new CheckpointError(fileOrDir, undefined, `several safetensors files (${singles.join(', ')}) and no index`);
  }

  private static openIndex(indexFile: string): Checkpoint {
    let index: { weight_map?: Record<string, string> };
    try {
      index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
    } catch (e) {
      throw new CheckpointError(indexFile, undefined, `cannot read index: ${(e as Error).message}`);
    }
    if (!index.weight_map || typeof index.weight_map !== 'object') {
      throw new CheckpointError(indexFile, undefined, 'index has no weight_map');
    }
    const dir = path.dirname(indexFile);
    const shards = [...new Set(Object.values(index.weight_map))].sort();
    for (const s of shards) {
      if (path.isAbsolute(s) || s.split(/[\\/]/).includes('..')) throw new CheckpointError(indexFile, undefined, `shard path ${s} leaves the folder`);
    }
    const checkpoint = Checkpoint.openFiles(indexFile, shards.map((s) => path.join(dir, s)));
    for (const [name, shard] of Object.entries(index.weight_map)) {
      const entry = checkpoint.entries.get(name);
      if (!entry) throw new CheckpointError(path.join(dir, shard), name, 'listed in the index but missing from the shard');
      if (path.basename(entry.file) !== path.basename(shard)) {
        throw new CheckpointError(indexFile, name, `index says ${shard} but the tensor is in ${path.basename(entry.file)}`);
      }
    }
    return checkpoint;
  }

  private static openFiles(source: string, files: string[]): Checkpoint {
    const entries = new Map<string, TensorEntry>();
    for (const file of files) {
      for (const [name, entry] of readSafetensorsHeader(file).entries) {
        if (entries.has(name)) throw new CheckpointError(file, name, `also stored in ${entries.get(name)!.file}`);
        entries.set(name, entry);
      }
    }
    return new Checkpoint(source, files, entries);
  }

  get names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  entry(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new CheckpointError(this.source, name, 'tensor missing from the checkpoint');
    return e;
  }

  /** Checks a tensor's shape against what the model config implies. */
  expectShape(name: string, shape: readonly number[]): TensorEntry {
    const e = this.entry(name);
    if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(e.file, name, `shape [${e.shape}] but the config implies [${shape}]`);
    }
    return e;
  }

  readBytes(name: string): Uint8Array {
    const e = this.entry(name);
    const buf = new Uint8Array(e.byteLength);
    const fd = fs.openSync(e.file, 'r');
    try {
      let done = 0;
      while (done < e.byteLength) {
        const n = fs.readSync(fd, buf, done, Math.min(e.byteLength - done, 1 << 30), e.offset + done);
        if (n === 0) throw new CheckpointError(e.file, name, 'file ended before the tensor did (truncated)');
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    return buf;
  }

  /** Reads a floating tensor as float32 (bf16/fp16 are widened exactly), optionally checking its shape. */
  readF32(name: string, shape?: readonly number[]): Float32Array {
    const e = shape ? this.expectShape(name, shape) : this.entry(name);
    if (!['F32', 'F16', 'BF16', 'F64'].includes(e.dtype)) {
      throw new CheckpointError(e.file, name, `dtype ${e.dtype} is not a floating-point type`);
    }
    return bytesToF32(this.readBytes(name), e.dtype);
  }

  /** Reads an integer tensor (I64/I32/I16/I8/U8/BOOL) as numbers. */
  readInt(name: string): { shape: number[]; values: BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array } {
    const e = this.entry(name);
    const bytes = this.readBytes(name);
    const b = bytes.buffer;
    switch (e.dtype) {
      case 'I64':
        return { shape: e.shape, values: new BigInt64Array(b) };
      case 'I32':
        return { shape: e.shape, values: new Int32Array(b) };
      case 'I16':
        return { shape: e.shape, values: new Int16Array(b) };
      case 'I8':
        return { shape: e.shape, values: new Int8Array(b) };
      case 'U8':
      case 'BOOL':
        return { shape: e.shape, values: bytes };
      default:
        throw new CheckpointError(e.file, name, `dtype ${e.dtype} is not an integer type`);
    }
  }
}

export type StoredDtype = 'F32' | 'F16' | 'BF16';

export interface TensorToWrite {
  name: string;
  shape: number[];
  /** float32 values, stored as `dtype` (rounded to nearest even) */
  data: Float32Array;
}

function encode(data: Float32Array, dtype: StoredDtype): Uint8Array {
  const arr = dtype === 'F32' ? data : dtype === 'BF16' ? f32ToBf16(data) : f32ToF16(data);
  return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
}

/**
 * Writes tensors to one or more safetensors files without holding them all in memory: tensors are produced
 * by a generator, and a file is finished when the next tensor would pass `maxShardBytes`. With more than one
 * shard it writes `<stem>.safetensors.index.json` as diffusers' save_pretrained does.
 */
export function writeSafetensors(
  dir: string,
  stem: string,
  specs: { name: string; shape: number[] }[],
  produce: (name: string) => Float32Array,
  options: { dtype?: StoredDtype; maxShardBytes?: number; metadata?: Record<string, string> } = {},
): string[] {
  const dtype = options.dtype ?? 'F32';
  const width = BYTES_PER_ELEMENT[dtype];
  const maxShard = options.maxShardBytes ?? Infinity;
  const shards: { name: string; shape: number[] }[][] = [];
  let current: { name: string; shape: number[] }[] = [];
  let size = 0;
  for (const s of specs) {
    const bytes = numel(s.shape) * width;
    if (current.length > 0 && size + bytes > maxShard) {
      shards.push(current);
      current = [];
      size = 0;
    }
    current.push(s);
    size += bytes;
  }
  if (current.length > 0 || shards.length === 0) shards.push(current);

  fs.mkdirSync(dir, { recursive: true });
  const fileNames =
    shards.length === 1
      ? [`${stem}.safetensors`]
      : shards.map((_, i) => `${stem}-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`);
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  shards.forEach((shard, i) => {
    const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...options.metadata } };
    let offset = 0;
    for (const s of shard) {
      const bytes = numel(s.shape) * width;
      header[s.name] = { dtype, shape: s.shape, data_offsets: [offset, offset + bytes] };
      offset += bytes;
      weightMap[s.name] = fileNames[i];
    }
    totalSize += offset;
    let json = JSON.stringify(header);
    json += ' '.repeat((8 - ((json.length + 8) % 8)) % 8); // align the data section to 8 bytes
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    const fd = fs.openSync(path.join(dir, fileNames[i]), 'w');
    try {
      fs.writeSync(fd, len);
      fs.writeSync(fd, json);
      for (const s of shard) {
        const data = produce(s.name);
        if (data.length !== numel(s.shape)) throw new Error(`${s.name}: produced ${data.length} values for shape [${s.shape}]`);
        const bytes = encode(data, dtype);
        // one write() takes at most 2 GiB (an fp32 Gemma-2 embedding is 2.36 GB)
        for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, 1 << 30));
      }
    } finally {
      fs.closeSync(fd);
    }
  });
  if (shards.length > 1) {
    fs.writeFileSync(
      path.join(dir, `${stem}.safetensors.index.json`),
      JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2),
    );
  }
  return fileNames;
}
