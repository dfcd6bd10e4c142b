// Step-level continuous batching: requests whose transformer inputs have the same shape (latent size and caption
// length, padding dropped: dropCaptionPadding) share one forward per step, each at its own step of its own schedule.
// A request joins the running batch at the next step boundary and leaves it when its last step is done or it is
// cancelled; nothing else about it is shared with its neighbours (solver state, timesteps, guidance scale,
// seed-drawn noise stay its own).
//
//   jobs ─ group by [h, w, L] ─► rows [Σ rows_j, C, h, w] + per-row timestep ─ Linear-DiT ─► split by job
//        ─ per job: CFG (its own scale) ─ learned-sigma split ─ its own Flow-DPM-Solver step ─ step event
//
// Each row of the transformer is an independent sample (per-row timestep, caption and mask; no op mixes rows),
// so a request's result does not depend on who shares its batch, up to the GEMM's summation order (in fp32: under
// int8 the per-tensor activation scales of ONNX Runtime's fast path span the forward's rows).
import { CancelledError } from '../common/errors.ts';
import type { DenoiseContext, DenoiseRequest, ForwardStats } from '../common/stages.ts';
import { concatRows, type HostTensor, tensor } from '../common/tensor.ts';
import { FlowDpmSolver, type FlowDpmSolverSettings } from './flow-dpm-solver.ts';
import { applyGuidance, firstChannels } from './guidance.ts';
import type { DitInputs } from './linear-dit.ts';
import type { DitEngine } from './stage.ts';

export interface BatchingOptions {
  /** most transformer rows one batched forward takes (a guided image counts 2); a larger request runs alone */
  maxRows: number;
  /** milliseconds an idle batcher waits for more requests before its first forward (0: start at once) */
  maxWaitMs: number;
}

/** Caption lengths after dropping padding are multiples of this, so requests with similar prompts still share forwards. */
export const CAPTION_LENGTH_STEP = 32;

/**
 * The caption [B,L,C] and mask [B,L] without the trailing positions that no row attends, kept to a multiple of
 * CAPTION_LENGTH_STEP. Cross-attention adds -10000 to a masked position's score, so its softmax weight is exactly 0 and
 * the dropped positions change nothing but the work (most of SANA's 300 positions are padding). Only right-padded
 * masks (each row 1…1 0…0 with at least one 1) are shortened: a row with no attended position attends all of them.
 */
export function dropCaptionPadding(caption: HostTensor<Float32Array>, mask: HostTensor<BigInt64Array>): { caption: HostTensor<Float32Array>; mask: HostTensor<BigInt64Array> } {
  const [batch, length, channels] = caption.dims;
  let attended = 0;
  for (let b = 0; b < batch; b++) {
    const row = mask.data.subarray(b * length, (b + 1) * length);
    const firstZero = row.indexOf(0n);
    const ones = firstZero === -1 ? length : firstZero;
    if (ones === 0 || row.subarray(ones).some((v) => v !== 0n)) return { caption, mask };
    attended = Math.max(attended, ones);
  }
  const kept = Math.min(length, Math.ceil(attended / CAPTION_LENGTH_STEP) * CAPTION_LENGTH_STEP);
  if (kept === length) return { caption, mask };
  const keptCaption = new Float32Array(batch * kept * channels);
  const keptMask = new BigInt64Array(batch * kept);
  for (let b = 0; b < batch; b++) {
    keptCaption.set(caption.data.subarray(b * length * channels, (b * length + kept) * channels), b * kept * channels);
    keptMask.set(mask.data.subarray(b * length, b * length + kept), b * kept);
  }
  return { caption: tensor(keptCaption, [batch, kept, channels]), mask: tensor(keptMask, [batch, kept]) };
}

/** One request's denoising loop, advanced one step at a time by whoever runs its forwards. */
export class DenoiseJob {
  readonly rows: number;
  /** requests with equal keys can share a forward */
  readonly key: string;
  readonly timesteps: readonly number[];
  private readonly scheduler: FlowDpmSolver;
  private readonly guided: boolean;
  private readonly caption: HostTensor<Float32Array>;
  private readonly mask: HostTensor<BigInt64Array>;
  private readonly dims: number[];
  private readonly learnedSigma: boolean;
  private latents: Float32Array;
  step = 0;

