// Parity of the whole pipeline on the `pipe*` groups, through the same generate() the CLI and gateway use:
// the golden's token ids (the reference ran SanaPipeline with a tokenizer fixed to those ids), its initial
// latents, and every intermediate the reference recorded.
import sharp from 'sharp';
import { LocalDecoder } from '../../services/decoder/stage.ts';
import { LocalDenoiser } from '../../services/denoiser/stage.ts';
import type { EncodeResult, StepEvent } from '../../services/common/stages.ts';
import { tensor } from '../../services/common/tensor.ts';
import { closingOnError } from '../../services/cli/local-stages.ts';
import { generate } from '../../services/common/pipeline.ts';
import { LocalTextEncoder } from '../../services/text-encoder/stage.ts';
import type { TextTokenizer } from '../../services/text-encoder/tokenizer.ts';
import { type Golden, maxAbsErr, maxRelErr } from './golden.ts';
import { FLOAT_LIMIT, groupsByOutput, type ParityResult, type Stage } from './stages.ts';

export interface PipelineCall {
  prompts: string[];
  negative_prompt?: string;
  chi_prompt: string;
  chi_token_ids: number[];
  prompt_token_ids: Record<string, number[]>;
  max_sequence_length: number;
  guidance_scale: number;
  num_inference_steps: number;
}

/** The golden's token ids as a tokenizer: the instruction, each prompt, and the instruction followed by a prompt. */
export function goldenIdTokenizer(golden: Golden, call: PipelineCall): TextTokenizer {
  const te = golden.json.configs?.text_encoder as { bos_token_id: number; pad_token_id: number };
  return {
    prefixIds: [te.bos_token_id],
    suffixIds: [],
    padId: te.pad_token_id,
    truncationSide: 'right',
    encodeText(text: string) {
      if (text === '') return [];
      if (text === call.chi_prompt) return call.chi_token_ids;
      for (const [prompt, ids] of Object.entries(call.prompt_token_ids)) {
        if (text === prompt) return ids;
        if (text === call.chi_prompt + prompt) return [...call.chi_token_ids, ...ids];
      }
      throw new Error(`the golden has no token ids for ${JSON.stringify(text.slice(0, 40))}`);
    },
  };
}

function stack(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

export const pipeStage: Stage = {
  name: 'pipe',
  groups: (g) => groupsByOutput(g, 'pipe', 'final_latents'),
  async check(golden, group) {
    const call = (golden.json.calls[group] ?? golden.json.calls.pipeline) as PipelineCall;
    const t = (name: string) => `${group}.${name}`;
    const textEncoder = await LocalTextEncoder.load({ textEncoder: golden.component('text_encoder') }, { tokenizer: goldenIdTokenizer(golden, call) });
    const denoiser = await LocalDenoiser.load(golden.dir).catch(closingOnError([textEncoder]));
    const decoder = await LocalDecoder.load(golden.component('vae')).catch(closingOnError([textEncoder, denoiser]));
    try {
      // record what each stage hands on, in call order: prompt embeddings, then the negative prompt's
      const encoded: EncodeResult[] = [];
      const steps: StepEvent[] = [];
      let finalLatents: Float32Array | undefined;
      const stages = {
        textEncoder: {
          info: () => textEncoder.info(),
          encode: async (...a: Parameters<LocalTextEncoder['encode']>) => {
            const r = await textEncoder.encode(...a);
            encoded.push(r);
            return r;
          },
        },
        denoiser: {
          info: () => denoiser.info(),
          denoise: async (...a: Parameters<LocalDenoiser['denoise']>) => {
            const r = await denoiser.denoise(...a);
            finalLatents = r.data;
            return r;
          },
        },
        decoder,
      };
      const [, , height, width] = golden.shape(t('image_decoded'));
      const result = await generate(
        stages,
        {
          prompt: call.prompts,
          negativePrompt: call.negative_prompt ?? '',
          numInferenceSteps: call.num_inference_steps,
          guidanceScale: call.guidance_scale,
          height,
          width,
          useResolutionBinning: false,
          maxSequenceLength: call.max_sequence_length,
          complexHumanInstruction: call.chi_prompt.split('\n'),
          latents: tensor(golden.f32(t('initial_latents')), golden.shape(t('initial_latents'))),
          format: 'png',
        },
        { onStep: (e) => steps.push(e), previewEvery: 1 },
      );

      const results: ParityResult[] = [];
      const rel = (name: string, ours: Float32Array) => results.push({ tensor: t(name), metric: 'max_rel_err', value: maxRelErr(ours, golden.f32(t(name))), limit: FLOAT_LIMIT });
      rel('prompt_embeds', encoded[0].embeds.data);
      if (golden.has(t('negative_prompt_embeds'))) rel('negative_prompt_embeds', encoded[1].embeds.data);
      rel('latents_after_step', stack(steps.map((s) => s.latents!.data)));
      rel('final_latents', finalLatents!);
      // the raw decoder output of the final latents, as the pipeline decodes them
      const scaled = finalLatents!.map((v) => v / decoder.info().scalingFactor);
      const decoded = await decoder.model.decode(tensor(scaled, golden.shape(t('final_latents'))));
      rel('image_decoded', decoded.data);
      // the delivered PNGs, read back to pixels, against the reference's uint8 images
      const pixels = await Promise.all(result.images.map((img) => sharp(img.bytes).removeAlpha().raw().toBuffer()));
      results.push({ tensor: t('image_uint8'), metric: 'max_abs_err', value: maxAbsErr(stack(pixels.map((p) => Float32Array.from(p))), Float32Array.from(golden.u8(t('image_uint8')))), limit: 1 });
      return results;
    } finally {
      await Promise.all([textEncoder.close(), denoiser.close(), decoder.close()]);
    }
  },
};
