// The composition root's stage assembly: the three stages loaded into this process from a pipeline checkpoint
// folder (`sana generate` without --server, `sana serve <stage|all>`, tests and benchmarks). Only the CLI side
// imports the stage folders, so the gateway process never loads ONNX Runtime, the tokenizer or sharp.
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError } from '../common/errors.ts';
import type { PrecisionOptions } from '../common/int8-recipe.ts';
import type { SessionOptions } from '../common/ort-session.ts';
import type { PipelineStages } from '../common/pipeline.ts';
import { loadDcAeConfig } from '../decoder/dc-ae.ts';
import { LocalDecoder, type LocalDecoderOptions } from '../decoder/stage.ts';
import { loadSchedulerSettings } from '../denoiser/flow-dpm-solver.ts';
import { loadLinearDitConfig } from '../denoiser/linear-dit.ts';
import { LocalDenoiser, type LocalDenoiserOptions } from '../denoiser/stage.ts';
import { loadGemma2Config } from '../text-encoder/gemma2.ts';
import { LocalTextEncoder } from '../text-encoder/stage.ts';

export interface LocalStages extends PipelineStages {
  textEncoder: LocalTextEncoder;
  denoiser: LocalDenoiser;
  decoder: LocalDecoder;
  close(): Promise<void>;
}

const COMPONENTS = ['transformer', 'vae', 'text_encoder', 'tokenizer', 'scheduler'] as const;

/** Checks that a folder is a diffusers SANA pipeline checkpoint, naming what is missing. */
export function checkModelDir(modelDir: string): void {
  if (!fs.existsSync(modelDir) || !fs.statSync(modelDir).isDirectory()) {
    throw new InvalidArgumentError('model', `no such folder: ${modelDir}`);
  }
  const missing = COMPONENTS.filter((c) => !fs.existsSync(path.join(modelDir, c)));
  if (missing.length > 0) {
    throw new InvalidArgumentError('model', `${modelDir} is not a SANA diffusers checkpoint: missing ${missing.map((m) => `${m}/`).join(', ')}`);
  }
}

/** The three stages in this process, from a pipeline checkpoint folder. */
export async function loadLocalStages(modelDir: string, options: SessionOptions & PrecisionOptions & Pick<LocalDecoderOptions, 'tiling'> & Pick<LocalDenoiserOptions, 'device'> = {}): Promise<LocalStages> {
  checkModelDir(modelDir);
  const { tiling, precision, int8, device, ...session } = options;
  // the configs first: a bad one fails at once, not after the other stages have compiled and loaded
  loadGemma2Config(path.join(modelDir, 'text_encoder', 'config.json'));
  loadLinearDitConfig(path.join(modelDir, 'transformer', 'config.json'));
  loadSchedulerSettings(path.join(modelDir, 'scheduler'));
  loadDcAeConfig(path.join(modelDir, 'vae', 'config.json'));
  // loaded side by side: each session is created in its own worker thread, so one stage's session creation overlaps
  // the others' (compile-cache lookups, weight loading); a stage that fails closes the ones that loaded (their workers
  // would keep the process alive). The int8 options (smoothing, outlier split, activation scales) are the denoiser's:
  // the text encoder keeps its own; the decoder runs fp32 (see int8-recipe.ts).
  const loads = await Promise.allSettled([
    LocalTextEncoder.load(modelDir, { ...session, precision }),
    LocalDenoiser.load(modelDir, { ...session, precision, int8, device }),
    LocalDecoder.load(path.join(modelDir, 'vae'), { ...session, tiling }),
  ]);
  const [te, dn, dc] = loads;
  if (te.status === 'rejected' || dn.status === 'rejected' || dc.status === 'rejected') {
    await Promise.all(loads.map((l) => (l.status === 'fulfilled' ? l.value.close() : undefined)));
    throw loads.find((l): l is PromiseRejectedResult => l.status === 'rejected')!.reason;
  }
  const [textEncoder, denoiser, decoder] = [te.value, dn.value, dc.value];
  return {
    textEncoder,
    denoiser,
    decoder,
    async close() {
      await Promise.all([textEncoder.close(), denoiser.close(), decoder.close()]);
    },
  };
}

/** A catch handler that closes what was already loaded, then rethrows. */
export function closingOnError(loaded: { close(): Promise<void> }[]): (e: unknown) => Promise<never> {
  return async (e) => {
    await Promise.all(loaded.map((stage) => stage.close()));
    throw e;
  };
}
