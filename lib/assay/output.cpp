// The assay's output forms: the JSON document (docs/assay.md, "JSON schema"), the recipe as YAML
// that alloy-merge runs, and the readable text summary.
#include <cmath>
#include <cstdio>
#include <sstream>

#include "alloy/assay/assay.h"
#include "alloy/core/error.h"

namespace alloy {
namespace {

using nlohmann::json;

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// YAML emission of the recipe's JSON form: strings are JSON-quoted (valid YAML double-quoted
// scalars, safe for any path), numbers plain, lists of scalars in flow style.
bool is_scalar_list(const json& v) {
  if (!v.is_array()) return false;
  for (const auto& e : v) {
    if (e.is_object() || e.is_array()) return false;
  }
  return true;
}

std::string scalar(const json& v) {
  if (v.is_number_float()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.10g", v.get<double>());
    std::string s = buf;
    if (s.find_first_of(".en") == std::string::npos) s += ".0";
    return s;
  }
  return v.dump();
}

void emit(std::ostringstream& out, const json& v, int indent);

void emit_entry(std::ostringstream& out, const std::string& key, const json& value, int indent) {
  out << std::string(size_t(indent), ' ') << key << ":";
  if (value.is_object() || (value.is_array() && !is_scalar_list(value))) {
    out << "\n";
    emit(out, value, indent + 2);
  } else if (value.is_array()) {
    out << " [";
    for (size_t i = 0; i < value.size(); ++i) out << (i ? ", " : "") << scalar(value[i]);
    out << "]\n";
  } else {
    out << " " << scalar(value) << "\n";
  }
}

void emit(std::ostringstream& out, const json& v, int indent) {
  if (v.is_object()) {
    for (const auto& [key, value] : v.items()) emit_entry(out, key, value, indent);
  } else if (v.is_array()) {
    for (const auto& item : v) {
      std::ostringstream inner;
      emit(inner, item, indent + 2);
      std::string text = inner.str();
      // "- " takes the place of the first line's indentation.
      out << std::string(size_t(indent), ' ') << "- " << text.substr(size_t(indent) + 2);
    }
  }
}

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "-";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string short_number(double v) {
  if (!std::isfinite(v)) return "-";
  char buf[48];
  std::snprintf(buf, sizeof buf, std::fabs(v) >= 1e5 ? "%.2e" : "%.1f", v);
  return buf;
}

}  // namespace

std::string recipe_to_yaml(const json& recipe) {
  std::ostringstream out;
  // mergekit's usual order first, then anything else.
  static const char* const kOrder[] = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype"};
  for (const char* key : kOrder) {
    if (recipe.contains(key) && !recipe[key].is_null()) emit_entry(out, key, recipe[key], 0);
  }
  for (const auto& [key, value] : recipe.items()) {
    bool known = false;
    for (const char* k : kOrder) known |= key == k;
    if (!known && !value.is_null()) emit_entry(out, key, value, 0);
  }
  return out.str();
}

json assay_to_json(const AssayResult& r) {
  json out;
  out["suspect"] = r.suspect;
  out["verdict"] = r.verdict;
  out["method"] = r.method.empty() ? json(nullptr) : json(r.method);
  out["base"] = r.base ? json(r.candidates[size_t(*r.base)].path) : json(nullptr);
  out["recipe"] = r.recipe.is_null() ? json::object() : r.recipe;
  out["recipe_yaml"] = r.recipe.empty() ? "" : recipe_to_yaml(r.recipe);
  out["candidates"] = json::array();
  for (const auto& c : r.candidates) {
    out["candidates"].push_back({{"path", c.path}, {"correlation", number_or_null(c.correlation)}, {"related", c.related},
                                 {"involved", c.involved}, {"weight", number_or_null(c.weight)},
                                 {"weight_std", number_or_null(c.weight_std)}, {"density", number_or_null(c.density)}});
  }
  out["components"] = json::array();
  for (const auto& c : r.components) {
    json weights = json::object();
    for (size_t i = 0; i < r.candidates.size(); ++i) {
      weights[r.candidates[i].path] = {{"mean", number_or_null(c.weight_mean[i])}, {"std", number_or_null(c.weight_std[i])}};
    }
    out["components"].push_back({{"name", c.name}, {"tensors", c.tensors}, {"numel", c.numel}, {"weights", weights},
                                 {"cos_fit", {{"mean", number_or_null(c.cos_fit_mean)}, {"min", number_or_null(c.cos_fit_min)}}},
                                 {"z", number_or_null(c.z)}, {"log10_false_positive", number_or_null(c.log10_false_positive)},
                                 {"log10_false_positive_distribution_free", number_or_null(c.log10_false_positive_distribution_free)}});
  }
  out["tensors"] = json::array();
  for (const auto& t : r.tensors) {
    json j = {{"name", t.name}, {"component", t.component}, {"layer", t.layer}, {"expert", t.expert},
              {"numel", t.numel}, {"fitted", t.fitted}, {"aligned", t.aligned}};
    if (!t.fitted) {
      j["skipped"] = t.skipped;
      out["tensors"].push_back(j);
      continue;
    }
    json weights = json::object(), density = json::object();
    for (size_t i = 0; i < r.candidates.size(); ++i) {
      weights[r.candidates[i].path] = number_or_null(t.weights[i]);
      if (std::isfinite(t.density[i])) density[r.candidates[i].path] = t.density[i];
    }
    j["reference"] = t.reference >= 0 ? json(r.candidates[size_t(t.reference)].path) : json(nullptr);
    j["weights"] = weights;
    json weight_se = json::object();
    for (size_t i = 0; i < r.candidates.size(); ++i) weight_se[r.candidates[i].path] = number_or_null(t.weight_se[i]);
    j["weight_se"] = weight_se;
    j["cos_fit"] = number_or_null(t.cos_fit);
    j["null_cos"] = number_or_null(t.null_cos);
    j["z"] = number_or_null(t.z);
    j["deviation"] = number_or_null(t.deviation);
    j["residual"] = number_or_null(t.residual);
    j["copy_of"] = t.copy_of >= 0 ? json(r.candidates[size_t(t.copy_of)].path) : json(nullptr);
    j["equal_reference"] = number_or_null(t.equal_reference);
    if (t.parent_a >= 0) {
      j["slerp"] = {{"t", number_or_null(t.slerp_t)}, {"theta", number_or_null(t.slerp_theta)},
                    {"coefficient_sum", number_or_null(t.coefficient_sum)}};
    }
    if (!density.empty()) j["density"] = density;
    out["tensors"].push_back(j);
  }
  out["permutations"] = r.permutations;
  out["evidence"] = r.evidence;
  out["audit"] = audit_to_json(r.audit);
  if (r.sampling.fraction > 0) {
    out["sampling"] = {{"fraction", r.sampling.fraction}, {"seed", r.sampling.seed},
                       {"tensors_sampled", r.sampling.tensors_sampled}, {"elements_read", r.sampling.elements_read},
                       {"elements_total", r.sampling.elements_total}};
  }
  return out;
}

json audit_to_json(const AssayAudit& audit) {
  json models = json::array();
  for (const auto& m : audit.models) {
    json files = json::array();
    for (const auto& f : m.files) {
      json file = {{"path", f.path}, {"size", f.size}, {"sha256", f.sha256.empty() ? json(nullptr) : json(f.sha256)}};
      if (f.sha256_from_cache) file["sha256_source"] = "cache";
      files.push_back(file);
    }
    const json hub = m.hub_id.empty() ? json(nullptr) : json{{"id", m.hub_id}, {"revision", m.hub_revision}};
    models.push_back({{"role", m.role}, {"path", m.path}, {"hub", hub}, {"files", files}});
  }
  return {{"alloy_version", audit.alloy_version}, {"time", audit.time}, {"command_line", audit.command_line},
          {"models", models}};
}

bool verdict_matches(const AssayResult& r, const std::string& condition) {
  // An inconclusive verdict matches as its finding on the compared part would (a gate fails on
  // what was found), and always matches "any".
  const std::string finding = r.verdict == "inconclusive" && r.evidence.contains("finding_on_compared")
                                  ? r.evidence["finding_on_compared"].value("verdict", "")
                                  : r.verdict;
  const bool related = finding == "merge" || finding == "fine-tune" || finding == "copy";
  if (condition == "merge") return finding == "merge";
  if (condition == "related") return related;
  if (condition == "any") return related || r.verdict == "inconclusive" || r.evidence.contains("confidence");
  throw Error(ErrorCode::kInvalidArgument, "--fail-on takes merge, related or any, not '" + condition + "'");
}

std::string assay_summary(const AssayResult& r) {
  std::ostringstream out;
  out << "suspect: " << r.suspect << "\n";
  out << "verdict: " << r.verdict;
  if (!r.method.empty()) out << " (" << r.method << ")";
  if (r.base) out << ", base " << r.candidates[size_t(*r.base)].path;
  out << "\n";
  if (r.evidence.contains("confidence")) {
    out << "confidence: " << r.evidence["confidence"].get<std::string>() << " (see the notes)\n";
  }
  if (r.evidence.contains("summary")) out << "evidence: " << r.evidence["summary"].get<std::string>() << "\n";
  if (r.evidence.contains("coverage")) {
    const auto& c = r.evidence["coverage"];
    out << "compared: " << fixed(100 * c.value("fraction", 0.0), 1) << "% of the suspect's parameters (";
    bool first = true;
    for (const auto& part : c.value("components", json::array())) {
      out << (first ? "" : ", ") << part.value("name", "") << " " << fixed(100 * part.value("fraction", 0.0), 0) << "%";
      first = false;
    }
    out << ")\n";
  }
  for (const auto& s : r.evidence.value("set_aside", json::array())) {
    out << "set aside: " << s.value("path", "") << " (" << fixed(100 * s.value("shared", 0.0), 1)
        << "% of the suspect's parameters share its names and shapes; not compared)\n";
  }
  if (r.evidence.contains("log10_false_positive") && r.evidence["log10_false_positive"].is_number()) {
    out << "false-positive bound: 10^" << fixed(r.evidence["log10_false_positive"].get<double>(), 1)
        << " (sub-Gaussian null of the calibrated scale, weakest major component)\n";
  }
  if (r.evidence.contains("rebuild")) {
    const auto& b = r.evidence["rebuild"];
    out << "rebuild check: " << b.value("tensors", 0) << " tensors, "
        << fixed(100 * b.value("exact_fraction", 0.0), 2) << "% bit-exact, max " << b.value("max_ulp", 0)
        << " ulp, relative error " << b.value("relative_error", 0.0) << "\n";
  }
  if (r.evidence.contains("unexplained_level") && r.evidence["unexplained_level"].is_number()) {
    const std::string level = fixed(100 * r.evidence["unexplained_level"].get<double>(), 3);
    // A sparse recipe drops deltas, which a blend of whole tensors leaves unexplained however
    // clean the merge: there the rebuild check, not this level, measures the recipe.
    if (r.verdict == "merge" && is_sparse_method(r.method))
      out << "unexplained by the plain fit: " << level << "% of the weights' norm (the deltas "
          << r.method
          << " dropped, which a blend of whole tensors cannot express; the rebuild check measures "
             "the recipe)\n";
    else
      out << "unexplained by the recipe: " << level
          << "% of the weights' norm (rounding alone is ~0.1% in bf16; more means noise or further "
             "training)\n";
  }
  if (!r.audit.models.empty()) {
    size_t files = 0, hashed = 0;
    for (const auto& m : r.audit.models) {
      files += m.files.size();
      for (const auto& f : m.files) hashed += !f.sha256.empty();
    }
    out << "audit: alloy " << r.audit.alloy_version << ", " << r.audit.time << ", " << files << " files examined, "
        << hashed << " with sha256 (see --json: audit)\n";
  }
  if (r.sampling.fraction > 0) {
    const double share = r.sampling.elements_total ? double(r.sampling.elements_read) / double(r.sampling.elements_total) : 0;
    out << "sampled: " << fixed(100 * r.sampling.fraction, 2) << "% of the rows of " << r.sampling.tensors_sampled
        << " tensors (seed " << r.sampling.seed << "): " << fixed(100 * share, 2)
        << "% of the fitted elements read; the weights' errors are those of the sample\n";
  }
  size_t undone = r.permutations.size();
  for (const auto& p : r.permutations) {
    if (!p.is_object() || p.value("kind", "") != "rotation") continue;
    --undone;
    out << "alignment: undid a rotation of the residual stream (" << (p.value("hadamard", false) ? "Hadamard, " : "")
        << "Procrustes residual " << fixed(p.value("residual", 0.0), 4) << ")\n";
  }
  if (undone) out << "alignment: undid " << undone << " permutations (see --json)\n";
  if (r.evidence.contains("folded_norms") && r.evidence["folded_norms"].is_object()) {
    out << "alignment: " << r.evidence["folded_norms"].value("summary", "") << " (see --json: evidence.folded_norms)\n";
  }
  for (const auto& n : r.evidence.value("notes", json::array())) out << "note: " << n.get<std::string>() << "\n";
  if (!r.recipe.empty()) {
    out << "\nrecovered recipe:\n";
    std::istringstream yaml(recipe_to_yaml(r.recipe));
    for (std::string line; std::getline(yaml, line);) out << "  " << line << "\n";
  }
  out << "\ncandidates:\n";
  char line[512];
  std::snprintf(line, sizeof line, "  %-40s %12s %10s %10s %9s\n", "path", "correlation", "weight", "+/-", "involved");
  out << line;
  for (const auto& c : r.candidates) {
    std::snprintf(line, sizeof line, "  %-40s %12s %10s %10s %9s\n", c.path.c_str(), fixed(c.correlation, 4).c_str(),
                  fixed(c.weight, 4).c_str(), fixed(c.weight_std, 4).c_str(), c.involved ? "yes" : "no");
    out << line;
  }
  out << "\ncomponents (alpha = mixing weight, mean +/- std across tensors):\n";
  std::string header = "  component          tensors";
  for (size_t i = 0; i < r.candidates.size(); ++i) {
    if (r.candidates[i].involved) header += "   alpha[" + std::to_string(i + 1) + "]       ";
  }
  out << header << "  cos_fit        z\n";
  for (const auto& c : r.components) {
    std::snprintf(line, sizeof line, "  %-18s %7zu", c.name.c_str(), c.tensors);
    out << line;
    for (size_t i = 0; i < r.candidates.size(); ++i) {
      if (!r.candidates[i].involved) continue;
      std::snprintf(line, sizeof line, "  %7s+/-%-7s", fixed(c.weight_mean[i], 4).c_str(), fixed(c.weight_std[i], 4).c_str());
      out << line;
    }
    std::snprintf(line, sizeof line, "  %7s %9s\n", fixed(c.cos_fit_mean, 4).c_str(), short_number(c.z).c_str());
    out << line;
  }
  if (!r.candidates.empty()) {
    out << "  (alpha[i] is candidate i in the table above)\n";
  }
  return out.str();
}

}  // namespace alloy
