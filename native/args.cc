#include "args.h"

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

}  // namespace nccld
