// Offline resolution of Hub ids through the Hugging Face cache layout (alloy/core/hub_cache.h).
#include "alloy/core/hub_cache.h"

#include <cstdlib>
#include <fstream>
#include <vector>

#include "alloy/core/error.h"

namespace alloy {
namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

bool id_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
}

// One part of an id: non-empty, id characters only, not starting with '.' or '-' (so never "..").
bool id_part(std::string_view part) {
  if (part.empty() || part.size() > 96 || part.front() == '.' || part.front() == '-') return false;
  for (char c : part) {
    if (!id_char(c)) return false;
  }
  return true;
}

bool revision_ok(std::string_view revision) {
  if (revision.empty() || revision.size() > 255 || revision.front() == '/' || revision.back() == '/') return false;
  size_t start = 0;
  while (start <= revision.size()) {
    const size_t slash = std::min(revision.find('/', start), revision.size());
    const std::string_view part = revision.substr(start, slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    for (char c : part) {
      if (!id_char(c)) return false;
    }
    start = slash + 1;
  }
  return true;
}

struct HubId {
  std::string repo, revision;
};

HubId split_id(std::string_view id) {
  const size_t at = id.find('@');
  HubId out{std::string(id.substr(0, at)), at == std::string_view::npos ? "main" : std::string(id.substr(at + 1))};
  return out;
}

std::string first_line(const fs::path& file) {
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

}  // namespace

fs::path hub_cache_dir() {
  if (const std::string cache = env("HF_HUB_CACHE"); !cache.empty()) return cache;
  if (const std::string home = env("HF_HOME"); !home.empty()) return fs::path(home) / "hub";
  if (const std::string xdg = env("XDG_CACHE_HOME"); !xdg.empty()) return fs::path(xdg) / "huggingface" / "hub";
  return fs::path(env("HOME")) / ".cache" / "huggingface" / "hub";
}

bool looks_like_hub_id(std::string_view name) {
  const HubId id = split_id(name);
  if (name.find('@') != std::string_view::npos && !revision_ok(id.revision)) return false;
  const size_t slash = id.repo.find('/');
  if (slash == std::string::npos) return id_part(id.repo);
  return id.repo.find('/', slash + 1) == std::string::npos && id_part(std::string_view(id.repo).substr(0, slash)) &&
         id_part(std::string_view(id.repo).substr(slash + 1));
}

fs::path resolve_hub_model(std::string_view text) {
  const HubId id = split_id(text);
  const fs::path cache = hub_cache_dir();
  std::string folder = "models--" + id.repo;
  for (size_t at = folder.find('/'); at != std::string::npos; at = folder.find('/', at)) folder.replace(at, 1, "--");
  const fs::path model = cache / folder;
  const std::string download = "huggingface-cli download " + id.repo +
                               (id.revision == "main" ? std::string() : " --revision " + id.revision);
  const auto missing = [&](const std::string& what) {
    return Error(ErrorCode::kNotAModel, "'" + std::string(text) + "' is not a local folder, and " + what +
                                            " (Hub cache " + cache.string() +
                                            ", from HF_HUB_CACHE / HF_HOME / ~/.cache/huggingface/hub). alloy does "
                                            "not download; fetch it with: " + download);
  };
  std::error_code ec;
  if (!fs::is_directory(model, ec)) throw missing("the Hub cache has no " + folder);
  fs::path snapshot = model / "snapshots" / id.revision;
  if (!fs::is_directory(snapshot, ec)) {
    const fs::path ref = model / "refs" / id.revision;
    const std::string commit = fs::is_regular_file(ref, ec) ? first_line(ref) : std::string();
    if (commit.empty() || !id_part(commit)) {
      throw missing("its cache folder " + model.string() + " has no revision '" + id.revision + "' (refs/" +
                    id.revision + " or snapshots/" + id.revision + ")");
    }
    snapshot = model / "snapshots" / commit;
    if (!fs::is_directory(snapshot, ec)) {
      throw missing("refs/" + id.revision + " names commit " + commit + ", which has no snapshot in " + model.string());
    }
  }
  return snapshot;
}

fs::path locate_model(const std::string& name, const fs::path& base_dir) {
  const fs::path local = fs::path(name).is_absolute() || base_dir.empty() ? fs::path(name) : base_dir / name;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(local, ec)) || !looks_like_hub_id(name)) return local;
  return resolve_hub_model(name);
}

fs::path containment_root(const fs::path& real_dir) {
  const fs::path snapshots = real_dir.parent_path();
  const fs::path model = snapshots.parent_path();
  if (snapshots.filename() == "snapshots" && model.filename().string().rfind("models--", 0) == 0) return model;
  return real_dir;
}

}  // namespace alloy
