// Parity of the Gemma-2 text encoder on every `te*` group: the variant's own text_encoder/ checkpoint as shipped
// (fp32 or bf16 on disk), padded rows included.
import { Gemma2Model } from '../../services/text-encoder/gemma2.ts';
import { tensor } from '../../services/common/tensor.ts';
import { maxRelErr } from './golden.ts';
import { FLOAT_LIMIT, groupsByOutput, type Stage } from './stages.ts';

export const textEncoderStage: Stage = {
  name: 'te',
  groups: (g) => groupsByOutput(g, 'te', 'last_hidden_state'),
  async check(golden, group) {
    const model = await Gemma2Model.load(golden.component('text_encoder'));
    try {
      const t = (n: string) => `${group}.${n}`;
      const out = await model.forward(
        tensor(golden.i64(t('input_ids')), golden.shape(t('input_ids'))),
        tensor(golden.i64(t('attention_mask')), golden.shape(t('attention_mask'))),
      );
      const refShape = golden.shape(t('last_hidden_state'));
      if (out.dims.join() !== refShape.join()) throw new Error(`output shape [${out.dims}] vs reference [${refShape}]`);
      return [{ tensor: t('last_hidden_state'), metric: 'max_rel_err', value: maxRelErr(out.data, golden.f32(t('last_hidden_state'))), limit: FLOAT_LIMIT }];
    } finally {
      await model.close();
    }
  },
};
