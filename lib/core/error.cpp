#include "alloy/core/error.h"

namespace alloy {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kIo: return "io";
    case ErrorCode::kInvalidArgument: return "invalid-argument";
    case ErrorCode::kInternal: return "internal";
    case ErrorCode::kFileTooSmall: return "file-too-small";
    case ErrorCode::kHeaderTooSmall: return "header-too-small";
    case ErrorCode::kHeaderTooLarge: return "header-too-large";
    case ErrorCode::kHeaderOutOfBounds: return "header-out-of-bounds";
    case ErrorCode::kHeaderNotUtf8: return "header-not-utf8";
    case ErrorCode::kHeaderNotJson: return "header-not-json";
    case ErrorCode::kHeaderNotObject: return "header-not-object";
    case ErrorCode::kTensorNotObject: return "tensor-not-object";
    case ErrorCode::kUnknownKey: return "unknown-key";
    case ErrorCode::kMissingKey: return "missing-key";
    case ErrorCode::kUnknownDtype: return "unknown-dtype";
    case ErrorCode::kBadDtypeType: return "bad-dtype-type";
    case ErrorCode::kBadShape: return "bad-shape";
    case ErrorCode::kBadOffsets: return "bad-offsets";
    case ErrorCode::kOffsetsReversed: return "offsets-reversed";
    case ErrorCode::kShapeOverflow: return "shape-overflow";
    case ErrorCode::kSubByteMisaligned: return "sub-byte-misaligned";
    case ErrorCode::kSizeMismatch: return "size-mismatch";
    case ErrorCode::kOffsetGap: return "offset-gap";
    case ErrorCode::kOffsetOverlap: return "offset-overlap";
    case ErrorCode::kDataOutOfBounds: return "data-out-of-bounds";
    case ErrorCode::kTrailingBytes: return "trailing-bytes";
    case ErrorCode::kDuplicateTensor: return "duplicate-tensor";
    case ErrorCode::kReservedName: return "reserved-name";
    case ErrorCode::kBadMetadata: return "bad-metadata";
    case ErrorCode::kEmptyName: return "empty-name";
    case ErrorCode::kNotAModel: return "not-a-model";
    case ErrorCode::kIndexNotJson: return "index-not-json";
    case ErrorCode::kIndexBadShardName: return "index-bad-shard-name";
    case ErrorCode::kIndexShardSymlinkEscape: return "index-shard-symlink-escape";
    case ErrorCode::kIndexMissingShard: return "index-missing-shard";
    case ErrorCode::kIndexTensorMissing: return "index-tensor-missing";
    case ErrorCode::kIndexTensorUnlisted: return "index-tensor-unlisted";
    case ErrorCode::kIndexTensorInTwoShards: return "index-tensor-in-two-shards";
    case ErrorCode::kIndexUnlistedShard: return "index-unlisted-shard";
    case ErrorCode::kIndexTotalSize: return "index-total-size";
    case ErrorCode::kBadConfig: return "bad-config";
    case ErrorCode::kSymlinkEscape: return "symlink-escape";
    case ErrorCode::kRecipe: return "recipe";
    case ErrorCode::kShapeMismatch: return "shape-mismatch";
    case ErrorCode::kMissingTensor: return "missing-tensor";
    case ErrorCode::kNonFinite: return "non-finite";
    case ErrorCode::kOutputExists: return "output-exists";
    case ErrorCode::kOutputLocked: return "output-locked";
    case ErrorCode::kOutputChanged: return "output-changed";
    case ErrorCode::kOutputIsInput: return "output-is-input";
    case ErrorCode::kInputChanged: return "input-changed";
    case ErrorCode::kBadZip: return "bad-zip";
    case ErrorCode::kBadPickle: return "bad-pickle";
    case ErrorCode::kPickleForbidden: return "pickle-forbidden";
    case ErrorCode::kAssay: return "assay";
  }
  return "unknown";
}

Error::Error(ErrorCode code, const std::string& message)
    : std::runtime_error(message), code_(code) {}

}  // namespace alloy
