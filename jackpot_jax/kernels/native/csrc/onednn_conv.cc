// jackpot_jax: 2-D convolutions by oneDNN, as XLA FFI handlers (forward, input gradient,
// weight gradient).
//
// Layouts: activations x (N, H, W, C) and output-side tensors y, g (N, Ho, Wo, O) are NHWC,
// the kernel w (KH, KW, C, O) is HWIO; strides and explicit padding are attributes. oneDNN
// reads and writes the activations in place (NHWC strides); the kernel is reordered into the
// layout oneDNN chose for it (forward, input gradient) or from it (weight gradient). The
// primitives are built once per shape and cached. Built and loaded by
// jackpot_jax/kernels/native/onednn.py, which refuses a oneDNN library older than the headers
// this file was compiled against (JjOnednnHeaderVersion against JjOnednnLibraryVersion).
//
// XLA calls a handler from any of its threads, several at once. oneDNN's default (library)
// scratchpad is shared by the primitives of the thread that created them, so the primitives
// here take a user scratchpad instead: a buffer per calling thread, grown on demand and
// reused (oneDNN: user scratchpads make execution thread-safe as long as no two concurrent
// executions share one).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.h"
#include "oneapi/dnnl/dnnl_version.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Kind : int64_t { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };

struct Primitives {
  // The user's layouts: x (NHWC), y or g (NHWC), w (HWIO).
  dnnl_memory_desc_t x = nullptr, y = nullptr, w = nullptr;
  const_dnnl_memory_desc_t w_impl = nullptr;  // oneDNN's kernel layout, owned by `pd`
  dnnl_primitive_desc_t pd = nullptr;
  dnnl_primitive_t conv = nullptr, reorder = nullptr;  // reorder: w <-> w_impl, if they differ
  const_dnnl_memory_desc_t scratch = nullptr, reorder_scratch = nullptr;  // owned by the pds
  dnnl_primitive_desc_t reorder_pd = nullptr;
  size_t scratch_bytes = 0;  // the larger of the two scratchpads
  std::string impl;

  Primitives() = default;
  Primitives(const Primitives&) = delete;
  Primitives& operator=(const Primitives&) = delete;
  ~Primitives() {  // cached ones live as long as the process; this frees a failed build's
    for (dnnl_primitive_t prim : {conv, reorder})
      if (prim != nullptr) dnnl_primitive_destroy(prim);
    for (dnnl_primitive_desc_t desc : {pd, reorder_pd})
      if (desc != nullptr) dnnl_primitive_desc_destroy(desc);
    for (dnnl_memory_desc_t md : {x, y, w})
      if (md != nullptr) dnnl_memory_desc_destroy(md);
  }
};

// Key: kind, N, H, W, C, Ho, Wo, O, KH, KW, stride h, stride w, pad top, bottom, left, right.
using Key = std::vector<int64_t>;

std::mutex cache_mutex;  // guards `cache` and `last_impl`
using Cache = std::map<Key, std::unique_ptr<Primitives>>;
Cache* cache = new Cache();  // never destroyed: handlers may run until the process ends
std::string* last_impl = new std::string();  // oneDNN's kernel for the last primitive built

ffi::Error Failed(const char* what, dnnl_status_t status) {
  return ffi::Error(ffi::ErrorCode::kInternal,
                    std::string("oneDNN ") + what + " failed with status " +
                        std::to_string(static_cast<int>(status)));
}

#define DNNL_OR_RETURN(call, what)                             \
  do {                                                         \
    dnnl_status_t status_ = (call);                            \
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

// The calling thread's scratchpad, at least `bytes` long (nullptr if it cannot be had).
void* ThreadScratchpad(size_t bytes) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffer;
  if (bytes > buffer.size) {
    std::free(buffer.data);
    size_t size = (bytes + 4095) / 4096 * 4096;
    buffer.data = std::aligned_alloc(4096, size);
    buffer.size = buffer.data != nullptr ? size : 0;
  }
  return buffer.data;
}

