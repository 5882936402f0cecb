// lib/assay/report.cpp: the self-contained HTML report of an assay (docs/assay.md, "HTML report").
//
// Input is the JSON document of assay_to_json, read defensively: any field may be missing, null,
// NaN or of the wrong type, and the report still renders. Every string from the document is
// HTML-escaped. The page needs no network: inline CSS, inline SVG drawn here, no scripts, no links.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "alloy/assay/assay.h"
#include "alloy/core/html.h"

namespace alloy {
namespace {

using nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Field access that never throws: missing, null or mistyped fields read as empty / NaN.
const json& field(const json& j, const char* key) {
  static const json null_value;
  if (!j.is_object()) return null_value;
  auto it = j.find(key);
  return it == j.end() ? null_value : *it;
}
std::string text_of(const json& j) {
  return j.is_string() ? j.get<std::string>() : std::string();
}
std::string text(const json& j, const char* key) {
  return text_of(field(j, key));
}
double number_of(const json& j) {
  if (j.is_boolean()) return j.get<bool>() ? 1 : 0;
  return j.is_number() ? j.get<double>() : kNaN;
}
double number(const json& j, const char* key) {
  return number_of(field(j, key));
}
bool flag(const json& j, const char* key) {
  return field(j, key).is_boolean() && field(j, key).get<bool>();
}
const json& list(const json& j, const char* key) {
  static const json empty = json::array();
  const json& v = field(j, key);
  return v.is_array() ? v : empty;
}
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Three significant digits; "—" for null/NaN; exponents as "1.23e6".
std::string fmt(double x) {
  if (std::isnan(x)) return "—";
  if (std::isinf(x)) return x > 0 ? "∞" : "−∞";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", x);
  std::string s = buf;
  auto e = s.find('e');
  if (e != std::string::npos) {
    std::string mant = s.substr(0, e), exp = s.substr(e + 1);
    bool neg = exp[0] == '-';
    exp = exp.substr(exp[0] == '-' || exp[0] == '+' ? 1 : 0);
    exp.erase(0, std::min(exp.find_first_not_of('0'), exp.size() - 1));
    s = mant + "e" + (neg ? "-" : "") + exp;
  }
  return s;
}
// cos_fit close to 1: enough digits that 0.9999 does not print as 1.
std::string fmt_cos(double x) {
  if (!(x > 0.995 && x < 1)) return fmt(x);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*g", std::min(9, 3 + static_cast<int>(-std::log10(1 - x))), x);
  return buf;
}
std::string fmt_count(double x) {
  if (!std::isfinite(x)) return "—";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                "#ff7f0e", "#17becf", "#8c564b", "#e377c2"};

struct Series {
  std::string label, color;
  std::vector<double> x, y;  // y may hold NaN (no point there)
};

// A line-and-point chart with axes, tick labels and a legend; y_lo < y_hi fixes the y range,
// otherwise it covers the data and [0, 1].
std::string svg_chart(const std::string& title, const std::string& x_label,
                      const std::vector<Series>& series, double y_lo = kNaN, double y_hi = kNaN) {
  const double width = 620, height = 240, left = 60, right = 170, top = 26, bottom = 42;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  const double inf = std::numeric_limits<double>::infinity();
  double x0 = inf, x1 = -inf, d0 = inf, d1 = -inf;
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      if (std::isfinite(s.y[i])) d0 = std::min(d0, s.y[i]), d1 = std::max(d1, s.y[i]);
    }
  if (!(x0 <= x1)) x0 = 0, x1 = 1;
  if (x1 - x0 < 1) x0 -= 0.5, x1 += 0.5;
  if (!(y_lo < y_hi)) {
    y_lo = std::min(0.0, d0 <= d1 ? d0 : 0.0), y_hi = std::max(1.0, d0 <= d1 ? d1 : 1.0);
    double pad = 0.05 * (y_hi - y_lo);
    if (y_lo < 0) y_lo -= pad;
    if (y_hi > 1) y_hi += pad;
  }
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * plot_w; };
  auto py = [&](double y) {
    return top + (y_hi - std::clamp(y, y_lo, y_hi)) / (y_hi - y_lo) * plot_h;
  };
  char buf[256];
  auto coord = [&](double v) {
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return std::string(buf);
  };
  std::string o = "<svg class=\"chart\" width=\"" + coord(width) + "\" height=\"" + coord(height) +
                  "\" viewBox=\"0 0 " + coord(width) + " " + coord(height) +
                  "\" role=\"img\" aria-label=\"" + html_escape(title) + "\">\n";
  o += "<text x=\"" + coord(left) + "\" y=\"16\" class=\"ct\">" + html_escape(title) + "</text>\n";
  o += "<rect x=\"" + coord(left) + "\" y=\"" + coord(top) + "\" width=\"" + coord(plot_w) +
       "\" height=\"" + coord(plot_h) + "\" fill=\"#fafafa\" stroke=\"#999\"/>\n";
  for (int i = 0; i <= 4; ++i) {  // y ticks and grid
    double v = y_lo + (y_hi - y_lo) * i / 4, y = py(v);
    o += "<line x1=\"" + coord(left) + "\" x2=\"" + coord(left + plot_w) + "\" y1=\"" + coord(y) +
         "\" y2=\"" + coord(y) + "\" stroke=\"#e3e3e3\"/><text x=\"" + coord(left - 6) + "\" y=\"" +
         coord(y + 4) + "\" text-anchor=\"end\">" + html_escape(fmt(v)) + "</text>\n";
  }
  double step = std::max(1.0, std::ceil((x1 - x0) / 12));
  for (double v = std::ceil(x0); v <= x1 + 1e-9; v += step)  // x ticks (integers: layers)
    o += "<line x1=\"" + coord(px(v)) + "\" x2=\"" + coord(px(v)) + "\" y1=\"" +
         coord(top + plot_h) + "\" y2=\"" + coord(top + plot_h + 4) +
         "\" stroke=\"#999\"/><text x=\"" + coord(px(v)) + "\" y=\"" + coord(top + plot_h + 16) +
         "\" text-anchor=\"middle\">" + fmt_count(v) + "</text>\n";
  o += "<text x=\"" + coord(left + plot_w / 2) + "\" y=\"" + coord(height - 6) +
       "\" text-anchor=\"middle\">" + html_escape(x_label) + "</text>\n";
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    std::string points;
    auto flush = [&] {
      if (!points.empty())
        o += "<polyline fill=\"none\" stroke=\"" + s.color + "\" stroke-width=\"2\" points=\"" +
             points + "\"/>\n";
      points.clear();
    };
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) {
        flush();
        continue;
      }
      points += coord(px(s.x[i])) + "," + coord(py(s.y[i])) + " ";
    }
    flush();
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.y[i]))
        o += "<circle cx=\"" + coord(px(s.x[i])) + "\" cy=\"" + coord(py(s.y[i])) +
             "\" r=\"3\" fill=\"" + s.color + "\"><title>" + html_escape(s.label) + ", " +
             html_escape(x_label) + " " + fmt_count(s.x[i]) + ": " + html_escape(fmt(s.y[i])) +
             "</title></circle>\n";
    double ly = top + 8 + 18 * static_cast<double>(k), lx = left + plot_w + 12;
    size_t cut = s.label.size() > 24 ? s.label.size() - 23 : 0;
    while (cut > 0 && cut < s.label.size() &&
           (static_cast<unsigned char>(s.label[cut]) & 0xC0) == 0x80)
      ++cut;
    std::string label = cut ? "…" + s.label.substr(cut) : s.label;
    o += "<rect x=\"" + coord(lx) + "\" y=\"" + coord(ly - 8) +
         "\" width=\"12\" height=\"10\" fill=\"" + s.color + "\"/><text x=\"" + coord(lx + 16) +
         "\" y=\"" + coord(ly + 1) + "\">" + html_escape(label) + "</text>\n";
  }
  return o + "</svg>\n";
}

