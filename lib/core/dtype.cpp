// The dtype table: the single source of truth for names, widths and kinds.
#include <array>
#include <string>

#include "alloy/core/dtype.h"

namespace alloy {
namespace {

constexpr std::array<DTypeInfo, kDTypeCount> kTable = {{
    {DType::BOOL, "BOOL", 8, false, 1},
    {DType::U8, "U8", 8, false, 1},
    {DType::I8, "I8", 8, false, 1},
    {DType::I16, "I16", 16, false, 2},
    {DType::U16, "U16", 16, false, 2},
    {DType::I32, "I32", 32, false, 4},
    {DType::U32, "U32", 32, false, 4},
    {DType::I64, "I64", 64, false, 8},
    {DType::U64, "U64", 64, false, 8},
    {DType::F16, "F16", 16, true, 2},
    {DType::BF16, "BF16", 16, true, 2},
    {DType::F32, "F32", 32, true, 4},
    {DType::F64, "F64", 64, true, 8},
    {DType::C64, "C64", 64, true, 8},
    {DType::F8_E4M3, "F8_E4M3", 8, true, 1},
    {DType::F8_E5M2, "F8_E5M2", 8, true, 1},
    {DType::F8_E8M0, "F8_E8M0", 8, true, 1},
    {DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8, true, 1},
    {DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8, true, 1},
    {DType::F4, "F4", 4, true, 1},
    {DType::F6_E2M3, "F6_E2M3", 6, true, 1},
    {DType::F6_E3M2, "F6_E3M2", 6, true, 1},
}};

struct TorchName {
  const char* name;
  DType dtype;
};
constexpr TorchName kTorchNames[] = {
    {"bfloat16", DType::BF16}, {"bf16", DType::BF16},    {"float16", DType::F16},
    {"fp16", DType::F16},      {"f16", DType::F16},      {"half", DType::F16},
    {"float32", DType::F32},   {"fp32", DType::F32},     {"f32", DType::F32},
    {"float", DType::F32},     {"float64", DType::F64},  {"fp64", DType::F64},
    {"f64", DType::F64},       {"double", DType::F64},   {"int8", DType::I8},
    {"uint8", DType::U8},      {"int16", DType::I16},    {"int32", DType::I32},
    {"int64", DType::I64},     {"bool", DType::BOOL},
};

}  // namespace

const DTypeInfo& dtype_info(DType dtype) { return kTable[static_cast<size_t>(dtype)]; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kTable) {
    if (name == info.name) return info.dtype;
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_torch_name(std::string_view name) {
  if (name.substr(0, 6) == "torch.") name.remove_prefix(6);
  for (const auto& entry : kTorchNames) {
    if (name == entry.name) return entry.dtype;
  }
  return std::nullopt;
}

const char* dtype_torch_name(DType dtype) {
  switch (dtype) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::I8: return "int8";
    case DType::U8: return "uint8";
    case DType::I16: return "int16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::BOOL: return "bool";
    default: return dtype_name(dtype);
  }
}

bool can_load_as_f32(DType dtype) {
  switch (dtype) {
    case DType::F16: case DType::BF16: case DType::F32: case DType::F64:
    case DType::F8_E4M3: case DType::F8_E5M2: case DType::F8_E8M0:
    case DType::F8_E4M3FNUZ: case DType::F8_E5M2FNUZ:
      return true;
    default:
      return false;
  }
}

bool can_store_from_f32(DType dtype) {
  return dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 || dtype == DType::F64;
}

}  // namespace alloy
