// SVG line charts and the HTML report page of alloy-lmc (alloy/lmc/plot.h).
#include "alloy/lmc/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#include "alloy/core/error.h"
#include "alloy/core/html.h"

namespace alloy::lmc {

namespace {

std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}
std::string tick_label(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.4g", std::fabs(v) < 1e-12 ? 0.0 : v);
  return b;
}
// A "nice" tick step (1, 2 or 5 times a power of ten) for about `count` ticks over [lo, hi].
double nice_step(double lo, double hi, int count) {
  const double raw = (hi - lo) / count;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * p) return m * p;
  return 10 * p;
}

}  // namespace

std::string svg_line_chart(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<Series>& series, int width,
                           int height) {
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]);
      x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]);
      y1 = std::max(y1, s.y[i]);
    }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad;
  y1 += pad;
  size_t longest = 0;
  for (const auto& s : series) longest = std::max(longest, s.name.size());
  const double right = std::max(120.0, 44.0 + 6.6 * double(longest)), top = 30, bottom = 46,
               left = 64;
  width = std::max(width, int(right) + 470);
  const double pw = width - left - right, ph = height - top - bottom;
  auto sx = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto sy = [&](double y) { return top + (1 - (y - y0) / (y1 - y0)) * ph; };
  std::string o = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"" +
                  std::to_string(width) + "\" height=\"" + std::to_string(height) +
                  "\" viewBox=\"0 0 " + std::to_string(width) + " " + std::to_string(height) +
                  "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o += "<text class=\"ct\" x=\"" + num(left) +
       "\" y=\"18\" font-weight=\"bold\" font-size=\"13\">" + html_escape(title) + "</text>\n";
  // grid and ticks
  const double ys = nice_step(y0, y1, 5), xs = nice_step(x0, x1, 5);
  for (double y = std::ceil(y0 / ys) * ys; y <= y1 + 1e-12; y += ys) {
    o += "<line x1=\"" + num(left) + "\" x2=\"" + num(left + pw) + "\" y1=\"" + num(sy(y)) +
         "\" y2=\"" + num(sy(y)) + "\" stroke=\"#e5e5e5\"/>\n";
    o += "<text x=\"" + num(left - 6) + "\" y=\"" + num(sy(y) + 4) + "\" text-anchor=\"end\">" +
         tick_label(y) + "</text>\n";
  }
  for (double x = std::ceil(x0 / xs) * xs; x <= x1 + 1e-12; x += xs) {
    o += "<line x1=\"" + num(sx(x)) + "\" x2=\"" + num(sx(x)) + "\" y1=\"" + num(top) + "\" y2=\"" +
         num(top + ph) + "\" stroke=\"#f0f0f0\"/>\n";
    o += "<text x=\"" + num(sx(x)) + "\" y=\"" + num(top + ph + 16) + "\" text-anchor=\"middle\">" +
         tick_label(x) + "</text>\n";
  }
  o += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(pw) + "\" height=\"" +
       num(ph) + "\" fill=\"none\" stroke=\"#888\"/>\n";
  o += "<text x=\"" + num(left + pw / 2) + "\" y=\"" + num(height - 8) +
       "\" text-anchor=\"middle\">" + html_escape(x_label) + "</text>\n";
  o += "<text transform=\"translate(14," + num(top + ph / 2) +
       ") rotate(-90)\" text-anchor=\"middle\">" + html_escape(y_label) + "</text>\n";
  // series and legend
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    std::string points;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      points += num(sx(s.x[i])) + "," + num(sy(s.y[i])) + " ";
    }
    const std::string dash = s.dashed ? " stroke-dasharray=\"6,4\"" : "";
    o += "<polyline fill=\"none\" stroke=\"" + html_escape(s.color) + "\" stroke-width=\"2\"" +
         dash + " points=\"" + points + "\"/>\n";
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      o += "<circle cx=\"" + num(sx(s.x[i])) + "\" cy=\"" + num(sy(s.y[i])) +
           "\" r=\"2.2\" fill=\"" + html_escape(s.color) + "\"/>\n";
    }
    const double ly = top + 10 + 18.0 * double(k), lx = left + pw + 12;
    o += "<line x1=\"" + num(lx) + "\" x2=\"" + num(lx + 22) + "\" y1=\"" + num(ly) + "\" y2=\"" +
         num(ly) + "\" stroke=\"" + html_escape(s.color) + "\" stroke-width=\"2\"" + dash + "/>\n";
    o += "<text x=\"" + num(lx + 28) + "\" y=\"" + num(ly + 4) + "\">" + html_escape(s.name) +
         "</text>\n";
  }
  o += "</svg>\n";
  return o;
}

