// Planner stage 2: the output's tensor list, layer by layer, in the order mergekit writes it.
#include <algorithm>

#include "plan_internal.h"

namespace alloy::detail {
namespace {

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

// The template model's tensors outside the decoder layers, sorted into the output's order.
struct TensorLayout {
  std::vector<std::string> pre;   // embeddings, before the layers
  std::vector<std::string> post;  // everything else after the layers (norm, sub-models, ...)
  bool has_lm_head = false;
};

// Under `modules:`, a tensor of another module (a vision tower) is that module's to plan.
TensorLayout template_layout(const Model& model, const ModelArchitecture& arch, bool uses_modules) {
  TensorLayout layout;
  const std::string lm_head = arch.lm_head();
  for (const auto& t : model.tensors()) {
    int layer;
    std::string suffix;
    if (arch.split_layer(t.name(), &layer, &suffix) || (uses_modules && !module_of_tensor(arch, t.name()).empty())) {
      continue;  // planned layer by layer, or by its module
    } else if (t.name() == lm_head) {
      layout.has_lm_head = true;
    } else if (t.name().find("embed") != std::string::npos) {
      layout.pre.push_back(t.name());
    } else {
      layout.post.push_back(t.name());
    }
  }
  std::sort(layout.pre.begin(), layout.pre.end());
  std::sort(layout.post.begin(), layout.post.end());
  return layout;
}

// The tensors of one layer in checkpoint order (a hybrid's layers differ: each has its own).
std::vector<std::string> layer_suffixes(const ModelArchitecture& arch, int layer) {
  std::vector<std::string> suffixes = arch.layer_suffixes(layer);
  std::stable_sort(suffixes.begin(), suffixes.end(), [](const std::string& a, const std::string& b) {
    const int ra = suffix_rank(a), rb = suffix_rank(b);
    return ra != rb ? ra < rb : a < b;
  });
  return suffixes;
}

// Every source's layer at `idx` must be of the template's kind: a linear-attention layer cannot
// be merged with a full-attention one.
void check_layer_kinds(const PlanContext& context, const SliceSpec& slice, int idx) {
  const RecipeSource& first = slice.sources.front();
  const ModelArchitecture& template_arch = context.architecture_of(first);
  const int template_layer = first.layer_range->first + idx;
  const auto kind = [](const ModelArchitecture& arch, int layer) { return arch.layer_mixer(layer); };
  const std::string expected = kind(template_arch, template_layer);
  for (const auto& s : slice.sources) {
    const int layer = s.layer_range->first + idx;
    const std::string found = kind(context.architecture_of(s), layer);
    if (found == "missing") {
      context.fail(s.position, "model '" + s.model + "' has no tensors for layer " + std::to_string(layer) + " (under '" +
                                   context.architecture_of(s).layer_prefix() + "')",
                   ErrorCode::kMissingTensor);
    }
    if (found != expected) {
      context.fail(s.position, "layer " + std::to_string(layer) + " of '" + s.model + "' is a " + found +
                                   " layer but layer " + std::to_string(template_layer) + " of '" + first.model +
                                   "' is a " + expected + " layer: only layers of the same kind can be merged");
    }
  }
}

InputNameFor same_name(const std::string& name) {
  return [name](const RecipeSource&) { return name; };
}

}  // namespace

void plan_tensors(PlanContext& context) {
  // The tensors outside the layers come from the first source of the first slice.
  const SliceSpec& first = context.slices.front();
  const RecipeSource& template_source = first.sources.front();
  const ModelArchitecture& template_arch = context.architecture_of(template_source);
  const TensorLayout layout = template_layout(context.model_of(template_source), template_arch, context.uses_modules);
  const size_t first_count = first.sources.size();
  for (const auto& name : layout.pre) add_tensor(context, name, first, first_count, 0.0, same_name(name), false);
  int output_layer = 0;
  for (const auto& slice : context.slices) {
    const RecipeSource& slice_template = slice.sources.front();
    const ModelArchitecture& slice_arch = context.architecture_of(slice_template);
    const size_t template_model = static_cast<size_t>(context.model_index(slice_template.model, slice_template.position));
    for (int idx = 0; idx < slice.length; ++idx, ++output_layer) {
      const double t = slice.length == 1 ? 1.0 : static_cast<double>(idx) / static_cast<double>(slice.length - 1);
      const int source_layer = slice_template.layer_range->first + idx;
      check_layer_kinds(context, slice, idx);
      context.plan.layer_origins.push_back({template_model, source_layer});
      for (const auto& suffix : layer_suffixes(slice_arch, source_layer)) {
        const std::string output = template_arch.layer_tensor(output_layer, suffix);
        add_tensor(context, output, slice, slice.sources.size(), t,
                   [&](const RecipeSource& s) {
                     return context.architecture_of(s).layer_tensor(s.layer_range->first + idx, suffix);
                   },
                   false);
      }
    }
  }
  const SliceSpec& last = context.slices.back();
  for (const auto& name : layout.post) add_tensor(context, name, last, first_count, 0.0, same_name(name), false);
  // lm_head is written when any source has one; sources without it use their tied embeddings.
  const std::string lm_head = template_arch.lm_head();
  bool any_lm_head = layout.has_lm_head;
  for (const auto& s : last.sources) any_lm_head |= context.model_of(s).find(lm_head) != nullptr;
  if (any_lm_head) add_tensor(context, lm_head, last, first_count, 0.0, same_name(lm_head), true);
}

}  // namespace alloy::detail
