// The folded-gain stage: undo RMSNorm gains folded into the weights that read the normalised
// vector (alloy-synth perturb fold-norms; QuaRot, SpinQuant and SliceGPT before their rotation).
// A folded suspect holds the norm as all ones and every reader R (q/k/v; the MLP's, the router's
// and the experts' gate/up; lm_head) as R diag(g). For each norm whose suspect copy is all ones
// while some candidate's is not, the gain g and a blend w of the candidates are fitted jointly to
// S_j = g_j sum_c w_c C_c,j over every column j of every reader of that norm (alternating least
// squares: g_j = <S_j, F_j> / |F_j|^2 with F = sum_c w_c C_c, then w for S diag(1/g)), and the
// scale left free by g w = (g/m)(m w) is fixed so that g matches the candidates' gains blended
// with the same weights. When the gains explain the readers (the residual drops), the readers are
// compared as S diag(1/g) and the norm as g. docs/assay.md, "Folded norm gains".
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <map>

#include "alloy/core/dtype.h"
#include "alloy/core/residual_stream.h"
#include "alloy/core/units.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;

constexpr int kAlternations = 10;

struct NormGroup {
  std::string norm;
  float offset = 0;  // 1 for a norm applied as (1 + w) (Qwen3-Next, Qwen3.5): its gain is 1 + w
  std::vector<std::string> readers;       // stream on the last axis: [out, hidden], [E, out, hidden]
  std::vector<std::string> inner_readers;  // stacked [E, hidden, out] (GPT-OSS's gate_up_proj)
  std::vector<std::string> not_undone;     // readers whose stream axis is not known: left folded
};

// The norms of the language model and the tensors that read them through, by the role table of
// alloy/core/residual_stream.h: input_layernorm -> the attention's readers (q/k/v, fused qkv,
// latent q_a / kv_a, linear attention's in_proj); pre_feedforward_layernorm (Gemma 2), else
// post_attention_layernorm -> the MLP's, the router's, the experts' and the shared expert's; the
// final norm -> lm_head. A reader is divided by the gain along its stream axis: the last
// ([out, hidden], or stacked [E, out, hidden]) or the middle of stacked [E, hidden, out] (GPT-OSS's
// gate_up_proj); any other is listed as not undone. A norm applied as (1 + w) has the gain 1 + w
// (NormGroup::offset).
std::vector<NormGroup> norm_groups(const Model& suspect, const ModelArchitecture& arch, uint64_t hidden) {
  struct Reader {
    std::string name;
    int axis;
    size_t dims;
  };
  struct Layer {
    std::map<std::string, std::string> norms;  // suffix -> name
    std::map<ResidualNorm, std::vector<Reader>> readers;
  };
  std::map<int, Layer> layers;
  std::vector<std::string> final_norms;
  std::map<std::string, float> offsets;  // norm name -> NormGroup::offset
  std::vector<Reader> heads;
  for (const auto& t : suspect.tensors()) {
    const TensorPlace p = arch.classify(t.name());
    if (!p.submodel.empty()) continue;
    const auto& shape = t.info->shape;
    if (p.role == TensorRole::kNorm) {
      const bool offset_one = p.view == TensorView::kNormOffsetOne;
      if ((p.view != TensorView::kPlain && !offset_one) || shape != std::vector<uint64_t>{hidden}) continue;
      offsets[t.name()] = offset_one ? 1.0f : 0.0f;
      if (p.layer >= 0) layers[p.layer].norms[p.suffix] = t.name();
      else final_norms.push_back(t.name());
      continue;
    }
    const ResidualRole role = residual_role(p.role);
    if (role.use != ResidualUse::kReads) continue;
    const int axis = residual_axis(p.role, p.view, shape, hidden);
    if (axis == kNoResidualAxis) continue;
    const Reader r{t.name(), axis, shape.size()};
    if (role.norm == ResidualNorm::kFinal) heads.push_back(r);
    else if (p.layer >= 0) layers[p.layer].readers[role.norm].push_back(r);
  }
  const auto group = [&offsets](const std::string& norm, const std::vector<Reader>& readers) {
    NormGroup g{norm, offsets[norm], {}, {}, {}};
    for (const Reader& r : readers) {
      const bool last = r.axis >= 0 && size_t(r.axis) + 1 == r.dims, inner = r.axis == 1 && r.dims == 3;
      (last ? g.readers : inner ? g.inner_readers : g.not_undone).push_back(r.name);
    }
    return g;
  };
  std::vector<NormGroup> out;
  for (auto& entry : layers) {
    const Layer& layer = entry.second;
    const auto has = [&layer](const char* suffix) { return layer.norms.count(suffix) > 0; };
    for (const auto& [kind, readers] : layer.readers) {
      const char* suffix = layer_norm_suffix(kind, has);
      if (!has(suffix)) continue;
      NormGroup g = group(layer.norms.at(suffix), readers);
      if (!g.readers.empty() || !g.inner_readers.empty()) out.push_back(std::move(g));
    }
  }
  if (final_norms.size() == 1 && !heads.empty()) {
    NormGroup g = group(final_norms[0], heads);
    if (!g.readers.empty()) out.push_back(std::move(g));
  }
  return out;
}

