// Type-sanity checks for arguments. Real validation lives in the JS wrapper; these only
// make sure a bad value can never turn into a crash or a wrapped-around size.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace nccld {

// Largest integer a JS number holds exactly (Number.MAX_SAFE_INTEGER).
constexpr uint64_t kMaxSafeInteger = (uint64_t{1} << 53) - 1;

// A JS number that is an integer in [min, max] (max <= 2^53 - 1).
bool ToInteger(const Napi::Value& v, int64_t min, int64_t max, int64_t* out);

// A non-negative safe integer (sizes, counts, offsets).
bool ToIndex(const Napi::Value& v, uint64_t* out);

// A string without NUL bytes (C APIs would silently cut it there).
bool ToCString(const Napi::Value& v, std::string* out);

}  // namespace nccld
