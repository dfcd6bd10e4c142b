// Flow-DPM-Solver: diffusers' DPMSolverMultistepScheduler as SANA configures it (use_flow_sigmas, flow_shift,
// prediction_type flow_prediction, dpmsolver++ of order 2), with the other options of that class that keep
// the flow schedule meaningful. Keys that would change the result and are not implemented are refused at load.
//
//   schedule   σ_i = shift·s/(1+(shift-1)·s) for s on linspace(1, 1/T, n+1) mapped to 1-s, reversed, the
//              last (σ=0) dropped;  t_i = trunc(σ_i·T) (int64);  σ_n = 0 ("zero") or the VP σ_min.
//   per step   α = 1-σ, λ = ln α - ln σ, h = λ_next - λ_now;  model output -> x0 (data prediction, ++)
//              or ε (noise prediction);  1st/2nd/3rd-order multistep update from the last x0/ε values.
//
// The reference runs in float32 torch: sigmas are stored as float32 and every scalar (α, λ, h, the update
// coefficients) and every elementwise operation is a float32 operation. This file rounds each operation to
// float32 in the reference's order (Math.fround), so prev_samples agree to a few float32 ulps.
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError, loadConfig, pyFloat, unsupported } from '../common/config.ts';
import { InvalidArgumentError } from '../common/errors.ts';
import { LIMITS } from '../common/limits.ts';
import type { TorchGenerator } from '../common/torch-randn.ts';

const fround = Math.fround;

/** The most steps a request may ask for (the CLI and the services share this limit). */
export const MAX_INFERENCE_STEPS = LIMITS.steps.max;

// ---- scheduler_config.json (keys and defaults as DPMSolverMultistepScheduler.__init__ has them) ----
export const FlowDpmSolverConfig = z.object({
  _class_name: z.string().optional(),
  num_train_timesteps: z.number().int().positive().default(1000),
  beta_start: z.number().default(0.0001),
  beta_end: z.number().default(0.02),
  beta_schedule: z.enum(['linear', 'scaled_linear', 'squaredcos_cap_v2']).default('linear'),
  trained_betas: z.array(z.number()).min(1).nullable().default(null),
  solver_order: z.number().int().default(2),
  prediction_type: z.enum(['epsilon', 'sample', 'v_prediction', 'flow_prediction']).default('epsilon'),
  thresholding: z.boolean().default(false),
  dynamic_thresholding_ratio: z.number().default(0.995),
  sample_max_value: z.number().default(1.0),
  // "deis" is an alias the reference rewrites to dpmsolver++
  algorithm_type: z.enum(['dpmsolver', 'dpmsolver++', 'sde-dpmsolver', 'sde-dpmsolver++', 'deis']).default('dpmsolver++'),
  // "logrho", "bh1", "bh2" are aliases the reference rewrites to midpoint
  solver_type: z.enum(['midpoint', 'heun', 'logrho', 'bh1', 'bh2']).default('midpoint'),
  lower_order_final: z.boolean().default(true),
  euler_at_final: z.boolean().default(false),
  use_karras_sigmas: z.boolean().nullable().default(false),
  use_exponential_sigmas: z.boolean().nullable().default(false),
  use_beta_sigmas: z.boolean().nullable().default(false),
  use_lu_lambdas: z.boolean().nullable().default(false),
  use_flow_sigmas: z.boolean().nullable().default(false),
  flow_shift: z.number().nullable().default(1.0),
  final_sigmas_type: z.enum(['zero', 'sigma_min']).nullable().default('zero'),
  lambda_min_clipped: pyFloat.default(-Infinity),
  variance_type: z.enum(['learned', 'learned_range']).nullable().default(null),
  timestep_spacing: z.enum(['linspace', 'leading', 'trailing']).default('linspace'),
  steps_offset: z.number().int().default(0),
  rescale_betas_zero_snr: z.boolean().default(false),
  use_dynamic_shifting: z.boolean().default(false),
  time_shift_type: z.string().default('exponential'),
});
export type FlowDpmSolverConfig = z.infer<typeof FlowDpmSolverConfig>;

