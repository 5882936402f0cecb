// FileHasher: sha256 of files on background threads (alloy/core/evidence.h).
#include "alloy/core/evidence.h"

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <optional>

#include "alloy/core/error.h"
#include "alloy/core/hash_cache.h"
#include "alloy/core/sha256.h"

namespace alloy {
namespace fs = std::filesystem;

FileHasher::FileHasher(std::unique_ptr<HashCache> cache) : cache_(std::move(cache)) {}

std::vector<std::string> FileHasher::notices() const {
  return cache_ ? cache_->notices() : std::vector<std::string>{};
}

FileHasher::~FileHasher() {
  cancelled_ = true;
  for (auto& [path, hash] : hashes_) {
    if (hash.valid()) hash.wait();
  }
}

void FileHasher::start(const fs::path& path, const MappedFile* file) {
  if (hashes_.count(path)) return;
  hashes_.emplace(path, std::async(std::launch::async, [this, path, file] { return hash(path, file); }).share());
}

void FileHasher::start_model(const Model& model) {
  for (const auto& shard : model.shards()) start(shard->path(), &shard->file());
  for (size_t i = 0; i < model.auxiliary_files().size(); ++i)
    start(model.path() / model.auxiliary_files()[i], &model.auxiliary(i));
  for (const auto& file : model_files(model)) start(file);
}

FileDigest FileHasher::get(const fs::path& path) {
  start(path);
  return hashes_.at(path).get();
}

FileDigest FileHasher::hash(const fs::path& path, const MappedFile* file) const {
  std::optional<MappedFile> opened;
  if (file == nullptr) file = &opened.emplace(path.string());
  if (cache_ != nullptr) {
    if (auto cached = cache_->lookup(file->identity())) return {std::move(*cached), file->size(), true};
  }
  Sha256 hasher;
  // 1 MiB: a sharded model hashes hundreds of files at once, one thread and one window each.
  constexpr uint64_t kWindow = uint64_t{1} << 20;
  std::vector<uint8_t> window(static_cast<size_t>(std::min<uint64_t>(kWindow, file->size())));
  for (uint64_t offset = 0; offset < file->size() && !cancelled_; offset += kWindow) {
    const uint64_t length = std::min<uint64_t>(kWindow, file->size() - offset);
    file->read(offset, length, window.data());
    hasher.update(window.data(), length);
  }
  FileDigest digest{hasher.finish_hex(), file->size()};
  if (cache_ != nullptr && !cancelled_) {
    // Stored only if the file did not change while it was read: else the digest is of no one
    // version of it (the run itself fails at its end-of-run check).
    try {
      file->check_unchanged();
      cache_->store(file->identity(), digest.sha256);
    } catch (const Error&) {
    }
  }
  return digest;
}

std::vector<fs::path> model_files(const Model& model) {
  std::vector<fs::path> files;
  for (const auto& shard : model.shards()) files.emplace_back(shard->path());
  if (model.is_directory()) {
    for (const char* extra : {"config.json", "model.safetensors.index.json"}) {
      if (fs::exists(model.path() / extra)) files.push_back(model.path() / extra);
    }
    for (const auto& aux : model.auxiliary_files()) files.push_back(model.path() / aux);
  }
  return files;
}

namespace {

// The Hub reference in a path's components: "models--ORG--NAME", then "snapshots", then REVISION.
HubReference hub_reference_in(const fs::path& path) {
  std::vector<std::string> parts;
  for (const auto& part : path) parts.push_back(part.string());
  for (size_t i = 0; i + 2 < parts.size(); ++i) {
    const std::string& folder = parts[i];
    if (folder.rfind("models--", 0) != 0 || parts[i + 1] != "snapshots" || parts[i + 2].empty()) continue;
    // "models--org--name": the Hub forbids "--" inside a name, so the first "--" after the prefix
    // separates the organisation (absent for old unscoped models such as "gpt2").
    const std::string repo = folder.substr(8);
    const size_t split = repo.find("--");
    std::string id = split == std::string::npos ? repo : repo.substr(0, split) + "/" + repo.substr(split + 2);
    if (id.empty()) continue;
    return {id, parts[i + 2]};
  }
  return {};
}

}  // namespace

HubReference hub_reference(const fs::path& model_path) {
  HubReference found = hub_reference_in(model_path.lexically_normal());
  if (found.id.empty()) {
    std::error_code ec;
    const fs::path absolute = fs::absolute(model_path, ec);
    if (!ec) found = hub_reference_in(absolute.lexically_normal());
  }
  return found;
}

std::string utc_timestamp() {
  std::time_t now = std::time(nullptr);
  if (const char* epoch = std::getenv("SOURCE_DATE_EPOCH"); epoch != nullptr && *epoch != '\0') {
    char* end = nullptr;
    const long long seconds = std::strtoll(epoch, &end, 10);
    if (end != nullptr && *end == '\0' && seconds >= 0) now = static_cast<std::time_t>(seconds);
  }
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

}  // namespace alloy
