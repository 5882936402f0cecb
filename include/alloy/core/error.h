// alloy/core/error.h: the one exception type of the library.
//
// Every failure alloy reports is an alloy::Error carrying an ErrorCode (stable, testable) and a
// message that names the thing that is wrong: the file, the tensor, or the recipe line and column.
// Library code never prints and never exits; tools catch Error, print what() and return nonzero.
#pragma once

#include <stdexcept>
#include <string>

namespace alloy {

enum class ErrorCode {
  // --- generic ---
  kIo,                    // open/read/write/rename failed (errno text in the message)
  kInvalidArgument,       // a caller passed something unusable (bad flag value, bad size string)
  kInternal,              // an invariant of alloy itself broke

  // --- safetensors file structure (one code per refusal rule; see docs/format.md) ---
  kFileTooSmall,          // fewer than 8 bytes: no header length
  kHeaderTooSmall,        // header length < 2
  kHeaderTooLarge,        // header length > 100,000,000
  kHeaderOutOfBounds,     // 8 + header length > file size
  kHeaderNotUtf8,         // header bytes are not valid UTF-8
  kHeaderNotJson,         // header is not parseable JSON
  kHeaderNotObject,       // header JSON is not an object
  kTensorNotObject,       // a tensor entry is not an object
  kUnknownKey,            // a tensor entry has a key other than dtype/shape/data_offsets
  kMissingKey,            // a tensor entry lacks dtype, shape or data_offsets
  kUnknownDtype,          // dtype string not in the spec
  kBadDtypeType,          // dtype is not a string
  kBadShape,              // shape not an array of non-negative integers
  kBadOffsets,            // data_offsets not an array of exactly two non-negative integers
  kOffsetsReversed,       // begin > end
  kShapeOverflow,         // element count or byte size overflows 64 bits
  kSubByteMisaligned,     // sub-byte dtype whose element count x bits is not a multiple of 8
  kSizeMismatch,          // end - begin != element count x dtype size
  kOffsetGap,             // offsets (sorted) leave a hole
  kOffsetOverlap,         // offsets (sorted) overlap
  kDataOutOfBounds,       // a tensor ends beyond the file
  kTrailingBytes,         // the buffer does not end exactly at the last tensor
  kDuplicateTensor,       // the same tensor name twice
  kReservedName,          // a tensor named __metadata__
  kBadMetadata,           // __metadata__ not an object of string to string
  kEmptyName,             // a tensor with an empty name

  // --- model directories and shard indexes ---
  kNotAModel,             // path is neither a safetensors file nor a directory holding one
  kIndexNotJson,          // model.safetensors.index.json unparseable or wrong shape
  kIndexBadShardName,     // shard name absolute, contains "..", or a path separator escape
  kIndexShardSymlinkEscape, // shard is a symlink that leaves the model directory
  kIndexMissingShard,     // the index names a shard file that does not exist
  kIndexTensorMissing,    // the index maps a tensor to a shard that lacks it
  kIndexTensorUnlisted,   // a shard holds a tensor the index does not list
  kIndexTensorInTwoShards,// one tensor stored in two shards
  kIndexUnlistedShard,    // a *.safetensors file beside the index that the index does not name
  kIndexTotalSize,        // the index's metadata.total_size disagrees with the shards' tensor bytes
  kBadConfig,             // config.json unparseable or not an object
  kSymlinkEscape,         // a non-shard model file (weights, index, config, tokenizer...) is a symlink
                          // that leaves the model directory

  // --- PyTorch zip checkpoints (alloy/core/torch_checkpoint.h) ---
  kBadZip,                // the zip structure is malformed, truncated, compressed or encrypted
  kBadPickle,             // data.pkl is malformed, or describes a tensor that does not fit its storage
  kPickleForbidden,       // data.pkl uses an opcode or global outside the allow-list (never executed)

  // --- recipes and merging (alloy-merge) ---
  kRecipe,                // recipe error; message has "FILE:LINE:COLUMN: ..."
  kShapeMismatch,         // tensors that must agree in shape do not
  kMissingTensor,         // a model lacks a tensor the plan needs
  kNonFinite,             // a merge would write NaN or Inf
  kOutputExists,          // output directory exists and is not empty (no --overwrite)
  kOutputLocked,          // another process is writing the same output directory
  kOutputChanged,         // the output path changed between the start of a run and its publishing
  kOutputIsInput,         // the output is, or contains, one of the run's inputs
  kInputChanged,          // an input file changed (size, content or identity) while it was being read

  // --- assay ---
  kAssay,
};

// Stable short name of a code, e.g. "header-too-large"; used in messages and tests.
const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message);
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace alloy