std::vector<float> load_all(const ModelTensor& t) {
  std::vector<float> v(t.info->numel());
  load_range(t, 0, v.size(), v.data());
  t.shard->release(*t.info);
  return v;
}

// The gains a norm applies: its stored weights plus the group's offset.
std::vector<float> load_gains(const ModelTensor& t, float offset) {
  std::vector<float> v = load_all(t);
  for (float& x : v) x += offset;
  return v;
}

// The candidates' name of a suspect slot (another layer's after stacking), else the same name.
std::string compared_name(const Alignment& a, const std::string& name) {
  const auto it = a.tensors.find(name);
  return it != a.tensors.end() && !it->second.candidate.empty() ? it->second.candidate : name;
}

// The slot of `name`, created as "the suspect's tensor as stored" on first use.
AlignedTensor& slot_of(const Model& suspect, Alignment* out, const std::string& name) {
  auto it = out->tensors.find(name);
  if (it == out->tensors.end()) {
    AlignedTensor a;
    a.source = name;
    a.gather = TensorGather::of(suspect.find(name)->info->shape, false);
    it = out->tensors.emplace(name, std::move(a)).first;
  }
  return it->second;
}

bool all_ones(const std::vector<float>& v) {
  return !v.empty() && std::all_of(v.begin(), v.end(), [](float x) { return x == 1.0f; });
}

// Rows `rows` (over every axis but the last) of a reader of the suspect as compared: through its
// slot (permutations, rotation) when it has one. Only those rows are read and undone: undoing a
// rotated model's every reader whole was a third of its sampled assay.
void load_reader_rows(const Model& suspect, const Alignment& a, const std::string& name,
                      const std::vector<uint64_t>& rows, std::vector<float>* values) {
  const ModelTensor& t = *suspect.find(name);
  const uint64_t length = t.info->shape.back();
  values->resize(rows.size() * length);
  if (a.tensors.count(name)) {
    load_aligned_rows(suspect, a, name, rows, length, values->data());
    return;
  }
  for (size_t r = 0; r < rows.size(); ++r)
    load_range(t, rows[r] * length, length, values->data() + r * length);
}

// Per column j over the rows read: G_j = <C_a,j, C_b,j> (k x k), M_j = <C_c,j, S_j> and
// SS_j = |S_j|^2.
struct ColumnStats {
  std::vector<Mat> gram;
  std::vector<Vec> cross;
  std::vector<double> ss;
};

// Adds column j's `count` elements of the suspect (s) and of every candidate (c[a]) to the stats.
void add_column(ColumnStats* stats, size_t j, const float* s, const std::vector<const float*>& c, size_t count) {
  const auto k = Eigen::Index(c.size());
  for (size_t x = 0; x < count; ++x) {
    stats->ss[j] += double(s[x]) * s[x];
    for (Eigen::Index a = 0; a < k; ++a) {
      const double ca = c[size_t(a)][x];
      stats->cross[j](a) += ca * s[x];
      for (Eigen::Index b = a; b < k; ++b) stats->gram[j](a, b) += ca * c[size_t(b)][x];
    }
  }
}

// Relative residual of S diag(1/g) against sum_c w_c C_c over the accumulated columns.
double relative_residual(const ColumnStats& s, const Vec& g, const Vec& w) {
  double num = 0, den = 0;
  for (size_t j = 0; j < s.ss.size(); ++j) {
    const double inv = 1 / g(Eigen::Index(j));
    num += s.ss[j] * inv * inv - 2 * inv * w.dot(s.cross[j]) + w.dot(s.gram[j] * w);
    den += s.ss[j] * inv * inv;
  }
  return den > 0 ? std::sqrt(std::max(0.0, num) / den) : 1.0;
}

// Least-squares blend weights for fixed gains g.
Vec blend_weights(const ColumnStats& s, const Vec& g) {
  const Eigen::Index k = s.cross.empty() ? 0 : s.cross[0].size();
  Mat a = Mat::Zero(k, k);
  Vec b = Vec::Zero(k);
  for (size_t j = 0; j < s.ss.size(); ++j) a += s.gram[j], b += s.cross[j] / g(Eigen::Index(j));
  a += 1e-12 * (a.trace() + 1e-300) * Mat::Identity(k, k);
  return a.ldlt().solve(b);
}

}  // namespace

