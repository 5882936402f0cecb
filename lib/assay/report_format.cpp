// lib/assay/report_format.cpp: reading the assay document defensively and writing its numbers
// the way a reader needs them (rounded to what they support), for the HTML report.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <regex>

#include "alloy/core/html.h"
#include "report_internal.h"

namespace alloy::report {

const json& field(const json& j, const char* key) {
  static const json null_value;
  if (!j.is_object()) return null_value;
  auto it = j.find(key);
  return it == j.end() ? null_value : *it;
}
std::string text_of(const json& j) { return j.is_string() ? j.get<std::string>() : std::string(); }
std::string text(const json& j, const char* key) { return text_of(field(j, key)); }
double number_of(const json& j) {
  if (j.is_boolean()) return j.get<bool>() ? 1 : 0;
  return j.is_number() ? j.get<double>() : kNaN;
}
double number(const json& j, const char* key) { return number_of(field(j, key)); }
bool flag(const json& j, const char* key) { return field(j, key).is_boolean() && field(j, key).get<bool>(); }
const json& list(const json& j, const char* key) {
  static const json empty = json::array();
  const json& v = field(j, key);
  return v.is_array() ? v : empty;
}
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

namespace {

// "-0", "-0.00" read as 0.
std::string drop_negative_zero(std::string s) {
  if (s.size() > 1 && s[0] == '-' && s.find_first_not_of("0.", 1) == std::string::npos) s.erase(0, 1);
  return s;
}

std::string fixed(double x, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, x);
  return drop_negative_zero(buf);
}

// Decimal places that show `u` to one significant digit (two when it starts with 1); -1 when u
// is not a positive finite number.
int decimals_for(double u) {
  if (!(u > 0) || !std::isfinite(u)) return -1;
  const double e = std::floor(std::log10(u));
  int d = -static_cast<int>(e);
  if (u / std::pow(10.0, e) < 2) ++d;
  return std::clamp(d, 0, 8);
}

}  // namespace

std::string fmt(double x, int digits) {
  if (std::isnan(x)) return "—";
  if (std::isinf(x)) return x > 0 ? "∞" : "−∞";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", digits, x);
  std::string s = buf;
  auto e = s.find('e');
  if (e != std::string::npos) {
    std::string mant = s.substr(0, e), exp = s.substr(e + 1);
    bool neg = exp[0] == '-';
    exp = exp.substr(exp[0] == '-' || exp[0] == '+' ? 1 : 0);
    exp.erase(0, std::min(exp.find_first_not_of('0'), exp.size() - 1));
    s = mant + "e" + (neg ? "-" : "") + exp;
  }
  return drop_negative_zero(s);
}

std::string fmt_to_precision(double value, double uncertainty) {
  if (!std::isfinite(value)) return fmt(value);
  const int d = decimals_for(uncertainty);
  return d < 0 ? fmt(value) : fixed(value, d);
}

std::string fmt_estimate(double value, double uncertainty) {
  const int d = decimals_for(uncertainty);
  if (!std::isfinite(value) || d < 0) return fmt(value);
  return fixed(value, d) + " ± " + fixed(uncertainty, d);
}

std::string fmt_chance(double log10_p) {
  if (std::isnan(log10_p)) return "—";
  if (log10_p <= -300) return "&lt; 1e-300";
  if (log10_p < -2) return "&lt; 1e-" + fmt_count(std::floor(-log10_p));
  return "up to " + fmt(std::pow(10.0, std::min(0.0, log10_p)), 1);
}

std::string fmt_z(double z) {
  if (!std::isfinite(z)) return fmt(z);
  if (std::fabs(z) < 10) return fixed(z, 1);
  if (std::fabs(z) < 1e4) return fixed(z, 0);
  return fmt(z, 2);
}

std::string fmt_cos(double x) {
  if (!std::isfinite(x)) return fmt(x);
  if (!(x > 0.999 && x < 1)) return fixed(x, 3);
  return fixed(x, std::min(9, 3 + static_cast<int>(-std::log10(1 - x))));
}

std::string fmt_correlation(double r) {
  if (r > 0.999 && r < 1) return "&gt; 0.999";
  return std::isfinite(r) ? fixed(r, 3) : fmt(r);
}

