// jackpot_jax: the weight gradient of a 2-D convolution by oneDNN, as an XLA FFI handler.
//
// x: (N, H, W, C) activations, g: (N, Ho, Wo, O) output gradient, dw: (KH, KW, C, O) result;
// strides and explicit padding as attributes. oneDNN reads x and g in place (NHWC strides),
// chooses its own layout for the weight gradient and reorders it into HWIO. Primitives are
// built once per shape and cached. Built and loaded by jackpot_jax/onednn.py.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Primitives {
  dnnl_memory_desc_t src = nullptr, diff_dst = nullptr, diff_weights = nullptr;
  const_dnnl_memory_desc_t diff_weights_impl = nullptr;  // owned by the primitive descriptor
  dnnl_primitive_desc_t pd = nullptr;
  dnnl_primitive_t conv = nullptr, reorder = nullptr;
  std::string impl;
};

std::mutex cache_mutex;  // guards `cache` and `last_impl`
std::map<std::vector<int64_t>, std::unique_ptr<Primitives>>* cache =
    new std::map<std::vector<int64_t>, std::unique_ptr<Primitives>>();
std::string* last_impl = new std::string();  // oneDNN's kernel for the last shape built

ffi::Error Failed(const char* what, dnnl_status_t status) {
  return ffi::Error(ffi::ErrorCode::kInternal,
                    std::string("oneDNN ") + what + " failed with status " +
                        std::to_string(static_cast<int>(status)));
}

#define DNNL_OR_RETURN(call, what)                     \
  do {                                                 \
    dnnl_status_t status_ = (call);                    \
    if (status_ != dnnl_success) return Failed(what, status_); \
  } while (0)

dnnl_engine_t Engine() {
  static dnnl_engine_t engine = [] {
    dnnl_engine_t e = nullptr;
    if (dnnl_engine_create(&e, dnnl_cpu, 0) != dnnl_success) e = nullptr;
    return e;
  }();
  return engine;
}

// key: N, H, W, C, Ho, Wo, O, KH, KW, stride h, stride w, pad top, bottom, left, right
ffi::Error Build(const std::vector<int64_t>& k, Primitives* p) {
  const int64_t n = k[0], h = k[1], w = k[2], c = k[3], ho = k[4], wo = k[5], o = k[6],
                kh = k[7], kw = k[8];
  dnnl_dims_t src_dims = {n, c, h, w}, src_strides = {h * w * c, 1, w * c, c};
  dnnl_dims_t dst_dims = {n, o, ho, wo}, dst_strides = {ho * wo * o, 1, wo * o, o};
  dnnl_dims_t w_dims = {o, c, kh, kw}, w_strides = {1, o, kw * c * o, c * o};  // HWIO
  DNNL_OR_RETURN(dnnl_memory_desc_create_with_strides(&p->src, 4, src_dims, dnnl_f32,
                                                      src_strides), "src descriptor");
  DNNL_OR_RETURN(dnnl_memory_desc_create_with_strides(&p->diff_dst, 4, dst_dims, dnnl_f32,
                                                      dst_strides), "diff_dst descriptor");
  DNNL_OR_RETURN(dnnl_memory_desc_create_with_strides(&p->diff_weights, 4, w_dims, dnnl_f32,
                                                      w_strides), "weights descriptor");
  dnnl_memory_desc_t any_weights = nullptr;
  DNNL_OR_RETURN(dnnl_memory_desc_create_with_tag(&any_weights, 4, w_dims, dnnl_f32,
                                                  dnnl_format_tag_any), "weights descriptor");
  dnnl_dims_t strides = {k[9], k[10]}, dilates = {0, 0};
  dnnl_dims_t pad_l = {k[11], k[13]}, pad_r = {k[12], k[14]};
  dnnl_primitive_desc_t fwd = nullptr;
  DNNL_OR_RETURN(dnnl_convolution_forward_primitive_desc_create(
                     &fwd, Engine(), dnnl_forward_training, dnnl_convolution_direct, p->src,
                     any_weights, nullptr, p->diff_dst, strides, dilates, pad_l, pad_r, nullptr),
                 "forward hint");
  dnnl_status_t status = dnnl_convolution_backward_weights_primitive_desc_create(
      &p->pd, Engine(), dnnl_convolution_direct, p->src, any_weights, nullptr, p->diff_dst,
      strides, dilates, pad_l, pad_r, fwd, nullptr);
  dnnl_primitive_desc_destroy(fwd);
  dnnl_memory_desc_destroy(any_weights);
  if (status != dnnl_success) return Failed("backward-weights descriptor", status);
  const char* impl = nullptr;
  if (dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success &&
      impl != nullptr)
    p->impl = impl;
  p->diff_weights_impl = dnnl_primitive_desc_query_md(p->pd, dnnl_query_diff_weights_md, 0);
  DNNL_OR_RETURN(dnnl_primitive_create(&p->conv, p->pd), "backward-weights primitive");
  if (!dnnl_memory_desc_equal(p->diff_weights_impl, p->diff_weights)) {
    dnnl_primitive_desc_t rpd = nullptr;
    DNNL_OR_RETURN(dnnl_reorder_primitive_desc_create(&rpd, p->diff_weights_impl, Engine(),
                                                      p->diff_weights, Engine(), nullptr),
                   "reorder descriptor");
    status = dnnl_primitive_create(&p->reorder, rpd);
    dnnl_primitive_desc_destroy(rpd);
    if (status != dnnl_success) return Failed("reorder primitive", status);
  }
  return ffi::Error::Success();
}

