// Rows of bf16 bit patterns for the tests of the merge's register kernels: values near one another
// and about one in eight special (NaNs of every sign and payload, infinities, subnormals, signed
// zeros, the largest finite values, whose sums and differences overflow).
#pragma once

#include <cmath>
#include <cstdint>
#include <iterator>
#include <random>
#include <vector>

#include "alloy/core/dtype.h"

namespace alloy::test {

// n entries; where `near` is given, most entries lie a few bf16 steps from near's (task vectors of
// the usual size, many of equal magnitude, so that cuts have ties).
inline std::vector<uint16_t> bf16_pattern_row(size_t n, std::mt19937_64& gen,
                                              const std::vector<uint16_t>& near) {
  static const uint16_t kSpecial[] = {0x7FC0, 0xFFC0, 0x7FC1, 0xFFFF, 0x7F81, 0x7F80, 0xFF80,
                                      0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFF7F, 0x3F80};
  std::vector<uint16_t> row(n);
  for (size_t i = 0; i < n; ++i) {
    if (gen() % 8 == 0) {
      row[i] = kSpecial[gen() % std::size(kSpecial)];
    } else if (!near.empty() && gen() % 4 != 0) {
      row[i] = static_cast<uint16_t>(near[i] + static_cast<uint16_t>(gen() % 5) - 2);
    } else {
      row[i] = f32_to_bf16(
          std::ldexp(static_cast<float>(gen() % 256) - 128.0f, -static_cast<int>(gen() % 12)));
    }
  }
  return row;
}

// n values (1 + m / 128) * 2^e of random sign, m < 128 and e in [-spread, spread] uniform; about
// one in 16 is instead one of `special` (zeros, subnormals). With a small spread, sums of a few
// thousand of them in double are exact in any order; with a wide one, their order shows in the
// last bits.
inline std::vector<uint16_t> bf16_binade_row(size_t n, std::mt19937_64& gen, int spread,
                                             const std::vector<uint16_t>& special) {
  std::vector<uint16_t> row(n);
  for (uint16_t& v : row) {
    if (gen() % 16 == 0) {
      v = special[gen() % special.size()];
    } else {
      const float magnitude = std::ldexp(1.0f + static_cast<float>(gen() % 128) / 128.0f,
                                         static_cast<int>(gen() % (2 * spread + 1)) - spread);
      v = f32_to_bf16(gen() % 2 ? magnitude : -magnitude);
    }
  }
  return row;
}

}  // namespace alloy::test
