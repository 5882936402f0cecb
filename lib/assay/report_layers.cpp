// lib/assay/report_layers.cpp: the per-layer view. One full-width chart of how much of each layer
// the blend explains, then the parents' per-layer weights side by side (one panel per parent, one
// line per part of the model), all on fixed scales; the tensors outside the layers in a table.
#include <algorithm>
#include <cmath>
#include <map>

#include "alloy/core/html.h"
#include "report_internal.h"

namespace alloy::report {
namespace {

// Per component, per layer: the mean of `value(tensor)` over the component's tensors in that layer.
using LayerMeans = std::map<std::string, std::map<int, double>>;

template <typename Value>
LayerMeans layer_means(const Page& page, Value value) {
  std::map<std::string, std::map<int, std::pair<double, int>>> sums;
  for (const json& t : list(page.doc, "tensors")) {
    const double layer = number(t, "layer");
    if (!(layer >= 0 && layer < 1e6)) continue;
    const double v = value(t);
    if (!std::isfinite(v)) continue;
    auto& s = sums[text(t, "component")][static_cast<int>(layer)];
    s.first += v, ++s.second;
  }
  LayerMeans out;
  for (const auto& [comp, layers] : sums)
    for (const auto& [layer, s] : layers) out[comp][layer] = s.first / s.second;
  return out;
}

// Components in the document's order, then any only named by tensors.
std::vector<std::string> component_order(const Page& page, const LayerMeans& means) {
  std::vector<std::string> order;
  for (const json& c : list(page.doc, "components"))
    if (means.count(text(c, "name"))) order.push_back(text(c, "name"));
  for (const auto& [comp, layers] : means)
    if (std::find(order.begin(), order.end(), comp) == order.end()) order.push_back(comp);
  return order;
}

std::vector<Series> component_series(const LayerMeans& means, const std::vector<std::string>& order) {
  std::vector<Series> out;
  for (const std::string& comp : order) {
    Series s;
    s.label = comp.empty() ? "(unnamed)" : comp;
    s.color = component_color(comp);
    for (const auto& [layer, v] : means.at(comp)) s.x.push_back(layer), s.y.push_back(v);
    out.push_back(std::move(s));
  }
  return out;
}

std::string component_legend(const std::vector<std::string>& order) {
  std::vector<std::pair<std::string, std::string>> items;
  for (const std::string& comp : order) items.push_back({comp.empty() ? "(unnamed)" : comp, component_color(comp)});
  return legend(items);
}

double weight_in(const json& t, const std::string& path) {
  const json& w = field(t, "weights");
  return w.is_object() && w.contains(path) ? number_of(w[path]) : kNaN;
}

// One fixed range for all weight panels: [0, 1], widened in steps of 0.5 to what the per-layer
// means reach, never beyond [-1, 2] (points outside are drawn at the edge).
std::pair<double, double> weight_range(const std::vector<LayerMeans>& panels) {
  double lo = 0, hi = 1;
  for (const auto& means : panels)
    for (const auto& [comp, layers] : means)
      for (const auto& [layer, v] : layers) lo = std::min(lo, v), hi = std::max(hi, v);
  return {std::max(-1.0, std::floor(lo * 2) / 2), std::min(2.0, std::ceil(hi * 2) / 2)};
}

std::string weight_panels(const Page& page) {
  std::vector<LayerMeans> panels;
  for (size_t i : page.charted)
    panels.push_back(layer_means(page, [&](const json& t) { return weight_in(t, page.paths[i]); }));
  const auto [lo, hi] = weight_range(panels);
  std::string o = "<div class=\"panels\">\n";
  const json& candidates = list(page.doc, "candidates");
  for (size_t k = 0; k < page.charted.size(); ++k) {
    const size_t i = page.charted[k];
    const auto order = component_order(page, panels[k]);
    std::vector<Series> series = component_series(panels[k], order);
    const double overall = number(candidates[i], "weight");
    ChartFrame frame;
    frame.title = "Weight of " + page.names[i] + " per layer (overall " +
                  fmt_to_precision(overall, number(candidates[i], "weight_std")) + ", dashed)";
    frame.x_label = "layer", frame.width = 540, frame.height = 240, frame.y_lo = lo, frame.y_hi = hi;
    Series level;
    level.label = "overall", level.color = "#555", level.dashed = true;
    for (const auto& s : series)
      for (double x : s.x) level.x.push_back(x);
    if (!level.x.empty()) {
      const auto [mn, mx] = std::minmax_element(level.x.begin(), level.x.end());
      level.x = {*mn, *mx}, level.y = {overall, overall};
      series.insert(series.begin(), level);
    }
    o += "<div>" + svg_chart(frame, series) + "</div>\n";
  }
  return o + "</div>\n";
}

// The tensors without a layer (embeddings, final norm, head), one row each.
std::string unlayered_table(const Page& page) {
  std::string rows;
  for (const json& t : list(page.doc, "tensors")) {
    const double layer = number(t, "layer");
    if (layer >= 0 && layer < 1e6) continue;
    rows += "<tr>" + td(code(text(t, "name"))) + td(html_escape(text(t, "component")));
    for (size_t i : page.charted) rows += td(fmt(weight_in(t, page.paths[i])), true);
    rows += td(fmt_cos(number(t, "cos_fit")), true) + td(fmt_z(number(t, "z")), true) +
            td(html_escape(text(t, "skipped"))) + "</tr>\n";
  }
  if (rows.empty()) return "";
  std::string o = "<h3>Tensors outside the layers</h3>\n<table><tr><th>Tensor</th><th>Part</th>";
  for (size_t i : page.charted) o += "<th>Weight of " + code(page.names[i]) + "</th>";
  return o + "<th>Fit (cos)</th><th>z</th><th>Note</th></tr>\n" + rows + "</table>\n";
}

// Per layer, the suspect's mean correlation with each candidate (tensors' "correlation": {path: r}),
// on the fixed scale [0, 1]: near 1 for a parent, flat at 0 for an unrelated model. Empty when the
// document has no per-tensor correlations.
std::string correlation_chart(const Page& page) {
  std::vector<Series> series;
  std::vector<std::pair<std::string, std::string>> items;
  for (size_t i = 0; i < page.paths.size(); ++i) {
    const LayerMeans means = layer_means(page, [&](const json& t) {
      const json& r = field(t, "correlation");
      return r.is_object() && r.contains(page.paths[i]) ? number_of(r[page.paths[i]]) : kNaN;
    });
    Series s;
    s.label = page.names[i], s.color = kPalette[i % 8];
    std::map<int, std::pair<double, int>> per_layer;  // over components
    for (const auto& [comp, layers] : means)
      for (const auto& [layer, v] : layers) per_layer[layer].first += v, ++per_layer[layer].second;
    for (const auto& [layer, sum] : per_layer) s.x.push_back(layer), s.y.push_back(sum.first / sum.second);
    if (s.x.empty()) continue;
    items.push_back({s.label, s.color});
    series.push_back(std::move(s));
  }
  if (series.empty()) return "";
  ChartFrame frame;
  frame.title = "How alike the suspect is to each candidate, per layer (correlation; 1 = the same, 0 = unrelated)";
  frame.x_label = "layer", frame.height = 220;
  return legend(items) + svg_chart(frame, series);
}

}  // namespace

std::string per_layer_section(const Page& page) {
  std::string o = "<h2>Layer by layer</h2>\n";
  if (page.charted.empty())
    return o + correlation_chart(page) +
           "<p>No blend weights are drawn: no candidate is related to the suspect, so per-layer blend weights "
           "would be noise. (A blend of unrelated models always explains part of another unrelated model, "
           "because each differs from the others by a whole model; the correlation is the measure that "
           "stays at 0.)</p>\n";
  o += correlation_chart(page);
  const LayerMeans fit = layer_means(page, [](const json& t) { return number(t, "cos_fit"); });
  const auto order = component_order(page, fit);
  if (!fit.empty()) {
    o += "<aside class=\"read\"><h4>How to read this</h4><p>Every scale is fixed (0 to 1 for the fit), so flat lines "
         "mean the same recipe in every layer, and a model that is not a merge of these candidates cannot look "
         "like one by stretching its noise. The <b>fit</b> says how much of each layer the blend explains (1: "
         "all). The panels show each parent's <b>weight</b> per layer, side by side, one line per part of the "
         "model; a clean merge draws flat lines at the dashed overall weight, a layer-wise recipe draws "
         "steps or slopes.";
    if (page.sparse)
      o += " For " + page.method_name() + " the weights are the plain fit's, not the recipe's (see the note "
           "under the recipe).";
    o += "</p></aside>\n" + component_legend(order);
    ChartFrame frame;
    frame.title = "How much of each layer the blend explains (fit, cos; 1 = all)";
    frame.x_label = "layer", frame.height = 220;
    o += svg_chart(frame, component_series(fit, order));
    o += weight_panels(page);
  }
  return o + unlayered_table(page);
}

}  // namespace alloy::report
