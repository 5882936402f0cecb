// The assay's statistics pass: Gram matrices, sums and exact-equality counts of one tensor, in
// one streaming pass over fixed chunks of the mapped bytes. Each chunk is converted into a
// per-thread scratch of kDefaultGrain floats per vector and reduced in double; chunks combine in
// order, so the result is bit-identical for any thread count.
#include <algorithm>
#include <cmath>

#include "alloy/dtype.h"
#include "alloy/parallel.h"
#include "assay_internal.h"

namespace alloy::detail {
namespace {

// Per-thread scratch: kMaxVectors chunks of floats plus a mask, allocated once per thread.
float* chunk_buffers() {
  static thread_local std::vector<float> scratch;
  if (scratch.empty()) scratch.resize(size_t(kMaxVectors + 1) * kDefaultGrain);
  return scratch.data();
}

// Four-lane double dot product (fixed order, so deterministic); `mask` may be null.
double lane_dot(const float* a, const float* b, const float* mask, size_t n) {
  double lanes[4] = {0, 0, 0, 0};
  size_t i = 0;
  if (mask) {
    for (; i + 4 <= n; i += 4) {
      for (int l = 0; l < 4; ++l) lanes[l] += double(a[i + l]) * double(b[i + l]) * double(mask[i + l]);
    }
    for (; i < n; ++i) lanes[0] += double(a[i]) * double(b[i]) * double(mask[i]);
  } else {
    for (; i + 4 <= n; i += 4) {
      for (int l = 0; l < 4; ++l) lanes[l] += double(a[i + l]) * double(b[i + l]);
    }
    for (; i < n; ++i) lanes[0] += double(a[i]) * double(b[i]);
  }
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

void load_chunk(const ModelTensor& t, size_t begin, size_t count, float* out) {
  const DType dtype = t.info->dtype;
  const size_t width = dtype_bits(dtype) / 8;
  load_as_f32(dtype, t.data() + begin * width, count, out);
}

void add_into(Moments& acc, const Moments& part) {
  acc.n += part.n;
  acc.n_resolved += part.n_resolved;
  acc.n_spread += part.n_spread;
  for (int a = 0; a < acc.vectors; ++a) {
    acc.sum[a] += part.sum[a];
    acc.equal[a] += part.equal[a];
    acc.equal_resolved[a] += part.equal_resolved[a];
    for (int b = 0; b < acc.vectors; ++b) {
      acc.gram[a][b] += part.gram[a][b];
      acc.gram_resolved[a][b] += part.gram_resolved[a][b];
    }
  }
}

}  // namespace

Moments accumulate_moments(const TensorViews& views, double resolve_fraction, uint64_t count_limit,
                           const std::vector<bool>& spread_members) {
  const int m = static_cast<int>(views.inputs.size());
  std::vector<int> members;
  for (int v = 1; v < m; ++v) {
    if (spread_members.empty() || spread_members[size_t(v - 1)]) members.push_back(v);
  }
  if (members.empty()) {
    for (int v = 1; v < m; ++v) members.push_back(v);
  }
  Moments init;
  init.vectors = m;
  const auto chunk = [&](size_t begin, size_t end) {
    Moments part;
    part.vectors = m;
    const size_t count = end - begin;
    float* base = chunk_buffers();
    float* x[kMaxVectors];
    for (int v = 0; v < m; ++v) {
      x[v] = base + size_t(v) * kDefaultGrain;
      load_chunk(*views.inputs[v], begin, count, x[v]);
    }
    float* mask = base + size_t(kMaxVectors) * kDefaultGrain;
    for (size_t i = 0; i < count; ++i) {
      const int first = members.front();
      float lo = x[first][i], hi = x[first][i], mag = std::fabs(x[first][i]);
      for (int v : members) {
        lo = std::min(lo, x[v][i]);
        hi = std::max(hi, x[v][i]);
        mag = std::max(mag, std::fabs(x[v][i]));
      }
      const float spread = hi - lo;
      const bool resolved = spread > 0 && double(spread) >= resolve_fraction * double(mag);
      mask[i] = resolved ? 1.0f : 0.0f;
      part.n_resolved += resolved;
      part.n_spread += spread > 0;
      if (spread > 0) {
        for (int v = 1; v < m; ++v) {
          const bool same = x[0][i] == x[v][i];
          part.equal[v] += same;
          part.equal_resolved[v] += same && resolved;
        }
      }
    }
    part.n = count;
    for (int a = 0; a < m; ++a) {
      double s = 0;
      for (size_t i = 0; i < count; ++i) s += x[a][i];
      part.sum[a] = s;
      for (int b = a; b < m; ++b) {
        part.gram[a][b] = part.gram[b][a] = lane_dot(x[a], x[b], nullptr, count);
        part.gram_resolved[a][b] = part.gram_resolved[b][a] = lane_dot(x[a], x[b], mask, count);
      }
    }
    return part;
  };
  return parallel_reduce(std::min<uint64_t>(views.numel, count_limit), kDefaultGrain, init, chunk, [](Moments acc, const Moments& part) {
    add_into(acc, part);
    return acc;
  });
}

uint64_t tensor_fingerprint(const ModelTensor& tensor) {
  const uint8_t* bytes = tensor.data();
  const uint64_t size = tensor.info->nbytes();
  constexpr size_t kGrain = 1 << 20;
  // FNV-1a per 1 MiB chunk, then FNV-1a over the chunk hashes in order.
  const auto chunk_hash = [&](size_t begin, size_t end) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = begin; i < end; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
    return std::vector<uint64_t>{h};
  };
  const std::vector<uint64_t> hashes = parallel_reduce(
      size, kGrain, std::vector<uint64_t>{}, chunk_hash, [](std::vector<uint64_t> acc, const std::vector<uint64_t>& p) {
        acc.insert(acc.end(), p.begin(), p.end());
        return acc;
      });
  uint64_t h = 1469598103934665603ull ^ size;
  for (uint64_t c : hashes) {
    for (int b = 0; b < 8; ++b) h = (h ^ ((c >> (8 * b)) & 0xFF)) * 1099511628211ull;
  }
  return h;
}

}  // namespace alloy::detail
