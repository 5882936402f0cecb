// lib/assay/report_evidence.cpp: the permutations the alignment undid, and the evidence for citing
// the finding (alloy's version, the time, the command line, every examined file's size and
// sha256, Hub ids) in a folded section.
#include <algorithm>

#include "alloy/core/html.h"
#include "report_internal.h"

namespace alloy::report {
namespace {

// An index list, cut after 16 entries (the JSON has it whole).
std::string short_list(const json& v) {
  if (!v.is_array()) return std::string();
  std::string out;
  const size_t shown = std::min<size_t>(v.size(), 16);
  for (size_t i = 0; i < shown; ++i) out += (i ? " " : "") + dump(v[i]);
  if (v.size() > shown) out += " … (" + std::to_string(v.size()) + " in all)";
  return out;
}

// One finding of the alignment stage: layer, what was permuted, the permutation, other fields.
std::string permutation_row(const json& p) {
  static const char* const kShown[] = {"layer", "kind", "unit", "permutation", "heads", "kv_heads", "scales", "layer_map"};
  std::string what = text(p, "kind");
  if (!text(p, "unit").empty()) what += " (" + text(p, "unit") + ")";
  std::string found;
  if (p.contains("permutation")) found = short_list(p["permutation"]);
  else if (p.contains("heads")) found = "heads " + short_list(p["heads"]) + "; kv groups " + short_list(field(p, "kv_heads"));
  else if (p.contains("scales")) found = short_list(p["scales"]);
  else if (p.contains("layer_map")) found = short_list(p["layer_map"]);
  json rest = json::object();
  for (const auto& [key, value] : p.items())
    if (std::find(std::begin(kShown), std::end(kShown), key) == std::end(kShown)) rest[key] = value;
  return "<tr>" + td(p.contains("layer") ? html_escape(dump(p["layer"])) : std::string("all")) + td(html_escape(what)) +
         td(code(found)) + td(rest.empty() ? std::string() : html_escape(dump(rest))) + "</tr>\n";
}

std::string hub_text(const json& hub) {
  if (!hub.is_object()) return "";
  std::string s = text(hub, "id");
  if (!text(hub, "revision").empty()) s += " @ " + text(hub, "revision");
  return s;
}

}  // namespace

// The norm gains folded into their readers (evidence.folded_norms), when the assay undid any.
std::string folded_norms_part(const Page& page) {
  const json& folded = field(field(page.doc, "evidence"), "folded_norms");
  if (!folded.is_object()) return "";
  std::string t = "<table>\n<tr><th>Norm</th><th>Readers</th><th>Gain range</th><th>vs blended candidates' gains"
                  "</th><th>Residual before / after</th></tr>\n";
  for (const json& n : list(folded, "norms")) {
    t += "<tr>" + td(code(text(n, "norm"))) + td(html_escape(std::to_string(list(n, "readers").size())), true) +
         td(fmt(number(n, "gain_min")) + " to " + fmt(number(n, "gain_max")), true) +
         td(fmt_percent(number(n, "relative_error")), true) +
         td(fmt(number(n, "residual_before")) + " / " + fmt(number(n, "residual_after")), true) + "</tr>\n";
  }
  t += "</table>\n";
  const std::string read =
      "<p>" + html_escape(text(folded, "summary")) + ". The suspect stores these norms as all ones and their readers' "
      "columns multiplied by the gains (what QuaRot-style pipelines do before quantizing); the assay fitted the gain of "
      "every column over all readers of the norm, divided it out, and compared the norm as the recovered gains.</p>";
  return "<h3>Folded norm gains</h3>\n" + with_explanation(t, read);
}

std::string permutations_section(const Page& page) {
  std::string o = "<h2>Reordered units</h2>\n";
  if (list(page.doc, "permutations").empty())
    return o + "<p>None: the suspect's heads, neurons and experts are in the candidates' order.</p>\n" +
           folded_norms_part(page);
  std::string t = "<table>\n<tr><th>Layer</th><th>What</th><th>Order found</th><th>Details</th></tr>\n";
  for (const json& p : list(page.doc, "permutations"))
    if (p.is_object()) t += permutation_row(p);
  t += "</table>\n";
  const std::string read =
      "<p>The suspect stores some units (attention heads, MLP neurons, experts) in another order than the "
      "candidates, which does not change what the model computes and is a way to hide a merge. The assay found "
      "the order and undid it before fitting. Read \"suspect unit j is candidate unit p[j]\"; scales are the "
      "factors found on rescaled neurons.</p>";
  return o + with_explanation(t, read) + folded_norms_part(page);
}

std::string audit_section(const Page& page) {
  const json& audit = field(page.doc, "audit");
  std::string o = "<h2>Evidence for citation</h2>\n";
  if (!audit.is_object())
    return o + "<p class=\"muted\">This assay output carries no record of the tool version and the files "
               "examined.</p>\n";
  o += "<details><summary>alloy " + html_escape(text(audit, "alloy_version")) + ", run at " +
       html_escape(text(audit, "time")) + ": command line, and the size and SHA-256 of every file examined</summary>\n";
  std::string command;
  for (const json& arg : list(audit, "command_line")) command += (command.empty() ? "" : " ") + text_of(arg);
  o += "<p>Command line: " + code(command) + "</p>\n";
  o += "<p>A SHA-256 here is the Hugging Face Hub's LFS object id of the file, so the finding can be tied to the "
       "exact bytes published.</p>\n";
  o += "<table><tr><th>Role</th><th>Model</th><th>Hub id</th><th>File</th><th>Size</th><th>SHA-256</th></tr>\n";
  for (const json& m : list(audit, "models")) {
    const json& files = list(m, "files");
    const std::string head = td(html_escape(text(m, "role"))) + td(code(text(m, "path"))) +
                             td(html_escape(hub_text(field(m, "hub"))));
    if (files.empty()) o += "<tr>" + head + "<td></td><td></td><td></td></tr>\n";
    for (size_t k = 0; k < files.size(); ++k) {
      const json& f = files[k];
      const std::string sha = text(f, "sha256");
      o += "<tr>" + (k == 0 ? head : "<td></td><td></td><td></td>") + td(code(text(f, "path"))) +
           td(fmt_bytes(number(f, "size")), true) + td(sha.empty() ? std::string("not hashed") : code(sha)) + "</tr>\n";
    }
  }
  return o + "</table>\n</details>\n";
}

}  // namespace alloy::report
