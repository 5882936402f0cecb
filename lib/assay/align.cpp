// The alignment stage: undo the permutations that leave a network's function unchanged, so that
// the fit compares like with like. Against a reference candidate (the one whose embeddings
// correlate best with the suspect's), per decoder layer, and only where a tensor no longer
// correlates with its namesake (a cheap prefix test, so aligned models pay almost nothing):
//  - routed experts: signatures invariant to the experts' own neuron order (column sums of
//    gate_proj and up_proj, row sums of down_proj, and the router row), matched by linear
//    assignment on squared distances;
//  - MLP neurons (dense MLP, each routed expert after expert matching, the shared expert): each
//    neuron's [gate row, up row, down column], each part scaled to unit norm (so per-neuron
//    rescaling does not hide it), matched by linear assignment on 1 - cosine;
//  - attention heads: key-value groups by their [k block, v block], then query heads within the
//    matched group by [q block, o column block].
// Permutations are reported as "suspect index j holds candidate index p[j]", the convention of
// alloy-synth perturb's ground truth. docs/assay.md, "Alignment", has the details.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <Eigen/Dense>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "alloy/core/linear_assignment.h"
#include "internal.h"

namespace alloy::detail {
namespace {

constexpr uint64_t kPrefix = 1 << 16;
constexpr double kAlignedCorrelation = 0.3;

std::vector<float> load_all(const ModelTensor& t) {
  std::vector<float> v(t.info->numel());
  load_as_f32(t.info->dtype, t.data(), v.size(), v.data());
  return v;
}

// Pearson correlation of the first elements of two tensors of equal size: near 1 for a tensor and
// a blend of its namesakes, near 0 once rows are shuffled.
double prefix_correlation(const ModelTensor& a, const ModelTensor& b) {
  const uint64_t n = std::min<uint64_t>(a.info->numel(), kPrefix);
  if (n == 0 || a.info->numel() != b.info->numel()) return 0;
  std::vector<float> x(n), y(n);
  load_range(a, 0, n, x.data());
  load_range(b, 0, n, y.data());
  double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
  for (uint64_t i = 0; i < n; ++i) {
    sx += x[i], sy += y[i], sxx += double(x[i]) * x[i], syy += double(y[i]) * y[i], sxy += double(x[i]) * y[i];
  }
  const double vx = sxx - sx * sx / double(n), vy = syy - sy * sy / double(n);
  return vx > 0 && vy > 0 ? (sxy - sx * sy / double(n)) / std::sqrt(vx * vy) : 0.0;
}

// Whether some row block of `a` no longer correlates with the same block of `b` (up to 64 blocks,
// evenly spaced, are checked): a permutation moves whole blocks, a blend keeps each in place.
bool blocks_shuffled(const ModelTensor& a, const ModelTensor& b, uint64_t block_rows) {
  if (a.info->shape != b.info->shape || a.info->shape.empty()) return false;
  const uint64_t rows = a.info->shape[0], cols = a.info->numel() / std::max<uint64_t>(rows, 1);
  const uint64_t blocks = rows / std::max<uint64_t>(block_rows, 1);
  if (blocks < 2) return false;
  const uint64_t step = std::max<uint64_t>(1, blocks / 64);
  const uint64_t stride = block_rows * cols;
  const uint64_t len = std::min<uint64_t>(stride, 4096);  // the start of each block is enough
  std::vector<float> x(len), y(len);
  for (uint64_t blk = 0; blk < blocks; blk += step) {
    load_range(a, blk * stride, len, x.data());
    load_range(b, blk * stride, len, y.data());
    double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
    for (uint64_t i = 0; i < len; ++i) {
      sx += x[i], sy += y[i], sxx += double(x[i]) * x[i], syy += double(y[i]) * y[i], sxy += double(x[i]) * y[i];
    }
    const double n = double(len), vx = sxx - sx * sx / n, vy = syy - sy * sy / n;
    const double corr = vx > 0 && vy > 0 ? (sxy - sx * sy / n) / std::sqrt(vx * vy) : 0.0;
    if (corr < kAlignedCorrelation) return true;
  }
  return false;
}

bool is_identity(const std::vector<uint32_t>& p) {
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != i) return false;
  }
  return true;
}

