// Encoding recovered per-tensor parameters as mergekit settings (scalar, filters, gradients).
//
// mergekit evaluates a gradient [v_0 .. v_{N-1}] at layer position t = l / (L - 1) by linear
// interpolation at s = t (N - 1); with N = L points, layer l gets exactly v_l. Filters match by
// substring, first match wins; tensors outside the layers are evaluated at t = 0, so they get
// groups of their own ahead of the layer groups.
#include <algorithm>
#include <cmath>

#include "internal.h"

namespace alloy::detail {
namespace {

// Ordered so that the first substring match is the intended group.
const char* const kGroups[] = {"embed_tokens", "lm_head", "model.norm.", "self_attn",
                               "mlp",          "input_layernorm", "post_attention_layernorm"};
constexpr int kGroupCount = int(sizeof(kGroups) / sizeof(kGroups[0]));
// Tensors with fewer elements than this decide nothing about the encoding (see encode_profile).
constexpr uint64_t kCheckedNumel = 1024;

int group_of(const std::string& name) {
  for (int g = 0; g < kGroupCount; ++g) {
    if (name.find(kGroups[g]) != std::string::npos) return g;
  }
  return -1;
}

double round_to_digits(double v, int digits) {
  const double scale = std::pow(10.0, digits);
  const double r = std::round(v * scale) / scale;
  return r == 0 ? 0.0 : r;  // no "-0"
}

bool within(const std::vector<std::pair<double, double>>& values, double centre, double tolerance) {
  return std::all_of(values.begin(), values.end(),
                     [&](const auto& vw) { return std::fabs(vw.first - centre) <= tolerance; });
}

}  // namespace

double weighted_median(std::vector<std::pair<double, double>> vw) {
  vw.erase(std::remove_if(vw.begin(), vw.end(), [](const auto& p) { return !std::isfinite(p.first); }), vw.end());
  if (vw.empty()) return std::nan("");
  std::sort(vw.begin(), vw.end());
  double total = 0;
  for (const auto& p : vw) total += p.second;
  double acc = 0;
  for (const auto& p : vw) {
    acc += p.second;
    if (acc >= 0.5 * total) return p.first;
  }
  return vw.back().first;
}

nlohmann::json encode_profile(const std::vector<ParameterSample>& samples, int layers, double tolerance,
                              int digits) {
  std::vector<std::pair<double, double>> all, checked;
  for (const auto& s : samples) {
    all.push_back({s.value, double(s.numel)});
    // Small tensors (norms) are noisy: they neither force nor block a finer encoding.
    if (s.numel >= kCheckedNumel) checked.push_back({s.value, double(s.numel)});
  }
  const bool only_small = checked.empty();
  if (only_small) checked = all;
  const double global = weighted_median(all);
  if (!std::isfinite(global)) return nullptr;
  if (within(checked, global, tolerance)) return round_to_digits(global, digits);

  nlohmann::json filters = nlohmann::json::array();
  for (int g = 0; g < kGroupCount; ++g) {
    std::vector<std::pair<double, double>> in_group;
    std::vector<std::vector<std::pair<double, double>>> per_layer(size_t(std::max(layers, 0)));
    for (const auto& s : samples) {
      // ... nor a filter of their own (a base + fine-tune blend's 64-element norms in bf16 scatter
      // by 0.1 and wrote {filter: input_layernorm, value: [0.6, 0.7]} beside a default of 0.6).
      if (group_of(s.tensor) != g || (!only_small && s.numel < kCheckedNumel)) continue;
      in_group.push_back({s.value, double(s.numel)});
      if (s.layer >= 0 && s.layer < layers) per_layer[size_t(s.layer)].push_back({s.value, double(s.numel)});
    }
    if (in_group.empty()) continue;
    const double centre = weighted_median(in_group);
    std::vector<double> layer_values;
    bool varies = false;
    for (const auto& values : per_layer) {
      const double v = values.empty() ? centre : weighted_median(values);
      layer_values.push_back(round_to_digits(v, digits));
      varies |= std::fabs(v - centre) > tolerance;
    }
    // A filter that writes the default again once rounded says nothing.
    const double rounded_global = round_to_digits(global, digits);
    const bool all_default = std::all_of(layer_values.begin(), layer_values.end(), [&](double v) { return v == rounded_global; });
    nlohmann::json value;
    if (varies && layers > 1 && !all_default) {
      value = layer_values;
    } else if (std::fabs(centre - global) > tolerance && round_to_digits(centre, digits) != rounded_global) {
      value = round_to_digits(centre, digits);
    } else {
      continue;  // the default covers it
    }
    filters.push_back({{"filter", kGroups[g]}, {"value", value}});
  }
  if (filters.empty()) return round_to_digits(global, digits);
  filters.push_back({{"value", round_to_digits(global, digits)}});
  return filters;
}

}  // namespace alloy::detail
