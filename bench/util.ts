// Shared pieces of the benchmark scripts: timing, the machine's measured fp32 peak, tables.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GraphBuilder, ElemType } from '../services/common/onnx-graph.ts';
import { OrtSession } from '../services/common/ort-session.ts';
import { tensor } from '../services/common/tensor.ts';
import { cacheRoot } from '../services/common/compile-cache.ts';
import { parsePrecision, type Precision } from '../services/common/int8-recipe.ts';

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The q-quantile as the smallest value with at least q of the values at or below it (p99 of < 100 values: the max). */
export function quantile(values: number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
}

/** Runs `fn` `warmup` times untimed, then `repeats` times; returns the seconds of each timed run. */
export async function timeRuns(fn: () => Promise<unknown>, repeats: number, warmup = 1): Promise<number[]> {
  return (await timeInterleaved([fn], repeats, warmup))[0]!;
}

/**
 * Seconds per call of several functions timed in turn (a, b, a, b, …) after `warmup` calls each: a ratio between
 * them then compares runs made under the same machine load, which drifts on a shared machine.
 */
export async function timeInterleaved(fns: (() => Promise<unknown>)[], repeats: number, warmup = 1): Promise<number[][]> {
  for (const fn of fns) for (let i = 0; i < warmup; i++) await fn();
  const out = fns.map((): number[] => []);
  for (let i = 0; i < repeats; i++) {
    for (const [j, fn] of fns.entries()) {
      const t0 = performance.now();
      await fn();
      out[j]!.push((performance.now() - t0) / 1000);
    }
  }
  return out;
}

/** Peak resident set size of this process (all threads, ORT workers included), in GiB. */
export function peakRssGiB(): number {
  return (process.resourceUsage().maxRSS * 1024) / 2 ** 30;
}

/**
 * This machine's fp32 MatMul peak as ONNX Runtime reaches it, all cores: the best GFLOP/s of ten runs of a
 * 4096×1152×1152 GEMM chain (SANA-600M's projections at 1024 px, batch 2), measured now, in this run. The best,
 * not the median: a peak is what the machine can do, and on a shared machine slower runs measure the neighbours.
 */
export async function measureMatmulPeakGflops(threads = os.availableParallelism()): Promise<number> {
  const m = 4096;
  const k = 1152;
  const chain = 8;
  const dir = path.join(cacheRoot(), 'bench', `matmul-peak-${m}x${k}x${chain}`);
  if (!fs.existsSync(path.join(dir, 'model.onnx'))) {
    const g = new GraphBuilder('matmul_peak', dir);
    let x = g.input('x', ElemType.FLOAT, [m, k]);
    for (let i = 0; i < chain; i++) {
      const w = new Float32Array(k * k);
      for (let j = 0; j < w.length; j++) w[j] = (((j * 2654435761) >>> 0) / 2 ** 32 - 0.5) / Math.sqrt(k);
      x = g.op('Gemm', [x, g.weight(`w${i}`, [k, k], w)], { transB: 1 });
    }
    g.output(x, 'y', ElemType.FLOAT, [m, k]);
    g.finish();
  }
  const session = await OrtSession.create(path.join(dir, 'model.onnx'), { intraOpThreads: threads });
  try {
    const x = tensor(new Float32Array(m * k).fill(0.01), [m, k]);
    const runs: number[] = [];
    await session.run({ x }); // warm-up
    for (let i = 0; i < 10; i++) {
      await session.run({ x });
      runs.push(session.lastRunSeconds);
    }
    return (2 * m * k * k * chain) / Math.min(...runs) / 1e9;
  } finally {
    await session.close();
  }
}

/**
 * The precisions a benchmark compares, from `--precision <list>`: an int8 row always comes with the fp32 rows of
 * the same run (first), so its speed-up is measured against a baseline under the same machine load.
 */
export function benchPrecisions(list: string): Precision[] {
  const asked = list.split(',').map((p) => parsePrecision(p.trim(), '--precision'));
  return [...new Set<Precision>(['fp32', ...asked])];
}

/** Prints rows as an aligned text table (or JSON lines with --json). */
export function printTable(rows: Record<string, string | number>[], json: boolean): void {
  if (json) {
    for (const r of rows) console.log(JSON.stringify(r));
    return;
  }
  if (rows.length === 0) return;
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))]; // rows may leave columns out
  const cell = (v: string | number) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : v);
  const widths = keys.map((k) => Math.max(k.length, ...rows.map((r) => cell(r[k] ?? '').length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padStart(widths[i])).join('  ');
  console.log(line(keys));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const r of rows) console.log(line(keys.map((k) => cell(r[k] ?? ''))));
}
