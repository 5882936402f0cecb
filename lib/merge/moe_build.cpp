// alloy-moe: a mixture of experts assembled from dense models (mergekit-moe's semantics, read in
// mergekit/moe/{mixtral,qwen,qwen3,common,router}.py and mergekit/scripts/moe.py; docs/moe.md).
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "alloy/core/random.h"
#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/hub_cache.h"
#include "alloy/core/model.h"
#include "alloy/core/safetensors.h"
#include "alloy/core/writer.h"
#include "alloy/merge/moe.h"
#include "methods/method_util.h"

namespace alloy {
namespace fs = std::filesystem;
namespace {

constexpr const char* kLayerPrefix = "model.layers.";

// Standard normal number `index` of stream `stream` (Box-Muller on two counter-based uniforms).
double normal_at(uint64_t stream, uint64_t index) {
  const uint64_t pair = index / 2;
  const double u1 = detail::uniform01(stream, 2 * pair), u2 = detail::uniform01(stream, 2 * pair + 1);
  const double radius = std::sqrt(-2.0 * std::log1p(-u1));  // 1 - u1 in (0, 1]
  const double angle = 2.0 * M_PI * u2;
  return radius * (index % 2 == 0 ? std::cos(angle) : std::sin(angle));
}

std::string where(const MoeRecipe& r, const RecipePosition& pos) {
  return pos.line > 0 ? r.label + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) : r.label;
}

// One output tensor and where its values come from.
struct MoeTensor {
  enum class Kind { kCopy, kRouter, kZeros };
  std::string name;
  Kind kind = Kind::kCopy;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;
  const ModelTensor* source = nullptr;     // kCopy
  std::optional<double> noise_scale;       // kCopy of an expert's tensor
  std::optional<double> residual_scale;    // kCopy of an expert's down_proj
  uint64_t noise_stream = 0;
  const std::vector<double>* rows = nullptr;  // kRouter: [rows, hidden] values
};

struct Inputs {
  std::vector<std::string> names;           // distinct model references, base first
  std::vector<fs::path> paths;
  std::vector<std::unique_ptr<Model>> models;
  size_t index(const std::string& name) const {
    return static_cast<size_t>(std::find(names.begin(), names.end(), name) - names.begin());
  }
};

std::string model_type(const Model& m) {
  const auto it = m.config().find("model_type");
  return it != m.config().end() && it->is_string() ? it->get<std::string>() : "";
}

// mergekit's select_output_arch: the architectures that support the recipe, in mergekit's order
// (Mixtral, DeepSeek MoE, Qwen MoE, Qwen3 MoE) filtered by `architecture:` as a name prefix;
// Mixtral when it is among them, else the first. DeepSeek MoE is not written by alloy.
MoeArchitecture select_architecture(const MoeRecipe& r, const Inputs& in, std::vector<std::string>* notices) {
  std::vector<std::string> types;
  for (const auto& m : in.models) types.push_back(model_type(*m));
  const bool same = std::all_of(types.begin(), types.end(), [&](const std::string& t) { return t == types[0]; });
  const std::string type = types[0];
  const bool random = r.gate_mode == MoeGateMode::kRandom || r.gate_mode == MoeGateMode::kUniformRandom;
  const bool llama_like = type == "llama" || type == "mistral";
  struct Candidate {
    const char* name;
    bool supported;
    std::string why_not;
  };
  const bool shared_prompts = !r.shared_experts.empty() && (!r.shared_experts[0].positive_prompts.empty() ||
                                                           !r.shared_experts[0].negative_prompts.empty());
  std::vector<Candidate> all = {
      {"Mixtral", r.shared_experts.empty() && same && llama_like,
       !r.shared_experts.empty() ? "no shared experts" : "all models Llama or Mistral, of one model_type"},
      {"DeepSeek MoE", r.shared_experts.size() <= 1 && !shared_prompts && same && llama_like,
       "all models Llama or Mistral, at most one shared expert, without prompts"},
      {"Qwen MoE",
       r.shared_experts.size() == 1 && (random || !r.shared_experts[0].positive_prompts.empty()) && same &&
           (llama_like || type == "qwen2"),
       "exactly one shared expert (with prompts unless the gate mode is random), all models Qwen2, Llama or "
       "Mistral, of one model_type"},
      {"Qwen3 MoE", r.shared_experts.empty() && same && type == "qwen3",
       "no shared experts, all models Qwen3"},
  };
  std::string lowered = r.architecture.value_or("");
  std::transform(lowered.begin(), lowered.end(), lowered.begin(), ::tolower);
  std::vector<const Candidate*> named, supported;
  for (const auto& c : all) {
    std::string n = c.name;
    std::transform(n.begin(), n.end(), n.begin(), ::tolower);
    if (n.rfind(lowered, 0) != 0) continue;
    named.push_back(&c);
    if (c.supported) supported.push_back(&c);
  }
  std::string inputs;
  for (size_t i = 0; i < in.names.size(); ++i) {
    inputs += (i ? ", " : "") + in.names[i] + " (" + (types[i].empty() ? "no model_type" : types[i]) + ")";
  }
  if (named.empty()) {
    throw Error(ErrorCode::kRecipe, where(r, r.architecture_position) + ": no output architecture is called '" +
                                        *r.architecture + "'; one of: Mixtral, Qwen MoE, Qwen3 MoE (DeepSeek MoE is "
                                        "not written by alloy-moe)");
  }
  if (supported.empty()) {
    std::string needs;
    for (const auto* c : named) needs += std::string("; ") + c->name + " needs " + c->why_not;
    throw Error(ErrorCode::kRecipe, where(r, r.architecture ? r.architecture_position : r.base_position) +
                                        ": no output architecture fits these models: " + inputs + needs);
  }
  const Candidate* chosen = supported[0];
  for (const auto* c : supported) {
    if (std::string(c->name) == "Mixtral") chosen = c;
  }
  if (std::string(chosen->name) == "DeepSeek MoE") {
    throw Error(ErrorCode::kRecipe,
                where(r, r.base_position) +
                    ": mergekit-moe would write a DeepSeek MoE for this recipe, which alloy-moe does not write; "
                    "set 'architecture: qwen' (Qwen2-MoE, one shared expert) or drop the shared expert (Mixtral)");
  }
  if (supported.size() > 1 && std::string(chosen->name) != "Mixtral") {
    notices->push_back(std::string("several output architectures fit; using ") + chosen->name +
                       " as mergekit-moe does (set architecture: to choose)");
  }
  const std::string name = chosen->name;
  return name == "Mixtral" ? MoeArchitecture::kMixtral
         : name == "Qwen MoE" ? MoeArchitecture::kQwen2Moe
                              : MoeArchitecture::kQwen3Moe;
}

int config_int(const Model& m, const std::string& name, const char* key) {
  const auto it = m.config().find(key);
  if (it == m.config().end() || !it->is_number_integer() || it->get<int64_t>() <= 0 ||
      it->get<int64_t>() > (1 << 24)) {
    throw Error(ErrorCode::kBadConfig, name + ": config.json has no positive integer '" + key + "'");
  }
  return static_cast<int>(it->get<int64_t>());
}

// The router rows of the hidden gate modes from the precomputed hidden states (docs/moe.md):
// tensor "<group>.<i>.positive" [layers, prompts, hidden] and, with negative prompts, ".negative".
std::vector<double> hidden_gate(const SafetensorsFile& file, const std::string& group,
                                const std::vector<MoeExpert>& experts, int layers, int hidden) {
  const size_t rows = experts.size();
  std::vector<double> out(static_cast<size_t>(layers) * rows * hidden, 0.0);
  for (size_t e = 0; e < rows; ++e) {
    std::vector<double> v(static_cast<size_t>(layers) * hidden, 0.0);
    for (const char* side : {"positive", "negative"}) {
      const bool positive = std::string(side) == "positive";
      const auto& prompts = positive ? experts[e].positive_prompts : experts[e].negative_prompts;
      const std::string name = group + "." + std::to_string(e) + "." + side;
      const TensorInfo* t = file.find(name);
      if (prompts.empty()) {
        if (t != nullptr) {
          throw Error(ErrorCode::kInvalidArgument, file.path() + ": tensor '" + name + "' is given but " + group +
                                                       " entry " + std::to_string(e) + " has no " + side + "_prompts");
        }
        continue;
      }
      if (t == nullptr) {
        throw Error(ErrorCode::kMissingTensor, file.path() + ": no tensor '" + name + "' [" + std::to_string(layers) +
                                                   ", " + std::to_string(prompts.size()) + ", " +
                                                   std::to_string(hidden) + "] for the " + side + " prompts of " +
                                                   group + " entry " + std::to_string(e));
      }
      const std::vector<uint64_t> want = {static_cast<uint64_t>(layers), prompts.size(), static_cast<uint64_t>(hidden)};
      if (t->shape != want || !can_load_as_f32(t->dtype)) {
        std::string got;
        for (uint64_t d : t->shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
        throw Error(ErrorCode::kShapeMismatch,
                    file.path() + ": tensor '" + name + "' is " + dtype_name(t->dtype) + " [" + got + "]; expected a float [" +
                        std::to_string(layers) + ", " + std::to_string(prompts.size()) + ", " +
                        std::to_string(hidden) + "] (layers, " + side + " prompts, hidden size)");
      }
      std::vector<uint8_t> bytes(t->nbytes());
      file.read(*t, 0, bytes.size(), bytes.data());
      std::vector<float> x(t->numel());
      load_as_f32(t->dtype, bytes.data(), x.size(), x.data());
      const double sign = positive ? 1.0 : -1.0;
      const size_t p_count = prompts.size();
      for (int l = 0; l < layers; ++l) {
        for (int h = 0; h < hidden; ++h) {
          double sum = 0;
          for (size_t p = 0; p < p_count; ++p) sum += x[(static_cast<size_t>(l) * p_count + p) * hidden + h];
          v[static_cast<size_t>(l) * hidden + h] += sign * (sum / static_cast<double>(p_count));
        }
      }
    }
    for (int l = 0; l < layers; ++l) {
      double norm = 0;
      for (int h = 0; h < hidden; ++h) norm += v[static_cast<size_t>(l) * hidden + h] * v[static_cast<size_t>(l) * hidden + h];
      norm = std::max(std::sqrt(norm), 1e-8);
      for (int h = 0; h < hidden; ++h) {
        out[(static_cast<size_t>(l) * rows + e) * hidden + h] = v[static_cast<size_t>(l) * hidden + h] / norm;
      }
    }
  }
  return out;
}

// mergekit's warn_degenerate_gates: layers whose router rows have a condition number above 5.
std::string degenerate_layers(const std::vector<double>& rows, int layers, int experts, int hidden) {
  if (experts < 2) return "";
  std::string out;
  for (int l = 0; l < layers; ++l) {
    Eigen::MatrixXd m(experts, hidden);
    for (int e = 0; e < experts; ++e) {
      for (int h = 0; h < hidden; ++h) m(e, h) = rows[(static_cast<size_t>(l) * experts + e) * hidden + h];
    }
    const Eigen::VectorXd s = Eigen::JacobiSVD<Eigen::MatrixXd>(m).singularValues();
    const double smallest = s(s.size() - 1);
    if (!(smallest > 0) || s(0) / smallest > 5.0) out += (out.empty() ? "" : ", ") + std::to_string(l);
  }
  return out;
}

// The expert's name for a dense MLP tensor suffix ("mlp.gate_proj.weight") in the output layout.
std::string expert_suffix(MoeArchitecture arch, const std::string& suffix, int expert) {
  if (arch != MoeArchitecture::kMixtral) return "mlp.experts." + std::to_string(expert) + "." + suffix.substr(4);
  static const std::map<std::string, std::string> w = {
      {"mlp.gate_proj.weight", "w1"}, {"mlp.down_proj.weight", "w2"}, {"mlp.up_proj.weight", "w3"}};
  return "block_sparse_moe.experts." + std::to_string(expert) + "." + w.at(suffix) + ".weight";
}

nlohmann::json output_config(const Model& base, MoeArchitecture arch, const MoeRecipe& r,
                             std::optional<DType> dtype) {
  nlohmann::json c = base.config();
  const int experts = static_cast<int>(r.experts.size());
  c["output_router_logits"] = false;
  c["router_aux_loss_coef"] = 0.001;
  c["num_experts_per_tok"] = r.experts_per_token;
  const nlohmann::json intermediate = c.value("intermediate_size", nlohmann::json());
  if (arch == MoeArchitecture::kMixtral) {
    c["architectures"] = {"MixtralForCausalLM"};
    c["model_type"] = "mixtral";
    c["num_local_experts"] = experts;
    c["sliding_window"] = nullptr;
    c["router_jitter_noise"] = 0.0;
  } else {
    c["architectures"] = {arch == MoeArchitecture::kQwen2Moe ? "Qwen2MoeForCausalLM" : "Qwen3MoeForCausalLM"};
    c["model_type"] = arch == MoeArchitecture::kQwen2Moe ? "qwen2_moe" : "qwen3_moe";
    c["num_experts"] = experts;
    c["decoder_sparse_step"] = 1;
    c["norm_topk_prob"] = true;
    c["mlp_only_layers"] = nlohmann::json::array();
    c["moe_intermediate_size"] = intermediate;
    if (arch == MoeArchitecture::kQwen2Moe) {
      c["shared_expert_intermediate_size"] = intermediate;
      c["sliding_window"] = nullptr;
      c["use_sliding_window"] = false;
    }
  }
  if (dtype) {
    c["torch_dtype"] = dtype_torch_name(*dtype);
    if (c.contains("dtype")) c["dtype"] = dtype_torch_name(*dtype);
  }
  return c;
}

std::string quoted(const std::string& text) { return nlohmann::json(text).dump(); }

std::string model_card(const MoeRecipe& r, MoeArchitecture arch, const std::string& title) {
  std::vector<std::string> sources = {r.base_model};
  for (const auto* group : {&r.experts, &r.shared_experts}) {
    for (const auto& e : *group) {
      if (std::find(sources.begin(), sources.end(), e.source_model) == sources.end()) sources.push_back(e.source_model);
    }
  }
  std::string out = "---\nbase_model:\n";
  for (const auto& s : sources) out += "- " + quoted(s) + "\n";
  out += "base_model_relation: merge\nlibrary_name: transformers\ntags:\n- merge\n- mergekit\n- alloy\n- moe\n---\n";
  out += "# " + title + "\n\nA mixture of experts (" + std::string(moe_architecture_name(arch)) +
         " layout) assembled from dense models with alloy-moe, which reads mergekit-moe's recipes.\n\n";
  out += "## Sources\n\n- attention, norms, embeddings and output head: `" + r.base_model + "` (the base)\n";
  for (size_t e = 0; e < r.experts.size(); ++e) {
    out += "- routed expert " + std::to_string(e) + ": the MLP of `" + r.experts[e].source_model + "`\n";
  }
  for (const auto& e : r.shared_experts) out += "- shared expert: the MLP of `" + e.source_model + "`\n";
  out += "\nRouter initialisation: `gate_mode: " + std::string(moe_gate_mode_name(r.gate_mode)) +
         "`; " + std::to_string(r.experts_per_token) + " experts per token.\n\n## Configuration\n\n```yaml\n" +
         r.text + (r.text.empty() || r.text.back() == '\n' ? "" : "\n") + "```\n";
  return out;
}

// Fills `out` (the tensor's bytes in its output dtype).
void produce(const MoeTensor& t, std::vector<uint8_t>* out) {
  uint64_t count = 1;
  for (uint64_t d : t.shape) count *= d;
  const uint64_t bytes = count * dtype_bits(t.dtype) / 8;
  out->assign(bytes, 0);
  if (t.kind == MoeTensor::Kind::kZeros) return;
  std::vector<float> values(count);
  if (t.kind == MoeTensor::Kind::kRouter) {
    for (uint64_t i = 0; i < count; ++i) values[i] = static_cast<float>((*t.rows)[i]);
  } else {
    const TensorInfo& info = *t.source->info;
    if (info.dtype == t.dtype && !t.noise_scale && !t.residual_scale) {
      t.source->shard->read(info, 0, bytes, out->data());  // bit for bit
      return;
    }
    std::vector<uint8_t> raw(info.nbytes());
    t.source->shard->read(info, 0, raw.size(), raw.data());
    load_as_f32(info.dtype, raw.data(), count, values.data());
    if (t.noise_scale) {
      for (uint64_t i = 0; i < count; ++i) {
        values[i] += static_cast<float>(*t.noise_scale * normal_at(t.noise_stream, i));
      }
    }
    if (t.residual_scale) {
      for (auto& v : values) v = static_cast<float>(v * *t.residual_scale);
    }
  }
  for (float v : values) {
    if (!std::isfinite(v)) throw Error(ErrorCode::kNonFinite, "tensor '" + t.name + "' would hold NaN or infinity");
  }
  if (overflow_on_store(t.dtype, values.data(), count, false) != 0) {
    throw Error(ErrorCode::kNonFinite, "tensor '" + t.name + "' overflows " + dtype_torch_name(t.dtype));
  }
  store_from_f32(values.data(), count, t.dtype, out->data());
}

}  // namespace

const char* moe_architecture_name(MoeArchitecture arch) {
  switch (arch) {
    case MoeArchitecture::kMixtral: return "Mixtral";
    case MoeArchitecture::kQwen2Moe: return "Qwen MoE";
    case MoeArchitecture::kQwen3Moe: return "Qwen3 MoE";
  }
  return "?";
}

std::vector<double> moe_random_gate(MoeGateMode mode, uint64_t seed, uint64_t stream, int layers, int rows,
                                    int hidden) {
  if (mode != MoeGateMode::kRandom && mode != MoeGateMode::kUniformRandom) {
    throw Error(ErrorCode::kInvalidArgument, "moe_random_gate: gate mode is not random");
  }
  const size_t per_layer = static_cast<size_t>(rows) * hidden;
  std::vector<double> out(static_cast<size_t>(layers) * per_layer);
  const double scale = std::sqrt(1.0 / hidden);  // torch.nn.Linear's bound: 1/sqrt(in_features)
  for (int l = 0; l < layers; ++l) {
    const uint64_t key = detail::mix_bits(seed ^ detail::mix_bits(0x6d6f65ull + stream * 0x10001ull + l));
    for (size_t i = 0; i < per_layer; ++i) {
      out[l * per_layer + i] = mode == MoeGateMode::kRandom ? normal_at(key, i)
                                                            : detail::uniform01(key, i) * 2.0 * scale - scale;
    }
  }
  return out;
}

MoeResult build_moe(const MoeRecipe& r, const MoeOptions& options) {
  MoeResult result;
  if (r.gate_mode == MoeGateMode::kCheapEmbed) {
    throw Error(ErrorCode::kRecipe,
                r.label + ": gate_mode cheap_embed needs the base's tokenizer run on the prompts, which alloy does "
                          "not have; use hidden with precomputed hidden states (docs/moe.md), or random / "
                          "uniform_random");
  }
  const bool hidden_mode = r.gate_mode == MoeGateMode::kHidden || r.gate_mode == MoeGateMode::kHiddenAvg ||
                           r.gate_mode == MoeGateMode::kHiddenLast;
  if (hidden_mode && options.hidden_states.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                r.label + ": gate_mode " + moe_gate_mode_name(r.gate_mode) +
                    " needs the base model's hidden states for the prompts: pass them with --hidden-states FILE "
                    "(docs/moe.md says how to make the file)");
  }

