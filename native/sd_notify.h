#pragma once

#include <napi.h>

namespace nccld {

// Exports sdNotify(state): boolean.
void InitSdNotify(Napi::Env env, Napi::Object exports);

}  // namespace nccld
