// Sparsification of task vectors (mergekit/sparsify.py), deterministic and O(n) where mergekit
// sorts: magnitude top-k and magnitude_outliers select ranks with nth_element on unique 64-bit keys
// (|delta| bits, then the flat index), so ties are broken the same way on every machine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "alloy/dtype.h"

namespace alloy::detail {

enum class Sparsification { kNone, kMagnitude, kMagnitudeOutliers, kRandom, kDellaMagprune };

struct SparsifyOptions {
  Sparsification method = Sparsification::kNone;
  double density = 1.0;
  double gamma = 0.01;    // magnitude_outliers: share of the largest entries removed
  double epsilon = 0.15;  // della: spread of the keep probabilities around density
  bool rescale = false;   // random/della: rescale the kept entries to the original L1 norm
  uint64_t seed = 0;      // random/della: the mask's stream
  size_t rows = 1;        // della ranks within rows of this many...
  size_t cols = 0;        // ...columns (cols = n for 1-D tensors)
};

// Sparsifies `delta` (n values representable in `dtype`) in place. `tensor` names it in errors.
void sparsify(float* delta, size_t n, const SparsifyOptions& options, DType dtype, const std::string& tensor);

}  // namespace alloy::detail