ffi::Error Build(const Key& k, Primitives* p) {
  const int64_t kind = k[0], n = k[1], h = k[2], w = k[3], c = k[4], ho = k[5], wo = k[6],
                o = k[7], kh = k[8], kw = k[9];
  dnnl_dims_t x_dims = {n, c, h, w}, x_strides = {h * w * c, 1, w * c, c};
  dnnl_dims_t y_dims = {n, o, ho, wo}, y_strides = {ho * wo * o, 1, wo * o, o};
  dnnl_dims_t w_dims = {o, c, kh, kw}, w_strides = {1, o, kw * c * o, c * o};  // HWIO
  DNNL_OR_RETURN(dnnl_memory_desc_create_with_strides(&p->x, 4, x_dims, dnnl_f32, x_strides),
                 "activation descriptor");
  DNNL_OR_RETURN(dnnl_memory_desc_create_with_strides(&p->y, 4, y_dims, dnnl_f32, y_strides),
                 "output descriptor");
  DNNL_OR_RETURN(dnnl_memory_desc_create_with_strides(&p->w, 4, w_dims, dnnl_f32, w_strides),
                 "kernel descriptor");
  dnnl_memory_desc_t any_w = nullptr;
  DNNL_OR_RETURN(dnnl_memory_desc_create_with_tag(&any_w, 4, w_dims, dnnl_f32,
                                                  dnnl_format_tag_any), "kernel descriptor");
  dnnl_dims_t strides = {k[10], k[11]}, dilates = {0, 0};
  dnnl_dims_t pad_l = {k[12], k[14]}, pad_r = {k[13], k[15]};
  dnnl_primitive_attr_t attr = nullptr;
  DNNL_OR_RETURN(dnnl_primitive_attr_create(&attr), "attributes");
  dnnl_status_t status =
      dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
  // The forward descriptor is the primitive itself, or the hint the backward ones require.
  dnnl_primitive_desc_t fwd = nullptr;
  if (status == dnnl_success)
    status = dnnl_convolution_forward_primitive_desc_create(
        &fwd, Engine(), dnnl_forward_training, dnnl_convolution_direct, p->x, any_w, nullptr,
        p->y, strides, dilates, pad_l, pad_r, attr);
  if (status == dnnl_success && kind == kForward) {
    p->pd = fwd;
    fwd = nullptr;
  } else if (status == dnnl_success && kind == kInputGrad) {
    status = dnnl_convolution_backward_data_primitive_desc_create(
        &p->pd, Engine(), dnnl_convolution_direct, p->x, any_w, p->y, strides, dilates, pad_l,
        pad_r, fwd, attr);
  } else if (status == dnnl_success) {
    status = dnnl_convolution_backward_weights_primitive_desc_create(
        &p->pd, Engine(), dnnl_convolution_direct, p->x, any_w, nullptr, p->y, strides,
        dilates, pad_l, pad_r, fwd, attr);
  }
  if (fwd != nullptr) dnnl_primitive_desc_destroy(fwd);
  dnnl_memory_desc_destroy(any_w);
  if (status != dnnl_success) {
    dnnl_primitive_attr_destroy(attr);
    return Failed("convolution descriptor", status);
  }
  const char* impl = nullptr;
  if (dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success &&
      impl != nullptr)
    p->impl = impl;
  p->w_impl = dnnl_primitive_desc_query_md(
      p->pd, kind == kWeightGrad ? dnnl_query_diff_weights_md : dnnl_query_weights_md, 0);
  p->scratch = dnnl_primitive_desc_query_md(p->pd, dnnl_query_scratchpad_md, 0);
  p->scratch_bytes = dnnl_memory_desc_get_size(p->scratch);
  status = dnnl_primitive_create(&p->conv, p->pd);
  if (status == dnnl_success && !dnnl_memory_desc_equal(p->w_impl, p->w)) {
    const_dnnl_memory_desc_t from = kind == kWeightGrad ? p->w_impl : p->w;
    const_dnnl_memory_desc_t to = kind == kWeightGrad ? p->w : p->w_impl;
    status = dnnl_reorder_primitive_desc_create(&p->reorder_pd, from, Engine(), to, Engine(),
                                                attr);
    if (status == dnnl_success) status = dnnl_primitive_create(&p->reorder, p->reorder_pd);
    if (status == dnnl_success) {
      p->reorder_scratch =
          dnnl_primitive_desc_query_md(p->reorder_pd, dnnl_query_scratchpad_md, 0);
      size_t bytes = dnnl_memory_desc_get_size(p->reorder_scratch);
      if (bytes > p->scratch_bytes) p->scratch_bytes = bytes;
    }
  }
  dnnl_primitive_attr_destroy(attr);
  if (status != dnnl_success) return Failed("convolution or reorder primitive", status);
  return ffi::Error::Success();
}

