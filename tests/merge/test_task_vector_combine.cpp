// The task-arithmetic combine in AVX-512 registers (lib/merge/methods/task_vector_combine.h)
// against the combine written out one element at a time from its formula: every option, every
// form of mask rule (the cut's ties before, after and inside the call, a cut among the NaNs'
// keys, a low cut, a rescale, explicit bits across word boundaries), one to seven models, and
// rows full of special patterns (NaNs of every sign and payload, infinities, subnormals, signed
// zeros, values whose differences overflow).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "alloy/core/cpu_features.h"
#include "alloy/core/dtype.h"
#include "bf16_pattern_rows.h"
#include "merge/methods/method_util.h"
#include "merge/methods/task_vector_combine.h"

namespace alloy::detail {
namespace {

// One output element from the formula (task_vector_combine.h), with round_to_bf16 after every
// operation and DeltaMask::keep for the rule: the bits the kernel must give.
uint16_t reference_element(const std::vector<TaskVectorInput>& inputs,
                           const TaskVectorCombine& options, const uint16_t* base,
                           const uint16_t* const* xs, size_t first, size_t j) {
  const auto rnd = round_to_bf16;
  const float b = bf16_to_f32(base[j]);
  std::vector<float> v(inputs.size());
  for (size_t m = 0; m < inputs.size(); ++m) {
    const DeltaMask& mask = inputs[m].mask;
    float d = rnd(bf16_to_f32(xs[m][j]) - b);
    if (mask.active) {
      if (!mask.keep(first + j, d)) d = 0.0f;
      if (mask.rescaled) d = rnd(d * mask.ratio);
    }
    v[m] = rnd(d * inputs[m].weight);
  }
  float mixed = 0.0f, divisor = options.plain_divisor;
  if (options.consensus) {
    float sum = 0.0f;
    for (float x : v) sum += x;
    const float sign = rnd(sum) >= 0.0f ? 1.0f : -1.0f;
    divisor = 0.0f;
    for (size_t m = 0; m < v.size(); ++m) {
      const bool agrees = v[m] * sign > 0.0f;
      mixed += agrees ? v[m] : 0.0f;
      divisor += agrees ? inputs[m].weight : 0.0f;
    }
    divisor = rnd(divisor);
    if (divisor == 0.0f) divisor = 1.0f;
  } else {
    for (float x : v) mixed += x;
  }
  mixed = rnd(mixed);
  if (options.normalize) mixed = rnd(mixed / divisor);
  if (options.scaled) mixed = rnd(mixed * options.lambda);
  return static_cast<uint16_t>(float_to_bits(rnd(b + mixed)) >> 16);
}

// A mask rule of the kind `kind` for a call of entries [first, first + len) of a tensor of n.
DeltaMask mask_of_kind(int kind, const std::vector<uint64_t>& words, uint32_t key, size_t first,
                       size_t len) {
  DeltaMask mask;
  mask.active = true;
  switch (kind) {
    case 0:
      mask.active = false;
      break;
    case 1:
      mask.high = {key, first};
      break;  // no tie of the call before it
    case 2:
      mask.high = {key, first + len};
      break;  // every tie of the call before it
    case 3:
      mask.high = {key, first + len / 3 + 1};
      break;  // the index inside the call
    case 4:
      mask.high = {0x7FC00000u, first + len / 2};
      break;  // a cut among the NaNs
    case 5:
      mask.high = {0xFFFFFFFFu, 0};
      break;  // keeps nothing
    case 6:
      mask.high = {0u, UINT64_MAX};
      break;  // keeps everything
    case 7:   // breadcrumbs' band: below the high cut, above the low one
      mask.high = {key, first + len / 2}, mask.low = {key >> 1, first + len}, mask.has_low = true;
      break;
    case 8:
      mask.high = {key, first + len / 4}, mask.rescaled = true, mask.ratio = 1.75f;
      break;
    default:
      mask.bits = words.data(), mask.rescaled = kind == 10, mask.ratio = 2.5f;
      break;
  }
  return mask;
}

TEST(TaskVectorCombine, RegistersGiveTheFormulasBitsForEveryOptionAndRule) {
  if (!can_combine_task_vectors_avx512(1)) GTEST_SKIP() << "no AVX-512 (x86-64-v4) on this CPU";
  EXPECT_FALSE(can_combine_task_vectors_avx512(0));
  EXPECT_FALSE(can_combine_task_vectors_avx512(kMaxCombineLanesModels + 1));
  std::mt19937_64 gen(2026);
  const size_t n = 1000;
  const std::vector<uint16_t> base = test::bf16_pattern_row(n, gen, {});
  std::vector<std::vector<uint16_t>> rows;
  for (size_t m = 0; m < 7; ++m) rows.push_back(test::bf16_pattern_row(n, gen, base));
  std::vector<uint64_t> words((n + 63) / 64);
  for (auto& w : words) w = gen();
  // Weights of every kind, then powers of two only (and zero), whose products and divisors the
  // kernel treats apart: roundings left out where a product is exact, reciprocals for divisors.
  // The tiny and huge powers make products and quotients underflow into subnormals, where a
  // rounding is needed after all.
  const std::vector<float> any_weights = {0.5f,  -0.3125f, 0.0f, 1.0f, 2.5f, round_to_bf16(3e38f),
                                          0.75f, -INFINITY};
  const std::vector<float> power_weights = {0.5f, 0x1p-100f, 1.0f, 0.25f, 0x1p100f, 2.0f, 0.0f};
  // The key of a common magnitude: many ties in every call.
  const uint32_t key = float_to_bits(0x1p-6f);
  size_t compared = 0, non_finite = 0, kept_some = 0;
  for (const std::vector<float>* weights : {&any_weights, &power_weights}) {
    const float plain_divisor = weights == &any_weights ? 0.8125f : 0.25f;
    for (size_t count : {1, 2, 3, 4, 5, 7}) {
      for (int option_bits = 0; option_bits < 8; ++option_bits) {
        const TaskVectorCombine options{(option_bits & 1) != 0, (option_bits & 2) != 0,
                                        (option_bits & 4) != 0, 0.69921875f, plain_divisor};
        for (int kind = 0; kind <= 10; ++kind) {
          // Calls at odd offsets and lengths: whole runs of eight groups, single groups and tails,
          // and bit words crossed anywhere.
          for (const auto& [first, len] : {std::pair<size_t, size_t>{0, n},
                                           {37, 1},
                                           {64, 15},
                                           {100, 16},
                                           {130, 17},
                                           {203, 64},
                                           {300, 65},
                                           {411, 589}}) {
            std::vector<TaskVectorInput> inputs;
            std::vector<const uint16_t*> xs;
            for (size_t m = 0; m < count; ++m) {
              // Models differ in rule: the kind for the first, others cycled through the kinds.
              const int model_kind = m == 0 ? kind : static_cast<int>((kind + 3 * m) % 11);
              inputs.push_back({nullptr, mask_of_kind(model_kind, words, key, first, len),
                                (*weights)[(m + option_bits) % weights->size()]});
              xs.push_back(rows[m].data() + first);
            }
            std::vector<uint16_t> got(len + 1, 0xBEEF);
            const size_t bad =
                combine_task_vectors_bf16_avx512(inputs.data(), count, options, base.data() + first,
                                                 xs.data(), first, len, got.data());
            size_t expected_bad = 0;
            for (size_t j = 0; j < len; ++j) {
              const uint16_t expected =
                  reference_element(inputs, options, base.data() + first, xs.data(), first, j);
              expected_bad += (expected & 0x7F80) == 0x7F80;
              ASSERT_EQ(got[j], expected)
                  << count << " models, options " << option_bits << ", rule " << kind << ", call ["
                  << first << ", " << first + len << "), element " << first + j;
              kept_some += expected != base[first + j];
            }
            ASSERT_EQ(bad, expected_bad)
                << count << " models, options " << option_bits << ", rule " << kind;
            ASSERT_EQ(got[len], 0xBEEF) << "written past the call";
            compared += len, non_finite += bad;
          }
        }
      }
    }
  }
  // The data reached every path: outputs that differ from the base, and non-finite ones.
  EXPECT_GT(kept_some, compared / 4);
  EXPECT_GT(non_finite, 0u);
  EXPECT_LT(non_finite, compared / 2);
}

}  // namespace
}  // namespace alloy::detail
