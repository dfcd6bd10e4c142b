// Publishing a written checkpoint folder: losing the race to another writer is fine, any other failure is an error.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { moveIntoPlace } from '../../services/cli/checkpoint.ts';
import { tempDir } from '../helpers/tmp.ts';

describe('moveIntoPlace', () => {
  const root = tempDir('checkpoint-publish');
  const folder = (name: string, files: Record<string, string>) => {
    const dir = path.join(root, name);
    fs.mkdirSync(dir, { recursive: true });
    for (const [file, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, file), text);
    return dir;
  };

  test('renames the staging folder into place', () => {
    const staging = folder('a.tmp', { '.complete': 'mine', 'w.bin': 'x' });
    const dir = path.join(root, 'a');
    moveIntoPlace(staging, dir, '.complete');
    expect(fs.readFileSync(path.join(dir, '.complete'), 'utf8')).toBe('mine');
    expect(fs.existsSync(staging)).toBe(false);
  });

  test("keeps another writer's finished folder and drops its own copy", () => {
    const staging = folder('b.tmp', { '.complete': 'mine' });
    const dir = folder('b', { '.complete': 'theirs', 'w.bin': 'y' });
    moveIntoPlace(staging, dir, '.complete');
    expect(fs.readFileSync(path.join(dir, '.complete'), 'utf8')).toBe('theirs');
    expect(fs.existsSync(staging)).toBe(false);
  });

  test('fails, naming both folders, when something unfinished is in the way', () => {
    const staging = folder('c.tmp', { '.complete': 'mine' });
    const dir = folder('c', { 'half-written.bin': 'z' });
    expect(() => moveIntoPlace(staging, dir, '.complete')).toThrow(new RegExp(`cannot move ${staging} to ${dir}: ENOTEMPTY`));
    expect(fs.existsSync(staging)).toBe(true); // nothing lost: the caller decides
  });
});
