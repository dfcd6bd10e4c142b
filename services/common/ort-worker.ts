// Worker thread that owns one ONNX Runtime session (and optionally a prefix model's): session.run() blocks its
// thread for the whole inference, so it must never run on the main event loop.
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { HostTensor } from './tensor.ts';
import type { PrefixModel, SessionOptions, WorkerReply, WorkerRequest } from './ort-session.ts';

const { modelPath, options, prefix } = workerData as { modelPath: string; options: SessionOptions; prefix?: PrefixModel };
const port = parentPort!;

const started = performance.now();
const sessionOptions: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: options.intraOpThreads,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: options.graphOptimizationLevel ?? 'all',
  enableCpuMemArena: options.memoryArena ?? true,
  extra: {
    session: {
      ...(options.disablePrepacking ? { disable_prepacking: '1' } : {}),
      ...(options.allowSpinning === false ? { 'intra_op.allow_spinning': '0' } : {}),
    },
  },
};
const session = await ort.InferenceSession.create(modelPath, sessionOptions);
const prefixSession = prefix && (await ort.InferenceSession.create(prefix.modelPath, sessionOptions));
const prefixOutputs = new Set(prefixSession?.outputNames ?? []);
port.postMessage({
  kind: 'ready',
  inputNames: [...(prefixSession?.inputNames ?? []), ...session.inputNames.filter((n) => !prefixOutputs.has(n))],
  outputNames: session.outputNames,
  loadSeconds: (performance.now() - started) / 1000,
} satisfies WorkerReply);

/** The prefix model's outputs for the feeds it was run on, newest last. */
const kept: { feeds: HostTensor[]; outputs: ort.InferenceSession.OnnxValueMapType }[] = [];

const sameTensor = (a: HostTensor, b: HostTensor) =>
  a.type === b.type &&
  a.dims.length === b.dims.length &&
  a.dims.every((d, i) => d === b.dims[i]) &&
  Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength));

/** The prefix outputs for these feeds: kept ones when the same feeds came before, else a fresh prefix run. */
async function prefixFeeds(feeds: Record<string, HostTensor>): Promise<{ outputs: ort.InferenceSession.OnnxValueMapType; reused: boolean }> {
  const inputs = prefixSession!.inputNames.map((name) => {
    const t = feeds[name];
    if (!t) throw new Error(`input '${name}' is missing from the feeds`);
    return t;
  });
  const hit = kept.findIndex((k) => k.feeds.every((t, i) => sameTensor(t, inputs[i]!)));
  if (hit >= 0) {
    const [entry] = kept.splice(hit, 1);
    kept.push(entry!);
    return { outputs: entry!.outputs, reused: true };
  }
  const outputs = await prefixSession!.run(Object.fromEntries(prefixSession!.inputNames.map((name, i) => [name, new ort.Tensor(inputs[i]!.type, inputs[i]!.data, inputs[i]!.dims)])));
  kept.push({ feeds: inputs, outputs });
  if (kept.length > prefix!.keep) kept.shift();
  return { outputs, reused: false };
}

port.on('message', async (req: WorkerRequest) => {
  if (req.kind === 'close') {
    await session.release();
    await prefixSession?.release();
    port.close();
    return;
  }
  try {
    const t0 = performance.now();
    const fromPrefix = prefixSession && (await prefixFeeds(req.feeds));
    const feeds: Record<string, ort.OnnxValue> = { ...fromPrefix?.outputs };
    for (const [name, t] of Object.entries(req.feeds)) if (session.inputNames.includes(name)) feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
    const result = req.outputNames ? await session.run(feeds, req.outputNames) : await session.run(feeds);
    const runSeconds = (performance.now() - t0) / 1000;
    const outputs: Record<string, HostTensor> = {};
    const transfer: ArrayBuffer[] = [];
    for (const [name, t] of Object.entries(result)) {
      // ORT's output buffers are externally backed and do not survive postMessage: copy into our own.
      const data = (t.data as HostTensor['data']).slice();
      outputs[name] = { type: t.type as HostTensor['type'], dims: [...t.dims], data };
      transfer.push(data.buffer as ArrayBuffer);
    }
    port.postMessage({ kind: 'result', id: req.id, outputs, runSeconds, prefixReused: fromPrefix?.reused } satisfies WorkerReply, transfer);
  } catch (e) {
    port.postMessage({ kind: 'error', id: req.id, message: (e as Error).message } satisfies WorkerReply);
  }
});
