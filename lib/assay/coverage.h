// What the assay compared (lib/assay/coverage.cpp): which candidates can be compared with the
// suspect at all, and how much of the suspect the verdict rests on. docs/assay.md, "Coverage".
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "alloy/assay/assay.h"
#include "alloy/core/model.h"

namespace alloy::detail {

// A candidate that shares the suspect's tensor names and shapes for less than this share of what
// the best-matching candidate shares is set aside (another width shares nothing; a dense model
// beside MoE candidates shares the attention and embeddings only, under half of a MoE; a parent
// with a resized vocabulary shares everything but its embeddings and is kept).
inline constexpr double kComparableShare = 0.75;
// Below this share of the suspect's parameters compared, the verdict is "inconclusive".
inline constexpr double kMinCoverage = 0.5;
// A component whose uncompared elements reach this share of the suspect's parameters is named in
// the verdict ("the experts were not compared").
inline constexpr double kNamedShare = 0.01;

struct ComparableCandidates {
  std::vector<const Model*> models;  // kept, in the order given
  std::vector<std::string> paths;
  nlohmann::json set_aside = nlohmann::json::array();  // [{"path", "shared", "best_shared", "reason"}]
};
// Splits the candidates into those compared and those set aside. A candidate covers a suspect
// tensor when it holds a tensor of the same name (decoder layer and expert numbers ignored, so a
// stacked suspect is covered by its parents) and shape.
ComparableCandidates select_comparable(const Model& suspect, const std::vector<const Model*>& models,
                                       const std::vector<std::string>& paths);

// After the verdict: evidence["coverage"] (the share of the suspect's parameters compared, in all
// and per component), and the verdict qualified by it: "inconclusive" below kMinCoverage (the
// finding on the compared part kept in evidence["finding_on_compared"]), else, where a component
// of at least kNamedShare of the parameters was not compared, confidence "partial" and a summary
// that names the components it covers.
void qualify_coverage(AssayResult* result);

// evidence["set_aside"] and a note per set-aside candidate.
void record_set_aside(const nlohmann::json& set_aside, AssayResult* result);

}  // namespace alloy::detail
