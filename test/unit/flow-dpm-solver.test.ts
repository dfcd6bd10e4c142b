// Flow-DPM-Solver beyond the golden's two groups: reference prev_samples for other options
// (test/fixtures/scheduler-variants, made by the reference class itself, see make_reference.py there),
// refusals of unsupported keys, step-count validation, misuse of step(), and independence of instances.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig, parsePythonJson } from '../../services/common/config.ts';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import { Checkpoint } from '../../services/common/safetensors.ts';
import { TorchGenerator } from '../../services/common/torch-randn.ts';
import { maxRelErr } from '../parity/golden.ts';
import { tempDir } from '../helpers/tmp.ts';
import {
  FlowDpmSolver,
  FlowDpmSolverConfig,
  MAX_INFERENCE_STEPS,
  resolveSettings,
} from '../../services/denoiser/flow-dpm-solver.ts';

const FIXTURE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'scheduler-variants');
const REL_LIMIT = 1e-4;

interface VariantCase {
  config_overrides: Record<string, unknown>;
  num_inference_steps: number;
  seed: number;
  stochastic: boolean;
}
const fixture = parsePythonJson(fs.readFileSync(path.join(FIXTURE_DIR, 'cases.json'), 'utf8')) as {
  base_config: Record<string, unknown>;
  shape: number[];
  cases: Record<string, VariantCase>;
};
const reference = Checkpoint.open(path.join(FIXTURE_DIR, 'reference.safetensors'));
const baseConfig = fixture.base_config;

function solverWith(overrides: Record<string, unknown> = {}): FlowDpmSolver {
  return new FlowDpmSolver(resolveSettings('test config', parseConfig('test config', { ...baseConfig, ...overrides }, FlowDpmSolverConfig)));
}

function randomArray(length: number, seed: number): Float32Array {
  return new TorchGenerator(seed).randn([length]);
}

describe('FlowDpmSolver matches DPMSolverMultistepScheduler on options the golden does not cover', () => {
  const stepSize = fixture.shape.reduce((a, b) => a * b, 1);
  it('has reference cases to check', () => {
    expect(Object.keys(fixture.cases).length).toBeGreaterThan(20);
  });
  for (const [name, c] of Object.entries(fixture.cases)) {
    it(`${name}: timesteps exact, sigmas and every chained prev_sample within ${REL_LIMIT}`, () => {
      const solver = solverWith(c.config_overrides);
      const { timesteps, sigmas } = solver.setTimesteps(c.num_inference_steps);
      expect(timesteps).toEqual(Array.from(reference.readInt(`${name}.timesteps`).values as BigInt64Array, Number));
      const sigmaErr = maxRelErr(sigmas, reference.readF32(`${name}.sigmas`));
      expect(sigmaErr).toBeLessThanOrEqual(REL_LIMIT);

      const refSample0 = reference.readF32(`${name}.sample0`);
      const modelOutputs = reference.readF32(`${name}.model_outputs`);
      const refPrev = reference.readF32(`${name}.prev_samples`);
      // SDE variants: the generator that drew sample0 goes on to draw each step's noise, as in SanaPipeline
      const generator = new TorchGenerator(c.seed);
      const ourSample0 = generator.randn(fixture.shape);
      expect(maxRelErr(ourSample0, refSample0)).toBeLessThan(1e-5);

      let sample = refSample0;
      let worst = 0;
      for (let i = 0; i < timesteps.length; i++) {
        const output = modelOutputs.subarray(i * stepSize, (i + 1) * stepSize);
        sample = solver.step(output, timesteps[i], sample, c.stochastic ? { generator } : {});
        worst = Math.max(worst, maxRelErr(sample, refPrev.subarray(i * stepSize, (i + 1) * stepSize)));
      }
      expect(worst).toBeLessThanOrEqual(REL_LIMIT);
    });
  }
});

