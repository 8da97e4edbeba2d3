// effect-deq native kernels: oneDNN convolutions and matmul on views of the tfjs wasm heap.
//
// The JS side (src/internal/tensor/native.ts) passes Float32Arrays that alias the wasm backend's
// WebAssembly.Memory, so oneDNN reads and writes tfjs tensors in place. Activations and outputs stay in the
// layouts tfjs uses (NHWC, HWIO filters, row-major matrices); only the weights are reordered into the layout
// oneDNN prefers, per call, into a buffer owned by the cached plan (cheap next to the convolution).
//
// Context-aware (NAPI_MODULE_INIT + instance data): each worker_thread that loads the addon gets its own
// engine, stream, plan cache and OpenMP thread count.

#define NAPI_VERSION 8
#include <node_api.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

enum Kind : int32_t { kConv = 0, kConvInput = 1, kConvFilter = 2, kMatMul = 3 };

// conv params: n h w ci kh kw co oh ow sh sw pt pl pb pr; matmul params: batchA batchB m k n transA transB
constexpr size_t kConvParams = 15;
constexpr size_t kMatMulParams = 7;
constexpr size_t kMaxPlans = 512;
// below this many multiply-adds a call runs on one thread: waking a second (passively waiting) OpenMP thread
// costs about 0.1 ms, more than it saves on a small kernel (measured by bench/native.ts)
constexpr double kSerialWork = 8.0 * 1024 * 1024;

// One compiled kernel: the primitive, the user-layout memories whose handles are swapped per call, and the
// weights in oneDNN's preferred layout with the reorder that fills (or drains) them.
struct Plan {
  dnnl::primitive main;
  int argA = 0, argB = 0, argC = 0;
  memory a, b, c;
  memory inner, scratch;
  dnnl::primitive reorder;
  memory reorderScratch;
  bool reorderIn = false, reorderOut = false;
  size_t sizeA = 0, sizeB = 0, sizeC = 0;
  // the OpenMP team size the primitive was created for, and runs with
  int team = 1;
  std::string impl;
};

struct Env {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::unordered_map<std::string, std::unique_ptr<Plan>> plans;
  int threads = 1;
};

dnnl::primitive_attr userScratch() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

memory scratchFor(const dnnl::primitive_desc_base& pd, const dnnl::engine& e) {
  memory::desc d = pd.scratchpad_desc();
  return d.get_size() > 0 ? memory(d, e) : memory();
}

// A reorder between the user layout `from` and `to`, with its own scratchpad.
void addReorder(Plan& p, const dnnl::engine& e, const memory::desc& from, const memory::desc& to) {
  dnnl::reorder::primitive_desc pd(e, from, e, to, userScratch());
  p.reorder = dnnl::reorder(pd);
  p.reorderScratch = scratchFor(pd, e);
}

struct ConvDims {
  memory::dim n, h, w, ci, kh, kw, co, oh, ow, sh, sw, pt, pl, pb, pr;
};

ConvDims convDims(const int32_t* q) {
  return {q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8], q[9], q[10], q[11], q[12], q[13], q[14]};
}

