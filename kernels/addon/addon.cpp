// Node-API addon over the C API (sana_kernels.h): the denoiser's CUDA backend loads it through
// services/denoiser/cuda-backend.ts. Forward passes run on a libuv worker thread and resolve a Promise.
#include <node_api.h>

#include <cstring>
#include <string>
#include <vector>

#include "sana_kernels.h"

namespace {

#define NAPI_CALL(env, call)                                  \
  do {                                                        \
    if ((call) != napi_ok) {                                  \
      napi_throw_error((env), nullptr, "napi call failed: " #call); \
      return nullptr;                                         \
    }                                                         \
  } while (0)

napi_value throwError(napi_env env, const std::string &msg) {
  napi_throw_error(env, "SANA_CUDA", msg.c_str());
  return nullptr;
}

bool getInt(napi_env env, napi_value obj, const char *key, int *out) {
  napi_value v;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok) return false;
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return false;
  *out = (int)d;
  return true;
}

template <class T>
bool typedArray(napi_env env, napi_value v, napi_typedarray_type want, const T **data, size_t *length) {
  bool is = false;
  napi_is_typedarray(env, v, &is);
  if (!is) return false;
  napi_typedarray_type type;
  void *ptr;
  if (napi_get_typedarray_info(env, v, &type, length, &ptr, nullptr, nullptr) != napi_ok || type != want) return false;
  *data = (const T *)ptr;
  return true;
}

SanaDit *handle(napi_env env, napi_value v) {
  void *p = nullptr;
  napi_get_value_external(env, v, &p);
  return (SanaDit *)p;
}

napi_value Probe(napi_env env, napi_callback_info) {
  char err[512] = "";
  const int rc = sana_device_probe(err, sizeof err);
  napi_value out, ok, message, desc;
  NAPI_CALL(env, napi_create_object(env, &out));
  NAPI_CALL(env, napi_get_boolean(env, rc == 0, &ok));
  NAPI_CALL(env, napi_create_string_utf8(env, err, NAPI_AUTO_LENGTH, &message));
  NAPI_CALL(env, napi_create_string_utf8(env, rc == 0 ? sana_backend_description() : "", NAPI_AUTO_LENGTH, &desc));
  napi_set_named_property(env, out, "ok", ok);
  napi_set_named_property(env, out, "error", message);
  napi_set_named_property(env, out, "description", desc);
  return out;
}

/** create(config, mode: 0 int8 | 1 bf16, keepHostCopy) → handle */
napi_value Create(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  SanaDitConfig c{};
  const std::pair<const char *, int *> ints[] = {
      {"in_channels", &c.in_channels}, {"out_channels", &c.out_channels}, {"caption_channels", &c.caption_channels},
      {"num_attention_heads", &c.num_attention_heads}, {"attention_head_dim", &c.attention_head_dim},
      {"num_cross_attention_heads", &c.num_cross_attention_heads}, {"cross_attention_head_dim", &c.cross_attention_head_dim},
      {"num_layers", &c.num_layers}, {"patch_size", &c.patch_size}, {"ff_hidden", &c.ff_hidden},
      {"attention_bias", &c.attention_bias}, {"norm_elementwise_affine", &c.norm_elementwise_affine}, {"pos_embed", &c.pos_embed},
      {"qk_norm", &c.qk_norm}};
  for (const auto &[key, dst] : ints)
    if (!getInt(env, argv[0], key, dst)) return throwError(env, std::string("config.") + key + " must be a number");
  for (const auto &[key, dst] : {std::pair<const char *, float *>{"norm_eps", &c.norm_eps}, {"qk_norm_eps", &c.qk_norm_eps}}) {
    napi_value eps;
    double epsValue;
    if (napi_get_named_property(env, argv[0], key, &eps) != napi_ok || napi_get_value_double(env, eps, &epsValue) != napi_ok)
      return throwError(env, std::string("config.") + key + " must be a number");
    *dst = (float)epsValue;
  }
  int mode = 0;
  bool keep = false;
  napi_get_value_int32(env, argv[1], &mode);
  napi_get_value_bool(env, argv[2], &keep);
  char err[512] = "";
  SanaDit *dit = sana_dit_create(&c, mode == 1 ? SANA_DIT_BF16 : SANA_DIT_INT8, keep, err, sizeof err);
  if (!dit) return throwError(env, err);
  napi_value out;
  NAPI_CALL(env, napi_create_external(env, dit, nullptr, nullptr, &out));
  return out;
}

std::string stringArg(napi_env env, napi_value v) {
  size_t len = 0;
  napi_get_value_string_utf8(env, v, nullptr, 0, &len);
  std::string s(len, '\0');
  napi_get_value_string_utf8(env, v, s.data(), len + 1, &len);
  return s;
}

/** setF32(handle, key, Float32Array) */
napi_value SetF32(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  const float *data;
  size_t n;
  if (!typedArray(env, argv[2], napi_float32_array, &data, &n)) return throwError(env, "setF32: values must be a Float32Array");
  char err[512] = "";
  if (sana_dit_set_f32(handle(env, argv[0]), stringArg(env, argv[1]).c_str(), data, n, err, sizeof err)) return throwError(env, err);
  return nullptr;
}

/** setInt8(handle, key, Int8Array values, Float32Array scales, rows, cols) */
napi_value SetInt8(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  const int8_t *values;
  const float *scales;
  size_t nv, ns;
  int rows = 0, cols = 0;
  napi_get_value_int32(env, argv[4], &rows);
  napi_get_value_int32(env, argv[5], &cols);
  if (!typedArray(env, argv[2], napi_int8_array, &values, &nv) || !typedArray(env, argv[3], napi_float32_array, &scales, &ns) ||
      nv != (size_t)rows * cols || ns != (size_t)rows)
    return throwError(env, "setInt8: expects Int8Array[rows·cols] values and Float32Array[rows] scales");
  char err[512] = "";
  if (sana_dit_set_int8(handle(env, argv[0]), stringArg(env, argv[1]).c_str(), values, scales, rows, cols, err, sizeof err))
    return throwError(env, err);
  return nullptr;
}

napi_value Finalize(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  char err[1024] = "";
  if (sana_dit_finalize(handle(env, argv[0]), err, sizeof err)) return throwError(env, err);
  return nullptr;
}

napi_value Destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  sana_dit_destroy(handle(env, argv[0]));
  return nullptr;
}

