// The permutable units of each decoder layer from the tensors' roles, views and shapes (see
// alloy/core/units.h).
#include "alloy/core/units.h"

#include <algorithm>
#include <map>
#include <numeric>

#include "alloy/core/model.h"

namespace alloy {
namespace {

struct Entry {
  std::string name;
  TensorPlace place;
  std::vector<uint64_t> shape;
};

// "a.b.mlp.gate_proj.weight" -> "a.b.mlp."; "a.b.mlp.experts.gate_up_proj" -> "a.b.mlp.experts.".
std::string key_of(std::string name) {
  for (const char* tail : {".weight", ".bias"}) {
    const std::string t = tail;
    if (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0) {
      name.resize(name.size() - t.size());
      break;
    }
  }
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? "" : name.substr(0, dot + 1);
}

// The expert index in "....experts.<e>.<part>", or -1.
int expert_of(const Entry& e) {
  if (e.place.expert >= 0) return e.place.expert;
  const size_t at = e.place.suffix.find("experts.");
  if (at == std::string::npos) return -1;
  size_t i = at + 8;
  int value = 0, digits = 0;
  while (i < e.place.suffix.size() && e.place.suffix[i] >= '0' && e.place.suffix[i] <= '9' && digits < 7) {
    value = value * 10 + (e.place.suffix[i++] - '0');
    ++digits;
  }
  return digits > 0 && digits < 7 && i < e.place.suffix.size() && e.place.suffix[i] == '.' ? value : -1;
}

bool is_bias(const Entry& e) {
  return e.shape.size() == 1;
}

std::string shape_text(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

ItemSlice slice(const std::string& tensor, bool rows, uint64_t offset, uint64_t stride, uint64_t width = 1,
                int matrix = -1, bool signature = true) {
  ItemSlice s;
  s.tensor = tensor, s.rows = rows, s.offset = offset, s.stride = stride, s.width = width;
  s.matrix = matrix, s.signature = signature;
  return s;
}

// The tensors of one layer, by role.
struct LayerTensors {
  std::vector<const Entry*> all;
  const Entry* find(TensorRole role, bool bias = false) const {
    for (const Entry* e : all) {
      if (e->place.role == role && is_bias(*e) == bias) return e;
    }
    return nullptr;
  }
};

// A dense MLP (or shared expert) from separate gate/up/down [I, H], [I, H], [H, I], or a fused
// gate_up [2I, H] with rows [gate | up].
void dense_unit(const LayerTensors& t, const std::string& name, TensorRole gate_role, TensorRole up_role,
                TensorRole down_role, TensorRole fused_role, LayerUnits* out) {
  const Entry* down = t.find(down_role);
  const Entry* gate = t.find(gate_role);
  const Entry* up = t.find(up_role);
  const Entry* fused = fused_role == TensorRole::kOther ? nullptr : t.find(fused_role);
  if (!down && !gate && !up && !fused) return;
  const auto refuse = [&](const std::string& why) { out->problems.push_back(name + ": " + why); };
  if (!down || down->shape.size() != 2) return refuse("no 2-D down projection");
  MlpUnit u;
  u.name = name;
  u.hidden = down->shape[0];
  u.neurons = down->shape[1];
  u.down = slice(down->name, false, 0, 1);
  if (fused && !gate && !up) {
    if (fused->shape != std::vector<uint64_t>{2 * u.neurons, u.hidden}) {
      return refuse(fused->name + " has shape " + shape_text(fused->shape) + ", not [2 x " +
                    std::to_string(u.neurons) + ", " + std::to_string(u.hidden) + "]");
    }
    u.gate = slice(fused->name, true, 0, 1);
    u.up = slice(fused->name, true, u.neurons, 1);
    u.key = key_of(fused->name);
  } else {
    if (!gate || !up) return refuse("gate or up projection missing");
    const std::vector<uint64_t> want = {u.neurons, u.hidden};
    if (gate->shape != want || up->shape != want) {
      return refuse(gate->name + " / " + up->name + " do not have the shape " + shape_text(want));
    }
    u.gate = slice(gate->name, true, 0, 1);
    u.up = slice(up->name, true, 0, 1);
    u.key = key_of(gate->name);
  }
  out->mlps.push_back(std::move(u));
}

void attention_unit(const LayerTensors& t, int heads, int kv_heads, LayerUnits* out) {
  const Entry* q = t.find(TensorRole::kAttentionQ);
  const Entry* qb = t.find(TensorRole::kAttentionQB);
  const Entry* k = t.find(TensorRole::kAttentionK);
  const Entry* v = t.find(TensorRole::kAttentionV);
  const Entry* o = t.find(TensorRole::kAttentionO);
  const Entry* qkv = t.find(TensorRole::kAttentionQkv);
  const Entry* kvb = t.find(TensorRole::kAttentionKvB);
  if (!o || (!q && !qb && !qkv)) return;
  const auto refuse = [&](const std::string& why) { out->problems.push_back("attention: " + why); };
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0) {
    return refuse("num_attention_heads / num_key_value_heads missing or inconsistent");
  }
  if (o->shape.size() != 2 || o->shape[1] % uint64_t(heads) != 0) return refuse(o->name + " is not [hidden, heads x d]");
  const uint64_t h = uint64_t(heads), g = uint64_t(kv_heads), od = o->shape[1] / h;
  AttentionUnit a;
  a.heads = heads, a.kv_heads = kv_heads;
  const auto bias = [&](TensorRole role, uint64_t count, uint64_t width, std::vector<ItemSlice>* into) {
    const Entry* b = t.find(role, true);
    if (b && b->shape[0] == count * width) into->push_back(slice(b->name, false, 0, width, width, -1, false));
  };
  if (kvb && (q || qb)) {
    // Multi-head latent attention: every head has its own k/v rows in kv_b_proj (no groups).
    const Entry* qw = qb ? qb : q;
    if (qw->shape.size() != 2 || qw->shape[0] % h || kvb->shape.size() != 2 || kvb->shape[0] % h) {
      return refuse(qw->name + " / " + kvb->name + " rows are not a multiple of the heads");
    }
    a.kv_heads = heads;
    a.key = key_of(kvb->name);
    a.q = {slice(qw->name, true, 0, qw->shape[0] / h, qw->shape[0] / h), slice(o->name, false, 0, od, od)};
    a.kv = {slice(kvb->name, true, 0, kvb->shape[0] / h, kvb->shape[0] / h)};
  } else if (qkv) {
    if (qkv->shape.size() != 2 || qkv->shape[0] != (h + 2 * g) * od) {
      return refuse(qkv->name + " has shape " + shape_text(qkv->shape) + ", not [(heads + 2 x kv_heads) x " +
                    std::to_string(od) + ", hidden]");
    }
    a.key = key_of(qkv->name);
    a.q = {slice(qkv->name, true, 0, od, od), slice(o->name, false, 0, od, od)};
    a.kv = {slice(qkv->name, true, h * od, od, od), slice(qkv->name, true, (h + g) * od, od, od)};
    const Entry* b = t.find(TensorRole::kAttentionQkv, true);
    if (b && b->shape[0] == (h + 2 * g) * od) {
      a.q.push_back(slice(b->name, false, 0, od, od, -1, false));
      a.kv.push_back(slice(b->name, false, h * od, od, od, -1, false));
      a.kv.push_back(slice(b->name, false, (h + g) * od, od, od, -1, false));
    }
  } else {
    if (!q || !k || !v || q->shape.size() != 2 || k->shape.size() != 2 || v->shape != k->shape) {
      return refuse("q/k/v projections missing or of different shapes");
    }
    const uint64_t hd = k->shape[0] / g;
    const uint64_t qw = q->shape[0] / h;
    const bool gated = q->place.view == TensorView::kGatedQ;
    if (k->shape[0] % g || q->shape[0] % h || hd != od || qw != (gated ? 2 * hd : hd)) {
      return refuse("q " + shape_text(q->shape) + ", k " + shape_text(k->shape) + " and o " + shape_text(o->shape) +
                    " do not split into " + std::to_string(heads) + " / " + std::to_string(kv_heads) + " heads" +
                    (gated ? " (gated q: 2 x head_dim rows per head)" : ""));
    }
    a.key = key_of(q->name);
    a.q = {slice(q->name, true, 0, qw, qw), slice(o->name, false, 0, od, od)};
    a.kv = {slice(k->name, true, 0, hd, hd), slice(v->name, true, 0, hd, hd)};
    bias(TensorRole::kAttentionQ, h, qw, &a.q);
    bias(TensorRole::kAttentionK, g, hd, &a.kv);
    bias(TensorRole::kAttentionV, g, hd, &a.kv);
  }
  // Per-head scalars (GPT-OSS attention sinks) move with the query heads.
  for (const Entry* e : t.all) {
    if (e->place.role == TensorRole::kAttentionSinks && e->shape == std::vector<uint64_t>{h}) {
      a.q.push_back(slice(e->name, false, 0, 1, 1, -1, false));
    }
  }
  out->attention = std::move(a);
}

// Routed experts: one tensor per part and expert (a name template), or stacked 3-D tensors.
void expert_group(const LayerTensors& t, uint64_t hidden, LayerUnits* out) {
  const auto refuse = [&](const std::string& why) { out->problems.push_back("experts: " + why); };
  std::map<int, std::vector<const Entry*>> apart;
  const Entry *gate_up = nullptr, *gate3 = nullptr, *up3 = nullptr, *down3 = nullptr;
  std::vector<const Entry*> biases;
  for (const Entry* e : t.all) {
    const TensorRole r = e->place.role;
    const bool part = r == TensorRole::kExpertGate || r == TensorRole::kExpertUp || r == TensorRole::kExpertDown ||
                      r == TensorRole::kExpertGateUp || r == TensorRole::kExpertBias;
    if (!part) continue;
    const int x = expert_of(*e);
    if (x >= 0 && e->shape.size() <= 2) {
      apart[x].push_back(e);
    } else if (e->shape.size() == 3) {
      if (r == TensorRole::kExpertGateUp) gate_up = e;
      if (r == TensorRole::kExpertGate) gate3 = e;
      if (r == TensorRole::kExpertUp) up3 = e;
      if (r == TensorRole::kExpertDown) down3 = e;
    } else if (r == TensorRole::kExpertBias && e->shape.size() == 2) {
      biases.push_back(e);
    }
  }
  if (apart.empty() && !down3) return;
  ExpertGroup group;
  if (!apart.empty()) {
    if (apart.begin()->first != 0 || apart.rbegin()->first + 1 != int(apart.size())) {
      return refuse("expert indices are not 0.." + std::to_string(apart.size() - 1));
    }
    for (auto& [x, expert_tensors] : apart) {
      // A plain reference: lambdas may not capture structured bindings before C++20's P1091
      // (clang 15, the fuzz build's compiler, refuses).
      auto& tensors = expert_tensors;
      const auto part = [&](TensorRole role) -> const Entry* {
        for (const Entry* e : tensors) {
          if (e->place.role == role && e->shape.size() == 2) return e;
        }
        return nullptr;
      };
      const Entry *g = part(TensorRole::kExpertGate), *u = part(TensorRole::kExpertUp), *d = part(TensorRole::kExpertDown);
      if (!g || !u || !d || d->shape.size() != 2 || g->shape != std::vector<uint64_t>{d->shape[1], d->shape[0]} ||
          u->shape != g->shape) {
        return refuse("expert " + std::to_string(x) + " lacks a gate, up or down projection of matching shapes");
      }
      MlpUnit m;
      m.name = "experts." + std::to_string(x);
      m.key = key_of(g->name);
      m.hidden = d->shape[0], m.neurons = d->shape[1];
      m.gate = slice(g->name, true, 0, 1);
      m.up = slice(u->name, true, 0, 1);
      m.down = slice(d->name, false, 0, 1);
      std::sort(tensors.begin(), tensors.end(), [](const Entry* a, const Entry* b) { return a->place.suffix < b->place.suffix; });
      std::vector<std::string> names;
      for (const Entry* e : tensors) names.push_back(e->name);
      if (!group.apart.empty() && group.apart[0].size() != names.size()) {
        return refuse("expert " + std::to_string(x) + " has a different set of tensors than expert 0");
      }
      group.apart.push_back(std::move(names));
      group.experts.push_back(std::move(m));
    }
    group.key = key_of(group.experts[0].key.substr(0, group.experts[0].key.size() - 1));
    const size_t at = group.key.rfind("experts.");
    if (at != std::string::npos) group.key.resize(at);
  } else {
    const uint64_t E = down3->shape[0];
    const auto& d = down3->shape;
    bool linear = false;  // [E, out, in] like torch.nn.Linear; else stored [E, in, out]
    uint64_t inter = 0;
    bool interleaved = false;
    if (gate_up && !gate3 && !up3) {
      const auto& s = gate_up->shape;
      if (s[0] != E) return refuse(gate_up->name + " and " + down3->name + " hold different expert counts");
      if (s[1] == 2 * d[2] && s[2] == d[1]) {
        linear = true, inter = d[2];
      } else if (s[2] == 2 * d[1] && s[1] == d[2]) {
        inter = d[1];
      } else {
        return refuse(gate_up->name + " " + shape_text(s) + " does not fit " + down3->name + " " + shape_text(d));
      }
      interleaved = gate_up->place.view == TensorView::kExpertsInterleavedGateUp;
    } else if (gate3 && up3 && !gate_up) {
      if (gate3->shape != up3->shape || gate3->shape[0] != E) return refuse("stacked gate and up differ in shape");
      linear = gate3->shape[2] == hidden && d[1] == hidden;
      inter = linear ? d[2] : d[1];
      if (gate3->shape != (linear ? std::vector<uint64_t>{E, inter, hidden} : std::vector<uint64_t>{E, hidden, inter})) {
        return refuse(gate3->name + " " + shape_text(gate3->shape) + " does not fit " + down3->name + " " + shape_text(d));
      }
    } else {
      return refuse("stacked experts need gate_up (or gate and up) beside " + down3->name);
    }
    const uint64_t h = linear ? d[1] : d[2];
    group.key = key_of(down3->name);
    const size_t at = group.key.rfind("experts.");
    if (at != std::string::npos) group.key.resize(at);
    for (const Entry* e : {gate_up, gate3, up3, down3}) {
      if (e) group.stacked.push_back(e->name);
    }
    for (uint64_t x = 0; x < E; ++x) {
      MlpUnit m;
      m.name = "experts." + std::to_string(x);
      m.key = key_of(down3->name) + std::to_string(x) + ".";
      m.hidden = h, m.neurons = inter;
      const int mx = int(x);
      const bool along_rows = linear;  // gate/up neurons are rows of [out, in]
      if (gate_up) {
        const std::string& n = gate_up->name;
        m.gate = interleaved ? slice(n, along_rows, 0, 2, 1, mx) : slice(n, along_rows, 0, 1, 1, mx);
        m.up = interleaved ? slice(n, along_rows, 1, 2, 1, mx) : slice(n, along_rows, inter, 1, 1, mx);
      } else {
        m.gate = slice(gate3->name, along_rows, 0, 1, 1, mx);
        m.up = slice(up3->name, along_rows, 0, 1, 1, mx);
      }
      m.down = slice(down3->name, !along_rows, 0, 1, 1, mx);
      for (const Entry* b : biases) {
        if (b->shape[0] != E) continue;
        const bool gate_up_bias = b->place.view == TensorView::kExpertsInterleavedGateUp ||
                                  b->place.view == TensorView::kExpertsFusedGateUp;
        if (gate_up_bias && b->shape[1] == 2 * inter) {  // neuron-indexed like gate_up's columns
          m.extra.push_back(interleaved ? slice(b->name, false, 0, 2, 1, mx, false) : slice(b->name, false, 0, 1, 1, mx, false));
          m.extra.push_back(interleaved ? slice(b->name, false, 1, 2, 1, mx, false)
                                        : slice(b->name, false, inter, 1, 1, mx, false));
        }
      }
      group.experts.push_back(std::move(m));
    }
    for (const Entry* b : biases) {
      if (b->shape[0] == E) group.stacked.push_back(b->name);
    }
  }
  const uint64_t E = group.experts.size();
  for (const Entry* e : t.all) {
    if (e->place.role == TensorRole::kRouter && e->shape.size() == 2 && e->shape[0] == E) {
      group.router.push_back(slice(e->name, true, 0, 1));
      group.key = key_of(e->name);
    } else if ((e->place.role == TensorRole::kRouterBias || e->place.role == TensorRole::kRouter) &&
               e->shape == std::vector<uint64_t>{E}) {
      group.router.push_back(slice(e->name, false, 0, 1, 1, -1, false));
    }
  }
  out->experts = std::move(group);
}

int config_int(const nlohmann::json& c, const char* key, int fallback) {
  const auto it = c.find(key);
  return it != c.end() && it->is_number_integer() ? it->get<int>() : fallback;
}

}  // namespace

int named_layer_count(const ModelArchitecture& arch, const Model& model) {
  int count = 0, layer = -1;
  std::string suffix;
  for (const auto& t : model.tensors()) {
    if (arch.split_layer(t.name(), &layer, &suffix)) count = std::max(count, layer + 1);
  }
  return count;
}

std::string embedding_name(const ModelArchitecture& arch, const Model& model) {
  for (const auto& t : model.tensors()) {
    const TensorPlace p = arch.classify(t.name());
    if (p.role == TensorRole::kEmbedding && p.submodel.empty() && p.layer < 0 && t.info->shape.size() == 2) {
      return t.name();
    }
  }
  return "model.embed_tokens.weight";
}

std::vector<LayerUnits> model_units(const ModelArchitecture& arch, const Model& model) {
  std::vector<Entry> entries;
  for (const auto& t : model.tensors()) {
    Entry e{t.name(), arch.classify(t.name()), t.info->shape};
    if (!e.place.submodel.empty() || e.place.layer < 0) continue;
    int layer;
    std::string suffix;
    if (!arch.split_layer(t.name(), &layer, &suffix)) continue;  // a sub-model's blocks
    entries.push_back(std::move(e));
  }
  std::vector<LayerUnits> out(size_t(named_layer_count(arch, model)));
  std::vector<LayerTensors> by_layer(out.size());
  for (const Entry& e : entries) by_layer[size_t(e.place.layer)].all.push_back(&e);
  const nlohmann::json& config = arch.text_config_of(model.config());
  const int heads = config_int(config, "num_attention_heads", 0);
  const int kv_heads = config_int(config, "num_key_value_heads", heads);
  const int hidden = config_int(config, "hidden_size", 0);
  for (size_t l = 0; l < out.size(); ++l) {
    LayerUnits& u = out[l];
    u.layer = int(l);
    const LayerTensors& t = by_layer[l];
    attention_unit(t, heads, kv_heads, &u);
    dense_unit(t, "mlp", TensorRole::kMlpGate, TensorRole::kMlpUp, TensorRole::kMlpDown, TensorRole::kMlpGateUp, &u);
    dense_unit(t, "shared_expert", TensorRole::kSharedExpertGate, TensorRole::kSharedExpertUp,
               TensorRole::kSharedExpertDown, TensorRole::kOther, &u);
    expert_group(t, uint64_t(std::max(hidden, 0)), &u);
  }
  return out;
}

TensorGather TensorGather::of(const std::vector<uint64_t>& shape, bool stacked) {
  TensorGather g;
  uint64_t numel = 1;
  for (uint64_t d : shape) numel *= d;
  g.matrices = stacked && !shape.empty() ? shape[0] : 1;
  g.cols = shape.empty() ? 1 : shape.back();
  g.rows = g.matrices * g.cols != 0 ? numel / (g.matrices * g.cols) : 0;
  return g;
}

bool TensorGather::identity() const {
  const auto is_identity = [](const std::vector<uint32_t>& p, uint64_t period) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i] != i % period) return false;
    }
    return true;
  };
  return is_identity(matrix, matrices) && is_identity(row, rows) && is_identity(col, cols);
}