type Algorithm = 'dpmsolver' | 'dpmsolver++' | 'sde-dpmsolver' | 'sde-dpmsolver++';

/** The validated settings the solver runs with (aliases resolved, unsupported keys refused). */
export interface FlowDpmSolverSettings {
  numTrainTimesteps: number;
  flowShift: number;
  solverOrder: 1 | 2 | 3;
  predictionType: FlowDpmSolverConfig['prediction_type'];
  algorithm: Algorithm;
  solverType: 'midpoint' | 'heun';
  lowerOrderFinal: boolean;
  eulerAtFinal: boolean;
  finalSigmasType: 'zero' | 'sigma_min';
  /** float32 σ appended after the schedule: 0, or the VP schedule's first σ (final_sigmas_type sigma_min) */
  finalSigma: number;
}

/**
 * Checks a parsed config against what this solver implements and resolves it to settings. `file` names the
 * config in errors; every refusal names its key.
 */
export function resolveSettings(file: string, c: FlowDpmSolverConfig): FlowDpmSolverSettings {
  if (c._class_name !== undefined && c._class_name !== 'DPMSolverMultistepScheduler') {
    unsupported(file, '_class_name', c._class_name, 'only DPMSolverMultistepScheduler (Flow-DPM-Solver) is implemented');
  }
  if (c.use_flow_sigmas !== true) {
    unsupported(file, 'use_flow_sigmas', c.use_flow_sigmas, 'only the flow-matching schedule SANA uses is implemented (set it true)');
  }
  for (const key of ['use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas', 'use_lu_lambdas'] as const) {
    if (c[key]) unsupported(file, key, c[key], 'it replaces the flow sigmas with a VP-schedule variant that SANA does not use');
  }
  if (c.use_dynamic_shifting) {
    unsupported(file, 'use_dynamic_shifting', true, 'dynamic shifting needs a resolution-dependent mu per request; set flow_shift instead');
  }
  if (c.thresholding) {
    unsupported(file, 'thresholding', true, 'dynamic thresholding is for pixel-space models, not SANA latents');
  }
  const flowShift = c.flow_shift;
  if (flowShift === null || !Number.isFinite(flowShift) || flowShift <= 0) {
    throw new ConfigError(file, `key "flow_shift" = ${JSON.stringify(flowShift)} must be a positive number`);
  }
  if (![1, 2, 3].includes(c.solver_order)) {
    unsupported(file, 'solver_order', c.solver_order, 'the multistep solver has orders 1, 2 and 3');
  }
  const solverOrder = c.solver_order as 1 | 2 | 3;
  const algorithm: Algorithm = c.algorithm_type === 'deis' ? 'dpmsolver++' : c.algorithm_type;
  const solverType = c.solver_type === 'heun' ? 'heun' : 'midpoint';
  const finalSigmasType = c.final_sigmas_type ?? 'zero';
  const noisePrediction = algorithm === 'dpmsolver' || algorithm === 'sde-dpmsolver';
  // the reference checks the name as written, so its "deis" alias also needs sigma_min
  if (c.algorithm_type !== 'dpmsolver++' && c.algorithm_type !== 'sde-dpmsolver++' && finalSigmasType === 'zero') {
    throw new ConfigError(file, `key "final_sigmas_type" = "zero" cannot be used with algorithm_type "${c.algorithm_type}": choose "sigma_min"`);
  }
  if (noisePrediction && c.prediction_type === 'flow_prediction') {
    throw new ConfigError(file, `key "prediction_type" = "flow_prediction" needs algorithm_type "dpmsolver++" or "sde-dpmsolver++", not "${algorithm}"`);
  }
  if (algorithm === 'sde-dpmsolver' && solverOrder === 3) {
    unsupported(file, 'solver_order', 3, 'the reference has no third-order sde-dpmsolver update');
  }
  if (c.variance_type !== null && c.prediction_type === 'epsilon') {
    unsupported(file, 'variance_type', c.variance_type, 'learned-variance outputs are not produced by SANA transformers');
  }
  let finalSigma = 0;
  if (finalSigmasType === 'sigma_min') {
    if (c.rescale_betas_zero_snr) {
      unsupported(file, 'rescale_betas_zero_snr', true, 'with final_sigmas_type "sigma_min" the last sigma would come from the rescaled VP schedule, which is not implemented');
    }
    finalSigma = firstVpSigma(c);
  }
  return {
    numTrainTimesteps: c.num_train_timesteps,
    flowShift,
    solverOrder,
    predictionType: c.prediction_type,
    algorithm,
    solverType,
    lowerOrderFinal: c.lower_order_final,
    eulerAtFinal: c.euler_at_final,
    finalSigmasType,
    finalSigma,
  };
}

