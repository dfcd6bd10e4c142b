// The tokenizer/ folder loader: special tokens as GemmaTokenizerFast adds them, config errors, and the exactness of
// the long-text shortcut (a prefix cut before a word-starting space gives the full text's first ids).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { ConfigError } from '../../services/common/config.ts';
import { writeTestTokenizer } from '../../services/common/random-tokenizer.ts';
import { HfTokenizer } from '../../services/text-encoder/tokenizer.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('tokenizer');
const base = writeTestTokenizer(path.join(root, 'base'), { vocabSize: 512 });

/** A copy of the test tokenizer folder with edited JSON files. */
function variant(name: string, edit: { config?: (c: any) => void; json?: (j: any) => void }): string {
  const dir = path.join(root, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [file, fn] of [['tokenizer_config.json', edit.config], ['tokenizer.json', edit.json]] as const) {
    const data = JSON.parse(fs.readFileSync(path.join(base, file), 'utf8'));
    fn?.(data);
    fs.writeFileSync(path.join(dir, file), JSON.stringify(data));
  }
  return dir;
}

/** Deterministic text with single and double spaces, newlines, literal ▁, accents, CJK and emoji. */
function sampleText(seed: number, chars: number): string {
  const pieces = ['a', 'red', 'cat', 'on', 'the', 'chair', ' ', '\n', 'snow,', '\u2581x', 'ünï', '猫', '🐱', 'prompt:', 'enhanced'];
  let s = '';
  let x = seed;
  while (s.length < chars) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    s += pieces[x % pieces.length] + (x & 0x100 ? ' ' : '');
  }
  return s;
}

describe('tokenizer folder', () => {
  const tok = HfTokenizer.load(base);

  test('Gemma-style special tokens: BOS prefix, no EOS, <pad> = 0, right truncation', () => {
    expect(tok.vocabSize).toBe(512);
    expect(tok.prefixIds).toEqual([tok.tokenToId('<bos>')]);
    expect(tok.prefixIds).toEqual([2]);
    expect(tok.suffixIds).toEqual([]);
    expect(tok.padId).toBe(0);
    expect(tok.truncationSide).toBe('right');
    expect(tok.encode('')).toEqual([2]);
  });

  test('text round-trips through encode and decode, unknown characters through byte fallback', () => {
    for (const text of ['a photo of a cat', 'ünïcödé 猫 🐱', '  two  spaces\nnewline']) {
      const ids = tok.encodeText(text);
      expect(ids.length).toBeGreaterThan(0);
      expect(tok.decode(ids)).toBe(text);
    }
    expect(tok.encodeText('a cat sitting').length).toBeLessThan('a cat sitting'.length); // merges were learnt
  });

  test('add_bos_token / add_eos_token are honoured as GemmaTokenizerFast does', () => {
    const noBos = HfTokenizer.load(variant('no-bos', { config: (c) => (c.add_bos_token = false) }));
    expect(noBos.prefixIds).toEqual([]);
    const eos = HfTokenizer.load(variant('eos', { config: (c) => (c.add_eos_token = true) }));
    expect(eos.suffixIds).toEqual([1]);
    const left = HfTokenizer.load(variant('left', { config: (c) => (c.truncation_side = 'left') }));
    expect(left.truncationSide).toBe('left');
  });

  test("another tokenizer class uses tokenizer.json's TemplateProcessing", () => {
    const generic = HfTokenizer.load(variant('generic', { config: (c) => (c.tokenizer_class = 'PreTrainedTokenizerFast') }));
    expect(generic.prefixIds).toEqual([2]);
    expect(generic.suffixIds).toEqual([]);
  });

  test('broken folders are ConfigErrors naming the file and key', () => {
    expect(() => HfTokenizer.load(variant('no-pad', { config: (c) => delete c.pad_token }))).toThrow(/tokenizer_config\.json: key "pad_token" is needed/);
    expect(() => HfTokenizer.load(variant('bad-bos', { config: (c) => (c.bos_token = '<nope>') }))).toThrow(/"<nope>" is not in the vocabulary/);
    const broken = variant('broken', {});
    fs.writeFileSync(path.join(broken, 'tokenizer.json'), '{"model": ');
    expect(() => HfTokenizer.load(broken)).toThrow(ConfigError);
    expect(() => HfTokenizer.load(path.join(root, 'missing'))).toThrow(/cannot read/);
  });
});

describe('long-text shortcut', () => {
  const tok = HfTokenizer.load(base);

  test('the ids of a prefix cut at a word start are the full text ids, for any budget', () => {
    for (let seed = 1; seed <= 3; seed++) {
      const text = sampleText(seed, 12_000);
      const full = tok.encodeText(text);
      for (const maxTokens of [1, 37, 300, 2000]) {
        const ids = tok.encodeText(text, maxTokens);
        expect(ids.length).toBeGreaterThan(Math.min(maxTokens, full.length - 1));
        expect(ids).toEqual(full.slice(0, ids.length));
      }
    }
  });

  test('a vocabulary whose merges cross word starts falls back to the whole text', () => {
    const crossing = HfTokenizer.load(
      variant('crossing', {
        json: (j) => {
          j.model.vocab['a\u2581'] = Object.keys(j.model.vocab).length;
          j.model.merges.unshift(['a', '\u2581']);
        },
      }),
    );
    const text = sampleText(9, 20_000);
    const full = crossing.encodeText(text);
    expect(crossing.encodeText(text, 10)).toEqual(full);
  });
});
