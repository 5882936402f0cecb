// Models named by their Hugging Face Hub id ("org/name" or "org/name@revision"), found offline in
// the standard Hub cache that huggingface_hub's downloads fill:
//
//   CACHE/models--ORG--NAME/refs/main           the commit hash a branch or tag points to
//   CACHE/models--ORG--NAME/snapshots/HASH/...  the model's files, symlinks into ../../blobs/
//   CACHE/models--ORG--NAME/blobs/SHA           the bytes
//
// CACHE is $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub, as huggingface_hub resolves it. Nothing is ever downloaded.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace alloy {

// The Hub cache directory the environment names (it need not exist).
std::filesystem::path hub_cache_dir();

// Whether `name` has the shape of a Hub id: "name" or "org/name", each part of letters, digits,
// '-', '_' and '.', not starting with '.' or '-', optionally followed by "@revision" (letters,
// digits, '-', '_', '.', '/', no ".." part). Only consulted for names that are not local paths.
bool looks_like_hub_id(std::string_view name);

// The snapshot folder of `id` ("org/name[@revision]", default revision "main": a branch or tag
// under refs/, or a commit hash under snapshots/) in hub_cache_dir(). Throws Error(kNotAModel)
// that says where it looked and the `huggingface-cli download` command that would fetch it.
std::filesystem::path resolve_hub_model(std::string_view id);

// Where a recipe's or a command line's model name points: the local path when something exists
// there (relative names against `base_dir`), else a Hub id's snapshot folder, else the local path
// (so that opening it reports the missing file).
std::filesystem::path locate_model(const std::string& name, const std::filesystem::path& base_dir = {});

// The folder every file of a model directory must resolve inside. For a snapshot of the Hub cache
// (canonical path .../models--ORG--NAME/snapshots/REV) it is the model's cache folder
// .../models--ORG--NAME, since the snapshot's files are links into its blobs/; links that leave
// it are still refused. For any other directory, the directory itself.
std::filesystem::path containment_root(const std::filesystem::path& real_dir);

}  // namespace alloy
