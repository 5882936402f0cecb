// lib/assay/report.cpp: the self-contained HTML report of an assay (docs/assay.md, "HTML report"),
// written for a reader who is not an expert: the verdict, a one-sentence reason, coverage and
// confidence first; then the recipe, the tables and the per-layer charts, each with its "How to
// read this" beside it; the evidence for citation (versions, hashes) last, folded.
//
// Input is the JSON document of assay_to_json, read defensively: any field may be missing, null,
// NaN or of the wrong type, and the report still renders. Every string from the document is
// HTML-escaped. The page needs no network: inline CSS, inline SVG drawn here, no scripts, no links.
// The parts: report_format.cpp (numbers), report_chart.cpp (SVG), report_headline.cpp,
// report_sections.cpp (recipe, tables, checks), report_layers.cpp, report_evidence.cpp.
#include <algorithm>
#include <cmath>

#include "alloy/assay/assay.h"
#include "alloy/core/html.h"
#include "report_internal.h"

namespace alloy {
namespace report {

Page::Page(const json& document) : doc(document) {
  verdict = text(doc, "verdict");
  method = text(doc, "method");
  sparse = is_sparse_method(method);
  for (const json& c : list(doc, "candidates")) paths.push_back(text(c, "path"));
  names = short_names(paths);
  // The charts show the candidates the recipe blends; for task-vector methods not the base (its
  // plain-fit weight is 1 minus the others'). Without a recipe, the related candidates.
  const std::string base = text(doc, "base");
  const bool base_is_term = !(sparse || method == "task_arithmetic");
  const json& candidates = list(doc, "candidates");
  for (size_t i = 0; i < candidates.size(); ++i)
    if (flag(candidates[i], "involved") && (base_is_term || paths[i] != base)) charted.push_back(i);
  if (charted.empty())
    for (size_t i = 0; i < candidates.size(); ++i)
      if (flag(candidates[i], "related")) charted.push_back(i);
}

std::string Page::name_of(const std::string& path) const {
  for (size_t i = 0; i < paths.size(); ++i)
    if (paths[i] == path) return names[i];
  return short_names({path}).front();
}

std::string Page::method_name() const {
  if (method == "ties") return "TIES";
  if (method == "dare_ties") return "DARE-TIES";
  if (method == "ties_family") return "TIES-family (member not told apart)";
  if (method == "task_arithmetic") return "task-arithmetic";
  return html_escape(method);
}

namespace {

const char* const kStyle =
    R"(body{font-family:system-ui,sans-serif;max-width:1120px;margin:1.2em auto;padding:0 1.2em;color:#222;line-height:1.4}
h1{font-size:1.45em;margin:.2em 0}h1 small{display:block;font-size:.55em;font-weight:normal;color:#666;word-break:break-all}
h2{margin-top:1.5em;border-bottom:1px solid #ddd;font-size:1.25em}h3{font-size:1.05em;margin:1em 0 .3em}
.verdict{padding:1em 1.2em;border-radius:8px;background:#eef4fb;border-left:8px solid #1f77b4}
.verdict.independent{background:#f3f3f3;border-color:#777}.verdict.copy{background:#fdf1e6;border-color:#ff7f0e}
.verdict.low{background:#fdecea;border-color:#d62728}
.verdict .label{display:inline-block;font-size:.8em;font-weight:bold;letter-spacing:.06em;text-transform:uppercase;padding:.1em .5em;border-radius:4px;background:#1f77b4;color:#fff;margin-right:.5em;vertical-align:middle}
.verdict.independent .label{background:#777}.verdict.copy .label{background:#e36c00}.verdict.low .label{background:#d62728}
.verdict .head{font-size:1.3em;font-weight:bold;margin:.1em 0 .3em}.verdict .reason{font-size:1.08em;margin:.2em 0 .6em}
.facts{display:grid;grid-template-columns:repeat(4,1fr);gap:.6em}.fact{background:#fff;border:1px solid #dde;border-radius:6px;padding:.45em .7em}
.fact b{display:block;font-size:.78em;text-transform:uppercase;letter-spacing:.05em;color:#555}.fact span{font-size:1.05em}
.fact small{display:block;color:#555;font-size:.82em}
.pair{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}.numbers{flex:1 1 560px;min-width:0}
aside.read{flex:0 1 330px;background:#fffbea;border-left:4px solid #e0b400;padding:.5em .9em;font-size:.9em}
aside.read.wide{display:block;margin:.4em 0 .6em}aside.read h4{margin:.2em 0 .3em;font-size:.95em}aside.read p{margin:.3em 0}
.note{background:#fffbea;border-left:4px solid #e0b400;padding:.5em .9em;margin:.6em 0}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-size:.92em}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-size:.92em}td code,li code{word-break:break-all}pre{background:#f6f6f6;padding:.6em .8em;overflow-x:auto;margin:.4em 0}
svg.chart{display:block;width:100%;height:auto;font-size:11px;margin:.2em 0}svg .ct{font-weight:bold;font-size:12.5px}
.panels{display:grid;grid-template-columns:1fr 1fr;gap:1em}.legend{margin:.3em 0;font-size:.9em}
.legend span{margin-right:1.1em;white-space:nowrap}.legend i{display:inline-block;width:12px;height:12px;margin-right:.3em;vertical-align:-1px}
.muted{color:#666}details{margin:.5em 0}summary{cursor:pointer;font-weight:bold}ul{margin:.3em 0})";

std::string page_head(const Page& page) {
  const std::string suspect = text(page.doc, "suspect");
  const std::string name = suspect.empty() ? std::string("(unnamed model)") : short_names({suspect}).front();
  std::string o = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Assay: " +
                  html_escape(name) + "</title>\n<style>\n" + kStyle + "\n</style>\n</head>\n<body>\n";
  o += "<h1>What is <code>" + html_escape(name) + "</code> made of?";
  if (!suspect.empty() && suspect != name) o += "<small>" + html_escape(suspect) + "</small>";
  return o + "</h1>\n";
}

}  // namespace
}  // namespace report

std::string assay_report_html(const nlohmann::json& doc) {
  const report::Page page(doc);
  using namespace report;
  return page_head(page) + headline_section(page) + recipe_section(page) + candidates_section(page) +
         components_section(page) + checks_section(page) + per_layer_section(page) + permutations_section(page) +
         audit_section(page) + "</body>\n</html>\n";
}

}  // namespace alloy