ffi::Error WeightGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t stride_h, int64_t stride_w,
                      int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                      int64_t pad_right) {
  if (Engine() == nullptr)
    return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN: no CPU engine");
  auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4 || gd[0] != xd[0] ||
      wd[2] != xd[3] || wd[3] != gd[3])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn weight gradient: expected x (N,H,W,C), g (N,Ho,Wo,O), "
                      "dw (KH,KW,C,O)");
  std::vector<int64_t> key = {xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3], wd[0], wd[1],
                              stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right};
  Primitives* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache->find(key);
    if (it == cache->end()) {
      auto built = std::make_unique<Primitives>();
      ffi::Error error = Build(key, built.get());
      if (error.failure()) return error;
      *last_impl = built->impl;
      it = cache->emplace(key, std::move(built)).first;
    }
    p = it->second.get();
  }
  dnnl_stream_t stream = nullptr;
  DNNL_OR_RETURN(dnnl_stream_create(&stream, Engine(), dnnl_stream_default_flags), "stream");
  dnnl_memory_t src = nullptr, diff_dst = nullptr, out = nullptr, tmp = nullptr;
  dnnl_status_t status = dnnl_memory_create(&src, p->src, Engine(), x.typed_data());
  if (status == dnnl_success)
    status = dnnl_memory_create(&diff_dst, p->diff_dst, Engine(), g.typed_data());
  if (status == dnnl_success)
    status = dnnl_memory_create(&out, p->diff_weights, Engine(), dw->typed_data());
  if (status == dnnl_success && p->reorder != nullptr)
    status = dnnl_memory_create(&tmp, p->diff_weights_impl, Engine(), DNNL_MEMORY_ALLOCATE);
  if (status == dnnl_success) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                               {DNNL_ARG_DIFF_WEIGHTS, tmp != nullptr ? tmp : out}};
    status = dnnl_primitive_execute(p->conv, stream, 3, args);
  }
  if (status == dnnl_success && p->reorder != nullptr) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, tmp}, {DNNL_ARG_TO, out}};
    status = dnnl_primitive_execute(p->reorder, stream, 2, args);
  }
  if (status == dnnl_success) status = dnnl_stream_wait(stream);
  for (dnnl_memory_t m : {src, diff_dst, out, tmp})
    if (m != nullptr) dnnl_memory_destroy(m);
  dnnl_stream_destroy(stream);
  if (status != dnnl_success) return Failed("backward-weights execution", status);
  return ffi::Error::Success();
}

}  // namespace

// The implementation oneDNN chose for the last shape built ("" if none): for logs and tests.
extern "C" const char* JjOnednnLastImpl() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return last_impl->c_str();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JjOnednnWeightGrad, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right"));
