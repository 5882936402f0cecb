// The streaming form of the task-arithmetic family (lib/merge/methods/sparsify.h,
// task_arithmetic_family.cpp): masks, thresholds and rescale factors built from ranges of the
// sources read run by run, then the combine chunk by chunk, must give the bits of the
// whole-tensor merge() for every method, compute dtype, shape (matrices, rank 3 for DELLA's
// strided fibers, 1-D) and thread count, with runs and chunks of small odd lengths whose
// boundaries fall inside rows and inside the fixed blocks of the L1 sums.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "alloy/core/parallel.h"
#include "merge/methods/sparsify.h"
#include "test_method_utils.h"

namespace {

using alloy::DType;
using alloy::MergeContext;

// base, and two fine-tunes whose deltas have heavy ties: a fifth of the entries unchanged (delta
// 0), the rest on a coarse grid, so that the selection boundary is a key shared by many entries
// spread over many runs.
std::vector<std::vector<float>> family(DType d, size_t n, uint64_t seed) {
  std::vector<std::vector<float>> v;
  v.push_back(alloy::test::random_values(d, n, seed, 0.05));
  std::mt19937_64 gen(seed * 31 + 7);
  for (int m = 0; m < 2; ++m) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) {
      const uint64_t r = gen();
      const double step = (m == 0 ? 0.001953125 : 0.00048828125) * static_cast<double>(r % 9 + 1);
      const double delta = r % 5 == 0 ? 0.0 : ((r >> 8) & 1 ? step : -step) * ((r >> 9) % 7 + 1);
      x[i] = alloy::test::rnd(d, v[0][i] + delta);
    }
    v.push_back(x);
  }
  return v;
}

struct Inputs {
  MergeContext ctx;
  std::vector<std::vector<float>> values;
};

Inputs context(const std::string& method, DType d, const std::vector<uint64_t>& shape) {
  Inputs run;
  size_t n = 1;
  for (uint64_t s : shape) n *= s;
  run.values = family(d, n, n + static_cast<uint64_t>(d) * 1000 + method.size());
  run.ctx.tensor_name = "model.layers.0.mlp.up_proj.weight";
  run.ctx.compute_dtype = d;
  run.ctx.shape = shape;
  run.ctx.base_index = 0;
  run.ctx.seed = 1234;
  run.ctx.params = {};
  const std::map<std::string, double> p1 = {
      {"weight", 0.6}, {"density", 0.4}, {"gamma", 0.05}, {"epsilon", 0.1}};
  const std::map<std::string, double> p2 = {
      {"weight", 0.5}, {"density", 0.7}, {"gamma", 0.02}, {"epsilon", 0.2}};
  run.ctx.sources.push_back({run.values[0].data(), {}, true, "base"});
  run.ctx.sources.push_back({run.values[1].data(), p1, false, "ft_1"});
  run.ctx.sources.push_back({run.values[2].data(), p2, false, "ft_2"});
  return run;
}

class StreamingTies : public ::testing::Test {
 protected:
  void TearDown() override {
    alloy::detail::set_stream_grain(0);
    alloy::set_thread_count(0);
  }
};

TEST_F(StreamingTies, StreamedOutputIsBitIdenticalToTheWholeTensorMerge) {
  const char* methods[] = {"ties",        "dare_ties", "dare_linear",  "breadcrumbs",
                           "breadcrumbs_ties", "della", "della_linear", "task_arithmetic"};
  // 61 x 1777: four blocks of the L1 sums, rows of odd length; 3 x 37 x 41: DELLA's strided
  // fibers; 5003: one 1-D fiber.
  const std::vector<std::vector<uint64_t>> shapes = {{61, 1777}, {3, 37, 41}, {5003}};
  size_t compared = 0, sparsified = 0;
  for (const char* method : methods) {
    const alloy::MergeMethod* m = alloy::find_merge_method(method);
    ASSERT_NE(m, nullptr) << method;
    for (DType d : {DType::BF16, DType::F16, DType::F32}) {
      for (const auto& shape : shapes) {
        Inputs run = context(method, d, shape);
        const size_t n = run.ctx.numel();
        for (int threads : {1, 2}) {
          alloy::set_thread_count(threads);
          alloy::detail::set_stream_grain(0);
          std::vector<float> whole(n, -1.0f);
          m->merge(run.ctx, whole.data());
          // Today's output is not a plain task_arithmetic: the masks took effect.
          if (std::string(method) != "task_arithmetic") {
            std::vector<float> plain(n);
            alloy::find_merge_method("task_arithmetic")->merge(run.ctx, plain.data());
            sparsified += std::memcmp(plain.data(), whole.data(), n * sizeof(float)) != 0;
          }
          for (size_t grain : {size_t{0}, size_t{777}, size_t{61}, size_t{1}}) {
            if (grain == 1 && n > 6000) continue;  // one element per run: the small shapes
            alloy::detail::set_stream_grain(grain);
            const auto chunked = m->chunked(run.ctx);
            ASSERT_NE(chunked, nullptr) << method;
            std::vector<float> streamed(n, -2.0f);
            alloy::run_chunked(*chunked, run.ctx, method, streamed.data(), grain);
            size_t differ = 0;
            for (size_t i = 0; i < n; ++i) differ += !alloy::test::same_bits(whole[i], streamed[i]);
            EXPECT_EQ(differ, 0u) << method << " " << alloy::dtype_name(d) << " shape[0]=" << shape[0]
                                  << " rank " << shape.size() << " threads " << threads
                                  << " grain " << grain;
            ++compared;
          }
        }
      }
    }
  }
  EXPECT_GT(compared, 8u * 3 * 3 * 2 * 3);
  EXPECT_EQ(sparsified, 7u * 3 * 3 * 2);
}

