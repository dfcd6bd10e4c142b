// The text-encoder stage in-process: prompts → CHI assembly → Gemma-2 → selected embeddings and masks, with an
// embedding cache per (prompt, options). The gRPC server and the all-in-one pipeline both call encode().
import path from 'node:path';
import { CancelledError, InvalidArgumentError } from '../common/errors.ts';
import type { PrecisionOptions } from '../common/int8-recipe.ts';
import type { SessionOptions } from '../common/ort-session.ts';
import type { EncodeRequest, EncodeResult, StageContext, TextEncoderInfo, TextEncoderStage } from '../common/stages.ts';
import { tensor } from '../common/tensor.ts';
import { type CachedEmbedding, cacheKey, EmbeddingCache } from './cache.ts';
import { Gemma2Model } from './gemma2.ts';
import type { SharedEmbeddingCache } from './cache.ts';
import { assembleTexts, chiBudget, chiLengthWithSpecials, chiText, preprocessPrompt } from './prompt.ts';
import { HfTokenizer, type TextTokenizer } from './tokenizer.ts';

export interface TextEncoderComponents {
  /** text_encoder/ folder: config.json + model*.safetensors */
  textEncoder: string;
  /** tokenizer/ folder: tokenizer.json + tokenizer_config.json (not needed when options.tokenizer is given) */
  tokenizer?: string;
}

export interface LocalTextEncoderOptions extends SessionOptions, PrecisionOptions {
  /** bytes of embeddings the cache keeps (default 256 MiB; 0 disables it) */
  cacheBytes?: number;
  /** most rows per Gemma-2 forward (default 8) */
  maxBatch?: number;
  /** longest prompt (and instruction) accepted, in UTF-16 code units (default 262144) */
  maxPromptLength?: number;
  /** most prompts per request (default 64) */
  maxPrompts?: number;
  /** a tokenizer to use instead of the tokenizer/ folder's */
  tokenizer?: TextTokenizer;
  /** a second cache level shared with other replicas (shared-cache.ts), asked on a first-level miss */
  sharedCache?: SharedEmbeddingCache;
}

const DEFAULTS = { cacheBytes: 256 * 2 ** 20, maxBatch: 8, maxPromptLength: 256 * 1024, maxPrompts: 64 };

export class LocalTextEncoder implements TextEncoderStage {
  private readonly cache: EmbeddingCache;
  private readonly inFlight = new Map<string, Promise<CachedEmbedding>>();
  private readonly chiLengths = new Map<string, number>();
  private readonly limits: typeof DEFAULTS;
  private readonly sharedCache: SharedEmbeddingCache | undefined;
  /** rows that went through Gemma-2 (cache misses that were not already being encoded) */
  encodedRows = 0;

  private constructor(
    readonly model: Gemma2Model,
    readonly tokenizer: TextTokenizer,
    options: LocalTextEncoderOptions,
  ) {
    this.limits = {
      cacheBytes: options.cacheBytes ?? DEFAULTS.cacheBytes,
      maxBatch: options.maxBatch ?? DEFAULTS.maxBatch,
      maxPromptLength: options.maxPromptLength ?? DEFAULTS.maxPromptLength,
      maxPrompts: options.maxPrompts ?? DEFAULTS.maxPrompts,
    };
    if (!Number.isSafeInteger(this.limits.maxBatch) || this.limits.maxBatch < 1) throw new RangeError(`maxBatch must be a positive integer, got ${this.limits.maxBatch}`);
    this.cache = new EmbeddingCache(this.limits.cacheBytes);
    this.sharedCache = options.sharedCache;
  }

  /** From a pipeline folder (its text_encoder/ and tokenizer/) or from the two component folders. */
  static async load(source: string | TextEncoderComponents, options: LocalTextEncoderOptions = {}): Promise<LocalTextEncoder> {
    const parts = typeof source === 'string' ? { textEncoder: path.join(source, 'text_encoder'), tokenizer: path.join(source, 'tokenizer') } : source;
    let tokenizer = options.tokenizer;
    if (!tokenizer) {
      if (!parts.tokenizer) throw new Error('LocalTextEncoder.load: give a tokenizer/ folder or options.tokenizer');
      tokenizer = HfTokenizer.load(parts.tokenizer);
    }
    const { cacheBytes, maxBatch, maxPromptLength, maxPrompts, sharedCache, tokenizer: _, ...sessionOptions } = options;
    // Prepacking buys no speed at prompt lengths but costs a minute of start-up and a private copy of 10 GB of
    // weights (bench/text-encoder.ts --no-prepack), so the encoder keeps its weights in the page cache by default.
    const model = await Gemma2Model.load(parts.textEncoder, { ...sessionOptions, disablePrepacking: sessionOptions.disablePrepacking ?? true });
    return new LocalTextEncoder(model, tokenizer, { cacheBytes, maxBatch, maxPromptLength, maxPrompts, sharedCache });
  }

