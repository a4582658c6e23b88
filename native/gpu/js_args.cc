#include "js_args.h"

#include <cmath>
#include <string>

#include "gpu_error.h"

namespace nccld {
namespace js {

namespace {

bool Fail(Napi::Env env, const char* name, const char* expected) {
  GpuError::InvalidArg(std::string("argument '") + name + "' must be " + expected).Throw(env);
  return false;
}

}  // namespace

bool Int(const Napi::CallbackInfo& info, size_t i, const char* name, int* out) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) return Fail(info.Env(), name, "an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < INT32_MIN || d > INT32_MAX) {
    return Fail(info.Env(), name, "a 32-bit integer");
  }
  *out = static_cast<int>(d);
  return true;
}

bool Size(const Napi::CallbackInfo& info, size_t i, const char* name, std::size_t* out,
          bool optional, std::size_t fallback) {
  Napi::Value v = info[i];
  if (optional && v.IsUndefined()) {
    *out = fallback;
    return true;
  }
  if (!v.IsNumber()) return Fail(info.Env(), name, "a non-negative integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < 0 || d > 9007199254740992.0) {
    return Fail(info.Env(), name, "a non-negative safe integer");
  }
  *out = static_cast<std::size_t>(d);
  return true;
}

bool Pointer(const Napi::CallbackInfo& info, size_t i, const char* name, uint64_t* out) {
  Napi::Value v = info[i];
  if (!v.IsBigInt()) return Fail(info.Env(), name, "a bigint device pointer");
  bool lossless = false;
  *out = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) return Fail(info.Env(), name, "a bigint in [0, 2^64)");
  return true;
}

bool View(const Napi::CallbackInfo& info, size_t i, const char* name, void** data,
          std::size_t* len) {
  Napi::Value v = info[i];
  if (v.IsTypedArray()) {
    Napi::TypedArray t = v.As<Napi::TypedArray>();
    *data = static_cast<char*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    *len = t.ByteLength();
    return true;
  }
  if (v.IsDataView()) {
    Napi::DataView dv = v.As<Napi::DataView>();
    *data = static_cast<char*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
    *len = dv.ByteLength();
    return true;
  }
  return Fail(info.Env(), name, "an ArrayBufferView (Buffer, TypedArray or DataView)");
}

bool FixedBytes(const Napi::CallbackInfo& info, size_t i, const char* name, std::size_t len,
                const void** data) {
  void* p = nullptr;
  std::size_t n = 0;
  if (!View(info, i, name, &p, &n)) return false;
  if (n != len) {
    return Fail(info.Env(), name, (std::string("exactly ") + std::to_string(len) + " bytes").c_str());
  }
  *data = p;
  return true;
}

}  // namespace js
}  // namespace nccld
