// The merge executor: streams a MergePlan through the methods into a staged output directory.
#include <algorithm>
#include <array>
#include <map>
#include <regex>

#include "alloy/core/error.h"
#include "alloy/core/evidence.h"
#include "alloy/core/file_util.h"
#include "alloy/core/hash_cache.h"
#include "alloy/core/kernels.h"
#include "alloy/core/parallel.h"
#include "alloy/core/safetensors.h"
#include "alloy/core/sha256.h"
#include "alloy/core/test_hooks.h"
#include "alloy/core/writer.h"
#include "alloy/merge/lora.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/model_card.h"
#include "alloy/merge/provenance.h"
#include "held_budget.h"
#include "merge_chunked.h"
#include "methods/method_util.h"
#include "methods/sparsify.h"
#include "source_reads.h"
#include "tokenizer_plan.h"
#include "write_behind.h"

namespace alloy {
namespace fs = std::filesystem;
using detail::adapter_of;
using detail::BufferPool;
using detail::check_overflow;
using detail::crop;
using detail::EmitBytes;
using detail::merge_chunked;
using detail::numel;
using detail::read_whole;
using detail::SourceBytes;
using detail::WriteBehind;
namespace {

void load_sources(const MergePlan& plan, const PlannedTensor& t, BufferPool& pool, MergeContext* ctx,
                  const std::vector<SourceBytes>* given);
void map_sources(const MergePlan& plan, const PlannedTensor& t, BufferPool& pool, MergeContext* ctx);
void merge_loaded(const MergePlan& plan, const PlannedTensor& t, const MergeOptions& options, BufferPool& pool,
                  WriteBehind& behind, const EmitBytes& emit, MergeContext& ctx);

// `given`: the sources' bytes already gathered (fused experts), one per source, each of t.shape;
// null to read the planned source tensors.
void merge_tensor(const MergePlan& plan, const PlannedTensor& t, const MergeOptions& options, BufferPool& pool,
                  WriteBehind& behind, const EmitBytes& emit, const std::vector<SourceBytes>* given = nullptr) {
  const uint64_t random_seed = options.random_seed;
  MergeContext ctx = planned_context(t, random_seed);
  for (const PlannedSource& s : t.sources) {
    ctx.sources.push_back({nullptr, s.params, s.is_base, plan.model_names[s.model]});
  }
  // Chunked when the method allows it and every conversion exists (else the whole-tensor path
  // reports the dtype that cannot be converted: nothing may throw inside the parallel chunks).
  bool convertible = can_store_from_f32(t.out_dtype);
  for (size_t k = 0; k < t.sources.size(); ++k) {
    const ModelTensor* input = given ? (*given)[k].input : plan.models[t.sources[k].model]->find(t.sources[k].tensor);
    convertible = convertible && can_load_as_f32(input->info->dtype);
  }
  // Embeddings under a tokenizer spec: every source read whole, then mapped token by token.
  const bool mapped = plan.tokenizer && t.is_embedding;
  if (const auto chunked = convertible && !mapped ? plan.method->chunked(ctx) : nullptr) {
    merge_chunked(plan, t, ctx, *chunked, pool, behind, emit, options.clamp_overflow, given);
    return;
  }
  if (mapped) {
    map_sources(plan, t, pool, &ctx);
  } else {
    load_sources(plan, t, pool, &ctx, given);
  }
  merge_loaded(plan, t, options, pool, behind, emit, ctx);
}

void load_sources(const MergePlan& plan, const PlannedTensor& t, BufferPool& pool, MergeContext* ctx,
                  const std::vector<SourceBytes>* given) {
  const uint64_t n = numel(t.shape);
  for (size_t k = 0; k < t.sources.size(); ++k) {
    const PlannedSource& s = t.sources[k];
    const ModelTensor* input = given ? (*given)[k].input : plan.models[s.model]->find(s.tensor);
    const TensorInfo& info = *input->info;
    float* values = pool.get(k, n);
    const uint8_t* raw = given ? (*given)[k].whole : nullptr;
    if (raw == nullptr) {
      uint8_t* buffer = pool.bytes(t.sources.size() + 2, info.nbytes());
      read_whole(plan, s, *input, buffer, pool, t.sources.size() + 3);
      raw = buffer;
    }
    if (info.shape == t.shape) {
      load_as_f32(info.dtype, raw, n, values);
    } else {
      float* full = pool.get(t.sources.size() + 1, info.numel());
      load_as_f32(info.dtype, raw, info.numel(), full);
      crop(full, info.shape, values, t.shape);
    }
    // "Each input tensor is cast to dtype when loaded."
    if (info.dtype != t.compute_dtype) round_to(t.compute_dtype, values, n);
    ctx->sources[k].values = values;
  }
}

void map_sources(const MergePlan& plan, const PlannedTensor& t, BufferPool& pool, MergeContext* ctx) {
  const size_t count = t.sources.size();
  std::vector<std::vector<float>> whole(count);
  std::vector<const float*> inputs;
  std::vector<uint64_t> rows;
  std::vector<size_t> models;
  std::vector<float*> outputs;
  for (size_t k = 0; k < count; ++k) {
    const TensorInfo& info = *plan.models[t.sources[k].model]->find(t.sources[k].tensor)->info;
    std::vector<uint8_t> raw(info.nbytes());
    read_whole(plan, t.sources[k], *plan.models[t.sources[k].model]->find(t.sources[k].tensor), raw.data(), pool,
               count + 3);
    whole[k].resize(info.numel());
    load_as_f32(info.dtype, raw.data(), info.numel(), whole[k].data());
    if (info.dtype != t.compute_dtype) round_to(t.compute_dtype, whole[k].data(), whole[k].size());
    inputs.push_back(whole[k].data());
    rows.push_back(info.shape[0]);
    models.push_back(t.sources[k].model);
  }
  for (size_t k = 0; k < count; ++k) outputs.push_back(pool.get(k, numel(t.shape)));
  map_embedding_rows(*plan.tokenizer, models, t.base_index, inputs, rows, t.shape[1], t.compute_dtype, outputs,
                     plan.model_names, t.name);
  for (size_t k = 0; k < count; ++k) ctx->sources[k].values = outputs[k];
}

void merge_loaded(const MergePlan& plan, const PlannedTensor& t, const MergeOptions& options, BufferPool& pool,
                  WriteBehind& behind, const EmitBytes& emit, MergeContext& ctx) {
  const uint64_t n = numel(t.shape);
  // In place, out is source 0's buffer; the output bytes then go to source 1's buffer (a new slot
  // for a single source), else to source 0's: the sources are dead once merged, and the bytes
  // never share a buffer with the floats they are converted from.
  const bool in_place = plan.method->merges_in_place();
  float* out = in_place ? pool.get(0, n) : pool.get(t.sources.size(), n);
  plan.method->merge(ctx, out);
  const size_t bad = count_non_finite(n, out);
  if (bad > 0) {
    throw Error(ErrorCode::kNonFinite, "tensor '" + t.name + "': the merge produced " + std::to_string(bad) +
                                           " NaN or infinite values; refusing to write a broken model");
  }
  if (t.out_dtype != t.compute_dtype) {
    const size_t overflows = parallel_reduce(
        n, kDefaultGrain, size_t{0},
        [&](size_t begin, size_t end) { return overflow_on_store(t.out_dtype, out + begin, end - begin, options.clamp_overflow); },
        [](size_t a, size_t b) { return a + b; });
    check_overflow(t, overflows, options.clamp_overflow);
  }
  const uint64_t nbytes = n * dtype_bits(t.out_dtype) / 8;
  uint8_t* bytes = pool.bytes(in_place ? 1 : 0, nbytes);
  store_from_f32(out, n, t.out_dtype, bytes);
  behind.wait();  // the windows queued before these bytes are written first, as before
  emit(0, bytes, nbytes);
}

// --- Fused MoE experts (MergeOptions::fuse_moe_experts; docs/methods.md, "MoE experts") ---
// A layer's per-expert tensors are merged as mergekit a6e4028 merges them after Transformers v5's
// conversion: gate and up of every expert as one [E, 2I, H] tensor (per expert the gate rows, then
// the up rows), down as one [E, H, I] tensor; the merged values are split back under the
// per-expert names, so the output keeps the inputs' layout.
struct FusedGroup {
  std::string name;                 // mergekit's fused name: "<layer>mlp.experts.gate_up_proj"
  std::vector<size_t> members;      // plan tensor indices, in fused order
  std::vector<uint64_t> shape;      // [E, 2I, H] or [E, H, I]
};

std::vector<FusedGroup> fused_expert_groups(const MergePlan& plan) {
  static const std::regex mixtral(R"(^(.*\.)block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$)");
  static const std::regex qwen(R"(^(.*\.)mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$)");
  // key (layer prefix, gate_up?) -> expert -> {gate or down, up}
  std::map<std::pair<std::string, bool>, std::map<int, std::array<long, 2>>> found;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    std::smatch m;
    const std::string& name = plan.tensors[i].name;
    if (!std::regex_match(name, m, mixtral) && !std::regex_match(name, m, qwen)) continue;
    const std::string part = m[3].str();
    const bool down = part == "w2" || part == "down_proj";
    const bool up = part == "w3" || part == "up_proj";
    if (m[2].str().size() > 6) continue;
    auto& experts = found[{m[1].str() + "mlp.", !down}];
    auto slot = experts.emplace(std::stoi(m[2].str()), std::array<long, 2>{-1, -1}).first;
    slot->second[up ? 1 : 0] = static_cast<long>(i);
  }
  std::vector<FusedGroup> groups;
  for (const auto& [key, experts] : found) {
    FusedGroup g;
    g.name = key.first + (key.second ? "experts.gate_up_proj" : "experts.down_proj");
    const PlannedTensor* first = nullptr;
    int expected = 0;
    for (const auto& [e, slot] : experts) {
      if (e != expected++ || slot[0] < 0 || (key.second && slot[1] < 0)) {
        throw Error(ErrorCode::kMissingTensor, "fused MoE experts: " + g.name + " lacks expert " +
                                                   std::to_string(expected - 1) + "'s " +
                                                   (key.second ? "gate or up" : "down") + " tensor");
      }
      for (long index : slot) {
        if (index < 0) continue;
        const PlannedTensor& t = plan.tensors[index];
        if (first == nullptr) first = &t;
        bool same = t.shape == first->shape && t.sources.size() == first->sources.size() &&
                    t.base_index == first->base_index && t.method_params == first->method_params &&
                    t.compute_dtype == first->compute_dtype && t.out_dtype == first->out_dtype &&
                    t.layer_t == first->layer_t && t.shape.size() == 2;
        for (size_t k = 0; same && k < t.sources.size(); ++k) {
          same = t.sources[k].model == first->sources[k].model && t.sources[k].params == first->sources[k].params &&
                 t.sources[k].is_base == first->sources[k].is_base;
        }
        if (!same) {
          throw Error(ErrorCode::kRecipe, "fused MoE experts: '" + t.name + "' differs from '" + first->name +
                                              "' in shape, sources or parameters, so " + g.name +
                                              " cannot be merged as one tensor (use --moe-experts per-expert)");
        }
        g.members.push_back(static_cast<size_t>(index));
      }
    }
    const uint64_t rows = first->shape[0], cols = first->shape[1];
    g.shape = {static_cast<uint64_t>(experts.size()), key.second ? 2 * rows : rows, cols};
    groups.push_back(std::move(g));
  }
  return groups;
}

void merge_fused_group(const MergePlan& plan, const FusedGroup& g, const MergeOptions& options, BufferPool& pool,
                       WriteBehind& behind, ShardedWriter& writer) {
  PlannedTensor fused = plan.tensors[g.members.front()];
  fused.name = g.name;
  fused.shape = g.shape;
  // Each source's bytes, gathered in fused order.
  std::vector<std::vector<uint8_t>> gathered(fused.sources.size());
  std::vector<TensorInfo> infos(fused.sources.size());
  std::vector<ModelTensor> views(fused.sources.size());
  std::vector<SourceBytes> given(fused.sources.size());
  for (size_t k = 0; k < fused.sources.size(); ++k) {
    const Model& model = *plan.models[fused.sources[k].model];
    for (size_t j = 0; j < g.members.size(); ++j) {
      const PlannedTensor& member = plan.tensors[g.members[j]];
      const ModelTensor* input = model.find(member.sources[k].tensor);
      const TensorInfo& info = *input->info;
      if (j == 0) {
        infos[k].name = g.name;
        infos[k].dtype = info.dtype;
        infos[k].shape = g.shape;
        gathered[k].resize(numel(g.shape) * dtype_bits(info.dtype) / 8);
      }
      if (info.dtype != infos[k].dtype || info.shape != member.shape) {
        throw Error(ErrorCode::kShapeMismatch, plan.model_names[fused.sources[k].model] + ": '" + info.name +
                                                   "' differs in dtype or shape from the other experts of " + g.name);
      }
      const uint64_t bytes = info.nbytes();
      read_whole(plan, member.sources[k], *input, gathered[k].data() + j * bytes, pool, fused.sources.size() + 3);
    }
    infos[k].data_end = gathered[k].size();
    views[k].info = &infos[k];
    given[k] = {&views[k], gathered[k].data()};
  }
  // Each member's share of the fused bytes: member j holds fused bytes [j * each, (j + 1) * each).
  const uint64_t each = numel(plan.tensors[g.members.front()].shape) * dtype_bits(fused.out_dtype) / 8;
  merge_tensor(plan, fused, options, pool, behind, [&plan, &g, &writer, each](uint64_t offset, const uint8_t* bytes, uint64_t nbytes) {
    for (uint64_t at = offset, end = offset + nbytes; at < end;) {
      const uint64_t j = at / each, upto = std::min(end, (j + 1) * each);
      writer.write_part(plan.tensors[g.members[j]].name, at - j * each, bytes + (at - offset), upto - at);
      at = upto;
    }
  }, &given);
}

nlohmann::json output_config(const MergePlan& plan) {
  // The donor's config with the layer count and per-layer lists remapped (plan_config.cpp).
  nlohmann::json config = plan.output_config.is_object() ? plan.output_config : merged_config(plan);
  // out_dtype, else the compute dtype (mergekit's rule, even where a method writes float32).
  if (!plan.tensors.empty())
    config["torch_dtype"] = dtype_torch_name(plan.recipe.out_dtype.value_or(plan.tensors.front().compute_dtype));
  return config;
}

}  // namespace

