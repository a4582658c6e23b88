#pragma once
#include <napi.h>

// Adds the `gpu` object (probe, probeCuda, version, getUniqueId, Device, Comm, DeviceBuffer)
// to the addon's exports. Loading libcuda/libnccl is deferred to first use, so this never
// fails on hosts without a GPU.
void InitGpu(Napi::Env env, Napi::Object exports);