struct ForwardWork {
  napi_async_work work;
  napi_deferred deferred;
  SanaDit *dit;
  int reference;
  SanaDitInputs in{};
  std::vector<float> hidden, caption, mask, timestep, pos, output;
  int rc = 0;
  char err[1024] = "";
};

bool copyField(napi_env env, napi_value obj, const char *key, std::vector<float> &dst, bool optional = false) {
  napi_value v;
  bool has = false;
  napi_has_named_property(env, obj, key, &has);
  if (!has) return optional;
  napi_get_named_property(env, obj, key, &v);
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (optional && (t == napi_undefined || t == napi_null)) return true;
  const float *data;
  size_t n;
  if (!typedArray(env, v, napi_float32_array, &data, &n)) return false;
  dst.assign(data, data + n);
  return true;
}

/** forward(handle, {batch, height, width, captionLength, outputLength, hidden, caption, mask, timestep, posEmbed?}, reference) → Promise<Float32Array> */
napi_value Forward(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  auto *w = new ForwardWork();
  int outputLength = 0;
  w->dit = handle(env, argv[0]);
  napi_get_value_int32(env, argv[2], &w->reference);
  SanaDitInputs &in = w->in;
  if (!getInt(env, argv[1], "batch", &in.batch) || !getInt(env, argv[1], "height", &in.height) || !getInt(env, argv[1], "width", &in.width) ||
      !getInt(env, argv[1], "captionLength", &in.caption_length) || !getInt(env, argv[1], "outputLength", &outputLength) || !copyField(env, argv[1], "hidden", w->hidden) ||
      !copyField(env, argv[1], "caption", w->caption) || !copyField(env, argv[1], "mask", w->mask) ||
      !copyField(env, argv[1], "timestep", w->timestep) || !copyField(env, argv[1], "posEmbed", w->pos, true)) {
    delete w;
    return throwError(env, "forward: inputs need batch, height, width, captionLength, outputLength and Float32Array hidden, caption, mask, timestep");
  }
  w->output.resize(outputLength);
  in.hidden_states = w->hidden.data();
  in.encoder_hidden_states = w->caption.data();
  in.encoder_attention_mask = w->mask.data();
  in.timestep = w->timestep.data();
  in.pos_embed = w->pos.empty() ? nullptr : w->pos.data();
  napi_value promise, name;
  NAPI_CALL(env, napi_create_promise(env, &w->deferred, &promise));
  NAPI_CALL(env, napi_create_string_utf8(env, "sana_dit_forward", NAPI_AUTO_LENGTH, &name));
  NAPI_CALL(env, napi_create_async_work(
                     env, nullptr, name,
                     [](napi_env, void *data) {
                       auto *w = (ForwardWork *)data;
                       w->rc = sana_dit_forward(w->dit, &w->in, w->output.data(), w->reference, w->err, sizeof w->err);
                     },
                     [](napi_env env, napi_status, void *data) {
                       auto *w = (ForwardWork *)data;
                       if (w->rc) {
                         napi_value msg, error;
                         napi_create_string_utf8(env, w->err, NAPI_AUTO_LENGTH, &msg);
                         napi_create_error(env, nullptr, msg, &error);
                         napi_reject_deferred(env, w->deferred, error);
                       } else {
                         napi_value ab, arr;
                         void *dst;
                         napi_create_arraybuffer(env, w->output.size() * sizeof(float), &dst, &ab);
                         std::memcpy(dst, w->output.data(), w->output.size() * sizeof(float));
                         napi_create_typedarray(env, napi_float32_array, w->output.size(), ab, 0, &arr);
                         napi_resolve_deferred(env, w->deferred, arr);
                       }
                       napi_delete_async_work(env, w->work);
                       delete w;
                     },
                     w, &w->work));
  NAPI_CALL(env, napi_queue_async_work(env, w->work));
  return promise;
}

napi_value Init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"probe", nullptr, Probe, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"create", nullptr, Create, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setF32", nullptr, SetF32, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setInt8", nullptr, SetInt8, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"finalize", nullptr, Finalize, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"forward", nullptr, Forward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"destroy", nullptr, Destroy, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

}  // namespace

NAPI_MODULE(sana_kernels, Init)