MergeContext planned_context(const PlannedTensor& t, uint64_t random_seed) {
  MergeContext ctx;
  ctx.tensor_name = t.name;
  ctx.compute_dtype = t.compute_dtype;
  ctx.shape = t.shape;
  ctx.base_index = t.base_index;
  ctx.params = t.method_params;
  ctx.seed = tensor_seed(random_seed, t.name);
  return ctx;
}

uint64_t tensor_seed(uint64_t random_seed, const std::string& tensor_name) {
  uint64_t h = 0xCBF29CE484222325ull ^ (random_seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : tensor_name) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

namespace {

// The files beside the weights: config.json, the tokenizer's files, the chat template, the recipe
// and the model card.
void write_side_files(const MergePlan& plan, const MergeOptions& options, const fs::path& out,
                      MergeResult* result) {
  write_file_atomic(out / "config.json", output_config(plan).dump(2) + "\n");
  result->files.push_back("config.json");
  if (options.copy_tokenizer || plan.tokenizer) {
    // The donor's files; tokenizer.json and tokenizer_config.json rewritten when the output
    // vocabulary is not the donor's own (tokenizer_build.cpp).
    const Model& donor = *plan.models[plan.tokenizer_donor];
    for (size_t i = 0; i < donor.auxiliary_files().size(); ++i) {
      const std::string& name = donor.auxiliary_files()[i];
      const bool rewritten = plan.tokenizer && ((name == "tokenizer.json" && !plan.tokenizer->tokenizer_json.empty()) ||
                                                (name == "tokenizer_config.json" && !plan.tokenizer->tokenizer_config_json.empty()));
      if (rewritten) {
        write_file_atomic(out / name, name == "tokenizer.json" ? plan.tokenizer->tokenizer_json
                                                               : plan.tokenizer->tokenizer_config_json);
      } else {
        donor.auxiliary(i).copy_to(out / name);
      }
      result->files.push_back(name);
    }
  }
  if (plan.recipe.chat_template) {
    write_file_atomic(out / "chat_template.jinja", *plan.recipe.chat_template);
    result->files.push_back("chat_template.jinja");
  }
  write_file_atomic(out / "mergekit_config.yml", plan.recipe.text);
  result->files.push_back("mergekit_config.yml");
  if (options.write_model_card) {
    ModelCardInfo card;
    card.name = plan.recipe.name.value_or(options.out_dir.filename().string());
    card.merge_method = plan.recipe.merge_method;
    // The card names models as the Hub knows them (card_model_name); a model with a LoRA adapter
    // is "MODEL+ADAPTER" in the body and its base model among the parents.
    for (size_t m = 0; m < plan.models.size(); ++m) {
      const LoraAdapter* adapter = adapter_of(plan, m);
      const ModelReference reference = adapter ? parse_model_reference(plan.model_names[m])
                                               : ModelReference{plan.model_names[m], ""};
      const std::string parent = card_model_name(reference.model, plan.model_paths[m]);
      card.parents.push_back(parent);
      card.models.push_back(adapter ? parent + "+" + card_model_name(reference.adapter, adapter->path()) : parent);
    }
    card.base_model = plan.base_model >= 0 ? card.models[plan.base_model] : "";
    card.license = plan.license;
    card.recipe_yaml = plan.recipe.text;
    card.tool_version = ALLOY_VERSION;
    write_file_atomic(out / "README.md", render_model_card(card));
    result->files.push_back("README.md");
  }
}

// The facts of alloy_provenance.json and the BOM: every input file read and every output file
// written with its sha256 (sorts result->files).
// `weights`: the files the ShardedWriter wrote, with the sha256 it computed as it wrote them (so
// they are not read back).
ProvenanceRecord provenance_record(const MergePlan& plan, const MergeOptions& options, const fs::path& out,
                                   FileHasher& hasher, const std::vector<WrittenFile>& weights,
                                   MergeResult* result, const std::string& started) {
  ProvenanceRecord record;
  record.started_on = started;
  for (size_t m = 0; m < plan.models.size(); ++m) {
    ProvenanceInput input;
    input.model = plan.model_names[m];
    input.path = plan.model_paths[m].string();
    const HubReference hub = hub_reference(plan.model_paths[m]);
    input.hub_id = hub.id;
    input.hub_revision = hub.revision;
    std::vector<fs::path> files = model_files(*plan.models[m]);
    if (const LoraAdapter* adapter = adapter_of(plan, m)) {
      for (const auto& file : adapter->files()) files.push_back(file);
    }
    for (const auto& file : files) {
      ProvenanceFile f;
      f.name = file.filename().string();
      f.path = file.string();
      if (options.hash_inputs) {
        const FileDigest digest = hasher.get(file);
        f.size = digest.size;
        f.sha256 = digest.sha256;
        f.sha256_from_cache = digest.from_cache;
      } else {
        f.size = fs::file_size(file);
      }
      input.files.push_back(f);
    }
    record.inputs.push_back(input);
  }
  std::sort(result->files.begin(), result->files.end());
  std::map<std::string, const WrittenFile*> written;
  for (const auto& w : weights) written[w.name] = &w;
  FileHasher output_hasher;  // never the input hash cache: outputs are always hashed
  if (options.hash_outputs) {
    for (const auto& file : result->files) {
      if (!written.count(file)) output_hasher.start(out / file);
    }
  }
  for (const auto& file : result->files) {
    ProvenanceFile f;
    f.name = f.path = file;
    if (const auto w = written.find(file); w != written.end()) {
      f.size = w->second->size;
      f.sha256 = w->second->sha256;
    } else if (options.hash_outputs) {
      const FileDigest digest = output_hasher.get(out / file);
      f.size = digest.size;
      f.sha256 = digest.sha256;
    } else {
      f.size = fs::file_size(out / file);
    }
    record.outputs.push_back(f);
  }
  record.finished_on = utc_timestamp();
  return record;
}

// alloy_bom.cdx.json (with --sbom), then alloy_provenance.json, whose subject includes the BOM.
void write_provenance(const MergePlan& plan, const MergeOptions& options, const fs::path& out, FileHasher& hasher,
                      const std::vector<WrittenFile>& weights, MergeResult* result, const std::string& started) {
  ProvenanceRecord record = provenance_record(plan, options, out, hasher, weights, result, started);
  if (options.write_sbom) {
    const std::string name = plan.recipe.name.value_or(options.out_dir.filename().string());
    const std::string bom = merge_sbom(plan, name, record).dump(2) + "\n";
    write_file_atomic(out / kSbomFile, bom);
    result->files.push_back(kSbomFile);
    ProvenanceFile f;
    f.name = f.path = kSbomFile;
    f.size = bom.size();
    if (options.hash_outputs) f.sha256 = sha256_hex(bom.data(), bom.size());
    record.outputs.push_back(f);
  }
  write_file_atomic(out / kProvenanceFile, provenance_statement(plan, options, record).dump(2) + "\n");
  result->files.push_back(kProvenanceFile);
}

}  // namespace

MergeResult run_merge(const MergePlan& plan, const MergeOptions& options) {
  const std::string started = utc_timestamp();
  std::vector<fs::path> inputs = plan.model_paths;
  for (const auto& adapter : plan.adapters) {
    if (adapter) inputs.push_back(adapter->path());
  }
  StagingDirectory staging(options.out_dir, options.overwrite, inputs);
  std::vector<TensorSpec> specs;
  for (const auto& t : plan.tensors) specs.push_back({t.name, t.out_dtype, t.shape});
  MergeResult result;
  FileHasher hasher(hash_cache_at(options.hash_cache));
  if (options.hash_inputs) {
    for (const auto& model : plan.models) hasher.start_model(*model);
  }
  std::vector<WrittenFile> weights;
  {
    ShardedWriter writer(staging.path(), specs, options.shard_bytes,
                         {{"merge_method", plan.recipe.merge_method}, {"generator", "alloy " ALLOY_VERSION}},
                         options.hash_outputs);
    BufferPool pool;
    // Held sources save a second read only where the buffer's page faults are worth it: a 1 GB
    // slerp no longer holds its embeddings (held_budget.h).
    pool.set_held_limit(detail::held_budget(plan, detail::kHeldSourceBytes));
    // Eight output windows may wait (16 MiB of bf16): the output's SHA-256 runs on the
    // write-behind thread, and with two it sat idle through each tensor's held read and its sums
    // or selection passes. A 1 GB slerp with hashes: 1.16-1.26 -> 1.02-1.11 s (docs/performance.md).
    WriteBehind behind(8);  // after the writer: stops before the writer and the plan go
    const std::vector<FusedGroup> groups = options.fuse_moe_experts ? fused_expert_groups(plan) : std::vector<FusedGroup>{};
    std::vector<int> group_of(plan.tensors.size(), -1);
    for (size_t g = 0; g < groups.size(); ++g) {
      for (size_t member : groups[g].members) group_of[member] = static_cast<int>(g);
    }
    std::vector<bool> written(plan.tensors.size(), false);
    const uint64_t total_bytes = plan.output_bytes();
    uint64_t done_bytes = 0;
    const auto output_bytes = [&](size_t index) {
      uint64_t numel = 1;
      for (const uint64_t d : plan.tensors[index].shape) numel *= d;
      return numel * dtype_bits(plan.tensors[index].out_dtype) / 8;
    };
    // In the order of the bytes on disk, so that the writer hashes each file from the bytes as
    // they are written (a tensor's bytes do not depend on when it is merged: its seed is its name's).
    const std::vector<size_t> order = writer.write_order();
    for (size_t i : order) {
      if (written[i]) continue;
      if (group_of[i] >= 0) {
        const FusedGroup& group = groups[group_of[i]];
        merge_fused_group(plan, group, options, pool, behind, writer);
        for (size_t member : group.members) {
          written[member] = true;
          done_bytes += output_bytes(member);
        }
      } else {
        merge_tensor(plan, plan.tensors[i], options, pool, behind,
                     [&plan, &writer, i](uint64_t offset, const uint8_t* bytes, uint64_t nbytes) {
                       writer.write_part(plan.tensors[i].name, offset, bytes, nbytes);
                     });
        written[i] = true;
        done_bytes += output_bytes(i);
      }
      if (options.progress) options.progress(done_bytes, total_bytes);
      if (i == order.front()) {
        behind.wait();  // paused with the first tensor on disk
        test_pause_point("after-first-tensor");
      }
    }
    behind.wait();
    result.files = writer.finish();
    weights = writer.written_files();
  }
  result.tensors = plan.tensors.size();
  result.output_bytes = plan.output_bytes();
  const fs::path out = staging.path();
  write_side_files(plan, options, out, &result);
  write_provenance(plan, options, out, hasher, weights, &result, started);
  result.notices = hasher.notices();
  // Every shard and tokenizer file was read (merged, copied and hashed) through the descriptor
  // opened at the start: if its size and times are unchanged now, the bytes used are the bytes hashed.
  // A digest from the hash cache matched these same size and times at open, so this covers it too.
  for (const auto& model : plan.models) {
    for (const auto& shard : model->shards()) shard->file().check_unchanged();
    for (size_t i = 0; i < model->auxiliary_files().size(); ++i) model->auxiliary(i).check_unchanged();
  }
  staging.publish();
  return result;
}

}  // namespace alloy
