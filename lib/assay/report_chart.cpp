// lib/assay/report_chart.cpp: the report's line charts as inline SVG. The y range is fixed by the
// caller (never fitted to the data, so noise on a non-merge is drawn small, not stretched to fill
// the chart); the SVG scales to the width of its container.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "alloy/core/html.h"
#include "report_internal.h"

namespace alloy::report {

const char* const kPalette[8] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                 "#ff7f0e", "#17becf", "#8c564b", "#e377c2"};

const char* component_color(const std::string& component) {
  static const std::pair<const char*, const char*> colors[] = {
      {"attention", "#1f77b4"}, {"linear_attention", "#17becf"}, {"mlp", "#2ca02c"},
      {"experts", "#d62728"},   {"shared_experts", "#ff7f0e"},   {"router", "#9467bd"},
      {"norms", "#8c564b"},     {"embeddings", "#e377c2"},       {"lm_head", "#7f7f7f"}};
  for (const auto& [name, color] : colors)
    if (component == name) return color;
  return "#bcbd22";
}

namespace {

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

}  // namespace

std::string svg_chart(const ChartFrame& f, const std::vector<Series>& series) {
  const double left = 46, right = 12, top = 24, bottom = 34;
  const double plot_w = f.width - left - right, plot_h = f.height - top - bottom;
  double x0 = f.x_lo, x1 = f.x_hi;
  if (!(x0 <= x1)) {
    x0 = INFINITY, x1 = -INFINITY;
    for (const auto& s : series)
      for (double x : s.x) x0 = std::min(x0, x), x1 = std::max(x1, x);
  }
  if (!(x0 <= x1)) x0 = 0, x1 = 1;
  if (x1 - x0 < 1) x0 -= 0.5, x1 += 0.5;
  const double y_lo = f.y_lo < f.y_hi ? f.y_lo : 0, y_hi = f.y_lo < f.y_hi ? f.y_hi : 1;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * plot_w; };
  auto py = [&](double y) { return top + (y_hi - std::clamp(y, y_lo, y_hi)) / (y_hi - y_lo) * plot_h; };
  std::string o = "<svg class=\"chart\" viewBox=\"0 0 " + num(f.width) + " " + num(f.height) +
                  "\" role=\"img\" aria-label=\"" + html_escape(f.title) + "\">\n";
  o += "<text x=\"" + num(left) + "\" y=\"15\" class=\"ct\">" + html_escape(f.title) + "</text>\n";
  o += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(plot_w) + "\" height=\"" + num(plot_h) +
       "\" fill=\"#fcfcfc\" stroke=\"#bbb\"/>\n";
  // y grid at quarter steps of the fixed range (0, 0.25, .. 1 for [0, 1]).
  for (int i = 0; i <= 4; ++i) {
    const double v = y_lo + (y_hi - y_lo) * i / 4, y = py(v);
    o += "<line x1=\"" + num(left) + "\" x2=\"" + num(left + plot_w) + "\" y1=\"" + num(y) + "\" y2=\"" + num(y) +
         "\" stroke=\"#e6e6e6\"/><text x=\"" + num(left - 5) + "\" y=\"" + num(y + 4) +
         "\" text-anchor=\"end\">" + html_escape(fmt(v, 3)) + "</text>\n";
  }
  const double step = std::max(1.0, std::ceil((x1 - x0) / 16));
  for (double v = std::ceil(x0); v <= x1 + 1e-9; v += step)
    o += "<text x=\"" + num(px(v)) + "\" y=\"" + num(top + plot_h + 14) + "\" text-anchor=\"middle\">" +
         fmt_count(v) + "</text>\n";
  o += "<text x=\"" + num(left + plot_w / 2) + "\" y=\"" + num(f.height - 4) + "\" text-anchor=\"middle\">" +
       html_escape(f.x_label) + "</text>\n";
  for (const Series& s : series) {
    std::string points;
    auto flush = [&] {
      if (!points.empty())
        o += "<polyline fill=\"none\" stroke=\"" + s.color + "\" stroke-width=\"2\"" +
             (s.dashed ? " stroke-dasharray=\"6 4\"" : "") + " points=\"" + points + "\"/>\n";
      points.clear();
    };
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i])) {
        flush();
        continue;
      }
      points += num(px(s.x[i])) + "," + num(py(s.y[i])) + " ";
    }
    flush();
    if (s.dashed) continue;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
      if (std::isfinite(s.y[i]))
        o += "<circle cx=\"" + num(px(s.x[i])) + "\" cy=\"" + num(py(s.y[i])) + "\" r=\"2.5\" fill=\"" + s.color +
             "\"><title>" + html_escape(s.label) + ", " + html_escape(f.x_label) + " " + fmt_count(s.x[i]) + ": " +
             html_escape(fmt(s.y[i])) + "</title></circle>\n";
  }
  return o + "</svg>\n";
}

std::string svg_bars(const std::string& title, const std::vector<std::string>& labels, const std::vector<double>& values,
                     const std::vector<std::string>& colors) {
  const double width = 960, left = 150, right = 70, top = 24, bar = 18, gap = 8;
  const double plot_w = width - left - right, height = top + (bar + gap) * double(labels.size()) + 22;
  auto px = [&](double v) { return left + std::clamp(v, 0.0, 1.0) * plot_w; };
  std::string o = "<svg class=\"chart\" viewBox=\"0 0 " + num(width) + " " + num(height) +
                  "\" role=\"img\" aria-label=\"" + html_escape(title) + "\">\n";
  o += "<text x=\"" + num(left) + "\" y=\"15\" class=\"ct\">" + html_escape(title) + "</text>\n";
  const double bottom = height - 18;
  for (int i = 0; i <= 4; ++i) {
    const double v = i / 4.0;
    o += "<line x1=\"" + num(px(v)) + "\" x2=\"" + num(px(v)) + "\" y1=\"" + num(top - 2) + "\" y2=\"" + num(bottom) +
         "\" stroke=\"#ddd\"/><text x=\"" + num(px(v)) + "\" y=\"" + num(bottom + 13) + "\" text-anchor=\"middle\">" +
         fmt(v) + "</text>\n";
  }
  for (size_t k = 0; k < labels.size() && k < values.size(); ++k) {
    const double y = top + (bar + gap) * double(k), v = values[k];
    o += "<text x=\"" + num(left - 6) + "\" y=\"" + num(y + 13) + "\" text-anchor=\"end\">" + html_escape(labels[k]) +
         "</text>\n";
    if (std::isfinite(v))
      o += "<rect x=\"" + num(left) + "\" y=\"" + num(y) + "\" width=\"" + num(px(v) - left) + "\" height=\"" + num(bar) +
           "\" fill=\"" + (k < colors.size() ? colors[k] : std::string("#1f77b4")) + "\"/>\n";
    o += "<text x=\"" + num(std::isfinite(v) ? px(v) + 5 : left + 5) + "\" y=\"" + num(y + 13) + "\">" +
         fmt_correlation(v) + "</text>\n";
  }
  return o + "</svg>\n";
}

std::string legend(const std::vector<std::pair<std::string, std::string>>& label_colors) {
  std::string o = "<div class=\"legend\">";
  for (const auto& [label, color] : label_colors)
    o += "<span><i style=\"background:" + color + "\"></i>" + html_escape(label) + "</span>";
  return o + "</div>\n";
}

}  // namespace alloy::report
