// The merges' bf16-bits forms (ChunkedMerge::merges_bf16, chunk_sums_bf16, merge_chunk_bf16), which
// the executor runs when the sources, the compute dtype and the output are all bfloat16: each must
// give the bits of the float32 form followed by the bf16 store, on ordinary values and on every
// special pattern (NaN payloads, infinities, subnormals, signed zeros, values that overflow).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "alloy/merge/merge_method.h"
#include "merge/methods/sparsify.h"

namespace alloy::test {
namespace {

// n bf16 patterns: mostly normal values of a spread of magnitudes, about one in twenty special.
std::vector<uint16_t> bf16_patterns(size_t n, uint64_t seed) {
  static const uint16_t kSpecial[] = {0x7FC0, 0x7FC1, 0xFF81, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001,
                                      0x807F, 0x0040, 0x7F7F, 0xFF7F, 0x0080, 0x3F80};
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<uint16_t> bits(n);
  for (size_t i = 0; i < n; ++i) {
    if (gen() % 20 == 0) {
      bits[i] = kSpecial[gen() % (sizeof kSpecial / sizeof kSpecial[0])];
    } else {
      bits[i] = f32_to_bf16(normal(gen) * float(1 << (gen() % 12)));
    }
  }
  return bits;
}

struct Bf16Case {
  std::string method;
  std::vector<std::map<std::string, double>> source_params;
  std::map<std::string, double> params;
  int base = -1;
};

// Runs one case on `sources` (bf16 rows): the float32 form and the bits form over the same chunks,
// sums first where the merge has them; stops at the first difference. `specials`: the rows hold
// special patterns, so some outputs must be non-finite.
void expect_same_bits(const Bf16Case& c, const std::vector<std::vector<uint16_t>>& sources, DType compute,
                      bool specials = true) {
  SCOPED_TRACE(c.method + " with " + std::to_string(sources.size()) + " sources, " + dtype_name(compute));
  const size_t n = sources[0].size();
  bool has_nan = false;
  for (const auto& row : sources) {
    for (uint16_t v : row) has_nan = has_nan || ((v & 0x7F80) == 0x7F80 && (v & 0x7F) != 0);
  }
  std::vector<std::vector<float>> floats(sources.size(), std::vector<float>(n));
  for (size_t k = 0; k < sources.size(); ++k) {
    for (size_t i = 0; i < n; ++i) floats[k][i] = bf16_to_f32(sources[k][i]);
  }
  MergeContext ctx;
  ctx.tensor_name = "model.layers.0.mlp.down_proj.weight";
  ctx.compute_dtype = compute;
  ctx.shape = {n};
  ctx.base_index = c.base;
  ctx.params = c.params;
  for (size_t k = 0; k < sources.size(); ++k) {
    ctx.sources.push_back({floats[k].data(), c.source_params[k], int(k) == c.base, "m" + std::to_string(k)});
  }
  const MergeMethod* method = find_merge_method(c.method);
  ASSERT_NE(method, nullptr);
  const std::unique_ptr<ChunkedMerge> merge = method->chunked(ctx);
  ASSERT_EQ(merge->merges_bf16(), compute == DType::BF16);
  if (!merge->merges_bf16()) return;
  // Chunks of odd lengths at odd offsets: the kernels' blocks and vector tails everywhere.
  const size_t chunk = 1237;
  std::vector<const float*> float_rows(sources.size());
  std::vector<const uint16_t*> bit_rows(sources.size());
  auto at = [&](size_t begin) {
    for (size_t k = 0; k < sources.size(); ++k) float_rows[k] = floats[k].data() + begin, bit_rows[k] = sources[k].data() + begin;
  };
  merge->prepare([&](size_t k, uint64_t begin, size_t len, float* dst) {
    std::copy(floats[k].begin() + begin, floats[k].begin() + begin + len, dst);
  });
  if (const size_t sums = merge->sum_count(); sums > 0) {
    std::vector<double> partial_floats(sums), partial_bits(sums), total(sums, 0.0);
    for (size_t begin = 0; begin < n; begin += chunk) {
      const size_t len = std::min(chunk, n - begin);
      at(begin);
      merge->chunk_sums(float_rows.data(), len, partial_floats.data());
      merge->chunk_sums_bf16(bit_rows.data(), len, partial_bits.data());
      for (size_t j = 0; j < sums; ++j) {
        // A NaN sum's sign depends on which operand the compiled addition names first (x86 keeps the
        // first NaN), which differs between clones; the merge refuses such a tensor either way.
        if (std::isnan(partial_floats[j]) && std::isnan(partial_bits[j])) continue;
        ASSERT_EQ(std::memcmp(&partial_floats[j], &partial_bits[j], sizeof(double)), 0)
            << "sum " << j << " of the chunk at " << begin << ": " << partial_floats[j] << " vs " << partial_bits[j];
        total[j] += partial_floats[j];
      }
    }
    merge->set_sums(total.data());
    // Two chunks at once (chunk_pair_sums_bf16, the executor's held slerp): each chunk's doubles
    // as alone, at a length of whole groups of four and at one with a tail.
    for (const size_t len : {chunk - 1, chunk}) {
      for (size_t begin = 0; begin + 2 * len <= n; begin += 2 * len) {
        std::vector<const uint16_t*> a(sources.size()), b(sources.size());
        for (size_t k = 0; k < sources.size(); ++k)
          a[k] = sources[k].data() + begin, b[k] = a[k] + len;
        std::vector<double> pair_a(sums), pair_b(sums), alone_a(sums), alone_b(sums);
        merge->chunk_pair_sums_bf16(a.data(), b.data(), len, pair_a.data(), pair_b.data());
        merge->chunk_sums_bf16(a.data(), len, alone_a.data());
        merge->chunk_sums_bf16(b.data(), len, alone_b.data());
        for (size_t j = 0; j < sums; ++j) {
          for (const auto& [pair, alone] :
               {std::pair{pair_a[j], alone_a[j]}, std::pair{pair_b[j], alone_b[j]}}) {
            if (std::isnan(pair) && std::isnan(alone)) continue;
            ASSERT_EQ(std::memcmp(&pair, &alone, sizeof(double)), 0)
                << "sum " << j << " of the chunk pair at " << begin << ", length " << len << ": "
                << pair << " vs " << alone;
          }
        }
      }
    }
  }
  std::vector<float> merged(chunk);
  std::vector<uint16_t> expected(chunk), got(chunk);
  size_t non_finite = 0;
  for (size_t begin = 0; begin < n; begin += chunk) {
    const size_t len = std::min(chunk, n - begin);
    at(begin);
    const size_t bad_floats = merge->merge_chunk(float_rows.data(), begin, len, merged.data());
    store_from_f32(merged.data(), len, DType::BF16, expected.data());
    const size_t bad_bits = merge->merge_chunk_bf16(bit_rows.data(), begin, len, got.data());
    ASSERT_EQ(bad_floats, bad_bits) << "non-finite count of the chunk at " << begin;
    for (size_t i = 0; i < len; ++i) {
      ASSERT_EQ(expected[i], got[i]) << "element " << begin + i << ": float32 form " << merged[i];
    }
    non_finite += bad_bits;
  }
  if (specials) {
    EXPECT_GT(non_finite, 0u);  // the specials reached the outputs
  }
  // Most outputs finite, except where a NaN makes a whole-tensor factor NaN (DARE's rescale).
  if (c.method.find("dare") == std::string::npos || !has_nan) {
    EXPECT_LT(non_finite, n / 2);
  }
}

// A fine-tune of `base`: a N(0, 0.01) delta added to its finite values, except about one in fifty
// left as they are (task vectors of the usual size, with some exact zeros).
std::vector<uint16_t> fine_tune(const std::vector<uint16_t>& base, uint64_t seed) {
  std::vector<uint16_t> tuned = base;
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> delta(0.0f, 0.01f);
  for (auto& v : tuned) {
    if ((v & 0x7F80) != 0x7F80 && gen() % 50 != 0) v = f32_to_bf16(bf16_to_f32(v) + delta(gen));
  }
  return tuned;
}

std::vector<std::vector<uint16_t>> rows(size_t count, size_t n, uint64_t seed) {
  std::vector<std::vector<uint16_t>> out;
  for (size_t k = 0; k < count; ++k) out.push_back(bf16_patterns(n, seed + k));
  return out;
}

TEST(MergeBf16Bits, LinearGivesTheFloatFormsBitsForEveryModelCountAndNormalization) {
  const size_t n = 3 * 1237 + 611;
  const std::vector<double> weights = {0.571, 0.429, -0.15, 0.45, 0.2};
  for (size_t count = 1; count <= weights.size(); ++count) {
    Bf16Case c{"linear", {}, {}, -1};
    for (size_t k = 0; k < count; ++k) c.source_params.push_back({{"weight", weights[k]}});
    for (DType compute : {DType::BF16, DType::F32}) expect_same_bits(c, rows(count, n, 100 + count), compute);
    c.params["normalize"] = 0;  // no division
    expect_same_bits(c, rows(count, n, 200 + count), DType::BF16);
  }
  // Weights summing to 2 (normalize multiplies by 1/2) and to 3 (it divides).
  Bf16Case twice{"linear", {{{"weight", 1.5}}, {{"weight", 0.5}}}, {}, -1};
  expect_same_bits(twice, rows(2, n, 300), DType::BF16);
  Bf16Case thrice{"linear", {{{"weight", 1.0}}, {{"weight", 1.25}}, {{"weight", 0.75}}}, {}, -1};
  expect_same_bits(thrice, rows(3, n, 400), DType::BF16);
}

TEST(MergeBf16Bits, SlerpGivesTheFloatFormsSumsAndBits) {
  const size_t n = 4 * 1237 + 3;
  for (int base : {0, 1}) {
    for (double t : {0.4, 0.0, 1.0}) {
      Bf16Case c{"slerp", {{}, {}}, {{"t", t}}, base};
      for (DType compute : {DType::BF16, DType::F32}) expect_same_bits(c, rows(2, n, 500 + base), compute);
    }
  }
  // Without specials the sums are finite: the blend's coefficients come from a real angle.
  auto plain = rows(2, n, 600);
  for (auto& row : plain) {
    for (auto& b : row) {
      if ((b & 0x7F80) == 0x7F80) b = 0x3C00;
    }
  }
  Bf16Case c{"slerp", {{}, {}}, {{"t", 0.3}}, 0};
  expect_same_bits(c, plain, DType::BF16, false);
}

// The executor's held slerp sums two chunks at once (chunk_pair_sums_bf16): over many chunk pairs
// each chunk's three doubles are the bits of its sums alone, to the last rounding of the lanes'
// order. The values spread over 2^32, so that the sums round (sums of the squares of weights of
// one spread are often exact, and then any order gives the same bits).
TEST(MergeBf16Bits, SlerpPairSumsAreEachChunksOwnSums) {
  const size_t len = 4096, pairs = 64;
  std::mt19937_64 gen(950);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-24, 8);
  std::vector<std::vector<uint16_t>> sources(2, std::vector<uint16_t>(2 * pairs * len));
  for (auto& row : sources) {
    for (auto& v : row) v = f32_to_bf16(std::ldexp(normal(gen), exponent(gen)));
  }
  std::vector<float> zeros(len, 0.0f);
  MergeContext ctx;
  ctx.tensor_name = "model.layers.0.mlp.down_proj.weight";
  ctx.compute_dtype = DType::BF16;
  ctx.shape = {len};
  ctx.base_index = 1;
  ctx.params = {{"t", 0.3}};
  ctx.sources = {{zeros.data(), {}, false, "a"}, {zeros.data(), {}, true, "b"}};
  const std::unique_ptr<ChunkedMerge> merge = find_merge_method("slerp")->chunked(ctx);
  ASSERT_TRUE(merge->merges_bf16());
  for (size_t p = 0; p < pairs; ++p) {
    const uint16_t* a[2] = {sources[0].data() + 2 * p * len, sources[1].data() + 2 * p * len};
    const uint16_t* b[2] = {a[0] + len, a[1] + len};
    double pair_a[3], pair_b[3], alone_a[3], alone_b[3];
    merge->chunk_pair_sums_bf16(a, b, len, pair_a, pair_b);
    merge->chunk_sums_bf16(a, len, alone_a);
    merge->chunk_sums_bf16(b, len, alone_b);
    for (size_t j = 0; j < 3; ++j) {
      ASSERT_EQ(std::memcmp(&pair_a[j], &alone_a[j], sizeof(double)), 0)
          << "pair " << p << ", sum " << j;
      ASSERT_EQ(std::memcmp(&pair_b[j], &alone_b[j], sizeof(double)), 0)
          << "pair " << p << ", sum " << j;
    }
  }
}

TEST(MergeBf16Bits, TaskArithmeticFamilyGivesTheFloatFormsBits) {
  // The base first, then two or three fine-tunes near it (task vectors of the usual size), with
  // the specials sprinkled in all of them. The masks (TIES selection, DARE draws, breadcrumbs'
  // band) are prepared once and serve both forms.
  const size_t n = 5 * 1237 + 9;
  const std::map<std::string, double> a = {{"weight", 0.5}, {"density", 0.6}};
  const std::map<std::string, double> b = {{"weight", 0.3}, {"density", 0.8}, {"gamma", 0.02}};
  const std::map<std::string, double> c3 = {{"weight", 0.2}, {"density", 0.9}};
  for (const char* method : {"task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs_ties"}) {
    for (size_t others : {2, 3}) {
      auto sources = rows(1, n, 700);
      for (size_t m = 0; m < others; ++m) sources.push_back(fine_tune(sources[0], 800 + m));
      Bf16Case c{method, {{}, a, b}, {}, 0};
      if (others == 3) c.source_params.push_back(c3);
      for (DType compute : {DType::BF16, DType::F32}) expect_same_bits(c, sources, compute);
      // A NaN in a task vector makes DARE's rescale factor NaN for the whole tensor: the same
      // again with the largest finite values in place of NaN and infinity.
      for (auto& row : sources) {
        for (auto& v : row) {
          if ((v & 0x7F80) == 0x7F80) v = (v & 0x8000) | 0x7F7F;
        }
      }
      expect_same_bits(c, sources, DType::BF16, false);
    }
  }
}

// The sparsified methods' prepare passes on the sources' bf16 bits (prepare_bf16, the executor's
// path for bf16 sources) build the masks and rescale factors that the float32 rows give: the
// outputs of both prepared merges are the same bits. A tensor above 2^20 entries takes the
// selection's bracketed histogram; a small odd stream grain puts run boundaries everywhere. The
// bits come from memory for some sources and through the scratch for others, as the executor's
// held and read sources do.
TEST(MergeBf16Bits, PreparingFromTheBitsGivesTheFloatRowsMasks) {
  const size_t n = (size_t{1} << 20) + 4321;
  // A base of one magnitude (bf16_patterns spreads its values over 2^11, and against the large
  // ones most deltas round away, so every cut fell among zero deltas, where a wrong cut changes no
  // output), with a few specials.
  std::vector<std::vector<uint16_t>> sources(1, bf16_patterns(n / 64, 900));
  {
    std::mt19937_64 gen(901);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    while (sources[0].size() < n) sources[0].push_back(f32_to_bf16(normal(gen)));
    std::shuffle(sources[0].begin(), sources[0].end(), gen);
  }
  for (size_t m = 0; m < 3; ++m) sources.push_back(fine_tune(sources[0], 910 + m));
  std::vector<std::vector<float>> floats(sources.size(), std::vector<float>(n));
  for (size_t k = 0; k < sources.size(); ++k) {
    for (size_t i = 0; i < n; ++i) floats[k][i] = bf16_to_f32(sources[k][i]);
  }
  const std::map<std::string, double> a = {{"weight", 0.5}, {"density", 0.3}, {"gamma", 0.02}};
  const std::map<std::string, double> b = {{"weight", 0.3}, {"density", 0.6}, {"epsilon", 0.1}};
  const std::map<std::string, double> c = {{"weight", 0.2}, {"density", 0.8}};
  for (const char* method : {"ties", "dare_ties", "dare_linear", "breadcrumbs_ties", "della"}) {
    for (const size_t grain : {size_t{0}, size_t{4099}}) {
      SCOPED_TRACE(std::string(method) + ", stream grain " + std::to_string(grain));
      detail::set_stream_grain(grain);
      MergeContext ctx;
      ctx.tensor_name = "model.layers.0.mlp.down_proj.weight";
      ctx.compute_dtype = DType::BF16;
      ctx.shape = {n};
      ctx.base_index = 0;
      const std::map<std::string, double> params[] = {{}, a, b, c};
      for (size_t k = 0; k < sources.size(); ++k) {
        ctx.sources.push_back({floats[k].data(), params[k], k == 0, "m" + std::to_string(k)});
      }
      const MergeMethod* m = find_merge_method(method);
      ASSERT_NE(m, nullptr);
      const std::unique_ptr<ChunkedMerge> from_floats = m->chunked(ctx),
                                          from_bits = m->chunked(ctx);
      const SourceRangeLoader load = [&](size_t k, uint64_t begin, size_t len, float* dst) {
        std::copy(floats[k].begin() + begin, floats[k].begin() + begin + len, dst);
      };
      from_floats->prepare(load);
      std::atomic<size_t> bit_reads{0};
      from_bits->prepare_bf16(
          load, [&](size_t k, uint64_t begin, size_t len, uint16_t* scratch) -> const uint16_t* {
            ++bit_reads;
            if (k % 2 == 0) return sources[k].data() + begin;
            std::copy(sources[k].begin() + begin, sources[k].begin() + begin + len, scratch);
            return scratch;
          });
      detail::set_stream_grain(0);
      // Every method here reads the task vectors in its passes (della through the float rows, for
      // its per-row ranks, and the bits for its rescale).
      EXPECT_GT(bit_reads.load(), 0u);
      const size_t chunk = 65536;
      std::vector<const float*> at(sources.size());
      std::vector<float> expected(chunk), got(chunk);
      for (size_t begin = 0; begin < n; begin += chunk) {
        const size_t len = std::min(chunk, n - begin);
        for (size_t k = 0; k < sources.size(); ++k) at[k] = floats[k].data() + begin;
        EXPECT_EQ(from_floats->merge_chunk(at.data(), begin, len, expected.data()),
                  from_bits->merge_chunk(at.data(), begin, len, got.data()));
        ASSERT_EQ(std::memcmp(expected.data(), got.data(), len * sizeof(float)), 0)
            << "the chunk at " << begin;
      }
    }
  }
}

}  // namespace
}  // namespace alloy::test