describe('scheduler_config.json validation', () => {
  const refusals: [string, Record<string, unknown>][] = [
    ['use_flow_sigmas', { use_flow_sigmas: false }],
    ['use_karras_sigmas', { use_karras_sigmas: true }],
    ['use_exponential_sigmas', { use_exponential_sigmas: true }],
    ['use_beta_sigmas', { use_beta_sigmas: true }],
    ['use_lu_lambdas', { use_lu_lambdas: true }],
    ['use_dynamic_shifting', { use_dynamic_shifting: true }],
    ['thresholding', { thresholding: true }],
    ['solver_order', { solver_order: 4 }],
    ['solver_order', { algorithm_type: 'sde-dpmsolver', prediction_type: 'epsilon', final_sigmas_type: 'sigma_min', solver_order: 3 }],
    ['final_sigmas_type', { algorithm_type: 'dpmsolver', prediction_type: 'epsilon', final_sigmas_type: 'zero' }],
    ['final_sigmas_type', { algorithm_type: 'deis', final_sigmas_type: 'zero' }],
    ['prediction_type', { algorithm_type: 'dpmsolver', final_sigmas_type: 'sigma_min' }],
    ['variance_type', { prediction_type: 'epsilon', variance_type: 'learned_range' }],
    ['rescale_betas_zero_snr', { final_sigmas_type: 'sigma_min', rescale_betas_zero_snr: true }],
    ['_class_name', { _class_name: 'FlowMatchEulerDiscreteScheduler' }],
    ['flow_shift', { flow_shift: 0 }],
    ['flow_shift', { flow_shift: null }],
    ['timestep_spacing', { timestep_spacing: 'uniform' }],
    ['algorithm_type', { algorithm_type: 'unipc' }],
    ['beta_schedule', { beta_schedule: 'sigmoid' }],
    ['num_train_timesteps', { num_train_timesteps: 0 }],
  ];
  for (const [key, overrides] of refusals) {
    it(`refuses ${JSON.stringify(overrides)} naming "${key}"`, () => {
      expect(() => solverWith(overrides)).toThrow(ConfigError);
      expect(() => solverWith(overrides)).toThrow(`"${key}`);
    });
  }

  it('accepts keys that do not change a flow schedule (spacing, offset, clipping, unused variance_type)', () => {
    const plain = solverWith().setTimesteps(13);
    const other = solverWith({
      timestep_spacing: 'leading',
      steps_offset: 1,
      lambda_min_clipped: -5.1,
      variance_type: 'learned',
      rescale_betas_zero_snr: true,
    }).setTimesteps(13);
    expect(other.timesteps).toEqual(plain.timesteps);
    expect(other.sigmas).toEqual(plain.sigmas);
  });

  describe('load', () => {
    const tmp = tempDir('flow-dpm');
    const schedulerDir = path.join(tmp, 'scheduler');
    fs.mkdirSync(schedulerDir);
    // written as Python writes it: -Infinity for lambda_min_clipped
    fs.writeFileSync(path.join(schedulerDir, 'scheduler_config.json'), JSON.stringify({ ...baseConfig, lambda_min_clipped: null }).replace('null', '-Infinity'));

    it('reads scheduler_config.json from the scheduler folder or the model folder above it, with overrides', () => {
      const direct = FlowDpmSolver.load(schedulerDir).setTimesteps(10);
      const fromModel = FlowDpmSolver.load(tmp).setTimesteps(10);
      expect(fromModel.sigmas).toEqual(direct.sigmas);
      const shifted = FlowDpmSolver.load(schedulerDir, { flow_shift: 1.0 });
      expect(shifted.settings.flowShift).toBe(1.0);
      // with shift 1 the first flow sigma is 1 − 1/num_train_timesteps
      expect(shifted.setTimesteps(10).sigmas[0]).toBeCloseTo(1 - 1 / (baseConfig.num_train_timesteps as number), 6);
    });

    it('names the file when it is missing or not JSON', () => {
      expect(() => FlowDpmSolver.load(path.join(tmp, 'nowhere'))).toThrow(/scheduler_config\.json/);
      const bad = path.join(tmp, 'bad');
      fs.mkdirSync(bad);
      fs.writeFileSync(path.join(bad, 'scheduler_config.json'), '{"flow_shift": ');
      expect(() => FlowDpmSolver.load(bad)).toThrow(ConfigError);
    });
  });
});

