// The products of rows behind the alignment: its assignments' cost matrices and the undoing of a
// rotated residual stream (see internal.h, cosine_cost and row_dots).
//
// The matrix is a product of two [n, dim] matrices: for the MLP neurons of a model like the
// benchmark's (4096 neurons, descriptors of 3 x 1536 doubles) 7.7e10 products per layer. Summed
// one term after another per pair, each addition waited on the last: 460 s for the 16 layers of the
// 1 GB benchmark model with its neurons permuted, 95% of it here. Now each pair's terms go into
// eight lanes, and a kernel keeps 4 x 4 pairs in registers over tiles of the rows that stay in
// cache. A rotated model's tensors times the rotation are the same product (row_dots).
#include <algorithm>
#include <cstring>

#include "alloy/core/parallel.h"
#include "internal.h"

namespace alloy::detail {
namespace {

typedef double Doubles8 __attribute__((vector_size(64)));

constexpr size_t kLanes = 8;   // term t of a tile goes to lane t mod 8
constexpr size_t kTile = 512;  // terms per tile: the kernel's 8 rows of a tile are 32 KiB, in L1
constexpr size_t kRows = 128;  // rows of a per task: the whole of b is read once per task
constexpr size_t kBlock = 64;  // rows of b per block
constexpr size_t kSide = 4;    // the kernel's pairs: 4 rows of a by 4 rows of b

// Eight terms from p, zeros past `left` (an added +0 changes no sum that starts at +0).
inline __attribute__((always_inline)) void load_lanes(const double* p, size_t left, Doubles8& v) {
  if (left >= kLanes) {
    std::memcpy(&v, p, sizeof v);
    return;
  }
  double padded[kLanes] = {};
  std::memcpy(padded, p, left * sizeof(double));
  std::memcpy(&v, padded, sizeof v);
}

inline __attribute__((always_inline)) double lanes_sum(const Doubles8& l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// dots[r][c] += the dot product over one tile (len terms) of a[r] and b[c], its lanes added
// pairwise.
inline __attribute__((always_inline)) void tile_dots(const double* const* a, const double* const* b,
                                                     size_t len, double (&dots)[kSide][kSide]) {
  Doubles8 acc[kSide][kSide] = {};
  const auto step = [&](size_t t, size_t left) {
    Doubles8 av[kSide], bv[kSide];
    for (size_t r = 0; r < kSide; ++r) load_lanes(a[r] + t, left, av[r]);
    for (size_t c = 0; c < kSide; ++c) load_lanes(b[c] + t, left, bv[c]);
    for (size_t r = 0; r < kSide; ++r) {
      for (size_t c = 0; c < kSide; ++c) acc[r][c] += av[r] * bv[c];
    }
  };
  size_t t = 0;
  for (; t + kLanes <= len; t += kLanes) step(t, kLanes);
  if (t < len) step(t, len - t);
  for (size_t r = 0; r < kSide; ++r) {
    for (size_t c = 0; c < kSide; ++c) dots[r][c] += lanes_sum(acc[r][c]);
  }
}

// The dot products of rows [i0, i1) of a with every row of b, into dots[(i - i0) * n + j]: per
// block of b's rows and tile of the terms, 4 x 4 pairs at a time (a group past the last row
// repeats it, and its extra sums are dropped). Every pair's sum is the same whatever the blocks:
// the tiles in order, each from +0 in its lanes.
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default"))) void block_dots(
    const double* a, const double* b, size_t n, size_t dim, size_t i0, size_t i1, double* dots) {
  std::fill(dots, dots + (i1 - i0) * n, 0.0);
  for (size_t j0 = 0; j0 < n; j0 += kBlock) {
    const size_t j1 = std::min(n, j0 + kBlock);
    for (size_t t0 = 0; t0 < dim; t0 += kTile) {
      const size_t len = std::min(kTile, dim - t0);
      for (size_t i = i0; i < i1; i += kSide) {
        const double* ar[kSide];
        for (size_t r = 0; r < kSide; ++r) ar[r] = a + std::min(i + r, i1 - 1) * dim + t0;
        for (size_t j = j0; j < j1; j += kSide) {
          const double* br[kSide];
          for (size_t c = 0; c < kSide; ++c) br[c] = b + std::min(j + c, j1 - 1) * dim + t0;
          double sums[kSide][kSide];
          for (size_t r = 0; r < kSide; ++r) {
            for (size_t c = 0; c < kSide; ++c) {
              sums[r][c] = i + r < i1 && j + c < j1 ? dots[(i + r - i0) * n + j + c] : 0.0;
            }
          }
          tile_dots(ar, br, len, sums);
          for (size_t r = 0; r < kSide && i + r < i1; ++r) {
            for (size_t c = 0; c < kSide && j + c < j1; ++c)
              dots[(i + r - i0) * n + j + c] = sums[r][c];
          }
        }
      }
    }
  }
}

}  // namespace

void row_dots(const double* a, size_t m, const double* b, size_t n, size_t dim, double* out) {
  parallel_for((m + kRows - 1) / kRows, 1, [&](size_t begin, size_t end) {
    for (size_t block = begin; block < end; ++block) {
      const size_t i0 = block * kRows, i1 = std::min(m, i0 + kRows);
      block_dots(a, b, n, dim, i0, i1, out + i0 * n);
    }
  });
}

void cosine_cost(const double* a, const double* b, size_t n, size_t dim, double parts,
                 double* cost) {
  row_dots(a, n, b, n, dim, cost);
  parallel_for(n, kRows, [&](size_t begin, size_t end) {
    for (size_t k = begin * n; k < end * n; ++k) cost[k] = 1 - cost[k] / parts;
  });
}

std::vector<double> cosine_cost(const std::vector<double>& a, const std::vector<double>& b,
                                size_t n, size_t dim, double parts) {
  std::vector<double> cost(n * n);
  cosine_cost(a.data(), b.data(), n, dim, parts, cost.data());
  return cost;
}

}  // namespace alloy::detail
