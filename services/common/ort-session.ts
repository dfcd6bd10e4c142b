// An ONNX Runtime session living in its own worker thread, so inference never blocks the event loop.
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { HostTensor } from './tensor.ts';

export interface SessionOptions {
  /** threads for one operator; defaults to the cores this process may use */
  intraOpThreads?: number;
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
  /** keep weights in the page cache instead of ORT's packed copy (less memory, slower GEMMs) */
  disablePrepacking?: boolean;
  /** false: tensors come from the system allocator and go back after use, so memory follows the live set
   *  (ORT's arena keeps its high-water mark, grown in powers of two); default true */
  memoryArena?: boolean;
  /** false: idle intra-op threads sleep instead of spinning, so sessions sharing the cores do not steal them
   *  (ORT's default is to spin) */
  allowSpinning?: boolean;
  /** the graph optimizer rewrites most weights (NCHWc conv filters): keep its saved result's weights in a file of
   *  their own that later sessions map, not inline in the saved graph (ort-worker.ts createSession) */
  optimizedWeightsApart?: boolean;
}

/**
 * A second model run in the same worker before the main one, on the feeds named by its inputs; its outputs become
 * feeds of the main model and are kept for later runs whose feeds for it are byte-identical (the denoiser's caption
 * K/V: the same at every step of a request, so computed once instead of once per step).
 */
export interface PrefixModel {
  modelPath: string;
  /** how many outputs (per distinct feeds) stay kept, least recently used dropped first */
  keep: number;
}

export type WorkerRequest =
  | { kind: 'run'; id: number; feeds: Record<string, HostTensor>; outputNames?: string[] }
  | { kind: 'close' };

export type WorkerReply =
  | { kind: 'ready'; inputNames: readonly string[]; outputNames: readonly string[]; loadSeconds: number }
  | { kind: 'result'; id: number; outputs: Record<string, HostTensor>; runSeconds: number; prefixReused?: boolean }
  | { kind: 'error'; id: number; message: string };

/**
 * Spawns a worker for a module given as a URL. Under tsx (development, tests) the worker registers tsx
 * itself, since Node 20 does not pass loader hooks on to workers.
 */
export function spawnWorker(moduleUrl: URL, workerData: unknown): Worker {
  if (!moduleUrl.pathname.endsWith('.ts')) return new Worker(moduleUrl, { workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(moduleUrl.href)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`), { workerData });
}

export class OrtSession {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: Record<string, HostTensor>) => void; reject: (e: Error) => void }>();
  private failure: Error | undefined;
  /** seconds spent inside the last run, as seen by the worker */
  lastRunSeconds = 0;
  /** runs whose prefix model ran, and runs that reused its kept outputs (PrefixModel) */
  readonly prefixStats = { runs: 0, reused: 0 };

  private constructor(
    private readonly worker: Worker,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
    readonly loadSeconds: number,
  ) {
    worker.on('message', (msg: WorkerReply) => {
      if (msg.kind === 'ready') return;
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.kind === 'result') {
        this.lastRunSeconds = msg.runSeconds;
        if (msg.prefixReused !== undefined) this.prefixStats[msg.prefixReused ? 'reused' : 'runs']++;
        p.resolve(msg.outputs);
      } else p.reject(new Error(msg.message));
    });
    const fail = (e: Error) => {
      this.failure = e;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('messageerror', fail);
    worker.on('exit', (code) => fail(new Error(`ONNX Runtime worker exited (code ${code})`)));
  }

  static async create(modelPath: string, options: SessionOptions = {}, prefix?: PrefixModel): Promise<OrtSession> {
    const resolved = { ...options, intraOpThreads: options.intraOpThreads ?? defaultThreads() };
    const worker = spawnWorker(new URL('./ort-worker.ts', import.meta.url), { modelPath, options: resolved, prefix });
    const listeners: { event: string; fn: (...args: any[]) => void }[] = [];
    const ready = await new Promise<Extract<WorkerReply, { kind: 'ready' }>>((resolve, reject) => {
      listeners.push(
        { event: 'message', fn: resolve },
        { event: 'error', fn: reject },
        { event: 'exit', fn: (code: number) => reject(new Error(`ONNX Runtime worker exited (code ${code}) while loading ${modelPath}`)) },
      );
      for (const l of listeners) worker.once(l.event, l.fn);
    }).finally(() => {
      // only our own listeners: Worker keeps internal ones that removeAllListeners() would break
      for (const l of listeners) worker.off(l.event, l.fn);
    });
    return new OrtSession(worker, ready.inputNames, ready.outputNames, ready.loadSeconds);
  }

  /** Runs the model. Input buffers are copied, never detached, so callers may keep using them. */
  run(feeds: Record<string, HostTensor>, outputNames?: string[]): Promise<Record<string, HostTensor>> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ kind: 'run', id, feeds, outputNames } satisfies WorkerRequest);
    });
  }

  async close(): Promise<void> {
    this.worker.postMessage({ kind: 'close' } satisfies WorkerRequest);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => void this.worker.terminate().then(() => resolve()), 5000);
      this.worker.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** Intra-op threads when the caller names none: SANA_THREADS (the tests set 1), else every core this process may use. */
function defaultThreads(): number {
  const env = process.env.SANA_THREADS;
  if (env === undefined || env === '') return os.availableParallelism();
  const n = Number(env);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`SANA_THREADS must be a positive integer, got "${env}"`);
  return n;
}
