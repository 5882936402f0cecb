// The merge methods alone against mergekit's own outputs (tests/data/golden), without the recipe
// planner: for every output tensor of a case, the sources and parameters come from the case's
// resolved.json (what mergekit's planner passed to its merge method), the inputs are loaded and
// cast to the load dtype, the method runs, and the result, rounded to the output dtype, is
// compared with expected/<case>/model.safetensors: bit for bit (exact) or within 1 ulp (ulp1).
// The random case (stat) is checked as compare.py does: per tensor, the fraction of changed
// elements and the L1 norm of out - base against mergekit's Monte-Carlo statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "alloy/merge/merge.h"
#include "alloy/merge/merge_method.h"
#include "alloy/core/model.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct GoldenCase {
  std::string name, method, policy, expected;
};

fs::path golden_dir() {
  return fs::path(alloy::test::data_dir()) / "golden";
}

std::vector<GoldenCase> golden_cases() {
  const json manifest = json::parse(alloy::test::read_bytes(golden_dir() / "manifest.json"));
  std::vector<GoldenCase> cases;
  for (const auto& c : manifest["cases"])
    cases.push_back({c["name"], c["method"], c["policy"], c["expected"]});
  return cases;
}

// The default source list of a case, written in resolved.json's note: `... models are [...] ...`.
std::vector<std::string> default_models(const json& resolved) {
  const std::string note = resolved["note"];
  const size_t at = note.find("models are [");
  if (at == std::string::npos) return {};
  const size_t open = note.find('[', at), close = note.find(']', open);
  return json::parse(note.substr(open, close - open + 1)).get<std::vector<std::string>>();
}

// resolved.json's method-level keys (mergekit's task fields) -> alloy's parameter names.
std::map<std::string, double> method_params(const json& settings) {
  std::map<std::string, double> params;
  static const std::map<std::string, std::string> names = {{"t", "t"},
                                                           {"normalize", "normalize"},
                                                           {"lambda_", "lambda"},
                                                           {"int8_mask", "int8_mask"},
                                                           {"filter_wise", "filter_wise"},
                                                           {"row_wise", "nuslerp_row_wise"},
                                                           {"flatten", "nuslerp_flatten"},
                                                           {"select_topk", "select_topk"},
                                                           {"max_iter", "max_iter"},
                                                           {"tol", "tol"},
                                                           {"normalize_weights", "normalize_weights"},
                                                           {"eps", "eps"},
                                                           {"epsilon", "epsilon"}};
  for (const auto& [key, value] : settings.items()) {
    if (key == "rescale_norm") {
      params["rescale"] = value.is_null() ? 0.0 : 1.0;  // mergekit: rescale -> rescale_norm "l1"
    } else if (names.count(key) && !value.is_null()) {
      params[names.at(key)] =
          value.is_boolean() ? (value.get<bool>() ? 1.0 : 0.0) : value.get<double>();
    }
  }
  return params;
}

int64_t ordered(uint64_t bits, unsigned width) {
  const uint64_t sign = uint64_t{1} << (width - 1);
  const int64_t magnitude = static_cast<int64_t>(bits & (sign - 1));
  return (bits & sign) ? -magnitude : magnitude;
}

class GoldenRunner {
 public:
  explicit GoldenRunner(const GoldenCase& c)
      : case_(c),
        resolved_(
            json::parse(alloy::test::read_bytes(golden_dir() / c.expected / "resolved.json"))),
        expected_(alloy::Model::open(golden_dir() / c.expected)) {
    load_dtype_ = *alloy::dtype_from_torch_name(resolved_["load_dtype"].get<std::string>());
    defaults_ = default_models(resolved_);
    method_ = alloy::find_merge_method(c.method);
    // Without out_dtype, the method's result dtype (arcee_fusion: float32 from its mask).
    out_dtype_ = resolved_["out_dtype"].is_null()
                     ? (method_ ? method_->result_dtype(load_dtype_) : load_dtype_)
                     : *alloy::dtype_from_torch_name(resolved_["out_dtype"].get<std::string>());
  }