// Runs the convolution of `kind`. x, y: the NHWC activation and output-side buffers, read or
// written according to kind; w: the HWIO kernel (read, or written by the weight gradient).
ffi::Error Run(Kind kind, void* x, void* y, void* w, ffi::Span<const int64_t> xd,
               ffi::Span<const int64_t> yd, ffi::Span<const int64_t> wd, int64_t stride_h,
               int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
               int64_t pad_right) {
  if (Engine() == nullptr)
    return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN: no CPU engine");
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 4 || yd[0] != xd[0] ||
      wd[2] != xd[3] || wd[3] != yd[3])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn convolution: expected activations (N,H,W,C), outputs "
                      "(N,Ho,Wo,O) and a kernel (KH,KW,C,O)");
  Key key = {kind,  xd[0],    xd[1],    xd[2],      xd[3],   yd[1],    yd[2],    yd[3],
             wd[0], wd[1], stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right};
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
  void* scratch = nullptr;
  if (p->scratch_bytes > 0 && (scratch = ThreadScratchpad(p->scratch_bytes)) == nullptr)
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "oneDNN: cannot allocate a " + std::to_string(p->scratch_bytes) +
                          "-byte scratchpad");
  dnnl_stream_t stream = nullptr;
  DNNL_OR_RETURN(dnnl_stream_create(&stream, Engine(), dnnl_stream_default_flags), "stream");
  dnnl_memory_t mx = nullptr, my = nullptr, mw = nullptr, mw_impl = nullptr;
  dnnl_memory_t conv_scratch = nullptr, reorder_scratch = nullptr;  // both on `scratch`
  dnnl_status_t status = dnnl_memory_create(&mx, p->x, Engine(), x);
  if (status == dnnl_success) status = dnnl_memory_create(&my, p->y, Engine(), y);
  if (status == dnnl_success) status = dnnl_memory_create(&mw, p->w, Engine(), w);
  if (status == dnnl_success && p->reorder != nullptr)
    status = dnnl_memory_create(&mw_impl, p->w_impl, Engine(), DNNL_MEMORY_ALLOCATE);
  if (status == dnnl_success)
    status = dnnl_memory_create(&conv_scratch, p->scratch, Engine(), scratch);
  if (status == dnnl_success && p->reorder != nullptr)
    status = dnnl_memory_create(&reorder_scratch, p->reorder_scratch, Engine(), scratch);
  dnnl_memory_t kernel = mw_impl != nullptr ? mw_impl : mw;
  if (status == dnnl_success && p->reorder != nullptr && kind != kWeightGrad) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, mw}, {DNNL_ARG_TO, mw_impl},
                               {DNNL_ARG_SCRATCHPAD, reorder_scratch}};
    status = dnnl_primitive_execute(p->reorder, stream, 3, args);
  }
  if (status == dnnl_success) {
    dnnl_exec_arg_t args[4];
    args[3] = {DNNL_ARG_SCRATCHPAD, conv_scratch};
    if (kind == kForward) {
      args[0] = {DNNL_ARG_SRC, mx}, args[1] = {DNNL_ARG_WEIGHTS, kernel};
      args[2] = {DNNL_ARG_DST, my};
    } else if (kind == kInputGrad) {
      args[0] = {DNNL_ARG_DIFF_DST, my}, args[1] = {DNNL_ARG_WEIGHTS, kernel};
      args[2] = {DNNL_ARG_DIFF_SRC, mx};
    } else {
      args[0] = {DNNL_ARG_SRC, mx}, args[1] = {DNNL_ARG_DIFF_DST, my};
      args[2] = {DNNL_ARG_DIFF_WEIGHTS, kernel};
    }
    status = dnnl_primitive_execute(p->conv, stream, 4, args);
  }
  if (status == dnnl_success && p->reorder != nullptr && kind == kWeightGrad) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, mw_impl}, {DNNL_ARG_TO, mw},
                               {DNNL_ARG_SCRATCHPAD, reorder_scratch}};
    status = dnnl_primitive_execute(p->reorder, stream, 3, args);
  }
  if (status == dnnl_success) status = dnnl_stream_wait(stream);
  for (dnnl_memory_t m : {mx, my, mw, mw_impl, conv_scratch, reorder_scratch})
    if (m != nullptr) dnnl_memory_destroy(m);
  dnnl_stream_destroy(stream);
  if (status != dnnl_success) return Failed("convolution execution", status);
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 w, F32Out y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr) {
  return Run(kForward, x.untyped_data(), y->untyped_data(), w.untyped_data(), x.dimensions(),
             y->dimensions(), w.dimensions(), sh, sw, pt, pb, pl, pr);
}

