#pragma once

#include <napi.h>

namespace nccld {

// Exports the file-descriptor helpers: memfdCreate, fdInfo, SEALS, closeFd, dupFd,
// socketPair, sendFds, recvFds, raiseFdLimit.
void InitFdUtils(Napi::Env env, Napi::Object exports);

}  // namespace nccld