std::vector<uint32_t> inverse(const std::vector<uint32_t>& p) {
  std::vector<uint32_t> inv(p.size());
  for (size_t i = 0; i < p.size(); ++i) inv[p[i]] = uint32_t(i);
  return inv;
}

// Rows of a row-major [rows, cols] matrix as unit vectors appended to `out` (per item, at offset).
void append_unit(const float* v, size_t len, size_t stride, double* out) {
  double n2 = 0;
  for (size_t i = 0; i < len; ++i) n2 += double(v[i * stride]) * v[i * stride];
  const double inv = n2 > 0 ? 1.0 / std::sqrt(n2) : 0.0;
  for (size_t i = 0; i < len; ++i) out[i] = double(v[i * stride]) * inv;
}

// Cost[i][j] = 1 - <a_i, b_j> / (parts) over item descriptors of `dim` doubles each.
std::vector<double> cosine_cost(const std::vector<double>& a, const std::vector<double>& b, size_t n, size_t dim,
                                double parts) {
  std::vector<double> cost(n * n);
  parallel_for(n, 1, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      for (size_t j = 0; j < n; ++j) {
        double d = 0;
        for (size_t t = 0; t < dim; ++t) d += a[i * dim + t] * b[j * dim + t];
        cost[i * n + j] = 1 - d / parts;
      }
    }
  });
  return cost;
}

struct Context {
  const Model& s;
  const Model& r;
  Alignment& out;
  const std::vector<const Model*>& candidates;
  const ModelTensor* st(const std::string& name) const { return s.find(name); }
  const ModelTensor* rt(const std::string& name) const { return r.find(name); }
  bool shuffled(const std::string& source, const std::string& name, uint64_t block_rows = 0) const {
    const ModelTensor* a = st(source);
    const ModelTensor* b = rt(name);
    if (!a || !b) return false;
    return block_rows ? blocks_shuffled(*a, *b, block_rows) : prefix_correlation(*a, *b) < kAlignedCorrelation;
  }
};

// Where a layer's per-expert tensors are, relative to "model.layers.<i>.": Qwen-MoE's names unless
// the suspect's architecture (alloy/core/architecture.h) names its experts by a template, as
// Mixtral's block_sparse_moe.experts.{e}.w1/w3/w2 with the router block_sparse_moe.gate.
struct ExpertLayout {
  std::string experts = "mlp.experts.";  // + "<e>." + a part's name
  std::string gate = "gate_proj.weight", up = "up_proj.weight", down = "down_proj.weight";
  std::string router = "mlp.gate.weight";
};

ExpertLayout expert_layout(const Model& suspect) {
  ExpertLayout layout;
  const ModelArchitecture arch = detect_architecture(suspect);
  if (!arch.definition() || arch.layer_prefix() != "model.layers.") return layout;
  std::string prefix;
  ExpertLayout found;
  int parts = 0;
  for (const TensorDef& t : arch.definition()->layer) {
    const size_t hole = t.name.find("{e}.");
    if (t.role == TensorRole::kRouter) found.router = t.name;
    if (hole == std::string::npos) continue;
    std::string* part = t.role == TensorRole::kExpertGate ? &found.gate
                        : t.role == TensorRole::kExpertUp ? &found.up
                        : t.role == TensorRole::kExpertDown ? &found.down
                                                            : nullptr;
    if (!part) continue;
    if (!prefix.empty() && prefix != t.name.substr(0, hole)) return layout;  // two expert families
    prefix = t.name.substr(0, hole);
    *part = t.name.substr(hole + 4);
    ++parts;
  }
  if (parts != 3) return layout;
  found.experts = prefix;
  return found;
}

