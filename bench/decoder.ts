// `npm run bench -- decoder --preset dc-ae-f32c32-sana-1.0 --res 512,1024,2048,4096`: seconds per image decode
// of the DC-AE decoder at real shapes (random weights), peak RSS, the reference's FLOPs, achieved GFLOP/s and
// the ratio to this machine's fp32 MatMul peak measured in the same run. Latents larger than a tile decode
// tiled (4K: one run, its first tile warms up). Each resolution runs in its own process so its peak RSS is
// its own.
//
// Tiled rows also say when the first finished tile was ready to stream (first_tile_s, and its share of the decode).
//
// `--seams 2048` decodes one latent whole and tiled and reports how far the tiled image is from the whole one,
// inside the blended bands and elsewhere.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { Command } from 'commander';
import { DcAeConfig, dcAeDecoderFlops } from '../services/decoder/dc-ae.ts';
import { toUint8 } from '../services/decoder/image.ts';
import { LocalDecoder } from '../services/decoder/stage.ts';
import { DEFAULT_TILING, needsTiling, tileGrid, type TilingOptions } from '../services/decoder/tiling.ts';
import { tensor } from '../services/common/tensor.ts';
import { Xorshift } from '../services/common/random-checkpoint.ts';
import { cachedRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { measureMatmulPeakGflops, median, peakRssGiB, printTable, timeRuns } from './util.ts';

interface Options {
  preset: string;
  res: string;
  repeats: string;
  tile: string;
  overlap: string;
  untiled?: boolean;
  warmTile?: boolean;
  seams?: string;
  json?: boolean;
  row?: string;
  seamsRow?: string;
}

const ROW_MARK = '@@row ';

/** A latent like the denoiser's output after /scaling_factor: roughly N(0, 1), deterministic. */
function benchLatent(channels: number, h: number, w: number) {
  const rng = new Xorshift(1234);
  const data = new Float32Array(channels * h * w);
  for (let i = 0; i < data.length; i++) data[i] = (rng.next() + rng.next() + rng.next() - 1.5) * 2; // Irwin–Hall, std 1
  return tensor(data, [1, channels, h, w]);
}

function tilingOf(opts: Options): TilingOptions | false {
  return opts.untiled ? false : { tileSize: Number(opts.tile), overlap: Number(opts.overlap) };
}

/** Child process: one resolution, one JSON row on stdout. */
async function runRow(opts: Options, vaeDir: string): Promise<void> {
  const res = Number(opts.row);
  const tiling = tilingOf(opts);
  const decoder = await LocalDecoder.load(vaeDir, { tiling });
  const c: DcAeConfig = decoder.model.config;
  const s = decoder.model.spatialScale;
  const h = res / s;
  const z = benchLatent(c.latent_channels, h, h);
  const tiled = tiling !== false && needsTiling(h, h, tiling, s);
  const tiles = tiled ? tileGrid(h, h, tiling, s) : [{ top: 0, left: 0, height: h, width: h }];
  const flops = tiles.reduce((sum, t) => sum + dcAeDecoderFlops(c, t.height, t.width), 0);
  const graphFlops = tiles.reduce((sum, t) => sum + dcAeDecoderFlops(c, t.height, t.width, 'graph'), 0);
  // untiled: one warm-up then the timed runs; tiled: a single run whose first tile pays the warm-up, unless
  // --warm-tile decodes one tile-sized latent first (the steady state a serving decoder is in)
  const warmups = tiled ? 0 : 1;
  if (tiled && opts.warmTile) {
    const side = tiling.tileSize / s;
    await decoder.decodeSample(benchLatent(c.latent_channels, side, side));
  }
  const timed = tiled ? 1 : Number(opts.repeats);
  let sample: Awaited<ReturnType<typeof decoder.decodeSample>> | undefined;
  // tiled: when the first finished tile (uint8, as it is streamed) is ready, from the start of the decode
  let firstTileSeconds = 0;
  const seconds = await timeRuns(
    async () => {
      const started = performance.now();
      const onTile = () => void (firstTileSeconds ||= (performance.now() - started) / 1000);
      sample = await decoder.decodeSample(z, { onTile });
    },
    timed,
    warmups,
  );
  const t0 = performance.now();
  const [, ch, H, W] = sample!.dims;
  toUint8({ data: sample!.data, channels: ch, height: H, width: W });
  const toUint8Seconds = (performance.now() - t0) / 1000;
  await decoder.close();
  const sec = median(seconds);
  const row = {
    res,
    latent: `${h}x${h}`,
    mode: tiled ? `tiled ${tiling.tileSize}/${tiling.overlap} (${tiles.length} tiles)` : 'whole',
    runs: tiled ? (opts.warmTile ? '1 warm tile + 1' : '1 (tiled: first tile warms up)') : `1 warm-up + ${timed}`,
    median_s: Number(sec.toFixed(2)),
    image_tflop: Number((dcAeDecoderFlops(c, h, h) / 1e12).toFixed(2)),
    computed_tflop: Number((flops / 1e12).toFixed(2)),
    gflops: Number((flops / sec / 1e9).toFixed(1)),
    graph_gflops: Number((graphFlops / sec / 1e9).toFixed(1)),
    peak_rss_gib: Number(peakRssGiB().toFixed(2)),
    to_uint8_s: Number(toUint8Seconds.toFixed(3)),
    first_tile_s: tiled ? Number(firstTileSeconds.toFixed(2)) : '',
    first_tile_of_total: tiled ? `${((100 * firstTileSeconds) / sec).toFixed(1)}%` : '',
  };
  console.log(ROW_MARK + JSON.stringify(row));
}

/** Child process: the same latent whole and tiled, and where they differ. */
async function runSeams(opts: Options, vaeDir: string): Promise<void> {
  const res = Number(opts.seamsRow);
  const tiling = { tileSize: Number(opts.tile), overlap: Number(opts.overlap) };
  // a whole 2048² decode holds ~12 GB of live tensors: without ORT's arena (which would round that up) it fits
  const whole = await LocalDecoder.load(vaeDir, { tiling: false, memoryArena: false });
  const s = whole.model.spatialScale;
  const h = res / s;
  const z = benchLatent(whole.model.config.latent_channels, h, h);
  let t0 = performance.now();
  const a = await whole.decodeSample(z);
  const wholeSeconds = (performance.now() - t0) / 1000;
  const wholeRss = peakRssGiB();
  await whole.close();
  const tiledDecoder = await LocalDecoder.load(vaeDir, { tiling });
  t0 = performance.now();
  const b = await tiledDecoder.decodeSample(z);
  const tiledSeconds = (performance.now() - t0) / 1000;
  await tiledDecoder.close();
  const [, ch, H, W] = a.dims;
  const stride = tiling.tileSize - tiling.overlap;
  const inBand = (p: number) => p >= stride && p % stride < tiling.overlap; // blended rows / columns
  let scale = 0;
  let band = 0;
  let rest = 0;
  let sum = 0;
  for (let c = 0; c < ch; c++) {
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const i = (c * H + y) * W + x;
        const d = Math.abs(a.data[i] - b.data[i]);
        scale = Math.max(scale, Math.abs(a.data[i]));
        sum += d;
        if (inBand(y) || inBand(x)) band = Math.max(band, d);
        else rest = Math.max(rest, d);
      }
    }
  }
  // seam visibility: mean |Δ| between horizontal neighbours across tile starts vs everywhere
  const jump = (t: Float32Array, at: (x: number) => boolean) => {
    let total = 0;
    let n = 0;
    for (let c = 0; c < ch; c++)
      for (let y = 0; y < H; y++)
        for (let x = 1; x < W; x++) {
          if (!at(x)) continue;
          total += Math.abs(t[(c * H + y) * W + x] - t[(c * H + y) * W + x - 1]);
          n++;
        }
    return total / n;
  };
  const tileStart = (x: number) => x % stride === 0;
  const ua = toUint8({ data: a.data, channels: ch, height: H, width: W });
  const ub = toUint8({ data: b.data, channels: ch, height: H, width: W });
  let u8max = 0;
  let u8diff = 0;
  for (let i = 0; i < ua.length; i++) {
    const d = Math.abs(ua[i] - ub[i]);
    u8max = Math.max(u8max, d);
    if (d > 0) u8diff++;
  }
  const row = {
    res,
    tiling: `${tiling.tileSize}/${tiling.overlap}`,
    whole_s: Number(wholeSeconds.toFixed(1)),
    whole_peak_rss_gib: Number(wholeRss.toFixed(2)),
    tiled_s: Number(tiledSeconds.toFixed(1)),
    max_abs_in_seams: Number(band.toPrecision(3)),
    max_abs_elsewhere: Number(rest.toPrecision(3)),
    max_rel: Number((Math.max(band, rest) / scale).toPrecision(3)),
    mean_abs: Number((sum / a.data.length).toPrecision(3)),
    jump_at_tile_starts: Number(jump(b.data, tileStart).toPrecision(3)),
    jump_everywhere: Number(jump(b.data, () => true).toPrecision(3)),
    whole_jump_everywhere: Number(jump(a.data, () => true).toPrecision(3)),
    uint8_max_diff: u8max,
    uint8_differing: `${((100 * u8diff) / ua.length).toFixed(2)}%`,
  };
  console.log(ROW_MARK + JSON.stringify(row));
}