std::unique_ptr<Plan> convPlan(Env& env, Kind kind, const int32_t* q) {
  const ConvDims d = convDims(q);
  const dnnl::engine& e = env.engine;
  // logical dims are NCHW / OIHW whatever the layout; the tags say how tfjs stores them
  memory::desc src({d.n, d.ci, d.h, d.w}, dt::f32, tag::nhwc);
  memory::desc dst({d.n, d.co, d.oh, d.ow}, dt::f32, tag::nhwc);
  memory::desc userW({d.co, d.ci, d.kh, d.kw}, dt::f32, tag::hwio);
  memory::desc anyW({d.co, d.ci, d.kh, d.kw}, dt::f32, tag::any);
  memory::dims strides{d.sh, d.sw}, padL{d.pt, d.pl}, padR{d.pb, d.pr};
  auto attr = userScratch();
  dnnl::convolution_forward::desc fwd(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                      src, anyW, dst, strides, padL, padR);
  dnnl::convolution_forward::primitive_desc fwdPd(fwd, attr, e);

  auto p = std::make_unique<Plan>();
  const size_t sx = d.n * d.h * d.w * d.ci, sy = d.n * d.oh * d.ow * d.co, sw = d.kh * d.kw * d.ci * d.co;
  if (kind == kConv) {
    p->main = dnnl::convolution_forward(fwdPd);
    p->impl = fwdPd.impl_info_str();
    p->scratch = scratchFor(fwdPd, e);
    p->argA = DNNL_ARG_SRC, p->argB = DNNL_ARG_WEIGHTS, p->argC = DNNL_ARG_DST;
    p->a = memory(src, e, DNNL_MEMORY_NONE), p->b = memory(userW, e, DNNL_MEMORY_NONE);
    p->c = memory(dst, e, DNNL_MEMORY_NONE);
    p->sizeA = sx, p->sizeB = sw, p->sizeC = sy;
    if (fwdPd.weights_desc() != userW) {
      p->inner = memory(fwdPd.weights_desc(), e);
      addReorder(*p, e, userW, fwdPd.weights_desc());
      p->reorderIn = true;
    }
  } else if (kind == kConvInput) {
    dnnl::convolution_backward_data::desc bwd(dnnl::algorithm::convolution_direct, src, anyW, dst, strides, padL,
                                              padR);
    dnnl::convolution_backward_data::primitive_desc pd(bwd, attr, e, fwdPd);
    p->main = dnnl::convolution_backward_data(pd);
    p->impl = pd.impl_info_str();
    p->scratch = scratchFor(pd, e);
    p->argA = DNNL_ARG_DIFF_DST, p->argB = DNNL_ARG_WEIGHTS, p->argC = DNNL_ARG_DIFF_SRC;
    p->a = memory(dst, e, DNNL_MEMORY_NONE), p->b = memory(userW, e, DNNL_MEMORY_NONE);
    p->c = memory(src, e, DNNL_MEMORY_NONE);
    p->sizeA = sy, p->sizeB = sw, p->sizeC = sx;
    if (pd.weights_desc() != userW) {
      p->inner = memory(pd.weights_desc(), e);
      addReorder(*p, e, userW, pd.weights_desc());
      p->reorderIn = true;
    }
  } else {
    dnnl::convolution_backward_weights::desc bwd(dnnl::algorithm::convolution_direct, src, anyW, dst, strides,
                                                 padL, padR);
    dnnl::convolution_backward_weights::primitive_desc pd(bwd, attr, e, fwdPd);
    p->main = dnnl::convolution_backward_weights(pd);
    p->impl = pd.impl_info_str();
    p->scratch = scratchFor(pd, e);
    p->argA = DNNL_ARG_SRC, p->argB = DNNL_ARG_DIFF_DST, p->argC = DNNL_ARG_DIFF_WEIGHTS;
    p->a = memory(src, e, DNNL_MEMORY_NONE), p->b = memory(dst, e, DNNL_MEMORY_NONE);
    p->c = memory(userW, e, DNNL_MEMORY_NONE);
    p->sizeA = sx, p->sizeB = sy, p->sizeC = sw;
    if (pd.diff_weights_desc() != userW) {
      p->inner = memory(pd.diff_weights_desc(), e);
      addReorder(*p, e, pd.diff_weights_desc(), userW);
      p->reorderOut = true;
    }
  }
  return p;
}

std::unique_ptr<Plan> matMulPlan(Env& env, const int32_t* q) {
  const memory::dim ba = q[0], bb = q[1], m = q[2], k = q[3], n = q[4];
  const bool ta = q[5] != 0, tb = q[6] != 0;
  const memory::dim batch = ba > bb ? ba : bb;
  const dnnl::engine& e = env.engine;
  // a transposed operand is the same buffer read with swapped strides; a batch of 1 broadcasts
  memory::desc a({ba, m, k}, dt::f32, ta ? memory::dims{m * k, 1, m} : memory::dims{m * k, k, 1});
  memory::desc b({bb, k, n}, dt::f32, tb ? memory::dims{k * n, 1, k} : memory::dims{k * n, n, 1});
  memory::desc c({batch, m, n}, dt::f32, memory::dims{m * n, n, 1});
  dnnl::matmul::desc desc(a, b, c);
  dnnl::matmul::primitive_desc pd(desc, userScratch(), e);
  auto p = std::make_unique<Plan>();
  p->main = dnnl::matmul(pd);
  p->impl = pd.impl_info_str();
  p->scratch = scratchFor(pd, e);
  p->argA = DNNL_ARG_SRC, p->argB = DNNL_ARG_WEIGHTS, p->argC = DNNL_ARG_DST;
  p->a = memory(a, e, DNNL_MEMORY_NONE), p->b = memory(b, e, DNNL_MEMORY_NONE);
  p->c = memory(c, e, DNNL_MEMORY_NONE);
  p->sizeA = ba * m * k, p->sizeB = bb * k * n, p->sizeC = batch * m * n;
  return p;
}

