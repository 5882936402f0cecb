// The per-tensor fit of the assay, from the moments alone (docs/assay.md, "Per-tensor fit"):
//  - Pearson correlation of S with each candidate (relatedness);
//  - the reference b: among the candidates related to S, the medoid (the common ancestor of a
//    family of fine-tunes), ties broken by closeness to S;
//  - the affine least-squares mixing weights, sum 1 (reference-invariant), with standard errors;
//  - cos_fit = cos(S - C_b, fit - C_b) and its null scale calibrated from the candidates: the
//    largest |cos(C_i - C_b, C_j - C_b)| between two other candidates (independent derivations of
//    the same base, rounding to the same grid included), floored at sqrt(p / n);
//  - slerp: the unconstrained coefficients of the two main parents and the t they imply.
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "internal.h"

namespace alloy::detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kRelatedCorrelation = 0.3;
constexpr double kMaxSiblingNull = 0.5;

using Gram = std::array<std::array<double, kMaxVectors>, kMaxVectors>;

double distance2(const Gram& g, int a, int b) { return std::max(0.0, g[a][a] - 2 * g[a][b] + g[b][b]); }

// The fit's Gram: raw (prefix moments, double) or pivot coordinates (resolved moments), with the
// same two questions asked of either: centred(a, c, r) = <X_a - X_r, X_c - X_r> and raw(a, b) =
// <X_a, X_b>, for vector indices 0 (S) and 1..k (candidates).
struct FitGram {
  const Gram* raw_gram = nullptr;
  const ResolvedMoments* y = nullptr;
  double yv(int a, int b) const { return a == y->pivot || b == y->pivot ? 0.0 : y->gram[a][b]; }
  double yp(int a) const { return a == y->pivot ? 0.0 : y->gram[a][y->vectors]; }
  double centred(int a, int c, int r) const {
    if (raw_gram) {
      const Gram& g = *raw_gram;
      return g[a][c] - g[a][r] - g[r][c] + g[r][r];
    }
    return yv(a, c) - yv(a, r) - yv(r, c) + yv(r, r);
  }
  double raw(int a, int b) const {
    if (raw_gram) return (*raw_gram)[a][b];
    return yv(a, b) + yp(a) + yp(b) + y->gram[y->vectors][y->vectors];
  }
};

// Solves the symmetric system after scaling to a unit diagonal, with a tiny ridge.
Eigen::VectorXd solve_scaled(const Eigen::MatrixXd& a, const Eigen::VectorXd& y, Eigen::MatrixXd* inverse) {
  const Eigen::Index p = a.rows();
  Eigen::VectorXd d(p);
  for (Eigen::Index i = 0; i < p; ++i) d(i) = a(i, i) > 0 ? 1.0 / std::sqrt(a(i, i)) : 0.0;
  Eigen::MatrixXd s = d.asDiagonal() * a * d.asDiagonal();
  s += 1e-12 * Eigen::MatrixXd::Identity(p, p);
  const auto ldlt = s.ldlt();
  const Eigen::VectorXd v = d.asDiagonal() * ldlt.solve(d.asDiagonal() * y);
  if (inverse) *inverse = d.asDiagonal() * ldlt.solve(Eigen::MatrixXd::Identity(p, p)) * d.asDiagonal();
  return v;
}

// Every per-candidate output sized to k, at its "not measured" value.
void reset_candidate_outputs(int k, TensorAssay* out) {
  out->weights.assign(size_t(k), 0.0);
  out->weight_se.assign(size_t(k), kNaN);
  out->correlation.assign(size_t(k), 0.0);
  out->equal_candidate.assign(size_t(k), 0.0);
  out->density.assign(size_t(k), kNaN);
  out->magnitude_step.assign(size_t(k), kNaN);
  out->kept_scale.assign(size_t(k), kNaN);
}

// Relatedness: Pearson correlation of S with each candidate.
void fit_correlations(const PrefixMoments& m, int k, std::vector<double>* correlation) {
  const Gram& all = m.gram;
  const double n = double(m.n);
  const double var_s = all[0][0] - m.sum[0] * m.sum[0] / n;
  for (int c = 1; c <= k; ++c) {
    const double var_c = all[c][c] - m.sum[c] * m.sum[c] / n;
    const double cov = all[0][c] - m.sum[0] * m.sum[c] / n;
    (*correlation)[size_t(c - 1)] = var_s > 0 && var_c > 0 ? cov / std::sqrt(var_s * var_c) : 0.0;
  }
}

// The reference (vector index): the medoid of the related candidates (of all when none is), ties
// broken by closeness to S.
int medoid_reference(const Gram& all, const std::vector<double>& correlation, int k) {
  std::vector<int> related;
  for (int c = 1; c <= k; ++c) {
    if (correlation[size_t(c - 1)] > kRelatedCorrelation) related.push_back(c);
  }
  if (related.empty()) {
    for (int c = 1; c <= k; ++c) related.push_back(c);
  }
  int ref = related.front();
  double best = std::numeric_limits<double>::infinity(), best_to_s = best;
  for (int c : related) {
    double spread = 0;
    for (int o : related) spread += distance2(all, c, o);
    const double to_s = distance2(all, 0, c);
    if (spread < best * (1 - 1e-9) || (spread <= best * (1 + 1e-9) && to_s < best_to_s)) {
      best = spread, best_to_s = to_s, ref = c;
    }
  }
  return ref;
}

