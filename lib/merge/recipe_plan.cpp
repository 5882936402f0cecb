// Planning: a parsed recipe + the models' headers -> every output tensor with its sources and
// resolved parameters (mergekit's MergePlanner rules; docs/recipes.md).
#include <algorithm>
#include <regex>
#include <set>

#include "alloy/core/error.h"
#include "alloy/merge/recipe.h"

namespace alloy {
namespace fs = std::filesystem;
namespace {

constexpr const char* kLayerPrefix = "model.layers.";

// Known per-layer suffixes in the order Llama-style checkpoints list them; others follow by name.
int suffix_rank(const std::string& suffix) {
  static const char* kOrder[] = {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                 "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                 "post_attention_layernorm.weight", "mlp.up_proj.weight", "mlp.gate_proj.weight",
                                 "mlp.down_proj.weight"};
  for (int i = 0; i < 9; ++i) {
    if (suffix == kOrder[i]) return i;
  }
  return 100;
}

bool is_embedding_name(const std::string& name) {
  return name.find("embed_tokens") != std::string::npos || name.find("lm_head") != std::string::npos;
}

// Splits "model.layers.<i>.<suffix>"; false for tensors outside the layers.
bool split_layer_name(const std::string& name, int* layer, std::string* suffix) {
  if (name.rfind(kLayerPrefix, 0) != 0) return false;
  const size_t start = std::char_traits<char>::length(kLayerPrefix);
  const size_t dot = name.find('.', start);
  if (dot == std::string::npos || dot == start) return false;
  for (size_t i = start; i < dot; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return false;
  }
  *layer = std::stoi(name.substr(start, dot - start));
  *suffix = name.substr(dot + 1);
  return true;
}

int layer_count(const Model& model) {
  if (model.config().contains("num_hidden_layers") && model.config()["num_hidden_layers"].is_number_integer()) {
    return model.config()["num_hidden_layers"].get<int>();
  }
  int count = 0, layer;
  std::string suffix;
  for (const auto& t : model.tensors()) {
    if (split_layer_name(t.name(), &layer, &suffix)) count = std::max(count, layer + 1);
  }
  return count;
}

struct SliceSpec {
  std::vector<RecipeSource> sources;
  const Parameters* parameters = nullptr;  // slice-level, may be null
  std::optional<std::string> base_model;
  RecipePosition position;
  int length = 0;
};

class Planner {
 public:
  Planner(Recipe recipe, const PlanOptions& options) : options_(options) {
    plan_.recipe = std::move(recipe);
    plan_.method = find_merge_method(plan_.recipe.merge_method);
  }

  MergePlan run() {
    const Recipe& r = plan_.recipe;
    open_models();
    build_slices();
    check_architectures();
    plan_tensors();
    const int base = plan_.base_model;
    plan_.config_donor = base >= 0 ? base : 0;
    plan_.tokenizer_donor = plan_.config_donor;
    if (r.tokenizer_source && *r.tokenizer_source != "base") {
      plan_.tokenizer_donor = model_index(*r.tokenizer_source, r.base_model_position);
    }
    return std::move(plan_);
  }

 private:
  [[noreturn]] void fail(const RecipePosition& p, const std::string& message, ErrorCode code = ErrorCode::kRecipe) {
    throw Error(code, plan_.recipe.where(p) + message);
  }

  int model_index(const std::string& name, const RecipePosition& where) {
    for (size_t i = 0; i < plan_.model_names.size(); ++i) {
      if (plan_.model_names[i] == name) return static_cast<int>(i);
    }
    fail(where, "model '" + name + "' is not one of the recipe's models");
  }

  RecipePosition position_of(const std::string& model) const {
    const Recipe& r = plan_.recipe;
    if (r.base_model && *r.base_model == model) return r.base_model_position;
    for (const auto& s : r.models) {
      if (s.model == model) return s.position;
    }
    for (const auto& slice : r.slices) {
      for (const auto& s : slice.sources) {
        if (s.model == model) return s.position;
      }
    }
    return {1, 1};
  }

  void open_models() {
    for (const auto& name : plan_.recipe.referenced_models()) {
      const fs::path path = fs::path(name).is_absolute() ? fs::path(name) : options_.base_dir / name;
      try {
        plan_.models.push_back(std::make_unique<Model>(Model::open(path)));
      } catch (const Error& e) {
        std::string hint;
        if (name.find('+') != std::string::npos) hint = " (LoRA syntax model+lora is not supported)";
        fail(position_of(name), "cannot use model '" + name + "'" + hint + ": " + e.what());
      }
      plan_.model_names.push_back(name);
      plan_.model_paths.push_back(path);
    }
    if (plan_.recipe.base_model) plan_.base_model = 0;  // referenced_models() lists the base first
  }

