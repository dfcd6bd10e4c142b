// `sana generate` as a newcomer runs it: a real process, the embedded tiny default, real files.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { describe, expect, test } from 'vitest';
import { tempDir } from '../helpers/tmp.ts';

const exec = promisify(execFile);
const root = tempDir('cli');
const env = { ...process.env, SANA_CACHE_DIR: path.join(root, 'cache') };

async function sana(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec('node', ['services/cli/bin.js', ...args], { env, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

describe('sana generate', () => {
  test('writes a valid PNG from the embedded tiny model, the same bytes for the same seed', async () => {
    const first = await sana('generate', 'a red fox in fresh snow', '--seed', '42', '--steps', '4', '--out', path.join(root, 'fox.png'));
    expect(first.code).toBe(0);
    expect(first.stderr).toMatch(/random-weight.*noise/s);
    expect(first.stdout).toMatch(/^denoise\s+\d+\.\d+ s$/m);
    expect(first.stdout).toMatch(/^decode\s+\d+\.\d+ s$/m);
    const meta = await sharp(path.join(root, 'fox.png')).metadata();
    expect(meta).toMatchObject({ format: 'png', width: 512, height: 512, channels: 3 });
    const again = await sana('generate', 'a red fox in fresh snow', '--seed', '42', '--steps', '4', '--out', path.join(root, 'fox2.png'));
    expect(again.code).toBe(0);
    expect(fs.readFileSync(path.join(root, 'fox2.png')).equals(fs.readFileSync(path.join(root, 'fox.png')))).toBe(true);
  });

  test('several images, another size and format', async () => {
    const r = await sana('generate', 'two cats', '--num-images', '2', '--width', '384', '--height', '640', '--steps', '2', '--guidance', '1', '--out', path.join(root, 'cats.webp'));
    expect(r.code).toBe(0);
    for (const i of [0, 1]) {
      const meta = await sharp(path.join(root, `cats-${i}.webp`)).metadata();
      expect(meta).toMatchObject({ format: 'webp', width: 384, height: 640 });
    }
  });

  test('--tile-size and --no-tiling reach the decoder: tiled seams are blended, untiled is the whole decode', async () => {
    // decoded at 768 px (no binning to the tiny model's 512 px bins), so 512 px tiles overlap
    const args = ['generate', 'a harbour at dusk', '--seed', '1', '--steps', '1', '--width', '768', '--height', '768', '--no-binning'];
    const tiled = await sana(...args, '--tile-size', '512', '--tile-overlap', '64', '--out', path.join(root, 'tiled.png'));
    const whole = await sana(...args, '--no-tiling', '--out', path.join(root, 'whole.png'));
    expect([tiled.code, whole.code]).toEqual([0, 0]);
    const [a, b] = await Promise.all(['tiled.png', 'whole.png'].map((f) => sharp(path.join(root, f)).raw().toBuffer()));
    expect(a.length).toBe(b.length);
    expect(a.equals(b)).toBe(false);
  });

  test.each([
    [['--no-binning', '--width', '500'], /width: must be a multiple of 32/],
    [['--steps', '0'], /num_inference_steps: must be an integer in \[1, 1000\], got 0/],
    [['--steps', '1001'], /num_inference_steps: .*got 1001/],
    [['--guidance', 'nan'], /guidance_scale: must be a finite number/],
    [['--format', 'gif'], /argument 'gif' is invalid/],
    [['--format', 'webp'], /out: .*bad\.png names a png file but --format is webp/],
    [['--no-tiling', '--tile-size', '512'], /tiling: --no-tiling contradicts --tile-size/],
    [['--tile-size', '500'], /tiling\.tileSize: must be a positive multiple of 32 pixels, got 500/],
    [['--model', '/no/such/folder'], /model: no such folder/],
    [['--threads', '2.5'], /threads: must be a positive integer, got "2.5"/],
  ])('%j exits 2 with a clear message and no stack trace', async (args, message) => {
    const r = await sana('generate', 'x', ...args, '--out', path.join(root, 'bad.png'));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(fs.existsSync(path.join(root, 'bad.png'))).toBe(false);
  });
});
