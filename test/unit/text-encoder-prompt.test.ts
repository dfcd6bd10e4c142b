// Prompt assembly (CHI prefix, budget, truncation, select_index, negative prompt) on the golden's token ids, and
// through a real (small, Gemma-style) tokenizer for the text-level cases.
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import {
  assembleFromIds,
  assemblePrompts,
  chiBudget,
  chiText,
  DEFAULT_COMPLEX_HUMAN_INSTRUCTION,
  padAndTruncate,
  preprocessPrompt,
  selectIndex,
} from '../../services/text-encoder/prompt.ts';
import { writeTestTokenizer } from '../../services/common/random-tokenizer.ts';
import { HfTokenizer } from '../../services/text-encoder/tokenizer.ts';
import { Golden } from '../parity/golden.ts';
import { tempDir } from '../helpers/tmp.ts';

const golden = new Golden(path.join(import.meta.dirname, '..', 'fixtures', 'golden', 'tiny-a'));
const call = golden.json.calls.pipeline as {
  prompts: string[];
  chi_prompt: string;
  chi_token_ids: number[];
  prompt_token_ids: Record<string, number[]>;
  n_chi: number;
  max_sequence_length: number;
  full_prompt_length: number;
  prompt_truncated: boolean[];
};
const cfg = golden.json.configs!.text_encoder as { bos_token_id: number; pad_token_id: number };
const gemmaSpecial = { prefixIds: [cfg.bos_token_id], suffixIds: [], padId: cfg.pad_token_id, truncationSide: 'right' as const };

describe('prompt assembly on the golden token ids', () => {
  const msl = call.max_sequence_length;
  const chiLength = gemmaSpecial.prefixIds.length + call.chi_token_ids.length; // len(tokenizer.encode(chi)) counts BOS

  test('the default instruction is the one the golden pipeline used', () => {
    expect(chiText(undefined)).toBe(call.chi_prompt);
    expect(DEFAULT_COMPLEX_HUMAN_INSTRUCTION.join('\n')).toBe(call.chi_prompt);
  });

  test('positive prompts: CHI + prompt ids, budget n_chi + msl − 1, right padding, select_index', () => {
    const textIds = call.prompts.map((p) => [...call.chi_token_ids, ...call.prompt_token_ids[p]]);
    const batch = assembleFromIds(textIds, msl, gemmaSpecial, chiLength);
    expect(batch.length).toBe(call.full_prompt_length);
    expect(batch.length).toBe(chiBudget(chiLength, msl));
    expect(batch.inputIds.flat()).toEqual(golden.ints('pipe.prompt_input_ids'));
    expect(batch.attentionMask.flat()).toEqual(golden.ints('pipe.prompt_attention_mask_full'));
    expect(batch.truncated).toEqual(call.prompt_truncated);
    const L = batch.length;
    expect(batch.select).toEqual(golden.ints('pipe.select_index').map((i) => (i < 0 ? L + i : i)));
    const selectedMask = batch.attentionMask.map((row) => batch.select!.map((t) => row[t]));
    expect(selectedMask.flat()).toEqual(golden.ints('pipe.prompt_attention_mask'));
  });

  test('negative prompt: no CHI, msl tokens, no selection', () => {
    const batch = assembleFromIds([[]], msl, gemmaSpecial, null);
    expect(batch.select).toBeNull();
    expect(batch.inputIds.flat()).toEqual(golden.ints('pipe.negative_input_ids'));
    expect(batch.attentionMask.flat()).toEqual(golden.ints('pipe.negative_attention_mask'));
  });

  test('a prompt longer than the budget keeps BOS + the first budget − 1 ids, then selection keeps its tail', () => {
    const long = Array.from({ length: 40 }, (_, i) => 100 + i);
    const batch = assembleFromIds([[...call.chi_token_ids, ...long]], msl, gemmaSpecial, chiLength);
    const L = chiBudget(chiLength, msl);
    expect(batch.truncated).toEqual([true]);
    expect(batch.inputIds[0]).toEqual([cfg.bos_token_id, ...call.chi_token_ids, ...long].slice(0, L));
    expect(batch.attentionMask[0]).toEqual(new Array(L).fill(1));
    // the kept positions: BOS, then the last msl − 1 of the budget: the instruction's last token and msl − 2 prompt tokens
    const kept = batch.select!.map((t) => batch.inputIds[0][t]);
    expect(kept).toEqual([cfg.bos_token_id, call.chi_token_ids.at(-1), ...long.slice(0, msl - 2)]);
  });

  test('truncation on the left keeps the special tokens', () => {
    const row = padAndTruncate([5, 6, 7, 8, 9], 4, { ...gemmaSpecial, truncationSide: 'left' });
    expect(row).toEqual({ ids: [cfg.bos_token_id, 7, 8, 9], mask: [1, 1, 1, 1], truncated: true });
    const eos = padAndTruncate([5, 6, 7], 4, { ...gemmaSpecial, suffixIds: [1] });
    expect(eos.ids).toEqual([cfg.bos_token_id, 5, 6, 1]);
  });

  test('select_index follows Python negative indexing, including a budget shorter than msl', () => {
    expect(selectIndex(3, 7)).toEqual([0, 5, 6]);
    expect(selectIndex(1, 5)).toEqual([0]);
    expect(selectIndex(4, 3)).toEqual([0, 0, 1, 2]); // an instruction of BOS only: L = msl − 1
    expect(() => selectIndex(5, 3)).toThrow(InvalidArgumentError);
  });
});