  // The models, each opened once.
  Inputs in;
  auto add = [&](const std::string& name) {
    if (in.index(name) < in.names.size()) return;
    in.names.push_back(name);
    in.paths.push_back(locate_model(name, options.base_dir));
    in.models.push_back(std::make_unique<Model>(Model::open(in.paths.back())));
  };
  add(r.base_model);
  for (const auto& e : r.experts) add(e.source_model);
  for (const auto& e : r.shared_experts) add(e.source_model);
  const Model& base = *in.models[0];
  result.architecture = select_architecture(r, in, &result.notices);
  const MoeArchitecture arch = result.architecture;
  const int layers = config_int(base, r.base_model, "num_hidden_layers");
  const int hidden = config_int(base, r.base_model, "hidden_size");
  for (size_t m = 1; m < in.models.size(); ++m) {
    if (config_int(*in.models[m], in.names[m], "num_hidden_layers") != layers ||
        config_int(*in.models[m], in.names[m], "hidden_size") != hidden) {
      throw Error(ErrorCode::kShapeMismatch, in.names[m] + ": its layer count or hidden size differs from the base's (" +
                                                 std::to_string(layers) + " layers, hidden " + std::to_string(hidden) +
                                                 ")");
    }
  }
  if ((r.experts.size() & (r.experts.size() - 1)) != 0) {
    result.notices.push_back(std::to_string(r.experts.size()) +
                             " experts is not a power of two; llama.cpp cannot run such a model");
  }

