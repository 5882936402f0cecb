// perturb_model: option validation, the shared helpers of the planners, and the runner that
// streams a plan into a model directory (see alloy/perturb/perturb.h and lib/perturb/internal.h).
#include <algorithm>
#include <charconv>
#include <cmath>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/parallel.h"
#include "alloy/perturb/perturb.h"
#include "alloy/core/writer.h"
#include "internal.h"

namespace alloy {
namespace fs = std::filesystem;
using detail::PerturbPlan;
using nlohmann::json;

namespace {

struct KindEntry {
  PerturbKind kind;
  const char* name;
  bool preserving;
  std::optional<double> default_strength;
};

constexpr KindEntry kKinds[] = {
    {PerturbKind::kNoise, "noise", false, 0.01},
    {PerturbKind::kReround, "reround", false, std::nullopt},
    {PerturbKind::kFineTune, "finetune", false, 0.05},
    {PerturbKind::kPermuteExperts, "permute-experts", true, std::nullopt},
    {PerturbKind::kPermuteNeurons, "permute-neurons", true, std::nullopt},
    {PerturbKind::kPermuteHeads, "permute-heads", true, std::nullopt},
    {PerturbKind::kRescaleNeurons, "rescale-neurons", true, 2.0},
    {PerturbKind::kFoldNorms, "fold-norms", true, std::nullopt},
    {PerturbKind::kStackLayers, "stack-layers", false, std::nullopt},
    {PerturbKind::kRotateResidual, "rotate-residual", true, std::nullopt},
};

const KindEntry& entry(PerturbKind kind) {
  for (const auto& e : kKinds) {
    if (e.kind == kind) return e;
  }
  throw Error(ErrorCode::kInternal, "perturb: unknown kind");
}

constexpr std::pair<ReroundFormat, const char*> kFormats[] = {{ReroundFormat::kBf16, "bf16"},
                                                              {ReroundFormat::kF16, "f16"},
                                                              {ReroundFormat::kInt8, "int8"},
                                                              {ReroundFormat::kInt4, "int4"}};

Error invalid(const std::string& message) {
  return Error(ErrorCode::kInvalidArgument, "perturb: " + message);
}

// The strength the kind will use; throws naming --strength when it is given to a kind without
// one or out of the kind's range.
double resolve_strength(const PerturbOptions& o) {
  const KindEntry& e = entry(o.kind);
  if (!e.default_strength) {
    if (o.strength) throw invalid(std::string("--strength does not apply to --kind ") + e.name);
    return 0;
  }
  const double s = o.strength.value_or(*e.default_strength);
  const double minimum = o.kind == PerturbKind::kRescaleNeurons ? 1.0 : 0.0;
  if (!std::isfinite(s) || s < minimum) {
    throw invalid(std::string("--strength for --kind ") + e.name + " must be a finite number >= " +
                  (minimum == 1.0 ? "1" : "0") + " (got " + json(s).dump() + ")");
  }
  return s;
}

void validate(const PerturbOptions& o) {
  if (!o.reference.empty() && o.kind != PerturbKind::kNoise) {
    throw invalid(std::string("--reference applies only to --kind noise, not ") +
                  perturb_kind_name(o.kind));
  }
  if (o.kind == PerturbKind::kStackLayers && o.layer_map.empty()) {
    throw invalid("--kind stack-layers needs --layer-map (e.g. 0,1,1,2,3)");
  }
  if (o.kind != PerturbKind::kStackLayers && !o.layer_map.empty()) {
    throw invalid(std::string("--layer-map applies only to --kind stack-layers, not ") +
                  perturb_kind_name(o.kind));
  }
  if (o.kind != PerturbKind::kRotateResidual && o.rotation != ResidualRotation::kRandom) {
    throw invalid(std::string("--rotation applies only to --kind rotate-residual, not ") +
                  perturb_kind_name(o.kind));
  }
  if (o.kind == PerturbKind::kFineTune) {
    if (!(o.low_rank_fraction >= 0 && o.low_rank_fraction <= 1)) {
      throw invalid("--low-rank-fraction must be in [0, 1]");
    }
    if (o.rank < 1) throw invalid("--rank must be at least 1");
  }
}

void check_storable(const Model& model, const std::string& label) {
  for (const auto& t : model.tensors()) {
    const DType d = t.info->dtype;
    if (d != DType::BF16 && d != DType::F16 && d != DType::F32) {
      throw invalid(label + ": tensor '" + t.name() + "' has dtype " + dtype_name(d) +
                    "; perturb reads and writes BF16, F16 or F32");
    }
  }
}

// Streams the plan's tensors through their transforms into dir; returns their extra ground truth
// by output name.
std::map<std::string, json> write_planned(const Model& model, const PerturbPlan& plan,
                                          const fs::path& dir, uint64_t shard_bytes) {
  std::vector<TensorSpec> specs;
  for (const auto& p : plan.tensors) {
    const ModelTensor& t = detail::require_tensor(model, p.source);
    specs.push_back({p.name, t.info->dtype, t.info->shape});
  }
  ShardedWriter writer(dir, specs, shard_bytes, {{"generator", "alloy-synth"}});
  std::map<std::string, json> extras;
  std::vector<uint8_t> bytes;
  for (const auto& p : plan.tensors) {
    const ModelTensor& t = detail::require_tensor(model, p.source);
    std::vector<float> values = detail::load_values(t);
    if (p.transform) {
      const auto& shape = t.info->shape;
      const uint64_t rows = shape.size() >= 2 ? shape[0] : 1;
      const uint64_t cols = rows ? values.size() / rows : 0;
      json extra = p.transform(values.data(), rows, cols);
      if (!extra.is_null()) extras[p.name] = std::move(extra);
    }
    bytes.resize(t.info->nbytes());
    store_from_f32(values.data(), values.size(), t.info->dtype, bytes.data());
    writer.write(p.name, bytes.data(), bytes.size());
  }
  writer.finish();
  return extras;
}

// {"name", "norm", "applied_norm"} per output tensor, comparing the written model with its source.
json measure(const Model& model, const fs::path& dir, const std::map<std::string, json>& extras) {
  const Model written = Model::open(dir);
  json tensors = json::array();
  for (const auto& t : written.tensors()) {
    const std::vector<float> after = detail::load_values(t);
    const std::vector<float> before = detail::load_values(detail::require_tensor(model, t.name()));
    struct Sums {
      double base = 0, diff = 0;
    };
    const Sums s = parallel_reduce(
        after.size(), kDefaultGrain, Sums{},
        [&](size_t b, size_t e) {
          Sums r;
          for (size_t i = b; i < e; ++i) {
            const double d = double(after[i]) - before[i];
            r.base += double(before[i]) * before[i];
            r.diff += d * d;
          }
          return r;
        },
        [](Sums a, const Sums& b) {
          return Sums{a.base + b.base, a.diff + b.diff};
        });
    json record = {
        {"name", t.name()}, {"norm", std::sqrt(s.base)}, {"applied_norm", std::sqrt(s.diff)}};
    if (const auto it = extras.find(t.name()); it != extras.end()) record.update(it->second);
    tensors.push_back(std::move(record));
  }
  return tensors;
}

std::string dtype_summary(const Model& model) {
  std::string name;
  for (const auto& t : model.tensors()) {
    const std::string d = dtype_torch_name(t.info->dtype);
    if (name.empty()) name = d;
    if (name != d) return "mixed";
  }
  return name;
}

json source_record(const fs::path& in) {
  for (const char* file : {"alloy_perturb.json", "alloy_synth.json"}) {
    if (!fs::is_regular_file(in / file)) continue;
    try {
      return json::parse(read_text_file(in / file));
    } catch (const json::exception&) {
      // Not ours after all: the record simply lacks it.
    }
  }
  return nullptr;
}

std::string directory_name(const fs::path& path) {
  return fs::absolute(path).lexically_normal().filename().string();
}

}  // namespace

const char* perturb_kind_name(PerturbKind kind) {
  return entry(kind).name;
}

std::optional<PerturbKind> perturb_kind_from_name(std::string_view name) {
  for (const auto& e : kKinds) {
    if (name == e.name) return e.kind;
  }
  return std::nullopt;
}

std::vector<PerturbKind> perturb_kinds() {
  std::vector<PerturbKind> out;
  for (const auto& e : kKinds) out.push_back(e.kind);
  return out;
}

bool perturb_preserves_function(PerturbKind kind) {
  return entry(kind).preserving;
}
std::optional<double> perturb_default_strength(PerturbKind kind) {
  return entry(kind).default_strength;
}

const char* reround_format_name(ReroundFormat format) {
  for (const auto& [f, name] : kFormats) {
    if (f == format) return name;
  }
  return "unknown";
}

std::optional<ReroundFormat> reround_format_from_name(std::string_view name) {
  for (const auto& [f, n] : kFormats) {
    if (name == n) return f;
  }
  return std::nullopt;
}

std::vector<int> parse_layer_map(std::string_view text) {
  std::vector<int> out;
  size_t begin = 0;
  while (true) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    const std::string_view item = text.substr(begin, comma - begin);
    int layer = -1;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), layer);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || layer < 0) {
      throw invalid(
          "--layer-map must be comma-separated layer indices >= 0 such as 0,1,1,2 (got '" +
          std::string(text) + "')");
    }
    out.push_back(layer);
    if (comma == text.size()) break;
    begin = comma + 1;
  }
  return out;
}

