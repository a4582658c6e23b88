#pragma once

#include <napi.h>

namespace nccld {

// Exports peerCredentials(fd): { pid, uid, gid }.
void InitPeerCredentials(Napi::Env env, Napi::Object exports);

}  // namespace nccld
