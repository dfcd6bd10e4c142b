// The Gemma-2 model and the text-encoder stage on real ORT sessions: tiny random checkpoints (fp32, bf16, sharded,
// causal-LM key prefix), the golden pipeline's prompt embeddings through the stage, the cache, and bad input.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, afterAll, describe, expect, test } from 'vitest';
import { ConfigError } from '../../services/common/config.ts';
import { CancelledError, InvalidArgumentError } from '../../services/common/errors.ts';
import { Checkpoint, CheckpointError, writeSafetensors } from '../../services/common/safetensors.ts';
import { tensor } from '../../services/common/tensor.ts';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { Gemma2Model } from '../../services/text-encoder/gemma2.ts';
import { assemblePrompts, chiText } from '../../services/text-encoder/prompt.ts';
import { LocalTextEncoder } from '../../services/text-encoder/stage.ts';
import { Golden, maxAbsErr, maxRelErr } from '../parity/golden.ts';
import { goldenIdTokenizer, type PipelineCall } from '../parity/pipe.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('te');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');
const tiny = path.join(root, 'tiny');
writeRandomCheckpoint('tiny-text-encoder', tiny, { seed: 11 });
const teDir = path.join(tiny, 'text_encoder');

const ids = (rows: number[][]) => tensor(BigInt64Array.from(rows.flat(), BigInt), [rows.length, rows[0].length]);

/** Rewrites a checkpoint folder's weights with renamed keys / another dtype / shards / extra tensors. */
function rewrite(to: string, opts: { rename?: (n: string) => string; dtype?: 'F32' | 'BF16'; maxShardBytes?: number; extra?: string[] } = {}): string {
  const ckpt = Checkpoint.open(teDir, 'model');
  fs.mkdirSync(to, { recursive: true });
  fs.copyFileSync(path.join(teDir, 'config.json'), path.join(to, 'config.json'));
  const rename = opts.rename ?? ((n: string) => n);
  const specs = ckpt.names.map((name) => ({ name: rename(name), shape: ckpt.entry(name).shape }));
  for (const e of opts.extra ?? []) specs.push({ name: e, shape: [2, 3] });
  const back = new Map(ckpt.names.map((n) => [rename(n), n]));
  writeSafetensors(to, 'model', specs, (n) => (back.has(n) ? ckpt.readF32(back.get(n)!) : new Float32Array(6)), opts);
  return to;
}

describe('Gemma2Model', () => {
  let model: Gemma2Model;
  const rows = [
    [2, 17, 300, 45, 99, 7, 0, 0, 0, 0, 0, 0],
    [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  ];
  const mask = [
    [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
  ];
  let reference: Float32Array;

  beforeAll(async () => {
    model = await Gemma2Model.load(teDir);
    reference = (await model.forward(ids(rows), ids(mask))).data;
  });
  afterAll(() => model.close());

  test('dynamic batch and length; a row does not depend on the other rows of its batch', async () => {
    expect(reference.length).toBe(2 * 12 * 48);
    expect(reference.every(Number.isFinite)).toBe(true);
    const alone = await model.forward(ids([rows[1]]), ids([mask[1]]));
    expect(alone.dims).toEqual([1, 12, 48]);
    expect(maxAbsErr(alone.data, reference.subarray(12 * 48))).toBeLessThan(1e-5);
    // real tokens never see right padding: the first 6 rows of row 0 equal a 6-token forward
    const short = await model.forward(ids([rows[0].slice(0, 6)]), ids([mask[0].slice(0, 6)]));
    expect(maxAbsErr(short.data, reference.subarray(0, 6 * 48))).toBeLessThan(1e-5);
  });

  test('bf16, sharded and causal-LM (model.*, lm_head) checkpoints load', async () => {
    const bf16 = rewrite(path.join(root, 'bf16'), { dtype: 'BF16' });
    const bf16Back = path.join(root, 'bf16-as-f32');
    fs.mkdirSync(bf16Back, { recursive: true });
    fs.copyFileSync(path.join(bf16, 'config.json'), path.join(bf16Back, 'config.json'));
    const low = Checkpoint.open(bf16, 'model');
    writeSafetensors(bf16Back, 'model', low.names.map((name) => ({ name, shape: low.entry(name).shape })), (n) => low.readF32(n));
    const outputs: Float32Array[] = [];
    for (const dir of [bf16, bf16Back]) {
      const m = await Gemma2Model.load(dir);
      outputs.push((await m.forward(ids(rows), ids(mask))).data);
      await m.close();
    }
    expect(maxAbsErr(outputs[0], outputs[1])).toBe(0);

    const variants = [
      rewrite(path.join(root, 'sharded'), { maxShardBytes: 40_000 }),
      rewrite(path.join(root, 'causal-lm'), { rename: (n) => `model.${n}`, extra: ['lm_head.weight'] }),
    ];
    expect(fs.existsSync(path.join(variants[0], 'model.safetensors.index.json'))).toBe(true);
    for (const dir of variants) {
      const m = await Gemma2Model.load(dir);
      expect(maxAbsErr((await m.forward(ids(rows), ids(mask))).data, reference)).toBe(0);
      await m.close();
    }
  });

  test('a tensor the config does not account for, a missing one, or a bad config is a clear error', async () => {
    await expect(Gemma2Model.load(rewrite(path.join(root, 'extra'), { extra: ['layers.0.self_attn.q_norm.weight'] }))).rejects.toThrow(CheckpointError);
    await expect(Gemma2Model.load(rewrite(path.join(root, 'renamed'), { rename: (n) => `encoder.${n}` }))).rejects.toThrow(/embed_tokens\.weight.*missing/);
    const badConfig = (name: string, edit: (c: any) => void) => {
      const dir = rewrite(path.join(root, name));
      const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
      edit(c);
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c));
      return Gemma2Model.load(dir);
    };
    await expect(badConfig('relu', (c) => (c.hidden_activation = 'relu'))).rejects.toThrow(ConfigError);
    await expect(badConfig('heads', (c) => (c.num_key_value_heads = 3))).rejects.toThrow(/multiple of num_key_value_heads/);
    await expect(badConfig('shape', (c) => (c.intermediate_size = 64))).rejects.toThrow(/mlp\.gate_proj\.weight\]: shape \[96,48\] but the config implies \[64,48\]/);
  });

  test('token ids outside the vocabulary and masks other than 0/1 are rejected before running', async () => {
    await expect(model.forward(ids([[2, 512]]), ids([[1, 1]]))).rejects.toThrow(InvalidArgumentError);
    await expect(model.forward(ids([[2, -1]]), ids([[1, 1]]))).rejects.toThrow(/outside \[0, 512\)/);
    await expect(model.forward(ids([[2, 3]]), ids([[1, 2]]))).rejects.toThrow(/attention_mask: value 2/);
    await expect(model.forward(ids([[2, 3]]), ids([[1, 1, 1]]))).rejects.toThrow(/attention_mask: must be int64 \[1,2\]/);
  });
});