  // Output dtype: the recipe's, else the base's torch_dtype (mergekit's select_dtype), else each
  // tensor's own (the routers then take the embedding's).
  std::optional<DType> dtype = r.dtype;
  for (const char* key : {"torch_dtype", "dtype"}) {
    const auto it = base.config().find(key);
    if (!dtype && it != base.config().end() && it->is_string()) {
      const auto d = dtype_from_torch_name(it->get<std::string>());
      if (d && can_store_from_f32(*d)) dtype = d;
    }
  }
  const ModelTensor* embed = base.find("model.embed_tokens.weight");
  const DType router_dtype = dtype ? *dtype : embed ? embed->info->dtype : DType::F32;

  // Router rows.
  std::vector<double> router, shared_gate;
  const bool shared_gate_needed = arch == MoeArchitecture::kQwen2Moe;
  if (hidden_mode) {
    const SafetensorsFile states(options.hidden_states.string());
    router = hidden_gate(states, "experts", r.experts, layers, hidden);
    if (shared_gate_needed) shared_gate = hidden_gate(states, "shared_experts", r.shared_experts, layers, hidden);
    const std::string degenerate = degenerate_layers(router, layers, static_cast<int>(r.experts.size()), hidden);
    if (!degenerate.empty()) {
      result.notices.push_back("layers " + degenerate +
                               " have degenerate routing parameters (condition number above 5): the prompts may be "
                               "too similar, and some experts will be underused");
    }
  } else {
    router = moe_random_gate(r.gate_mode, options.seed, 0, layers, static_cast<int>(r.experts.size()), hidden);
    if (shared_gate_needed) shared_gate = moe_random_gate(r.gate_mode, options.seed, 1, layers, 1, hidden);
  }

