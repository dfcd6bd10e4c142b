// The plain tensor passed between model runners, the ORT worker, the pipeline and the gRPC adapters.

export type TensorData = Float32Array | BigInt64Array | Int32Array | Uint8Array | Int8Array | Float64Array;
export type TensorType = 'float32' | 'int64' | 'int32' | 'uint8' | 'int8' | 'float64';

export interface HostTensor<D extends TensorData = TensorData> {
  type: TensorType;
  dims: number[];
  data: D;
}

export function typeOf(data: TensorData): TensorType {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof Uint8Array) return 'uint8';
  if (data instanceof Int8Array) return 'int8';
  return 'float64';
}

export function tensor<D extends TensorData>(data: D, dims: number[]): HostTensor<D> {
  const count = dims.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw new Error(`tensor of ${data.length} values cannot have dims [${dims}]`);
  return { type: typeOf(data), dims, data };
}

export function f32(data: Float32Array, dims: number[]): HostTensor<Float32Array> {
  return tensor(data, dims);
}

/** The first index holding NaN or ±Infinity, or -1. */
export function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i;
  return -1;
}

/** Stacks tensors along dim 0 (same trailing dims). */
export function concatRows<T extends Float32Array | BigInt64Array>(parts: HostTensor<T>[]): HostTensor<T> {
  const [first] = parts;
  const rest = first.dims.slice(1);
  const rows = parts.reduce((n, p) => n + p.dims[0], 0);
  const data = new (first.data.constructor as { new (n: number): T })(parts.reduce((n, p) => n + p.data.length, 0));
  let offset = 0;
  for (const p of parts) {
    (data as Float32Array).set(p.data as Float32Array, offset);
    offset += p.data.length;
  }
  return tensor(data, [rows, ...rest]);
}

/** Rows [start, end) of a batch-major tensor, as a compact copy (a worker message would clone a view's whole buffer). */
export function batchRows<D extends Float32Array | BigInt64Array>(t: HostTensor<D>, start: number, end: number): HostTensor<D> {
  const per = t.data.length / t.dims[0];
  return tensor(t.data.slice(start * per, end * per) as D, [end - start, ...t.dims.slice(1)]);
}