/**
 * σ of the VP (beta) schedule at its first training step, sqrt((1-ᾱ₀)/ᾱ₀) with ᾱ₀ = 1-β₀, in float32 as the
 * reference computes it from its float32 betas: the last sigma when final_sigmas_type is "sigma_min".
 */
function firstVpSigma(c: FlowDpmSolverConfig): number {
  let beta0: number;
  if (c.trained_betas !== null) beta0 = fround(c.trained_betas[0]);
  else if (c.beta_schedule === 'linear') beta0 = fround(c.beta_start);
  else if (c.beta_schedule === 'scaled_linear') {
    const root = fround(Math.sqrt(c.beta_start));
    beta0 = fround(root * root);
  } else {
    // squaredcos_cap_v2: β₀ = min(1 - ᾱ(1/T)/ᾱ(0), 0.999) with ᾱ(t) = cos²((t+0.008)/1.008·π/2), in float64
    const alphaBar = (t: number) => {
      const c0 = Math.cos(((t + 0.008) / 1.008) * Math.PI / 2);
      return c0 * c0;
    };
    beta0 = fround(Math.min(1 - alphaBar(1 / c.num_train_timesteps) / alphaBar(0), 0.999));
  }
  const alphaCumprod0 = fround(1 - beta0);
  return fround(Math.sqrt(fround(fround(1 - alphaCumprod0) / alphaCumprod0)));
}

/** Reads `<dir>/scheduler_config.json` (dir = the scheduler/ folder, or the model folder that holds it). */
export function schedulerConfigFile(dir: string): string {
  const direct = path.join(dir, 'scheduler_config.json');
  if (fs.existsSync(direct)) return direct;
  const nested = path.join(dir, 'scheduler', 'scheduler_config.json');
  if (fs.existsSync(nested)) return nested;
  throw new ConfigError(direct, 'no scheduler_config.json here (nor in scheduler/)');
}

/** Loads, applies `overrides` (keys of scheduler_config.json), validates and resolves a scheduler config. */
export function loadSchedulerSettings(dir: string, overrides: Record<string, unknown> = {}): FlowDpmSolverSettings {
  const file = schedulerConfigFile(dir);
  return resolveSettings(file, loadConfig(file, FlowDpmSolverConfig, overrides));
}

/** The schedule set_timesteps(n) produces: n integer timesteps and n+1 float32 sigmas. */
export interface FlowSchedule {
  /** integer timesteps (the reference's int64 values), t_i = trunc(σ_i · num_train_timesteps) */
  timesteps: readonly number[];
  /** float32 sigmas, n+1 values, the last one the final sigma */
  sigmas: Float32Array;
}

export function validateStepCount(numInferenceSteps: number, field = 'num_inference_steps'): void {
  if (!Number.isSafeInteger(numInferenceSteps) || numInferenceSteps < 1 || numInferenceSteps > MAX_INFERENCE_STEPS) {
    throw new InvalidArgumentError(field, `must be an integer from 1 to ${MAX_INFERENCE_STEPS}, got ${numInferenceSteps}`);
  }
}

