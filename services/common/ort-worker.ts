// Worker thread that owns one ONNX Runtime session (and optionally a prefix model's): session.run() blocks its
// thread for the whole inference, so it must never run on the main event loop.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parentPort, threadId, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { HostTensor } from './tensor.ts';
import type { PrefixModel, SessionOptions, WorkerReply, WorkerRequest } from './ort-session.ts';

const { modelPath, options, prefix } = workerData as { modelPath: string; options: SessionOptions; prefix?: PrefixModel };
const port = parentPort!;

const started = performance.now();
/** ORT's session config entries */
const sessionConfig: Record<string, string> = {
  ...(options.disablePrepacking ? { disable_prepacking: '1' } : {}),
  ...(options.allowSpinning === false ? { 'intra_op.allow_spinning': '0' } : {}),
};
const sessionOptions: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: options.intraOpThreads,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: options.graphOptimizationLevel ?? 'all',
  enableCpuMemArena: options.memoryArena ?? true,
  extra: { session: sessionConfig },
};
const session = await createSession(modelPath);
const prefixSession = prefix && (await createSession(prefix.modelPath));
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

/**
 * ORT's graph optimizations at level 'all' (fusions, layout transforms, reordering every conv filter into NCHWc
 * blocks) take seconds on large graphs, and their result depends only on the model, this ONNX Runtime and this CPU.
 * The first session saves it beside the model as `<stem>.optimized-<key>.onnx`; later ones load that with
 * optimizations off (the int8 Linear-DiT's session: 1.0 s instead of 3.4 s). Weights the optimizer leaves alone stay
 * in the model's own files, by reference; with `optimizedWeightsApart` the ones it rewrites go to a file of their own
 * that later sessions map, instead of inline in the graph, whose parsing takes seconds when they are large (the DC-AE
 * decoder's NCHWc filters: 0.2 s instead of 7.5 s). One session at a time writes (a lock file); a folder that cannot
 * be written just goes without.
 */
async function createSession(model: string): Promise<ort.InferenceSession> {
  if (sessionOptions.graphOptimizationLevel !== 'all') return ort.InferenceSession.create(model, sessionOptions);
  const dir = path.dirname(model);
  const base = path.basename(model, '.onnx');
  const stem = `${base}.optimized-${optimizedKey(model)}`;
  const optimized = path.join(dir, `${stem}.onnx`);
  if (fs.existsSync(optimized)) {
    try {
      return await ort.InferenceSession.create(optimized, { ...sessionOptions, graphOptimizationLevel: 'disabled' });
    } catch {
      // unreadable: optimize again below, and replace it
    }
  }
  const lock = path.join(dir, `${stem}.lock`);
  if (!takeLock(lock)) return ort.InferenceSession.create(model, sessionOptions);
  const writer = `${process.pid}-${threadId}`;
  const scratch = `${optimized}.${writer}.tmp`;
  // a fresh name per writer: a file that another session maps is never rewritten in place
  const weights = options.optimizedWeightsApart ? `${stem}.${writer}.weights.bin` : undefined;
  const external = weights ? { optimized_model_external_initializers_file_name: weights, optimized_model_external_initializers_min_size_in_bytes: '1024' } : {};
  try {
    // (errors only: ORT warns that such a file is for this machine alone, which its key sees to)
    const created = await ort.InferenceSession.create(model, {
      ...sessionOptions,
      optimizedModelFilePath: scratch,
      logSeverityLevel: 3,
      extra: { session: { ...sessionConfig, ...external } },
    });
    fs.renameSync(scratch, optimized); // whole or not at all, for sessions created beside this one
    // the weights of the graph this one replaced (unlinked: a session may still map them). Other keys' files stay:
    // machines of another CPU may share this folder and use theirs.
    for (const f of fs.readdirSync(dir)) if (f.startsWith(`${stem}.`) && f.endsWith('.weights.bin') && f !== weights) fs.rmSync(path.join(dir, f), { force: true });
    return created;
  } catch {
    for (const f of [scratch, weights && path.join(dir, weights)]) if (f) fs.rmSync(f, { force: true });
    return ort.InferenceSession.create(model, sessionOptions);
  } finally {
    fs.rmSync(lock, { force: true });
  }
}

/** A writer left a lock this old behind when it died. */
const STALE_LOCK_MS = 10 * 60 * 1000;

/** Creates the lock file; false when another writer holds it or the folder cannot be written. */
function takeLock(lock: string): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.closeSync(fs.openSync(lock, 'wx'));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return false;
      try {
        if (Date.now() - fs.statSync(lock).mtimeMs < STALE_LOCK_MS) return false;
        fs.rmSync(lock, { force: true });
      } catch {
        return false;
      }
    }
  }
  return false;
}

/**
 * What an optimized graph depends on: ONNX Runtime's version, the CPU (its NCHWc block size and kernels), where its
 * weights go, the model's bytes and the files beside it (its external weights; compiled folders never change, but a
 * model rewritten in place must not meet an old optimized graph).
 */
function optimizedKey(model: string): string {
  const h = crypto.createHash('sha256').update(`${ort.env.versions.common} ${process.arch} ${cpuDescription()} ${options.optimizedWeightsApart ? 'apart' : 'inline'}\n`).update(fs.readFileSync(model));
  const dir = path.dirname(model);
  for (const f of fs.readdirSync(dir).sort()) {
    const st = fs.statSync(path.join(dir, f));
    if (st.isFile() && !f.includes('.optimized-') && f !== path.basename(model)) h.update(`${f}:${st.size}:${st.mtimeMs}\n`);
  }
  return h.digest('hex').slice(0, 16);
}

/** The CPU's model name and (on Linux) its feature flags. */
function cpuDescription(): string {
  const model = os.cpus()[0]?.model ?? '';
  try {
    return model + (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '');
  } catch {
    return model; // not Linux
  }
}

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