void gain_stage(const Model& suspect, const std::vector<const Model*>& candidates, Alignment* out) {
  const ModelArchitecture sa = detect_architecture(suspect);
  const ModelTensor* embedding = suspect.find(embedding_name(sa, suspect));
  if (!embedding || embedding->info->shape.size() != 2 || candidates.empty()) return;
  const uint64_t hidden = embedding->info->shape[1];
  for (const NormGroup& group : norm_groups(suspect, sa, hidden)) {
    if (!all_ones(load_gains(*suspect.find(group.norm), group.offset))) continue;
    // The candidates holding the norm and every reader in the suspect's shapes.
    std::vector<const Model*> used;
    std::vector<std::vector<float>> gains;
    bool folded_somewhere = false;
    for (const Model* m : candidates) {
      const ModelTensor* n = m->find(compared_name(*out, group.norm));
      bool ok = n && n->info->shape == std::vector<uint64_t>{hidden};
      for (const auto* list : {&group.readers, &group.inner_readers}) {
        for (const std::string& r : *list) {
          const ModelTensor* t = m->find(compared_name(*out, r));
          ok = ok && t && t->info->shape == suspect.find(r)->info->shape;
        }
      }
      if (!ok) continue;
      used.push_back(m);
      gains.push_back(load_gains(*n, group.offset));
      folded_somewhere |= !all_ones(gains.back());
    }
    if (used.empty() || !folded_somewhere) continue;  // candidates' gains all ones: nothing folded to find
    // Any scale already on a reader's stream axis (none today) would be mixed up with the gain: skip.
    bool scaled = false;
    for (const std::string& r : group.readers) {
      const auto slot = out->tensors.find(r);
      scaled |= slot != out->tensors.end() && !slot->second.col_scale.empty();
    }
    for (const std::string& r : group.inner_readers) {
      const auto slot = out->tensors.find(r);
      scaled |= slot != out->tensors.end() && !slot->second.row_scale.empty();
    }
    if (scaled) continue;
    const auto k = Eigen::Index(used.size());
    ColumnStats s{std::vector<Mat>(hidden, Mat::Zero(k, k)), std::vector<Vec>(hidden, Vec::Zero(k)),
                  std::vector<double>(hidden, 0.0)};
    std::vector<float> values;
    for (const std::string& r : group.readers) {
      const ModelTensor& st = *suspect.find(r);
      const std::string cname = compared_name(*out, r);
      const uint64_t rows = st.info->numel() / hidden;  // [out, hidden], or stacked [E, out, hidden]
      const uint64_t step = std::max<uint64_t>(1, rows / kGainRows);
      std::vector<uint64_t> read;
      for (uint64_t i = 0; i < rows; i += step) read.push_back(i);
      load_reader_rows(suspect, *out, r, read, &values);
      std::vector<std::vector<float>> crow(static_cast<size_t>(k), std::vector<float>(hidden));
      std::vector<const float*> cj(static_cast<size_t>(k));
      std::vector<const ModelTensor*> ct;
      for (const Model* m : used) ct.push_back(m->find(cname));
      for (uint64_t i = 0; i < rows; i += step) {
        for (Eigen::Index c = 0; c < k; ++c) load_range(*ct[size_t(c)], i * hidden, hidden, crow[size_t(c)].data());
        const float* sv = values.data() + i / step * hidden;
        for (uint64_t j = 0; j < hidden; ++j) {
          for (Eigen::Index c = 0; c < k; ++c) cj[size_t(c)] = crow[size_t(c)].data() + j;
          add_column(&s, j, sv + j, cj, 1);
        }
      }
      for (const ModelTensor* t : ct) t->shard->release(*t->info);
      st.shard->release(*st.info);
    }
    // Stacked [E, hidden, out]: column j of the fit is row j of each expert's matrix. Whole experts,
    // evenly spaced, about kGainRows x hidden elements in all.
    for (const std::string& r : group.inner_readers) {
      const ModelTensor& st = *suspect.find(r);
      const uint64_t experts = st.info->shape[0], width = st.info->shape[2];
      const uint64_t step = std::max<uint64_t>(1, experts / std::max<uint64_t>(1, kGainRows / std::max<uint64_t>(1, width)));
      std::vector<uint64_t> read;  // every row of the experts used, in order
      for (uint64_t e = 0; e < experts; e += step) {
        for (uint64_t j = 0; j < hidden; ++j) read.push_back(e * hidden + j);
      }
      load_reader_rows(suspect, *out, r, read, &values);
      std::vector<std::vector<float>> crow(static_cast<size_t>(k), std::vector<float>(width));
      std::vector<const float*> cj(static_cast<size_t>(k));
      for (Eigen::Index c = 0; c < k; ++c) cj[size_t(c)] = crow[size_t(c)].data();
      std::vector<const ModelTensor*> ct;
      for (const Model* m : used) ct.push_back(m->find(compared_name(*out, r)));
      for (uint64_t e = 0; e < experts; e += step) {
        for (uint64_t j = 0; j < hidden; ++j) {
          const uint64_t at = (e * hidden + j) * width;
          for (Eigen::Index c = 0; c < k; ++c) load_range(*ct[size_t(c)], at, width, crow[size_t(c)].data());
          add_column(&s, j, values.data() + (e / step * hidden + j) * width, cj, width);
        }
      }
      for (const ModelTensor* t : ct) t->shard->release(*t->info);
      st.shard->release(*st.info);
    }
    for (Mat& g : s.gram) {
      const Mat full = g.selfadjointView<Eigen::Upper>();
      g = full;
    }
    // Alternate from g = 1: w for g, then g_j = <S_j, F_j> / |F_j|^2 for w.
    Vec g = Vec::Ones(Eigen::Index(hidden));
    const Vec w1 = blend_weights(s, g);
    const double before = relative_residual(s, g, w1);
    Vec w = w1;
    bool finite = true;
    for (int it = 0; it < kAlternations && finite; ++it) {
      for (uint64_t j = 0; j < hidden; ++j) {
        const double f2 = w.dot(s.gram[j] * w);
        const double v = f2 > 0 ? w.dot(s.cross[j]) / f2 : 0;
        finite &= std::isfinite(v) && v != 0;
        g(Eigen::Index(j)) = v;
      }
      if (finite) w = blend_weights(s, g);
    }
    if (!finite) continue;
    // Fix the free scale: g / m and m w fit the readers equally; choose m so that g matches the
    // candidates' gains blended with w (least squares: m^2 = <g, h> / |h|^2).
    Vec h = Vec::Zero(Eigen::Index(hidden));
    for (Eigen::Index c = 0; c < k; ++c) {
      h += w(c) * Eigen::Map<const Eigen::VectorXf>(gains[size_t(c)].data(), Eigen::Index(hidden)).cast<double>();
    }
    const double m2 = g.dot(h) / h.squaredNorm();
    if (!(m2 > 0) || !std::isfinite(m2)) continue;
    const double m = std::sqrt(m2);
    g /= m, w *= m, h *= m;
    const double after = relative_residual(s, g, w);
    // Accept when the gains explain the readers: the fit is close, and the gains take away at least
    // 19% of the unscaled fit's residual energy (a free gain per column removes about 1 / rows of it
    // by chance; further training on top of a folded merge leaves the rest).
    if (!(after < kGainResidual) || !(after < kGainImprovement * before)) continue;
    const double relative_error = (g - h).norm() / h.norm();
    std::vector<float> scale(hidden);
    for (uint64_t j = 0; j < hidden; ++j) scale[j] = float(g(Eigen::Index(j)));
    for (const std::string& r : group.readers) {
      AlignedTensor& a = slot_of(suspect, out, r);
      a.col_scale.clear();
      for (uint64_t m = 0; m < a.gather.matrices; ++m) a.col_scale.insert(a.col_scale.end(), scale.begin(), scale.end());
      a.col_divides = true;
    }
    for (const std::string& r : group.inner_readers) {
      AlignedTensor& a = slot_of(suspect, out, r);
      const uint64_t experts = suspect.find(r)->info->shape[0];
      a.row_scale.clear();
      for (uint64_t e = 0; e < experts; ++e) a.row_scale.insert(a.row_scale.end(), scale.begin(), scale.end());
      a.row_divides = true;
    }
    std::vector<std::string> readers = group.readers;
    readers.insert(readers.end(), group.inner_readers.begin(), group.inner_readers.end());
    AlignedTensor& norm = slot_of(suspect, out, group.norm);
    norm.col_scale = scale, norm.col_divides = false;  // the stored unit gains times g
    norm.col_offset = group.offset;
    nlohmann::json entry = {{"norm", group.norm},
                            {"readers", readers},
                            {"not_undone", group.not_undone},
                            {"relative_error", relative_error},
                            {"residual_before", before},
                            {"residual_after", after},
                            {"gain_min", g.minCoeff()},
                            {"gain_max", g.maxCoeff()},
                            {"blend_weights", std::vector<double>(w.data(), w.data() + w.size())}};
    if (hidden <= kGainsReported) {
      std::vector<double> rounded(hidden);
      for (uint64_t j = 0; j < hidden; ++j) rounded[j] = std::round(g(Eigen::Index(j)) * 1e6) / 1e6;
      entry["gains"] = rounded;
    }
    out->folded_norms.push_back(std::move(entry));
  }
}

}  // namespace alloy::detail