/** The flow schedule in float64 as numpy builds it, then stored as float32 like the reference's sigmas. */
export function flowSchedule(settings: FlowDpmSolverSettings, numInferenceSteps: number): FlowSchedule {
  validateStepCount(numInferenceSteps);
  const n = numInferenceSteps;
  const T = settings.numTrainTimesteps;
  const shift = settings.flowShift;
  // numpy linspace(1, 1/T, n+1): start + i·step with step = (stop-start)/n, the endpoint set exactly
  const stop = 1 / T;
  const step = (stop - 1) / n;
  const shifted = (i: number) => {
    const alpha = i === n ? stop : i * step + 1;
    const s = 1.0 - alpha;
    return (shift * s) / (1 + (shift - 1) * s);
  };
  const timesteps: number[] = [];
  const sigmas = new Float32Array(n + 1);
  for (let k = 0; k < n; k++) {
    // reversed, and the σ=0 end (i = 0) dropped
    const sigma = shifted(n - k);
    sigmas[k] = sigma;
    timesteps.push(Math.trunc(sigma * T));
  }
  sigmas[n] = settings.finalSigma;
  return { timesteps, sigmas };
}

/** Random input an SDE variant needs at each step; deterministic algorithms ignore it. */
export interface StepNoise {
  /** draws N(0,1) noise like randn_tensor(model_output.shape, generator) in the reference */
  generator?: TorchGenerator;
  /** or the noise itself (the reference's variance_noise) */
  varianceNoise?: Float32Array;
}

/**
 * One request's solver: the schedule plus the multistep state (the last `solver_order` converted model
 * outputs, how many lower-order warm-up steps were taken, the step index). Instances share nothing, so
 * concurrent requests each take their own (`fork()` of a loaded one, or `new`).
 */
export class FlowDpmSolver {
  private schedule: FlowSchedule | null = null;
  private history: (Float32Array | null)[] = [];
  private stepIndex = 0;

  constructor(readonly settings: FlowDpmSolverSettings) {}

  /** scheduler_config.json of a scheduler/ folder (or of the model folder holding scheduler/), plus overrides. */
  static load(dir: string, overrides: Record<string, unknown> = {}): FlowDpmSolver {
    return new FlowDpmSolver(loadSchedulerSettings(dir, overrides));
  }

  /** A fresh solver with the same settings and no state: one per request. */
  fork(): FlowDpmSolver {
    return new FlowDpmSolver(this.settings);
  }

  /** set_timesteps(n): builds the schedule and clears the multistep state. */
  setTimesteps(numInferenceSteps: number): FlowSchedule {
    this.schedule = flowSchedule(this.settings, numInferenceSteps);
    this.reset();
    return this.schedule;
  }

  /** The index of the next step (0 before the first, n after the last). */
  get currentStep(): number {
    return this.stepIndex;
  }

  /** Clears the multistep state so the same schedule can be run again from the first step. */
  reset(): void {
    this.history = new Array(this.settings.solverOrder).fill(null);
    this.stepIndex = 0;
  }