std::string fmt_count(double x) {
  if (!std::isfinite(x)) return "—";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

std::string fmt_percent(double fraction) {
  if (!std::isfinite(fraction)) return "—";
  const double p = 100 * fraction;
  if (p >= 99.95 && p < 100) return "99.9%";  // never round a shortfall up to 100%
  if (p > 0 && p < 0.05) return "&lt; 0.1%";
  return fmt(p, p >= 10 ? 3 : 2) + "%";
}

std::string fmt_bytes(double bytes) {
  if (!std::isfinite(bytes)) return "—";
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000 && u < 4) bytes /= 1000, ++u;
  return (u == 0 ? fmt_count(bytes) : fmt(bytes, 3)) + " " + units[u];
}

std::string tidy_numbers(const std::string& prose) {
  static const std::regex long_decimal("-?[0-9]+\\.[0-9]{4,}");
  std::string out;
  auto begin = std::sregex_iterator(prose.begin(), prose.end(), long_decimal);
  size_t last = 0;
  for (auto it = begin; it != std::sregex_iterator(); ++it) {
    out += prose.substr(last, static_cast<size_t>(it->position()) - last);
    out += fmt(std::stod(it->str()), 3);
    last = static_cast<size_t>(it->position() + it->length());
  }
  return out + prose.substr(last);
}

std::vector<std::string> short_names(const std::vector<std::string>& paths) {
  // The path's components, last first, without empty ones; a Hub snapshot
  // (models--org--name/snapshots/REV) reads as its name.
  auto parts_of = [](const std::string& path) {
    std::vector<std::string> parts;
    size_t end = path.size();
    while (end > 0) {
      size_t slash = path.rfind('/', end - 1);
      size_t begin = slash == std::string::npos ? 0 : slash + 1;
      if (end > begin) parts.push_back(path.substr(begin, end - begin));
      if (slash == std::string::npos) break;
      end = slash;
    }
    for (size_t i = 0; i < parts.size(); ++i) {
      if (parts[i].rfind("models--", 0) == 0 && i >= 2 && parts[i - 1] == "snapshots") {
        std::string name = parts[i].substr(parts[i].rfind("--") + 2);
        parts.erase(parts.begin(), parts.begin() + static_cast<long>(i) + 1);
        parts.insert(parts.begin(), name);
        break;
      }
    }
    return parts;
  };
  std::vector<std::vector<std::string>> parts;
  for (const auto& p : paths) parts.push_back(parts_of(p));
  std::vector<size_t> depth(paths.size(), 1);
  auto name = [&](size_t i) {
    if (parts[i].empty()) return paths[i];
    std::string s;
    for (size_t k = std::min(depth[i], parts[i].size()); k-- > 0;) s += (s.empty() ? "" : "/") + parts[i][k];
    return s;
  };
  for (int round = 0; round < 8; ++round) {  // lengthen every name that collides, all at once
    std::vector<size_t> longer;
    for (size_t i = 0; i < paths.size(); ++i)
      for (size_t j = 0; j < paths.size(); ++j)
        if (i != j && paths[i] != paths[j] && name(i) == name(j) && depth[i] < parts[i].size()) {
          longer.push_back(i);
          break;
        }
    if (longer.empty()) break;
    for (size_t i : longer) ++depth[i];
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < paths.size(); ++i) out.push_back(name(i));
  return out;
}

std::string td(const std::string& html, bool numeric) {
  return numeric ? "<td class=\"n\">" + html + "</td>" : "<td>" + html + "</td>";
}

std::string code(const std::string& s) { return "<code>" + html_escape(s) + "</code>"; }

std::string with_explanation(const std::string& content_html, const std::string& explanation_html, bool wide) {
  if (wide)
    return "<aside class=\"read wide\"><h4>How to read this</h4>" + explanation_html + "</aside>\n" +
           content_html;
  return "<div class=\"pair\"><div class=\"numbers\">" + content_html +
         "</div>\n<aside class=\"read\"><h4>How to read this</h4>" + explanation_html + "</aside></div>\n";
}

}  // namespace alloy::report
