#pragma once

#include <napi.h>

namespace nccld {

// Exports setParentDeathSignal(expectedParentPid): boolean.
void InitParentDeath(Napi::Env env, Napi::Object exports);

}  // namespace nccld
