// Function-preserving rescalings: per-neuron factors moved between up_proj and down_proj (on every
// layout the architecture model knows, alloy/core/units.h: fused gate_up halves, stacked experts,
// Mixtral's w3 / w2), and RMSNorm gains folded into the weights that read the normalised vector
// (see alloy/perturb/perturb.h).
#include <algorithm>
#include <cmath>
#include <map>

#include "alloy/core/error.h"
#include "alloy/core/units.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using nlohmann::json;

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

// Per-row and per-column factors of one tensor seen as [matrices, rows, cols] (TensorGather::of):
// every element multiplied by its row's and its column's `multiply` factors and divided by their
// `divide` factors. Factors left at 1 change no bit (x * 1 and x / 1 are x).
struct TensorScales {
  TensorGather view;
  std::vector<float> row_multiply, row_divide, col_multiply, col_divide;

  TensorScales(const std::vector<uint64_t>& shape, bool stacked)
      : view(TensorGather::of(shape, stacked)) {
    row_multiply.assign(view.matrices * view.rows, 1.0f), row_divide = row_multiply;
    col_multiply.assign(view.matrices * view.cols, 1.0f), col_divide = col_multiply;
  }
  // Item i of `slice` (its rows, or its columns) multiplied (or divided) by c[i].
  void scale_items(const ItemSlice& slice, const std::vector<float>& c, bool divide) {
    const uint64_t matrix = slice.matrix < 0 ? 0 : uint64_t(slice.matrix);
    std::vector<float>& f =
        slice.rows ? (divide ? row_divide : row_multiply) : (divide ? col_divide : col_multiply);
    const uint64_t extent = slice.rows ? view.rows : view.cols;
    for (uint64_t i = 0; i < c.size(); ++i) {
      for (uint64_t k = 0; k < slice.width; ++k) f[matrix * extent + slice.index(i, k)] *= c[i];
    }
  }
  TensorTransform transform() const {
    return [s = *this](float* v, uint64_t rows, uint64_t cols) {
      const TensorGather& g = s.view;
      if (g.matrices * g.rows * g.cols != rows * cols)
        throw Error(ErrorCode::kInternal, "perturb: a rescaling does not match its tensor's shape");
      for (uint64_t m = 0; m < g.matrices; ++m) {
        for (uint64_t r = 0; r < g.rows; ++r) {
          float* row = v + (m * g.rows + r) * g.cols;
          const float rm = s.row_multiply[m * g.rows + r], rd = s.row_divide[m * g.rows + r];
          const float* cm = s.col_multiply.data() + m * g.cols;
          const float* cd = s.col_divide.data() + m * g.cols;
          for (uint64_t c = 0; c < g.cols; ++c) row[c] = row[c] * rm * cm[c] / rd / cd[c];
        }
      }
      return json(nullptr);
    };
  }
};

// c_i = strength^u, u uniform in [-1, 1], for the MLP `m` (a stream named after it: the same
// draws as when rescale-neurons knew only "model.layers.L.mlp." names): up's neuron items times c,
// down's divided by c. gate is left alone (the activation reads it), so act(gate) * up * c / c is
// the function unchanged. Returns c.
std::vector<float> rescale_mlp(const PerturbInput& input, const MlpUnit& m,
                               std::map<std::string, TensorScales>* scales) {
  if (!m.extra.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "perturb: rescale-neurons: the MLP " + m.key +
                    " has neuron-indexed biases, which it does not know how to rescale");
  }
  PerturbRng rng(input.options.seed, "rescale-neurons:" + m.key);
  std::vector<float> c(m.neurons);
  const double log_strength = std::log(input.strength);
  for (auto& x : c) x = float(std::exp((2 * rng.uniform() - 1) * log_strength));
  for (const auto& [slice, divide] : {std::pair{&m.up, false}, std::pair{&m.down, true}}) {
    auto it = scales->find(slice->tensor);
    if (it == scales->end()) {
      const ModelTensor& t = require_tensor(input.model, slice->tensor);
      it = scales->emplace(slice->tensor, TensorScales(t.info->shape, slice->matrix >= 0)).first;
    }
    it->second.scale_items(*slice, c, divide);
  }
  return c;
}

}  // namespace

PerturbPlan plan_rescaling(const PerturbInput& input) {
  const ModelArchitecture arch = require_architecture(input);
  // GPT-OSS computes (clamp(up) + 1) * glu(gate): scaling up's neurons changes the function.
  if (arch.family() == "gpt_oss") {
    throw Error(
        ErrorCode::kInvalidArgument,
        "perturb: rescale-neurons: " + input.model.path().string() +
            " (gpt_oss) adds 1 to its clamped up projection, so a rescaled neuron would change the "
            "function; this family cannot be disguised this way");
  }
  std::map<std::string, TensorScales> scales;
  json layers = json::array();
  for (const LayerUnits& u : model_units(arch, input.model)) {
    require_recognised(input, u, {"mlp", "shared_expert", "experts"});
    if (u.mlps.empty() && !u.experts) continue;
    layers.push_back(visit_layer_mlps(
        u, [&](const MlpUnit& m) { return json(rescale_mlp(input, m, &scales)); }));
  }
  if (layers.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "perturb: --kind rescale-neurons needs MLP layers, and " +
                    input.model.path().string() + " (" + arch.family() + ") has none");
  }
  Overrides overrides;
  for (const auto& [name, s] : scales) put(&overrides, name, s.transform());
  PerturbPlan plan;
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