std::string td(const std::string& html, bool numeric = false) {
  return numeric ? "<td class=\"n\">" + html + "</td>" : "<td>" + html + "</td>";
}

std::string verdict_sentence(const json& doc, const std::vector<std::string>& involved) {
  const std::string verdict = text(doc, "verdict"), method = text(doc, "method");
  std::string base = text(doc, "base");
  std::string base_html =
      base.empty() ? "an unnamed candidate" : "<code>" + html_escape(base) + "</code>";
  if (verdict == "fine-tune")
    return "This model was derived from " + base_html + " by fine-tuning.";
  if (verdict == "copy") return "This model is a copy of " + base_html + ".";
  if (verdict == "independent") return "No relation to any candidate was found.";
  if (verdict != "merge")
    return "Verdict: " + (verdict.empty() ? std::string("unknown") : html_escape(verdict)) + ".";
  const json& recipe = field(doc, "recipe");
  double t = number(field(recipe, "parameters"), "t");
  if (method == "slerp" && std::isfinite(t) && involved.size() >= 2)
    return "This model is a merge: spherical interpolation (slerp) from <code>" +
           html_escape(involved[0]) + "</code> towards <code>" + html_escape(involved[1]) +
           "</code> at t = " + fmt(t) + ".";
  std::map<std::string, std::pair<double, double>> params;  // path -> (weight, density)
  for (const json& c : list(doc, "candidates"))
    params[text(c, "path")] = {number(c, "weight"), number(c, "density")};
  for (const json& m : list(recipe, "models")) {
    const json& p = field(m, "parameters");
    auto& wd = params[text(m, "model")];
    if (std::isfinite(number(p, "weight"))) wd.first = number(p, "weight");
    if (std::isfinite(number(p, "density"))) wd.second = number(p, "density");
  }
  std::string terms;
  for (const std::string& path : involved) {
    if (path == base && method != "linear" && method != "slerp")
      continue;  // the base is not a term
    auto [weight, density] = params[path];
    if (!terms.empty()) terms += " + ";
    terms += fmt(weight) + " × <code>" + html_escape(path) + "</code>";
    if (std::isfinite(density) && density < 1) terms += " (density " + fmt(density) + ")";
  }
  std::string s =
      "This model is a merge: " + (terms.empty() ? std::string("of unidentified parents") : terms);
  if (!base.empty() && method != "linear" && method != "slerp") s += " on base " + base_html;
  return s + (method.empty() ? std::string() : " (" + html_escape(method) + ")") + ".";
}