  // The plan: the base's tensors in its order, each dense MLP tensor replaced by the experts' (and
  // the shared expert's), then the routers.
  std::vector<MoeTensor> plan;
  auto copy_of = [&](const ModelTensor* t, const std::string& name) {
    MoeTensor p;
    p.name = name;
    p.source = t;
    p.shape = t->info->shape;
    p.dtype = dtype ? *dtype : t->info->dtype;
    return p;
  };
  auto expert_tensor = [&](const MoeExpert& e, const std::string& entry, const std::string& source_name,
                           const ModelTensor& base_mlp) {
    const Model& m = *in.models[in.index(e.source_model)];
    const ModelTensor* t = m.find(source_name);
    if (t == nullptr) {
      throw Error(ErrorCode::kMissingTensor, e.source_model + " (" + entry + ") has no tensor '" + source_name + "'");
    }
    if (t->info->shape != base_mlp.info->shape) {
      throw Error(ErrorCode::kShapeMismatch, e.source_model + " (" + entry + "): '" + source_name +
                                                 "' differs in shape from the base's; experts must have the base's "
                                                 "MLP shapes (the config has one intermediate_size)");
    }
    return t;
  };
  std::set<std::string> seen_attention_bias;
  for (const auto& t : base.tensors()) {
    const std::string& name = t.name();
    if (name.rfind(kLayerPrefix, 0) != 0) {
      plan.push_back(copy_of(&t, name));
      continue;
    }
    const size_t dot = name.find('.', std::strlen(kLayerPrefix));
    const std::string layer_part = name.substr(0, dot + 1);  // "model.layers.N."
    const std::string suffix = dot == std::string::npos ? "" : name.substr(dot + 1);
    if (suffix.rfind("mlp.", 0) != 0) {
      plan.push_back(copy_of(&t, name));
      if (arch == MoeArchitecture::kQwen2Moe && suffix.rfind("self_attn.", 0) == 0) seen_attention_bias.insert(name);
      continue;
    }
    if (suffix != "mlp.gate_proj.weight" && suffix != "mlp.up_proj.weight" && suffix != "mlp.down_proj.weight") {
      throw Error(ErrorCode::kMissingTensor, r.base_model + ": tensor '" + name + "' has no place in a " +
                                                 moe_architecture_name(arch) +
                                                 " expert (only gate_proj, up_proj and down_proj weights do)");
    }
    const bool down = suffix == "mlp.down_proj.weight";
    for (size_t e = 0; e < r.experts.size(); ++e) {
      const MoeExpert& x = r.experts[e];
      MoeTensor p = copy_of(expert_tensor(x, "expert " + std::to_string(e), name, t),
                                layer_part + expert_suffix(arch, suffix, static_cast<int>(e)));
      p.noise_scale = x.noise_scale;
      if (down) p.residual_scale = x.residual_scale;
      p.noise_stream = detail::mix_bits(options.seed ^ fnv1a(p.name));
      plan.push_back(p);
    }
    if (arch == MoeArchitecture::kQwen2Moe) {
      const MoeExpert& x = r.shared_experts[0];
      MoeTensor p = copy_of(expert_tensor(x, "shared expert", name, t), layer_part + "mlp.shared_expert." + suffix.substr(4));
      p.noise_scale = x.noise_scale;
      if (down) p.residual_scale = x.residual_scale;
      p.noise_stream = detail::mix_bits(options.seed ^ fnv1a(p.name));
      plan.push_back(p);
    }
  }
  // Qwen2-MoE's attention has q/k/v biases: zeros where the base has none (as mergekit writes).
  if (arch == MoeArchitecture::kQwen2Moe) {
    for (int l = 0; l < layers; ++l) {
      for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
        const std::string prefix = std::string(kLayerPrefix) + std::to_string(l) + ".self_attn." + proj;
        if (seen_attention_bias.count(prefix + ".bias")) continue;
        const ModelTensor* w = base.find(prefix + ".weight");
        if (w == nullptr || w->info->shape.size() != 2) {
          throw Error(ErrorCode::kMissingTensor, r.base_model + ": no 2-D tensor '" + prefix + ".weight'");
        }
        MoeTensor p;
        p.name = prefix + ".bias";
        p.kind = MoeTensor::Kind::kZeros;
        p.shape = {w->info->shape[0]};
        p.dtype = dtype ? *dtype : w->info->dtype;
        plan.push_back(p);
      }
    }
  }
  for (int l = 0; l < layers; ++l) {
    const std::string prefix = std::string(kLayerPrefix) + std::to_string(l) + ".";
    MoeTensor p;
    p.kind = MoeTensor::Kind::kRouter;
    p.dtype = router_dtype;
    p.name = prefix + (arch == MoeArchitecture::kMixtral ? "block_sparse_moe.gate.weight" : "mlp.gate.weight");
    p.shape = {r.experts.size(), static_cast<uint64_t>(hidden)};
    plan.push_back(p);
    if (shared_gate_needed) {
      MoeTensor s = p;
      s.name = prefix + "mlp.shared_expert_gate.weight";
      s.shape = {1, static_cast<uint64_t>(hidden)};
      plan.push_back(s);
    }
  }
  // Each layer's router rows, kept for the writer (pointers into these vectors).
  std::vector<std::vector<double>> layer_rows(2 * static_cast<size_t>(layers));
  {
    const size_t per = r.experts.size() * hidden;
    size_t router_index = 0;
    for (auto& p : plan) {
      if (p.kind != MoeTensor::Kind::kRouter) continue;
      const size_t l = router_index / (shared_gate_needed ? 2 : 1);
      const bool shared = shared_gate_needed && router_index % 2 == 1;
      auto& rows = layer_rows[2 * l + shared];
      if (shared) {
        rows.assign(shared_gate.begin() + l * hidden, shared_gate.begin() + (l + 1) * hidden);
      } else {
        rows.assign(router.begin() + l * per, router.begin() + (l + 1) * per);
      }
      p.rows = &rows;
      ++router_index;
    }
  }
  if (embed == nullptr && base.find("lm_head.weight") == nullptr) {
    throw Error(ErrorCode::kMissingTensor, r.base_model + ": no model.embed_tokens.weight; is it a Llama-style model?");
  }

  result.config = output_config(base, arch, r, dtype);
  std::vector<TensorSpec> specs;
  for (const auto& p : plan) {
    specs.push_back({p.name, p.dtype, p.shape});
    result.tensor_names.push_back(p.name);
    result.output_bytes += specs.back().nbytes();
  }
  result.tensors = plan.size();
  if (options.dry_run) return result;

  StagingDirectory staging(options.out_dir, options.overwrite, in.paths);
  {
    ShardedWriter writer(staging.path(), specs, options.shard_bytes,
                         {{"generator", "alloy-moe " ALLOY_VERSION},
                          {"gate_mode", moe_gate_mode_name(r.gate_mode)},
                          {"architecture", moe_architecture_name(arch)}});
    std::vector<uint8_t> bytes;
    uint64_t written = 0;
    for (size_t i = 0; i < plan.size(); ++i) {
      produce(plan[i], &bytes);
      writer.write(plan[i].name, bytes.data(), bytes.size());
      if (plan[i].source) plan[i].source->shard->release(*plan[i].source->info);
      written += bytes.size();
      if (options.progress) options.progress(written, result.output_bytes);
    }
    writer.finish();
  }
  const fs::path out = staging.path();
  write_file_atomic(out / "config.json", result.config.dump(2) + "\n");
  if (options.copy_tokenizer) {
    for (size_t i = 0; i < base.auxiliary_files().size(); ++i) base.auxiliary(i).copy_to(out / base.auxiliary_files()[i]);
  }
  write_file_atomic(out / "mergekit_moe_config.yml", r.text);
  if (options.write_model_card) {
    write_file_atomic(out / "README.md", model_card(r, arch, options.out_dir.filename().string()));
  }
  for (const auto& model : in.models) {
    for (const auto& shard : model->shards()) shard->file().check_unchanged();
    for (size_t i = 0; i < model->auxiliary_files().size(); ++i) model->auxiliary(i).check_unchanged();
  }
  staging.publish();
  return result;
}

}  // namespace alloy
