// The generalized task-arithmetic family (mergekit/merge_methods/generalized_task_arithmetic.py):
// task vectors d_i = x_i - base, each sparsified with its own density, weighted, optionally combined
// by TIES sign consensus, optionally normalised by the weights that took part, scaled by lambda and
// added back to the base.
//   task_arithmetic  Ilharco et al. 2022, arXiv:2212.04089      no sparsification, no consensus
//   ties             Yadav et al. 2023, arXiv:2306.01708        magnitude top-k, sum consensus
//   dare_ties/linear Yu et al. 2023, arXiv:2311.03099           random drop + rescale
//   breadcrumbs(_ties) Davari & Belilovsky 2023, arXiv:2312.06795  drop smallest and largest
//   della(_linear)   Deep et al. 2024, arXiv:2406.11617         magnitude-ranked random drop
#include <cmath>

#include "alloy/parallel.h"
#include "method_util.h"
#include "sparsify.h"

namespace alloy::detail {
namespace {

struct FamilyConfig {
  const char* name;
  bool sum_consensus;
  Sparsification sparsification;
  bool default_normalize;
  bool default_rescale;
};

class TaskArithmeticMethod final : public MergeMethod {
 public:
  explicit TaskArithmeticMethod(FamilyConfig config) : config_(config) {}
  std::string_view name() const override { return config_.name; }
  bool requires_base_model() const override { return true; }
  CropPolicy crop_policy() const override { return CropPolicy::kToBase; }
  std::vector<MethodParameter> parameters() const override {
    std::vector<MethodParameter> p = {
        {"weight", true, std::nullopt, true},
        {"density", true, 1.0, false},
        {"normalize", false, config_.default_normalize ? 1.0 : 0.0, false},
        {"rescale", false, config_.default_rescale ? 1.0 : 0.0, false},
        {"lambda", false, 1.0, false},
        {"int8_mask", false, 0.0, false},
    };
    if (config_.sparsification == Sparsification::kMagnitudeOutliers) p.push_back({"gamma", true, 0.01, false});
    if (config_.sparsification == Sparsification::kDellaMagprune) p.push_back({"epsilon", true, 0.15, false});
    return p;
  }

  void merge(const MergeContext& ctx, float* out) const override {
    const Rounder rnd{ctx.compute_dtype};
    const size_t base_index = require_base(ctx, config_.name);
    const float* base = ctx.sources[base_index].values;
    const size_t n = ctx.numel();
    const bool normalize = method_param(ctx, "normalize", config_.default_normalize) != 0.0;
    const bool rescale = method_param(ctx, "rescale", config_.default_rescale) != 0.0;
    const double lambda = method_param(ctx, "lambda", 1.0);

    // Task vectors of every non-base source, sparsified, then weighted: v_i = rnd(d_i * wD(w_i)).
    std::vector<std::vector<float>> weighted;
    std::vector<float> weights;
    for (size_t k = 0; k < ctx.sources.size(); ++k) {
      if (k == base_index) continue;
      const MergeSource& source = ctx.sources[k];
      const float w = rnd.param(require_source_param(ctx, source, "weight"));
      std::vector<float> delta(n);
      parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) delta[i] = rnd(source.values[i] - base[i]);
      });
      SparsifyOptions options;
      options.method = config_.sparsification;
      options.density = source_param(source, "density", 1.0);
      options.gamma = source_param(source, "gamma", 0.01);
      options.epsilon = source_param(source, "epsilon", 0.15);
      options.rescale = rescale;
      options.seed = mix_bits(ctx.seed ^ mix_bits(k + 1));
      options.cols = ctx.shape.size() >= 2 ? static_cast<size_t>(n / ctx.shape[0]) : n;
      sparsify(delta.data(), n, options, ctx.compute_dtype, ctx.tensor_name);
      parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) delta[i] = rnd(delta[i] * w);
      });
      weighted.push_back(std::move(delta));
      weights.push_back(w);
    }
    if (weighted.empty()) {
      std::copy(base, base + n, out);
      return;
    }
    float weight_sum = 0.0f;
    for (float w : weights) weight_sum += w;
    weight_sum = rnd(weight_sum);
    const float lambda_d = rnd.param(lambda);
    const size_t count = weighted.size();

    parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        float mixed = 0.0f, divisor;
        if (config_.sum_consensus) {
          float vote = 0.0f;
          for (size_t k = 0; k < count; ++k) vote += weighted[k][i];
          const float sign = rnd(vote) >= 0.0f ? 1.0f : -1.0f;  // a zero vote counts as +
          float agreeing = 0.0f;
          for (size_t k = 0; k < count; ++k) {
            const float v = weighted[k][i];
            if ((v > 0.0f && sign > 0.0f) || (v < 0.0f && sign < 0.0f)) {  // zeros never agree
              mixed += v;
              agreeing += weights[k];
            }
          }
          mixed = rnd(mixed);
          divisor = rnd(agreeing);
          if (divisor == 0.0f) divisor = 1.0f;
        } else {
          for (size_t k = 0; k < count; ++k) mixed += weighted[k][i];
          mixed = rnd(mixed);
          divisor = std::fabs(weight_sum) < 1e-8f ? 1.0f : weight_sum;
        }
        if (normalize) mixed = rnd(mixed / divisor);
        if (lambda != 1.0) mixed = rnd(mixed * lambda_d);
        out[i] = rnd(base[i] + mixed);
      }
    });
    check_finite(ctx, out, config_.name);
  }

 private:
  FamilyConfig config_;
};

}  // namespace

std::vector<const MergeMethod*> task_arithmetic_family() {
  static const TaskArithmeticMethod methods[] = {
      TaskArithmeticMethod({"task_arithmetic", false, Sparsification::kNone, false, false}),
      TaskArithmeticMethod({"ties", true, Sparsification::kMagnitude, true, false}),
      TaskArithmeticMethod({"dare_ties", true, Sparsification::kRandom, false, true}),
      TaskArithmeticMethod({"dare_linear", false, Sparsification::kRandom, false, true}),
      TaskArithmeticMethod({"breadcrumbs", false, Sparsification::kMagnitudeOutliers, false, false}),
      TaskArithmeticMethod({"breadcrumbs_ties", true, Sparsification::kMagnitudeOutliers, false, false}),
      TaskArithmeticMethod({"della", true, Sparsification::kDellaMagprune, true, true}),
      TaskArithmeticMethod({"della_linear", false, Sparsification::kDellaMagprune, false, true}),
  };
  std::vector<const MergeMethod*> list;
  for (const auto& m : methods) list.push_back(&m);
  return list;
}

}  // namespace alloy::detail