  /**
   * One solver step: from `sample` at `timestep` (which must be the schedule's next timestep) and the
   * denoiser's `modelOutput` there, the sample at the next sigma. Inputs are not modified.
   */
  step(modelOutput: Float32Array, timestep: number, sample: Float32Array, noise: StepNoise = {}): Float32Array {
    const { timesteps, sigmas } = this.requireSchedule();
    const n = timesteps.length;
    const i = this.stepIndex;
    if (i >= n) throw new InvalidArgumentError('timestep', `all ${n} steps of the schedule have been taken`);
    if (timestep !== timesteps[i]) {
      throw new InvalidArgumentError('timestep', `step ${i} of the schedule is at timestep ${timesteps[i]}, got ${timestep}`);
    }
    if (modelOutput.length !== sample.length) {
      throw new InvalidArgumentError('model_output', `has ${modelOutput.length} values but the sample has ${sample.length}`);
    }
    const earlier = this.history.at(-1);
    if (earlier && sample.length !== earlier.length) {
      throw new InvalidArgumentError('sample', `has ${sample.length} values but earlier steps had ${earlier.length}`);
    }
    const s = this.settings;
    const stochastic = s.algorithm === 'sde-dpmsolver' || s.algorithm === 'sde-dpmsolver++';
    let variance: Float32Array | null = null;
    if (stochastic) {
      if (noise.varianceNoise) {
        if (noise.varianceNoise.length !== sample.length) {
          throw new InvalidArgumentError('variance_noise', `has ${noise.varianceNoise.length} values, the sample ${sample.length}`);
        }
        variance = noise.varianceNoise;
      } else if (noise.generator) variance = noise.generator.randn([modelOutput.length]);
      else throw new InvalidArgumentError('generator', `algorithm_type ${s.algorithm} draws noise at every step: pass a generator or the noise`);
    }

    // The reference's "lower order" rules: the last step falls back to first order (always with a zero
    // final sigma), and with < 15 steps and lower_order_final the second to last to second order.
    const fewSteps = s.lowerOrderFinal && n < 15;
    const firstOrderFinal = i === n - 1 && (s.eulerAtFinal || fewSteps || s.finalSigmasType === 'zero');
    const secondOrderFinal = i === n - 2 && fewSteps;

    const converted = this.convertModelOutput(modelOutput, sample, sigmas[i]);
    this.history.shift();
    this.history.push(converted);

    // steps already taken at lower order (the multistep history fills up over the first solver_order steps)
    const lowerOrderCount = Math.min(i, s.solverOrder);
    let prev: Float32Array;
    if (s.solverOrder === 1 || lowerOrderCount < 1 || firstOrderFinal) {
      prev = this.firstOrderUpdate(converted, sample, variance, sigmas[i + 1], sigmas[i]);
    } else if (s.solverOrder === 2 || lowerOrderCount < 2 || secondOrderFinal) {
      prev = this.secondOrderUpdate(sample, variance, sigmas[i + 1], sigmas[i], sigmas[i - 1]);
    } else {
      prev = this.thirdOrderUpdate(sample, variance, sigmas[i + 1], sigmas[i], sigmas[i - 1], sigmas[i - 2]);
    }
    this.stepIndex++;
    return prev;
  }

  private requireSchedule(): FlowSchedule {
    if (!this.schedule) throw new Error('FlowDpmSolver: setTimesteps must be called before stepping');
    return this.schedule;
  }

  /** The model output as the data prediction x0 (++ variants) or the noise prediction ε, in float32. */
  private convertModelOutput(m: Float32Array, x: Float32Array, sigma: number): Float32Array {
    const s = this.settings;
    const { alpha, sigma: sig } = alphaSigma(sigma);
    const out = new Float32Array(m.length);
    const dataPrediction = s.algorithm === 'dpmsolver++' || s.algorithm === 'sde-dpmsolver++';
    switch (s.predictionType) {
      case 'flow_prediction': // x0 = x - σ·v  (σ taken straight from the schedule)
        for (let k = 0; k < m.length; k++) out[k] = fround(x[k] - fround(sigma * m[k]));
        return out;
      case 'epsilon':
        if (!dataPrediction) return Float32Array.from(m); // ε as is (a copy: the caller may reuse its buffer)
        for (let k = 0; k < m.length; k++) out[k] = fround(fround(x[k] - fround(sig * m[k])) / alpha);
        return out;
      case 'sample':
        if (dataPrediction) return Float32Array.from(m); // a copy: the caller may reuse its buffer
        for (let k = 0; k < m.length; k++) out[k] = fround(fround(x[k] - fround(alpha * m[k])) / sig);
        return out;
      case 'v_prediction':
        if (dataPrediction) for (let k = 0; k < m.length; k++) out[k] = fround(fround(alpha * x[k]) - fround(sig * m[k]));
        else for (let k = 0; k < m.length; k++) out[k] = fround(fround(alpha * m[k]) + fround(sig * x[k]));
        return out;
    }
  }

