// The checkpoint's tokenizer/ folder (tokenizer.json + tokenizer_config.json) through @huggingface/tokenizers, called
// the way SanaPipeline calls its GemmaTokenizerFast: special tokens added, right padding to max_length with the
// pad token, truncation of the text (never of the special tokens) on the configured side.
import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { z } from 'zod';
import { ConfigError, parseConfig } from '../common/config.ts';

/** What prompt assembly needs from a tokenizer: the text's ids and the special tokens wrapped around them. */
export interface TextTokenizer {
  /**
   * ids of `text` without special tokens. With `maxTokens`, an implementation may stop early and return only a
   * prefix, which is then exact and longer than maxTokens (so truncation to maxTokens gives the full text's result).
   */
  encodeText(text: string, maxTokens?: number): number[];
  /** ids placed before the text's ids (Gemma: [BOS]) */
  readonly prefixIds: readonly number[];
  /** ids placed after the text's ids (Gemma: none) */
  readonly suffixIds: readonly number[];
  readonly padId: number;
  /** the side truncation removes text tokens from */
  readonly truncationSide: 'right' | 'left';
}

const TokenRef = z.union([z.string(), z.object({ content: z.string() }).loose()]).nullable().optional();

const TokenizerConfigJson = z
  .object({
    tokenizer_class: z.string().optional(),
    add_bos_token: z.boolean().optional(),
    add_eos_token: z.boolean().optional(),
    bos_token: TokenRef,
    eos_token: TokenRef,
    pad_token: TokenRef,
    unk_token: TokenRef,
    truncation_side: z.enum(['right', 'left']).optional(),
  })
  .loose();
type TokenizerConfigJson = z.infer<typeof TokenizerConfigJson>;

const TemplateItem = z.union([
  z.object({ SpecialToken: z.object({ id: z.string() }).loose() }),
  z.object({ Sequence: z.object({ id: z.string() }).loose() }),
]);

const TokenizerJson = z
  .object({
    normalizer: z.unknown().optional(),
    pre_tokenizer: z.unknown().optional(),
    model: z
      .object({ type: z.string().optional(), ignore_merges: z.boolean().optional(), merges: z.array(z.union([z.string(), z.array(z.string())])).optional() })
      .loose(),
    added_tokens: z.array(z.object({ id: z.number().int(), content: z.string() }).loose()).default([]),
    post_processor: z
      .object({ type: z.string(), single: z.array(TemplateItem).optional(), special_tokens: z.record(z.string(), z.object({ ids: z.array(z.number().int()) }).loose()).optional() })
      .loose()
      .nullable()
      .optional(),
  })
  .loose();

