// alloy-assay: recovers what a model was made from (which candidates, weights, method), with
// evidence. Only flag parsing and output lives here; alloy/assay/assay.h does the work.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "alloy/assay/assay.h"
#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/parallel.h"
#include "alloy/core/progress.h"
#include "../common/cli.h"

namespace {

// alloy-assay SUSPECT --verify-claim RECIPE.yml: 0 holds, 1 refuted, 3 unverifiable.
int verify_claim(const alloy::AssayOptions& assay, const std::string& recipe, const std::string& json_path, bool quiet,
                 int tensors) {
  if (!assay.candidates.empty()) {
    throw alloy::Error(alloy::ErrorCode::kInvalidArgument,
                       "--verify-claim takes no CANDIDATE: the models are the ones the recipe names");
  }
  if (!json_path.empty()) alloy::check_output_path(json_path);
  alloy::ClaimOptions options;
  options.suspect = assay.suspect;
  options.recipe = recipe;
  options.open = assay.open;
  options.command_line = assay.command_line;
  options.hash_files = assay.hash_files;
  options.hash_cache = assay.hash_cache;
  options.tensors = tensors;
  const alloy::ClaimResult claim = alloy::verify_claim(options);
  alloy::tool::print_notes("alloy-assay", claim.audit.notices);
  if (!json_path.empty()) alloy::write_output_file(json_path, alloy::claim_to_json(claim).dump(2) + "\n");
  if (!quiet) std::fputs(alloy::claim_summary(claim).c_str(), stdout);
  return claim.verdict == "holds" ? 0 : claim.verdict == "refuted" ? 1 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  alloy::tool::wait_passively_in_openmp(argv);  // first: re-executes the tool
  CLI::App app{"Recovers the recipe of SUSPECT from CANDIDATE models: which candidates, which weights, which merge "
               "method, with statistics."};
  alloy::AssayOptions options;
  std::string suspect, json_path, recipe_path, report_path, fail_on;
  int threads = 0;
  bool quiet = false;
  app.add_option("SUSPECT", suspect, "the model under examination (directory or .safetensors)")->required();
  app.add_option("CANDIDATE", options.candidates, "candidate parents, as many as needed (none with --verify-claim)");
  std::string claim_path;
  app.add_option("--verify-claim", claim_path,
                 "check a published recipe (e.g. a repository's mergekit_config.yml; model paths relative to the "
                 "current directory) against SUSPECT's weights by rebuilding sampled tensors; exit 0 when it holds, "
                 "1 when refuted, 3 when unverifiable");
  app.add_option("--json", json_path, "write the full result as JSON (- for standard output)");
  app.add_option("--recipe", recipe_path, "write the recovered recipe as YAML (alloy-merge runs it; - for standard output)");
  app.add_option("--report", report_path, "write a self-contained HTML report (- for standard output)");
  app.add_option("--rebuild-check", options.rebuild_check_tensors,
                 "tensors re-merged from the recovered recipe to confirm it (0: none); with --verify-claim: tensors rebuilt "
                 "(default 16, 0: all)")
      ->capture_default_str();
  app.add_option("--fail-on", fail_on,
                 "exit with status 1 when the verdict matches: merge; related (merge, fine-tune or copy); any (all "
                 "but a fully checked independent); an inconclusive verdict matches as its finding on the compared "
                 "part would, and always matches any")
      ->check(CLI::IsMember({"merge", "related", "any"}));
  app.add_option("--sample", options.sample_fraction,
                 "judge every tensor on a seeded random FRACTION of its rows (e.g. 0.01), reading about that share of "
                 "the models' bytes; the weights' errors widen accordingly; implies --no-file-hashes (hashing reads "
                 "every byte); default: every element")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--sample-seed", options.sample_seed, "the seed that draws the rows of --sample (same seed, same rows)")
      ->capture_default_str();
  bool no_file_hashes = false;
  app.add_flag("--no-file-hashes", no_file_hashes, "do not hash the models' files for the audit record (sizes only)");
  std::string hash_cache;
  alloy::tool::add_hash_cache_option(app, hash_cache);
  app.add_option("-j,--threads", threads, "worker threads (default: all cores); results do not depend on it");
  bool progress = false;
  app.add_flag("-q,--quiet", quiet, "no summary on stdout, no progress bar");
  app.add_flag("--progress", progress, "draw the progress bar even when stderr is not a terminal (not with --quiet)");
  app.add_flag("--allow-unindexed-shards", options.open.allow_unindexed_shards,
               "open sharded models whose directory holds *.safetensors files the index does not name (or whose total_size disagrees), using the index's weights, with a warning");
  alloy::tool::add_version_flag(app, "alloy-assay");
  if (const auto status = alloy::tool::parse_command_line(app, argc, argv)) return *status;
  // The command line as run, with the tool's own path reduced to its name (the audit record).
  options.command_line.push_back(std::filesystem::path(argv[0]).filename().string());
  for (int i = 1; i < argc; ++i) options.command_line.push_back(argv[i]);
  options.hash_files = !no_file_hashes && !(options.sample_fraction > 0 && options.sample_fraction < 1);
  options.hash_cache = hash_cache;
  try {
    alloy::set_thread_count(threads);
    options.suspect = suspect;
    if (!claim_path.empty()) {
      // --rebuild-check's own default is the assay's; a claim's is ClaimOptions'.
      const int tensors = app.count("--rebuild-check") ? options.rebuild_check_tensors : alloy::ClaimOptions{}.tensors;
      return verify_claim(options, claim_path, json_path, quiet || json_path == "-", tensors);
    }
    if (options.candidates.empty()) throw alloy::Error(alloy::ErrorCode::kInvalidArgument, "CANDIDATE is required");
    // Every output path is checked before the assay runs, not after its results exist.
    for (const std::string* path : {&json_path, &recipe_path, &report_path}) {
      if (!path->empty()) alloy::check_output_path(*path);
      quiet |= *path == "-";  // standard output carries that file alone
    }
    std::optional<alloy::ProgressBar> bar;
    if (alloy::progress_enabled(quiet, progress)) options.progress = bar.emplace("alloy-assay", 0).callback();
    const alloy::AssayResult result = alloy::run_assay(options);
    bar.reset();
    alloy::tool::print_notes("alloy-assay", result.audit.notices);
    const nlohmann::json doc = alloy::assay_to_json(result);
    if (!json_path.empty()) alloy::write_output_file(json_path, doc.dump(2) + "\n");
    if (!recipe_path.empty()) {
      if (result.recipe.empty()) {
        std::fprintf(stderr, "alloy-assay: no recipe to write: the verdict is '%s'\n", result.verdict.c_str());
      } else {
        alloy::write_output_file(recipe_path, alloy::recipe_to_yaml(result.recipe));
      }
    }
    if (!report_path.empty()) alloy::write_output_file(report_path, alloy::assay_report_html(doc));
    if (!quiet) std::fputs(alloy::assay_summary(result).c_str(), stdout);
    if (!fail_on.empty() && alloy::verdict_matches(result, fail_on)) {
      std::fprintf(stderr, "alloy-assay: the verdict '%s' matches --fail-on %s\n", result.verdict.c_str(),
                   fail_on.c_str());
      return 1;
    }
  } catch (const alloy::Error& e) {
    std::fprintf(stderr, "alloy-assay: error: %s [%s]\n", e.what(), alloy::error_code_name(e.code()));
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alloy-assay: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