  void build_slices() {
    const Recipe& r = plan_.recipe;
    if (!r.uses_slices) {
      SliceSpec slice;
      slice.parameters = nullptr;
      slice.base_model = r.base_model;
      for (RecipeSource s : r.models) {
        const int layers = layer_count(*plan_.models[model_index(s.model, s.position)]);
        s.layer_range = std::make_pair(0, layers);
        slice.sources.push_back(s);
      }
      // mergekit appends an unlisted base model as the last source, with no parameters.
      if (r.base_model && std::none_of(r.models.begin(), r.models.end(),
                                       [&](const RecipeSource& s) { return s.model == *r.base_model; })) {
        RecipeSource base;
        base.model = *r.base_model;
        base.position = r.base_model_position;
        base.layer_range = std::make_pair(0, layer_count(*plan_.models[0]));
        slice.sources.push_back(base);
      }
      slices_.push_back(slice);
    } else {
      for (const auto& s : r.slices) {
        SliceSpec slice;
        slice.sources = s.sources;
        slice.parameters = &s.parameters;
        slice.base_model = s.base_model ? s.base_model : r.base_model;
        slice.position = s.position;
        slices_.push_back(slice);
      }
    }
    for (auto& slice : slices_) {
      int length = -1;
      for (const auto& s : slice.sources) {
        const int available = layer_count(*plan_.models[model_index(s.model, s.position)]);
        const auto [begin, end] = *s.layer_range;
        if (end > available) {
          fail(s.position, "layer_range [" + std::to_string(begin) + ", " + std::to_string(end) + "] of '" + s.model +
                               "' is out of bounds: the model has " + std::to_string(available) + " layers");
        }
        if (length >= 0 && end - begin != length) {
          fail(s.position, "all sources of a slice must have the same number of layers (" + std::to_string(length) +
                               " before, " + std::to_string(end - begin) + " here)");
        }
        length = end - begin;
      }
      slice.length = length;
      plan_.output_layers += length;
      if (plan_.method->requires_base_model()) {
        if (!slice.base_model) {
          fail(plan_.recipe.merge_method_position, plan_.recipe.merge_method + " needs a base_model");
        }
        if (std::none_of(slice.sources.begin(), slice.sources.end(),
                         [&](const RecipeSource& s) { return s.model == *slice.base_model; })) {
          fail(slice.position, "the base model '" + *slice.base_model + "' must be one of this slice's sources");
        }
      }
    }
  }

  void check_architectures() {
    if (options_.allow_crimes) return;
    const auto& first = plan_.models[0]->config();
    for (size_t i = 1; i < plan_.models.size(); ++i) {
      const auto& config = plan_.models[i]->config();
      if (first.contains("architectures") && config.contains("architectures") &&
          first["architectures"] != config["architectures"]) {
        fail(position_of(plan_.model_names[i]), "model '" + plan_.model_names[i] + "' has architecture " +
                                                    config["architectures"].dump() + " but '" +
                                                    plan_.model_names[0] + "' has " + first["architectures"].dump() +
                                                    " (use --allow-crimes to merge anyway)");
      }
    }
  }

  // Resolves per-model and method-level parameters; t is the layer position.
  void resolve(const SliceSpec& slice, const RecipeSource& source, double t, const std::string& input_name,
               const std::string& output_name, bool is_base, PlannedSource* out, PlannedTensor* tensor) {
    const Recipe& r = plan_.recipe;
    for (const auto& p : plan_.method->parameters()) {
      std::optional<double> value;
      const std::string& match = p.per_model ? input_name : output_name;
      const Parameters* levels[] = {p.per_model ? &source.parameters : nullptr, slice.parameters, &r.parameters};
      for (const Parameters* level : levels) {
        if (value || !level) continue;
        const auto it = level->find(p.name);
        if (it != level->end()) value = it->second.evaluate(t, match);
      }
      if (!value) value = p.default_value;
      if (p.per_model) {
        if (value) {
          out->params[p.name] = *value;
        } else if (p.required && !is_base) {
          fail(source.position, "model '" + source.model + "' has no value for '" + p.name + "' (tensor " +
                                    input_name + ")");
        }
      } else if (value) {
        tensor->method_params[p.name] = *value;
      } else if (p.required) {
        fail(r.merge_method_position, r.merge_method + " needs parameter '" + p.name + "' (tensor " + output_name + ")");
      }
    }
  }