describe('LocalTextEncoder', () => {
  let stage: LocalTextEncoder;
  beforeAll(async () => {
    stage = await LocalTextEncoder.load(tiny, { cacheBytes: 1 << 20 });
  });
  afterAll(() => stage.close());

  test('embeddings are Gemma-2 rows at select_index of the assembled CHI prompt; the negative prompt is not selected', async () => {
    const prompts = ['A photo of a cat', 'a dog running in the park on a sunny day with snow'];
    const msl = 12;
    const out = await stage.encode({ prompts, useComplexHumanInstruction: true, maxSequenceLength: msl });
    expect(out.embeds.dims).toEqual([2, msl, 48]);
    expect(out.mask.dims).toEqual([2, msl]);

    const batch = assemblePrompts(stage.tokenizer, prompts, { chi: chiText(undefined), maxSequenceLength: msl });
    const full = await stage.model.forward(ids(batch.inputIds), ids(batch.attentionMask));
    const L = batch.length;
    expect(batch.select).toHaveLength(msl);
    for (let b = 0; b < 2; b++) {
      batch.select!.forEach((t, s) => {
        expect(Array.from(out.embeds.data.subarray((b * msl + s) * 48, (b * msl + s + 1) * 48))).toEqual(Array.from(full.data.subarray((b * L + t) * 48, (b * L + t + 1) * 48)));
        expect(out.mask.data[b * msl + s]).toBe(BigInt(batch.attentionMask[b][t]));
      });
    }

    const neg = await stage.encode({ prompts: [''], useComplexHumanInstruction: false, maxSequenceLength: msl });
    expect(Array.from(neg.mask.data, Number)).toEqual([1, ...new Array(msl - 1).fill(0)]);
    // "" is the BOS token alone, padded to max_sequence_length
    const { prefixIds, padId } = stage.tokenizer;
    expect(prefixIds).toHaveLength(1);
    const direct = await stage.model.forward(ids([[prefixIds[0], ...new Array(msl - 1).fill(padId)]]), ids([[1, ...new Array(msl - 1).fill(0)]]));
    expect(maxAbsErr(neg.embeds.data, direct.data)).toBe(0);
  });

  test('int8 runs Gemma-2 up to the last attended position: attended rows as in the padded run, padding zero', async () => {
    const int8 = await LocalTextEncoder.load(tiny, { cacheBytes: 0, precision: 'int8' });
    try {
      const prompts = ['a cat', 'a dog running in the park'];
      const msl = 40;
      const out = await int8.encode({ prompts, useComplexHumanInstruction: false, maxSequenceLength: msl });
      const batch = assemblePrompts(int8.tokenizer, prompts, { chi: null, maxSequenceLength: msl });
      const attended = batch.attentionMask.map((m) => m.lastIndexOf(1) + 1);
      expect(Math.max(...attended)).toBeLessThan(msl);
      // per-token activation scales and causal attention: the attended rows do not see the padding
      const padded = await int8.model.forward(ids(batch.inputIds), ids(batch.attentionMask));
      for (let b = 0; b < 2; b++) {
        const attendedRows = attended[b] * 48;
        expect(maxRelErr(out.embeds.data.subarray(b * msl * 48, b * msl * 48 + attendedRows), padded.data.subarray(b * msl * 48, b * msl * 48 + attendedRows))).toBeLessThan(1e-6);
        expect(out.embeds.data.subarray(b * msl * 48 + Math.max(...attended) * 48, (b + 1) * msl * 48).every((v) => v === 0)).toBe(true);
        expect(Array.from(out.mask.data.subarray(b * msl, (b + 1) * msl), Number)).toEqual(batch.attentionMask[b]);
      }
    } finally {
      await int8.close();
    }
  });

  test('repeated prompts and the empty negative prompt are encoded once (cache, duplicates, concurrent requests)', async () => {
    const request = { prompts: ['a red cube', 'a red cube', 'A RED CUBE  '], useComplexHumanInstruction: true, maxSequenceLength: 10 };
    const before = stage.cacheStats();
    const first = await stage.encode(request);
    const afterFirst = stage.cacheStats();
    expect(afterFirst.encodedRows - before.encodedRows).toBe(1); // lower().strip() makes all three one prompt
    const second = await stage.encode(request);
    expect(stage.cacheStats().encodedRows).toBe(afterFirst.encodedRows);
    expect(stage.cacheStats().hits - afterFirst.hits).toBe(1);
    expect(second.embeds.data).toEqual(first.embeds.data);

    const negative = { prompts: [''], useComplexHumanInstruction: false, maxSequenceLength: 10 };
    const n0 = stage.cacheStats().encodedRows;
    await Promise.all([stage.encode(negative), stage.encode(negative), stage.encode(negative)]);
    expect(stage.cacheStats().encodedRows - n0).toBe(1);
    // another length or instruction is another entry
    await stage.encode({ ...negative, maxSequenceLength: 11 });
    await stage.encode({ ...negative, useComplexHumanInstruction: true, complexHumanInstruction: ['Describe: '] });
    expect(stage.cacheStats().encodedRows - n0).toBe(3);
  });

  test('prompts split over several forwards (maxBatch) give the same rows', async () => {
    const request = { prompts: ['one cat', 'two dogs', 'three birds'], useComplexHumanInstruction: true, maxSequenceLength: 10 };
    const small = LocalTextEncoder.fromModel(stage.model, stage.tokenizer, { maxBatch: 1 });
    const split = await small.encode(request);
    expect(small.cacheStats().encodedRows).toBe(3);
    expect(maxAbsErr(split.embeds.data, (await stage.encode(request)).embeds.data)).toBeLessThan(1e-5);
  });

  test('an empty instruction list means no instruction, as in the pipeline', async () => {
    const a = await stage.encode({ prompts: ['a cat'], useComplexHumanInstruction: true, complexHumanInstruction: [], maxSequenceLength: 9 });
    const b = await stage.encode({ prompts: ['a cat'], useComplexHumanInstruction: false, maxSequenceLength: 9 });
    expect(a.embeds.data).toEqual(b.embeds.data);
  });

  test('bad requests are InvalidArgumentErrors naming the field', async () => {
    const ok = { prompts: ['a cat'], useComplexHumanInstruction: true, maxSequenceLength: 10 };
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ prompts: [] }, /^prompts: must hold 1 to 64/],
      [{ prompts: ['a', 3] }, /^prompts\[1\]: must be a string/],
      [{ prompts: ['x'.repeat(300 * 1024)] }, /^prompts\[0\]: is 307200 characters long; the limit is 262144/],
      [{ prompts: ['a \ud800 cat'] }, /^prompts\[0\]: holds a lone UTF-16 surrogate/],
      [{ maxSequenceLength: 0 }, /^max_sequence_length: must be an integer in \[1, 8192\]/],
      [{ maxSequenceLength: 2.5 }, /^max_sequence_length/],
      [{ maxSequenceLength: 9000 }, /^max_sequence_length/],
      [{ complexHumanInstruction: 'Describe' }, /^complex_human_instruction: must be a list of strings/],
      [{ complexHumanInstruction: ['a\udc00'] }, /^complex_human_instruction\[0\]: holds a lone UTF-16 surrogate/],
      // the instruction is not truncated: a longer one than the model's positions is refused, not run
      [{ complexHumanInstruction: ['cat '.repeat(9000)] }, /^complex_human_instruction: with max_sequence_length 10 needs \d{4,} tokens; the text encoder takes at most 8192$/],
    ];
    for (const [patch, message] of cases) {
      const error = await stage.encode({ ...ok, ...patch } as never).catch((e) => e);
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as Error).message).toMatch(message);
    }
  });

  test('a 100 KB prompt is truncated to the budget', async () => {
    const text = 'a small house in the mountains with snow, trees and a lake. '.repeat(1800);
    expect(text.length).toBeGreaterThan(100 * 1024);
    const out = await stage.encode({ prompts: [text], useComplexHumanInstruction: true, maxSequenceLength: 16 });
    expect(out.embeds.dims).toEqual([1, 16, 48]);
    expect(Array.from(out.mask.data, Number)).toEqual(new Array(16).fill(1));
    expect(out.embeds.data.every(Number.isFinite)).toBe(true);
  });
});