// Routed experts of one layer: returns the suspect expert holding each candidate expert (qinv).
std::vector<uint32_t> align_experts(Context& c, int layer, int ref_layer, const ExpertLayout& x) {
  const std::string p = "model.layers." + std::to_string(layer) + "." + x.experts;
  const std::string pr = "model.layers." + std::to_string(ref_layer) + "." + x.experts;
  size_t experts = 0;
  while (c.st(p + std::to_string(experts) + "." + x.gate) && c.rt(pr + std::to_string(experts) + "." + x.gate)) {
    ++experts;
  }
  std::vector<uint32_t> identity(experts);
  std::iota(identity.begin(), identity.end(), 0u);
  if (experts < 2) return identity;
  bool needed = false;
  for (size_t e = 0; e < experts && !needed; ++e) {
    needed = c.shuffled(p + std::to_string(e) + "." + x.gate, pr + std::to_string(e) + "." + x.gate);
  }
  if (!needed) return identity;
  // Signature: column sums of gate and up, row sums of down (all of hidden size), router row.
  const auto signature = [&](const Model& m, const std::string& prefix, size_t e, std::vector<double>* sig) {
    const std::string q = prefix + std::to_string(e) + ".";
    const auto gate = load_all(*m.find(q + x.gate));
    const auto up = load_all(*m.find(q + x.up));
    const auto down = load_all(*m.find(q + x.down));
    const auto& gs = m.find(q + x.gate)->info->shape;
    const size_t inter = gs[0], hidden = gs.size() > 1 ? gs[1] : 1;
    std::vector<double> part(3 * hidden, 0.0);
    for (size_t i = 0; i < inter; ++i) {
      for (size_t h = 0; h < hidden; ++h) part[h] += gate[i * hidden + h], part[hidden + h] += up[i * hidden + h];
    }
    for (size_t h = 0; h < hidden && down.size() >= hidden * inter; ++h) {
      for (size_t i = 0; i < inter; ++i) part[2 * hidden + h] += down[h * inter + i];
    }
    std::vector<double> unit(part.size());
    for (int k = 0; k < 3; ++k) {
      std::vector<float> f(part.begin() + k * long(hidden), part.begin() + (k + 1) * long(hidden));
      append_unit(f.data(), hidden, 1, unit.data() + k * hidden);
    }
    sig->insert(sig->end(), unit.begin(), unit.end());
    return hidden;
  };
  std::vector<double> a, b;
  size_t dim = 0;
  for (size_t e = 0; e < experts; ++e) dim = signature(c.s, p, e, &a), signature(c.r, pr, e, &b);
  dim *= 3;
  double parts = 3;
  const std::string router = "model.layers." + std::to_string(layer) + "." + x.router;
  const std::string ref_router = "model.layers." + std::to_string(ref_layer) + "." + x.router;
  const ModelTensor* sr = c.st(router);
  const ModelTensor* rr = c.rt(ref_router);
  if (sr && rr && sr->info->shape == rr->info->shape && sr->info->shape[0] == experts) {
    // Append the router rows, as a fourth unit part.
    const auto sv = load_all(*sr), rv = load_all(*rr);
    const size_t h = sr->info->shape[1];
    std::vector<double> a2, b2;
    for (size_t e = 0; e < experts; ++e) {
      a2.insert(a2.end(), a.begin() + long(e * dim), a.begin() + long((e + 1) * dim));
      b2.insert(b2.end(), b.begin() + long(e * dim), b.begin() + long((e + 1) * dim));
      a2.resize(a2.size() + h), b2.resize(b2.size() + h);
      append_unit(sv.data() + e * h, h, 1, a2.data() + a2.size() - h);
      append_unit(rv.data() + e * h, h, 1, b2.data() + b2.size() - h);
    }
    a = std::move(a2), b = std::move(b2), dim += h, parts = 4;
  }
  const std::vector<uint32_t> q = linear_assignment(cosine_cost(a, b, experts, dim, parts), experts);
  if (is_identity(q)) return identity;
  c.out.permutations.push_back({{"layer", layer}, {"kind", "experts"}, {"permutation", q}});
  const std::vector<uint32_t> qinv = inverse(q);
  if (sr && rr) c.out.tensors[router] = {router, qinv, 1, {}, 1, ref_router};
  return qinv;
}