  /** Around an already loaded model (benchmarks, or sharing one model between stages). */
  static fromModel(model: Gemma2Model, tokenizer: TextTokenizer, options: Omit<LocalTextEncoderOptions, keyof SessionOptions | keyof PrecisionOptions | 'tokenizer'> = {}): LocalTextEncoder {
    return new LocalTextEncoder(model, tokenizer, options);
  }

  info(): TextEncoderInfo {
    return { hiddenSize: this.model.config.hidden_size, precision: this.model.precision };
  }

  cacheStats() {
    return { ...this.cache.stats(), encodedRows: this.encodedRows };
  }

  private validate(request: EncodeRequest): void {
    const { prompts, maxSequenceLength, complexHumanInstruction } = request;
    const { maxPrompts, maxPromptLength } = this.limits;
    if (!Array.isArray(prompts) || prompts.length < 1 || prompts.length > maxPrompts) {
      throw new InvalidArgumentError('prompts', `must hold 1 to ${maxPrompts} prompts, got ${Array.isArray(prompts) ? prompts.length : typeof prompts}`);
    }
    prompts.forEach((p, i) => {
      if (typeof p !== 'string') throw new InvalidArgumentError(`prompts[${i}]`, `must be a string, got ${typeof p}`);
      if (p.length > maxPromptLength) throw new InvalidArgumentError(`prompts[${i}]`, `is ${p.length} characters long; the limit is ${maxPromptLength}`);
    });
    const limit = this.model.config.max_position_embeddings;
    if (!Number.isSafeInteger(maxSequenceLength) || maxSequenceLength < 1 || maxSequenceLength > limit) {
      throw new InvalidArgumentError('max_sequence_length', `must be an integer in [1, ${limit}], got ${maxSequenceLength}`);
    }
    if (typeof request.useComplexHumanInstruction !== 'boolean') {
      throw new InvalidArgumentError('use_complex_human_instruction', `must be a boolean, got ${typeof request.useComplexHumanInstruction}`);
    }
    if (complexHumanInstruction !== undefined) {
      if (!Array.isArray(complexHumanInstruction) || complexHumanInstruction.some((l) => typeof l !== 'string')) {
        throw new InvalidArgumentError('complex_human_instruction', 'must be a list of strings');
      }
      const total = complexHumanInstruction.reduce((n, l) => n + l.length + 1, 0);
      if (total > maxPromptLength) throw new InvalidArgumentError('complex_human_instruction', `is ${total} characters long; the limit is ${maxPromptLength}`);
      complexHumanInstruction.forEach((l, i) => preprocessPrompt(l, `complex_human_instruction[${i}]`)); // rejects lone surrogates
    }
  }

  /** len(tokenizer.encode(chi)), special tokens counted, remembered per instruction text. */
  private chiLength(chi: string): number {
    let n = this.chiLengths.get(chi);
    if (n === undefined) {
      n = chiLengthWithSpecials(this.tokenizer, chi);
      if (this.chiLengths.size >= 16) this.chiLengths.clear();
      this.chiLengths.set(chi, n);
    }
    return n;
  }