  // One output tensor from `slice`, reading `input_for(source)` from each of the first
  // `source_limit` sources.
  void add_tensor(const std::string& output_name, const SliceSpec& slice, size_t source_limit, double t,
                  const std::function<std::string(const RecipeSource&)>& input_for, bool optional) {
    PlannedTensor tensor;
    tensor.name = output_name;
    tensor.layer_t = t;
    tensor.is_embedding = is_embedding_name(output_name);
    const size_t count = std::min(source_limit, slice.sources.size());
    std::vector<const TensorInfo*> infos;
    bool any_present = false;
    for (size_t k = 0; k < count; ++k) {
      const RecipeSource& s = slice.sources[k];
      const int model = model_index(s.model, s.position);
      std::string input = input_for(s);
      const ModelTensor* found = plan_.models[model]->find(input);
      if (!found && output_name == "lm_head.weight") {
        input = "model.embed_tokens.weight";  // tied embeddings
        found = plan_.models[model]->find(input);
      } else if (found) {
        any_present = true;
      }
      if (!found) {
        fail(s.position, "model '" + s.model + "' has no tensor '" + input + "'", ErrorCode::kMissingTensor);
      }
      PlannedSource planned;
      planned.model = static_cast<size_t>(model);
      planned.tensor = input;
      planned.is_base = slice.base_model && s.model == *slice.base_model;
      if (planned.is_base) tensor.base_index = static_cast<int>(tensor.sources.size());
      resolve(slice, s, t, input, output_name, planned.is_base, &planned, &tensor);
      tensor.sources.push_back(planned);
      infos.push_back(found->info);
    }
    if (optional && !any_present) return;  // no source has an lm_head: none is written
    reconcile_shapes(&tensor, infos, slice);
    const Recipe& r = plan_.recipe;
    DType stored = infos[0]->dtype;
    for (const auto* info : infos) {
      if (info->dtype != stored) stored = DType::F32;  // torch promotes mixed half types to float32
    }
    tensor.compute_dtype = r.dtype.value_or(stored);
    tensor.out_dtype = r.out_dtype.value_or(tensor.compute_dtype);
    for (const auto* info : infos) {
      if (!can_load_as_f32(info->dtype)) {
        fail(slice.position, "tensor '" + output_name + "' is " + dtype_name(info->dtype) +
                                 ", which alloy cannot merge (floating-point tensors only)");
      }
    }
    plan_.tensors.push_back(std::move(tensor));
  }

  void reconcile_shapes(PlannedTensor* tensor, std::vector<const TensorInfo*>& infos, const SliceSpec& slice) {
    const CropPolicy policy = plan_.method->crop_policy();
    std::vector<uint64_t> shape = infos[0]->shape;
    bool mismatch = false;
    for (const auto* info : infos) mismatch |= info->shape != shape;
    if (!mismatch) {
      tensor->shape = shape;
      return;
    }
    auto describe = [&] {
      std::string text;
      for (size_t k = 0; k < infos.size(); ++k) {
        text += (k ? ", " : "") + plan_.model_names[tensor->sources[k].model] + " [";
        for (size_t d = 0; d < infos[k]->shape.size(); ++d) text += (d ? "," : "") + std::to_string(infos[k]->shape[d]);
        text += "]";
      }
      return text;
    };
    for (const auto* info : infos) {
      if (info->shape.size() != shape.size()) {
        fail(slice.position, "tensor '" + tensor->name + "' has different ranks: " + describe(),
             ErrorCode::kShapeMismatch);
      }
    }
    if (policy == CropPolicy::kToBase && tensor->base_index >= 0) {
      const auto& base_shape = infos[static_cast<size_t>(tensor->base_index)]->shape;
      if (tensor->is_embedding) {
        for (const auto* info : infos) {
          for (size_t d = 0; d < base_shape.size(); ++d) {
            if (info->shape[d] < base_shape[d]) {
              fail(slice.position, "tensor '" + tensor->name + "' is smaller than the base's: " + describe(),
                   ErrorCode::kShapeMismatch);
            }
          }
        }
      } else {
        // mergekit skips a model whose tensor differs from the base's.
        std::vector<PlannedSource> kept;
        std::vector<const TensorInfo*> kept_infos;
        for (size_t k = 0; k < infos.size(); ++k) {
          if (infos[k]->shape == base_shape) {
            if (static_cast<int>(k) == tensor->base_index) tensor->base_index = static_cast<int>(kept.size());
            kept.push_back(tensor->sources[k]);
            kept_infos.push_back(infos[k]);
          }
        }
        tensor->sources = kept;
        infos = kept_infos;
      }
      tensor->shape = base_shape;
      return;
    }
    if (!tensor->is_embedding || policy == CropPolicy::kNone) {
      fail(slice.position, "tensor '" + tensor->name + "' has different shapes: " + describe(),
           ErrorCode::kShapeMismatch);
    }
    for (const auto* info : infos) {
      for (size_t d = 0; d < shape.size(); ++d) shape[d] = std::min(shape[d], info->shape[d]);
    }
    tensor->shape = shape;
  }

