// The alignment stage: undo the permutations that leave a network's function unchanged, so that
// the fit compares like with like. Against a reference candidate (the one whose embeddings
// correlate best with the suspect's), per decoder layer, and only where a tensor no longer
// correlates with its namesake (a cheap prefix test, so aligned models pay almost nothing). The
// units and where their items lie come from the architecture model (alloy/core/units.h): experts
// apart or stacked in 3-D tensors (also GPT-OSS's interleaved gate/up), fused gate_up and qkv,
// gated q, multi-head latent attention, under any layer prefix:
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
#include "alloy/core/units.h"
#include "internal.h"

namespace alloy::detail {

double pearson(const float* x, const float* y, uint64_t n) {
  if (n == 0) return 0;
  double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
  for (uint64_t i = 0; i < n; ++i) {
    sx += x[i], sy += y[i], sxx += double(x[i]) * x[i], syy += double(y[i]) * y[i], sxy += double(x[i]) * y[i];
  }
  const double vx = sxx - sx * sx / double(n), vy = syy - sy * sy / double(n);
  return vx > 0 && vy > 0 ? (sxy - sx * sy / double(n)) / std::sqrt(vx * vy) : 0.0;
}

namespace {

constexpr uint64_t kPrefix = 1 << 16;
constexpr double kAlignedCorrelation = 0.3;

// pearson over the common length of two items.
double pearson(const std::vector<float>& x, const std::vector<float>& y) {
  return detail::pearson(x.data(), y.data(), std::min(x.size(), y.size()));
}

double prefix_correlation(const ModelTensor& a, const ModelTensor& b) {
  const uint64_t n = std::min<uint64_t>(a.info->numel(), kPrefix);
  if (n == 0 || a.info->numel() != b.info->numel()) return 0;
  // Reused by every call on this thread: vectors made afresh for each tensor pair cost a page fault
  // per 4 KiB each time (malloc returns the freed top of the heap to the system).
  static thread_local std::vector<float> x, y;
  float* xs = at_least(x, n);
  float* ys = at_least(y, n);
  load_range(a, 0, n, xs);
  load_range(b, 0, n, ys);
  return detail::pearson(xs, ys, n);
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

// Reads the items of unit slices from one model: a slice's matrix (its expert's, for a stacked
// tensor) is loaded once and kept until clear().
class Reader {
 public:
  explicit Reader(const Model& model) : model_(model) {}
  const Model& model() const { return model_; }
  const ModelTensor* tensor(const ItemSlice& s) const { return model_.find(s.tensor); }
  static TensorGather dims(const ModelTensor& t, const ItemSlice& s) { return TensorGather::of(t.info->shape, s.matrix >= 0); }
  const std::vector<float>& region(const ItemSlice& s) {
    const auto key = std::make_pair(s.tensor, s.matrix);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    const ModelTensor& t = *tensor(s);
    const TensorGather g = dims(t, s);
    // A region cleared earlier lends its storage: fresh memory for every matrix of every layer
    // was most of a head-permuted model's alignment in page faults.
    std::vector<float> v;
    std::vector<std::vector<float>>& spare = spare_regions();
    if (!spare.empty()) v = std::move(spare.back()), spare.pop_back();
    v.resize(g.rows * g.cols);
    load_range(t, uint64_t(std::max(s.matrix, 0)) * v.size(), v.size(), v.data());
    return cache_.emplace(key, std::move(v)).first->second;
  }
  // Item i's elements (its rows one after another, or for a column item, row by row its columns),
  // at most `limit` of them, into `out` (its storage reused).
  void item_into(const ItemSlice& s, uint64_t i, std::vector<float>* out,
                 uint64_t limit = UINT64_MAX) {
    const ModelTensor& t = *tensor(s);
    const TensorGather g = dims(t, s);
    if (s.rows) {
      const uint64_t n = std::min(s.width * g.cols, limit);
      const uint64_t begin = (uint64_t(std::max(s.matrix, 0)) * g.rows + s.index(i)) * g.cols;
      out->resize(n);
      const auto it = cache_.find(std::make_pair(s.tensor, s.matrix));
      if (it != cache_.end()) {
        std::copy_n(it->second.data() + (begin - uint64_t(std::max(s.matrix, 0)) * g.rows * g.cols),
                    n, out->data());
      } else {
        load_range(t, begin, n, out->data());
      }
      return;
    }
    const std::vector<float>& m = region(s);
    out->clear();
    for (uint64_t r = 0; r < g.rows && out->size() < limit; ++r) {
      for (uint64_t k = 0; k < s.width && out->size() < limit; ++k)
        out->push_back(m[r * g.cols + s.index(i, k)]);
    }
  }
  std::vector<float> item(const ItemSlice& s, uint64_t i, uint64_t limit = UINT64_MAX) {
    std::vector<float> out;
    item_into(s, i, &out, limit);
    return out;
  }
  void clear() {
    for (auto& [key, values] : cache_) spare_regions().push_back(std::move(values));
    cache_.clear();
  }
  ~Reader() { clear(); }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

 private:
  // Cleared regions' storage, for this thread's readers to reuse (a reader made per candidate and
  // layer would otherwise start with none).
  static std::vector<std::vector<float>>& spare_regions() {
    static thread_local std::vector<std::vector<float>> spare;
    return spare;
  }
  const Model& model_;
  std::map<std::pair<std::string, int>, std::vector<float>> cache_;
};

// An MLP's weights neuron by neuron: gate, up and down each [neurons, hidden].
struct MlpData {
  uint64_t inter = 0, hidden = 0;
  std::vector<float> gate, up, down;
};

// Into `d`, whose vectors keep their storage: refilled for every layer, they touch no fresh pages
// (a fresh 25 MB vector per matrix, model and layer cost a page fault per 4 KiB).
void read_mlp(Reader& m, const MlpUnit& u, MlpData* d) {
  d->inter = u.neurons, d->hidden = u.hidden;
  for (const auto& [s, into] :
       {std::pair{&u.gate, &d->gate}, std::pair{&u.up, &d->up}, std::pair{&u.down, &d->down}}) {
    into->clear();
    into->reserve(d->inter * d->hidden);
    if (!s->rows) {
      // Column items (down_proj's neurons): the region transposed in blocks of items, a row of the
      // region at a time, where item by item every element was a cache miss.
      const std::vector<float>& region = m.region(*s);
      const TensorGather g = Reader::dims(*m.tensor(*s), *s);
      const uint64_t item = g.rows * s->width;
      into->resize(d->inter * item);
      constexpr uint64_t kItemsPerBlock = 32;
      for (uint64_t i0 = 0; i0 < d->inter; i0 += kItemsPerBlock) {
        const uint64_t i1 = std::min<uint64_t>(d->inter, i0 + kItemsPerBlock);
        for (uint64_t r = 0; r < g.rows; ++r) {
          const float* row = region.data() + r * g.cols;
          for (uint64_t i = i0; i < i1; ++i) {
            for (uint64_t k = 0; k < s->width; ++k)
              (*into)[i * item + r * s->width + k] = row[s->index(i, k)];
          }
        }
      }
      continue;
    }
    static thread_local std::vector<float> v;
    for (uint64_t i = 0; i < d->inter; ++i) {
      m.item_into(*s, i, &v);
      into->insert(into->end(), v.begin(), v.end());
    }
  }
}
MlpData read_mlp(Reader& m, const MlpUnit& u) {
  MlpData d;
  read_mlp(m, u, &d);
  return d;
}

// This thread's MlpData buffers, reused for every layer: slot 0 for the suspect's unit (or one
// unit at a time), 1.. for the candidates'.
MlpData& mlp_scratch(size_t slot) {
  // Pointers, so that a slot's address stays put as the list grows.
  static thread_local std::vector<std::unique_ptr<MlpData>> buffers;
  while (buffers.size() <= slot) buffers.push_back(std::make_unique<MlpData>());
  return *buffers[slot];
}

// Whether the unit's slices have the same tensors' shapes in both models (so item descriptors
// compare).
bool same_shapes(const Model& a, const std::vector<const ItemSlice*>& sa, const Model& b,
                 const std::vector<const ItemSlice*>& sb) {
  if (sa.size() != sb.size()) return false;
  for (size_t i = 0; i < sa.size(); ++i) {
    const ModelTensor* x = a.find(sa[i]->tensor);
    const ModelTensor* y = b.find(sb[i]->tensor);
    if (!x || !y || x->info->shape != y->info->shape) return false;
  }
  return true;
}

std::vector<const ItemSlice*> mlp_slices(const MlpUnit& u) {
  return {&u.gate, &u.up, &u.down};
}

// Whether some of `count` items (up to 64, evenly spaced) of the slice no longer correlates with the
// same item of the reference (the first 4096 elements of each): a permutation moves whole items, a
// blend keeps each in place.
bool items_shuffled(Reader& s, const ItemSlice& ss, Reader& r, const ItemSlice& rs, uint64_t count) {
  if (count < 2) return false;
  const uint64_t step = std::max<uint64_t>(1, count / 64);
  for (uint64_t i = 0; i < count; i += step) {
    if (pearson(s.item(ss, i, 4096), r.item(rs, i, 4096)) < kAlignedCorrelation) return true;
  }
  return false;
}

struct Context {
  const Model& s;
  const Model& r;
  Alignment& out;
  const std::vector<const Model*>& candidates;
  const AlignOptions& options;
  Reader sr{s}, rr{r};
  // align_heads' item descriptors, their storage kept across layers.
  std::vector<double> descriptors[4]{};

  // The slot's entry, created as "the suspect's tensor as stored" on first use.
  AlignedTensor& slot(const std::string& name, bool stacked) {
    auto it = out.tensors.find(name);
    if (it == out.tensors.end()) {
      AlignedTensor a;
      a.source = name;
      a.gather = TensorGather::of(s.find(name)->info->shape, stacked);
      it = out.tensors.emplace(name, std::move(a)).first;
    }
    return it->second;
  }
  void compare_with(const std::string& name, const std::string& candidate, bool stacked) {
    if (candidate != name || out.tensors.count(name)) slot(name, stacked).candidate = candidate;
  }
};

// Routed experts of one layer: returns the suspect expert holding each reference expert (qinv).
std::vector<uint32_t> align_experts(Context& c, int layer, const ExpertGroup& sx, const ExpertGroup& rx) {
  const size_t experts = std::min(sx.experts.size(), rx.experts.size());
  std::vector<uint32_t> identity(experts);
  std::iota(identity.begin(), identity.end(), 0u);
  if (experts < 2 || sx.experts.size() != rx.experts.size()) return identity;
  for (size_t e = 0; e < experts; ++e) {
    if (!same_shapes(c.s, mlp_slices(sx.experts[e]), c.r, mlp_slices(rx.experts[e]))) return identity;
  }
  bool needed = false;
  for (size_t e = 0; e < experts && !needed; ++e) {
    // The start of the expert's first tensor (its matrix, when stacked) against the reference's.
    ItemSlice whole = sx.experts[e].gate, ref = rx.experts[e].gate;
    const uint64_t rows = Reader::dims(*c.s.find(whole.tensor), whole).rows;
    for (ItemSlice* w : {&whole, &ref}) w->rows = true, w->offset = 0, w->stride = 0, w->width = rows;
    needed = pearson(c.sr.item(whole, 0, kPrefix), c.rr.item(ref, 0, kPrefix)) < kAlignedCorrelation;
  }
  if (!needed) return identity;
  // Signature: column sums of gate and up, row sums of down (all of hidden size), router row.
  const auto signature = [&](Reader& m, const MlpUnit& u, std::vector<double>* sig) {
    const MlpData d = read_mlp(m, u);
    const size_t inter = d.inter, hidden = d.hidden;
    std::vector<double> part(3 * hidden, 0.0);
    for (size_t i = 0; i < inter; ++i) {
      for (size_t h = 0; h < hidden; ++h) part[h] += d.gate[i * hidden + h], part[hidden + h] += d.up[i * hidden + h];
    }
    for (size_t h = 0; h < hidden; ++h) {
      for (size_t i = 0; i < inter; ++i) part[2 * hidden + h] += d.down[i * hidden + h];
    }
    std::vector<double> unit(part.size());
    for (int k = 0; k < 3; ++k) {
      std::vector<float> f(part.begin() + k * long(hidden), part.begin() + (k + 1) * long(hidden));
      append_unit(f.data(), hidden, 1, unit.data() + k * hidden);
    }
    sig->insert(sig->end(), unit.begin(), unit.end());
    m.clear();
    return hidden;
  };
  std::vector<double> a, b;
  size_t dim = 0;
  for (size_t e = 0; e < experts; ++e) dim = signature(c.sr, sx.experts[e], &a), signature(c.rr, rx.experts[e], &b);
  dim *= 3;
  double parts = 3;
  const ItemSlice* srouter = sx.router.empty() ? nullptr : &sx.router[0];
  const ItemSlice* rrouter = rx.router.empty() ? nullptr : &rx.router[0];
  if (srouter && rrouter && srouter->rows && rrouter->rows && same_shapes(c.s, {srouter}, c.r, {rrouter})) {
    // Append the router rows, as a fourth unit part.
    std::vector<double> a2, b2;
    for (size_t e = 0; e < experts; ++e) {
      const std::vector<float> sv = c.sr.item(*srouter, e), rv = c.rr.item(*rrouter, e);
      const size_t h = sv.size();
      a2.insert(a2.end(), a.begin() + long(e * dim), a.begin() + long((e + 1) * dim));
      b2.insert(b2.end(), b.begin() + long(e * dim), b.begin() + long((e + 1) * dim));
      a2.resize(a2.size() + h), b2.resize(b2.size() + h);
      append_unit(sv.data(), h, 1, a2.data() + a2.size() - h);
      append_unit(rv.data(), h, 1, b2.data() + b2.size() - h);
    }
    dim += c.sr.item(*srouter, 0).size();
    a = std::move(a2), b = std::move(b2), parts = 4;
  }
  const std::vector<uint32_t> q = linear_assignment(cosine_cost(a, b, experts, dim, parts), experts);
  if (is_identity(q)) return identity;
  c.out.permutations.push_back({{"layer", layer}, {"kind", "experts"}, {"permutation", q}});
  const std::vector<uint32_t> qinv = inverse(q);
  for (size_t i = 0; i < sx.stacked.size() && i < rx.stacked.size(); ++i) {
    c.slot(sx.stacked[i], true).gather.permute_matrices(qinv);
    c.compare_with(sx.stacked[i], rx.stacked[i], true);
  }
  for (size_t e = 0; e < sx.apart.size() && e < experts; ++e) {
    for (size_t k = 0; k < sx.apart[e].size(); ++k) {
      if (qinv[e] != e) c.slot(sx.apart[e][k], false).source = sx.apart[qinv[e]][k];
      c.compare_with(sx.apart[e][k], rx.apart[e][k], false);
    }
  }
  for (size_t i = 0; i < sx.router.size() && i < rx.router.size(); ++i) {
    c.slot(sx.router[i].tensor, false).gather.permute_items(sx.router[i], qinv);
    c.compare_with(sx.router[i].tensor, rx.router[i].tensor, false);
  }
  return qinv;
}

// The cheap test of estimate_neuron_scales: whether the row norms of up_proj, relative to the
// reference's, spread by more than 2% on up to 64 rows.
bool up_norms_spread(Reader& sr, Reader& rr, const MlpUnit& source, const MlpUnit& ref,
                     const std::vector<uint32_t>& qinv) {
  const size_t inter = ref.neurons, hidden = ref.hidden;
  std::vector<double> log_ratio;
  for (size_t i = 0; i < inter; i += std::max<size_t>(1, inter / 64)) {
    const std::vector<float> x = sr.item(source.up, qinv[i]), y = rr.item(ref.up, i);
    double a = 0, b = 0;
    for (size_t h = 0; h < hidden; ++h) a += double(x[h]) * x[h], b += double(y[h]) * y[h];
    log_ratio.push_back(a > 0 && b > 0 ? 0.5 * std::log(a / b) : 0.0);
  }
  double mean = 0, var = 0;
  for (double v : log_ratio) mean += v / double(log_ratio.size());
  for (double v : log_ratio) var += (v - mean) * (v - mean) / double(log_ratio.size());
  return std::sqrt(var) >= 0.02;
}

// Per-neuron rescaling (up_proj row i times c_i, down_proj column i divided by c_i, which SiLU
// gating leaves the function unchanged by): gate_proj is untouched, so the unit's mixing weights
// are fitted on it (affine least squares against every candidate's gate_proj); the fitted blend
// F of the candidates' up and down then gives c_i = <S_up_i, F_up_i> / |F_up_i|^2 and
// 1/c_i = <S_down_i, F_down_i> / |F_down_i|^2, combined as a geometric mean. Only when the row
// norms of up_proj, relative to the reference's, spread by more than 2% on a sample of rows (a
// blend moves them far less). `qinv`: aligned neuron i is the source's neuron qinv[i]. Returns the
// scales, or an empty vector.
std::vector<float> estimate_neuron_scales(Context& c, const MlpUnit& source, const MlpUnit& ref,
                                          const std::vector<uint32_t>& qinv) {
  const size_t inter = ref.neurons, hidden = ref.hidden;
  if (!up_norms_spread(c.sr, c.rr, source, ref, qinv)) return {};
  // Every buffer here is reused for every layer: fresh, they were about 300 MB of page faults and
  // zero-fills per layer of the benchmark model (2 candidates).
  MlpData& raw = mlp_scratch(0);
  read_mlp(c.sr, source, &raw);
  static thread_local std::vector<float> gate_rows, up_rows, down_rows;
  float* const sg = at_least(gate_rows, inter * hidden);
  float* const su = at_least(up_rows, inter * hidden);
  float* const sd = at_least(down_rows, inter * hidden);
  for (size_t i = 0; i < inter; ++i) {
    const size_t from = size_t(qinv[i]) * hidden;
    std::copy_n(raw.gate.data() + from, hidden, sg + i * hidden);
    std::copy_n(raw.up.data() + from, hidden, su + i * hidden);
    std::copy_n(raw.down.data() + from, hidden, sd + i * hidden);
  }
  // Mixing weights from gate_proj: min |S - sum w_k C_k|^2, sum w = 1, relative to the reference.
  std::vector<const float*> cg, cu, cd;
  for (const Model* m : c.candidates) {
    if (!same_shapes(c.r, mlp_slices(ref), *m, mlp_slices(ref))) return {};
    Reader reader(*m);
    MlpData& d = mlp_scratch(1 + cg.size());
    read_mlp(reader, ref, &d);
    cg.push_back(d.gate.data()), cu.push_back(d.up.data()), cd.push_back(d.down.data());
  }
  const size_t k = cg.size();
  const size_t ref_index = size_t(std::find(c.candidates.begin(), c.candidates.end(), &c.r) - c.candidates.begin());
  Eigen::MatrixXd a = Eigen::MatrixXd::Zero(Eigen::Index(k), Eigen::Index(k));
  Eigen::VectorXd y = Eigen::VectorXd::Zero(Eigen::Index(k));
  for (size_t e = 0; e < inter * hidden; ++e) {
    const double t = double(sg[e]) - cg[ref_index][e];
    for (size_t i = 0; i < k; ++i) {
      const double di = double(cg[i][e]) - cg[ref_index][e];
      y(Eigen::Index(i)) += di * t;
      for (size_t j = 0; j < k; ++j) a(Eigen::Index(i), Eigen::Index(j)) += di * (double(cg[j][e]) - cg[ref_index][e]);
    }
  }
  a(Eigen::Index(ref_index), Eigen::Index(ref_index)) = 1;  // the reference's own column is zero
  a += 1e-12 * a.trace() * Eigen::MatrixXd::Identity(Eigen::Index(k), Eigen::Index(k));
  Eigen::VectorXd w = a.ldlt().solve(y);
  w(Eigen::Index(ref_index)) = 1 - (w.sum() - w(Eigen::Index(ref_index)));
  const auto blend = [&](const std::vector<const float*>& ts, size_t e) {
    double v = 0;
    for (size_t i = 0; i < k; ++i) v += w(Eigen::Index(i)) * ts[i][e];
    return v;
  };
  std::vector<float> scales(inter, 1.0f);
  for (size_t i = 0; i < inter; ++i) {
    double su_f = 0, ff = 0, sd_f = 0, gg = 0;
    for (size_t h = 0; h < hidden; ++h) {
      const double f = blend(cu, i * hidden + h);
      su_f += su[i * hidden + h] * f, ff += f * f;
      const double fd = blend(cd, i * hidden + h);
      sd_f += sd[i * hidden + h] * fd, gg += fd * fd;
    }
    const double c_up = ff > 0 ? su_f / ff : 1.0, inv_c_down = gg > 0 ? sd_f / gg : 1.0;
    scales[i] = float(c_up > 0 && inv_c_down > 0 ? std::sqrt(c_up / inv_c_down) : 1.0);
  }
  return scales;
}

// Per-item scale factors on a slot: item i of the slice divided (or multiplied) by scales[i].
void scale_items(AlignedTensor& a, const ItemSlice& s, const std::vector<float>& scales, bool divide) {
  const TensorGather& g = a.gather;
  const uint64_t n = s.rows ? g.rows : g.cols;
  std::vector<float>& v = s.rows ? a.row_scale : a.col_scale;
  (s.rows ? a.row_divides : a.col_divides) = divide;
  if (v.empty()) v.assign(g.matrices * n, 1.0f);
  const uint64_t m = uint64_t(std::max(s.matrix, 0));
  for (size_t i = 0; i < scales.size(); ++i) {
    for (uint64_t k = 0; k < s.width; ++k) v[m * n + s.index(i, k)] = scales[i];
  }
}

// Whether the suspect's MLP unit and the reference's have the same neurons and tensor shapes: if
// not, align_neurons leaves the unit as it is.
bool neurons_comparable(const Model& s, const MlpUnit& source, const Model& r, const MlpUnit& ref) {
  return same_shapes(s, mlp_slices(source), r, mlp_slices(ref)) && source.neurons == ref.neurons &&
         source.hidden == ref.hidden;
}

// The neurons of one MLP unit: the suspect's `slot` unit (where the aligned data goes) holds the
// data of its `source` unit, compared with the reference's `ref`.
void align_neurons(Context& c, int layer, const std::string& unit, const MlpUnit& slot, const MlpUnit& source,
                   const MlpUnit& ref) {
  if (!neurons_comparable(c.s, source, c.r, ref)) return;
  const size_t inter = ref.neurons, hidden = ref.hidden;
  // The descriptors, their weights and the cost matrix in buffers reused for every layer: fresh,
  // they were about 0.6 GB of page faults and zero-fills per layer of the benchmark model.
  static thread_local std::vector<double> suspect_items, reference_items, cost;
  // The coordinates compared: all, or a sampled assay's sketch (AlignOptions), drawn per unit.
  const std::vector<uint64_t> sketch =
      c.options.sketch_coordinates > 0
          ? sampled_rows({hidden, 1}, double(c.options.sketch_coordinates) / double(hidden),
                         c.options.seed, "alignment sketch " + std::to_string(layer) + " " + unit)
          : std::vector<uint64_t>{};
  const size_t dim = sketch.empty() ? hidden : sketch.size();
  const auto descriptors = [&](Reader& m, const MlpUnit& u, std::vector<double>* items) {
    MlpData& d = mlp_scratch(0);  // used up before the next call
    read_mlp(m, u, &d);
    double* out = at_least(*items, inter * 3 * dim);
    std::vector<float> picked(sketch.size());
    const auto part = [&](const float* row, double* o) {
      if (sketch.empty()) return append_unit(row, hidden, 1, o);
      for (size_t j = 0; j < sketch.size(); ++j) picked[j] = row[sketch[j]];
      append_unit(picked.data(), dim, 1, o);
    };
    for (size_t i = 0; i < inter; ++i) {
      double* o = out + i * 3 * dim;
      part(d.gate.data() + i * hidden, o);
      part(d.up.data() + i * hidden, o + dim);
      part(d.down.data() + i * hidden, o + 2 * dim);
    }
    return out;
  };
  std::vector<uint32_t> q(inter);
  std::iota(q.begin(), q.end(), 0u);
  if (items_shuffled(c.sr, source.gate, c.rr, ref.gate, inter)) {
    const double* a = descriptors(c.sr, source, &suspect_items);
    const double* b = descriptors(c.rr, ref, &reference_items);
    cosine_cost(a, b, inter, 3 * dim, 3, at_least(cost, inter * inter));
    q = linear_assignment(cost, inter);
  }
  const std::vector<uint32_t> qinv = inverse(q);
  const bool permuted = !is_identity(q);
  if (permuted) {
    nlohmann::json record = {
        {"layer", layer}, {"kind", "neurons"}, {"unit", unit}, {"permutation", q}};
    if (!sketch.empty()) record["compared_coordinates"] = {{"sketch", dim}, {"hidden", hidden}};
    c.out.permutations.push_back(std::move(record));
  }
  const std::vector<float> scales = estimate_neuron_scales(c, source, ref, qinv);
  c.sr.clear(), c.rr.clear();
  if (!scales.empty()) {
    c.out.permutations.push_back({{"layer", layer}, {"kind", "neuron_scales"}, {"unit", unit}, {"scales", scales}});
  }
  if (!permuted && scales.empty()) return;
  std::vector<ItemSlice> moved = {slot.gate, slot.up, slot.down};
  moved.insert(moved.end(), slot.extra.begin(), slot.extra.end());
  for (const ItemSlice& s : moved) {
    AlignedTensor& a = c.slot(s.tensor, s.matrix >= 0);
    if (permuted) a.gather.permute_items(s, qinv);
  }
  if (!scales.empty()) {
    scale_items(c.slot(slot.up.tensor, slot.up.matrix >= 0), slot.up, scales, true);
    scale_items(c.slot(slot.down.tensor, slot.down.matrix >= 0), slot.down, scales, false);
  }
  const std::vector<ItemSlice> refs = {ref.gate, ref.up, ref.down};
  for (size_t i = 0; i < refs.size(); ++i) c.compare_with(moved[i].tensor, refs[i].tensor, moved[i].matrix >= 0);
}

// Descriptors of `count` items over the signature slices (each part a unit vector).
void item_descriptors(Reader& m, const std::vector<ItemSlice>& slices, uint64_t count, size_t* dim,
                      double* parts, std::vector<double>* out) {
  *dim = 0, *parts = 0;
  static thread_local std::vector<float> v;
  for (const ItemSlice& s : slices) {
    if (!s.signature) continue;
    *parts += 1;
    m.item_into(s, 0, &v);
    *dim += v.size();
  }
  out->resize(count * *dim);  // the caller's storage, kept from layer to layer
  size_t at = 0;
  for (uint64_t i = 0; i < count; ++i) {
    for (const ItemSlice& s : slices) {
      if (!s.signature) continue;
      m.item_into(s, i, &v);
      if (at + v.size() > out->size()) out->resize(at + v.size());  // items of a slice are one size
      append_unit(v.data(), v.size(), 1, out->data() + at);
      at += v.size();
    }
  }
  out->resize(at);
}

std::vector<const ItemSlice*> pointers(const std::vector<ItemSlice>& v) {
  std::vector<const ItemSlice*> out;
  for (const ItemSlice& s : v) out.push_back(&s);
  return out;
}

// Whether the suspect's attention unit and the reference's have the same heads and tensor shapes:
// if not, align_heads leaves the heads as they are.
bool heads_comparable(const Model& s, const AttentionUnit& sa, const Model& r, const AttentionUnit& ra) {
  return sa.heads == ra.heads && sa.kv_heads == ra.kv_heads && sa.q.size() == ra.q.size() &&
         sa.kv.size() == ra.kv.size() && same_shapes(s, pointers(sa.q), r, pointers(ra.q)) &&
         same_shapes(s, pointers(sa.kv), r, pointers(ra.kv));
}

// Whether some query or key-value head of the suspect no longer correlates with the reference's.
bool heads_shuffled(Reader& sr, const AttentionUnit& sa, Reader& rr, const AttentionUnit& ra) {
  return items_shuffled(sr, sa.q[0], rr, ra.q[0], uint64_t(sa.heads)) ||
         items_shuffled(sr, sa.kv[0], rr, ra.kv[0], uint64_t(sa.kv_heads));
}

// Attention heads of one layer: key-value groups by their signature slices (k and v rows), then
// query heads within the matched group by theirs (q rows, o columns).
void align_heads(Context& c, int layer, const AttentionUnit& sa, const AttentionUnit& ra) {
  if (!heads_comparable(c.s, sa, c.r, ra) || !heads_shuffled(c.sr, sa, c.rr, ra)) return;
  const size_t heads = size_t(sa.heads), kv_heads = size_t(sa.kv_heads), group = heads / kv_heads;
  size_t dim = 0;
  double parts = 0;
  std::vector<double>&ks = c.descriptors[0], &kr = c.descriptors[1], &qs = c.descriptors[2],
  &qr = c.descriptors[3];
  item_descriptors(c.sr, sa.kv, kv_heads, &dim, &parts, &ks);
  item_descriptors(c.rr, ra.kv, kv_heads, &dim, &parts, &kr);
  const std::vector<uint32_t> kv = linear_assignment(cosine_cost(ks, kr, kv_heads, dim, parts), kv_heads);
  item_descriptors(c.sr, sa.q, heads, &dim, &parts, &qs);
  item_descriptors(c.rr, ra.q, heads, &dim, &parts, &qr);
  c.sr.clear(), c.rr.clear();
  std::vector<uint32_t> q(heads);
  std::vector<double> cost(group * group);
  for (size_t gs = 0; gs < kv_heads; ++gs) {
    const size_t gr = kv[gs];
    cosine_cost(qs.data() + gs * group * dim, qr.data() + gr * group * dim, group, dim, parts,
                cost.data());
    const auto local = linear_assignment(cost, group);
    for (size_t i = 0; i < group; ++i) q[gs * group + i] = uint32_t(gr * group + local[i]);
  }
  if (is_identity(q) && is_identity(kv)) return;
  c.out.permutations.push_back({{"layer", layer}, {"kind", "heads"}, {"heads", q}, {"kv_heads", kv}});
  const auto qinv = inverse(q), kvinv = inverse(kv);
  for (const auto& [slices, refs, p] : {std::tuple{&sa.q, &ra.q, &qinv}, std::tuple{&sa.kv, &ra.kv, &kvinv}}) {
    for (size_t i = 0; i < slices->size(); ++i) {
      const ItemSlice& s = (*slices)[i];
      c.slot(s.tensor, false).gather.permute_items(s, *p);
      c.compare_with(s.tensor, (*refs)[i].tensor, false);
    }
  }
}

// Which reference layer each suspect layer is (frankenmerge stacking duplicates and reorders
// layers): the reference layer with the largest prefix correlation over a few probe tensors (the
// norms survive every permutation, q/k/v survive neuron permutations, the router and gate_proj
// head permutations; the best probe decides). Identity unless the layer counts differ or some
// layer does not match its namesake.
std::vector<int> match_layers(Context& c, const ModelArchitecture& sa, const ModelArchitecture& ra, int layers,
                              int ref_layers) {
  std::vector<int> map(size_t(std::max(layers, 0)));
  std::iota(map.begin(), map.end(), 0);
  // Probes: by role (norms, q/k/v, the router, the dense MLP's gate), by suffix within the layer.
  std::vector<std::vector<std::string>> probes(map.size());
  for (const auto& t : c.s.tensors()) {
    int l;
    std::string suffix;
    if (!sa.split_layer(t.name(), &l, &suffix) || l >= layers) continue;
    const TensorPlace p = sa.classify(t.name());
    const TensorRole r = p.role;
    const bool matrix = t.info->shape.size() == 2;
    if (r == TensorRole::kNorm || (matrix && (r == TensorRole::kAttentionQ || r == TensorRole::kAttentionK ||
                                              r == TensorRole::kAttentionV || r == TensorRole::kAttentionQkv ||
                                              r == TensorRole::kRouter || r == TensorRole::kMlpGate))) {
      probes[size_t(l)].push_back(suffix);
    }
  }
  const auto score = [&](int l, int m) {
    double best = -1;
    for (const std::string& probe : probes[size_t(l)]) {
      const ModelTensor* a = c.s.find(sa.layer_tensor(l, probe));
      const ModelTensor* b = c.r.find(ra.layer_tensor(m, probe));
      if (a && b && a->info->shape == b->info->shape) best = std::max(best, prefix_correlation(*a, *b));
    }
    return best;
  };
  bool moved = layers != ref_layers;
  if (!moved) {
    // Every layer against its namesake, in parallel (each score reads a few tensor prefixes).
    std::vector<double> own(map.size());
    parallel_for(own.size(), 1, [&](size_t begin, size_t end) {
      for (size_t l = begin; l < end; ++l) own[l] = score(int(l), int(l));
    });
    moved = std::any_of(own.begin(), own.end(), [](double s) { return s < kAlignedCorrelation; });
  }
  if (!moved) return map;
  // Each suspect layer against every reference layer, the layers in parallel (each is its own
  // search; serial, a stacked 1 GB model's 17 x 16 pairs of probes were most of its 1% assay).
  parallel_for(map.size(), 1, [&](size_t begin, size_t end) {
    for (size_t l = begin; l < end; ++l) {
      double best = int(l) < ref_layers ? score(int(l), int(l)) : -1;
      for (int m = 0; m < ref_layers; ++m) {
        const double s = m == int(l) ? best : score(int(l), m);
        if (s > best + 1e-12) best = s, map[l] = m;
      }
    }
  });
  bool changed = false;
  for (int l = 0; l < layers; ++l) changed |= map[size_t(l)] != l;
  if (changed) c.out.permutations.push_back({{"kind", "layers"}, {"layer_map", map}});
  return map;
}

const MlpUnit* find_unit(const std::vector<MlpUnit>& units, const std::string& name) {
  for (const MlpUnit& u : units) {
    if (u.name == name) return &u;
  }
  return nullptr;
}

// Whether the alignment would leave suspect layer `l` as it is, compared with reference layer `l`
// (the common case: nothing was permuted or rescaled): its dense MLPs' neurons and its heads
// correlate with the reference's where they are (the same quick tests align_neurons and
// align_heads start with), and no neuron rescaling shows. Layers with routed experts are left to
// align_experts. Reads through readers of its own, so layers are tested concurrently.
bool layer_is_quiet(const Model& suspect, const LayerUnits& s, const Model& reference, const LayerUnits& r) {
  if (s.experts || r.experts) return false;
  Reader sr(suspect), rr(reference);
  for (const char* name : {"mlp", "shared_expert"}) {
    const MlpUnit *x = find_unit(s.mlps, name), *y = find_unit(r.mlps, name);
    if (!x || !y || !neurons_comparable(suspect, *x, reference, *y)) continue;
    if (items_shuffled(sr, x->gate, rr, y->gate, y->neurons)) return false;
    std::vector<uint32_t> identity(y->neurons);
    std::iota(identity.begin(), identity.end(), 0u);
    if (up_norms_spread(sr, rr, *x, *y, identity)) return false;
  }
  if (s.attention && r.attention && heads_comparable(suspect, *s.attention, reference, *r.attention) &&
      heads_shuffled(sr, *s.attention, rr, *r.attention)) {
    return false;
  }
  return true;
}

}  // namespace

Alignment align_suspect(const Model& suspect, const std::vector<const Model*>& candidates,
                        const AlignOptions& options) {
  Alignment out;
  const ModelArchitecture sa = detect_architecture(suspect);
  // The reference: the candidate whose embeddings correlate best with the suspect's.
  double best = -2;
  const ModelTensor* a = suspect.find(embedding_name(sa, suspect));
  std::vector<double> correlation(candidates.size(), -1.0);  // computed in parallel, compared in order
  parallel_for(candidates.size(), 1, [&](size_t begin, size_t end) {
    for (size_t c = begin; c < end; ++c) {
      const ModelTensor* b = candidates[c]->find(embedding_name(detect_architecture(*candidates[c]), *candidates[c]));
      if (a && b) correlation[c] = prefix_correlation(*a, *b);
    }
  });
  for (size_t c = 0; c < candidates.size(); ++c) {
    if (correlation[c] > best) best = correlation[c], out.reference = int(c);
  }
  if (out.reference < 0 || best < kAlignedCorrelation) {
    // Nothing to align to, unless the residual stream was rotated (then no permutation is undone).
    rotation_stage(suspect, candidates, &out);
    gain_stage(suspect, candidates, &out);
    return out;
  }
  const Model& reference = *candidates[size_t(out.reference)];
  const ModelArchitecture ra = detect_architecture(reference);
  Context c{suspect, reference, out, candidates, options};
  const std::vector<LayerUnits> su = model_units(sa, suspect), ru = model_units(ra, reference);
  const int layers = int(su.size());
  const std::vector<int> layer_map = match_layers(c, sa, ra, layers, int(ru.size()));
  // The quick tests of every layer in parallel first: a quiet layer needs none of the (serial)
  // alignment below, which would only repeat them. The tests read tensors item by item (small
  // preads), and run serially they were the assay's first single-threaded stretch.
  std::vector<char> quiet(size_t(std::max(layers, 0)), 0);
  parallel_for(quiet.size(), 1, [&](size_t begin, size_t end) {
    for (size_t l = begin; l < end; ++l) {
      quiet[l] = layer_map[l] == int(l) && l < ru.size() && layer_is_quiet(suspect, su[l], reference, ru[l]);
    }
  });
  for (int l = 0; l < layers; ++l) {
    if (quiet[size_t(l)]) continue;
    const int lr = layer_map[size_t(l)];
    const LayerUnits &s = su[size_t(l)], &r = ru[size_t(lr)];
    if (s.experts && r.experts) {
      const std::vector<uint32_t> source = align_experts(c, l, *s.experts, *r.experts);
      for (size_t e = 0; e < source.size(); ++e) {
        align_neurons(c, l, "experts." + std::to_string(e), s.experts->experts[e], s.experts->experts[source[e]],
                      r.experts->experts[e]);
      }
    }
    for (const char* name : {"mlp", "shared_expert"}) {
      const MlpUnit *x = find_unit(s.mlps, name), *y = find_unit(r.mlps, name);
      if (x && y) align_neurons(c, l, name, *x, *x, *y);
    }
    if (s.attention && r.attention) align_heads(c, l, *s.attention, *r.attention);
    if (lr == l) continue;
    // Everything else in a moved layer is compared with the matched layer's namesake.
    for (const auto& t : suspect.tensors()) {
      int layer;
      std::string suffix;
      if (!sa.split_layer(t.name(), &layer, &suffix) || layer != l || out.tensors.count(t.name())) continue;
      c.compare_with(t.name(), ra.layer_tensor(lr, suffix), false);
    }
  }
  gain_stage(suspect, candidates, &out);
  for (const auto& t : suspect.tensors()) t.shard->release(*t.info);
  for (const Model* m : candidates) {
    for (const auto& t : m->tensors()) t.shard->release(*t.info);
  }
  return out;
}

}  // namespace alloy::detail