  async encode(request: EncodeRequest, ctx: StageContext = {}): Promise<EncodeResult> {
    this.validate(request);
    const msl = request.maxSequenceLength;
    const chi = request.useComplexHumanInstruction ? chiText(request.complexHumanInstruction) : null;
    // the instruction sets the sequence length (prompts are truncated to what it leaves): bound it by the model's
    const limit = this.model.config.max_position_embeddings;
    const tokens = chi === null ? msl : chiBudget(this.chiLength(chi), msl);
    if (tokens > limit) {
      throw new InvalidArgumentError('complex_human_instruction', `with max_sequence_length ${msl} needs ${tokens} tokens; the text encoder takes at most ${limit}`);
    }
    const texts = request.prompts.map((p, i) => preprocessPrompt(p, `prompts[${i}]`));
    const keys = texts.map((prompt) => cacheKey({ prompt, chi, maxSequenceLength: msl }));

    // each distinct key: from the cache, from an encode already running, or encoded now in batches
    const pending = new Map<string, CachedEmbedding | Promise<CachedEmbedding>>();
    const missing = new Map<string, string>(); // key → text
    keys.forEach((key, i) => {
      if (pending.has(key) || missing.has(key)) return;
      const hit = this.cache.get(key) ?? this.inFlight.get(key);
      if (hit) pending.set(key, hit);
      else missing.set(key, texts[i]);
    });
    const todo = [...missing].map(([key, text]) => ({ key, text }));
    // the shared level first (one lookup per key, all at once), then Gemma-2 for what no replica has encoded
    const shared = this.sharedCache && todo.length > 0 ? Promise.all(todo.map((m) => this.sharedCache!.get(m.key))) : undefined;
    const toEncode = shared ? shared.then((found) => todo.filter((_, i) => !found[i])) : Promise.resolve(todo);
    const encoded = toEncode.then(async (rest) => {
      const rows = new Map<string, CachedEmbedding>();
      // one batch after another (the session runs them in turn anyway): a cancelled request stops at the next batch
      // instead of leaving every batch queued on the session
      for (let start = 0; start < rest.length; start += this.limits.maxBatch) {
        const chunk = rest.slice(start, start + this.limits.maxBatch);
        const out = await this.encodeRows(chunk.map((m) => m.text), chi, msl, ctx);
        chunk.forEach((m, j) => {
          rows.set(m.key, out[j]);
          this.sharedCache?.set(m.key, out[j]);
        });
      }
      return rows;
    });
    todo.forEach((m, j) => {
      const row = Promise.all([shared, encoded]).then(([found, rows]) => found?.[j] ?? rows.get(m.key)!);
      row.catch(() => {}); // awaited below; this only keeps an early failure from being reported as unhandled
      this.inFlight.set(m.key, row);
      pending.set(m.key, row);
      void row.then(
        (value) => {
          this.cache.set(m.key, value);
          this.inFlight.delete(m.key);
        },
        () => this.inFlight.delete(m.key),
      );
    });

    let rows: CachedEmbedding[];
    try {
      rows = await Promise.all(keys.map((k) => pending.get(k)!));
    } catch (error) {
      // rows this request shares with another that was cancelled stopped with that one: encode them for this one
      if (error instanceof CancelledError && !ctx.signal?.aborted) return this.encode(request, ctx);
      throw error;
    }
    const hidden = this.model.config.hidden_size;
    const embeds = new Float32Array(rows.length * msl * hidden);
    const mask = new BigInt64Array(rows.length * msl);
    rows.forEach((r, b) => {
      embeds.set(r.embeds, b * msl * hidden);
      mask.set(r.mask, b * msl);
    });
    return { embeds: tensor(embeds, [rows.length, msl, hidden]), mask: tensor(mask, [rows.length, msl]) };
  }

  /** One Gemma-2 forward over preprocessed texts; returns each row's selected [msl, H] embeddings and [msl] mask. */
  private async encodeRows(texts: string[], chi: string | null, msl: number, ctx: StageContext): Promise<CachedEmbedding[]> {
    if (ctx.signal?.aborted) throw new CancelledError();
    const batch = assembleTexts(this.tokenizer, texts, { chi, maxSequenceLength: msl }, chi === null ? undefined : this.chiLength(chi));
    const B = texts.length;
    // Rows are right-padded. Under int8 Gemma-2 runs only up to the last attended position of the batch: the causal
    // attention keeps padding out of every attended position, and the denoiser gives padding zero weight, so its
    // embeddings (left at zero) are work for nothing. fp32 computes them, as the reference does.
    const L = this.model.precision === 'int8' ? Math.max(1, ...batch.attentionMask.map((m) => m.lastIndexOf(1) + 1)) : batch.length;
    const ids = new BigInt64Array(B * L);
    const attention = new BigInt64Array(B * L);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < L; t++) {
        ids[b * L + t] = BigInt(batch.inputIds[b][t]);
        attention[b * L + t] = BigInt(batch.attentionMask[b][t]);
      }
    }
    const out = await this.model.forward(tensor(ids, [B, L]), tensor(attention, [B, L]));
    this.encodedRows += B;
    const H = this.model.config.hidden_size;
    const select = batch.select ?? Array.from({ length: batch.length }, (_, t) => t);
    return texts.map((_, b) => {
      const embeds = new Float32Array(msl * H);
      const mask = new BigInt64Array(msl);
      select.forEach((t, s) => {
        if (t >= L) return; // padding that was not run: zero embedding, mask 0
        embeds.set(out.data.subarray((b * L + t) * H, (b * L + t + 1) * H), s * H);
        mask[s] = attention[b * L + t];
      });
      return { embeds, mask };
    });
  }

  async close(): Promise<void> {
    await this.model.close();
  }
}
