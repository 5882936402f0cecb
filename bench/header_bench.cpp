// header_bench: how long validating and listing a model with very many tensors takes, the cost a
// hostile header can buy (issue 13: 1M tensors under 5 s, 80k under 0.5 s for alloy-inspect).
//
// Writes DIR/t<N>.safetensors with N one-element F32 tensors named like a real checkpoint's
// ("model.layers.L.part.weight") through alloy's own writer, then times each step alloy-inspect
// takes: parsing the header, opening the model (parse + name index), listing it as a table
// (format_model, alloy-inspect's default; inspect_total_s = open + table) and as JSON (inspect_model,
// --json), and one lookup of every tensor by name. Prints one JSON line per N.
//
// Usage: header_bench DIR [N ...]   (default N: 80000 1000000)
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "alloy/core/error.h"
#include "alloy/core/inspect.h"
#include "alloy/core/model.h"
#include "alloy/core/writer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void write_model(const std::filesystem::path& path, size_t count) {
  std::vector<alloy::TensorSpec> specs;
  specs.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    specs.push_back({"model.layers." + std::to_string(i / 10) + ".part" + std::to_string(i % 10) + ".weight",
                     alloy::DType::F32, {1}});
  }
  const float value = 1.0f;
  std::vector<const void*> data(count, &value);
  alloy::write_safetensors_file(path, specs, data, {});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: header_bench DIR [N ...]\n");
    return 2;
  }
  std::vector<size_t> counts;
  for (int i = 2; i < argc; ++i) counts.push_back(std::stoull(argv[i]));
  if (counts.empty()) counts = {80000, 1000000};
  try {
    std::filesystem::create_directories(argv[1]);
    for (size_t count : counts) {
      const std::filesystem::path path = std::filesystem::path(argv[1]) / ("t" + std::to_string(count) + ".safetensors");
      write_model(path, count);
      auto start = std::chrono::steady_clock::now();
      { alloy::SafetensorsFile file(path.string()); }
      const double parse = seconds_since(start);
      start = std::chrono::steady_clock::now();
      const alloy::Model model = alloy::Model::open(path);
      const double open = seconds_since(start);
      start = std::chrono::steady_clock::now();
      const std::string table = alloy::format_model(model);  // what alloy-inspect does
      const double list = seconds_since(start);
      start = std::chrono::steady_clock::now();
      const nlohmann::json inspection = alloy::inspect_model(model);  // alloy-inspect --json
      const double describe = seconds_since(start);
      start = std::chrono::steady_clock::now();
      size_t found = 0;
      for (const auto& tensor : model.tensors()) found += model.find(tensor.name()) == &tensor;
      const double lookups = seconds_since(start);
      std::printf(
          "{\"tensors\": %zu, \"header_bytes\": %llu, \"parse_s\": %.3f, \"open_s\": %.3f, \"inspect_s\": %.3f, "
          "\"json_s\": %.3f, \"inspect_total_s\": %.3f, \"lookup_all_s\": %.3f, \"found\": %zu}\n",
          count, static_cast<unsigned long long>(model.shards()[0]->header().header_bytes), parse, open, list,
          describe,
          open + list, lookups, found);
      std::filesystem::remove(path);
    }
  } catch (const alloy::Error& e) {
    std::fprintf(stderr, "header_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
