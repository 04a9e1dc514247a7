// jackpot_jax: exact top-k on the CPU, as XLA FFI handlers (a radix select).
//
// JjTopkMask: the mask that keeps the `keep` largest float32 scores of an array, ties broken
// by lower flat index, NaN below every number: the mask of jackpot_jax.method.topk's counting
// search, which stays the definition (and the path on other backends). Scores map to uint32
// keys whose unsigned order is their float order (as method.topk.ordered_keys). A radix select
// finds the keep-th largest key t: one histogram of the keys' top 16 bits, then
// std::nth_element among the keys of the one bucket that holds it (a few hundred for a
// million normal scores). The mask is then the keys above t and the first `keep - above`
// keys equal to t in flat order. Four passes over the keys (make, count, gather, compare),
// each a simple loop the compiler vectorises or unrolls, instead of the counting search's 32.
// JjKthLargestKey: the same select on given uint32 keys with a traced k, for the threshold of
// the persistent-mask swap rule (jackpot_jax.method.swap).
//
// XLA may call the handlers from several threads at once: the scratch buffers are per thread
// (grown on demand, kept for the next call). Built and loaded by
// jackpot_jax/kernels/native/topk_select.py.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kBits = 16;                  // histogram of the top 16 bits of the keys
constexpr int64_t kBins = int64_t{1} << kBits;
constexpr int kSubHistograms = 4;          // interleaved, so equal neighbours do not stall
constexpr int64_t kSmall = int64_t{1} << 14;  // below this many, select among all keys

// Integer operations only, so that the loop over an array vectorises.
inline uint32_t OrderedKey(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  const uint32_t magnitude = u & 0x7FFFFFFFu;
  if (magnitude == 0) u = 0;  // -0.0 and +0.0: one key
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u;
  // NaN: key 1, above -inf's key (0x007FFFFF) and below every number's.
  return magnitude > 0x7F800000u ? 1u : (u ^ flip);
}

// The rank-th largest (1 <= rank <= n) of keys[0, n); `larger` and `equal` receive how many
// keys are larger than it and equal to it.
uint32_t KthLargest(const uint32_t* keys, int64_t n, int64_t rank, int64_t* larger,
                    int64_t* equal) {
  thread_local std::vector<uint32_t> cand_buffer;
  thread_local std::vector<int32_t> hist;
  // The candidates (the keys of the threshold's bucket, or all keys) and how many keys lie
  // above them.
  int64_t above = 0, count = n;
  uint32_t* cand;
  if (n > kSmall) {
    hist.assign(kSubHistograms * kBins, 0);
    int32_t* h = hist.data();
    int64_t i = 0;
    for (; i + kSubHistograms <= n; i += kSubHistograms)
      for (int j = 0; j < kSubHistograms; ++j) ++h[j * kBins + (keys[i + j] >> (32 - kBits))];
    for (; i < n; ++i) ++h[keys[i] >> (32 - kBits)];
    for (int64_t b = 0; b < kBins; ++b)
      for (int j = 1; j < kSubHistograms; ++j) h[b] += h[j * kBins + b];
    int64_t bucket = kBins - 1;
    while (above + h[bucket] < rank) above += h[bucket--];
    count = h[bucket];
    cand_buffer.resize(count + 1);  // +1: the compaction below writes one past its last match
    cand = cand_buffer.data();
    const uint32_t b32 = static_cast<uint32_t>(bucket);
    int64_t c = 0;
    for (int64_t i2 = 0; i2 < n; ++i2) {  // branch-free compaction
      cand[c] = keys[i2];
      c += (keys[i2] >> (32 - kBits)) == b32;
    }
  } else {
    cand_buffer.assign(keys, keys + n);  // nth_element reorders: leave `keys` as they are
    cand = cand_buffer.data();
  }
  const int64_t r = rank - above;  // 1 <= r <= count
  std::nth_element(cand, cand + (r - 1), cand + count, [](uint32_t a, uint32_t b) {
    return a > b;
  });
  const uint32_t t = cand[r - 1];
  int64_t greater = 0, same = 0;  // every key equal to t is a candidate
  for (int64_t i = 0; i < count; ++i) {
    greater += cand[i] > t;
    same += cand[i] == t;
  }
  *larger = above + greater;
  *equal = same;
  return t;
}

ffi::Error TopkMask(ffi::Buffer<ffi::F32> scores, ffi::ResultBuffer<ffi::PRED> mask,
                    int64_t keep) {
  const int64_t n = static_cast<int64_t>(scores.element_count());
  if (static_cast<int64_t>(mask->element_count()) != n)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "the mask and the scores differ in size");
  if (keep < 0 || keep > n)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "keep is outside [0, size]");
  if (n > std::numeric_limits<int32_t>::max())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "more than 2**31 - 1 scores");
  const float* s = scores.typed_data();
  uint8_t* m = reinterpret_cast<uint8_t*>(mask->typed_data());  // bool: one byte, 0 or 1
  if (keep == 0 || keep == n) {
    std::fill(m, m + n, static_cast<uint8_t>(keep == n));
    return ffi::Error::Success();
  }
  thread_local std::vector<uint32_t> keys_buffer;
  keys_buffer.resize(n);
  uint32_t* keys = keys_buffer.data();
  for (int64_t i = 0; i < n; ++i) keys[i] = OrderedKey(s[i]);

  int64_t larger, equal;
  const uint32_t t = KthLargest(keys, n, keep, &larger, &equal);
  int64_t ties = keep - larger;  // how many of the `equal` keys equal to t are kept (>= 1)
  if (ties == equal) {  // every key equal to t is kept (always so without repeated scores)
    for (int64_t i = 0; i < n; ++i) m[i] = keys[i] >= t;
  } else {  // the first `ties` of them in flat order
    for (int64_t i = 0; i < n; ++i) {
      const bool tied = keys[i] == t && ties > 0;
      ties -= tied;
      m[i] = keys[i] > t || tied;
    }
  }
  return ffi::Error::Success();
}

// The k-th largest of uint32 keys (any shape, flat), k an int32 scalar operand in [1, size]:
// the threshold the persistent-mask swap rule needs (jackpot_jax.method.swap).
ffi::Error KthLargestKey(ffi::Buffer<ffi::U32> keys, ffi::Buffer<ffi::S32> k,
                         ffi::ResultBuffer<ffi::U32> out) {
  const int64_t n = static_cast<int64_t>(keys.element_count());
  if (k.element_count() != 1 || out->element_count() != 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "k and the result must be scalars");
  if (n > std::numeric_limits<int32_t>::max())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "more than 2**31 - 1 keys");
  const int64_t rank = k.typed_data()[0];
  if (rank < 1 || rank > n)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "k is outside [1, size]");
  int64_t larger, equal;
  out->typed_data()[0] = KthLargest(keys.typed_data(), n, rank, &larger, &equal);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JjTopkMask, TopkMask,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::PRED>>()
                                  .Attr<int64_t>("keep"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JjKthLargestKey, KthLargestKey,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());