function tokenContent(ref: z.infer<typeof TokenRef>): string | undefined {
  if (ref === null || ref === undefined) return undefined;
  return typeof ref === 'string' ? ref : ref.content;
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, `cannot read: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ConfigError(file, `not valid JSON: ${(e as Error).message}`);
  }
}

/** A Hugging Face tokenizer folder. */
export class HfTokenizer implements TextTokenizer {
  private constructor(
    readonly dir: string,
    private readonly tokenizer: Tokenizer,
    readonly config: TokenizerConfigJson,
    readonly prefixIds: readonly number[],
    readonly suffixIds: readonly number[],
    readonly padId: number,
    readonly truncationSide: 'right' | 'left',
    /** the text may be cut before a space that follows a non-space: see encodeText */
    private readonly cutsAtWordStarts: boolean,
  ) {}

  /** Loads `<dir>/tokenizer.json` and `<dir>/tokenizer_config.json` (a real Gemma tokenizer folder loads unchanged). */
  static load(dir: string): HfTokenizer {
    const jsonFile = path.join(dir, 'tokenizer.json');
    const configFile = path.join(dir, 'tokenizer_config.json');
    const rawJson = readJson(jsonFile);
    const tj = parseConfig(jsonFile, rawJson, TokenizerJson);
    const config = parseConfig(configFile, fs.existsSync(configFile) ? readJson(configFile) : {}, TokenizerConfigJson);
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(rawJson as object, config);
    } catch (e) {
      throw new ConfigError(jsonFile, `cannot build the tokenizer: ${(e as Error).message}`);
    }
    const idOf = (key: 'bos_token' | 'eos_token' | 'pad_token', file: string): number => {
      const content = tokenContent(config[key]);
      if (content === undefined) throw new ConfigError(file, `key "${key}" is needed`);
      const id = tokenizer.token_to_id(content);
      if (id === undefined) throw new ConfigError(file, `key "${key}" = ${JSON.stringify(content)} is not in the vocabulary of ${jsonFile}`);
      return id;
    };

    // Gemma/Llama fast tokenizers rebuild their post-processor from add_bos_token / add_eos_token
    // (defaults: BOS yes, EOS no); other tokenizers use tokenizer.json's template as written.
    let prefix: number[] = [];
    let suffix: number[] = [];
    if (/^(Gemma|Llama)/.test(config.tokenizer_class ?? 'GemmaTokenizer')) {
      if (config.add_bos_token ?? true) prefix = [idOf('bos_token', configFile)];
      if (config.add_eos_token ?? false) suffix = [idOf('eos_token', configFile)];
    } else if (tj.post_processor?.type === 'TemplateProcessing' && tj.post_processor.single) {
      let seen = false;
      for (const item of tj.post_processor.single) {
        if ('Sequence' in item) {
          seen = true;
          continue;
        }
        const ids = tj.post_processor.special_tokens?.[item.SpecialToken.id]?.ids;
        if (!ids) throw new ConfigError(jsonFile, `post_processor names special token ${item.SpecialToken.id} without ids`);
        (seen ? suffix : prefix).push(...ids);
      }
    } else if (tj.post_processor) {
      throw new ConfigError(jsonFile, `post_processor type ${tj.post_processor.type} is not supported with tokenizer_class ${config.tokenizer_class}`);
    }
    return new HfTokenizer(dir, tokenizer, config, prefix, suffix, idOf('pad_token', configFile), config.truncation_side ?? 'right', cutsAtWordStarts(tj, config));
  }

  /**
   * With `maxTokens`, a long text is tokenised only up to a cut before a space that follows a non-space, grown
   * until more than maxTokens ids come out. For Gemma's tokenizer (spaces → ▁, no pre-tokeniser, and no BPE merge
   * joins a symbol ending in another character with one starting with ▁, checked at load) the symbols on either
   * side of such a position never merge, so the prefix's ids are exactly the full text's first ids: a 100 KB
   * prompt costs what its first few thousand characters cost.
   */
  encodeText(text: string, maxTokens?: number): number[] {
    const whole = () => this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    if (maxTokens === undefined || !this.cutsAtWordStarts) return whole();
    for (let want = Math.max(4096, 8 * maxTokens); want < text.length; want *= 4) {
      const cut = wordStartAtOrAfter(text, want);
      if (cut < 0) break;
      const ids = this.tokenizer.encode(text.slice(0, cut), { add_special_tokens: false }).ids;
      if (ids.length > maxTokens) return ids;
    }
    return whole();
  }

  /** tokenizer.encode(text) with special tokens, as Python's `len(tokenizer.encode(chi_prompt))` counts them. */
  encode(text: string): number[] {
    return [...this.prefixIds, ...this.encodeText(text), ...this.suffixIds];
  }

  decode(ids: number[]): string {
    return ids.length === 0 ? '' : this.tokenizer.decode(ids, { skip_special_tokens: false });
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  get vocabSize(): number {
    return this.tokenizer.get_vocab(true).size;
  }
}

const WORD_MARK = '\u2581'; // SentencePiece's ▁, which Gemma's normaliser puts in place of every space

/** The first index ≥ from holding a space whose previous character is neither a space nor ▁, or -1. */
function wordStartAtOrAfter(text: string, from: number): number {
  for (let i = Math.max(1, from); i < text.length; i++) {
    if (text[i] === ' ' && text[i - 1] !== ' ' && text[i - 1] !== WORD_MARK) return i;
  }
  return -1;
}

/** Whether a text can be cut before a word-starting space without changing the ids before the cut (see encodeText). */
function cutsAtWordStarts(tj: z.infer<typeof TokenizerJson>, config: TokenizerConfigJson): boolean {
  const n = tj.normalizer as { type?: string; pattern?: { String?: string }; content?: string } | null | undefined;
  const spaceToMark = n === null || n === undefined || (n.type === 'Replace' && n.pattern?.String === ' ' && n.content === WORD_MARK);
  if (!spaceToMark || (tj.pre_tokenizer ?? null) !== null) return false;
  if (tj.model.type !== 'BPE' || tj.model.ignore_merges || !tj.model.merges) return false;
  if (config.remove_space || config.do_lowercase_and_remove_accent) return false;
  if (tj.added_tokens.some((t) => t.content.includes(' '))) return false;
  return tj.model.merges.every((m) => {
    const [a, b] = typeof m === 'string' ? [m.slice(0, m.indexOf(' ')), m.slice(m.indexOf(' ') + 1)] : m;
    return !(a.length > 0 && !a.endsWith(WORD_MARK) && b.startsWith(WORD_MARK));
  });
}
