// alloy-assay --verify-claim (alloy/assay/assay.h, verify_claim): a published recipe against the
// weights, through the assay's rebuild check (rebuild.cpp) and alloy-merge's own parser and planner.
#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>

#include "alloy/core/error.h"
#include "alloy/core/evidence.h"
#include "alloy/core/hash_cache.h"
#include "alloy/core/sha256.h"
#include "alloy/merge/recipe.h"
#include "internal.h"

namespace alloy {
namespace {

constexpr uint64_t kSampleLimit = uint64_t{1} << 24;  // elements: a few float buffers of 64 MiB each
constexpr double kOneUlpShare = 0.01;  // slerp & co.: at most this share of the elements one ulp away

// Methods whose merged values alloy reproduces only to one ulp (docs/methods.md: slerp, nuslerp and
// model_stock differ from mergekit in the order of their arithmetic), and methods that draw masks.
const std::set<std::string> kOneUlpMethods = {"slerp", "nuslerp", "model_stock"};
const std::set<std::string> kRandomMethods = {"dare_ties", "dare_linear", "della", "della_linear"};

// Why the recipe cannot make the suspect at all (tensor names or shapes differ), or "".
std::string layout_mismatch(const MergePlan& plan, const Model& suspect) {
  std::set<std::string> planned;
  for (const PlannedTensor& t : plan.tensors) {
    planned.insert(t.name);
    const ModelTensor* s = suspect.find(t.name);
    if (s == nullptr) return "the recipe makes tensor '" + t.name + "', which the suspect does not have";
    if (s->info->shape != t.shape) {
      std::string a, b;
      for (uint64_t d : t.shape) a += (a.empty() ? "" : ",") + std::to_string(d);
      for (uint64_t d : s->info->shape) b += (b.empty() ? "" : ",") + std::to_string(d);
      return "the recipe makes tensor '" + t.name + "' of shape [" + a + "], the suspect's is [" + b + "]";
    }
  }
  for (const ModelTensor& t : suspect.tensors()) {
    if (!planned.count(t.name())) return "the suspect has tensor '" + t.name() + "', which the recipe does not make";
  }
  return "";
}

// `count` tensor names evenly spaced over the planned tensors of at most kSampleLimit elements (all
// of them when there are none that small, or when count is 0).
std::vector<std::string> sample(const MergePlan& plan, int count) {
  std::vector<const PlannedTensor*> small;
  for (const PlannedTensor& t : plan.tensors) {
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    if (n <= kSampleLimit) small.push_back(&t);
  }
  if (small.empty()) {
    for (const PlannedTensor& t : plan.tensors) small.push_back(&t);
  }
  std::vector<std::string> names;
  const size_t want = count <= 0 ? small.size() : std::min(small.size(), size_t(count));
  for (size_t i = 0; i < want; ++i) names.push_back(small[i * small.size() / want]->name);
  return names;
}

std::string percent(double fraction) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4g%%", 100 * fraction);
  return text;
}

}  // namespace

ClaimResult verify_claim(const ClaimOptions& options) {
  const std::string started = utc_timestamp();
  ClaimResult claim;
  claim.recipe_path = options.recipe.string();
  const Recipe recipe = load_recipe(options.recipe);
  claim.recipe_sha256 = sha256_hex(recipe.text.data(), recipe.text.size());
  claim.merge_method = recipe.merge_method;
  const Model suspect = Model::open(options.suspect, options.open);
  PlanOptions plan_options;
  plan_options.open = options.open;
  const MergePlan plan = plan_merge(recipe, plan_options);
  std::vector<const Model*> examined{&suspect};
  for (const auto& m : plan.models) examined.push_back(m.get());
  AssayOptions audit_options;
  audit_options.command_line = options.command_line;
  audit_options.hash_files = options.hash_files;
  FileHasher hasher(hash_cache_at(options.hash_cache));
  detail::start_audit_hashes(audit_options, examined, &hasher);

  const bool one_ulp = kOneUlpMethods.count(recipe.merge_method) > 0;
  claim.tolerance = one_ulp ? "one ulp on at most 1% of the elements" : "bit for bit";
  const std::string mismatch = layout_mismatch(plan, suspect);
  if (!mismatch.empty()) {
    claim.verdict = "refuted";
    claim.statement = "the claim does not hold: " + mismatch;
    claim.rebuild = {{"tensors", 0}, {"elements", 0}};
  } else {
    claim.tensors = sample(plan, options.tensors);
    claim.rebuild = detail::rebuild_check_plan(plan, suspect, claim.tensors);
    const double exact = claim.rebuild.value("exact_fraction", 0.0);
    const uint64_t max_ulp = claim.rebuild.value("max_ulp", uint64_t{0});
    const std::string figures = std::to_string(claim.rebuild.value("tensors", 0)) + " tensors (" +
                                std::to_string(claim.rebuild.value("elements", uint64_t{0})) + " elements) rebuilt, " +
                                percent(exact) + " bit-exact, max " + std::to_string(max_ulp) +
                                " ulp, relative error " + std::to_string(claim.rebuild.value("relative_error", 0.0));
    if (claim.rebuild.value("elements", uint64_t{0}) == 0) {
      claim.verdict = "unverifiable";
      claim.statement = "no tensor of the recipe could be rebuilt";
    } else if (exact == 1.0) {
      claim.verdict = "holds";
      claim.tolerance = "bit for bit";
      claim.statement = "the claim holds bit for bit: " + figures;
    } else if (one_ulp && max_ulp <= 1 && 1.0 - exact <= kOneUlpShare) {
      claim.verdict = "holds";
      claim.statement = "the claim holds within one ulp (" + recipe.merge_method +
                        "'s arithmetic order differs between tools): " + figures;
    } else if (kRandomMethods.count(recipe.merge_method)) {
      claim.verdict = "unverifiable";
      claim.statement = recipe.merge_method + " draws random masks, which cannot be rebuilt without the seed the "
                        "merge used: " + figures;
    } else {
      claim.verdict = "refuted";
      claim.statement = "the claim does not hold: the recipe does not rebuild the weights " + claim.tolerance + ": " +
                        figures;
    }
  }
  claim.audit = detail::collect_audit(audit_options, started, examined, &hasher);
  return claim;
}

nlohmann::json claim_to_json(const ClaimResult& claim) {
  return {{"claim", {{"recipe", claim.recipe_path}, {"recipe_sha256", claim.recipe_sha256},
                     {"merge_method", claim.merge_method}}},
          {"verdict", claim.verdict},
          {"statement", claim.statement},
          {"tolerance", claim.tolerance},
          {"tensors", claim.tensors},
          {"rebuild", claim.rebuild},
          {"audit", audit_to_json(claim.audit)}};
}

std::string claim_summary(const ClaimResult& claim) {
  std::ostringstream out;
  out << "claim: " << claim.recipe_path << " (" << claim.merge_method << ", sha256 " << claim.recipe_sha256 << ")\n";
  out << "verdict: " << claim.verdict << "\n" << claim.statement << "\n";
  size_t files = 0;
  for (const auto& m : claim.audit.models) files += m.files.size();
  out << "audit: alloy " << claim.audit.alloy_version << ", " << claim.audit.time << ", " << files
      << " files examined (see --json: audit)\n";
  return out.str();
}

}  // namespace alloy