namespace detail {

ModelArchitecture require_architecture(const PerturbInput& input) {
  if (!input.model.has_config()) {
    throw Error(ErrorCode::kInvalidArgument, std::string("perturb: --kind ") +
                                                 perturb_kind_name(input.options.kind) + " needs " +
                                                 input.model.path().string() +
                                                 "/config.json to know the architecture");
  }
  return detect_architecture(input.model);
}

void require_recognised(const PerturbInput& input, const LayerUnits& u,
                        const std::vector<std::string>& units) {
  for (const std::string& problem : u.problems) {
    for (const std::string& unit : units) {
      if (problem.rfind(unit + ":", 0) == 0) {
        throw Error(ErrorCode::kShapeMismatch, "perturb: " + input.model.path().string() +
                                                   ", layer " + std::to_string(u.layer) + ": " +
                                                   problem);
      }
    }
  }
}

const ModelTensor& require_tensor(const Model& model, const std::string& name) {
  const ModelTensor* t = model.find(name);
  if (!t)
    throw Error(ErrorCode::kMissingTensor, model.path().string() + ": no tensor '" + name + "'");
  return *t;
}

void require_shape(const ModelTensor& tensor, const std::vector<uint64_t>& shape) {
  if (tensor.info->shape == shape) return;
  const auto text = [](const std::vector<uint64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  };
  throw Error(ErrorCode::kShapeMismatch, "perturb: tensor '" + tensor.name() + "' has shape " +
                                             text(tensor.info->shape) + ", expected " +
                                             text(shape));
}

std::vector<float> load_values(const ModelTensor& tensor) {
  std::vector<float> v(tensor.info->numel());
  load_as_f32(tensor.info->dtype, tensor.data(), v.size(), v.data());
  tensor.shard->release(*tensor.info);
  return v;
}

std::string layer_prefix(int layer) {
  return "model.layers." + std::to_string(layer) + ".";
}

std::vector<PlannedTensor> identity_tensors(const Model& model) {
  return map_tensors(model, [](const ModelTensor& t) {
    return PlannedTensor{t.name(), t.name(), {}};
  });
}

std::vector<PlannedTensor> map_tensors(
    const Model& model, const std::function<PlannedTensor(const ModelTensor&)>& choose) {
  std::vector<PlannedTensor> out;
  for (const auto& t : model.tensors()) out.push_back(choose(t));
  return out;
}

std::vector<PlannedTensor> apply_overrides(const Model& model, const Overrides& overrides) {
  return map_tensors(model, [&](const ModelTensor& t) {
    const auto it = overrides.find(t.name());
    return it != overrides.end() ? it->second : PlannedTensor{t.name(), t.name(), {}};
  });
}

nlohmann::json visit_layer_mlps(const LayerUnits& u, const MlpVisitor& visit) {
  nlohmann::json record = {{"layer", u.layer}};
  for (const MlpUnit& m : u.mlps) {
    if (m.name == "mlp") record["mlp"] = visit(m);
  }
  if (u.experts) {
    nlohmann::json experts = nlohmann::json::array();
    for (const MlpUnit& m : u.experts->experts) experts.push_back(visit(m));
    record["experts"] = std::move(experts);
    record["shared_expert"] = nullptr;
  }
  for (const MlpUnit& m : u.mlps) {
    if (m.name == "shared_expert") record["shared_expert"] = visit(m);
  }
  return record;
}

namespace {
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

PerturbRng::PerturbRng(uint64_t seed, const std::string& stream)
    : state_(mix64(mix64(seed * kGolden + 0x243F6A8885A308D3ull) ^
                   synth_stream_id("perturb:" + stream))) {}

uint64_t PerturbRng::next() {
  state_ += kGolden;
  return mix64(state_);
}

uint64_t PerturbRng::below(uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // accept [0, limit): a multiple of n values
  uint64_t x;
  do x = next();
  while (x >= limit);
  return x % n;
}

double PerturbRng::uniform() {
  return double(next() >> 11) * 0x1p-53;
}

std::vector<int> PerturbRng::permutation(int n) {
  std::vector<int> p(std::max(n, 0));
  for (int i = 0; i < n; ++i) p[i] = i;
  for (int i = n - 1; i > 0; --i) std::swap(p[i], p[below(uint64_t(i) + 1)]);
  return p;
}

void permute_rows(float* values, uint64_t rows, uint64_t cols, const std::vector<int>& p,
                  uint64_t block) {
  if (rows != p.size() * block)
    throw Error(ErrorCode::kInternal, "permute_rows: shape does not match");
  const std::vector<float> in(values, values + rows * cols);
  const uint64_t span = block * cols;
  for (size_t j = 0; j < p.size(); ++j) {
    std::copy_n(in.data() + uint64_t(p[j]) * span, span, values + j * span);
  }
}

void permute_columns(float* values, uint64_t rows, uint64_t cols, const std::vector<int>& p,
                     uint64_t block) {
  if (cols != p.size() * block)
    throw Error(ErrorCode::kInternal, "permute_columns: shape does not match");
  std::vector<float> row(cols);
  for (uint64_t r = 0; r < rows; ++r) {
    float* v = values + r * cols;
    std::copy_n(v, cols, row.data());
    for (size_t j = 0; j < p.size(); ++j)
      std::copy_n(row.data() + uint64_t(p[j]) * block, block, v + j * block);
  }
}

json permutation_json(const std::vector<int>& p) {
  return json(p);
}

}  // namespace detail

json perturb_model(const fs::path& in, const fs::path& out, const PerturbOptions& options) {
  const double strength = resolve_strength(options);
  validate(options);
  const Model model = Model::open(in, options.open);
  check_storable(model, in.string());
  std::optional<Model> reference;
  if (!options.reference.empty()) reference.emplace(Model::open(options.reference, options.open));
  detail::PerturbInput input{model, reference ? &*reference : nullptr, options, strength,
                             std::nullopt, {}};
  if (model.has_config()) {
    // Only stack-layers reads synth's fields (the layer count, when it can); the permutations and
    // rescale-neurons read the layout from the architecture model (alloy/core/units.h) and the
    // value kinds need none, so a real config that synth's reader does not know (text_config,
    // Mixtral's names) must not stop them.
    try {
      input.arch = architecture_from_config(model.config());
    } catch (const Error& e) {
      input.arch_error = e.what();
    }
  }

  detail::PerturbPlan plan;
  switch (options.kind) {
    case PerturbKind::kNoise:
    case PerturbKind::kReround:
    case PerturbKind::kFineTune:
      plan = detail::plan_value_perturbation(input);
      break;
    case PerturbKind::kPermuteExperts:
    case PerturbKind::kPermuteNeurons:
    case PerturbKind::kPermuteHeads:
      plan = detail::plan_permutation(input);
      break;
    case PerturbKind::kRescaleNeurons:
      plan = detail::plan_rescaling(input);
      break;
    case PerturbKind::kFoldNorms:
      plan = detail::plan_fold_norms(input);
      break;
    case PerturbKind::kStackLayers:
      plan = detail::plan_layer_stack(input);
      break;
    case PerturbKind::kRotateResidual:
      plan = detail::plan_rotation(input);
      break;
  }

  std::vector<fs::path> inputs{in};
  if (!options.reference.empty()) inputs.push_back(options.reference);
  StagingDirectory staging(out, options.output.overwrite, inputs);
  std::map<std::string, json> extras;
  if (plan.write_weights) {
    plan.write_weights(staging.path());
  } else {
    extras = write_planned(model, plan, staging.path(), options.output.shard_bytes);
  }
  if (plan.measure) plan.truth["tensors"] = measure(model, staging.path(), extras);

  if (plan.config) {
    write_file_atomic(staging.path() / "config.json", plan.config->dump(2) + "\n");
  } else if (model.has_config()) {
    write_file_atomic(staging.path() / "config.json", model.config().dump(2) + "\n");
  }
  for (size_t i = 0; i < model.auxiliary_files().size(); ++i) {
    const std::string& file = model.auxiliary_files()[i];
    if (file == "alloy_synth.json" || file == "alloy_perturb.json") continue;
    model.auxiliary(i).copy_to(staging.path() / file);
  }

  const KindEntry& e = entry(options.kind);
  json truth = {{"generator", "alloy-synth"},
                {"version", ALLOY_VERSION},
                {"kind", e.name},
                {"strength", e.default_strength ? json(strength) : json(nullptr)},
                {"seed", options.seed},
                {"function_preserving", e.preserving},
                {"source", directory_name(in)},
                {"dtype", dtype_summary(model)},
                {"source_record", source_record(in)}};
  truth.update(plan.truth);
  write_file_atomic(staging.path() / "alloy_perturb.json", truth.dump(2) + "\n");
  staging.publish();
  return truth;
}

}  // namespace alloy