ffi::Error InputGrad(F32 g, F32 w, F32Out dx, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                     int64_t pl, int64_t pr) {
  return Run(kInputGrad, dx->untyped_data(), g.untyped_data(), w.untyped_data(),
             dx->dimensions(), g.dimensions(), w.dimensions(), sh, sw, pt, pb, pl, pr);
}

ffi::Error WeightGrad(F32 x, F32 g, F32Out dw, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr) {
  return Run(kWeightGrad, x.untyped_data(), g.untyped_data(), dw->untyped_data(),
             x.dimensions(), g.dimensions(), dw->dimensions(), sh, sw, pt, pb, pl, pr);
}

}  // namespace

// The implementation oneDNN chose for the last primitive built ("" if none), for logs and
// tests: copied into buf (at most size - 1 characters and a NUL) under the lock, since another
// thread may build a primitive and replace it at any time. Returns its whole length (a larger
// buffer is needed when that is >= size).
extern "C" size_t JjOnednnLastImpl(char* buf, size_t size) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  const size_t length = last_impl->size();
  if (buf != nullptr && size > 0) {
    const size_t n = length < size - 1 ? length : size - 1;
    std::memcpy(buf, last_impl->data(), n);
    buf[n] = '\0';
  }
  return length;
}

// The oneDNN version of the headers this file was compiled against.
extern "C" void JjOnednnHeaderVersion(int* major, int* minor, int* patch) {
  *major = DNNL_VERSION_MAJOR;
  *minor = DNNL_VERSION_MINOR;
  *patch = DNNL_VERSION_PATCH;
}

// The version of the oneDNN library loaded with this one (the one its calls go to).
extern "C" void JjOnednnLibraryVersion(int* major, int* minor, int* patch) {
  const dnnl_version_t* version = dnnl_version();
  *major = version->major;
  *minor = version->minor;
  *patch = version->patch;
}

#define JJ_CONV_BINDING \
  ffi::Ffi::Bind() \
      .Arg<F32>() \
      .Arg<F32>() \
      .Ret<F32>() \
      .Attr<int64_t>("stride_h") \
      .Attr<int64_t>("stride_w") \
      .Attr<int64_t>("pad_top") \
      .Attr<int64_t>("pad_bottom") \
      .Attr<int64_t>("pad_left") \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JjOnednnForward, Forward, JJ_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JjOnednnInputGrad, InputGrad, JJ_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JjOnednnWeightGrad, WeightGrad, JJ_CONV_BINDING);
