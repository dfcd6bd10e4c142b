// Parity and timing of the denoiser's CUDA backend, for kernels/device/run.sh (bundled to one .mjs so that the device,
// which has no Node.js project, needs only the carried node binary). Writes a JSON report and prints its tables.
//
//   parity  each golden variant's transformer, every transformer group (inputs → output) of its golden: bf16 and int8
//           forward vs the golden (diffusers fp32) output and vs the addon's plain C++ reference with the same
//           rounding, and that C++ reference in fp32 vs the golden (checks the reference itself)
//   timing  a preset's shapes with random weights: median forward ms per mode, resolution, batch
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { tensor } from '../../services/common/tensor.ts';
import { PRESETS } from '../../services/cli/presets.ts';
import { CUDA_MODES, CudaLinearDit, PARITY_LIMITS } from '../../services/denoiser/cuda-backend.ts';
import { type DitInputs, ditTensorShapes, LinearDitConfig } from '../../services/denoiser/linear-dit.ts';
import { Golden, maxRelErr } from '../../test/parity/golden.ts';
import { groupsByOutput } from '../../test/parity/stages.ts';
import { goldenDitInputs } from '../../test/parity/transformer.ts';

const { values: args } = parseArgs({
  options: {
    addon: { type: 'string' },
    golden: { type: 'string', multiple: true, default: [] },
    preset: { type: 'string', default: 'sana-600m-1024' },
    sizes: { type: 'string', default: '512,1024,2048,4096' },
    batch: { type: 'string', default: '2' },
    caption: { type: 'string', default: '300' },
    repeats: { type: 'string', default: '5' },
    out: { type: 'string' },
  },
});
if (!args.addon || !args.out) throw new Error('usage: check.mjs --addon FILE --out FILE.json [--golden DIR ...] [--preset NAME --sizes PX,...]');

const report: Record<string, unknown> = { started: new Date().toISOString() };

// ---- parity on the golden variants ----
const parity: Record<string, unknown>[] = [];
for (const dir of args.golden) {
  const golden = new Golden(dir);
  const groups = groupsByOutput(golden, 'transformer', 'output');
  if (groups.length === 0) continue;
  for (const mode of CUDA_MODES) {
    let dit: CudaLinearDit;
    try {
      dit = await CudaLinearDit.load(golden.component('transformer'), { mode, addon: args.addon, keepHostCopy: true });
    } catch (e) {
      parity.push({ variant: golden.variant, mode, skipped: (e as Error).message });
      continue;
    }
    try {
      report.backend = dit.description;
      for (const group of groups) {
        const inputs = goldenDitInputs(golden, group);
        const want = golden.f32(`${group}.output`);
        const out = (await dit.forward(inputs)).data;
        const reference = (await dit.forwardReference(inputs, 'fp32')).data;
        const sameRounding = (await dit.forwardReference(inputs, 'rounded')).data;
        const err = maxRelErr(out, want);
        parity.push({
          variant: golden.variant,
          group,
          mode,
          maxRelErr: err,
          limit: PARITY_LIMITS[mode],
          referenceFp32MaxRelErr: maxRelErr(reference, want),
          sameRoundingMaxRelErr: maxRelErr(out, sameRounding),
          pass: err < PARITY_LIMITS[mode],
        });
      }
    } finally {
      await dit.close();
    }
  }
}
report.parity = parity;

// ---- timing with random weights of a preset's shapes ----
function randomWeights(c: LinearDitConfig): (key: string) => Float32Array {
  const shapes = ditTensorShapes(c);
  let state = 0x9e3779b9;
  return (key) => {
    const shape = shapes.get(key)!;
    const n = shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    if (/norm(2|_q|_k)?\.weight$/.test(key)) return out.fill(1);
    if (key.endsWith('.bias')) return out;
    const scale = (key.includes('scale_shift_table') ? 0.1 : 1) / Math.sqrt(shape.length > 1 ? n / shape[0] : 1);
    for (let i = 0; i < n; i++) {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0; // LCG: only speed matters here
      out[i] = ((state / 2 ** 32) * 2 - 1) * scale * Math.sqrt(3);
    }
    return out;
  };
}

const timing: Record<string, unknown>[] = [];
const spec = PRESETS[args.preset!]?.components.transformer?.();
if (!spec) throw new Error(`preset ${args.preset} has no transformer`);
const config = LinearDitConfig.parse(spec.config);
report.config = config;
const batch = Number(args.batch);
const captionLength = Number(args.caption);
const repeats = Number(args.repeats);
const vaeFactor = 32; // DC-AE F32: one latent pixel per 32 image pixels
for (const mode of CUDA_MODES) {
  const loadStart = performance.now();
  let dit: CudaLinearDit;
  try {
    dit = CudaLinearDit.fromTensors(config, randomWeights(config), { mode, addon: args.addon });
  } catch (e) {
    timing.push({ engine: `kernels-${mode}`, preset: args.preset, error: (e as Error).message });
    process.exitCode = 1;
    continue;
  }
  const loadSeconds = (performance.now() - loadStart) / 1000;
  try {
    for (const px of args.sizes!.split(',').map(Number)) {
      const side = px / vaeFactor;
      const wave = (n: number, f: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * f));
      const inputs: DitInputs = {
        hiddenStates: tensor(wave(batch * config.in_channels * side * side, 0.37), [batch, config.in_channels, side, side]),
        encoderHiddenStates: tensor(wave(batch * captionLength * config.caption_channels, 0.11), [batch, captionLength, config.caption_channels]),
        encoderAttentionMask: tensor(new BigInt64Array(batch * captionLength).fill(1n), [batch, captionLength]),
        timestep: tensor(new Float32Array(batch).fill(500), [batch]),
      };
      await dit.forward(inputs); // warm-up
      const ms: number[] = [];
      for (let r = 0; r < repeats; r++) {
        const start = performance.now();
        await dit.forward(inputs);
        ms.push(performance.now() - start);
      }
      ms.sort((a, b) => a - b);
      timing.push({ engine: `kernels-${mode}`, preset: args.preset, px, batch, tokens: side * side, medianMs: ms[Math.floor(ms.length / 2)], runs: ms, loadSeconds });
    }
  } finally {
    await dit.close();
  }
}
report.timing = timing;
report.finished = new Date().toISOString();
fs.mkdirSync(path.dirname(args.out!), { recursive: true });
fs.writeFileSync(args.out!, `${JSON.stringify(report, null, 2)}\n`);

console.log(`backend: ${report.backend ?? '?'}`);
console.log('parity (max |ours - golden| / max |golden|)');
for (const p of parity) {
  const e = (key: string) => (p[key] as number).toExponential(2);
  const row = p.skipped
    ? `skipped: ${p.skipped}`
    : `${e('maxRelErr')} (limit ${e('limit')}) ${p.pass ? 'ok' : 'FAIL'}; vs C++ same rounding ${e('sameRoundingMaxRelErr')}; C++ fp32 reference ${e('referenceFp32MaxRelErr')}`;
  console.log(`  ${`${p.variant}${p.group ? ` ${p.group}` : ''}`.padEnd(44)} ${String(p.mode).padEnd(5)} ${row}`);
}
console.log(`timing (${args.preset}, batch ${batch}, caption ${captionLength}, median of ${repeats})`);
for (const t of timing) {
  console.log(`  ${String(t.engine).padEnd(14)} ${t.error ? `failed: ${t.error}` : `${String(t.px).padStart(5)} px  ${(t.medianMs as number).toFixed(2).padStart(10)} ms`}`);
}
if (parity.some((p) => p.pass === false)) process.exitCode = 1;
