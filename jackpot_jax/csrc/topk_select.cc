// jackpot_jax: the exact top-k mask of one score array on the CPU, as an XLA FFI handler.
//
// The mask keeps the `keep` largest float32 scores, ties broken by lower flat index, NaN below
// every number: the mask of jackpot_jax.sparsity's counting search, which stays the
// definition (and the path on other backends). Scores map to uint32 keys whose unsigned order
// is their float order (as sparsity._ordered_keys). A radix select finds the keep-th largest
// key t: one histogram of the keys' top 16 bits, then std::nth_element among the keys of the
// one bucket that holds it (a few hundred for a million normal scores). The mask is then the
// keys above t and the first `keep - above` keys equal to t in flat order. Four passes over
// the keys (make, count, gather, compare), each a simple loop the compiler vectorises or
// unrolls, instead of the counting search's 32.
//
// XLA may call the handler from several threads at once: the scratch buffers are per thread
// (grown on demand, kept for the next call). Built and loaded by jackpot_jax/topk_select.py.
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

  thread_local std::vector<uint32_t> keys_buffer, cand_buffer;
  thread_local std::vector<int32_t> hist;
  keys_buffer.resize(n);
  uint32_t* keys = keys_buffer.data();
  for (int64_t i = 0; i < n; ++i) keys[i] = OrderedKey(s[i]);

  // The candidates for the threshold (the keys of its bucket, or all keys) and how many
  // keys lie above them.
  int64_t above = 0, count = n;
  uint32_t* cand = keys;
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
    while (above + h[bucket] < keep) above += h[bucket--];
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
    cand_buffer.assign(keys, keys + n);  // nth_element reorders: keep `keys` in flat order
    cand = cand_buffer.data();
  }
  const int64_t rank = keep - above;  // 1 <= rank <= count
  std::nth_element(cand, cand + (rank - 1), cand + count, [](uint32_t a, uint32_t b) {
    return a > b;
  });
  const uint32_t t = cand[rank - 1];
  int64_t greater = 0, equal = 0;
  for (int64_t i = 0; i < count; ++i) {
    greater += cand[i] > t;
    equal += cand[i] == t;
  }
  int64_t ties = rank - greater;  // how many keys equal to t are kept, 1 <= ties <= equal

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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JjTopkMask, TopkMask,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::PRED>>()
                                  .Attr<int64_t>("keep"));
