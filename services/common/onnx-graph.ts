// A small ONNX graph builder over onnx-proto. Weights are appended to an external-data file as they are
// added, so models beyond protobuf's 2 GiB limit build and load, and the builder never holds all weights.
import fs from 'node:fs';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import { type ActivationGranularity, INT8_MAX, quantizeWeight, transposeInt8 } from './int8-recipe.ts';

const { onnx } = onnxProto;

export const ElemType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  DOUBLE: 11,
} as const;
export type ElemType = (typeof ElemType)[keyof typeof ElemType];

/** A GraphBuilder.int8Linear input as uint8: values [M,in], scale and zero point (per row when per token). */
interface QuantizedActivations {
  values: string;
  scale: string;
  zeroPoint: string;
  /** per token: the zero point expanded to one per row (QuantizeLinear along axis 0) */
  rowZeroPoints?: string;
  /** two-pass: the rounding residual, quantized at s_x/254 */
  residual?: string;
}

/** A symbolic (string) or fixed (number) dimension of a graph input or output. */
export type Dim = number | string;

/** A float attribute whose value happens to be an integer (1.0) must say so explicitly. */
export class FloatAttr {
  constructor(readonly value: number) {}
}
export const float = (value: number) => new FloatAttr(value);

export type AttrValue = number | FloatAttr | string | number[] | FloatAttr[] | onnxProto.onnx.ITensorProto;

const DEFAULT_OPSET = 21;
const IR_VERSION = 10;
const WEIGHT_ALIGNMENT = 64;

type TypedWeight = Float32Array | Int8Array | Uint8Array | Int32Array | BigInt64Array | Float64Array;

function elemTypeOf(data: TypedWeight): ElemType {
  if (data instanceof Float32Array) return ElemType.FLOAT;
  if (data instanceof Int8Array) return ElemType.INT8;
  if (data instanceof Uint8Array) return ElemType.UINT8;
  if (data instanceof Int32Array) return ElemType.INT32;
  if (data instanceof BigInt64Array) return ElemType.INT64;
  return ElemType.DOUBLE;
}

function encodeAttribute(name: string, value: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (value instanceof FloatAttr) return { name, type: T.FLOAT, f: value.value };
  if (typeof value === 'number') {
    return Number.isInteger(value) ? { name, type: T.INT, i: value } : { name, type: T.FLOAT, f: value };
  }
  if (typeof value === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) {
    if (value.some((v) => v instanceof FloatAttr || !Number.isInteger(v))) {
      return { name, type: T.FLOATS, floats: value.map((v) => (v instanceof FloatAttr ? v.value : (v as number))) };
    }
    return { name, type: T.INTS, ints: value as number[] };
  }
  return { name, type: T.TENSOR, t: value };
}