namespace {
const char* const kStyle =
    R"(body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;word-break:break-all}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.banner{padding:1em 1.2em;border-radius:6px;font-size:1.05em;background:#eef4fb;border-left:6px solid #1f77b4}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}code{word-break:break-all}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}svg.chart{display:block;margin:.4em 0;font-size:11px}
.muted{color:#666})";
}  // namespace

std::string html_report(const std::string& title,
                        const std::vector<std::pair<std::string, std::string>>& summary,
                        const std::vector<std::string>& svgs, const std::string& extra_html) {
  std::string o = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" +
                  html_escape(title) + "</title>\n<style>\n" + kStyle +
                  "\n</style>\n</head>\n<body>\n";
  o += "<h1>" + html_escape(title) + "</h1>\n<div class=\"banner\"><table>\n";
  for (const auto& [label, value] : summary)
    o += "<tr><th>" + html_escape(label) + "</th><td class=\"n\">" + html_escape(value) +
         "</td></tr>\n";
  o += "</table></div>\n";
  if (!svgs.empty()) o += "<h2>Charts</h2>\n";
  for (const auto& svg : svgs) o += svg;
  o += extra_html;
  o += "<p class=\"muted\">Written by alloy-lmc (docs/classroom.md).</p>\n</body>\n</html>\n";
  return o;
}

CsvTable parse_csv(const std::string& text, const std::string& label) {
  CsvTable table;
  std::istringstream in(text);
  std::string line;
  size_t line_no = 0;
  auto split = [](const std::string& l) {
    std::vector<std::string> cells;
    std::string cell;
    std::istringstream ls(l);
    while (std::getline(ls, cell, ',')) cells.push_back(cell);
    if (!l.empty() && l.back() == ',') cells.push_back("");
    return cells;
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const std::vector<std::string> cells = split(line);
    if (table.columns.empty()) {
      table.columns = cells;
      continue;
    }
    if (cells.size() != table.columns.size())
      throw Error(ErrorCode::kInvalidArgument,
                  label + ":" + std::to_string(line_no) + ": " + std::to_string(cells.size()) +
                      " cells, the header has " + std::to_string(table.columns.size()));
    std::vector<double> row;
    for (const std::string& c : cells) {
      char* end = nullptr;
      const double v = std::strtod(c.c_str(), &end);
      if (c.empty() || end != c.c_str() + c.size())
        throw Error(ErrorCode::kInvalidArgument,
                    label + ":" + std::to_string(line_no) + ": '" + c + "' is not a number");
      row.push_back(v);
    }
    table.rows.push_back(row);
  }
  if (table.columns.empty()) throw Error(ErrorCode::kInvalidArgument, label + ": no header line");
  return table;
}

std::vector<double> CsvTable::column(const std::string& name, const std::string& label) const {
  const auto it = std::find(columns.begin(), columns.end(), name);
  if (it == columns.end())
    throw Error(ErrorCode::kInvalidArgument, label + ": no column '" + name + "'");
  const size_t k = size_t(it - columns.begin());
  std::vector<double> out;
  for (const auto& r : rows) out.push_back(r[k]);
  return out;
}

std::vector<Series> csv_series(const std::vector<CsvInput>& inputs, const std::string& x,
                               const std::vector<std::string>& ys) {
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                 "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"};
  std::vector<Series> series;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const CsvInput& in = inputs[i];
    const std::vector<double> xs = in.table.column(x, in.file);
    for (size_t k = 0; k < ys.size(); ++k) {
      Series s;
      s.name = ys.size() == 1 ? in.label : inputs.size() == 1 ? ys[k] : in.label + " " + ys[k];
      s.x = xs;
      s.y = in.table.column(ys[k], in.file);
      s.color = colors[(ys.size() > 1 && inputs.size() == 1 ? k : i) % 8];
      s.dashed = ys.size() > 1 && inputs.size() > 1 && k > 0;
      series.push_back(std::move(s));
    }
  }
  return series;
}

nlohmann::json chart_json(const std::string& title, const std::string& x_label,
                          const std::string& y_label, const std::vector<Series>& series) {
  auto values = [](const std::vector<double>& v) {
    nlohmann::json out = nlohmann::json::array();
    for (double d : v) out.push_back(std::isfinite(d) ? nlohmann::json(d) : nlohmann::json());
    return out;
  };
  nlohmann::json list = nlohmann::json::array();
  for (const Series& s : series)
    list.push_back({{"name", s.name}, {"x", values(s.x)}, {"y", values(s.y)}});
  return {{"title", title}, {"x_label", x_label}, {"y_label", y_label}, {"series", list}};
}

}  // namespace alloy::lmc
