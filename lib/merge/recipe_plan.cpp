// Planning: a parsed recipe + the models' headers -> every output tensor with its sources and
// resolved parameters (mergekit's MergePlanner rules; docs/recipes.md). plan_merge runs the
// stages declared in plan_internal.h in order.
#include "chat_template.h"
#include "plan_internal.h"
#include "tokenizer_plan.h"

namespace alloy {
namespace detail {

PlanContext::PlanContext(Recipe recipe, const PlanOptions& plan_options) : options(plan_options) {
  plan.recipe = std::move(recipe);
  plan.method = find_merge_method(plan.recipe.merge_method);
}

void PlanContext::fail(const RecipePosition& where, const std::string& message, ErrorCode code) const {
  throw Error(code, plan.recipe.where(where) + message);
}

int PlanContext::model_index(const std::string& name, const RecipePosition& where) const {
  for (size_t i = 0; i < plan.model_names.size(); ++i) {
    if (plan.model_names[i] == name) return static_cast<int>(i);
  }
  fail(where, "model '" + name + "' is not one of the recipe's models");
}

const Model& PlanContext::model_of(const RecipeSource& source) const {
  return *plan.models[static_cast<size_t>(model_index(source.model, source.position))];
}

const ModelArchitecture& PlanContext::architecture_of(const RecipeSource& source) const {
  return plan.architectures[static_cast<size_t>(model_index(source.model, source.position))];
}

RecipePosition PlanContext::position_of(const std::string& model) const {
  const Recipe& r = plan.recipe;
  if (r.base_model && *r.base_model == model) return r.base_model_position;
  for (const auto& s : r.models) {
    if (s.model == model) return s.position;
  }
  for (const auto& slice : r.slices) {
    for (const auto& s : slice.sources) {
      if (s.model == model) return s.position;
    }
  }
  for (const auto& module : r.modules) {
    for (const auto& s : module.models) {
      if (s.model == model) return s.position;
    }
    for (const auto& slice : module.slices) {
      for (const auto& s : slice.sources) {
        if (s.model == model) return s.position;
      }
    }
  }
  return {1, 1};
}

}  // namespace detail

namespace {

// The output vocabulary's size where the config keeps it (mergekit's _update_config_vocab).
void set_vocab_size(nlohmann::json& config, uint64_t rows) {
  if (!config.contains("vocab_size") && config.contains("text_config") && config["text_config"].is_object() &&
      config["text_config"].contains("vocab_size")) {
    config["text_config"]["vocab_size"] = rows;
  } else {
    config["vocab_size"] = rows;
  }
}

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

MergePlan plan_merge(Recipe recipe, const PlanOptions& options) {
  detail::PlanContext context(std::move(recipe), options);
  detail::open_models(context);
  detail::detect_architectures(context);
  detail::build_slices(context);
  detail::check_architectures(context);
  MergePlan& plan = context.plan;
  plan.config_donor = plan.base_model >= 0 ? plan.base_model : 0;
  plan.tokenizer_donor = plan.config_donor;
  if (plan.recipe.tokenizer) detail::plan_tokenizer(context);
  detail::plan_tensors(context);
  detail::plan_module_tensors(context);
  plan.output_config = merged_config(plan);
  if (plan.tokenizer) set_vocab_size(plan.output_config, plan.tokenizer->rows);
  if (plan.recipe.chat_template == "auto") {
    // The template most inputs carry, the base model first, then in recipe order; none: nothing
    // is written (mergekit keeps the donor tokenizer's own then).
    std::vector<std::filesystem::path> dirs;
    std::vector<size_t> order;
    if (plan.base_model >= 0) order.push_back(static_cast<size_t>(plan.base_model));
    for (size_t i = 0; i < plan.models.size(); ++i) {
      if (static_cast<int>(i) != plan.base_model) order.push_back(i);
    }
    for (size_t i : order) {
      if (plan.models[i]->is_directory()) dirs.push_back(plan.models[i]->path());
    }
    plan.recipe.chat_template = detail::most_common_chat_template(dirs);
    plan.notices.push_back(plan.recipe.chat_template ? "chat_template auto: the template most input models carry"
                                                     : "chat_template auto: no input model has a chat template");
  }
  const Recipe& r = plan.recipe;
  auto residual_weight_notice = [&](const std::vector<RecipeSlice>& slices) {
    for (const auto& slice : slices) {
      if (slice.residual_weight) {
        plan.warnings.push_back(r.where(slice.position) + "residual_weight is accepted as mergekit accepts it, and "
                                "changes nothing: no mergekit code reads it, and alloy follows");
      }
    }
  };
  residual_weight_notice(r.slices);
  for (const auto& module : r.modules) residual_weight_notice(module.slices);
  for (const auto& [model, skipped] : context.skipped_for_shape) {
    plan.warnings.push_back("model '" + plan.model_names[model] + "': " + std::to_string(skipped.first) +
                            " tensor(s) left out of the merge because their shape differs from the base model's (as "
                            "mergekit does); the first: " + skipped.second);
  }
  return std::move(plan);
}

nlohmann::json plan_to_json(const MergePlan& plan) {
  nlohmann::json out;
  out["merge_method"] = plan.recipe.merge_method;
  out["models"] = plan.model_names;
  out["base_model"] = plan.base_model >= 0 ? nlohmann::json(plan.model_names[plan.base_model]) : nlohmann::json();
  out["output_layers"] = plan.output_layers;
  if (!plan.notices.empty()) out["notices"] = plan.notices;
  if (!plan.warnings.empty()) out["warnings"] = plan.warnings;
  if (plan.tokenizer) {
    out["tokenizer"] = {{"source", plan.recipe.tokenizer->source}, {"tokens", plan.tokenizer->tokens.size()},
                        {"rows", plan.tokenizer->rows}, {"donor", plan.model_names[plan.tokenizer_donor]},
                        {"rewrites_files", !plan.tokenizer->tokenizer_json.empty()}};
  }
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
