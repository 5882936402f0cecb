// Function-preserving rescalings: per-neuron factors moved between up_proj rows and down_proj
// columns, and RMSNorm gains folded into the weights that read the normalised vector
// (see alloy/perturb/perturb.h).
#include <algorithm>
#include <cmath>
#include <map>
#include "alloy/core/error.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using nlohmann::json;

// Row r times factor[r] (divide: divided by it).
TensorTransform scale_rows(std::vector<float> factor) {
  return [factor = std::move(factor)](float* v, uint64_t rows, uint64_t cols) {
    if (rows != factor.size())
      throw Error(ErrorCode::kInternal, "scale_rows: shape does not match");
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) v[r * cols + c] *= factor[r];
    }
    return json(nullptr);
  };
}

// Column c times factor[c] (or divided by it).
TensorTransform scale_columns(std::vector<float> factor, bool divide) {
  return [factor = std::move(factor), divide](float* v, uint64_t rows, uint64_t cols) {
    if (cols != factor.size())
      throw Error(ErrorCode::kInternal, "scale_columns: shape does not match");
    for (uint64_t r = 0; r < rows; ++r) {
      float* row = v + r * cols;
      for (uint64_t c = 0; c < cols; ++c) row[c] = divide ? row[c] / factor[c] : row[c] * factor[c];
    }
    return json(nullptr);
  };
}

TensorTransform set_to(float value) {
  return [value](float* v, uint64_t rows, uint64_t cols) {
    std::fill(v, v + rows * cols, value);
    return json(nullptr);
  };
}

// Element i of the tensor's `axis` times factor[i] (a norm gain folded into a reader).
TensorTransform scale_axis(std::vector<float> factor, std::vector<uint64_t> shape, int axis) {
  return [factor = std::move(factor), shape = std::move(shape), axis](float* v, uint64_t rows, uint64_t cols) {
    uint64_t inner = 1;
    for (size_t d = size_t(axis) + 1; d < shape.size(); ++d) inner *= shape[d];
    const uint64_t n = shape[size_t(axis)];
    if (n != factor.size() || rows * cols == 0) throw Error(ErrorCode::kInternal, "scale_axis: shape does not match");
    for (uint64_t i = 0; i < rows * cols; ++i) v[i] *= factor[(i / inner) % n];
    return json(nullptr);
  };
}

void put(Overrides* overrides, const std::string& name, TensorTransform transform) {
  (*overrides)[name] = {name, name, std::move(transform)};
}

// c_i = strength^u, u uniform in [-1, 1], for the MLP at `prefix`: up rows times c, down columns
// divided by c. Returns c.
std::vector<float> rescale_mlp(const PerturbInput& input, const std::string& prefix,
                               uint64_t hidden, Overrides* overrides) {
  const ModelTensor& up = require_tensor(input.model, prefix + "up_proj.weight");
  const uint64_t width = up.info->shape.empty() ? 0 : up.info->shape[0];
  require_shape(up, {width, hidden});
  require_shape(require_tensor(input.model, prefix + "down_proj.weight"), {hidden, width});
  PerturbRng rng(input.options.seed, "rescale-neurons:" + prefix);
  std::vector<float> c(width);
  const double log_strength = std::log(input.strength);
  for (auto& x : c) x = float(std::exp((2 * rng.uniform() - 1) * log_strength));
  put(overrides, prefix + "up_proj.weight", scale_rows(c));
  put(overrides, prefix + "down_proj.weight", scale_columns(c, true));
  return c;
}

json rescale_layer(const PerturbInput& input, const Architecture& arch, int layer,
                   Overrides* overrides) {
  return visit_layer_mlps(arch, layer, [&](const std::string& prefix) {
    return json(rescale_mlp(input, prefix, uint64_t(arch.hidden), overrides));
  });
}

}  // namespace

PerturbPlan plan_rescaling(const PerturbInput& input) {
  const Architecture& arch = require_architecture(input);
  PerturbPlan plan;
  Overrides overrides;
  json layers = json::array();
  for (int l = 0; l < arch.layers; ++l) layers.push_back(rescale_layer(input, arch, l, &overrides));
  plan.truth["layers"] = std::move(layers);
  plan.tensors = apply_overrides(input.model, overrides);
  return plan;
}

