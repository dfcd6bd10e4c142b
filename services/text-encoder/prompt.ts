// Prompt assembly as SanaPipeline does it (SANA paper §3.1, "complex human instruction"):
//
//   positive prompt p:  text = CHI + lower(strip(p));  budget = len(encode(CHI)) + max_sequence_length − 2
//                       ids  = tokenizer(text, padding='max_length', max_length=budget, truncation=True)
//                       Gemma-2 runs over all `budget` positions, then rows select_index = [0, −(msl−1), …, −1]
//                       (the BOS token and the last msl−1 positions) of the embeddings and the mask are kept
//   negative prompt n:  ids = tokenizer(lower(strip(n)), max_length=msl, …): no CHI, no selection
//
// `len(encode(CHI))` counts the special tokens (BOS). Everything here is a function of token ids, so the
// golden's ids test it without a tokenizer that produces them.
import { InvalidArgumentError } from '../common/errors.ts';
import type { TextTokenizer } from './tokenizer.ts';

/**
 * The instruction the released SANA checkpoints were trained with (SanaPipeline's default), joined with '\n'.
 * It is model data: a checkpoint trained with another instruction needs that one.
 */
export const DEFAULT_COMPLEX_HUMAN_INSTRUCTION: readonly string[] = [
  "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
  '- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.',
  '- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.',
  'Here are examples of how to transform or refine prompts:',
  '- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.',
  '- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.',
  'Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:',
  'User Prompt: ',
];

/** The instruction text for a request: undefined → SANA's default; an empty list → no instruction (Python's `not []`). */
export function chiText(lines: readonly string[] | undefined): string | null {
  const chosen = lines ?? DEFAULT_COMPLEX_HUMAN_INSTRUCTION;
  return chosen.length === 0 ? null : chosen.join('\n');
}

// Python's str.isspace() set, which str.strip() removes (JS trim() differs: it strips U+FEFF, keeps U+001C–U+001F, U+0085)
const PY_SPACE = '\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, 'g');
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * SanaPipeline's `_text_preprocessing` without caption cleaning: `text.lower().strip()`. A string that is not
 * well-formed UTF-16 (a lone surrogate) cannot come from real text and is rejected.
 */
export function preprocessPrompt(text: string, field = 'prompt'): string {
  const bad = LONE_SURROGATE.exec(text);
  if (bad) throw new InvalidArgumentError(field, `holds a lone UTF-16 surrogate (0x${text.charCodeAt(bad.index).toString(16)}) at index ${bad.index}: prompts must be valid Unicode`);
  return text.toLowerCase().replace(PY_STRIP, '');
}

export interface SpecialTokens {
  prefixIds: readonly number[];
  suffixIds: readonly number[];
  padId: number;
  truncationSide: 'right' | 'left';
}

export interface TokenizedRow {
  /** length max_length */
  ids: number[];
  mask: number[];
  /** text tokens were dropped to fit */
  truncated: boolean;
}

/**
 * tokenizer(text, padding='max_length', max_length, truncation=True) for one text given its ids without special
 * tokens: the text is truncated to leave room for the special tokens, wrapped in them, then right-padded.
 */
export function padAndTruncate(textIds: readonly number[], maxLength: number, special: SpecialTokens): TokenizedRow {
  const room = maxLength - special.prefixIds.length - special.suffixIds.length;
  if (room < 0) throw new InvalidArgumentError('max_sequence_length', `max_length ${maxLength} leaves no room for the tokenizer's special tokens`);
  const truncated = textIds.length > room;
  const kept = !truncated ? textIds : special.truncationSide === 'right' ? textIds.slice(0, room) : textIds.slice(textIds.length - room);
  const ids = [...special.prefixIds, ...kept, ...special.suffixIds];
  const mask = ids.map(() => 1);
  while (ids.length < maxLength) {
    ids.push(special.padId);
    mask.push(0);
  }
  return { ids, mask, truncated };
}