// Exact copies (equal everywhere) and equality fractions on the resolved elements, from the full
// pass; the relative deviation from the reference, from the prefix.
void fit_equalities(const PrefixMoments& m, const ResolvedMoments& full, int ref, int k, TensorAssay* out) {
  const Gram& all = m.gram;
  for (int c = 1; c <= k && out->copy_of < 0; ++c) {
    if (full.equal_all[c] == full.n) out->copy_of = c - 1;
  }
  out->deviation = all[ref][ref] > 0 ? std::sqrt(distance2(all, 0, ref) / all[ref][ref]) : 0.0;
  const uint64_t n_resolved = full.n_resolved;
  if (n_resolved > 0) {
    const auto& eq = full.equal_resolved;
    out->equal_reference = double(eq[ref]) / double(n_resolved);
    for (int c = 1; c <= k; ++c) {
      if (c != ref) out->equal_candidate[size_t(c - 1)] = double(eq[c]) / double(n_resolved);
    }
  }
}

// The Gram the affine fit uses: the resolved elements when there are enough of them (rounding
// cannot snap a blend onto a parent there), else all the prefix's elements; and their count.
FitGram choose_fit_gram(const PrefixMoments& m, const ResolvedMoments& full, double* n_used) {
  const bool use_resolved = full.n_resolved >= std::max<uint64_t>(256, full.n / 50);
  FitGram g;
  if (use_resolved) {
    g.y = &full;
  } else {
    g.raw_gram = &m.gram;
  }
  *n_used = double(use_resolved ? full.n_resolved : m.n);
  return g;
}

// The affine least-squares mixing weights (sum 1) of S - C_ref on the other candidates' C_c - C_ref
// (`cols`: those that deviate from the reference), with standard errors, cos_fit and the residual.
// Returns false, with cos_fit, null_cos and z set, when there is nothing to fit.
bool fit_affine(const FitGram& g, int ref, const std::vector<int>& cols, double n_used, TensorAssay* out) {
  const Eigen::Index p = Eigen::Index(cols.size());
  const double dev2 = g.centred(0, 0, ref);
  out->weights[size_t(ref - 1)] = 1.0;
  if (p == 0 || dev2 <= 0) {
    out->cos_fit = dev2 <= 0 ? 1.0 : 0.0;
    out->null_cos = 1.0 / std::sqrt(std::max(n_used, 1.0));
    out->z = 0;
    return false;
  }
  Eigen::MatrixXd a(p, p), inverse;
  Eigen::VectorXd y(p);
  for (Eigen::Index i = 0; i < p; ++i) {
    y(i) = g.centred(0, cols[size_t(i)], ref);
    for (Eigen::Index j = 0; j < p; ++j) a(i, j) = g.centred(cols[size_t(i)], cols[size_t(j)], ref);
  }
  const Eigen::VectorXd v = solve_scaled(a, y, &inverse);
  const double explained = std::clamp(v.dot(y), 0.0, dev2);
  const double residual = dev2 - explained;
  const double sigma2 = residual / std::max(1.0, n_used - double(p));
  double rest = 1.0;
  for (Eigen::Index i = 0; i < p; ++i) {
    out->weights[size_t(cols[size_t(i)] - 1)] = v(i);
    out->weight_se[size_t(cols[size_t(i)] - 1)] = std::sqrt(std::max(0.0, sigma2 * inverse(i, i)));
    rest -= v(i);
  }
  out->weights[size_t(ref - 1)] = rest;
  out->weight_se[size_t(ref - 1)] = std::sqrt(std::max(0.0, sigma2 * inverse.sum()));
  out->cos_fit = std::sqrt(explained / dev2);
  out->residual = std::sqrt(residual / dev2);
  return true;
}