std::string false_positive_sentence(double log10_fp) {
  if (!std::isfinite(log10_fp)) return "";
  if (log10_fp > -2)
    return "The evidence is weak: unrelated models could produce this with a chance of up to " +
           fmt(std::pow(10.0, std::min(0.0, log10_fp)));
  return "There is a chance below 10<sup>" + fmt_count(std::ceil(log10_fp)) +
         "</sup> that unrelated models produce this";
}

const char* const kStyle =
    R"(body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;word-break:break-all}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.banner{padding:1em 1.2em;border-radius:6px;font-size:1.15em;background:#eef4fb;border-left:6px solid #1f77b4}
.banner.independent{background:#f4f4f4;border-color:#888}.banner.copy{background:#fdf1e6;border-color:#ff7f0e}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}code{word-break:break-all}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}svg.chart{display:block;margin:.4em 0;font-size:11px}
svg .ct{font-weight:bold;font-size:12px}.muted{color:#666})";

// The page's sections, in order; each returns its HTML. `involved` lists the candidates whose
// mixing weights the tables and charts show (every candidate when none is involved).

std::string page_head(const std::string& suspect) {
  std::string o =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Assay: " +
      html_escape(suspect) + "</title>\n<style>\n" + kStyle + "\n</style>\n</head>\n<body>\n";
  o += "<h1>Assay of <code>" + html_escape(suspect.empty() ? std::string("(unnamed model)") : suspect) +
       "</code></h1>\n";
  return o;
}

// The verdict in one sentence, the summary, the evidence and the rebuild check; then the notes.
std::string verdict_section(const json& doc, const std::vector<std::string>& involved) {
  const std::string verdict = text(doc, "verdict");
  const json& evidence = field(doc, "evidence");
  std::string banner_class = verdict == "independent" || verdict == "copy" ? verdict : "merge";
  std::string o = "<div class=\"banner " + banner_class + "\"><p><strong>" +
                  verdict_sentence(doc, involved) + "</strong></p>\n";
  if (!text(evidence, "summary").empty()) o += "<p>" + html_escape(text(evidence, "summary")) + "</p>\n";
  std::string fp = false_positive_sentence(number(evidence, "log10_false_positive"));
  if (!fp.empty())
    o += "<p>" + fp + " (smallest component z: " + fmt(number(evidence, "z_min")) + ").</p>\n";
  const json& rebuild = field(evidence, "rebuild");
  if (rebuild.is_object())
    o += "<p>Re-running the recovered recipe on " + fmt_count(number(rebuild, "tensors")) +
         " sampled tensors reproduced " + fmt(100 * number(rebuild, "exact_fraction")) +
         "% of their elements exactly (largest difference: " + fmt(number(rebuild, "max_ulp")) +
         " ULP, units in the last place).</p>\n";
  o += "</div>\n";
  if (!list(evidence, "notes").empty()) {
    o += "<ul>\n";
    for (const json& n : list(evidence, "notes"))
      o += "<li>" + html_escape(n.is_string() ? text_of(n) : dump(n)) + "</li>\n";
    o += "</ul>\n";
  }
  return o;
}

std::string recipe_section(const json& doc) {
  std::string o = "<h2>Recovered recipe</h2>\n";
  const json& recipe = field(doc, "recipe");
  std::string yaml = text(doc, "recipe_yaml");
  if (yaml.empty() && recipe.is_object() && !recipe.empty())
    yaml = recipe.dump(2, ' ', false, json::error_handler_t::replace);
  o += yaml.empty() ? "<p class=\"muted\">No recipe (the suspect is not a merge).</p>\n"
                    : "<pre>" + html_escape(yaml) + "</pre>\n";
  return o;
}

std::string candidates_table(const json& doc) {
  std::string o =
      "<h2>Candidates</h2>\n<table><tr><th>Model</th><th>Correlation</th><th>Related</th><th>In "
      "recipe</th>"
      "<th>Weight (mean ± std)</th><th>Density</th></tr>\n";
  for (const json& c : list(doc, "candidates"))
    o += "<tr>" + td("<code>" + html_escape(text(c, "path")) + "</code>") +
         td(fmt(number(c, "correlation")), true) + td(flag(c, "related") ? "yes" : "no") +
         td(flag(c, "involved") ? "yes" : "no") +
         td(fmt(number(c, "weight")) + " ± " + fmt(number(c, "weight_std")), true) +
         td(fmt(number(c, "density")), true) + "</tr>\n";
  return o + "</table>\n";
}

std::string components_table(const json& doc, const std::vector<std::string>& involved) {
  std::string o =
      "<h2>Components</h2>\n<table><tr><th>Component</th><th>Tensors</th><th>Elements</th>";
  for (const std::string& p : involved) o += "<th>α <code>" + html_escape(p) + "</code></th>";
  o += "<th>cos_fit mean</th><th>cos_fit min</th><th>z</th><th>log<sub>10</sub> false "
       "positive</th></tr>\n";
  for (const json& c : list(doc, "components")) {
    const json& w = field(c, "weights");
    o += "<tr>" + td(html_escape(text(c, "name"))) + td(fmt_count(number(c, "tensors")), true) +
         td(fmt_count(number(c, "numel")), true);
    for (const std::string& p : involved) {
      const json& pw = w.is_object() && w.contains(p) ? w[p] : json();
      o += td(fmt(number(pw, "mean")) + " ± " + fmt(number(pw, "std")), true);
    }
    const json& cf = field(c, "cos_fit");
    o += td(fmt_cos(number(cf, "mean")), true) + td(fmt_cos(number(cf, "min")), true) +
         td(fmt(number(c, "z")), true) + td(fmt(number(c, "log10_false_positive")), true) +
         "</tr>\n";
  }
  return o + "</table>\n";
}

// Components in document order, then any only named by tensors.
std::vector<std::string> component_order(const json& doc) {
  std::vector<std::string> order;
  for (const json& c : list(doc, "components")) order.push_back(text(c, "name"));
  for (const json& t : list(doc, "tensors"))
    if (std::find(order.begin(), order.end(), text(t, "component")) == order.end())
      order.push_back(text(t, "component"));
  return order;
}

// One component's tensors with a layer: per layer, (sum, count) of each involved candidate's
// weight and, last, of cos_fit. The others go to `unlayered`.
std::map<int, std::vector<std::pair<double, int>>> per_layer_sums(
    const json& doc, const std::string& comp, const std::vector<std::string>& involved,
    std::vector<const json*>* unlayered) {
  std::map<int, std::vector<std::pair<double, int>>> per_layer;
  const size_t cos_index = involved.size();
  for (const json& t : list(doc, "tensors")) {
    if (text(t, "component") != comp) continue;
    double layer = number(t, "layer");
    if (!(layer >= 0 && layer < 1e9)) {
      unlayered->push_back(&t);
      continue;
    }
    auto& acc = per_layer[static_cast<int>(layer)];
    acc.resize(cos_index + 1, {0.0, 0});
    const json& w = field(t, "weights");
    for (size_t i = 0; i <= cos_index; ++i) {
      double v =
          i < cos_index
              ? (w.is_object() && w.contains(involved[i]) ? number_of(w[involved[i]]) : kNaN)
              : number(t, "cos_fit");
      if (std::isfinite(v)) acc[i].first += v, ++acc[i].second;
    }
  }
  return per_layer;
}

// The per-layer means as two charts: the mixing weights, and cos_fit.
std::string per_layer_charts(const std::string& comp,
                             const std::map<int, std::vector<std::pair<double, int>>>& per_layer,
                             const std::vector<std::string>& involved) {
  const size_t cos_index = involved.size();
  std::vector<Series> alpha(cos_index), fit(1);
  for (size_t i = 0; i < cos_index; ++i)
    alpha[i].label = involved[i], alpha[i].color = kPalette[i % 8];
  fit[0].label = "cos_fit", fit[0].color = "#333";
  for (const auto& [layer, acc] : per_layer)
    for (size_t i = 0; i <= cos_index; ++i) {
      Series& s = i < cos_index ? alpha[i] : fit[0];
      s.x.push_back(layer);
      s.y.push_back(acc[i].second ? acc[i].first / acc[i].second : kNaN);
    }
  return svg_chart(comp + ": mixing weight α per layer", "layer", alpha) +
         svg_chart(comp + ": cos_fit per layer", "layer", fit, 0.0, 1.0);
}

// The tensors without a layer (embeddings, final norm, head), one row each.
std::string unlayered_table(const std::vector<const json*>& unlayered,
                            const std::vector<std::string>& involved) {
  std::string o = "<table><tr><th>Tensor</th>";
  for (const std::string& p : involved) o += "<th>α <code>" + html_escape(p) + "</code></th>";
  o += "<th>cos_fit</th><th>z</th><th>Note</th></tr>\n";
  for (const json* t : unlayered) {
    const json& w = field(*t, "weights");
    o += "<tr>" + td("<code>" + html_escape(text(*t, "name")) + "</code>");
    for (const std::string& p : involved)
      o += td(fmt(w.is_object() && w.contains(p) ? number_of(w[p]) : kNaN), true);
    o += td(fmt_cos(number(*t, "cos_fit")), true) + td(fmt(number(*t, "z")), true) +
         td(html_escape(text(*t, "skipped"))) + "</tr>\n";
  }
  return o + "</table>\n";
}

std::string per_layer_section(const json& doc, const std::vector<std::string>& involved) {
  std::string o = "<h2>Per-layer view</h2>\n";
  for (const std::string& comp : component_order(doc)) {
    std::vector<const json*> unlayered;
    const auto per_layer = per_layer_sums(doc, comp, involved, &unlayered);
    o += "<h3>" + html_escape(comp.empty() ? std::string("(unnamed component)") : comp) + "</h3>\n";
    if (!per_layer.empty()) o += per_layer_charts(comp, per_layer, involved);
    if (!unlayered.empty()) o += unlayered_table(unlayered, involved);
    if (per_layer.empty() && unlayered.empty())
      o += "<p class=\"muted\">No per-tensor results.</p>\n";
  }
  return o;
}

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
  const std::string kind = text(p, "kind");
  std::string what = kind;
  if (p.contains("unit") && p["unit"].is_string()) what += " (" + p["unit"].get<std::string>() + ")";
  std::string found;
  if (p.contains("permutation")) found = short_list(p["permutation"]);
  else if (p.contains("heads")) found = "heads " + short_list(p["heads"]) + "; kv groups " + short_list(p.value("kv_heads", json()));
  else if (p.contains("scales")) found = short_list(p["scales"]);
  else if (p.contains("layer_map")) found = short_list(p["layer_map"]);
  json rest = json::object();
  for (const auto& [key, value] : p.items()) {
    if (key != "layer" && key != "kind" && key != "unit" && key != "permutation" && key != "heads" &&
        key != "kv_heads" && key != "scales" && key != "layer_map") {
      rest[key] = value;
    }
  }
  return "<tr>" + td(p.contains("layer") ? html_escape(dump(p["layer"])) : std::string("all")) + td(html_escape(what)) +
         td("<code>" + html_escape(found) + "</code>") + td(rest.empty() ? std::string() : html_escape(dump(rest))) + "</tr>\n";
}

std::string permutations_section(const json& doc) {
  std::string o = "<h2>Permutations</h2>\n";
  if (list(doc, "permutations").empty())
    return o + "<p>None: the alignment stage found no reordered heads, neurons or experts.</p>\n";
  o += "<p>Undone before fitting. Read \"suspect index j holds candidate index p[j]\"; scales are "
       "the factors found on up_proj rows.</p>\n<table>\n<tr><th>Layer</th><th>What</th><th>Found</th>"
       "<th>Details</th></tr>\n";
  for (const json& p : list(doc, "permutations")) {
    if (p.is_object()) o += permutation_row(p);
  }
  return o + "</table>\n";
}

const char* const kHowToRead =
    "<h2>How to read this</h2>\n<p>For every tensor the assay fits the suspect S as a blend of "
    "the candidates. "
    "The mixing weight <b>α</b> is the per-tensor least-squares coefficient, α = ⟨S−B, P−B⟩ / "
    "|P−B|² for one "
    "parent P over a base B, generalised to several parents with weights summing to 1; a clean "
    "merge shows flat "
    "lines at the recipe's weights. <b>cos_fit</b> = cos(S−B, fit−B) says how much of the "
    "change from the base "
    "the fit explains: near 1 for a clean merge, about 1/√n (n = elements in the tensor) for "
    "unrelated weights. "
    "<b>z</b> compares cos_fit with that null level, measured from the candidates themselves; "
    "large z means the "
    "match cannot be a coincidence, and the false-positive bound turns z into a "
    "probability.</p>\n";

}  // namespace

std::string assay_report_html(const json& doc) {
  std::vector<std::string> candidates, involved;
  for (const json& c : list(doc, "candidates")) {
    candidates.push_back(text(c, "path"));
    if (flag(c, "involved")) involved.push_back(candidates.back());
  }
  if (involved.empty()) involved = candidates;  // still show every candidate's alpha
  return page_head(text(doc, "suspect")) + verdict_section(doc, involved) + recipe_section(doc) +
         candidates_table(doc) + components_table(doc, involved) + per_layer_section(doc, involved) +
         permutations_section(doc) + kHowToRead + "</body>\n</html>\n";
}

}  // namespace alloy
