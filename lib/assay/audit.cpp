// The audit record: what the assay examined (alloy/assay/assay.h, AssayAudit). The files are hashed
// on background threads started when the models are opened, so hashing overlaps the analysis that
// reads the same pages; collect_audit waits for them at the end.
#include "alloy/core/evidence.h"
#include "internal.h"

namespace alloy::detail {

void start_audit_hashes(const AssayOptions& options, const std::vector<const Model*>& models, FileHasher* hasher) {
  if (!options.hash_files) return;
  for (const Model* m : models) hasher->start_model(*m);
}

AssayAudit collect_audit(const AssayOptions& options, const std::string& started,
                         const std::vector<const Model*>& models, FileHasher* hasher) {
  AssayAudit audit;
  audit.alloy_version = ALLOY_VERSION;
  audit.time = started;
  audit.command_line = options.command_line;
  for (size_t m = 0; m < models.size(); ++m) {
    const Model& model = *models[m];
    ExaminedModel examined;
    examined.role = m == 0 ? "suspect" : "candidate";
    examined.path = model.path().string();
    const HubReference hub = hub_reference(model.path());
    examined.hub_id = hub.id;
    examined.hub_revision = hub.revision;
    for (const auto& file : model_files(model)) {
      ExaminedFile f;
      f.path = model.is_directory() ? (model.path() / file.filename()).string() : model.path().string();
      if (options.hash_files) {
        const FileDigest digest = hasher->get(file);
        f.size = digest.size;
        f.sha256 = digest.sha256;
        f.sha256_from_cache = digest.from_cache;
      } else {
        std::error_code ec;
        f.size = std::filesystem::file_size(file, ec);
      }
      examined.files.push_back(std::move(f));
    }
    audit.models.push_back(std::move(examined));
  }
  audit.notices = hasher->notices();
  return audit;
}

}  // namespace alloy::detail
