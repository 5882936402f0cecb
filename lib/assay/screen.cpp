// The candidate screen (more than kMaxFitted candidates, a family screen): picks the few candidates
// the suspect is made of by greedy forward selection (orthogonal matching pursuit) of candidate
// deltas against the suspect's delta, on a fixed-size sample of elements, in passes whose work is
// linear in the number of candidates. The full assay then fits only the candidates kept.
#include <algorithm>
#include <cmath>
#include <cstring>

#include <Eigen/Dense>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "internal.h"

namespace alloy::detail {
namespace {

// One run of elements of one tensor read by every pass: [begin, begin + count) of the suspect's
// tensor and each candidate's namesake.
struct ScreenRun {
  std::vector<const ModelTensor*> inputs;  // [0] suspect, [1..k] candidates
  uint64_t begin = 0, count = 0;
};

// Per-run statistics of the first pass: for each vector v, sum, v . v and v . S.
struct FirstPass {
  std::vector<double> sum, self, with_suspect;
};

// Dot products of every vector of a run with vector `with` (one pass over the run, linear in the
// number of vectors), and when `first` is set also the sums and squared norms. Chunks of 4096
// elements, reduced in order: identical bits for any thread count.
FirstPass run_dots(const ScreenRun& run, size_t with, bool first) {
  const size_t m = run.inputs.size();
  constexpr size_t kGrain = 4096;
  FirstPass init;
  init.with_suspect.assign(m, 0.0);
  if (first) init.sum.assign(m, 0.0), init.self.assign(m, 0.0);
  const auto chunk = [&](size_t b, size_t e) {
    FirstPass part = init;
    static thread_local std::vector<float> w, x;
    const size_t count = e - b;
    w.resize(kGrain), x.resize(kGrain);
    load_range(*run.inputs[with], run.begin + b, count, w.data());
    for (size_t v = 0; v < m; ++v) {
      load_range(*run.inputs[v], run.begin + b, count, x.data());
      double d = 0, s = 0, q = 0;
      for (size_t i = 0; i < count; ++i) {
        const double xi = x[i];
        d += xi * double(w[i]);
        if (first) s += xi, q += xi * xi;
      }
      part.with_suspect[v] = d;
      if (first) part.sum[v] = s, part.self[v] = q;
    }
    return part;
  };
  return parallel_reduce(run.count, kGrain, init, chunk, [&](FirstPass acc, const FirstPass& p) {
    for (size_t v = 0; v < m; ++v) {
      acc.with_suspect[v] += p.with_suspect[v];
      if (first) acc.sum[v] += p.sum[v], acc.self[v] += p.self[v];
    }
    return acc;
  });
}

void release_run(const ScreenRun& run) {
  for (const ModelTensor* t : run.inputs) t->shard->release(*t->info);
}

}  // namespace

CandidateScreen screen_candidates(const Model& suspect, const std::vector<const Model*>& candidates, int keep) {
  const size_t k = candidates.size();
  const size_t m = k + 1;
  CandidateScreen out;
  out.correlation.assign(k, std::nan(""));
  out.score.assign(k, std::nan(""));
  // The tensors every candidate holds with the suspect's shape, as floats.
  std::vector<ScreenRun> runs;
  uint64_t eligible = 0;
  for (const auto& s : suspect.tensors()) {
    if (!can_load_as_f32(s.info->dtype) || s.info->numel() == 0) continue;
    ScreenRun run;
    run.inputs.push_back(&s);
    for (const Model* c : candidates) {
      const ModelTensor* t = c->find(s.name());
      if (!t || t->info->shape != s.info->shape || !can_load_as_f32(t->info->dtype)) break;
      run.inputs.push_back(t);
    }
    if (run.inputs.size() != m) continue;
    run.count = s.info->numel();
    eligible += run.count;
    runs.push_back(std::move(run));
  }
  if (runs.empty()) return out;
  // Each tensor contributes its share of kScreenElements (at least 64 elements, at most all),
  // read as one run from its middle.
  for (ScreenRun& run : runs) {
    const double share = double(kScreenElements) * double(run.count) / double(eligible);
    const uint64_t len = std::min<uint64_t>(run.count, std::max<uint64_t>(64, uint64_t(std::ceil(share))));
    run.begin = (run.count - len) / 2;
    run.count = len;
  }
  // Pass 1: sums, norms and dots with S, per run. A run where S correlates with no candidate
  // (above kScreenTensorCorrelation) is left out of the selection: there the suspect's elements
  // are not where the candidates' are (a permutation, another model's tensor), and its difference
  // would drown the deltas the screen looks for.
  std::vector<FirstPass> first(runs.size());
  std::vector<bool> used(runs.size(), false);
  std::vector<double> sum(m, 0.0), self(m, 0.0), g0(m, 0.0);
  double n = 0;
  for (size_t r = 0; r < runs.size(); ++r) {
    first[r] = run_dots(runs[r], 0, true);
    release_run(runs[r]);  // each run at once: the kernel may map far more than the run's pages
    const FirstPass& f = first[r];
    const double len = double(runs[r].count);
    const double v0 = f.self[0] - f.sum[0] * f.sum[0] / len;
    double best = -1;
    for (size_t v = 1; v < m; ++v) {
      const double vv = f.self[v] - f.sum[v] * f.sum[v] / len;
      if (v0 > 0 && vv > 0) best = std::max(best, (f.with_suspect[v] - f.sum[0] * f.sum[v] / len) / std::sqrt(v0 * vv));
    }
    used[r] = best >= kScreenTensorCorrelation;
    if (!used[r]) continue;
    n += len;
    out.elements += runs[r].count;
    for (size_t v = 0; v < m; ++v) sum[v] += f.sum[v], self[v] += f.self[v], g0[v] += f.with_suspect[v];
  }
  if (out.elements == 0) return out;
  // The reference R: the candidate of highest Pearson correlation with S.
  const double v0 = self[0] - sum[0] * sum[0] / n;
  size_t ref = 1;
  for (size_t v = 1; v < m; ++v) {
    const double vv = self[v] - sum[v] * sum[v] / n;
    out.correlation[v - 1] = v0 > 0 && vv > 0 ? (g0[v] - sum[0] * sum[v] / n) / std::sqrt(v0 * vv) : 0.0;
    if (out.correlation[v - 1] > out.correlation[ref - 1]) ref = v;
  }
  out.reference = int(ref - 1);
  // columns[j][v] = V_v . V_{atom j}: raw dots with R, then with each selected candidate.
  const auto column = [&](size_t with) {
    std::vector<double> col(m, 0.0);
    for (size_t r = 0; r < runs.size(); ++r) {
      if (!used[r]) continue;
      const FirstPass p = run_dots(runs[r], with, false);
      release_run(runs[r]);
      for (size_t v = 0; v < m; ++v) col[v] += p.with_suspect[v];
    }
    return col;
  };
  const std::vector<double> gr = column(ref);
  // Deltas relative to R: y = S - R, x_c = C_c - R. Inner products from the raw dots.
  const double grr = gr[ref];
  const double yy = self[0] - 2 * gr[0] + grr;
  std::vector<double> xx(m, 0.0), xy(m, 0.0);
  for (size_t v = 1; v < m; ++v) {
    xx[v] = self[v] - 2 * gr[v] + grr;
    xy[v] = g0[v] - gr[v] - gr[0] + grr;
  }
  // The atoms: R itself first (so that a candidate unrelated to S cannot enter by its -R part, the
  // suspect's scale or rounding relative to R), then the selected x_c. cols[j][v] = V_v . (raw
  // vector of atom j's candidate).
  std::vector<size_t> atoms{ref};
  std::vector<std::vector<double>> cols{gr};
  // x_c . a_j, and a_i . a_j, from the raw dots.
  const auto xdot = [&](size_t c, size_t j) {
    return j == 0 ? gr[c] - grr : cols[j][c] - gr[c] - gr[atoms[j]] + grr;
  };
  const auto adot = [&](size_t i, size_t j) {
    if (i == 0 && j == 0) return grr;
    if (i == 0 || j == 0) return gr[atoms[i + j]] - grr;
    return xdot(atoms[i], j);
  };
  Eigen::VectorXd w;       // least-squares weights of the atoms
  double residual = yy;    // |y - A w|^2
  const auto refit = [&]() {
    const Eigen::Index a = Eigen::Index(atoms.size());
    Eigen::MatrixXd gram(a, a);
    Eigen::VectorXd rhs(a);
    for (Eigen::Index i = 0; i < a; ++i) {
      rhs[i] = i == 0 ? gr[0] - grr : xy[atoms[size_t(i)]];
      for (Eigen::Index j = 0; j < a; ++j) gram(i, j) = adot(size_t(i), size_t(j));
    }
    w = gram.ldlt().solve(rhs);
    residual = std::max(0.0, yy - rhs.dot(w));
  };
  if (grr > 0) refit();
  while (int(atoms.size()) < keep && yy > 0 && residual > kScreenResidual * yy) {
    size_t best = 0;
    double best_score = 0;
    for (size_t c = 1; c < m; ++c) {
      if (std::find(atoms.begin(), atoms.end(), c) != atoms.end()) continue;
      if (xx[c] <= kScreenResidual * yy) continue;  // the reference again
      double r = xy[c];
      for (size_t j = 0; j < atoms.size(); ++j) r -= w[Eigen::Index(j)] * xdot(c, j);
      const double score = std::fabs(r) / std::sqrt(xx[c] * residual);
      out.score[c - 1] = score;
      if (score > best_score) best_score = score, best = c;
    }
    if (best == 0 || best_score < kScreenCorrelation) break;
    atoms.push_back(best);
    cols.push_back(column(best));
    refit();
  }
  // The ancestor: the verdict judges a merge of siblings from their common base (how much of the
  // suspect's deviation the recipe explains, the fine-tune's base), which the selection never
  // picks, since the base explains nothing the parents do not. So once two candidates are kept, the
  // one nearest the suspect of those left is kept too: the base of a merge of its fine-tunes is
  // nearer than any other fine-tune (|S - B| ~ 0.7 delta against ~1.2 delta). Without it a noisy
  // merge of ft_1 and ft_2 screened from 12 candidates read as a fine-tune of ft_1.
  if (atoms.size() >= 2 && int(atoms.size()) < keep) {
    size_t nearest = 0;
    double best = INFINITY;
    for (size_t c = 1; c < m; ++c) {
      if (std::find(atoms.begin(), atoms.end(), c) != atoms.end()) continue;
      const double d2 = self[0] - 2 * g0[c] + self[c];
      if (d2 < best) best = d2, nearest = c;
    }
    if (nearest != 0) {
      atoms.push_back(nearest);
      out.ancestor = int(nearest - 1);
    }
  }
  atoms.erase(atoms.begin());
  out.kept.push_back(ref - 1);
  for (size_t a : atoms) out.kept.push_back(a - 1);
  std::sort(out.kept.begin(), out.kept.end());
  out.residual = yy > 0 ? residual / yy : 0.0;
  return out;
}

}  // namespace alloy::detail
