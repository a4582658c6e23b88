#include "args.h"

#include <climits>
#include <cmath>

namespace nccld {

bool ToInteger(const Napi::Value& v, int64_t min, int64_t max, int64_t* out) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  // The range test comes first so the cast below is always defined (NaN fails it too).
  if (!(d >= static_cast<double>(min) && d <= static_cast<double>(max))) return false;
  if (std::trunc(d) != d) return false;
  *out = static_cast<int64_t>(d);
  return true;
}

bool ToIndex(const Napi::Value& v, uint64_t* out) {
  int64_t i;
  if (!ToInteger(v, 0, static_cast<int64_t>(kMaxSafeInteger), &i)) return false;
  *out = static_cast<uint64_t>(i);
  return true;
}

bool ToCString(const Napi::Value& v, std::string* out) {
  if (!v.IsString()) return false;
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) return false;
  *out = std::move(s);
  return true;
}

bool ToFd(const Napi::Value& v, int* out) {
  int64_t i;
  if (!ToInteger(v, 0, INT32_MAX, &i)) return false;
  *out = static_cast<int>(i);
  return true;
}

bool ToFdList(const Napi::Value& v, size_t max, std::vector<int>* out) {
  if (!v.IsArray()) return false;
  Napi::Array arr = v.As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > max) return false;
  out->clear();
  out->reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    Napi::Value item = arr.Get(i);
    int fd;
    if (item.IsEmpty() || !ToFd(item, &fd)) return false;
    out->push_back(fd);
  }
  return true;
}

bool ToBytes(const Napi::Value& v, const uint8_t** data, size_t* length) {
  if (!v.IsTypedArray()) return false;
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array) return false;
  Napi::Uint8Array bytes = v.As<Napi::Uint8Array>();
  *data = bytes.Data();
  *length = bytes.ElementLength();
  return true;
}

}  // namespace nccld