// The task vectors of expect_full_sort_selection: kTies, most entries share the threshold |delta|
// in every chunk (the histogram then counts every bin: a bracket would hold most entries); kSpread,
// 255 magnitudes of about 0.4% of the entries each (a narrow bracket holds the cut); kSkewed, as
// kSpread with the first 2048 entries of every chunk (the bracket's sample) 64 times larger, so
// that the sample puts the bracket far above the cut.
enum class Deltas { kTies, kSpread, kSkewed };

// The magnitude selections of `method` in dtype d on n = 5 x 212184 entries (> 4 x 2^18: five
// selection chunks; > 2^20: the bracketed histogram) against a full sort. Every |delta| is exact in
// every dtype. The streamed and whole-tensor merges must equal a merge of inputs masked by a full
// sort (entries not kept set to the base, density 1), so a cutoff one tie off fails; `bracketed`
// and `misses`: how many of the two merges' selections must have gone through a bracket, and how
// many brackets must have missed.
void expect_full_sort_selection(const char* method, DType d, Deltas kind, uint64_t bracketed, uint64_t misses) {
  const size_t n = 5 * 212184;  // a multiple of the inner dimension
  const size_t chunk = ((n + 4) / 5 + 63) / 64 * 64;  // the selection's chunks (sparsify.cpp, Chunks)
  const std::vector<uint64_t> shape = {n / 5, 5};
  std::mt19937_64 gen(static_cast<uint64_t>(d) * 17 + std::string(method).size() + static_cast<uint64_t>(kind));
  std::vector<std::vector<float>> values(3, std::vector<float>(n, 0.0f));
  // kTies: base on a grid of 2^-8; deltas 0.5 (10%), 0.25 (70%: the threshold), smaller (20%).
  // kSpread, kSkewed: base 0, deltas k * 2^-13 for k in 1..255.
  if (kind == Deltas::kTies) {
    for (size_t i = 0; i < n; ++i) values[0][i] = static_cast<float>(static_cast<int>(gen() % 129) - 64) / 256.0f;
  }
  for (size_t m = 1; m < 3; ++m) {
    for (size_t i = 0; i < n; ++i) {
      const uint64_t r = gen();
      const float sign = (r >> 20) & 1 ? 1.0f : -1.0f;
      const uint64_t bucket = r % 10;
      float delta = bucket == 0 ? 0.5f : bucket < 8 ? 0.25f : static_cast<float>((r >> 8) % 15) / 64.0f;
      if (kind != Deltas::kTies) delta = static_cast<float>((r >> 8) % 255 + 1) / 8192.0f;
      if (kind == Deltas::kSkewed && i % chunk < 2048) delta *= 64.0f;
      values[m][i] = values[0][i] + sign * delta;
    }
  }
  const double density[2] = {0.4, 0.55}, gamma[2] = {0.15, 0.07};
  // Each model's kept entries by a full sort (descending |delta|, ties to the lower index).
  std::vector<std::vector<float>> masked = values;
  for (size_t m = 1; m < 3; ++m) {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return std::fabs(values[m][a] - values[0][a]) > std::fabs(values[m][b] - values[0][b]);
    });
    uint64_t lo = 0, hi = static_cast<uint64_t>(density[m - 1] * static_cast<double>(n));
    if (std::string(method) != "ties") {
      lo = static_cast<uint64_t>(gamma[m - 1] * static_cast<double>(n));
      hi = n - (n - hi - lo);
    }
    for (uint64_t r = 0; r < n; ++r) {
      if (r < lo || r >= hi) masked[m][order[r]] = values[0][order[r]];
    }
  }
  auto context = [&](const std::vector<std::vector<float>>& v, bool dense) {
    MergeContext ctx;
    ctx.tensor_name = "model.layers.0.mlp.up_proj.weight";
    ctx.compute_dtype = d;
    ctx.shape = shape;
    ctx.base_index = 0;
    ctx.sources.push_back({v[0].data(), {}, true, "base"});
    for (size_t m = 1; m < 3; ++m) {
      std::map<std::string, double> p = {{"weight", m == 1 ? 0.6 : 0.5},
                                         {"density", dense ? 1.0 : density[m - 1]},
                                         {"gamma", gamma[m - 1]}};
      ctx.sources.push_back({v[m].data(), p, false, m == 1 ? "ft_1" : "ft_2"});
    }
    return ctx;
  };
  const alloy::MergeMethod* merge = alloy::find_merge_method(method);
  std::vector<float> expected(n), whole(n), streamed(n);
  merge->merge(context(masked, true), expected.data());
  const MergeContext ctx = context(values, false);
  const auto before = alloy::detail::selection_bracket_counts();
  merge->merge(ctx, whole.data());
  alloy::detail::set_stream_grain(997);
  alloy::run_chunked(*merge->chunked(ctx), ctx, method, streamed.data(), 1013);
  alloy::detail::set_stream_grain(0);
  const auto after = alloy::detail::selection_bracket_counts();
  const std::string what = std::string(method) + " " + alloy::dtype_name(d) + " deltas " +
                           std::to_string(static_cast<int>(kind));
  EXPECT_EQ(after.bracketed - before.bracketed, bracketed) << what;
  EXPECT_EQ(after.misses - before.misses, misses) << what;
  size_t whole_differ = 0, streamed_differ = 0;
  for (size_t i = 0; i < n; ++i) {
    whole_differ += !alloy::test::same_bits(expected[i], whole[i]);
    streamed_differ += !alloy::test::same_bits(expected[i], streamed[i]);
  }
  EXPECT_EQ(whole_differ, 0u) << what;
  EXPECT_EQ(streamed_differ, 0u) << what;
}