export class GraphBuilder {
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];
  private readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly constants = new Map<string, string>();
  private readonly weightNames = new Set<string>();
  private readonly usedDomains = new Set<string>();
  /** reshape's views by input tensor and constant shape */
  private readonly views = new Map<string, string>();
  /** int8Linear's quantized activations by input tensor and granularity */
  private readonly quantized = new Map<string, QuantizedActivations>();
  private counter = 0;
  private weightFd: number | undefined;
  private weightBytes = 0;

  /**
   * @param dir folder that receives `<stem>.onnx` and its external data file (`weights.bin` for the stem `model`,
   *   else `<stem>.weights.bin`), so several graphs of one model can share a folder
   */
  constructor(
    readonly name: string,
    readonly dir: string,
    readonly opset = DEFAULT_OPSET,
    readonly stem = 'model',
  ) {
    fs.mkdirSync(dir, { recursive: true });
  }

  private get weightFileName(): string {
    return this.stem === 'model' ? 'weights.bin' : `${this.stem}.weights.bin`;
  }

  get weightFile(): string {
    return path.join(this.dir, this.weightFileName);
  }

  /** Bytes of weight data written so far. */
  get weightsWritten(): number {
    return this.weightBytes;
  }

  private fresh(hint: string): string {
    return `${hint}_${this.counter++}`;
  }

  input(name: string, type: ElemType, dims: Dim[]): string {
    this.inputs.push({ name, type: { tensorType: { elemType: type, shape: { dim: dims.map(dimProto) } } } });
    return name;
  }

  output(value: string, name: string, type: ElemType, dims: Dim[]): void {
    const named = value === name ? value : this.op('Identity', [value], {}, { name });
    this.outputs.push({ name: named, type: { tensorType: { elemType: type, shape: { dim: dims.map(dimProto) } } } });
  }

  /** A weight, written now to the external-data file. Names are checkpoint keys, so they must be unique. */
  weight(name: string, dims: number[], data: TypedWeight): string {
    if (this.weightNames.has(name)) throw new Error(`weight ${name} added twice`);
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`weight ${name}: ${data.length} values for dims [${dims}]`);
    this.weightNames.add(name);
    if (this.weightFd === undefined) this.weightFd = fs.openSync(this.weightFile, 'w');
    const pad = (WEIGHT_ALIGNMENT - (this.weightBytes % WEIGHT_ALIGNMENT)) % WEIGHT_ALIGNMENT;
    if (pad > 0) fs.writeSync(this.weightFd, new Uint8Array(pad));
    const offset = this.weightBytes + pad;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    for (let done = 0; done < bytes.length; ) done += fs.writeSync(this.weightFd, bytes, done, Math.min(bytes.length - done, 1 << 30));
    this.weightBytes = offset + bytes.length;
    this.initializers.push({
      name,
      dataType: elemTypeOf(data),
      dims,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: this.weightFileName },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(bytes.length) },
      ],
    });
    return name;
  }

  /** A small constant stored inline in the graph; identical constants are shared. */
  constant(data: TypedWeight, dims: number[] = [data.length]): string {
    const key = `${elemTypeOf(data)}|${dims}|${Array.from(data as ArrayLike<number | bigint>).join(',')}`;
    const existing = this.constants.get(key);
    if (existing) return existing;
    const name = this.fresh('const');
    this.initializers.push({
      name,
      dataType: elemTypeOf(data),
      dims,
      rawData: new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)),
    });
    this.constants.set(key, name);
    return name;
  }

  ints(values: number[]): string {
    return this.constant(BigInt64Array.from(values.map(BigInt)));
  }

  /** A float32 scalar (rank 0), broadcastable against anything. */
  scalar(value: number): string {
    return this.constant(new Float32Array([value]), []);
  }

  /** Adds a node with several outputs. */
  node(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { outputs?: number; domain?: string; names?: string[] } = {},
  ): string[] {
    const n = opts.outputs ?? 1;
    const outputs = opts.names ?? Array.from({ length: n }, () => this.fresh(opType.toLowerCase()));
    const domain = opts.domain ?? '';
    if (domain) this.usedDomains.add(domain);
    this.nodes.push({
      opType,
      domain,
      input: inputs,
      output: outputs,
      name: this.fresh(`n_${opType}`),
      attribute: Object.entries(attrs).map(([k, v]) => encodeAttribute(k, v)),
    });
    return outputs;
  }

  /** Adds a node with one output. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, opts: { domain?: string; name?: string } = {}): string {
    return this.node(opType, inputs, attrs, { domain: opts.domain, names: opts.name ? [opts.name] : undefined })[0];
  }

  // ---- shorthands used throughout the model files ----
  add(a: string, b: string) {
    return this.op('Add', [a, b]);
  }
  sub(a: string, b: string) {
    return this.op('Sub', [a, b]);
  }
  mul(a: string, b: string) {
    return this.op('Mul', [a, b]);
  }
  div(a: string, b: string) {
    return this.op('Div', [a, b]);
  }
  matmul(a: string, b: string) {
    return this.op('MatMul', [a, b]);
  }
  relu(x: string) {
    return this.op('Relu', [x]);
  }
  sigmoid(x: string) {
    return this.op('Sigmoid', [x]);
  }
  silu(x: string) {
    return this.mul(x, this.sigmoid(x));
  }
  /** GELU with the tanh approximation (PyTorch's approximate='tanh'). */
  geluTanh(x: string) {
    return this.op('Gelu', [x], { approximate: 'tanh' });
  }
  /** Reshape; one node per tensor and constant shape, so layers that view one input alike share the view's name */
  reshape(x: string, shape: number[] | string) {
    if (typeof shape === 'string') return this.op('Reshape', [x, shape]);
    const key = `${x}|${shape.join(',')}`;
    let view = this.views.get(key);
    if (!view) this.views.set(key, (view = this.op('Reshape', [x, this.ints(shape)])));
    return view;
  }
  transpose(x: string, perm: number[]) {
    return this.op('Transpose', [x], { perm });
  }
  unsqueeze(x: string, axes: number[]) {
    return this.op('Unsqueeze', [x, this.ints(axes)]);
  }
  squeeze(x: string, axes: number[]) {
    return this.op('Squeeze', [x, this.ints(axes)]);
  }
  concat(xs: string[], axis: number) {
    return this.op('Concat', xs, { axis });
  }
  split(x: string, axis: number, sizes: number[]) {
    return this.node('Split', [x, this.ints(sizes)], { axis }, { outputs: sizes.length });
  }
  slice(x: string, starts: number[], ends: number[], axes: number[], steps?: number[]) {
    const inputs = [x, this.ints(starts), this.ints(ends), this.ints(axes)];
    if (steps) inputs.push(this.ints(steps));
    return this.op('Slice', inputs);
  }
  cast(x: string, to: ElemType) {
    return this.op('Cast', [x], { to });
  }
  /** The runtime shape of x as an int64 vector, optionally only dims [start, end). */
  shape(x: string, start?: number, end?: number) {
    const attrs: Record<string, AttrValue> = {};
    if (start !== undefined) attrs.start = start;
    if (end !== undefined) attrs.end = end;
    return this.op('Shape', [x], attrs);
  }

  /**
   * A W8A8 linear layer (services/common/int8-recipe.ts): x [M,in] float · Wᵀ (+ bias) → [M,out] float, with the
   * fp32 weight [out,in] quantized here, symmetric per output channel, stored int8 [in,out] as `<name>.int8`.
   *   per-tensor  DynamicQuantizeLinear: uint8 activations with one dynamic scale and zero point; com.microsoft
   *               MatMulIntegerToFloat: u8×s8 int32 GEMM, fp32 epilogue (scales, bias) in the same kernel
   *   per-token   s_x[t] = max|x[t,:]|/127, QuantizeLinear along the rows with zero point 128 (the symmetric int8
   *               value + 128, so the int32 sums equal the GPU's s8×s8 ones), com.microsoft MatMulIntegerToFloat
   *               (u8×s8, per-column weight scales, bias), then × s_x[t]; with `passes` 2 the rounding residual
   *               x − s_x·x_q is quantized again at s_x/254 and takes a second GEMM with the same weight (the sums
   *               add up to about 16-bit activations; int8-recipe.ts two-pass)
   * Layers reading the same x share its quantization (quantizedActivations): the same bits as each quantizing alone.
   */
  int8Linear(x: string, name: string, weight: Float32Array, dims: [out: number, inDim: number], bias: string | undefined, activations: ActivationGranularity, passes: 1 | 2 = 1): string {
    const q = quantizeWeight(weight, dims[0], dims[1]);
    const wq = this.weight(`${name}.int8`, [dims[1], dims[0]], transposeInt8(q));
    const ws = this.weight(`${name}.scale`, [dims[0]], q.scales);
    if (activations === 'per-tensor' && passes !== 1) throw new Error(`internal: ${name}: two-pass activations need per-token scales`);
    const xq = this.quantizedActivations(x, activations, passes);
    const matmul = (a: string, aScale: string) =>
      this.op('MatMulIntegerToFloat', [a, wq, aScale, ws, xq.zeroPoint, ...(bias && activations === 'per-tensor' ? ['', bias] : [])], {}, { domain: 'com.microsoft' });
    if (activations === 'per-tensor') return matmul(xq.values, xq.scale); // [M,out]
    let y = matmul(xq.values, this.scalar(1)); // [M,out], × s_w only
    if (xq.residual) y = this.add(y, matmul(xq.residual, this.scalar(1 / (2 * INT8_MAX))));
    const scaled = this.mul(y, this.unsqueeze(xq.scale, [1])); // × s_x[t]
    return bias ? this.add(scaled, bias) : scaled;
  }

  /** x quantized as int8Linear's granularity says, once per tensor and granularity (the residual once it is asked for). */
  private quantizedActivations(x: string, activations: ActivationGranularity, passes: 1 | 2): QuantizedActivations {
    const key = `${x}|${activations}`;
    let quantized = this.quantized.get(key);
    if (!quantized) {
      if (activations === 'per-tensor') {
        const [values, scale, zeroPoint] = this.node('DynamicQuantizeLinear', [x], {}, { outputs: 3 }); // [M,in] uint8, [], []
        quantized = { values: values!, scale: scale!, zeroPoint: zeroPoint! };
      } else {
        const absMax = this.op('ReduceMax', [this.op('Abs', [x]), this.ints([1])], { keepdims: 0 }); // [M]
        const scale = this.op('Max', [this.div(absMax, this.scalar(INT8_MAX)), this.scalar(1e-30)]); // [M], never 0
        const zeroPoint = this.constant(new Uint8Array([128]), []);
        const rowZeroPoints = this.op('Expand', [zeroPoint, this.shape(scale)]); // [M] uint8
        quantized = { values: this.op('QuantizeLinear', [x, scale, rowZeroPoints], { axis: 0 }), scale, zeroPoint, rowZeroPoints }; // [M,in] uint8
      }
      this.quantized.set(key, quantized);
    }
    if (passes === 2 && !quantized.residual) {
      // the rounding residual, |r| ≤ s_x/2, quantized again at s_x/254 (the same int8 weight multiplies it)
      const { values, scale, rowZeroPoints } = quantized;
      const residual = this.sub(x, this.op('DequantizeLinear', [values, scale, rowZeroPoints!], { axis: 0 })); // [M,in]
      quantized.residual = this.op('QuantizeLinear', [residual, this.div(scale, this.scalar(2 * INT8_MAX)), rowZeroPoints!], { axis: 0 });
    }
    return quantized;
  }

  /** Serialises the graph to `<dir>/<stem>.onnx` and closes the weight file. Returns the model path. */
  finish(): string {
    if (this.weightFd !== undefined) {
      fs.closeSync(this.weightFd);
      this.weightFd = undefined;
    }
    const opsetImport: onnxProto.onnx.IOperatorSetIdProto[] = [{ domain: '', version: this.opset }];
    for (const domain of this.usedDomains) opsetImport.push({ domain, version: 1 });
    const model = onnx.ModelProto.create({
      irVersion: IR_VERSION,
      producerName: 'sana-serve',
      opsetImport,
      graph: {
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
    const file = path.join(this.dir, `${this.stem}.onnx`);
    fs.writeFileSync(file, onnx.ModelProto.encode(model).finish());
    return file;
  }
}

function dimProto(d: Dim): onnxProto.onnx.TensorShapeProto.IDimension {
  return typeof d === 'number' ? { dimValue: d } : { dimParam: d };
}
