// Type-sanity checks for arguments. Real validation lives in the JS wrapper; these only
// make sure a bad value can never turn into a crash or a wrapped-around size.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nccld {

// Largest integer a JS number holds exactly (Number.MAX_SAFE_INTEGER).
constexpr uint64_t kMaxSafeInteger = (uint64_t{1} << 53) - 1;

// A JS number that is an integer in [min, max] (max <= 2^53 - 1).
bool ToInteger(const Napi::Value& v, int64_t min, int64_t max, int64_t* out);

// A non-negative safe integer (sizes, counts, offsets).
bool ToIndex(const Napi::Value& v, uint64_t* out);

// A string without NUL bytes (C APIs would silently cut it there).
bool ToCString(const Napi::Value& v, std::string* out);

// A file descriptor number: an integer in [0, INT32_MAX]. Whether it is open is not checked.
bool ToFd(const Napi::Value& v, int* out);

// An array of at most `max` file descriptor numbers.
bool ToFdList(const Napi::Value& v, size_t max, std::vector<int>* out);

// The bytes of a Uint8Array (a Buffer is one). They stay valid only while `v` is reachable
// and JS does not run: copy them before calling back into JS.
bool ToBytes(const Napi::Value& v, const uint8_t** data, size_t* length);

}  // namespace nccld