describe('FlowDpmSolver API', () => {
  it(`validates num_inference_steps (1..${MAX_INFERENCE_STEPS}, integer)`, () => {
    const solver = solverWith();
    for (const bad of [0, -3, MAX_INFERENCE_STEPS + 1, 2.5, Number.NaN]) {
      expect(() => solver.setTimesteps(bad)).toThrow(InvalidArgumentError);
      expect(() => solver.setTimesteps(bad)).toThrow(/num_inference_steps/);
    }
    expect(solver.setTimesteps(MAX_INFERENCE_STEPS).timesteps.length).toBe(MAX_INFERENCE_STEPS);
  });

  it('refuses a step before setTimesteps, a wrong timestep, mismatched sizes, and steps past the end', () => {
    const solver = solverWith();
    const x = randomArray(20, 1);
    expect(() => solver.step(x, 999, x)).toThrow(/setTimesteps/);
    const { timesteps } = solver.setTimesteps(2);
    expect(() => solver.step(x, timesteps[1], x)).toThrow(InvalidArgumentError);
    expect(() => solver.step(x.subarray(1), timesteps[0], x)).toThrow(/model_output/);
    const y = solver.step(x, timesteps[0], x);
    expect(() => solver.step(x.subarray(2), timesteps[1], y.subarray(2))).toThrow(/sample/);
    solver.step(x, timesteps[1], y);
    expect(() => solver.step(x, timesteps[1], y)).toThrow(/all 2 steps/);
  });

  it('SDE variants need a generator or the noise itself', () => {
    const solver = solverWith({ algorithm_type: 'sde-dpmsolver++' });
    const { timesteps } = solver.setTimesteps(4);
    const x = randomArray(24, 2);
    expect(() => solver.step(x, timesteps[0], x)).toThrow(/generator/);
    const noise = randomArray(24, 3);
    const withNoise = solver.step(x, timesteps[0], x, { varianceNoise: noise });
    // the noise a generator draws is torch.randn of the step's size from that generator
    const fromGenerator = solverWith({ algorithm_type: 'sde-dpmsolver++' });
    fromGenerator.setTimesteps(4);
    const fromDraw = solverWith({ algorithm_type: 'sde-dpmsolver++' });
    fromDraw.setTimesteps(4);
    const drawn = fromGenerator.step(x, timesteps[0], x, { generator: new TorchGenerator(7) });
    expect(drawn).toEqual(fromDraw.step(x, timesteps[0], x, { varianceNoise: new TorchGenerator(7).randn([24]) }));
    expect(drawn).not.toEqual(withNoise);
  });

  it('leaves its inputs untouched and gives the same result after reset()', () => {
    const solver = solverWith({ solver_order: 3 });
    const { timesteps } = solver.setTimesteps(6);
    const outputs = timesteps.map((_, i) => randomArray(32, 10 + i));
    const sample0 = randomArray(32, 99);
    const copy = Float32Array.from(sample0);
    const run = () => {
      let s = sample0;
      for (let i = 0; i < timesteps.length; i++) s = solver.step(outputs[i], timesteps[i], s);
      return s;
    };
    const first = run();
    expect(sample0).toEqual(copy);
    solver.reset();
    expect(solver.currentStep).toBe(0);
    expect(run()).toEqual(first);
  });

  it('keeps concurrent requests independent (interleaved forks = separate runs)', () => {
    const loaded = solverWith();
    const a = loaded.fork();
    const b = loaded.fork();
    const ta = a.setTimesteps(8).timesteps;
    const tb = b.setTimesteps(5).timesteps;
    const outA = ta.map((_, i) => randomArray(16, 100 + i));
    const outB = tb.map((_, i) => randomArray(16, 200 + i));
    let sa = randomArray(16, 1);
    let sb = randomArray(16, 2);
    const alone = (n: number, outs: Float32Array[], start: Float32Array) => {
      const s = loaded.fork();
      const t = s.setTimesteps(n).timesteps;
      let x = start;
      for (let i = 0; i < n; i++) x = s.step(outs[i], t[i], x);
      return x;
    };
    for (let i = 0; i < 8; i++) {
      sa = a.step(outA[i], ta[i], sa);
      if (i < 5) sb = b.step(outB[i], tb[i], sb);
    }
    expect(sa).toEqual(alone(8, outA, randomArray(16, 1)));
    expect(sb).toEqual(alone(5, outB, randomArray(16, 2)));
  });

  it('with a zero final sigma the last step returns the data prediction x0 = x - σ·v', () => {
    const solver = solverWith();
    const { timesteps, sigmas } = solver.setTimesteps(3);
    expect(sigmas[3]).toBe(0);
    let x = randomArray(16, 5);
    const v = randomArray(16, 6);
    for (let i = 0; i < 2; i++) x = solver.step(v, timesteps[i], x);
    const last = solver.step(v, timesteps[2], x);
    for (let k = 0; k < 16; k++) expect(last[k]).toBe(Math.fround(x[k] - Math.fround(sigmas[2] * v[k])));
  });
});
