#include "alloy/merge/model_card.h"

#include <cctype>
#include <map>
#include <sstream>

namespace alloy {
namespace {

// Front-matter values are YAML scalars: quote them whenever they could be read as something else.
std::string yaml_scalar(const std::string& text) {
  bool plain = !text.empty();
  for (char c : text) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '/' || c == '_' || c == '-' ||
          c == '.')) {
      plain = false;
      break;
    }
  }
  if (plain && text.front() != '-' && text.front() != '.') return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c;
  }
  return quoted + "\"";
}

}  // namespace

MethodReference method_reference(const std::string& method) {
  static const std::map<std::string, MethodReference> kReferences = {
      {"linear", {"Linear", "https://arxiv.org/abs/2203.05482"}},
      {"slerp", {"SLERP", "https://en.wikipedia.org/wiki/Slerp"}},
      {"nuslerp", {"NuSLERP", ""}},
      {"task_arithmetic", {"Task Arithmetic", "https://arxiv.org/abs/2212.04089"}},
      {"ties", {"TIES", "https://arxiv.org/abs/2306.01708"}},
      {"dare_ties", {"DARE TIES", "https://arxiv.org/abs/2311.03099"}},
      {"dare_linear", {"DARE linear", "https://arxiv.org/abs/2311.03099"}},
      {"breadcrumbs", {"Model Breadcrumbs", "https://arxiv.org/abs/2312.06795"}},
      {"breadcrumbs_ties", {"Model Breadcrumbs with TIES", "https://arxiv.org/abs/2312.06795"}},
      {"della", {"DELLA", "https://arxiv.org/abs/2406.11617"}},
      {"della_linear", {"DELLA linear", "https://arxiv.org/abs/2406.11617"}},
      {"model_stock", {"Model Stock", "https://arxiv.org/abs/2403.19522"}},
      {"passthrough", {"Passthrough", ""}},
  };
  const auto it = kReferences.find(method);
  if (it != kReferences.end()) return it->second;
  return {method, ""};
}

std::string render_model_card(const ModelCardInfo& info) {
  std::ostringstream out;
  out << "---\nbase_model:\n";
  std::vector<std::string> credited;
  auto credit = [&](const std::string& model) {
    if (model.empty()) return;
    for (const auto& seen : credited) {
      if (seen == model) return;
    }
    credited.push_back(model);
  };
  credit(info.base_model);
  for (const auto& model : info.models) credit(model);
  for (const auto& model : credited) out << "- " << yaml_scalar(model) << "\n";
  out << "library_name: transformers\ntags:\n- merge\n- mergekit\n- alloy\n---\n";

  const MethodReference method = method_reference(info.merge_method);
  out << "# " << info.name << "\n\n"
      << "This is a merge of pre-trained language models, made with alloy " << info.tool_version
      << " (a mergekit-compatible merge tool). It is not an original model: every source model is "
         "credited below.\n\n"
      << "## Merge Details\n### Merge Method\n\n"
      << "This model was merged using the ";
  if (method.reference.empty()) {
    out << method.display_name;
  } else {
    out << "[" << method.display_name << "](" << method.reference << ")";
  }
  out << " merge method (`" << info.merge_method << "`)";
  if (!info.base_model.empty()) out << " using " << info.base_model << " as a base";
  out << ".\n\n### Models Merged\n\nThe following models were included in the merge:\n";
  for (const auto& model : credited) {
    if (model == info.base_model) continue;
    out << "* " << model << "\n";
  }
  out << "\n### Configuration\n\nThe following YAML configuration was used to produce this "
         "model:\n\n```yaml\n"
      << info.recipe_yaml;
  if (!info.recipe_yaml.empty() && info.recipe_yaml.back() != '\n') out << "\n";
  out << "```\n";
  return out.str();
}

}  // namespace alloy