// Per-neuron rescaling (up_proj row i times c_i, down_proj column i divided by c_i, which SiLU
// gating leaves the function unchanged by): gate_proj is untouched, so the unit's mixing weights
// are fitted on it (affine least squares against every candidate's gate_proj); the fitted blend
// F of the candidates' up and down then gives c_i = <S_up_i, F_up_i> / |F_up_i|^2 and
// 1/c_i = <S_down_i, F_down_i> / |F_down_i|^2, combined as a geometric mean. Only when the row
// norms of up_proj, relative to the reference's, spread by more than 2% on a sample of rows (a
// blend moves them far less). Returns whether scales were set.
bool estimate_neuron_scales(Context& c, const std::string& slot, const AlignedTensor& gate, AlignedTensor* up,
                            AlignedTensor* down, size_t inter, size_t hidden) {
  // The cheap test first, on up to 64 rows read straight from the mappings.
  {
    const ModelTensor& su_t = *c.s.find(up->source);
    const ModelTensor& ru_t = *c.r.find(up->candidate);
    std::vector<float> x(hidden), y(hidden);
    std::vector<double> log_ratio;
    for (size_t i = 0; i < inter; i += std::max<size_t>(1, inter / 64)) {
      load_range(su_t, size_t(up->row_blocks.empty() ? i : up->row_blocks[i]) * hidden, hidden, x.data());
      load_range(ru_t, i * hidden, hidden, y.data());
      double a = 0, b = 0;
      for (size_t h = 0; h < hidden; ++h) a += double(x[h]) * x[h], b += double(y[h]) * y[h];
      log_ratio.push_back(a > 0 && b > 0 ? 0.5 * std::log(a / b) : 0.0);
    }
    double mean = 0, var = 0;
    for (double v : log_ratio) mean += v / double(log_ratio.size());
    for (double v : log_ratio) var += (v - mean) * (v - mean) / double(log_ratio.size());
    if (std::sqrt(var) < 0.02) return false;
  }
  Alignment scratch;
  scratch.tensors[slot + "g"] = gate;
  scratch.tensors[slot + "u"] = *up;
  scratch.tensors[slot + "d"] = *down;
  std::vector<float> sg, su, sd;
  load_aligned(c.s, scratch, slot + "g", &sg);
  load_aligned(c.s, scratch, slot + "u", &su);
  load_aligned(c.s, scratch, slot + "d", &sd);
  // Mixing weights from gate_proj: min |S - sum w_k C_k|^2, sum w = 1, relative to the reference.
  std::vector<std::vector<float>> cg, cu, cd;
  for (const Model* m : c.candidates) {
    const ModelTensor* tg = m->find(gate.candidate);
    const ModelTensor* tu = m->find(up->candidate);
    const ModelTensor* td = m->find(down->candidate);
    if (!tg || !tu || !td || tg->info->numel() != sg.size()) return false;
    cg.push_back(load_all(*tg)), cu.push_back(load_all(*tu)), cd.push_back(load_all(*td));
  }
  const size_t k = cg.size();
  const size_t ref = size_t(std::find(c.candidates.begin(), c.candidates.end(), &c.r) - c.candidates.begin());
  Eigen::MatrixXd a = Eigen::MatrixXd::Zero(Eigen::Index(k), Eigen::Index(k));
  Eigen::VectorXd y = Eigen::VectorXd::Zero(Eigen::Index(k));
  for (size_t e = 0; e < sg.size(); ++e) {
    const double t = double(sg[e]) - cg[ref][e];
    for (size_t i = 0; i < k; ++i) {
      const double di = double(cg[i][e]) - cg[ref][e];
      y(Eigen::Index(i)) += di * t;
      for (size_t j = 0; j < k; ++j) a(Eigen::Index(i), Eigen::Index(j)) += di * (double(cg[j][e]) - cg[ref][e]);
    }
  }
  a(Eigen::Index(ref), Eigen::Index(ref)) = 1;  // the reference's own column is zero
  a += 1e-12 * a.trace() * Eigen::MatrixXd::Identity(Eigen::Index(k), Eigen::Index(k));
  Eigen::VectorXd w = a.ldlt().solve(y);
  w(Eigen::Index(ref)) = 1 - (w.sum() - w(Eigen::Index(ref)));
  const auto blend = [&](const std::vector<std::vector<float>>& ts, size_t e) {
    double v = 0;
    for (size_t i = 0; i < k; ++i) v += w(Eigen::Index(i)) * ts[i][e];
    return v;
  };
  up->row_scale.assign(inter, 1.0f);
  down->col_scale.assign(inter, 1.0f);
  for (size_t i = 0; i < inter; ++i) {
    double su_f = 0, ff = 0, sd_f = 0, gg = 0;
    for (size_t h = 0; h < hidden; ++h) {
      const double f = blend(cu, i * hidden + h);
      su_f += su[i * hidden + h] * f, ff += f * f;
      const double fd = blend(cd, h * inter + i);
      sd_f += sd[h * inter + i] * fd, gg += fd * fd;
    }
    const double c_up = ff > 0 ? su_f / ff : 1.0, inv_c_down = gg > 0 ? sd_f / gg : 1.0;
    const double scale = c_up > 0 && inv_c_down > 0 ? std::sqrt(c_up / inv_c_down) : 1.0;
    up->row_scale[i] = float(scale);
    down->col_scale[i] = float(scale);
  }
  return true;
}

