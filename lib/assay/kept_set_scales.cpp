// The kept sets' scales refined before the classification of four others (kept_sets.h). The
// scales that sparse_statistics reads (the ratio histogram's mode, 0.02 wide bins) may be off by
// kScaleSlack |delta|, and the classification's tolerances allow that much; with four others the
// 16 subset sums of an element are then almost never farther apart than their tolerances (none of
// a 0.25 GB dare_ties merge of four was classifiable; three others leave ~40%). Elements that
// name their kept set without that separation give the scales by least squares, and the
// classification then runs with the tolerances of the fitted scales (kFittedScaleTolerance).
#include <cmath>

#include "kept_sets.h"

namespace alloy::detail {
namespace {

// An element whose r = S - C_b lies within exactly one kept set's band (the rounding of S and
// of the deltas, as kModeScaleTolerance reads it, plus kScaleSlack times the sum of the set's own
// |delta_j|: what the mode's scales may miss on that set) was made by that set whatever the true
// scales within the slack, since the true set's band holds r. Its row enters the normal
// equations. Deltas of both signs are left out (sign consensus drops some), as is the empty set
// (it says nothing about the scales).
template <size_t K>
void fit(const ResolvedValues& at, const double* scale, double eps, KeptScaleFit& fit) {
  constexpr unsigned sets = 1u << K;
  double d[K], u[K];
  for (size_t i = 0; i < at.count; ++i) {
    const double b = at.base[i], r = double(at.suspect[i]) - b;
    bool positive = false, negative = false;
    for (size_t j = 0; j < K; ++j) {
      d[j] = double(at.others[j][i]) - b;
      u[j] = scale[j] * d[j];
      positive |= u[j] > 0, negative |= u[j] < 0;
    }
    if (positive && negative) continue;
    unsigned within = 0, made_by = 0;
    for (unsigned set = 0; set < sets; ++set) {
      double lin = 0, slack = 0;
      for (size_t j = 0; j < K; ++j) {
        if (!(set >> j & 1u)) continue;
        lin += u[j];
        slack += kScaleSlack * std::fabs(d[j]);
      }
      const double band = kept_set_tolerance(b, lin, 0.0, eps, kModeScaleTolerance, slack);
      if (std::fabs(r - lin) <= band) ++within, made_by = set;
    }
    if (within != 1 || made_by == 0) continue;
    ++fit.rows;
    for (size_t j = 0; j < K; ++j) {
      if (!(made_by >> j & 1u)) continue;
      for (size_t c = 0; c < K; ++c) {
        if (made_by >> c & 1u) fit.normal(Eigen::Index(j), Eigen::Index(c)) += d[j] * d[c];
      }
      fit.normal(Eigen::Index(j), Eigen::Index(K)) += d[j] * r;
    }
  }
}

}  // namespace

void KeptScaleFit::resize(size_t k) {
  normal = Eigen::MatrixXd::Zero(Eigen::Index(k), Eigen::Index(k + 1));
  rows = 0;
}

void KeptScaleFit::add(const KeptScaleFit& o) {
  normal += o.normal;
  rows += o.rows;
}

void fit_kept_scales(size_t k, const ResolvedValues& at, const double* scale, double eps,
                     KeptScaleFit& part) {
  switch (k) {
    case 1:
      return fit<1>(at, scale, eps, part);
    case 2:
      return fit<2>(at, scale, eps, part);
    case 3:
      return fit<3>(at, scale, eps, part);
    default:
      return fit<4>(at, scale, eps, part);  // kMaxSubsetCandidates (internal.h)
  }
}

std::vector<double> solve_kept_scales(const Eigen::MatrixXd& normal,
                                      const std::vector<double>& fallback) {
  std::vector<double> out = fallback;
  const Eigen::Index p = normal.rows();
  const Eigen::MatrixXd m = normal.leftCols(p);
  if (!(m.trace() > 0)) return out;
  const Eigen::VectorXd a =
      (m + 1e-12 * m.trace() * Eigen::MatrixXd::Identity(p, p)).ldlt().solve(normal.col(p));
  for (Eigen::Index j = 0; j < p; ++j) {
    if (m(j, j) > 0) out[size_t(j)] = a(j);
  }
  return out;
}

}  // namespace alloy::detail
