#include "alloy/merge/model_card.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <sstream>

#include "alloy/core/error.h"
#include "alloy/core/evidence.h"
#include "alloy/core/hub_cache.h"
#include "alloy/core/safetensors.h"

namespace alloy {
namespace fs = std::filesystem;
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

std::string card_model_name(const std::string& recipe_name, const fs::path& path) {
  const HubReference hub = hub_reference(path);
  if (!hub.id.empty()) return hub.id;
  const fs::path normal = fs::path(recipe_name).lexically_normal();
  std::string name = normal.filename().string();
  if (name.empty() || name == "." || name == "..") name = fs::absolute(path).lexically_normal().filename().string();
  return name.empty() ? recipe_name : name;
}

std::string front_matter_license(const std::string& readme_text) {
  std::istringstream in(readme_text);
  std::string line;
  auto trim = [](std::string text) {
    while (!text.empty() && (text.back() == '\r' || text.back() == ' ' || text.back() == '\t')) text.pop_back();
    size_t start = 0;
    while (start < text.size() && (text[start] == ' ' || text[start] == '\t')) ++start;
    return text.substr(start);
  };
  if (!std::getline(in, line) || trim(line) != "---") return "";
  while (std::getline(in, line)) {
    if (trim(line) == "---" || trim(line) == "...") return "";
    if (line.rfind("license:", 0) != 0) continue;
    std::string value = trim(line.substr(8));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front()) {
      return value.substr(1, value.size() - 2);
    }
    const size_t comment = value.find(" #");
    return trim(value.substr(0, comment));
  }
  return "";
}

InheritedLicense inherited_license(const std::vector<std::pair<std::string, fs::path>>& parents) {
  constexpr size_t kMaxCardBytes = 1 << 20;  // the front matter is at the start
  std::vector<std::string> licenses;
  for (const auto& [name, folder] : parents) {
    std::string license;
    try {
      std::error_code ec;
      if (fs::is_regular_file(folder / "README.md", ec)) {
        const fs::path real = fs::canonical(folder, ec);
        if (!ec) {
          const auto card = MappedFile::open_inside(containment_root(real), real / "README.md");
          const size_t size = std::min(card->size(), kMaxCardBytes);
          license = front_matter_license(std::string(reinterpret_cast<const char*>(card->data()), size));
        }
      }
    } catch (const Error&) {
      license.clear();  // unreadable, or a link leaving the folder: no license known
    }
    licenses.push_back(license);
  }
  InheritedLicense out;
  const bool agree = !licenses.empty() && !licenses.front().empty() &&
                     std::all_of(licenses.begin(), licenses.end(), [&](const std::string& l) { return l == licenses.front(); });
  if (agree) {
    out.license = licenses.front();
    return out;
  }
  out.license = "other";
  // Nothing to inherit and nothing contradicted: no parent declares a license.
  if (std::all_of(licenses.begin(), licenses.end(), [](const std::string& l) { return l.empty(); })) return out;
  out.warning = "the parents' model cards do not declare one same license (";
  for (size_t i = 0; i < parents.size(); ++i) {
    out.warning += (i ? ", " : "") + parents[i].first + ": " + (licenses[i].empty() ? "none" : licenses[i]);
  }
  out.warning += "), so the model card says 'license: other'; set the right license before publishing";
  return out;
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
  std::vector<std::string> parents;
  for (const auto& parent : info.parents.empty() ? credited : info.parents) {
    if (std::find(parents.begin(), parents.end(), parent) == parents.end()) parents.push_back(parent);
  }
  for (const auto& model : parents) out << "- " << yaml_scalar(model) << "\n";
  out << "base_model_relation: merge\nlicense: " << yaml_scalar(info.license.empty() ? "other" : info.license)
      << "\nlibrary_name: transformers\ntags:\n- merge\n- mergekit\n- alloy\n---\n";

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