// multiply-adds of one call: N*OH*OW*Co*Ci*KH*KW for the three convolutions, batch*M*K*N for matmul
double workOf(Kind kind, const int32_t* q) {
  if (kind == kMatMul) return double(q[0] > q[1] ? q[0] : q[1]) * q[2] * q[3] * q[4];
  return double(q[0]) * q[7] * q[8] * q[6] * q[3] * q[4] * q[5];
}

// Runs a scope with this thread's OpenMP team size set to `team`, then restores the configured one.
struct TeamScope {
  Env& env;
  bool changed;
  TeamScope(Env& e, int team) : env(e), changed(team != e.threads) {
    if (changed) omp_set_num_threads(team);
  }
  ~TeamScope() {
    if (changed) omp_set_num_threads(env.threads);
  }
};

Plan& planFor(Env& env, Kind kind, const int32_t* q, size_t count) {
  std::string key(reinterpret_cast<const char*>(q), count * sizeof(int32_t));
  key.push_back(static_cast<char>(kind));
  auto it = env.plans.find(key);
  if (it != env.plans.end()) return *it->second;
  if (env.plans.size() >= kMaxPlans) env.plans.clear();
  const int team = workOf(kind, q) < kSerialWork ? 1 : env.threads;
  TeamScope scope(env, team);
  auto plan = kind == kMatMul ? matMulPlan(env, q) : convPlan(env, kind, q);
  plan->team = team;
  Plan& ref = *plan;
  env.plans.emplace(std::move(key), std::move(plan));
  return ref;
}

void execute(Env& env, Plan& p, float* a, float* b, float* c) {
  TeamScope scope(env, p.team);
  p.a.set_data_handle(a);
  p.b.set_data_handle(b);
  p.c.set_data_handle(c);
  std::unordered_map<int, memory> args{{p.argA, p.a}, {p.argB, p.b}, {p.argC, p.c}};
  if (p.scratch) args.emplace(DNNL_ARG_SCRATCHPAD, p.scratch);
  std::unordered_map<int, memory> reorderArgs;
  if (p.reorderScratch) reorderArgs.emplace(DNNL_ARG_SCRATCHPAD, p.reorderScratch);
  if (p.reorderIn) {
    reorderArgs.emplace(DNNL_ARG_FROM, p.b);
    reorderArgs.emplace(DNNL_ARG_TO, p.inner);
    p.reorder.execute(env.stream, reorderArgs);
    args[p.argB] = p.inner;
  }
  if (p.reorderOut) args[p.argC] = p.inner;
  p.main.execute(env.stream, args);
  if (p.reorderOut) {
    reorderArgs.emplace(DNNL_ARG_FROM, p.inner);
    reorderArgs.emplace(DNNL_ARG_TO, p.c);
    p.reorder.execute(env.stream, reorderArgs);
  }
  env.stream.wait();
}

// --- N-API glue ---------------------------------------------------------------------------------------------

napi_value throwError(napi_env env, const char* message) {
  napi_throw_error(env, "DEQ_NATIVE", message);
  return nullptr;
}

Env* envOf(napi_env env) {
  void* data = nullptr;
  napi_get_instance_data(env, &data);
  return static_cast<Env*>(data);
}

bool typedArray(napi_env env, napi_value v, napi_typedarray_type want, void** data, size_t* length) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, length, data, &buffer, &offset) != napi_ok) return false;
  return type == want;
}

bool validParams(Kind kind, const int32_t* q) {
  if (kind == kMatMul) {
    for (size_t i = 0; i < 5; i++) if (q[i] < 1) return false;
    return true;
  }
  for (size_t i = 0; i < 11; i++) if (q[i] < 1) return false;
  // the trailing pads may be negative (rows the last window never reaches), down to 1 - stride
  return q[11] >= 0 && q[12] >= 0 && q[13] > -q[9] && q[14] > -q[10];
}

bool readParams(napi_env env, napi_value kindV, napi_value paramsV, Kind* kind, const int32_t** q) {
  int32_t k = -1;
  napi_get_value_int32(env, kindV, &k);
  if (k < kConv || k > kMatMul) return false;
  void* qv = nullptr;
  size_t qn = 0;
  if (!typedArray(env, paramsV, napi_int32_array, &qv, &qn)) return false;
  if (qn != (k == kMatMul ? kMatMulParams : kConvParams)) return false;
  *kind = static_cast<Kind>(k);
  *q = static_cast<const int32_t*>(qv);
  return validParams(*kind, *q);
}