  private firstOrderUpdate(m0: Float32Array, x: Float32Array, noise: Float32Array | null, sigmaNext: number, sigmaNow: number): Float32Array {
    const t = alphaSigma(sigmaNext);
    const s0 = alphaSigma(sigmaNow);
    const h = fround(t.lambda - s0.lambda);
    switch (this.settings.algorithm) {
      case 'dpmsolver++':
        return combine([
          [fround(t.sigma / s0.sigma), x],
          [-fround(t.alpha * expm1f(-h)), m0],
        ]);
      case 'dpmsolver':
        return combine([
          [fround(t.alpha / s0.alpha), x],
          [-fround(t.sigma * expm1f(h)), m0],
        ]);
      case 'sde-dpmsolver++': {
        const decay = fround(Math.exp(fround(-2 * h)));
        return combine([
          [fround(fround(t.sigma / s0.sigma) * fround(Math.exp(-h))), x],
          [fround(t.alpha * fround(1 - decay)), m0],
          [fround(t.sigma * fround(Math.sqrt(fround(1 - decay)))), noise!],
        ]);
      }
      case 'sde-dpmsolver':
        return combine([
          [fround(t.alpha / s0.alpha), x],
          [-fround(2 * fround(t.sigma * expm1f(h))), m0],
          [fround(t.sigma * fround(Math.sqrt(fround(fround(Math.exp(fround(2 * h))) - 1)))), noise!],
        ]);
    }
  }

  private secondOrderUpdate(x: Float32Array, noise: Float32Array | null, sigmaNext: number, sigmaNow: number, sigmaPrev: number): Float32Array {
    const [m1, m0] = this.history.slice(-2) as Float32Array[];
    const t = alphaSigma(sigmaNext);
    const s0 = alphaSigma(sigmaNow);
    const s1 = alphaSigma(sigmaPrev);
    const h = fround(t.lambda - s0.lambda);
    const h0 = fround(s0.lambda - s1.lambda);
    const r0 = fround(h0 / h);
    const d0 = m0;
    const d1 = scaledDifference(fround(1 / r0), m0, m1);
    const heun = this.settings.solverType === 'heun';
    switch (this.settings.algorithm) {
      case 'dpmsolver++': {
        const c = fround(t.alpha * expm1f(-h));
        const d1Coef = heun ? fround(t.alpha * fround(fround(expm1f(-h) / h) + 1)) : -fround(0.5 * c);
        return combine([[fround(t.sigma / s0.sigma), x], [-c, d0], [d1Coef, d1]]);
      }
      case 'dpmsolver': {
        const c = fround(t.sigma * expm1f(h));
        const d1Coef = heun ? -fround(t.sigma * fround(fround(expm1f(h) / h) - 1)) : -fround(0.5 * c);
        return combine([[fround(t.alpha / s0.alpha), x], [-c, d0], [d1Coef, d1]]);
      }
      case 'sde-dpmsolver++': {
        const decay = fround(Math.exp(fround(-2 * h)));
        const c = fround(t.alpha * fround(1 - decay));
        const d1Coef = heun ? fround(t.alpha * fround(fround(fround(1 - decay) / fround(-2 * h)) + 1)) : fround(0.5 * c);
        return combine([
          [fround(fround(t.sigma / s0.sigma) * fround(Math.exp(-h))), x],
          [c, d0],
          [d1Coef, d1],
          [fround(t.sigma * fround(Math.sqrt(fround(1 - decay)))), noise!],
        ]);
      }
      case 'sde-dpmsolver': {
        const c = fround(t.sigma * expm1f(h));
        const d1Coef = heun ? -fround(2 * fround(t.sigma * fround(fround(expm1f(h) / h) - 1))) : -c;
        return combine([
          [fround(t.alpha / s0.alpha), x],
          [-fround(2 * c), d0],
          [d1Coef, d1],
          [fround(t.sigma * fround(Math.sqrt(fround(fround(Math.exp(fround(2 * h))) - 1)))), noise!],
        ]);
      }
    }
  }

