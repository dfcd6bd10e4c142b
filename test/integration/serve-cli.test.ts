// `sana serve all` as its own process, configured by flags and environment variables, and a Generate call from
// this (separate) process: the image comes back, the bearer token from SANA_AUTH_TOKEN is enforced, and SIGTERM
// drains and exits cleanly.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { callGenerate, healthStatus } from '../helpers/grpc.ts';
import { tempDir } from '../helpers/tmp.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TOKEN = 'cli-test-token';

let child: ChildProcess;
let stderr = '';
let address = '';
const root = tempDir('serve-cli');
const modelDir = path.join(root, 'model');

/** `sana …` as another process; resolves with its exit code and output. */
async function sana(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [path.join(ROOT, 'services/cli/bin.js'), ...args], { env: { ...process.env, ...env }, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    return e as { code: number; stdout: string; stderr: string };
  }
}

beforeAll(async () => {
  writeRandomCheckpoint('tiny', modelDir);
  child = spawn(process.execPath, [path.join(ROOT, 'services/cli/bin.js'), 'serve', 'all', '--model', modelDir, '--port', '0', '--metrics-port', '0'], {
    env: { ...process.env, SANA_LOG_LEVEL: 'silent', SANA_AUTH_TOKEN: TOKEN, SANA_MAX_IN_FLIGHT: '3', SANA_TILE_SIZE: '512', SANA_TILE_OVERLAP: '64' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  address = await new Promise<string>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`sana serve all exited with ${code}:\n${stderr}`)));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      const ready = /ready; Generation serving on (\S+)/.exec(stderr);
      if (ready) resolve(ready[1]);
    });
  });
});

afterAll(() => {
  if (child.exitCode === null) child.kill('SIGKILL');
});

describe('sana serve all (separate process)', () => {
  it('prints its configuration without the token', () => {
    expect(stderr).toMatch(/sana serve all/);
    expect(stderr).toMatch(/gateway\s+127\.0\.0\.1:\d+ \(in flight ≤ 3, queue ≤ 32\)/);
    expect(stderr).toMatch(/denoiser\s+127\.0\.0\.1:\d+/);
    expect(stderr).toMatch(/auth\s+bearer token required/);
    expect(stderr).toMatch(/tiling\s+512 px tiles overlapping by 64 px/);
    expect(stderr).not.toContain(TOKEN);
  });

  it('serves Generate to a client in another process, with the bearer token from SANA_AUTH_TOKEN', async () => {
    expect(await healthStatus(address)).toBe('SERVING');
    expect((await callGenerate(address, { prompt: ['a lighthouse'] })).code).toBe(grpc.status.UNAUTHENTICATED);

    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${TOKEN}`);
    const outcome = await callGenerate(address, { prompt: ['a lighthouse'], seed: 5n, numInferenceSteps: 3, width: 64, height: 96 }, { metadata });
    expect(outcome.code, outcome.details).toBe(grpc.status.OK);
    const [image] = outcome.images;
    expect(image.format).toBe('png');
    expect([image.width, image.height]).toEqual([64, 96]);
    expect(Buffer.from(image.bytes).subarray(1, 4).toString()).toBe('PNG');
    const summary = outcome.events.at(-1)!.event;
    expect(summary?.$case === 'summary' && summary.value.seed).toBe(5n);
  });

  it('`sana generate --server` gets the image the in-process `sana generate` makes, byte for byte', async () => {
    const args = ['generate', 'a lighthouse at dusk', '--seed', '11', '--steps', '3', '--width', '96', '--height', '64'];
    const denied = await sana([...args, '--server', address, '--out', path.join(root, 'denied.png')], { SANA_AUTH_TOKEN: '' });
    expect(denied.code).toBe(1);
    expect(denied.stderr).toMatch(/missing "authorization: Bearer <token>"/);

    const remote = await sana([...args, '--server', address, '--out', path.join(root, 'remote.png')], { SANA_AUTH_TOKEN: TOKEN });
    expect(remote.code, remote.stderr).toBe(0);
    expect(remote.stdout).toMatch(/^seed 11, 96×64, 3 steps$/m);
    expect(remote.stdout).toMatch(/^denoise\s+\d+\.\d+ s$/m);
    // the server tiles by SANA_TILE_SIZE=512 (this 96×64 request decodes at its 608-px-wide bin): the same here
    const local = await sana([...args, '--model', modelDir, '--tile-size', '512', '--tile-overlap', '64', '--out', path.join(root, 'local.png')]);
    expect(local.code, local.stderr).toBe(0);
    expect(fs.readFileSync(path.join(root, 'remote.png')).equals(fs.readFileSync(path.join(root, 'local.png')))).toBe(true);

    // the server validates: a bad field comes back as INVALID_ARGUMENT, exit 2
    const bad = await sana(['generate', 'x', '--server', address, '--token', TOKEN, '--no-binning', '--width', '4128', '--out', path.join(root, 'bad.png')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/width: .*4096/);
  });

  it('on SIGTERM finishes the request in flight, then exits 0', async () => {
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${TOKEN}`);
    let signalled = false;
    const inFlight = callGenerate(address, { prompt: ['a harbour at night'], seed: 2n, numInferenceSteps: 40 }, {
      metadata,
      onEvent: (e) => {
        // terminate while the denoiser is mid-way
        if (!signalled && e.event?.$case === 'progress') {
          signalled = true;
          child.kill('SIGTERM');
        }
      },
    });
    const outcome = await inFlight;
    expect(signalled).toBe(true);
    expect(outcome.code, outcome.details).toBe(grpc.status.OK);
    const progress = outcome.events.filter((e) => e.event?.$case === 'progress');
    expect(progress).toHaveLength(40);
    expect(Buffer.from(outcome.images[0].bytes).subarray(1, 4).toString()).toBe('PNG');
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/SIGTERM: draining in-flight requests/);
  });
});
