// lib/assay/report_sections.cpp: the recipe, the candidates and components tables and the checks
// of the recipe, each with its "How to read this" beside the numbers.
#include <cmath>

#include "alloy/core/html.h"
#include "report_internal.h"

namespace alloy::report {
namespace {

bool any_related(const Page& page) {
  for (const json& c : list(page.doc, "candidates"))
    if (flag(c, "related")) return true;
  return false;
}

// The candidates whose weights the tables show: those in the recipe (with the base, whose plain-fit
// weight the reader needs to see), else the related ones.
std::vector<size_t> table_candidates(const Page& page) {
  std::vector<size_t> out;
  const json& candidates = list(page.doc, "candidates");
  for (const char* key : {"involved", "related"}) {
    for (size_t i = 0; i < candidates.size(); ++i)
      if (flag(candidates[i], key)) out.push_back(i);
    if (!out.empty()) break;
  }
  return out;
}

// "base −0.50, ft_1 0.86 and ft_2 0.64": the plain fit's overall weights of the tables' candidates.
std::string plain_fit_weights(const Page& page) {
  const json& candidates = list(page.doc, "candidates");
  std::string out;
  const auto shown = table_candidates(page);
  for (size_t k = 0; k < shown.size(); ++k) {
    const json& c = candidates[shown[k]];
    out += (k == 0 ? "" : k + 1 == shown.size() ? " and " : ", ") + code(page.names[shown[k]]) + " " +
           fmt_to_precision(number(c, "weight"), number(c, "weight_std"));
  }
  return out;
}

}  // namespace

std::string recipe_section(const Page& page) {
  std::string o = "<h2>The recovered recipe</h2>\n";
  const json& recipe = field(page.doc, "recipe");
  std::string yaml = text(page.doc, "recipe_yaml");
  if (yaml.empty() && recipe.is_object() && !recipe.empty())
    yaml = recipe.dump(2, ' ', false, json::error_handler_t::replace);
  if (yaml.empty()) return o + "<p class=\"muted\">None: the suspect is not a merge of the candidates.</p>\n";
  std::string read =
      "<p>The recipe in mergekit's format: <code>alloy-merge</code> runs it to rebuild the suspect from the "
      "candidates.</p><p><b>weight</b>: how much of each parent goes into the blend. ";
  if (page.sparse)
    read += "<b>density</b>: the share of each parent's changes (relative to the base) that is kept; TIES keeps the "
            "largest, DARE a random sample.";
  read += "</p>";
  o += with_explanation("<pre>" + html_escape(yaml) + "</pre>", read);
  if (page.sparse)
    o += "<div class=\"note\"><b>Why the tables below show other weights than the recipe.</b> The tables come from the "
         "<i>plain fit</i>: the suspect written as a straight blend of whole tensors of all candidates, which gives " +
         plain_fit_weights(page) + ". " + page.method_name() +
         " does not blend whole tensors: it keeps only part of each parent's changes, drops those whose sign "
         "disagrees, and adds the rest to the base. The best straight blend of such a model over-weights the parents "
         "and gives the base a negative weight to compensate. The recipe's weights and densities are read instead from "
         "which elements of the suspect equal the base or one parent exactly, and the rebuild check below runs the "
         "recipe itself.</div>\n";
  return o;
}

std::string candidates_section(const Page& page) {
  if (list(page.doc, "candidates").empty()) return "<h2>The candidates</h2>\n<p class=\"muted\">None listed.</p>\n";
  std::string t = "<table><tr><th>Candidate</th><th>Related</th><th>In the recipe</th><th>Correlation</th>"
                  "<th>Weight in the plain fit</th>" +
                  std::string(page.sparse ? "<th>Density</th>" : "") + "</tr>\n";
  const json& candidates = list(page.doc, "candidates");
  for (size_t i = 0; i < candidates.size(); ++i) {
    const json& c = candidates[i];
    const bool related = flag(c, "related");
    const std::string weight = fmt_estimate(number(c, "weight"), number(c, "weight_std"));
    t += "<tr><td title=\"" + html_escape(page.paths[i]) + "\">" + code(page.names[i]) + "</td>" +
         td(related ? "yes" : "no") + td(flag(c, "involved") ? "yes" : "no") +
         td(fmt_correlation(number(c, "correlation")), true) +
         td(related ? weight : "<span class=\"muted\">" + weight + "</span>", true) +
         (page.sparse ? td(flag(c, "involved") && page.paths[i] != text(page.doc, "base")
                                ? fmt_to_precision(number(c, "density"), 0.01)
                                : "—",
                            true)
                     : std::string()) + "</tr>\n";
  }
  t += "</table>\n";
  std::vector<double> correlations;
  std::vector<std::string> colors;
  for (const json& c : candidates) {
    correlations.push_back(number(c, "correlation"));
    colors.push_back(flag(c, "related") ? "#1f77b4" : "#aaa");
  }
  const std::string bars = svg_bars("How alike the suspect is to each candidate (correlation; 1 = the same, 0 = unrelated)", page.names,
                correlations, colors);
  std::string read =
      "<p><b>Correlation</b>: how alike the suspect's weights and the candidate's are, from 1 (the same) to 0 "
      "(unrelated). Merges and fine-tunes of a candidate are near 1.</p><p><b>Weight in the plain fit</b>: the "
      "suspect written as a blend of all candidates (weights sum to 1), averaged over tensors; ± is how much it "
      "varies between tensors, and the weight is printed only to the digits that spread supports. Weights of "
      "candidates that are not related are noise (grey).</p>";
  if (page.sparse) read += "<p>For " + page.method_name() + " these are not the recipe's weights (see above).</p>";
  return "<h2>The candidates</h2>\n" + with_explanation(t, read) + bars;
}

std::string components_section(const Page& page) {
  std::string o = "<h2>Part by part</h2>\n";
  if (!any_related(page))
    return o + "<p>Not shown: no candidate is related to the suspect, so a fit of the suspect as a blend of the "
               "candidates means nothing here (its figures are in the JSON output).</p>\n";
  const auto shown = table_candidates(page);
  double total = 0;
  for (const json& c : list(page.doc, "components")) total += std::isfinite(number(c, "numel")) ? number(c, "numel") : 0;
  std::string t = "<table><tr><th>Part</th><th>Tensors</th><th>Share</th>";
  for (size_t i : shown) t += "<th>Weight of " + code(page.names[i]) + "</th>";
  t += "<th>Fit (cos)</th><th>z</th><th>Chance of a coincidence</th></tr>\n";
  for (const json& c : list(page.doc, "components")) {
    const json& w = field(c, "weights");
    t += "<tr>" + td(html_escape(text(c, "name"))) + td(fmt_count(number(c, "tensors")), true) +
         td(total > 0 ? fmt_percent(number(c, "numel") / total) : "—", true);
    for (size_t i : shown) {
      const json& pw = w.is_object() && w.contains(page.paths[i]) ? w[page.paths[i]] : json();
      t += td(fmt_estimate(number(pw, "mean"), number(pw, "std")), true);
    }
    t += td(fmt_cos(number(field(c, "cos_fit"), "mean")), true) + td(fmt_z(number(c, "z")), true) +
         td(fmt_chance(number(c, "log10_false_positive")), true) + "</tr>\n";
  }
  t += "</table>\n";
  const std::string read =
      "<p><b>Share</b>: the part's share of the compared weights. <b>Weight</b>: as in the candidates table, per "
      "part. <b>Fit (cos)</b>: how much of the suspect's difference from the reference candidate the blend "
      "explains, from 1 (all) to 0 (none). <b>z</b>: that fit measured against what unrelated models reach; above 5 "
      "is no coincidence. <b>Chance of a coincidence</b>: an upper bound on the probability that unrelated models "
      "fit this well.</p>";
  return o + with_explanation(t, read, true);
}

std::string checks_section(const Page& page) {
  const json& evidence = field(page.doc, "evidence");
  const json& rebuild = field(evidence, "rebuild");
  const double unexplained = number(evidence, "unexplained_level");
  if (!rebuild.is_object() && !std::isfinite(unexplained)) return "";
  std::string o = "<h2>Checks of the recipe</h2>\n";
  std::string body, read;
  const double exact = number(rebuild, "exact_fraction");
  if (rebuild.is_object()) {
    body += "<p><b>Rebuild</b>: running the recovered recipe on " + fmt_count(number(rebuild, "tensors")) +
            " sampled tensors (" + fmt_count(number(rebuild, "elements")) + " elements) reproduced <b>" +
            fmt_percent(exact) + "</b> of the elements bit for bit; largest difference " +
            fmt(number(rebuild, "max_ulp")) + " units in the last place, relative error " +
            fmt(number(rebuild, "relative_error"), 2) + ".</p>\n";
    read += "<p>The rebuild is the strongest check: the recipe, run through the merge methods, gives back the "
            "suspect's own numbers. 100% means bit for bit.</p>";
  }
  if (std::isfinite(unexplained)) {
    body += "<p><b>Left unexplained by the plain fit</b>: " + fmt_percent(unexplained) +
            " of the size of the weights (median over tensors).</p>\n";
    if (page.sparse && exact >= 0.999)
      read += "<p>The two agree: the plain fit is a straight blend of whole tensors and cannot express " +
              page.method_name() +
              "'s dropped changes, so it leaves them unexplained; the recipe itself reproduces them "
              "exactly.</p>";
    else
      read += "<p>Rounding to bf16 alone leaves about 0.1–0.2%; much more means noise or training on top of "
              "the merge.</p>";
  }
  if (!text(evidence, "summary").empty())
    body += "<p class=\"muted\">The assay's summary: " + html_escape(tidy_numbers(text(evidence, "summary"))) +
            "</p>\n";
  return o + with_explanation(body, read);
}

}  // namespace alloy::report
