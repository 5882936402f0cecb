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

// The template model's tensors sorted into the three groups of the output's order.
struct TensorLayout {
  std::vector<std::string> pre;       // embeddings, before the layers
  std::vector<std::string> suffixes;  // of the template layer, in checkpoint order
  std::vector<std::string> post;      // everything else after the layers (norm, ...)
  bool has_lm_head = false;
};

TensorLayout template_layout(const Model& model, int template_layer) {
  TensorLayout layout;
  for (const auto& t : model.tensors()) {
    int layer;
    std::string suffix;
    if (split_layer_name(t.name(), &layer, &suffix)) {
      if (layer == template_layer) layout.suffixes.push_back(suffix);
    } else if (t.name() == "lm_head.weight") {
      layout.has_lm_head = true;
    } else if (t.name().find("embed") != std::string::npos) {
      layout.pre.push_back(t.name());
    } else {
      layout.post.push_back(t.name());
    }
  }
  std::sort(layout.pre.begin(), layout.pre.end());
  std::sort(layout.post.begin(), layout.post.end());
  std::stable_sort(layout.suffixes.begin(), layout.suffixes.end(), [](const std::string& a, const std::string& b) {
    const int ra = suffix_rank(a), rb = suffix_rank(b);
    return ra != rb ? ra < rb : a < b;
  });
  return layout;
}

InputNameFor same_name(const std::string& name) {
  return [name](const RecipeSource&) { return name; };
}

}  // namespace

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

void plan_tensors(PlanContext& context) {
  // The tensor list comes from the first source of the first slice.
  const SliceSpec& first = context.slices.front();
  const RecipeSource& template_source = first.sources.front();
  const TensorLayout layout = template_layout(context.model_of(template_source), template_source.layer_range->first);
  const size_t first_count = first.sources.size();
  for (const auto& name : layout.pre) add_tensor(context, name, first, first_count, 0.0, same_name(name), false);
  int output_layer = 0;
  for (const auto& slice : context.slices) {
    for (int idx = 0; idx < slice.length; ++idx, ++output_layer) {
      const double t = slice.length == 1 ? 1.0 : static_cast<double>(idx) / static_cast<double>(slice.length - 1);
      for (const auto& suffix : layout.suffixes) {
        const std::string output = kLayerPrefix + std::to_string(output_layer) + "." + suffix;
        add_tensor(context, output, slice, slice.sources.size(), t,
                   [&](const RecipeSource& s) {
                     return kLayerPrefix + std::to_string(s.layer_range->first + idx) + "." + suffix;
                   },
                   false);
      }
    }
  }
  const SliceSpec& last = context.slices.back();
  for (const auto& name : layout.post) add_tensor(context, name, last, first_count, 0.0, same_name(name), false);
  // lm_head is written when any source has one; sources without it use their tied embeddings.
  bool any_lm_head = layout.has_lm_head;
  for (const auto& s : last.sources) any_lm_head |= context.model_of(s).find("lm_head.weight") != nullptr;
  if (any_lm_head) {
    add_tensor(context, "lm_head.weight", last, first_count, 0.0, same_name("lm_head.weight"), true);
  }
}

}  // namespace alloy::detail
