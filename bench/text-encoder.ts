// `npm run bench -- text-encoder --preset gemma-2-2b --tokens 300 [--precision int8]`: seconds per Gemma-2 forward at
// real shapes (random weights), analytic FLOPs, achieved GFLOP/s against this machine's fp32 MatMul peak measured in
// the same run, load time and memory (int8 rows beside the fp32 rows of the same run, the models loaded one after
// the other); then the stage's encode() with and without an embedding-cache hit.
// With more than one precision each runs in its own child process, so that the resident memory of one model is not
// the leftover heap of the other: the table's rss columns are the int8 model's own.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { cacheRoot } from '../services/common/compile-cache.ts';
import { InvalidArgumentError } from '../services/common/errors.ts';
import { tensor } from '../services/common/tensor.ts';
import { Gemma2Model, gemma2ForwardFlops } from '../services/text-encoder/gemma2.ts';
import { LocalTextEncoder } from '../services/text-encoder/stage.ts';
import { writeTestTokenizer } from '../services/common/random-tokenizer.ts';
import { HfTokenizer } from '../services/text-encoder/tokenizer.ts';
import { cachedRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { parsePrecision, type Precision } from '../services/common/int8-recipe.ts';
import { benchPrecisions, measureMatmulPeakGflops, median, peakRssGiB, printTable, timeRuns } from './util.ts';

const GiB = 2 ** 30;

export async function run(argv: string[]): Promise<void> {
  const opts = new Command('bench text-encoder')
    .option('--preset <name>', 'text encoder preset', 'gemma-2-2b')
    .option('--tokens <list>', 'sequence lengths, comma-separated', '300')
    .option('--batch <n>', 'rows per forward', '1')
    .option('--repeats <n>', 'timed forwards per length (after one warm-up)', '3')
    .option('--no-prepack', "keep weights in the page cache instead of ORT's packed copy")
    .option('--no-stage', 'skip the encode() / cache rows')
    .option('--tokenizer <dir>', "tokenizer folder for the stage rows (default: the checkpoint's, else a small test tokenizer)")
    .option('--max-sequence-length <n>', 'max_sequence_length of the stage rows', '300')
    .option('--precision <list>', 'fp32 | int8, comma-separated (int8 comes with fp32 rows)', 'fp32')
    .option('--rounds <n>', 'with several precisions: their child processes take turns this many times (median of the rounds)', '1')
    .option('--json', 'one JSON object per row')
    .option('--child <precision>', 'internal: measure this one precision and print JSON rows')
    .parse(argv, { from: 'user' })
    .opts<{ preset: string; tokens: string; batch: string; repeats: string; prepack: boolean; stage: boolean; tokenizer?: string; maxSequenceLength: string; precision: string; rounds: string; json?: boolean; child?: string }>();
  const json = Boolean(opts.json);
  const precisions = opts.child ? [parsePrecision(opts.child, '--child')] : benchPrecisions(opts.precision);
  if (precisions.length > 1) return runEachInChild(argv, precisions, Number(opts.rounds), json);
  const batch = Number(opts.batch);
  const lengths = opts.tokens.split(',').map(Number);

  const checkpoint = cachedRandomCheckpoint(opts.preset);
  const peak = await measureMatmulPeakGflops();
  const rows: Record<string, string | number>[] = [];
  const loads: Record<string, string | number>[] = [];
  let model: Gemma2Model | undefined;
  for (const precision of precisions) {
    await model?.close();
    const rssBefore = process.memoryUsage().rss / GiB;
    const started = performance.now();
    model = await Gemma2Model.load(path.join(checkpoint, 'text_encoder'), { disablePrepacking: !opts.prepack, precision });
    const loadSeconds = (performance.now() - started) / 1000;
    const rssAfterLoad = process.memoryUsage().rss / GiB;
    const c = model.config;
    for (const length of lengths) {
      const ids = new BigInt64Array(batch * length);
      for (let i = 0; i < ids.length; i++) ids[i] = i % length === 0 ? 2n : BigInt(3 + ((i * 7919) % (c.vocab_size - 3)));
      const mask = new BigInt64Array(batch * length).fill(1n);
      const inputs = [tensor(ids, [batch, length]), tensor(mask, [batch, length])] as const;
      const seconds = median(await timeRuns(() => model!.forward(...inputs), Number(opts.repeats)));
      const gflop = gemma2ForwardFlops(c, batch, length) / 1e9;
      const fp32Row = rows.find((r) => r.tokens === length && r.precision === 'fp32');
      rows.push({
        stage: 'text-encoder',
        preset: opts.preset,
        precision,
        prepack: opts.prepack ? 'on' : 'off',
        batch,
        tokens: length,
        median_s: Number(seconds.toFixed(3)),
        gflop: Number(gflop.toFixed(1)),
        gflops: Number((gflop / seconds).toFixed(1)),
        peak_gflops: Number(peak.toFixed(1)),
        of_peak: `${((100 * gflop) / seconds / peak).toFixed(1)}%`,
        vs_fp32: fp32Row ? Number(((fp32Row.median_s as number) / seconds).toFixed(2)) : '',
      });
    }
    loads.push({
      stage: 'text-encoder-memory',
      preset: opts.preset,
      precision,
      load_s: Number(loadSeconds.toFixed(1)),
      session_create_s: Number(model.session.loadSeconds.toFixed(1)),
      compile_cache: model.compileCacheHit ? 'hit' : 'miss (built now)',
      rss_after_load_gib: Number(rssAfterLoad.toFixed(2)),
      rss_load_delta_gib: Number((rssAfterLoad - rssBefore).toFixed(2)),
      // without prepacking the weights are mapped in by the first forward: the resident size after the runs
      rss_after_runs_gib: Number((process.memoryUsage().rss / GiB).toFixed(2)),
      peak_rss_gib: Number(peakRssGiB().toFixed(2)),
    });
  }
  printTable(rows, json);
  const c = model!.config;

  if (opts.stage) {
    const tokenizerDir =
      opts.tokenizer ??
      (fs.existsSync(path.join(checkpoint, 'tokenizer', 'tokenizer.json'))
        ? path.join(checkpoint, 'tokenizer')
        : writeTestTokenizer(path.join(cacheRoot(), 'bench', 'test-tokenizer'), { vocabSize: Math.min(512, c.vocab_size) }));
    const stage = LocalTextEncoder.fromModel(model!, HfTokenizer.load(tokenizerDir));
    const msl = Number(opts.maxSequenceLength);
    const cases = [
      { case: 'prompt + CHI', request: { prompts: ['A small, fluffy white cat curled up on a sunny windowsill'], useComplexHumanInstruction: true, maxSequenceLength: msl } },
      { case: 'negative ""', request: { prompts: [''], useComplexHumanInstruction: false, maxSequenceLength: msl } },
    ];
    const stageRows: Record<string, string | number>[] = [];
    for (const { case: name, request } of cases) {
      const t0 = performance.now();
      await stage.encode(request);
      const cold = (performance.now() - t0) / 1000;
      const hits = await timeRuns(() => stage.encode(request), 5, 0);
      stageRows.push({
        stage: 'encode()',
        case: name,
        max_sequence_length: msl,
        miss_s: Number(cold.toFixed(3)),
        hit_ms: Number((median(hits) * 1000).toFixed(3)),
        speedup: Math.round(cold / median(hits)),
      });
    }
    const s = stage.cacheStats();
    if (!json) console.log('');
    printTable(stageRows, json);
    if (!json) console.log(`cache: ${s.hits} hits, ${s.misses} misses, ${s.entries} entries, ${(s.bytes / 2 ** 20).toFixed(2)} MiB; rows encoded ${s.encodedRows}; tokenizer ${tokenizerDir}`);
  }
  await model!.close();
  if (!json) console.log('');
  printTable(loads, json);
  if (!json) console.log(`runs per row: 1 warm-up + ${opts.repeats} timed`);
}

/**
 * One child process per precision (the same options, stage rows in the last one's last round only), taking turns for
 * `rounds` rounds so that the ratio compares runs under the same load; prints the merged tables (forward times: the
 * median of the rounds' medians; memory: the last round's).
 */
function runEachInChild(argv: string[], precisions: Precision[], rounds: number, json: boolean): void {
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new InvalidArgumentError('--rounds', `must be a positive integer, got ${rounds}`);
  let rows: Record<string, string | number>[] = [];
  const roundTimes = new Map<string, number[]>(); // precision/tokens → each round's median_s
  for (let round = 0; round < rounds; round++) {
    rows = [];
    precisions.forEach((precision, i) => {
      const last = i === precisions.length - 1 && round === rounds - 1;
      const child = spawnSync(process.execPath, [...process.execArgv, process.argv[1]!, 'text-encoder', ...argv, '--child', precision, '--json', ...(last ? [] : ['--no-stage'])], {
        stdio: ['ignore', 'pipe', 'inherit'],
        encoding: 'utf8',
        maxBuffer: 64 * 2 ** 20,
      });
      if (child.status !== 0) throw new Error(`the ${precision} child exited with ${child.status ?? child.signal}`);
      for (const line of child.stdout.split('\n')) if (line.startsWith('{')) rows.push(JSON.parse(line) as Record<string, string | number>);
    });
    for (const r of rows.filter((r) => r.stage === 'text-encoder')) {
      const key = `${r.precision}/${r.tokens}`;
      roundTimes.set(key, [...(roundTimes.get(key) ?? []), r.median_s as number]);
    }
  }
  for (const r of rows.filter((r) => r.stage === 'text-encoder')) {
    const times = roundTimes.get(`${r.precision}/${r.tokens}`)!;
    r.median_s = median(times);
    r.gflops = Number(((r.gflop as number) / r.median_s).toFixed(1));
    r.of_peak = `${((100 * (r.gflops as number)) / (r.peak_gflops as number)).toFixed(1)}%`;
    if (rounds > 1) r.rounds_s = times.join(' / ');
  }
  const of = (stage: string) => rows.filter((r) => r.stage === stage);
  const ratio = (r: Record<string, string | number>, key: string, invert: boolean) => {
    const fp32 = rows.find((f) => f.stage === r.stage && f.precision === 'fp32' && f.tokens === r.tokens);
    if (!fp32 || r.precision === 'fp32') return '';
    const v = invert ? (fp32[key] as number) / (r[key] as number) : (r[key] as number) / (fp32[key] as number);
    return Number(v.toFixed(2));
  };
  const forwards = of('text-encoder').map((r) => ({ ...r, vs_fp32: ratio(r, 'median_s', true) }));
  const memory = of('text-encoder-memory').map((r) => ({ ...r, rss_vs_fp32: ratio(r, 'rss_after_runs_gib', false) }));
  printTable(forwards, json);
  if (!json) console.log('');
  printTable(of('encode()'), json);
  if (!json) console.log('');
  printTable(memory, json);
  if (!json) console.log(`each precision measured in its own process${rounds > 1 ? `, ${rounds} rounds in turn` : ''}; rss_after_runs is its resident set after the timed forwards`);
}