  constructor(
    readonly request: DenoiseRequest,
    settings: FlowDpmSolverSettings,
    private readonly transformer: DitEngine,
    readonly ctx: DenoiseContext,
  ) {
    const c = transformer.config;
    this.scheduler = new FlowDpmSolver(settings); // per request: solvers carry multistep state
    this.timesteps = this.scheduler.setTimesteps(request.numInferenceSteps).timesteps;
    this.guided = request.guidanceScale > 1;
    // CFG batch: unconditional rows first, as the reference concatenates them
    const caption = this.guided ? concatRows([request.negativeEmbeds!, request.promptEmbeds]) : request.promptEmbeds;
    const mask = this.guided ? concatRows([request.negativeMask!, request.promptMask]) : request.promptMask;
    ({ caption: this.caption, mask: this.mask } = dropCaptionPadding(caption, mask));
    this.dims = request.latents.dims;
    const [batch, channels, h, w] = this.dims;
    this.rows = this.guided ? 2 * batch : batch;
    this.key = `${h}x${w}/${this.caption.dims[1]}`;
    this.learnedSigma = Math.floor((c.out_channels ?? c.in_channels) / 2) === channels;
    this.latents = request.latents.data;
  }

  get done(): boolean {
    return this.step >= this.timesteps.length;
  }

  /** This job's rows of the next forward: [rows, C, h, w] latents (twice under CFG), caption, mask, timesteps. */
  inputs(): DitInputs {
    const t = this.timesteps[this.step] * this.transformer.config.timestep_scale;
    const x = tensor(this.latents, this.dims);
    return {
      hiddenStates: this.guided ? concatRows([x, x]) : x,
      encoderHiddenStates: this.caption,
      encoderAttentionMask: this.mask,
      timestep: tensor(new Float32Array(this.rows).fill(t), [this.rows]),
    };
  }

  /** Applies this job's rows of the transformer output [rows, out_channels, h, w]: guidance, then a solver step. */
  advance(prediction: Float32Array, seconds: number): void {
    const [batch, channels, h, w] = this.dims;
    let noise = this.guided ? applyGuidance(prediction, this.request.guidanceScale) : prediction;
    if (this.learnedSigma) noise = firstChannels(noise, batch, channels, h * w);
    const t = this.timesteps[this.step];
    this.latents = this.scheduler.step(noise, t, this.latents);
    const finished = this.step++;
    const { previewEvery } = this.ctx;
    this.ctx.onStep?.({
      step: finished,
      total: this.timesteps.length,
      timestep: t,
      seconds,
      latents: previewEvery && (finished + 1) % previewEvery === 0 ? this.result() : undefined,
    });
  }

  result(): HostTensor<Float32Array> {
    return tensor(this.latents, this.dims);
  }

  /** Throws when the caller has given up, naming the step it stopped before. */
  checkCancelled(): void {
    if (this.ctx.signal?.aborted) throw new CancelledError(`denoising cancelled before step ${this.step + 1} of ${this.timesteps.length}`);
  }
}

interface Entry {
  job: DenoiseJob;
  /** the forward this job last took part in (fairness between shapes: the longest-waiting goes next) */
  lastForward: number;
  resolve: (latents: HostTensor<Float32Array>) => void;
  reject: (error: Error) => void;
  settled: boolean;
}

/**
 * Runs the forwards of every submitted job, one batch of compatible jobs per forward, until all are done.
 * One forward at a time: the transformer's session is the execution capacity this batcher schedules.
 */
export class StepBatcher {
  private readonly entries: Entry[] = [];
  private running = false;
  private waitTimer: NodeJS.Timeout | undefined;
  /** forwards started, failed ones included: the fairness clock */
  private sequence = 0;
  private forwardCount = 0;
  private rowCount = 0;
  private largestRows = 0;

  constructor(
    private readonly transformer: DitEngine,
    readonly options: BatchingOptions,
  ) {
    if (!Number.isSafeInteger(options.maxRows) || options.maxRows < 1) throw new Error(`maxRows must be a positive integer, got ${options.maxRows}`);
    if (!(options.maxWaitMs >= 0)) throw new Error(`maxWaitMs must be ≥ 0, got ${options.maxWaitMs}`);
  }