// The neurons of one MLP unit: the suspect's slots `slot` hold the data of its tensors `source`,
// to be compared with the reference's `name`.
void align_neurons(Context& c, int layer, const std::string& unit, const std::string& slot, const std::string& source,
                   const std::string& name, const ExpertLayout& x = ExpertLayout()) {
  const std::string &g = x.gate, &u = x.up, &d = x.down;
  const ModelTensor* sg = c.st(source + g);
  const ModelTensor* rg = c.rt(name + g);
  if (!sg || !rg || !c.st(source + u) || !c.st(source + d) || !c.rt(name + u) || !c.rt(name + d)) return;
  if (sg->info->shape != rg->info->shape || sg->info->shape.size() != 2) return;
  const auto keep_names = [&] {
    if (source == slot && slot == name) return;
    for (const auto& t : {g, u, d}) c.out.tensors[slot + t] = {source + t, {}, 1, {}, 1, name + t};
  };
  const size_t inter = sg->info->shape[0], hidden = sg->info->shape[1];
  const auto descriptors = [&](const Model& m, const std::string& prefix) {
    const auto gate = load_all(*m.find(prefix + g)), up = load_all(*m.find(prefix + u)), down = load_all(*m.find(prefix + d));
    std::vector<double> out(inter * 3 * hidden);
    for (size_t i = 0; i < inter; ++i) {
      double* o = out.data() + i * 3 * hidden;
      append_unit(gate.data() + i * hidden, hidden, 1, o);
      append_unit(up.data() + i * hidden, hidden, 1, o + hidden);
      append_unit(down.data() + i, hidden, inter, o + 2 * hidden);  // column i of [hidden, inter]
    }
    return out;
  };
  std::vector<uint32_t> q(inter);
  std::iota(q.begin(), q.end(), 0u);
  if (c.shuffled(source + g, name + g, 1)) {
    q = linear_assignment(cosine_cost(descriptors(c.s, source), descriptors(c.r, name), inter, 3 * hidden, 3), inter);
  }
  const std::vector<uint32_t> qinv = inverse(q);
  AlignedTensor gate{source + g, qinv, 1, {}, 1, name + g};
  AlignedTensor up{source + u, qinv, 1, {}, 1, name + u};
  AlignedTensor down{source + d, {}, 1, qinv, 1, name + d};
  const bool permuted = !is_identity(q);
  if (permuted) c.out.permutations.push_back({{"layer", layer}, {"kind", "neurons"}, {"unit", unit}, {"permutation", q}});
  const bool scaled = estimate_neuron_scales(c, slot, gate, &up, &down, inter, hidden);
  if (scaled) {
    c.out.permutations.push_back({{"layer", layer}, {"kind", "neuron_scales"}, {"unit", unit}, {"scales", up.row_scale}});
  }
  if (!permuted && !scaled) return keep_names();
  c.out.tensors[slot + g] = gate;
  c.out.tensors[slot + u] = up;
  c.out.tensors[slot + d] = down;
}

