// Small Gemma-style tokenizer folders (byte-fallback BPE learnt from a short corpus) for tests, benchmarks and the
// tiny random-weight pipelines of `sana checkpoint random`. A generator, not part of serving: only the CLI, tests and
// benchmarks import it (the walls check enforces that).
import fs from 'node:fs';
import path from 'node:path';

const SPACE = '\u2581'; // SentencePiece's ▁, which Gemma's normaliser puts in place of every space
const SPECIALS = ['<pad>', '<eos>', '<bos>', '<unk>'];
const BASIC_ALPHABET = `abcdefghijklmnopqrstuvwxyz0123456789${SPACE}.,:;'"!?-()\n`;
const DEFAULT_CORPUS =
  'a photo of a cat sitting on a red chair next to a window. a dog running in the park on a sunny day. ' +
  'a small house in the mountains with snow, trees and a lake. portrait of a woman with long hair, studio lighting. ' +
  'a bowl of fruit on a wooden table: apples, oranges, and grapes. a city street at night with neon lights and rain. ' +
  "given a user prompt, generate an 'enhanced prompt' that provides detailed visual descriptions suitable for image generation. " +
  'if the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships. ' +
  'user prompt: a tiny red cube -> enhanced: a small, bright red cube resting on a smooth white surface.';

export interface TestTokenizerOptions {
  /** total vocabulary: 4 specials + 256 byte tokens + characters + merges; must not exceed the text encoder's vocab_size */
  vocabSize?: number;
  /** text the merges are learnt from (lower-case text tokenises into few tokens) */
  corpus?: string;
}

/**
 * A byte-fallback BPE vocabulary learnt from `corpus`: the most frequent adjacent pair is merged until the vocabulary
 * is full. Words start with ▁ as in SentencePiece; merges never cross a word start.
 */
function learnBpe(corpus: string, vocabSize: number): { vocab: Record<string, number>; merges: [string, string][] } {
  const vocab: Record<string, number> = {};
  const add = (t: string) => {
    if (!(t in vocab)) vocab[t] = Object.keys(vocab).length;
  };
  SPECIALS.forEach(add);
  for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const normalised = corpus.replaceAll(' ', SPACE);
  for (const ch of new Set([...BASIC_ALPHABET, ...normalised])) add(ch);
  if (Object.keys(vocab).length > vocabSize) throw new Error(`vocabSize ${vocabSize} is smaller than the ${Object.keys(vocab).length} base tokens`);

  const counts = new Map<string, number>();
  for (const w of normalised.split(new RegExp(`(?=${SPACE})`))) counts.set(w, (counts.get(w) ?? 0) + 1);
  let words = [...counts].map(([w, n]) => ({ symbols: [...w], n }));
  const merges: [string, string][] = [];
  while (Object.keys(vocab).length < vocabSize) {
    const pairs = new Map<string, { pair: [string, string]; n: number }>();
    for (const { symbols, n } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]}\u0000${symbols[i + 1]}`;
        const p = pairs.get(key);
        if (p) p.n += n;
        else pairs.set(key, { pair: [symbols[i], symbols[i + 1]], n });
      }
    }
    let best: { pair: [string, string]; n: number } | undefined;
    for (const p of pairs.values()) if (!best || p.n > best.n) best = p; // first-seen wins ties: deterministic
    if (!best) break;
    const [a, b] = best.pair;
    merges.push([a, b]);
    add(a + b);
    words = words.map(({ symbols, n }) => {
      const out: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (i + 1 < symbols.length && symbols[i] === a && symbols[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(symbols[i]);
      }
      return { symbols: out, n };
    });
  }
  return { vocab, merges };
}

/**
 * Writes `<dir>/tokenizer.json` and `<dir>/tokenizer_config.json` laid out like Gemma-2's (Replace ' '→▁ normaliser,
 * no pre-tokeniser, byte-fallback BPE, <pad>=0 <eos>=1 <bos>=2 <unk>=3, BOS added by a TemplateProcessing
 * post-processor and by add_bos_token), with a small vocabulary learnt from `corpus`.
 */
export function writeTestTokenizer(dir: string, options: TestTokenizerOptions = {}): string {
  const { vocab, merges } = learnBpe(options.corpus ?? DEFAULT_CORPUS, options.vocabSize ?? 512);
  const special = (content: string, id: number) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((s, i) => special(s, i)),
    normalizer: { type: 'Replace', pattern: { String: ' ' }, content: SPACE },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<bos>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<bos>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<bos>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<bos>': { id: '<bos>', ids: [2], tokens: ['<bos>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: SPACE }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: '<bos>',
    eos_token: '<eos>',
    pad_token: '<pad>',
    unk_token: '<unk>',
    clean_up_tokenization_spaces: false,
    model_max_length: 1e30,
    padding_side: 'left', // as Gemma ships it; SanaPipeline switches to right padding itself
    spaces_between_special_tokens: false,
    tokenizer_class: 'GemmaTokenizer',
  };
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), `${JSON.stringify(tokenizerConfig, null, 2)}\n`);
  return dir;
}