describe('prompt text handling with a Gemma-style tokenizer', () => {
  const tok = HfTokenizer.load(writeTestTokenizer(path.join(tempDir('prompt'), 'tokenizer')));
  const chi = chiText(undefined)!;
  const msl = 12;

  test('lower() and Python strip(): U+001C–U+001F and U+0085 are whitespace, U+FEFF is not', () => {
    expect(preprocessPrompt('  A Red CUBE\n\t')).toBe('a red cube');
    expect(preprocessPrompt('\u001c\u0085A\u3000')).toBe('a');
    expect(preprocessPrompt('\ufeffA')).toBe('\ufeffa');
  });

  test('the prompt is tokenised together with the instruction, as the pipeline does', () => {
    const batch = assemblePrompts(tok, ['A tiny red cube'], { chi, maxSequenceLength: msl });
    const full = tok.encode(chi + 'a tiny red cube');
    expect(batch.length).toBe(tok.encode(chi).length + msl - 2);
    expect(batch.inputIds[0]).toEqual(full.slice(0, batch.length).concat(new Array(Math.max(0, batch.length - full.length)).fill(tok.padId)));
  });

  test('an empty prompt gives BOS + CHI (positive) or BOS + padding (negative)', () => {
    const pos = assemblePrompts(tok, [''], { chi, maxSequenceLength: msl });
    const n = tok.encode(chi).length;
    expect(pos.attentionMask[0].reduce((a, b) => a + b, 0)).toBe(n);
    expect(pos.select!.map((t) => pos.attentionMask[0][t])).toEqual([1, 1, ...new Array(msl - 2).fill(0)]); // BOS, CHI's last token
    const neg = assemblePrompts(tok, ['   '], { chi: null, maxSequenceLength: msl });
    expect(neg.inputIds[0]).toEqual([tok.prefixIds[0], ...new Array(msl - 1).fill(tok.padId)]);
  });

  test('a 100 KB prompt is truncated to the budget', () => {
    const words = ['a', 'red', 'cat', 'on', 'the', 'chair', 'with', 'snow', 'ünïcödé', '猫'];
    let text = '';
    for (let i = 0; text.length < 100 * 1024; i++) text += `${words[(i * 7) % words.length]} `;
    const batch = assemblePrompts(tok, [text], { chi, maxSequenceLength: msl });
    expect(batch.truncated).toEqual([true]);
    expect(batch.inputIds[0]).toEqual(tok.encode(chi + preprocessPrompt(text)).slice(0, batch.length));
    expect(batch.attentionMask[0].every((m) => m === 1)).toBe(true);
  });

  test('lone UTF-16 surrogates are rejected with the field named; paired ones are text', () => {
    for (const bad of ['cat \ud800', '\udfff dog', 'a\ud83d']) {
      expect(() => assemblePrompts(tok, ['ok', bad], { chi, maxSequenceLength: msl })).toThrow(/prompts\[1\]: holds a lone UTF-16 surrogate/);
    }
    const emoji = assemblePrompts(tok, ['a cat 🐱'], { chi: null, maxSequenceLength: msl });
    expect(emoji.inputIds[0].length).toBe(msl);
  });
});