/** SanaPipeline's select_index = [0] + range(−msl+1, 0), as non-negative positions into a sequence of `length`. */
export function selectIndex(maxSequenceLength: number, length: number): number[] {
  const python = [0];
  for (let i = -maxSequenceLength + 1; i < 0; i++) python.push(i);
  return python.map((i) => {
    const at = i < 0 ? length + i : i;
    if (at < 0 || at >= length) throw new InvalidArgumentError('max_sequence_length', `select index ${i} is outside a sequence of ${length} tokens`);
    return at;
  });
}

/** The token budget of a prompt with the instruction: len(encode(CHI)) (special tokens counted) + msl − 2. */
export function chiBudget(chiLengthWithSpecials: number, maxSequenceLength: number): number {
  return chiLengthWithSpecials + maxSequenceLength - 2;
}

export interface AssembledBatch {
  /** [B, L] row-major */
  inputIds: number[][];
  attentionMask: number[][];
  /** positions of the encoder output kept per row (length max_sequence_length); null = all L = msl rows */
  select: number[] | null;
  length: number;
  truncated: boolean[];
}

/**
 * Assembles the text encoder's inputs for a batch from token ids: `textIds[b]` are the ids (without special tokens)
 * of the full text of row b — CHI + prompt when `chiLengthWithSpecials` is given, the bare prompt otherwise.
 */
export function assembleFromIds(
  textIds: readonly (readonly number[])[],
  maxSequenceLength: number,
  special: SpecialTokens,
  chiLengthWithSpecials: number | null,
): AssembledBatch {
  const length = chiLengthWithSpecials === null ? maxSequenceLength : chiBudget(chiLengthWithSpecials, maxSequenceLength);
  if (length < 1) throw new InvalidArgumentError('max_sequence_length', `gives a token budget of ${length}`);
  const rows = textIds.map((ids) => padAndTruncate(ids, length, special));
  return {
    inputIds: rows.map((r) => r.ids),
    attentionMask: rows.map((r) => r.mask),
    select: chiLengthWithSpecials === null ? null : selectIndex(maxSequenceLength, length),
    length,
    truncated: rows.map((r) => r.truncated),
  };
}

export interface PromptOptions {
  /** the instruction text (lines joined by '\n'), or null for none (negative prompts) */
  chi: string | null;
  maxSequenceLength: number;
}

/** Tokenises and assembles prompts exactly as SanaPipeline's encode_prompt does before running Gemma-2. */
export function assemblePrompts(tokenizer: TextTokenizer, prompts: readonly string[], options: PromptOptions, field = 'prompts'): AssembledBatch {
  const texts = prompts.map((p, i) => preprocessPrompt(p, `${field}[${i}]`));
  return assembleTexts(tokenizer, texts, options);
}

/** len(tokenizer.encode(chi)): the instruction's ids with the special tokens around them. */
export function chiLengthWithSpecials(tokenizer: TextTokenizer, chi: string): number {
  return tokenizer.prefixIds.length + tokenizer.encodeText(chi).length + tokenizer.suffixIds.length;
}

/**
 * assemblePrompts for already preprocessed texts; `chiLength` (chiLengthWithSpecials of options.chi) may be given
 * when the caller keeps it.
 */
export function assembleTexts(tokenizer: TextTokenizer, texts: readonly string[], options: PromptOptions, chiLength?: number): AssembledBatch {
  const { chi, maxSequenceLength } = options;
  const chiTokens = chi === null ? null : (chiLength ?? chiLengthWithSpecials(tokenizer, chi));
  const room = textRoom(tokenizer, maxSequenceLength, chiTokens);
  const textIds = texts.map((t) => tokenizer.encodeText(chi === null ? t : chi + t, room));
  return assembleFromIds(textIds, maxSequenceLength, tokenizer, chiTokens);
}

/** How many text ids fit the budget beside the special tokens (what the tokenizer needs to look at). */
function textRoom(special: SpecialTokens, maxSequenceLength: number, chiLengthWithSpecials: number | null): number {
  const length = chiLengthWithSpecials === null ? maxSequenceLength : chiBudget(chiLengthWithSpecials, maxSequenceLength);
  return Math.max(0, length - special.prefixIds.length - special.suffixIds.length);
}
