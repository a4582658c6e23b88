#pragma once

#include <napi.h>

namespace nccld {

// Exports hostCollective: runs every rank's share of one host-backend collective over JS
// memory, to test the kernels of host_collectives.h without a daemon.
void InitHostCollectivesBinding(Napi::Env env, Napi::Object exports);

}  // namespace nccld