describe('cancelling an encode of several batches', () => {
  test('stops at the next batch: later batches never reach the session', async () => {
    const abort = new AbortController();
    const stored: string[] = [];
    // a second cache level that keeps what each finished batch stores, and cancels the request after the first
    const secondLevel = {
      get: async () => undefined,
      set: (key: string) => {
        stored.push(key);
        abort.abort();
      },
    };
    const stage = await LocalTextEncoder.load(tiny, { maxBatch: 1, sharedCache: secondLevel });
    try {
      const request = { prompts: ['one', 'two', 'three'], useComplexHumanInstruction: false, maxSequenceLength: 8 };
      await expect(stage.encode(request, { signal: abort.signal })).rejects.toBeInstanceOf(CancelledError);
      expect(stored).toHaveLength(1);
    } finally {
      await stage.close();
    }
  });

  test('a request waiting for the same rows still gets them (it was answered CANCELLED)', async () => {
    const abort = new AbortController();
    const secondLevel = { get: async () => undefined, set: () => abort.abort() };
    const stage = await LocalTextEncoder.load(tiny, { maxBatch: 1, sharedCache: secondLevel });
    const reference = await LocalTextEncoder.load(tiny, { cacheBytes: 0 });
    try {
      const request = { prompts: ['one', 'two', 'three'], useComplexHumanInstruction: false, maxSequenceLength: 8 };
      // the first request owns the encode of all three rows and is cancelled after the first batch; the second
      // starts while they are in flight, so it waits for the same rows
      const cancelled = stage.encode(request, { signal: abort.signal });
      const waiting = stage.encode(request, { signal: new AbortController().signal });
      await expect(cancelled).rejects.toBeInstanceOf(CancelledError);
      const { embeds, mask } = await waiting;
      const expected = await reference.encode(request);
      expect(embeds.dims).toEqual(expected.embeds.dims);
      expect(maxAbsErr(embeds.data, expected.embeds.data)).toBe(0);
      expect(Array.from(mask.data)).toEqual(Array.from(expected.mask.data));
    } finally {
      await stage.close();
      await reference.close();
    }
  });
});

