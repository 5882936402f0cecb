// alloy-inspect PATH [--json]: validate a model directory or safetensors file and list its tensors.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "alloy/core/error.h"
#include "alloy/core/inspect.h"
#include "../common/cli.h"

int main(int argc, char** argv) {
  alloy::tool::wait_passively_in_openmp(argv);  // first: re-executes the tool
  CLI::App app{"Validate a Hugging Face model directory or safetensors file and list its tensors."};
  std::string path;
  bool json = false;
  app.add_option("PATH", path, "model directory or .safetensors file")->required();
  app.add_flag("--json", json, "print the listing as JSON");
  alloy::ModelOpenOptions open;
  app.add_flag("--allow-unindexed-shards", open.allow_unindexed_shards,
               "open a sharded model whose directory holds *.safetensors files its index does not name (or whose "
               "total_size disagrees), using the index's weights, with a warning");
  alloy::tool::add_version_flag(app, "alloy-inspect");
  if (const auto status = alloy::tool::parse_command_line(app, argc, argv)) return *status;
  try {
    const alloy::Model model = alloy::Model::open(path, open);
    for (const auto& warning : model.warnings()) std::fprintf(stderr, "alloy-inspect: warning: %s\n", warning.c_str());
    if (json) {
      std::cout << alloy::inspect_model(model).dump(2) << "\n";
    } else {
      std::cout << alloy::format_model(model);
    }
  } catch (const alloy::Error& e) {
    std::fprintf(stderr, "alloy-inspect: error: %s [%s]\n", e.what(),
                 alloy::error_code_name(e.code()));
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alloy-inspect: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