// Attention heads of one layer.
void align_heads(Context& c, int layer, int ref_layer, int heads, int kv_heads) {
  const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
  const std::string pr = "model.layers." + std::to_string(ref_layer) + ".self_attn.";
  const ModelTensor *sq = c.st(p + "q_proj.weight"), *sk = c.st(p + "k_proj.weight"), *sv = c.st(p + "v_proj.weight"),
                    *so = c.st(p + "o_proj.weight");
  if (!sq || !sk || !sv || !so || !c.rt(pr + "q_proj.weight") || !c.rt(pr + "k_proj.weight") ||
      !c.rt(pr + "v_proj.weight") || !c.rt(pr + "o_proj.weight")) {
    return;
  }
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0) return;
  const size_t hidden = sq->info->shape.size() == 2 ? sq->info->shape[1] : 0;
  const size_t head_dim = sq->info->shape[0] / size_t(heads);
  if (hidden == 0 || head_dim == 0 || sk->info->shape[0] != head_dim * size_t(kv_heads)) return;
  if (!c.shuffled(p + "q_proj.weight", pr + "q_proj.weight", head_dim) &&
      !c.shuffled(p + "k_proj.weight", pr + "k_proj.weight", head_dim)) {
    return;
  }
  const size_t group = size_t(heads / kv_heads);
  const size_t block = head_dim * hidden;
  // Key-value groups by [k block, v block].
  const auto kv_desc = [&](const Model& m, const std::string& at) {
    const auto k = load_all(*m.find(at + "k_proj.weight")), v = load_all(*m.find(at + "v_proj.weight"));
    std::vector<double> out(size_t(kv_heads) * 2 * block);
    for (size_t h = 0; h < size_t(kv_heads); ++h) {
      append_unit(k.data() + h * block, block, 1, out.data() + h * 2 * block);
      append_unit(v.data() + h * block, block, 1, out.data() + h * 2 * block + block);
    }
    return out;
  };
  const std::vector<uint32_t> kv =
      linear_assignment(cosine_cost(kv_desc(c.s, p), kv_desc(c.r, pr), size_t(kv_heads), 2 * block, 2), size_t(kv_heads));
  // Query heads by [q block, o column block], within the matched group.
  const auto q_desc = [&](const Model& m, const std::string& at) {
    const auto q = load_all(*m.find(at + "q_proj.weight")), o = load_all(*m.find(at + "o_proj.weight"));
    const size_t width = size_t(heads) * head_dim;  // o_proj: [hidden, heads * head_dim]
    std::vector<double> out(size_t(heads) * 2 * block);
    for (size_t h = 0; h < size_t(heads); ++h) {
      append_unit(q.data() + h * block, block, 1, out.data() + h * 2 * block);
      std::vector<float> cols(block);
      for (size_t r = 0; r < hidden; ++r) {
        for (size_t t = 0; t < head_dim; ++t) cols[r * head_dim + t] = o[r * width + h * head_dim + t];
      }
      append_unit(cols.data(), block, 1, out.data() + h * 2 * block + block);
    }
    return out;
  };
  const std::vector<double> qs = q_desc(c.s, p), qr = q_desc(c.r, pr);
  std::vector<uint32_t> q(static_cast<size_t>(heads));
  for (size_t gs = 0; gs < size_t(kv_heads); ++gs) {
    const size_t gr = kv[gs];
    std::vector<double> a(qs.begin() + long(gs * group * 2 * block), qs.begin() + long((gs + 1) * group * 2 * block));
    std::vector<double> b(qr.begin() + long(gr * group * 2 * block), qr.begin() + long((gr + 1) * group * 2 * block));
    const auto local = linear_assignment(cosine_cost(a, b, group, 2 * block, 2), group);
    for (size_t i = 0; i < group; ++i) q[gs * group + i] = uint32_t(gr * group + local[i]);
  }
  if (is_identity(q) && is_identity(kv)) return;
  c.out.permutations.push_back({{"layer", layer}, {"kind", "heads"}, {"heads", q}, {"kv_heads", kv}});
  const auto qinv = inverse(q), kvinv = inverse(kv);
  c.out.tensors[p + "q_proj.weight"] = {p + "q_proj.weight", qinv, head_dim, {}, 1, pr + "q_proj.weight"};
  c.out.tensors[p + "o_proj.weight"] = {p + "o_proj.weight", {}, 1, qinv, head_dim, pr + "o_proj.weight"};
  c.out.tensors[p + "k_proj.weight"] = {p + "k_proj.weight", kvinv, head_dim, {}, 1, pr + "k_proj.weight"};
  c.out.tensors[p + "v_proj.weight"] = {p + "v_proj.weight", kvinv, head_dim, {}, 1, pr + "v_proj.weight"};
  for (const char* bias : {"q_proj.bias", "k_proj.bias", "v_proj.bias"}) {
    if (c.st(p + bias)) {
      c.out.tensors[p + bias] = {p + bias, bias[0] == 'q' ? qinv : kvinv, head_dim, {}, 1, pr + bias};
    }
  }
}