// run(kind, params: Int32Array, a: Float32Array, b: Float32Array, c: Float32Array): c = kernel(a, b)
napi_value Run(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc != 5) return throwError(env, "run(kind, params, a, b, c): 5 arguments expected");
  Kind kind;
  const int32_t* q;
  if (!readParams(env, argv[0], argv[1], &kind, &q)) {
    return throwError(env, "run: a known kernel kind and an Int32Array of positive sizes expected");
  }
  void* ptr[3];
  size_t len[3];
  for (int i = 0; i < 3; i++) {
    if (!typedArray(env, argv[2 + i], napi_float32_array, &ptr[i], &len[i])) {
      return throwError(env, "run: a, b, c must be Float32Arrays");
    }
  }
  Env* state = envOf(env);
  try {
    Plan& p = planFor(*state, kind, q, kind == kMatMul ? kMatMulParams : kConvParams);
    // never touch memory outside the views tfjs gave us
    if (len[0] != p.sizeA || len[1] != p.sizeB || len[2] != p.sizeC) {
      return throwError(env, "run: a view's length does not match the shapes in params");
    }
    execute(*state, p, static_cast<float*>(ptr[0]), static_cast<float*>(ptr[1]), static_cast<float*>(ptr[2]));
    return nullptr;
  } catch (const dnnl::error& e) {
    std::string m = std::string("oneDNN: ") + e.what();
    return throwError(env, m.c_str());
  } catch (const std::exception& e) {
    return throwError(env, e.what());
  }
}

// implOf(kind, params): the name of the oneDNN implementation chosen for that kernel (e.g. "jit:avx512_core")
napi_value ImplOf(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  Kind kind;
  const int32_t* q;
  if (argc != 2 || !readParams(env, argv[0], argv[1], &kind, &q)) {
    return throwError(env, "implOf: a known kernel kind and an Int32Array of positive sizes expected");
  }
  try {
    Plan& p = planFor(*envOf(env), kind, q, kind == kMatMul ? kMatMulParams : kConvParams);
    napi_value out;
    napi_create_string_utf8(env, p.impl.c_str(), p.impl.size(), &out);
    return out;
  } catch (const std::exception& e) {
    return throwError(env, e.what());
  }
}

// setThreads(n): the OpenMP team size of this thread's calls (each worker_thread has its own)
napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  int32_t n = 0;
  if (argc != 1 || napi_get_value_int32(env, argv[0], &n) != napi_ok || n < 1) {
    return throwError(env, "setThreads(n): a positive integer expected");
  }
  Env* state = envOf(env);
  omp_set_num_threads(n);
  // primitives are compiled for a team size
  if (state->threads != n) state->plans.clear();
  state->threads = n;
  napi_value out;
  napi_create_int32(env, omp_get_max_threads(), &out);
  return out;
}

napi_value Threads(napi_env env, napi_callback_info) {
  napi_value out;
  napi_create_int32(env, omp_get_max_threads(), &out);
  return out;
}

napi_value PlanCount(napi_env env, napi_callback_info) {
  napi_value out;
  napi_create_uint32(env, static_cast<uint32_t>(envOf(env)->plans.size()), &out);
  return out;
}

napi_value Version(napi_env env, napi_callback_info) {
  const dnnl_version_t* v = dnnl_version();
  std::string s = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  napi_value out;
  napi_create_string_utf8(env, s.c_str(), s.size(), &out);
  return out;
}

void finalizeEnv(napi_env, void* data, void*) { delete static_cast<Env*>(data); }

}  // namespace

NAPI_MODULE_INIT() {
  Env* state = nullptr;
  try {
    state = new Env();
  } catch (const std::exception& e) {
    napi_throw_error(env, "DEQ_NATIVE", e.what());
    return nullptr;
  }
  state->threads = omp_get_max_threads();
  napi_set_instance_data(env, state, finalizeEnv, nullptr);
  napi_property_descriptor props[] = {
      {"run", nullptr, Run, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"implOf", nullptr, ImplOf, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setThreads", nullptr, SetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"threads", nullptr, Threads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"planCount", nullptr, PlanCount, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"version", nullptr, Version, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