StreamLayout stream_layout(const Model& model) {
  StreamLayout s;
  s.arch = detect_architecture(model);
  const ModelArchitecture& arch = s.arch;
  for (const auto& t : model.tensors()) {
    const TensorPlace p = arch.classify(t.name());
    if (p.submodel.empty() && p.role == TensorRole::kEmbedding && t.info->shape.size() == 2) {
      s.hidden = t.info->shape[1];
      break;
    }
  }
  if (s.hidden == 0) {
    throw Error(ErrorCode::kInvalidArgument, "perturb: " + model.path().string() +
                                                 ": no 2-D embedding tensor tells the residual stream's width");
  }
  std::vector<std::string> final_norms;
  for (const auto& t : model.tensors()) {
    const TensorPlace p = arch.classify(t.name());
    const auto& shape = t.info->shape;
    if (!p.submodel.empty()) {
      if (std::find(s.submodels.begin(), s.submodels.end(), p.submodel) == s.submodels.end()) {
        s.submodels.push_back(p.submodel);
      }
      continue;
    }
    if (p.role == TensorRole::kLmHead) s.head = t.name();
    if (p.role == TensorRole::kNorm && shape == std::vector<uint64_t>{s.hidden}) {
      // Gemma's sandwich norms also normalise the writers' outputs before the residual add: no gain
      // can be folded past them and RMSNorm(o Q) g != RMSNorm(o) g Q, so the family is refused.
      // A (1 + w) norm without them (Qwen3-Next, Qwen3.5) folds 1 + w and is stored as 0 after.
      if (p.suffix == kWriterPostNorm) {
        throw Error(ErrorCode::kInvalidArgument,
                    "perturb: norm '" + t.name() + "' normalises a writer's output before the residual add "
                        "(Gemma's sandwich norms): folding the gains or rotating the stream would change the "
                        "function, so fold-norms and rotate-residual refuse this family");
      }
      if (p.view == TensorView::kNormOffsetOne) s.offset_one_norms.insert(t.name());
      else if (p.view != TensorView::kPlain) {
        throw Error(ErrorCode::kInvalidArgument, "perturb: norm '" + t.name() + "' is stored as " +
                                                     view_name(p.view) + ", which fold-norms does not know how to fold");
      }
      if (p.layer < 0) final_norms.push_back(t.name());
      continue;
    }
    const int axis = residual_axis(p.role, p.view, shape, s.hidden);
    if (axis == kNoResidualAxis) continue;
    if (axis == kUnknownResidualAxis) {
      throw Error(ErrorCode::kInvalidArgument,
                  "perturb: tensor '" + t.name() + "' (" + role_name(p.role) + ", " + view_name(p.view) +
                      ") meets the residual stream, but its shape does not say which axis has the hidden size " +
                      std::to_string(s.hidden) + "; fold-norms and rotate-residual cannot transform it");
    }
    ResidualRole role = residual_role(p.role);
    if (p.role == TensorRole::kExpertBias) role = {ResidualUse::kWrites, ResidualNorm::kNone};
    s.tensors.push_back({t.name(), shape, role, axis, p.layer});
  }
  if (final_norms.size() == 1) s.final_norm = final_norms[0];
  return s;
}

float StreamLayout::norm_offset(const std::string& norm) const {
  return offset_one_norms.count(norm) ? 1.0f : 0.0f;
}

std::string StreamLayout::norm_of(const StreamTensor& t) const {
  if (t.role.norm == ResidualNorm::kFinal) return final_norm;
  if (t.layer < 0) return "";
  const auto& suffixes = arch.layer_suffixes(t.layer);
  const auto has = [&suffixes](const char* suffix) {
    return std::find(suffixes.begin(), suffixes.end(), suffix) != suffixes.end();
  };
  const char* suffix = layer_norm_suffix(t.role.norm, has);
  return *suffix && has(suffix) ? arch.layer_tensor(t.layer, suffix) : std::string();
}

PerturbPlan plan_fold_norms(const PerturbInput& input, StreamLayout* layout) {
  StreamLayout s = stream_layout(input.model);
  // The readers of each norm, norms in the model's order.
  std::vector<std::string> norms;
  std::map<std::string, std::vector<const StreamTensor*>> readers;
  for (const StreamTensor& t : s.tensors) {
    if (t.role.use != ResidualUse::kReads) continue;
    const std::string norm = s.norm_of(t);
    if (norm.empty()) {
      throw Error(ErrorCode::kInvalidArgument, "perturb: fold-norms: no norm found that '" + t.name +
                                                   "' reads the residual stream through");
    }
    if (!readers.count(norm)) norms.push_back(norm);
    readers[norm].push_back(&t);
  }
  Overrides overrides;
  json by_norm = json::object(), layers = json::array();
  std::map<int, json> layer_records;
  for (const std::string& norm : norms) {
    const ModelTensor& gain = require_tensor(input.model, norm);
    require_shape(gain, {s.hidden});
    const float offset = s.norm_offset(norm);
    std::vector<float> g = load_values(gain);
    for (float& x : g) x += offset;  // the gain applied: w, or 1 + w
    for (const StreamTensor* t : readers[norm]) put(&overrides, t->name, scale_axis(g, t->shape, t->axis));
    put(&overrides, norm, set_to(1.0f - offset));  // a unit gain as this norm stores it
    by_norm[norm] = g;
    int layer;
    std::string suffix;
    if (s.arch.split_layer(norm, &layer, &suffix)) {
      json& record = layer_records[layer];
      record["layer"] = layer;
      record[suffix.substr(0, suffix.rfind(".weight"))] = g;
    }
  }
  PerturbPlan plan;
  for (auto& entry : layer_records) layers.push_back(std::move(entry.second));
  plan.truth["layers"] = std::move(layers);
  // The final norm feeds lm_head only when the head is not tied to the embeddings.
  plan.truth["final_norm"] = by_norm.contains(s.final_norm) ? by_norm[s.final_norm] : json(nullptr);
  plan.truth["norms"] = std::move(by_norm);
  plan.tensors = apply_overrides(input.model, overrides);
  if (layout) *layout = std::move(s);
  return plan;
}

}  // namespace alloy::detail