  stats(): ForwardStats {
    return { forwards: this.forwardCount, rows: this.rowCount, largest: this.largestRows };
  }

  /** Jobs waiting for or taking part in forwards now. */
  get active(): number {
    return this.entries.length;
  }

  /** Resolves to the job's final latents; rejects at once (its rows dropped at the next boundary) on abort. */
  submit(job: DenoiseJob): Promise<HostTensor<Float32Array>> {
    job.checkCancelled();
    return new Promise((resolve, reject) => {
      const entry: Entry = { job, lastForward: -1, resolve, reject, settled: false };
      const signal = job.ctx.signal;
      const onAbort = () => this.settle(entry, () => reject(new CancelledError(`denoising cancelled before step ${job.step + 1} of ${job.timesteps.length}`)));
      signal?.addEventListener('abort', onAbort, { once: true });
      entry.resolve = (latents) => {
        signal?.removeEventListener('abort', onAbort);
        resolve(latents);
      };
      entry.reject = (error) => {
        signal?.removeEventListener('abort', onAbort);
        reject(error);
      };
      this.entries.push(entry);
      this.schedule();
    });
  }

  /** Starts the loop now when a full batch is waiting (or waiting is off), else after max-wait. */
  private schedule(): void {
    if (this.running) return;
    const waitingRows = this.entries.reduce((n, e) => n + e.job.rows, 0);
    if (this.options.maxWaitMs === 0 || waitingRows >= this.options.maxRows) {
      clearTimeout(this.waitTimer);
      this.waitTimer = undefined;
      void this.loop();
    } else if (!this.waitTimer) {
      this.waitTimer = setTimeout(() => {
        this.waitTimer = undefined;
        void this.loop();
      }, this.options.maxWaitMs);
    }
  }

  private settle(entry: Entry, finish: () => void): void {
    if (entry.settled) return;
    entry.settled = true;
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
    finish();
  }

  /** The next batch: the longest-waiting job and the compatible jobs after it, in arrival order, within maxRows. */
  private nextBatch(): Entry[] {
    const first = this.entries.reduce((a, b) => (b.lastForward < a.lastForward ? b : a));
    const batch = [first];
    let rows = first.job.rows;
    for (const e of this.entries) {
      if (e === first || e.job.key !== first.job.key || rows + e.job.rows > this.options.maxRows) continue;
      batch.push(e);
      rows += e.job.rows;
    }
    return batch;
  }

  private async loop(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      while (this.entries.length > 0) {
        const batch = this.nextBatch();
        const forward = this.sequence++;
        for (const e of batch) e.lastForward = forward;
        const parts = batch.map((e) => e.job.inputs());
        const started = performance.now();
        let output: HostTensor<Float32Array>;
        try {
          output = await this.transformer.forward({
            hiddenStates: concatRows(parts.map((p) => p.hiddenStates)),
            encoderHiddenStates: concatRows(parts.map((p) => p.encoderHiddenStates)),
            encoderAttentionMask: concatRows(parts.map((p) => p.encoderAttentionMask)),
            timestep: concatRows(parts.map((p) => p.timestep)),
          });
        } catch (e) {
          for (const entry of batch) this.settle(entry, () => entry.reject(e as Error));
          continue;
        }
        const seconds = (performance.now() - started) / 1000;
        const rows = parts.reduce((n, p) => n + p.timestep.dims[0], 0);
        this.forwardCount++;
        this.rowCount += rows;
        this.largestRows = Math.max(this.largestRows, rows);
        const rowSize = output.data.length / rows;
        let offset = 0;
        for (const entry of batch) {
          const size = entry.job.rows * rowSize;
          const prediction = output.data.subarray(offset, offset + size);
          offset += size;
          if (entry.settled) continue; // cancelled during the forward: its rows are dropped
          try {
            entry.job.advance(prediction, seconds);
            if (entry.job.done) this.settle(entry, () => entry.resolve(entry.job.result()));
          } catch (e) {
            this.settle(entry, () => entry.reject(e as Error));
          }
        }
      }
    } finally {
      this.running = false;
    }
  }
}
