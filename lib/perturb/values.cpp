// Value perturbations: Gaussian noise, quantization round trips, and a further fine-tune
// (see alloy/perturb/perturb.h). None preserves the function; each measures what it applied.
#include <algorithm>
#include <cmath>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using nlohmann::json;

double squared_norm(const float* v, size_t n) {
  return parallel_reduce(
      n, kDefaultGrain, 0.0,
      [&](size_t b, size_t e) {
        double s = 0;
        for (size_t i = b; i < e; ++i) s += double(v[i]) * v[i];
        return s;
      },
      [](double a, double b) { return a + b; });
}

// W + N with ||N|| = strength * ||W - R|| (R = 0 without a reference), N from the stream
// "perturb.noise:<name>" of the seed, scaled in double to the exact target norm.
TensorTransform noise(const PerturbInput& input, const ModelTensor& tensor) {
  const ModelTensor* ref = nullptr;
  if (input.reference) {
    ref = &require_tensor(*input.reference, tensor.name());
    require_shape(*ref, tensor.info->shape);
  }
  const uint64_t seed = input.options.seed;
  const double strength = input.strength;
  const std::string name = tensor.name();
  return [ref, seed, strength, name](float* v, uint64_t rows, uint64_t cols) {
    const size_t n = rows * cols;
    double base = 0;
    if (ref) {
      std::vector<float> r = load_values(*ref);
      for (size_t i = 0; i < n; ++i) r[i] = float(double(v[i]) - r[i]);
      base = std::sqrt(squared_norm(r.data(), n));
    } else {
      base = std::sqrt(squared_norm(v, n));
    }
    std::vector<float> z(n);
    synth_normal(seed, synth_stream_id("perturb.noise:" + name), 0, n, z.data());
    const double z_norm = std::sqrt(squared_norm(z.data(), n));
    const float scale = z_norm > 0 ? float(strength * base / z_norm) : 0.0f;
    for (size_t i = 0; i < n; ++i) z[i] *= scale;
    const double noise_norm = std::sqrt(squared_norm(z.data(), n));
    for (size_t i = 0; i < n; ++i) v[i] += z[i];
    json extra = {{"noise_norm", noise_norm}};
    if (ref) extra["reference_norm"] = base;  // ||W - R||: what the noise is relative to
    return extra;
  };
}

// x -> q * scale with q = nearest-even(x / scale) clamped to [-levels, levels], scale =
// max|x| / levels, over spans of `group` elements (0: whole rows).
void absmax_round_trip(float* v, uint64_t rows, uint64_t cols, uint64_t group, float levels) {
  const uint64_t span = group ? group : cols;
  parallel_for(rows, 1, [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) {
      for (uint64_t start = 0; start < cols; start += span) {
        float* x = v + r * cols + start;
        const uint64_t width = std::min(span, cols - start);
        float absmax = 0;
        for (uint64_t i = 0; i < width; ++i) absmax = std::max(absmax, std::fabs(x[i]));
        if (!(absmax > 0) || !std::isfinite(absmax)) continue;
        const float scale = absmax / levels;
        for (uint64_t i = 0; i < width; ++i) {
          const float q = std::clamp(std::nearbyint(x[i] / scale), -levels, levels);
          x[i] = q * scale;
        }
      }
    }
  });
}

TensorTransform reround(ReroundFormat format) {
  return [format](float* v, uint64_t rows, uint64_t cols) {
    switch (format) {
      case ReroundFormat::kBf16:
        round_to(DType::BF16, v, rows * cols);
        break;
      case ReroundFormat::kF16:
        round_to(DType::F16, v, rows * cols);
        break;
      case ReroundFormat::kInt8:
        absmax_round_trip(v, rows, cols, 0, 127.0f);
        break;
      case ReroundFormat::kInt4:
        absmax_round_trip(v, rows, cols, 32, 7.0f);
        break;
    }
    return json(nullptr);
  };
}

}  // namespace

PerturbPlan plan_value_perturbation(const PerturbInput& input) {
  PerturbPlan plan;
  plan.measure = true;
  const PerturbOptions& o = input.options;
  switch (o.kind) {
    case PerturbKind::kNoise:
      plan.truth["relative_to"] = input.reference ? "reference" : "rms";
      plan.truth["reference"] =
          input.reference
              ? json(std::filesystem::absolute(o.reference).lexically_normal().filename().string())
              : json(nullptr);
      plan.tensors = map_tensors(input.model, [&](const ModelTensor& t) {
        return PlannedTensor{t.name(), t.name(), noise(input, t)};
      });
      break;
    case PerturbKind::kReround:
      plan.truth["format"] = reround_format_name(o.format);
      if (o.format == ReroundFormat::kInt4) plan.truth["group_size"] = 32;
      plan.tensors = map_tensors(input.model, [&](const ModelTensor& t) {
        return PlannedTensor{t.name(), t.name(), reround(o.format)};
      });
      break;
    case PerturbKind::kFineTune: {
      FineTuneOptions ft;
      ft.relative_delta = input.strength;
      ft.low_rank_fraction = o.low_rank_fraction;
      ft.rank = o.rank;
      ft.seed = o.seed;
      ft.output = o.output;
      plan.truth["low_rank_fraction"] = o.low_rank_fraction;
      plan.truth["rank"] = o.rank;
      const Model& model = input.model;
      plan.write_weights = [&model, ft](const std::filesystem::path& dir) {
        write_fine_tune_weights(model, dir, ft);
      };
      break;
    }
    default:
      throw Error(ErrorCode::kInternal, "plan_value_perturbation: not a value kind");
  }
  return plan;
}

}  // namespace alloy::detail
