// Planner stage 1: the models a recipe names, the slices it is made of, and their consistency.
#include <algorithm>
#include <functional>

#include "alloy/core/hub_cache.h"
#include "alloy/merge/lora.h"
#include "alloy/merge/model_card.h"
#include "plan_internal.h"

namespace alloy::detail {
namespace fs = std::filesystem;

namespace {

// The model's decoder layer count: its config's (num_hidden_layers, inside text_config where the
// family keeps it there), else one more than the highest layer index among its tensors.
int layer_count(const PlanContext& context, const RecipeSource& source) {
  return context.architecture_of(source).layer_count();
}

using LayerCount = std::function<int(const RecipeSource&)>;

// `models:` (the recipe's, or a module's): one slice over every layer of every model, mergekit's
// way; `layers` counts a model's layers (the language model's, or the module's).
SliceSpec whole_model_slice(const PlanContext& context, const std::vector<RecipeSource>& models,
                            const LayerCount& layers) {
  const Recipe& r = context.plan.recipe;
  SliceSpec slice;
  slice.base_model = r.base_model;
  for (RecipeSource s : models) {
    s.layer_range = std::make_pair(0, layers(s));
    slice.sources.push_back(s);
  }
  // mergekit appends an unlisted base model as the last source, with no parameters.
  if (r.base_model && std::none_of(models.begin(), models.end(),
                                   [&](const RecipeSource& s) { return s.model == *r.base_model; })) {
    RecipeSource base;
    base.model = *r.base_model;
    base.position = r.base_model_position;
    base.layer_range = std::make_pair(0, layers(base));
    slice.sources.push_back(base);
  }
  return slice;
}

// `slices:` (the recipe's, or a module's) as SliceSpecs.
std::vector<SliceSpec> listed_slices(const Recipe& r, const std::vector<RecipeSlice>& slices) {
  std::vector<SliceSpec> out;
  for (const auto& s : slices) {
    SliceSpec slice;
    slice.sources = s.sources;
    slice.parameters = &s.parameters;
    slice.base_model = s.base_model ? s.base_model : r.base_model;
    slice.position = s.position;
    out.push_back(slice);
  }
  return out;
}

// Checks every source's layer range against its model and against the slice's other sources,
// and the slice's base model where the method needs one; sets slice->length.
void check_slice(const PlanContext& context, SliceSpec* slice, const LayerCount& layers,
                 const char* layers_of = nullptr) {
  int length = -1;
  for (const auto& s : slice->sources) {
    const int available = layers(s);
    const auto [begin, end] = *s.layer_range;
    if (end > available) {
      context.fail(s.position, "layer_range [" + std::to_string(begin) + ", " + std::to_string(end) + "] of '" +
                                   s.model + "' is out of bounds: the model has " + std::to_string(available) +
                                   " layers" + (layers_of ? std::string(" in module '") + layers_of + "'" : ""));
    }
    if (length >= 0 && end - begin != length) {
      context.fail(s.position, "all sources of a slice must have the same number of layers (" +
                                   std::to_string(length) + " before, " + std::to_string(end - begin) + " here)");
    }
    length = end - begin;
  }
  slice->length = length;
  if (!context.plan.method->requires_base_model()) return;
  const Recipe& r = context.plan.recipe;
  if (!slice->base_model) context.fail(r.merge_method_position, r.merge_method + " needs a base_model");
  if (std::none_of(slice->sources.begin(), slice->sources.end(),
                   [&](const RecipeSource& s) { return s.model == *slice->base_model; })) {
    context.fail(slice->position, "the base model '" + *slice->base_model + "' must be one of this slice's sources");
  }
}

}  // namespace

void open_models(PlanContext& context) {
  MergePlan& plan = context.plan;
  for (const auto& name : plan.recipe.referenced_models()) {
    fs::path path = fs::path(name).is_absolute() ? fs::path(name) : context.options.base_dir / name;
    // MODEL+ADAPTER (mergekit's syntax) unless a model of that whole name exists.
    ModelReference reference{name, ""};
    try {
      // The error_code form: a name too long for a path is a recipe error, not a filesystem_error.
      std::error_code ec;
      if (!fs::exists(path, ec)) reference = parse_model_reference(name);
    } catch (const Error& e) {
      context.fail(context.position_of(name), e.what());
    }
    try {
      path = locate_model(reference.model, context.options.base_dir);  // a local folder, else a Hub id in the cache
      plan.models.push_back(std::make_unique<Model>(Model::open(path, context.options.open)));
    } catch (const Error& e) {
      context.fail(context.position_of(name), "cannot use model '" + reference.model + "': " + e.what());
    }
    std::shared_ptr<const LoraAdapter> adapter;
    if (!reference.adapter.empty()) {
      try {
        auto opened = LoraAdapter::open(locate_model(reference.adapter, context.options.base_dir));
        opened->check_against(*plan.models.back());
        adapter = std::move(opened);
      } catch (const Error& e) {
        context.fail(context.position_of(name), "cannot apply LoRA adapter '" + reference.adapter + "' to '" +
                                                    reference.model + "': " + e.what(), e.code());
      }
    }
    plan.model_names.push_back(name);
    plan.model_paths.push_back(path);
    plan.adapters.push_back(std::move(adapter));
  }
  if (plan.recipe.base_model) plan.base_model = 0;  // referenced_models() lists the base first
  std::vector<std::pair<std::string, fs::path>> parents;
  for (size_t m = 0; m < plan.models.size(); ++m) parents.emplace_back(plan.model_names[m], plan.model_paths[m]);
  const InheritedLicense license = inherited_license(parents);
  plan.license = license.license;
  if (!license.warning.empty()) plan.warnings.push_back(license.warning);
}

void detect_architectures(PlanContext& context) {
  MergePlan& plan = context.plan;
  for (size_t i = 0; i < plan.models.size(); ++i) {
    plan.architectures.push_back(detect_architecture(*plan.models[i]));
    const ModelArchitecture& arch = plan.architectures.back();
    if (arch.inferred() && plan.models[i]->has_config()) {
      plan.notices.push_back("model '" + plan.model_names[i] + "': " + arch.notice());
    }
  }
}

namespace {

// `modules:`: the language model's entry becomes context.slices, every other entry a ModuleSpec
// over the family's sub-models of that name; a name the family does not have is refused.
void build_module_slices(PlanContext& context) {
  const MergePlan& plan = context.plan;
  const Recipe& r = plan.recipe;
  const ModelArchitecture& arch = plan.architectures.front();
  static const ArchitectureDef kNoDefinition;
  const ArchitectureDef& def = arch.definition() ? *arch.definition() : kNoDefinition;
  const std::vector<std::string> names = def.module_names();
  context.uses_modules = true;
  const RecipeModule* text = nullptr;
  for (const auto& m : r.modules) {
    if (std::find(names.begin(), names.end(), m.name) == names.end()) {
      std::string known;
      for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
      context.fail(m.position, "module '" + m.name + "' is not a module of " +
                                   (arch.definition() ? "the " + def.title + " architecture" : "this model") +
                                   " (of '" + plan.model_names.front() + "'); its modules: " + known);
    }
    const bool uses_slices = m.uses_slices;
    if (m.name == def.text_module()) {
      text = &m;
      context.slices = uses_slices ? listed_slices(r, m.slices)
                                   : std::vector<SliceSpec>{whole_model_slice(context, m.models, [&](const RecipeSource& s) {
                                       return layer_count(context, s);
                                     })};
      for (auto& slice : context.slices) slice.module_parameters = &m.parameters;
      continue;
    }
    ModuleSpec module;
    module.name = m.name;
    for (const auto& sub : def.submodels) {
      if (sub.module == m.name) module.parts.push_back(&sub);
    }
    const LayerCount layers = [&](const RecipeSource& s) { return module_layer_count(context.model_of(s), module); };
    module.slices = uses_slices ? listed_slices(r, m.slices) : std::vector<SliceSpec>{whole_model_slice(context, m.models, layers)};
    for (auto& slice : module.slices) {
      slice.module_parameters = &m.parameters;
      for (const auto& s : slice.sources) {
        if (!module_part(context.model_of(s), module)) {
          context.fail(s.position, "model '" + s.model + "' has no tensors of module '" + m.name + "'",
                       ErrorCode::kMissingTensor);
        }
      }
      check_slice(context, &slice, layers, m.name.c_str());
      module.output_layers += slice.length;
    }
    context.modules.push_back(std::move(module));
  }
  if (!text) {
    // mergekit would write the other modules alone; a model without its language model is no model.
    context.fail(r.modules.front().position, "modules: has no '" + def.text_module() +
                                                 "' (the language model); alloy writes whole models, so list it "
                                                 "(with the models whose language model to keep)");
  }
}

}  // namespace

void build_slices(PlanContext& context) {
  const Recipe& r = context.plan.recipe;
  const LayerCount layers = [&](const RecipeSource& s) { return layer_count(context, s); };
  if (!r.modules.empty()) {
    build_module_slices(context);
  } else if (!r.uses_slices) {
    context.slices.push_back(whole_model_slice(context, r.models, layers));
  } else {
    context.slices = listed_slices(r, r.slices);
  }
  for (auto& slice : context.slices) {
    check_slice(context, &slice, layers);
    context.plan.output_layers += slice.length;
  }
}

void check_architectures(const PlanContext& context) {
  if (context.options.allow_crimes) return;
  const MergePlan& plan = context.plan;
  const auto& first = plan.models[0]->config();
  for (size_t i = 1; i < plan.models.size(); ++i) {
    const auto& config = plan.models[i]->config();
    if (first.contains("architectures") && config.contains("architectures") &&
        first["architectures"] != config["architectures"]) {
      context.fail(context.position_of(plan.model_names[i]),
                   "model '" + plan.model_names[i] + "' has architecture " + config["architectures"].dump() +
                       " but '" + plan.model_names[0] + "' has " + first["architectures"].dump() +
                       " (use --allow-crimes to merge anyway)");
    }
  }
}

}  // namespace alloy::detail
