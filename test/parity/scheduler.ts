// Parity of the Flow-DPM-Solver on every group of golden.json calls.scheduler: the variant's scheduler/
// config with the group's config_overrides (and flow_shift), set_timesteps(num_inference_steps), then the
// reference's step sequence. prev_samples are checked chained on our own outputs (stronger than feeding each
// step the reference's previous sample as the golden was recorded: errors would accumulate), and the line
// reports the worst step's max|ours-ref|/max|ref|.
import { FlowDpmSolver } from '../../services/denoiser/flow-dpm-solver.ts';
import { type Golden, maxAbsErr, maxRelErr } from './golden.ts';
import { FLOAT_LIMIT, type ParityResult, type Stage } from './stages.ts';

interface SchedulerCall {
  num_inference_steps: number;
  config_overrides?: Record<string, unknown>;
  flow_shift?: number;
}

function solverFor(golden: Golden, call: SchedulerCall): FlowDpmSolver {
  const overrides: Record<string, unknown> = { ...(call.config_overrides ?? {}) };
  if (call.flow_shift !== undefined && call.flow_shift !== null) overrides.flow_shift = call.flow_shift;
  return FlowDpmSolver.load(golden.component('scheduler'), overrides);
}

export const schedulerStage: Stage = {
  name: 'scheduler',
  groups: (g) => Object.keys(g.json.calls?.scheduler ?? {}),
  async check(golden, group) {
    const call = golden.json.calls.scheduler[group] as SchedulerCall;
    const name = (n: string) => `${group}.${n}`;
    const results: ParityResult[] = [];
    const solver = solverFor(golden, call);
    const { timesteps, sigmas } = solver.setTimesteps(call.num_inference_steps);

    const refTimesteps = golden.ints(name('timesteps'));
    if (refTimesteps.length !== timesteps.length) throw new Error(`${timesteps.length} timesteps vs reference ${refTimesteps.length}`);
    results.push({ tensor: name('timesteps'), metric: 'max_abs_err', value: maxAbsErr(timesteps, refTimesteps), limit: 0 });
    results.push({ tensor: name('sigmas'), metric: 'max_rel_err', value: maxRelErr(sigmas, golden.f32(name('sigmas'))), limit: FLOAT_LIMIT });

    if (!golden.has(name('prev_samples'))) return results;
    const stepShape = golden.shape(name('prev_samples'));
    const steps = stepShape[0];
    if (steps !== timesteps.length) throw new Error(`golden has ${steps} prev_samples for ${timesteps.length} timesteps`);
    const stepSize = stepShape.slice(1).reduce((a, b) => a * b, 1);
    const modelOutputs = golden.f32(name('model_outputs'));
    const refPrev = golden.f32(name('prev_samples'));
    const sample0 = golden.f32(name('sample0'));
    const slice = (all: Float32Array, i: number) => all.subarray(i * stepSize, (i + 1) * stepSize);

    const run = solver.fork();
    run.setTimesteps(call.num_inference_steps);
    let worst = 0;
    let sample = sample0;
    for (let i = 0; i < steps; i++) {
      sample = run.step(slice(modelOutputs, i), timesteps[i], sample);
      worst = Math.max(worst, maxRelErr(sample, slice(refPrev, i)));
    }
    results.push({ tensor: name('prev_samples'), metric: 'max_rel_err', value: worst, limit: FLOAT_LIMIT });
    return results;
  },
};