  const alloy::Model& model(const std::string& name) {
    auto& slot = models_[name];
    if (!slot) slot = std::make_unique<alloy::Model>(alloy::Model::open(golden_dir() / name));
    return *slot;
  }

  // Merges one output tensor as mergekit's planner described it; returns the values in out dtype
  // (float32 holding representable values) and the shape.
  std::vector<float> merge(const json& entry, std::vector<uint64_t>* shape) {
    json settings = resolved_["common"];
    for (const auto& [key, value] : entry.items()) settings[key] = value;
    std::vector<std::pair<std::string, std::string>> sources;
    const std::string out_name = entry["out"];
    if (entry.contains("src")) {
      for (const auto& s : entry["src"]) sources.emplace_back(s[0], s[1]);
    } else {
      for (const auto& m : defaults_) sources.emplace_back(m, out_name);
    }
    const std::string base_model =
        settings.contains("base_model") && settings["base_model"].is_string() ? settings["base_model"].get<std::string>()
                                                                              : std::string();
    const json per_model = settings.value("tensor_parameters", json::object());

    alloy::MergeContext ctx;
    ctx.tensor_name = out_name;
    ctx.compute_dtype = load_dtype_;
    ctx.params = method_params(settings);
    ctx.seed = alloy::tensor_seed(0, out_name);
    buffers_.assign(sources.size(), {});
    for (size_t k = 0; k < sources.size(); ++k) {
      const auto& [model_name, tensor_name] = sources[k];
      const alloy::ModelTensor* t = model(model_name).find(tensor_name);
      if (t == nullptr) throw std::runtime_error(model_name + " lacks " + tensor_name);
      if (k == 0) ctx.shape = t->info->shape;
      if (t->info->shape != ctx.shape) throw std::runtime_error("shape mismatch in " + out_name);
      buffers_[k].resize(t->info->numel());
      alloy::load_as_f32(t->info->dtype, t->data(), buffers_[k].size(), buffers_[k].data());
      if (t->info->dtype != load_dtype_)
        alloy::round_to(load_dtype_, buffers_[k].data(), buffers_[k].size());
      alloy::MergeSource source;
      source.values = buffers_[k].data();
      source.model = model_name;
      source.is_base = model_name == base_model;
      if (source.is_base) ctx.base_index = static_cast<int>(k);
      if (per_model.contains(model_name)) {
        for (const auto& [key, value] : per_model[model_name].items()) {
          if (!value.is_null()) source.params[key] = value.get<double>();
        }
      }
      ctx.sources.push_back(std::move(source));
    }
    std::vector<float> out(ctx.numel());
    method_->merge(ctx, out.data());
    if (out_dtype_ != load_dtype_) alloy::round_to(out_dtype_, out.data(), out.size());
    *shape = ctx.shape;
    return out;
  }

  const GoldenCase& case_;
  json resolved_;
  alloy::Model expected_;
  alloy::DType load_dtype_ = alloy::DType::F32, out_dtype_ = alloy::DType::F32;
  std::vector<std::string> defaults_;
  const alloy::MergeMethod* method_ = nullptr;
  std::map<std::string, std::unique_ptr<alloy::Model>> models_;
  std::vector<std::vector<float>> buffers_;
};

class MethodGolden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(MethodGolden, MethodMatchesMergekit) {
  const GoldenCase& c = GetParam();
  GoldenRunner runner(c);
  ASSERT_NE(runner.method_, nullptr) << c.method;
  const auto& entries = runner.resolved_["tensors"];
  ASSERT_EQ(entries.size(), runner.expected_.tensors().size());

