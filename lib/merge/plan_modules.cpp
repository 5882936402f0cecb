// Planner stage 2b: the modules of `modules:` other than the language model (a vision tower, a
// projector), each merged by its own slices over its own blocks, mergekit's way (mergekit/plan.py
// plan_module): the tensors before its blocks from the first slice at t = 0, every block of every
// slice at its own t, the tensors after the blocks from the last slice at t = 0.
#include <algorithm>
#include <map>

#include "plan_internal.h"

namespace alloy::detail {

const SubModelDef* module_part(const Model& model, const ModuleSpec& module) {
  for (const SubModelDef* part : module.parts) {
    for (const auto& t : model.tensors()) {
      if (t.name().compare(0, part->prefix.size(), part->prefix) == 0) return part;
    }
  }
  return nullptr;
}

int module_layer_count(const Model& model, const ModuleSpec& module) {
  const SubModelDef* part = module_part(model, module);
  if (!part || part->layer_prefix.empty()) return 0;
  if (!part->layer_count_key.empty()) {
    const nlohmann::json* count = json_path(model.config(), part->layer_count_key);
    if (count && count->is_number_integer() && count->get<int64_t>() >= 0 && count->get<int64_t>() < (1 << 20)) {
      return static_cast<int>(count->get<int64_t>());
    }
  }
  int layers = 0, layer;
  std::string rest;
  for (const auto& t : model.tensors()) {
    if (split_indexed(t.name(), part->layer_prefix, &layer, &rest)) layers = std::max(layers, layer + 1);
  }
  return layers;
}

std::string module_of_tensor(const ModelArchitecture& arch, const std::string& name) {
  const TensorPlace place = arch.classify(name);
  if (place.submodel.empty() || !arch.definition()) return "";
  for (const auto& sub : arch.definition()->submodels) {
    if (sub.name == place.submodel && name.compare(0, sub.prefix.size(), sub.prefix) == 0) return sub.module;
  }
  return "";
}

namespace {

// The template model's tensors of the module outside its blocks (embeddings before, the rest
// after, each sorted by name, as the language model's) and its blocks' suffixes by block.
struct ModuleLayout {
  std::vector<std::string> pre, post;
};

// The tensors of `model` in `module` (under its part's prefix, and not another module's part nested
// in it: Qwen3.5's model.visual.merger. inside model.visual.).
std::vector<std::string> module_tensors(const PlanContext& context, const RecipeSource& source,
                                        const ModuleSpec& module) {
  const ModelArchitecture& arch = context.architecture_of(source);
  std::vector<std::string> out;
  for (const auto& t : context.model_of(source).tensors()) {
    if (module_of_tensor(arch, t.name()) == module.name) out.push_back(t.name());
  }
  return out;
}

ModuleLayout module_layout(const std::vector<std::string>& names, const SubModelDef& part) {
  ModuleLayout layout;
  int layer;
  std::string rest;
  for (const auto& name : names) {
    if (split_indexed(name, part.layer_prefix, &layer, &rest)) continue;
    (name.find("embed") != std::string::npos ? layout.pre : layout.post).push_back(name);
  }
  std::sort(layout.pre.begin(), layout.pre.end());
  std::sort(layout.post.begin(), layout.post.end());
  return layout;
}

std::vector<std::string> block_suffixes(const std::vector<std::string>& names, const SubModelDef& part, int block) {
  std::vector<std::string> out;
  int layer;
  std::string rest;
  for (const auto& name : names) {
    if (split_indexed(name, part.layer_prefix, &layer, &rest) && layer == block) out.push_back(rest);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void plan_module(PlanContext& context, const ModuleSpec& module) {
  const SliceSpec& first = module.slices.front();
  const Model& template_model = context.model_of(first.sources.front());
  const SubModelDef& template_part = *module_part(template_model, module);
  const ModuleLayout layout = module_layout(module_tensors(context, first.sources.front(), module), template_part);
  // A source whose checkpoint names the module under another prefix (Gemma 3's model.vision_tower.
  // or vision_tower.) reads the same tensor under its own.
  const auto renamed = [&](const std::string& name) {
    return [&context, &module, &template_part, name](const RecipeSource& s) {
      const SubModelDef& part = *module_part(context.model_of(s), module);
      return part.prefix + name.substr(template_part.prefix.size());
    };
  };
  const size_t first_count = first.sources.size();
  for (const auto& name : layout.pre) add_tensor(context, name, first, first_count, 0.0, renamed(name), false);
  int output_layer = 0;
  for (const auto& slice : module.slices) {
    const RecipeSource& slice_template = slice.sources.front();
    const SubModelDef& slice_part = *module_part(context.model_of(slice_template), module);
    const std::vector<std::string> slice_names = module_tensors(context, slice_template, module);
    for (int idx = 0; idx < slice.length; ++idx, ++output_layer) {
      const double t = slice.length == 1 ? 1.0 : static_cast<double>(idx) / static_cast<double>(slice.length - 1);
      for (const auto& suffix : block_suffixes(slice_names, slice_part, slice_template.layer_range->first + idx)) {
        const std::string output = template_part.layer_prefix + std::to_string(output_layer) + "." + suffix;
        add_tensor(context, output, slice, slice.sources.size(), t,
                   [&](const RecipeSource& s) {
                     const SubModelDef& part = *module_part(context.model_of(s), module);
                     return part.layer_prefix + std::to_string(s.layer_range->first + idx) + "." + suffix;
                   },
                   false);
      }
    }
  }
  const SliceSpec& last = module.slices.back();
  for (const auto& name : layout.post) add_tensor(context, name, last, first_count, 0.0, renamed(name), false);
  if (!template_part.layer_count_key.empty()) {
    context.plan.module_layer_counts.emplace_back(template_part.layer_count_key, module.output_layers);
  }
}

}  // namespace

void plan_module_tensors(PlanContext& context) {
  for (const auto& module : context.modules) plan_module(context, module);
  if (!context.uses_modules) return;
  // mergekit writes only the modules the recipe lists; alloy too, and says so.
  const ModelArchitecture& arch = context.architecture_of(context.slices.front().sources.front());
  std::map<std::string, size_t> left_out;
  for (const auto& t : context.model_of(context.slices.front().sources.front()).tensors()) {
    const std::string module = module_of_tensor(arch, t.name());
    if (module.empty()) continue;
    if (std::none_of(context.modules.begin(), context.modules.end(),
                     [&](const ModuleSpec& m) { return m.name == module; })) {
      ++left_out[module];
    }
  }
  for (const auto& [module, count] : left_out) {
    context.plan.warnings.push_back("module '" + module + "' is not in the recipe's modules:, so its " +
                                    std::to_string(count) + " tensor(s) are not written (as mergekit does)");
  }
}

}  // namespace alloy::detail
