#include "alloy/merge/model_card.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <sstream>

namespace alloy {
namespace {

bool is_control(char c) {
  const auto byte = static_cast<unsigned char>(c);
  return byte < 0x20 || byte == 0x7F;
}

// "\xNN": a control byte as both YAML double-quoted scalars and readers of Markdown show it.
std::string hex_escape(char c) {
  char escaped[5];
  std::snprintf(escaped, sizeof(escaped), "\\x%02X", static_cast<unsigned char>(c));
  return escaped;
}

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
  // A double-quoted YAML scalar: control bytes (a newline followed by "---" would end the front
  // matter) are escapes, never raw.
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += is_control(c) ? hex_escape(c) : std::string(1, c);
  }
  return quoted + "\"";
}

// Text for the Markdown body: control bytes shown as \xNN, so a name cannot start a new line.
std::string printable(const std::string& text) {
  std::string out;
  for (char c : text) out += is_control(c) ? hex_escape(c) : std::string(1, c);
  return out;
}

// A code fence longer than any run of backticks in `text`, so the recipe cannot close it early.
std::string fence_for(const std::string& text) {
  size_t longest = 0, run = 0;
  for (char c : text) {
    run = c == '`' ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  return std::string(std::max<size_t>(3, longest + 1), '`');
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
  out << "# " << printable(info.name) << "\n\n"
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
  if (!info.base_model.empty()) out << " using " << printable(info.base_model) << " as a base";
  out << ".\n\n### Models Merged\n\nThe following models were included in the merge:\n";
  for (const auto& model : credited) {
    if (model == info.base_model) continue;
    out << "* " << printable(model) << "\n";
  }
  const std::string fence = fence_for(info.recipe_yaml);
  out << "\n### Configuration\n\nThe following YAML configuration was used to produce this "
         "model:\n\n" << fence << "yaml\n"
      << info.recipe_yaml;
  if (!info.recipe_yaml.empty() && info.recipe_yaml.back() != '\n') out << "\n";
  out << fence << "\n";
  return out.str();
}

}  // namespace alloy
