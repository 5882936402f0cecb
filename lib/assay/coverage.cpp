// What the assay compared: candidates that cannot be compared with the suspect (another width,
// another architecture) are set aside before the fit, so that they cannot shrink what is compared
// for the others; after the verdict, the share of the suspect's parameters it rests on, per
// component, qualifies it. docs/assay.md, "Coverage".
#include "coverage.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <unordered_set>

namespace alloy::detail {
namespace {

using nlohmann::json;

// The tensor's name with every all-digit segment (decoder layer, expert) replaced by '#', and its
// shape: what a candidate must hold for the tensor to be compared.
std::string shape_key(const std::string& name, const std::vector<uint64_t>& shape) {
  std::string key;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string::npos) end = name.size();
    const std::string segment = name.substr(start, end - start);
    const bool digits = !segment.empty() && std::all_of(segment.begin(), segment.end(), [](char ch) {
      return std::isdigit(static_cast<unsigned char>(ch)) != 0;
    });
    key += digits ? "#" : segment;
    if (end < name.size()) key += '.';
    start = end + 1;
  }
  key += '|';
  for (uint64_t d : shape) key += std::to_string(d) + ',';
  return key;
}

std::string percent(double share) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3g%%", 100 * share);
  return buffer;
}

// "a", "a and b", "a, b and c".
std::string join_words(const std::vector<std::string>& words) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    out += (i == 0 ? "" : i + 1 == words.size() ? " and " : ", ") + words[i];
  }
  return out;
}

}  // namespace

ComparableCandidates select_comparable(const Model& suspect, const std::vector<const Model*>& models,
                                       const std::vector<std::string>& paths) {
  uint64_t total = 0;
  for (const auto& t : suspect.tensors()) total += t.info->numel();
  std::vector<uint64_t> shared(models.size(), 0);
  for (size_t c = 0; c < models.size(); ++c) {
    std::unordered_set<std::string> keys;
    for (const auto& t : models[c]->tensors()) keys.insert(shape_key(t.name(), t.info->shape));
    for (const auto& t : suspect.tensors()) {
      if (keys.count(shape_key(t.name(), t.info->shape))) shared[c] += t.info->numel();
    }
  }
  const size_t best = size_t(std::max_element(shared.begin(), shared.end()) - shared.begin());
  ComparableCandidates out;
  for (size_t c = 0; c < models.size(); ++c) {
    // Nobody shares anything: keep them all (nothing is compared, and the verdict says so).
    if (shared[best] == 0 || double(shared[c]) >= kComparableShare * double(shared[best])) {
      out.models.push_back(models[c]);
      out.paths.push_back(paths[c]);
      continue;
    }
    const double mine = total ? double(shared[c]) / double(total) : 0;
    const double theirs = total ? double(shared[best]) / double(total) : 0;
    out.set_aside.push_back(
        {{"path", paths[c]},
         {"shared", mine},
         {"best_shared", theirs},
         {"reason", "shares the suspect's tensor names and shapes for " + percent(mine) + " of its parameters, against " +
                        percent(theirs) + " for " + paths[best] +
                        " (another width or architecture); compared, it would leave every tensor it lacks "
                        "uncompared for all the candidates"}});
  }
  return out;
}

void record_set_aside(const json& set_aside, AssayResult* result) {
  if (set_aside.empty()) return;
  // Appended: a screened assay sets aside the incomparable candidates before its screen and the
  // fitted assay may set aside more.
  if (!result->evidence.contains("set_aside")) result->evidence["set_aside"] = json::array();
  for (const auto& s : set_aside) {
    result->evidence["set_aside"].push_back(s);
    result->evidence["notes"].push_back("set aside " + s["path"].get<std::string>() + ": " +
                                        s["reason"].get<std::string>() + "; it takes no part in the verdict");
  }
}

void qualify_coverage(AssayResult* result) {
  AssayResult& r = *result;
  struct Part {
    uint64_t elements = 0, compared = 0;
  };
  std::map<std::string, Part> parts;
  uint64_t total = 0, compared = 0;
  for (const auto& t : r.tensors) {
    Part& p = parts[t.component];
    p.elements += t.numel;
    total += t.numel;
    if (t.fitted) p.compared += t.numel, compared += t.numel;
  }
  if (total == 0) return;
  // Display order: assay_component_names(), then any other name.
  std::vector<std::string> order;
  for (const auto& name : assay_component_names()) {
    if (parts.count(name)) order.push_back(name);
  }
  for (const auto& [name, part] : parts) {
    if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
  }
  json components = json::array();
  std::vector<std::string> covered, missed, not_compared;
  for (const auto& name : order) {
    const Part& p = parts[name];
    components.push_back({{"name", name}, {"elements", p.elements}, {"compared", p.compared},
                          {"fraction", p.elements ? double(p.compared) / double(p.elements) : 0.0}});
    if (p.compared > 0) covered.push_back(name);
    if (double(p.elements - p.compared) >= kNamedShare * double(total)) {
      not_compared.push_back(name);
      missed.push_back(name + " " + percent(double(p.elements - p.compared) / double(total)));
    }
  }
  const double fraction = double(compared) / double(total);
  r.evidence["coverage"] = {{"fraction", fraction}, {"elements", total}, {"compared", compared},
                            {"components", components}, {"not_compared", not_compared},
                            {"min_fraction", kMinCoverage}};
  const std::string before = r.evidence.value("summary", "");
  const std::string scope = (covered.empty() ? std::string("nothing") : join_words(covered)) + " (" +
                            percent(fraction) + " of the suspect's parameters; not compared: " +
                            join_words(missed) + " of them)";
  if (fraction < kMinCoverage) {
    r.evidence["finding_on_compared"] = {
        {"verdict", r.verdict},
        {"method", r.method.empty() ? json(nullptr) : json(r.method)},
        {"base", r.base ? json(r.candidates[size_t(*r.base)].path) : json(nullptr)},
        {"recipe", r.recipe.is_null() ? json::object() : r.recipe},
        {"summary", before}};
    r.verdict = "inconclusive";
    r.method.clear();
    r.base.reset();
    r.recipe = json::object();
    r.evidence["summary"] = "inconclusive: the candidates could be compared on " + scope + ", under the " +
                            percent(kMinCoverage) + " a verdict needs" +
                            (covered.empty() ? std::string() : "; on what was compared: " + before);
    if (!r.evidence.contains("confidence")) r.evidence["confidence"] = "partial";
    return;
  }
  if (not_compared.empty()) return;
  if (!r.evidence.contains("confidence")) r.evidence["confidence"] = "partial";
  r.evidence["summary"] = "on " + scope + ": " + before;
}

}  // namespace alloy::detail