  private thirdOrderUpdate(
    x: Float32Array,
    noise: Float32Array | null,
    sigmaNext: number,
    sigmaNow: number,
    sigmaPrev: number,
    sigmaPrev2: number,
  ): Float32Array {
    const [m2, m1, m0] = this.history.slice(-3) as Float32Array[];
    const t = alphaSigma(sigmaNext);
    const s0 = alphaSigma(sigmaNow);
    const s1 = alphaSigma(sigmaPrev);
    const s2 = alphaSigma(sigmaPrev2);
    const h = fround(t.lambda - s0.lambda);
    const h0 = fround(s0.lambda - s1.lambda);
    const h1 = fround(s1.lambda - s2.lambda);
    const r0 = fround(h0 / h);
    const r1 = fround(h1 / h);
    const d0 = m0;
    const d10 = scaledDifference(fround(1 / r0), m0, m1);
    const d11 = scaledDifference(fround(1 / r1), m1, m2);
    const rSum = fround(r0 + r1);
    const d1Delta = scaledDifference(fround(r0 / rSum), d10, d11);
    const d1 = new Float32Array(d10.length);
    for (let k = 0; k < d1.length; k++) d1[k] = fround(d10[k] + d1Delta[k]);
    const d2 = scaledDifference(fround(1 / rSum), d10, d11);
    const hSquared = fround(h * h);
    switch (this.settings.algorithm) {
      case 'dpmsolver++': {
        const em1 = expm1f(-h);
        return combine([
          [fround(t.sigma / s0.sigma), x],
          [-fround(t.alpha * em1), d0],
          [fround(t.alpha * fround(fround(em1 / h) + 1)), d1],
          [-fround(t.alpha * fround(fround(fround(em1 + h) / hSquared) - 0.5)), d2],
        ]);
      }
      case 'dpmsolver': {
        const em1 = expm1f(h);
        return combine([
          [fround(t.alpha / s0.alpha), x],
          [-fround(t.sigma * em1), d0],
          [-fround(t.sigma * fround(fround(em1 / h) - 1)), d1],
          [-fround(t.sigma * fround(fround(fround(em1 - h) / hSquared) - 0.5)), d2],
        ]);
      }
      case 'sde-dpmsolver++': {
        const twoH = fround(2 * h);
        const decay = fround(Math.exp(-twoH));
        const oneMinusDecay = fround(1 - decay);
        return combine([
          [fround(fround(t.sigma / s0.sigma) * fround(Math.exp(-h))), x],
          [fround(t.alpha * oneMinusDecay), d0],
          [fround(t.alpha * fround(fround(oneMinusDecay / -twoH) + 1)), d1],
          [fround(t.alpha * fround(fround(fround(oneMinusDecay - twoH) / fround(twoH * twoH)) - 0.5)), d2],
          [fround(t.sigma * fround(Math.sqrt(oneMinusDecay))), noise!],
        ]);
      }
      case 'sde-dpmsolver':
        throw new Error('unreachable: third-order sde-dpmsolver is refused at load');
    }
  }
}

/** Flow parameterisation in float32: α = 1 - σ, λ = ln α - ln σ (λ = +∞ at σ = 0). */
function alphaSigma(sigma: number): { alpha: number; sigma: number; lambda: number } {
  const alpha = fround(1 - sigma);
  return { alpha, sigma, lambda: fround(fround(Math.log(alpha)) - fround(Math.log(sigma))) };
}

/** exp(x) - 1 as the reference evaluates it: float32 exp, then a float32 subtraction (not expm1). */
function expm1f(x: number): number {
  return fround(fround(Math.exp(x)) - 1);
}

/** c · (a - b) elementwise in float32. */
function scaledDifference(c: number, a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let k = 0; k < a.length; k++) out[k] = fround(c * fround(a[k] - b[k]));
  return out;
}

/** Σ c_j·x_j accumulated left to right, each product and each sum rounded to float32 (torch's order). */
function combine(terms: [number, Float32Array][]): Float32Array {
  const coefs = terms.map(([c]) => c);
  const data = terms.map(([, x]) => x);
  const out = new Float32Array(data[0].length);
  const c0 = coefs[0];
  const x0 = data[0];
  for (let k = 0; k < out.length; k++) out[k] = fround(c0 * x0[k]);
  // one pass per further term keeps the inner loops monomorphic and allocation-free
  for (let j = 1; j < terms.length; j++) {
    const c = coefs[j];
    const x = data[j];
    for (let k = 0; k < out.length; k++) out[k] = fround(out[k] + fround(c * x[k]));
  }
  return out;
}
