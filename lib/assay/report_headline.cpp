// lib/assay/report_headline.cpp: the top of the report: the verdict in plain words, a one-sentence
// reason, and four facts (coverage, confidence, chance of a coincidence or closest candidate, the
// rebuild check), then the verdict's notes.
#include <cmath>

#include "alloy/core/html.h"
#include "report_internal.h"

namespace alloy::report {
namespace {

std::string name_html(const Page& page, const std::string& path) {
  return path.empty() ? std::string("an unnamed candidate") : code(page.name_of(path));
}

// "ft_1 (weight 0.6, density 0.5) and ft_2 (weight 0.4, density 0.5)" from the recovered recipe.
std::string recipe_terms(const Page& page) {
  const json& recipe = field(page.doc, "recipe");
  std::vector<std::string> terms;
  for (const json& m : list(recipe, "models")) {
    const json& p = field(m, "parameters");
    std::string t = name_html(page, text(m, "model"));
    std::string params;
    if (std::isfinite(number(p, "weight"))) params = "weight " + fmt(number(p, "weight"));
    if (std::isfinite(number(p, "density")))
      params += (params.empty() ? "" : ", ") + std::string("density ") + fmt(number(p, "density"));
    terms.push_back(params.empty() ? t : t + " (" + params + ")");
  }
  std::string out;
  for (size_t i = 0; i < terms.size(); ++i)
    out += (i == 0 ? "" : i + 1 == terms.size() ? " and " : ", ") + terms[i];
  return out;
}

std::string merge_headline(const Page& page) {
  const json& recipe = field(page.doc, "recipe");
  const std::string base = text(page.doc, "base");
  if (page.method == "passthrough" || !list(recipe, "slices").empty())
    return "A merge that stacks layers copied from the candidates (passthrough).";
  const double t = number(field(recipe, "parameters"), "t");
  if (page.method == "slerp" && std::isfinite(t) && page.charted.size() >= 2)
    return "A slerp merge from " + code(page.names[page.charted[0]]) + " towards " +
           code(page.names[page.charted[1]]) + " at t = " + fmt(t, 2) + ".";
  std::string terms = recipe_terms(page);
  if (terms.empty()) terms = "unidentified parents";
  const std::string method = page.method.empty() ? std::string() : page.method_name() + " ";
  std::string s = "A " + method + "merge of " + terms;
  if (!base.empty() && page.method != "linear" && page.method != "slerp") s += " on the base " + name_html(page, base);
  return s + ".";
}

std::string headline(const Page& page) {
  const std::string base = text(page.doc, "base");
  if (page.verdict == "merge") return merge_headline(page);
  if (page.verdict == "fine-tune") return "A fine-tune of " + name_html(page, base) + ".";
  if (page.verdict == "copy") return "A copy of " + name_html(page, base) + ".";
  if (page.verdict == "independent") return "Not made from any of the candidates.";
  if (page.verdict == "inconclusive") return "Too little of it could be compared with the candidates to say.";
  return "No verdict" + (page.verdict.empty() ? std::string() : ": " + html_escape(page.verdict)) + ".";
}

double rebuild_exact(const Page& page) {
  return number(field(field(page.doc, "evidence"), "rebuild"), "exact_fraction");
}

double best_correlation(const Page& page) {
  double best = kNaN;
  for (const json& c : list(page.doc, "candidates")) {
    const double r = number(c, "correlation");
    if (std::isfinite(r) && !(best >= r)) best = r;
  }
  return best;
}

std::string reason(const Page& page) {
  const json& evidence = field(page.doc, "evidence");
  if (page.verdict == "independent")
    return "Its weights do not correlate with any candidate's beyond chance (closest: " +
           fmt_correlation(best_correlation(page)) + ", where a merge or fine-tune of a candidate is near 1).";
  if (page.verdict == "copy")
    return number(evidence, "deviation") == 0 ? "Every compared tensor is identical to it, bit for bit."
                                              : "Its weights differ from it only at the level of re-rounding (" +
                                                    fmt_percent(number(evidence, "deviation")) + ").";
  if (page.verdict == "fine-tune")
    return "It is close to this candidate, and no blend of the other candidates explains how it differs.";
  if (page.verdict == "inconclusive")
    return "Only " + fmt_percent(number(field(evidence, "coverage"), "fraction")) +
           " of its weights have a counterpart of the same name and shape in the candidates, under the " +
           fmt_percent(number(field(evidence, "coverage"), "min_fraction")) + " a verdict needs. " +
           html_escape(tidy_numbers(text(evidence, "summary")));
  if (page.verdict != "merge") return "";
  std::string s = "Every major part of the model matches this blend of the candidates, far more closely than "
                  "unrelated models could by chance";
  if (rebuild_exact(page) >= 0.999) s += ", and re-running the recipe rebuilds the sampled tensors bit for bit";
  else if (std::isfinite(rebuild_exact(page))) s += "; re-running the recipe rebuilds the sampled tensors closely, not exactly";
  s += ".";
  if (!list(page.doc, "permutations").empty())
    s += " Some of its units had been put in another order, which hides a merge from a plain comparison; the assay "
         "undid that first (see \"Reordered units\").";
  return s;
}

struct Coverage {
  double compared = 0, total = 0;
  size_t tensors_compared = 0, tensors = 0;
};

Coverage coverage(const Page& page) {
  Coverage c;
  for (const json& t : list(page.doc, "tensors")) {
    const double n = std::isfinite(number(t, "numel")) ? number(t, "numel") : 0;
    ++c.tensors, c.total += n;
    if (flag(t, "fitted")) ++c.tensors_compared, c.compared += n;
  }
  return c;
}

std::string fact(const std::string& label, const std::string& value, const std::string& detail) {
  return "<div class=\"fact\"><b>" + label + "</b><span>" + value + "</span><small>" + detail + "</small></div>\n";
}

std::string facts(const Page& page) {
  const json& evidence = field(page.doc, "evidence");
  const Coverage c = coverage(page);
  std::string o = "<div class=\"facts\">\n";
  // Per component (evidence.coverage), then the candidates set aside.
  std::string parts;
  for (const json& part : list(field(evidence, "coverage"), "components"))
    parts += (parts.empty() ? "" : ", ") + html_escape(text(part, "name")) + " " + fmt_percent(number(part, "fraction"));
  std::string aside;
  for (const json& s : list(evidence, "set_aside"))
    aside += (aside.empty() ? "" : ", ") + code(page.name_of(text(s, "path")));
  o += fact("Coverage", c.total > 0 ? fmt_percent(c.compared / c.total) : "—",
            (c.tensors ? "of the weights compared (" + fmt_count(double(c.tensors_compared)) + " of " +
                             fmt_count(double(c.tensors)) + " tensors" + (parts.empty() ? "" : ": " + parts) + ")"
                       : std::string("no per-tensor results")) +
                (aside.empty() ? "" : "; set aside, another width or architecture: " + aside));
  const std::string confidence = text(evidence, "confidence");
  const json& unchecked = field(evidence, "unchecked");
  const json& not_compared = list(field(evidence, "coverage"), "not_compared");
  if (confidence == "partial" && !not_compared.empty() && !unchecked.is_object()) {
    std::string names;
    for (const json& n : not_compared) names += (names.empty() ? "" : ", ") + html_escape(text_of(n));
    o += fact("Confidence", "Partial", "not compared: " + names + " (no candidate tensor of that name and shape)");
  } else if (confidence == "partial")
    o += fact("Confidence", "Partial",
              fmt_count(number(unchecked, "tensors")) + " tensors (" + fmt_percent(number(unchecked, "fraction")) +
                  ") could not be aligned; nothing is claimed about them");
  else if (confidence == "low" && page.verdict == "fine-tune" && field(evidence, "quantization").is_object())
    o += fact("Confidence", "Low",
              "the suspect is an " + html_escape(text(field(evidence, "quantization"), "format")) +
                  " round trip whose rounding leaves the merge test undecided");
  else if (confidence == "low" && page.verdict == "fine-tune" && text(evidence, "merge_signature") == "untestable")
    o += fact("Confidence", "Low",
              "two candidates carry significant weights, but the fit is too weak to tell a recipe's one weight "
              "per layer from siblings' spread");
  else if (confidence == "low" && page.verdict == "fine-tune" && field(evidence, "sparse_merge_possible").is_boolean())
    o += fact("Confidence", "Low",
              "the weights differ between tensors as siblings' do, but the residual depends on the deltas' "
              "magnitudes as a sparse (TIES or DARE family) merge under noise leaves it: the fine-tune is not established");
  else if (confidence == "low" && field(evidence, "method_established").is_boolean())
    o += fact("Confidence", "Low",
              "a merge, but its residual depends on the parents' delta magnitudes: a sparse (TIES or DARE family) "
              "merge under noise, whose method the noise hides");
  else if (confidence == "low")
    o += fact("Confidence", "Low", "the recovered recipe does not rebuild the suspect");
  else if (!confidence.empty())
    o += fact("Confidence", html_escape(confidence), "see the notes");
  else
    o += fact("Confidence", "Full", "every compared tensor was checked and nothing lowered the verdict");
  if (page.verdict == "merge" || page.verdict == "fine-tune")
    o += fact("Chance of a coincidence", fmt_chance(number(evidence, "log10_false_positive")),
              "that unrelated models match this well (bound for the weakest major part)");
  else
    o += fact("Closest candidate", "correlation " + fmt_correlation(best_correlation(page)),
              "near 1: derived from it; below 0.2: unrelated");
  const json& rebuild = field(evidence, "rebuild");
  if (rebuild.is_object())
    o += fact("Rebuild check", fmt_percent(number(rebuild, "exact_fraction")) + " identical",
              "of the elements of " + fmt_count(number(rebuild, "tensors")) +
                  " sampled tensors rebuilt by running the recipe (largest difference " +
                  fmt(number(rebuild, "max_ulp")) + " in the last digit)");
  else
    o += fact("Rebuild check", "Not run", "there is no recipe to run");
  return o + "</div>\n";
}

}  // namespace

std::string headline_section(const Page& page) {
  const json& evidence = field(page.doc, "evidence");
  std::string kind = page.verdict == "independent" || page.verdict == "copy" ? page.verdict
                     : page.verdict == "inconclusive"                         ? "independent"
                                                                              : "merge";
  if (text(evidence, "confidence") == "low") kind = "low";
  const std::string label = page.verdict == "independent" ? "NOT RELATED"
                            : page.verdict.empty()        ? "NO VERDICT"
                                                          : html_escape(page.verdict);
  std::string o = "<section class=\"verdict " + kind + "\">\n<p class=\"head\"><span class=\"label\">" + label +
                  "</span>" + headline(page) + "</p>\n";
  const std::string why = reason(page);
  if (!why.empty()) o += "<p class=\"reason\">" + why + "</p>\n";
  o += facts(page) + "</section>\n";
  if (!list(evidence, "notes").empty()) {
    o += "<div class=\"note\"><b>Notes from the verdict</b><ul>\n";
    for (const json& n : list(evidence, "notes"))
      o += "<li>" + html_escape(tidy_numbers(n.is_string() ? text_of(n) : dump(n))) + "</li>\n";
    o += "</ul></div>\n";
  }
  return o;
}

}  // namespace alloy::report