/** Runs this benchmark again in a child process with extra arguments and returns its row. */
function child(argv: string[]): Promise<Record<string, string | number>> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [...process.execArgv, process.argv[1], 'decoder', ...argv], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    proc.on('error', reject);
    proc.on('close', (code) => {
      const line = out.split('\n').find((l) => l.startsWith(ROW_MARK));
      if (code !== 0 || !line) reject(new Error(`benchmark child ${argv.join(' ')} exited with code ${code}`));
      else resolve(JSON.parse(line.slice(ROW_MARK.length)));
    });
  });
}

export async function run(argv: string[]): Promise<void> {
  const opts = new Command('bench decoder')
    .option('--preset <name>', 'VAE preset', 'dc-ae-f32c32-sana-1.0')
    .option('--res <list>', 'image resolutions (square), comma-separated', '512,1024,2048,4096')
    .option('--repeats <n>', 'timed decodes per untiled resolution (after one warm-up)', '3')
    .option('--tile <px>', 'tile size in pixels', String(DEFAULT_TILING.tileSize))
    .option('--overlap <px>', 'tile overlap in pixels', String(DEFAULT_TILING.overlap))
    .option('--untiled', 'decode every resolution whole')
    .option('--warm-tile', 'tiled rows: decode one tile first, so the timed run is warm')
    .option('--seams <res>', 'compare a whole and a tiled decode at this resolution instead')
    .option('--json', 'one JSON object per row')
    .option('--row <res>', '(internal) measure one resolution in this process')
    .option('--seams-row <res>', '(internal) compare whole and tiled in this process')
    .parse(argv, { from: 'user' })
    .opts<Options>();
  const vaeDir = path.join(cachedRandomCheckpoint(opts.preset), 'vae');
  if (opts.row) return runRow(opts, vaeDir);
  if (opts.seamsRow) return runSeams(opts, vaeDir);

  const passOn = ['--preset', opts.preset, '--repeats', opts.repeats, '--tile', opts.tile, '--overlap', opts.overlap, ...(opts.untiled ? ['--untiled'] : []), ...(opts.warmTile ? ['--warm-tile'] : [])];
  if (opts.seams) {
    const row = await child([...passOn, '--seams-row', opts.seams]);
    printTable([row], Boolean(opts.json));
    return;
  }
  const peak = await measureMatmulPeakGflops();
  const rows: Record<string, string | number>[] = [];
  for (const res of opts.res.split(',').map(Number)) {
    const row = await child([...passOn, '--row', String(res)]);
    row.graph_of_peak = `${((100 * (row.graph_gflops as number)) / peak).toFixed(1)}%`;
    rows.push(row);
  }
  printTable(rows, Boolean(opts.json));
  if (!opts.json) {
    console.log(`preset ${opts.preset}, random weights; fp32 MatMul peak measured now: ${peak.toFixed(1)} GFLOP/s`);
    console.log("tflop / gflops: the reference's FLOPs (computed_tflop: of the tiles, with their overlap); graph_gflops: the FLOPs this graph");
    console.log('executes (its up-sampling convs need 16/36 of the multiply-adds), graph_of_peak against the MatMul peak;');
    console.log('peak RSS is per resolution (own process), weights and ORT arena included');
  }
}