TEST_F(StreamingTies, ThresholdTiesAcrossChunksMatchAFullSort) {
  for (const char* method : {"ties", "breadcrumbs", "breadcrumbs_ties"}) {
    for (DType d : {DType::BF16, DType::F16, DType::F32}) expect_full_sort_selection(method, d, Deltas::kTies, 0, 0);
  }
}

// With spread magnitudes a narrow bracket holds the TIES cut (both merges select through it); the
// breadcrumbs' two cuts lie far apart, so a bracket around both would hold much of the tensor, and
// every bin is counted. The ties at the cut still span every chunk.
TEST_F(StreamingTies, BracketedSelectionMatchesAFullSort) {
  for (DType d : {DType::BF16, DType::F16, DType::F32}) {
    expect_full_sort_selection("ties", d, Deltas::kSpread, 2, 0);
    expect_full_sort_selection("breadcrumbs", d, Deltas::kSpread, 0, 0);
  }
}

// A bracket fixed from a sample that misrepresents the tensor misses its cut; the histogram then
// counts every bin, and the selection is still the full sort's.
TEST_F(StreamingTies, BracketMissedByASkewedSampleStillMatchesAFullSort) {
  for (DType d : {DType::BF16, DType::F32}) expect_full_sort_selection("ties", d, Deltas::kSkewed, 0, 2);
}

// A refusal (a density that keeps no entry) is still reported, by prepare(), naming the tensor
// and the model.
TEST_F(StreamingTies, RefusalsComeFromPrepare) {
  Inputs run = context("ties", DType::BF16, {7, 3});
  run.ctx.sources[1].params["density"] = 0.01;
  const auto chunked = alloy::find_merge_method("ties")->chunked(run.ctx);
  ASSERT_NE(chunked, nullptr);
  std::vector<float> out(21);
  std::string message;
  EXPECT_EQ(alloy::test::error_code_of(
                [&] { alloy::run_chunked(*chunked, run.ctx, "ties", out.data()); }, &message),
            alloy::ErrorCode::kRecipe);
  EXPECT_NE(message.find("up_proj"), std::string::npos) << message;
  EXPECT_NE(message.find("ft_1"), std::string::npos) << message;
}

}  // namespace