void TensorGather::permute_items(const ItemSlice& s, const std::vector<uint32_t>& p) {
  const uint64_t m = s.matrix >= 0 ? uint64_t(s.matrix) : 0;
  const uint64_t n = s.rows ? rows : cols;
  std::vector<uint32_t>& map = s.rows ? row : col;
  if (map.empty()) {
    map.resize(matrices * n);
    for (uint64_t i = 0; i < map.size(); ++i) map[i] = uint32_t(i % n);
  }
  for (size_t j = 0; j < p.size(); ++j) {
    for (uint64_t k = 0; k < s.width; ++k) map[m * n + s.index(j, k)] = uint32_t(s.index(p[j], k));
  }
}

void TensorGather::permute_matrices(const std::vector<uint32_t>& p) {
  matrix = p;
}

void TensorGather::apply(const float* in, float* out) const {
  const uint64_t span = rows * cols;
  for (uint64_t m = 0; m < matrices; ++m) {
    const float* src = in + (matrix.empty() ? m : matrix[m]) * span;
    for (uint64_t r = 0; r < rows; ++r) {
      const float* line = src + (row.empty() ? r : row[m * rows + r]) * cols;
      float* o = out + (m * rows + r) * cols;
      if (col.empty()) {
        std::copy(line, line + cols, o);
      } else {
        const uint32_t* c = col.data() + m * cols;
        for (uint64_t i = 0; i < cols; ++i) o[i] = line[c[i]];
      }
    }
  }
}

}  // namespace alloy