// The null scale of cos_fit and z: sibling pairs relative to the reference, floored at the
// isotropic sqrt(p/n); and ancestor_cos, the same over related pairs only.
void fit_null_scale(const FitGram& g, int ref, const std::vector<int>& cols, double n_used, TensorAssay* out) {
  const auto pair_cos = [&](size_t i, size_t j) {
    const double cij = g.centred(cols[i], cols[j], ref);
    return std::fabs(cij) / std::sqrt(g.centred(cols[i], cols[i], ref) * g.centred(cols[j], cols[j], ref));
  };
  double sibling = 0;
  for (size_t i = 0; i < cols.size(); ++i) {
    for (size_t j = i + 1; j < cols.size(); ++j) sibling = std::max(sibling, pair_cos(i, j));
  }
  out->ancestor_cos = std::numeric_limits<double>::quiet_NaN();
  for (size_t i = 0; i < cols.size(); ++i) {
    for (size_t j = i + 1; j < cols.size(); ++j) {
      if (out->correlation[size_t(cols[i] - 1)] <= kRelatedCorrelation ||
          out->correlation[size_t(cols[j] - 1)] <= kRelatedCorrelation) {
        continue;
      }
      const double c = pair_cos(i, j);
      out->ancestor_cos = std::isnan(out->ancestor_cos) ? c : std::max(out->ancestor_cos, c);
    }
  }
  const double p = double(cols.size());
  out->null_cos = std::max(std::sqrt(p / std::max(n_used, 1.0)), std::min(sibling, kMaxSiblingNull));
  out->z = out->cos_fit / out->null_cos;
}

// slerp: the two candidates with the largest weights (the reference first when it is one), their
// unconstrained coefficients, and the t that the coefficient ratio implies.
void fit_slerp(const Gram& all, const FitGram& g, int ref, int k, double n_used, TensorAssay* out) {
  std::vector<int> order;
  for (int c = 1; c <= k; ++c) order.push_back(c);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y2) {
    return std::fabs(out->weights[size_t(x - 1)]) > std::fabs(out->weights[size_t(y2 - 1)]);
  });
  if (k < 2) return;
  int pa = order[0], pb = order[1];
  if (pb == ref) std::swap(pa, pb);
  out->parent_a = pa - 1;
  out->parent_b = pb - 1;
  const double cos_theta = all[pa][pb] / std::sqrt(all[pa][pa] * all[pb][pb]);
  out->slerp_theta = std::acos(std::clamp(cos_theta, -1.0, 1.0));
  Eigen::Matrix2d m2;
  m2 << g.raw(pa, pa), g.raw(pa, pb), g.raw(pa, pb), g.raw(pb, pb);
  const Eigen::Vector2d y2(g.raw(0, pa), g.raw(0, pb));
  Eigen::MatrixXd inv2;
  const Eigen::VectorXd s = solve_scaled(m2, y2, &inv2);
  const double res2 = std::max(0.0, g.raw(0, 0) - s.dot(y2));
  const double sig2 = res2 / std::max(1.0, n_used - 2);
  out->coefficient_sum = s(0) + s(1);
  out->coefficient_sum_se = std::sqrt(std::max(0.0, sig2 * inv2.sum()));
  // t from the coefficient ratio: s_b / s_a = sin(t theta) / sin((1 - t) theta), monotone in t.
  double t = s(0) + s(1) != 0 ? s(1) / (s(0) + s(1)) : 0.5;
  if (std::fabs(cos_theta) <= 0.9995 && s(0) + s(1) != 0) {
    double lo = -0.5, hi = 1.5;
    const double target = s(1) / (s(0) + s(1));
    for (int it = 0; it < 100; ++it) {
      const double mid = 0.5 * (lo + hi);
      const auto c = slerp_coefficients(mid, cos_theta);
      (c[1] / (c[0] + c[1]) < target ? lo : hi) = mid;
    }
    t = 0.5 * (lo + hi);
  }
  out->slerp_t = t;
  const auto c = slerp_coefficients(t, cos_theta);
  out->slerp_excess = c[0] + c[1] - 1;
}

}  // namespace

std::array<double, 2> slerp_coefficients(double t, double cos_theta) {
  if (std::fabs(cos_theta) > 0.9995) return {1 - t, t};
  const double theta = std::acos(std::clamp(cos_theta, -1.0, 1.0));
  const double s = std::sin(theta);
  return {std::sin((1 - t) * theta) / s, std::sin(t * theta) / s};
}

PrefixFit fit_prefix(const PrefixMoments& m, int k) {
  PrefixFit fit;
  fit.correlation.assign(size_t(k), 0.0);
  fit_correlations(m, k, &fit.correlation);
  fit.reference = medoid_reference(m.gram, fit.correlation, k) - 1;
  return fit;
}

void fit_tensor(const PrefixMoments& m, const ResolvedMoments& full, int k, TensorAssay* out) {
  reset_candidate_outputs(k, out);
  PrefixFit prefix = fit_prefix(m, k);
  out->correlation = std::move(prefix.correlation);
  const int ref = prefix.reference + 1;  // vector index
  out->reference = prefix.reference;
  fit_equalities(m, full, ref, k, out);
  double n_used = 0;
  const FitGram g = choose_fit_gram(m, full, &n_used);
  std::vector<int> cols;  // the candidates that deviate from the reference
  for (int c = 1; c <= k; ++c) {
    if (c != ref && g.centred(c, c, ref) > 0) cols.push_back(c);
  }
  if (!fit_affine(g, ref, cols, n_used, out)) return;
  fit_null_scale(g, ref, cols, n_used, out);
  fit_slerp(m.gram, g, ref, k, n_used, out);
}

}  // namespace alloy::detail
