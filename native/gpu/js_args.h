#pragma once
// Argument type sanity for the gpu bindings. Real validation (ranges, dtype/op values, sizes
// that make sense) happens in JS; here we only refuse what would be unsafe to pass on.
// Each helper throws a TypeError with code NCCLD_ERR_INVALID_ARG and returns false on failure.
#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace nccld {
namespace js {

bool Int(const Napi::CallbackInfo& info, size_t i, const char* name, int* out);
// Non-negative integral Number up to 2^53; `fallback` is used when the argument is undefined
// and optional is true.
bool Size(const Napi::CallbackInfo& info, size_t i, const char* name, std::size_t* out,
          bool optional = false, std::size_t fallback = 0);
bool Pointer(const Napi::CallbackInfo& info, size_t i, const char* name, uint64_t* out);
// A Buffer/Uint8Array (any TypedArray or DataView) of exactly `len` bytes.
bool FixedBytes(const Napi::CallbackInfo& info, size_t i, const char* name, std::size_t len,
                const void** data);
// Any ArrayBufferView: its bytes.
bool View(const Napi::CallbackInfo& info, size_t i, const char* name, void** data,
          std::size_t* len);

}  // namespace js
}  // namespace nccld
