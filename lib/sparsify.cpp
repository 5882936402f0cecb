#include "sparsify.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "alloy/error.h"
#include "alloy/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

uint32_t magnitude_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u & 0x7FFFFFFFu;  // |x|: for non-negative floats the bit order is the numeric order
}

// Keeps the entries whose rank, in ascending order of `keys`, lies in [lo, hi); zeroes the rest.
// Keys are unique, so the ranks are well defined; selection is O(n) (two nth_element calls).
void keep_rank_range(float* delta, size_t n, std::vector<uint64_t>& keys, size_t lo, size_t hi) {
  if (lo >= hi) {
    std::fill(delta, delta + n, 0.0f);
    return;
  }
  std::vector<uint64_t> sorted = keys;
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(lo), sorted.end());
  const uint64_t low_key = sorted[lo];
  std::nth_element(sorted.begin() + static_cast<long>(lo), sorted.begin() + static_cast<long>(hi - 1), sorted.end());
  const uint64_t high_key = sorted[hi - 1];
  parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      if (keys[i] < low_key || keys[i] > high_key) delta[i] = 0.0f;
    }
  });
}

void check_index_range(size_t n, const std::string& tensor) {
  if (n >= (uint64_t{1} << 32)) {
    throw Error(ErrorCode::kInvalidArgument,
                "tensor '" + tensor + "': magnitude sparsification supports tensors below 2^32 elements");
  }
}

// mergekit's rescale_norm "l1": scale the kept entries so their L1 norm equals the original's.
void rescale_l1(float* masked, const float* original, size_t n, const Rounder& rnd) {
  double before = 0, after = 0;
  for (size_t i = 0; i < n; ++i) {
    before += std::fabs(original[i]);
    after += std::fabs(masked[i]);
  }
  const float before_d = rnd(static_cast<float>(before)), after_d = rnd(static_cast<float>(after));
  if (before_d < 1e-7f || after_d < 1e-7f) return;
  const float ratio = rnd(before_d / after_d);
  for (size_t i = 0; i < n; ++i) masked[i] = rnd(masked[i] * ratio);
}

}  // namespace

void sparsify(float* delta, size_t n, const SparsifyOptions& o, DType dtype, const std::string& tensor) {
  if (o.method == Sparsification::kNone || o.density >= 1.0 || n == 0) return;
  const Rounder rnd{dtype};
  switch (o.method) {
    case Sparsification::kMagnitude: {
      check_index_range(n, tensor);
      const size_t k = static_cast<size_t>(o.density * static_cast<double>(n));
      if (k == 0) {
        throw Error(ErrorCode::kRecipe, "tensor '" + tensor + "': density " + std::to_string(o.density) +
                                            " keeps no element of " + std::to_string(n));
      }
      // Descending |delta|, ties to the lower index: key = |delta| bits, then the inverted index.
      std::vector<uint64_t> keys(n);
      for (size_t i = 0; i < n; ++i) keys[i] = (uint64_t(magnitude_bits(delta[i])) << 32) | (0xFFFFFFFFu - i);
      keep_rank_range(delta, n, keys, n - k, n);
      return;
    }
    case Sparsification::kMagnitudeOutliers: {
      check_index_range(n, tensor);
      const long total = static_cast<long>(n);
      const long target = static_cast<long>(o.density * static_cast<double>(n));
      long n_top = static_cast<long>(o.gamma * static_cast<double>(n));
      long n_bot = total - target - n_top;
      if (n_bot < 0) {
        n_top += n_bot;
        n_bot = 0;
      }
      if (n_top <= 0) {
        // mergekit keeps sorted positions [n_bot : -n_top]; with n_top == 0 that slice is empty.
        std::fill(delta, delta + n, 0.0f);
        return;
      }
      std::vector<uint64_t> keys(n);  // ascending |delta|, ties to the lower index
      for (size_t i = 0; i < n; ++i) keys[i] = (uint64_t(magnitude_bits(delta[i])) << 32) | i;
      keep_rank_range(delta, n, keys, static_cast<size_t>(n_bot), static_cast<size_t>(total - n_top));
      return;
    }
    case Sparsification::kRandom: {
      std::vector<float> original(delta, delta + n);
      const float keep = static_cast<float>(o.density);
      parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) {
          if (!(uniform01(o.seed, i) < keep)) delta[i] = 0.0f;
        }
      });
      if (o.rescale) rescale_l1(delta, original.data(), n, rnd);
      return;
    }
    case Sparsification::kDellaMagprune: {
      if (o.density <= 0) {
        std::fill(delta, delta + n, 0.0f);
        return;
      }
      if (o.density + o.epsilon >= 1 || o.density - o.epsilon <= 0) {
        throw Error(ErrorCode::kRecipe, "tensor '" + tensor + "': della needs density +/- epsilon inside (0, 1)");
      }
      std::vector<float> original(delta, delta + n);
      const size_t cols = o.cols == 0 ? n : o.cols;
      const size_t rows = n / cols;
      parallel_for(rows, 1, [&](size_t rb, size_t re) {
        std::vector<uint32_t> order(cols);
        for (size_t r = rb; r < re; ++r) {
          float* row = delta + r * cols;
          std::iota(order.begin(), order.end(), 0u);
          std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
            return std::fabs(row[a]) < std::fabs(row[b]);
          });
          for (size_t rank = 0; rank < cols; ++rank) {
            const double rank_norm = cols > 1 ? double(rank) / double(cols - 1) : 0.0;
            const double p = (o.density - o.epsilon) + rank_norm * 2 * o.epsilon;
            const size_t i = order[rank];
            if (!(uniform01(o.seed, r * cols + i) < p)) row[i] = 0.0f;
          }
        }
      });
      if (o.rescale) rescale_l1(delta, original.data(), n, rnd);
      return;
    }
    case Sparsification::kNone:
      return;
  }
}

}  // namespace alloy::detail