describe('the golden pipeline prompt embeddings through the stage', () => {
  const golden = new Golden(path.join(import.meta.dirname, '..', 'fixtures', 'golden', 'tiny-a'));
  const call = golden.json.calls.pipeline as PipelineCall;

  const goldenIds = goldenIdTokenizer(golden, call);

  test('pipe.prompt_embeds / pipe.negative_prompt_embeds and their masks', async () => {
    const stage = await LocalTextEncoder.load({ textEncoder: golden.component('text_encoder') }, { tokenizer: goldenIds });
    try {
      const msl = call.max_sequence_length;
      const pos = await stage.encode({ prompts: call.prompts, useComplexHumanInstruction: true, complexHumanInstruction: call.chi_prompt.split('\n'), maxSequenceLength: msl });
      expect(pos.embeds.dims).toEqual(golden.shape('pipe.prompt_embeds'));
      expect(maxRelErr(pos.embeds.data, golden.f32('pipe.prompt_embeds'))).toBeLessThan(1e-4);
      expect(Array.from(pos.mask.data, Number)).toEqual(golden.ints('pipe.prompt_attention_mask'));
      const neg = await stage.encode({ prompts: call.prompts.map(() => ''), useComplexHumanInstruction: false, maxSequenceLength: msl });
      expect(maxRelErr(neg.embeds.data, golden.f32('pipe.negative_prompt_embeds'))).toBeLessThan(1e-4);
      expect(Array.from(neg.mask.data, Number)).toEqual(golden.ints('pipe.negative_attention_mask'));
    } finally {
      await stage.close();
    }
  });
});