  if (c.policy == "stat") {
    const json stat = json::parse(alloy::test::read_bytes(golden_dir() / c.expected / "stat.json"));
    const alloy::Model& base = runner.model(stat["base"].get<std::string>());
    double total = 0, changed = 0, changed_mean = 0, l1 = 0, l1_mean = 0;
    for (const auto& entry : entries) {
      const std::string name = entry["out"];
      std::vector<uint64_t> shape;
      const auto out = runner.merge(entry, &shape);
      const alloy::ModelTensor* b = base.find(name);
      ASSERT_NE(b, nullptr) << name;
      std::vector<float> bv(b->info->numel());
      alloy::load_as_f32(b->info->dtype, b->data(), bv.size(), bv.data());
      ASSERT_EQ(bv.size(), out.size()) << name;
      double diff = 0, l1_tensor = 0;
      for (size_t i = 0; i < out.size(); ++i) {
        diff += out[i] != bv[i];
        l1_tensor += std::fabs(double(out[i]) - bv[i]);
      }
      const json& info = stat["tensors"][name];
      const double n = static_cast<double>(out.size()), fraction = diff / n;
      const double fm = info["changed_mean"], fsd = info["changed_sd"], lm = info["l1_mean"],
                   lsd = info["l1_sd"];
      EXPECT_NEAR(fraction, fm, std::max(0.02, 6 * fsd)) << name << " changed fraction";
      if (lm > 0) {
        EXPECT_NEAR(l1_tensor / lm, 1.0, std::max(0.02, 6 * lsd / lm)) << name << " L1(out - base)";
      }
      total += n;
      changed += diff;
      changed_mean += fm * n;
      l1 += l1_tensor;
      l1_mean += lm;
    }
    EXPECT_NEAR(changed / total, changed_mean / total, 0.005);
    EXPECT_NEAR(l1 / l1_mean, 1.0, 0.01);
    std::cout << "[ golden   ] " << c.name << ": " << entries.size()
              << " tensors, changed fraction " << changed / total << " (mergekit mean "
              << changed_mean / total << "), L1 ratio " << l1 / l1_mean << "\n";
    return;
  }

  const bool exact = c.policy == "exact";
  size_t elements = 0, identical = 0, one_ulp = 0, worse = 0, identical_tensors = 0;
  for (const auto& entry : entries) {
    const std::string name = entry["out"];
    std::vector<uint64_t> shape;
    const auto out = runner.merge(entry, &shape);
    const alloy::ModelTensor* e = runner.expected_.find(name);
    ASSERT_NE(e, nullptr) << name;
    ASSERT_EQ(e->info->dtype, runner.out_dtype_) << name;
    ASSERT_EQ(e->info->shape, shape) << name;
    const unsigned bytes = alloy::dtype_bits(runner.out_dtype_) / 8;
    std::vector<uint8_t> actual(out.size() * bytes);
    alloy::store_from_f32(out.data(), out.size(), runner.out_dtype_, actual.data());
    size_t tensor_worse = 0, tensor_identical = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      uint64_t eb = 0, ab = 0;
      std::memcpy(&eb, e->data() + i * bytes, bytes);
      std::memcpy(&ab, actual.data() + i * bytes, bytes);
      if (eb == ab) {
        ++tensor_identical;
        continue;
      }
      // Distance in ulps (0 for +0 against -0: not identical, but within the ulp1 policy).
      const int64_t d = ordered(eb, bytes * 8) - ordered(ab, bytes * 8);
      if (d > 1 || d < -1) {
        ++tensor_worse;
      } else {
        ++one_ulp;
      }
    }
    elements += out.size();
    identical += tensor_identical;
    worse += tensor_worse;
    identical_tensors += tensor_identical == out.size();
    EXPECT_EQ(tensor_worse, 0u) << name << ": " << tensor_worse << " elements more than 1 ulp away";
    if (exact) {
      EXPECT_EQ(tensor_identical, out.size()) << name << " is not bit-identical";
    }
  }
  std::cout << "[ golden   ] " << c.name << " (" << c.policy << "): " << entries.size()
            << " tensors, " << identical_tensors << " bit-identical; " << elements
            << " elements: " << identical << " identical, " << one_ulp << " within 1 ulp, " << worse
            << " worse\n";
}

INSTANTIATE_TEST_SUITE_P(Method, MethodGolden, ::testing::ValuesIn(golden_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