// Which reference layer each suspect layer is (frankenmerge stacking duplicates and reorders
// layers): the reference layer with the largest prefix correlation over a few probe tensors (the
// norms survive every permutation, q/k/v survive neuron permutations, the router and gate_proj
// head permutations; the best probe decides). Identity unless the layer counts differ or some
// layer does not match its namesake.
std::vector<int> match_layers(Context& c, int layers, int ref_layers) {
  std::vector<int> map(size_t(std::max(layers, 0)));
  std::iota(map.begin(), map.end(), 0);
  static const char* const kProbes[] = {"input_layernorm.weight", "post_attention_layernorm.weight",
                                        "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                        "self_attn.v_proj.weight", "mlp.gate.weight", "mlp.gate_proj.weight"};
  const auto score = [&](int l, int m) {
    double best = -1;
    for (const char* probe : kProbes) {
      const ModelTensor* a = c.st("model.layers." + std::to_string(l) + "." + probe);
      const ModelTensor* b = c.rt("model.layers." + std::to_string(m) + "." + probe);
      if (a && b && a->info->shape == b->info->shape) best = std::max(best, prefix_correlation(*a, *b));
    }
    return best;
  };
  bool moved = layers != ref_layers;
  for (int l = 0; l < layers && !moved; ++l) moved = score(l, l) < kAlignedCorrelation;
  if (!moved) return map;
  bool changed = false;
  for (int l = 0; l < layers; ++l) {
    double best = l < ref_layers ? score(l, l) : -1;
    for (int m = 0; m < ref_layers; ++m) {
      const double s = m == l ? best : score(l, m);
      if (s > best + 1e-12) best = s, map[size_t(l)] = m;
    }
    changed |= map[size_t(l)] != l;
  }
  if (changed) c.out.permutations.push_back({{"kind", "layers"}, {"layer_map", map}});
  return map;
}

}  // namespace

