// The parity suite must fail loudly, not silently, on a variant using a feature this implementation lacks.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect, test } from 'vitest';
import { tempDir } from '../helpers/tmp.ts';

const run = promisify(execFile);
const root = tempDir('parity-runner');

test('a variant with an unimplemented option fails the suite with the reason', async () => {
  const variant = path.join(root, 'tiny-sprint');
  fs.cpSync('test/fixtures/golden/tiny-a', variant, { recursive: true });
  const configFile = path.join(variant, 'transformer', 'config.json');
  fs.chmodSync(configFile, 0o644);
  fs.writeFileSync(configFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, 'utf8')), guidance_embeds: true }));
  // the shared compile cache: the other stages of tiny-a compile once for the whole test run
  const result = await run('npx', ['tsx', 'test/parity/run.ts'], {
    env: { ...process.env, SANA_GOLDEN_DIRS: variant },
  }).then(
    () => ({ code: 0, stdout: '' }),
    (e: { code: number; stdout: string }) => e,
  );
  expect(result.code).not.toBe(0);
  expect(result.stdout).toMatch(/tiny-sprint transformer FAIL .*guidance_embeds.*SANA-Sprint/);
  expect(result.stdout).toMatch(/^parity: \d+ passed, [1-9]\d* failed$/m);
}, 600_000);