  void plan_tensors() {
    // The tensor list comes from the first source of the first slice.
    const SliceSpec& first = slices_.front();
    const RecipeSource& template_source = first.sources.front();
    const Model& model = *plan_.models[model_index(template_source.model, template_source.position)];
    const int template_layer = template_source.layer_range->first;
    std::vector<std::string> pre, post, suffixes;
    bool has_lm_head = false;
    for (const auto& t : model.tensors()) {
      int layer;
      std::string suffix;
      if (split_layer_name(t.name(), &layer, &suffix)) {
        if (layer == template_layer) suffixes.push_back(suffix);
      } else if (t.name() == "lm_head.weight") {
        has_lm_head = true;
      } else if (t.name().find("embed") != std::string::npos) {
        pre.push_back(t.name());
      } else {
        post.push_back(t.name());
      }
    }
    std::sort(pre.begin(), pre.end());
    std::sort(post.begin(), post.end());
    std::stable_sort(suffixes.begin(), suffixes.end(), [](const std::string& a, const std::string& b) {
      const int ra = suffix_rank(a), rb = suffix_rank(b);
      return ra != rb ? ra < rb : a < b;
    });
    const auto same_name = [](const std::string& name) {
      return [name](const RecipeSource&) { return name; };
    };
    const size_t first_count = first.sources.size();
    for (const auto& name : pre) add_tensor(name, first, first_count, 0.0, same_name(name), false);
    int output_layer = 0;
    for (const auto& slice : slices_) {
      for (int idx = 0; idx < slice.length; ++idx, ++output_layer) {
        const double t = slice.length == 1 ? 1.0 : static_cast<double>(idx) / static_cast<double>(slice.length - 1);
        for (const auto& suffix : suffixes) {
          const std::string output = kLayerPrefix + std::to_string(output_layer) + "." + suffix;
          add_tensor(output, slice, slice.sources.size(), t,
                     [&](const RecipeSource& s) {
                       return kLayerPrefix + std::to_string(s.layer_range->first + idx) + "." + suffix;
                     },
                     false);
        }
      }
    }
    const SliceSpec& last = slices_.back();
    for (const auto& name : post) add_tensor(name, last, first_count, 0.0, same_name(name), false);
    // lm_head is written when any source has one; sources without it use their tied embeddings.
    bool any_lm_head = has_lm_head;
    for (const auto& s : last.sources) {
      any_lm_head |= plan_.models[model_index(s.model, s.position)]->find("lm_head.weight") != nullptr;
    }
    if (any_lm_head) add_tensor("lm_head.weight", last, first_count, 0.0, same_name("lm_head.weight"), true);
  }

  PlanOptions options_;
  MergePlan plan_;
  std::vector<SliceSpec> slices_;
};

}  // namespace

uint64_t MergePlan::output_bytes() const {
  uint64_t total = 0;
  for (const auto& t : tensors) {
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    total += n * dtype_bits(t.out_dtype) / 8;
  }
  return total;
}

MergePlan plan_merge(Recipe recipe, const PlanOptions& options) { return Planner(std::move(recipe), options).run(); }

nlohmann::json plan_to_json(const MergePlan& plan) {
  nlohmann::json out;
  out["merge_method"] = plan.recipe.merge_method;
  out["models"] = plan.model_names;
  out["base_model"] = plan.base_model >= 0 ? nlohmann::json(plan.model_names[plan.base_model]) : nlohmann::json();
  out["output_layers"] = plan.output_layers;
  out["output_bytes"] = plan.output_bytes();
  out["tensors"] = nlohmann::json::array();
  for (const auto& t : plan.tensors) {
    nlohmann::json sources = nlohmann::json::array();
    for (const auto& s : t.sources) {
      sources.push_back({{"model", plan.model_names[s.model]}, {"tensor", s.tensor}, {"parameters", s.params},
                         {"base", s.is_base}});
    }
    out["tensors"].push_back({{"name", t.name}, {"shape", t.shape}, {"layer_t", t.layer_t},
                              {"dtype", dtype_name(t.compute_dtype)}, {"out_dtype", dtype_name(t.out_dtype)},
                              {"parameters", t.method_params}, {"sources", sources}});
  }
  return out;
}

}  // namespace alloy
