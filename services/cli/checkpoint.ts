// `sana checkpoint random --preset <name> --out DIR`: writes a random checkpoint in the diffusers layout.
import fs from 'node:fs';
import path from 'node:path';
import { cacheRoot } from '../common/compile-cache.ts';
import { writeComponent, type WriteOptions } from '../common/random-checkpoint.ts';
import { PRESETS } from './presets.ts';
import { writeTestTokenizer } from '../common/random-tokenizer.ts';

export function writeRandomCheckpoint(presetName: string, outDir: string, options: WriteOptions = {}): string[] {
  const preset = PRESETS[presetName];
  if (!preset) throw new Error(`unknown preset ${presetName}; known: ${Object.keys(PRESETS).join(', ')}`);
  const written: string[] = [];
  for (const make of Object.values(preset.components)) written.push(writeComponent(outDir, make!(), options));
  if (preset.tokenizer) written.push(writeTestTokenizer(path.join(outDir, 'tokenizer'), preset.tokenizer));
  if (preset.scheduler) {
    fs.mkdirSync(path.join(outDir, 'scheduler'), { recursive: true });
    fs.writeFileSync(path.join(outDir, 'scheduler', 'scheduler_config.json'), `${JSON.stringify(preset.scheduler, null, 2)}\n`);
    written.push(path.join(outDir, 'scheduler'));
    // a whole pipeline: model_index.json as SanaPipeline.save_pretrained writes it
    const modelIndex = {
      _class_name: 'SanaPipeline',
      scheduler: ['diffusers', 'DPMSolverMultistepScheduler'],
      text_encoder: ['transformers', 'Gemma2Model'],
      tokenizer: ['transformers', 'GemmaTokenizerFast'],
      transformer: ['diffusers', 'SanaTransformer2DModel'],
      vae: ['diffusers', 'AutoencoderDC'],
    };
    fs.writeFileSync(path.join(outDir, 'model_index.json'), `${JSON.stringify(modelIndex, null, 2)}\n`);
  }
  return written;
}

/**
 * A random checkpoint of a preset in the cache folder, written once (seed 0): the embedded default model of
 * `sana generate` / `sana serve` and the benchmarks' models.
 */
export function cachedRandomCheckpoint(presetName: string): string {
  const dir = path.join(cacheRoot(), 'checkpoints', presetName);
  const done = path.join(dir, '.complete');
  if (!fs.existsSync(done)) {
    // written beside and renamed into place, so processes starting together (the stage services of one
    // machine) never see or delete each other's half-written folder
    const staging = `${dir}.tmp-${process.pid}`;
    fs.rmSync(staging, { recursive: true, force: true });
    console.error(`writing the random checkpoint ${presetName} to ${dir} (once) ...`);
    writeRandomCheckpoint(presetName, staging);
    fs.writeFileSync(path.join(staging, '.complete'), new Date().toISOString());
    try {
      if (!fs.existsSync(done)) {
        fs.rmSync(dir, { recursive: true, force: true }); // an older writer's unfinished folder
        moveIntoPlace(staging, dir, '.complete');
      }
    } finally {
      fs.rmSync(staging, { recursive: true, force: true });
    }
  }
  return dir;
}

/**
 * Renames a finished `staging` folder to `dir`. When the rename fails because another process put its own finished
 * folder (holding `marker`) there first, that one is used; any other failure (permissions, a full disk, a stray
 * folder in the way) is an error naming both paths.
 */
export function moveIntoPlace(staging: string, dir: string, marker: string): void {
  try {
    fs.renameSync(staging, dir);
  } catch (e) {
    if (!fs.existsSync(path.join(dir, marker))) throw new Error(`cannot move ${staging} to ${dir}: ${(e as Error).message}`, { cause: e });
    fs.rmSync(staging, { recursive: true, force: true });
  }
}