Alignment align_suspect(const Model& suspect, const std::vector<const Model*>& candidates) {
  Alignment out;
  // The reference: the candidate whose embeddings correlate best with the suspect's.
  double best = -2;
  for (size_t c = 0; c < candidates.size(); ++c) {
    const ModelTensor* a = suspect.find("model.embed_tokens.weight");
    const ModelTensor* b = candidates[c]->find("model.embed_tokens.weight");
    const double corr = a && b ? prefix_correlation(*a, *b) : -1.0;
    if (corr > best) best = corr, out.reference = int(c);
  }
  if (out.reference < 0 || best < kAlignedCorrelation) return out;  // nothing to align to
  Context c{suspect, *candidates[size_t(out.reference)], out, candidates};
  const auto& config = suspect.config();
  const int heads = config.value("num_attention_heads", 0);
  const int kv_heads = config.value("num_key_value_heads", heads);
  const int layers = count_layers(suspect);
  const std::vector<int> layer_map = match_layers(c, layers, count_layers(*candidates[size_t(out.reference)]));
  const ExpertLayout experts = expert_layout(suspect);
  for (int l = 0; l < layers; ++l) {
    const int lr = layer_map[size_t(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
    const std::string pr = "model.layers." + std::to_string(lr) + ".mlp.";
    const std::string xp = "model.layers." + std::to_string(l) + "." + experts.experts;
    const std::string xpr = "model.layers." + std::to_string(lr) + "." + experts.experts;
    const std::vector<uint32_t> expert_source = align_experts(c, l, lr, experts);
    for (size_t e = 0; e < expert_source.size(); ++e) {
      align_neurons(c, l, "experts." + std::to_string(e), xp + std::to_string(e) + ".",
                    xp + std::to_string(expert_source[e]) + ".", xpr + std::to_string(e) + ".", experts);
    }
    align_neurons(c, l, "mlp", p, p, pr);
    align_neurons(c, l, "shared_expert", p + "shared_expert.", p + "shared_expert.", pr + "shared_expert.");
    align_heads(c, l, lr, heads, kv_heads);
    if (lr == l) continue;
    // Everything else in a moved layer is compared with the matched layer's namesake.
    const std::string ls = "model.layers." + std::to_string(l) + ".", lrs = "model.layers." + std::to_string(lr) + ".";
    for (const auto& t : suspect.tensors()) {
      if (t.name().rfind(ls, 0) != 0 || out.tensors.count(t.name())) continue;
      out.tensors[t.name()] = {t.name(), {}, 1, {}, 1, lrs + t.name().substr(ls.size())};
    }
  }
  for (const auto& t : suspect.tensors()) t.shard->release(*t.info);
  for (const Model* m : candidates) {
    for (const auto& t : m->tensors()) t.shard->release(*t.info);
  }
  return out;
}

void load_aligned(const Model& suspect, const Alignment& alignment, const std::string& name, std::vector<float>* out) {
  const AlignedTensor& a = alignment.tensors.at(name);
  const ModelTensor& t = *suspect.find(a.source);
  const uint64_t n = t.info->numel();
  std::vector<float> src(n);
  load_as_f32(t.info->dtype, t.data(), n, src.data());
  const uint64_t rows = t.info->shape.empty() ? 1 : t.info->shape[0];
  const uint64_t cols = rows ? n / rows : 0;
  out->resize(n);
  for (uint64_t r = 0; r < rows; ++r) {
    uint64_t from = r;
    if (!a.row_blocks.empty()) from = uint64_t(a.row_blocks[r / a.row_block]) * a.row_block + r % a.row_block;
    const float* in = src.data() + from * cols;
    float* o = out->data() + r * cols;
    if (a.col_blocks.empty()) {
      std::copy(in, in + cols, o);
    } else {
      for (uint64_t col = 0; col < cols; ++col) {
        o[col] = in[uint64_t(a.col_blocks[col / a.col_block]) * a.col_block + col % a.col_block];
      }
    }
    if (!a.row_scale.empty()) {
      for (uint64_t col = 0; col < cols; ++col) o[col] /= a.row_scale[r];
    }
    if (!a.col_scale.empty()) {
      for (uint64_t col = 0; col < cols; ++col) o[col] *= a.col_scale[col];
    }
  }
}

}  // namespace alloy::detail
