#include "device_context.h"

#include <cstdio>

#include "cuda_lib.h"
#include "scoped_context.h"

namespace nccld {

std::shared_ptr<DeviceContext> DeviceContext::Open(int ordinal, GpuError* err) {
  const cu::Api& api = CudaLib::Get().api();
  std::shared_ptr<DeviceContext> d(new DeviceContext());
  d->ordinal_ = ordinal;
  cu::Result r = api.DeviceGet(&d->device_, ordinal);
  if (r != cu::kSuccess) {
    *err = GpuError::Cuda(r, "cuDeviceGet(" + std::to_string(ordinal) + ")");
    return nullptr;
  }
  char buf[256] = {0};
  if ((r = api.DeviceGetName(buf, sizeof(buf) - 1, d->device_)) != cu::kSuccess) {
    *err = GpuError::Cuda(r, "cuDeviceGetName");
    return nullptr;
  }
  d->name_ = buf;
  char bus[64] = {0};
  if ((r = api.DeviceGetPCIBusId(bus, sizeof(bus) - 1, d->device_)) != cu::kSuccess) {
    *err = GpuError::Cuda(r, "cuDeviceGetPCIBusId");
    return nullptr;
  }
  d->pciBusId_ = bus;
  // The UUID names the GPU whatever CUDA_VISIBLE_DEVICES says: clients match ordinals by it.
  unsigned char uuid[16] = {0};
  if ((r = api.DeviceGetUuid(&uuid, d->device_)) != cu::kSuccess) {
    *err = GpuError::Cuda(r, "cuDeviceGetUuid");
    return nullptr;
  }
  char text[48];
  std::snprintf(text, sizeof text, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", uuid[0], uuid[1],
                uuid[2], uuid[3], uuid[4], uuid[5], uuid[6], uuid[7], uuid[8], uuid[9], uuid[10], uuid[11], uuid[12],
                uuid[13], uuid[14], uuid[15]);
  d->uuid_ = text;
  if ((r = api.DevicePrimaryCtxRetain(&d->ctx_, d->device_)) != cu::kSuccess) {
    *err = GpuError::Cuda(r, "cuDevicePrimaryCtxRetain");
    return nullptr;
  }
  d->retained_ = true;
  if ((r = api.CtxSetCurrent(d->ctx_)) != cu::kSuccess) {
    *err = GpuError::Cuda(r, "cuCtxSetCurrent");
    return nullptr;
  }
  if ((r = api.StreamCreate(&d->stream_, cu::kStreamNonBlocking)) != cu::kSuccess) {
    d->stream_ = nullptr;
    *err = GpuError::Cuda(r, "cuStreamCreate");
    return nullptr;
  }
  return d;
}

DeviceContext::~DeviceContext() {
  const cu::Api& api = CudaLib::Get().api();
  if (ctx_ != nullptr && (stream_ != nullptr || !mapped_.empty())) {
    ScopedContext scope(ctx_);
    // Unmap whatever JS left open: dropping the last context reference would leak the mapping
    // if another holder of the primary context keeps it alive.
    for (const auto& m : mapped_) {
      for (unsigned i = 0; i < m.second; ++i) api.IpcCloseMemHandle(m.first);
    }
    if (stream_ != nullptr) api.StreamDestroy(stream_);  // returns at once; GPU work still drains
  }
  if (retained_) api.DevicePrimaryCtxRelease(device_);
}

GpuError DeviceContext::OpenIpc(const cu::IpcMemHandle& handle, IpcMapping* out) {
  const cu::Api& api = CudaLib::Get().api();
  ScopedContext scope(ctx_);
  if (scope.status() != cu::kSuccess) return GpuError::Cuda(scope.status(), "cuCtxPushCurrent");
  cu::DevicePtr ptr = 0;
  cu::Result r = api.IpcOpenMemHandle(&ptr, handle, cu::kIpcMemLazyEnablePeerAccess);
  if (r != cu::kSuccess) return GpuError::Cuda(r, "cuIpcOpenMemHandle");
  ++mapped_[ptr];
  ++ipcOpens_;
  out->ptr = ptr;
  r = api.MemGetAddressRange(&out->base, &out->size, ptr);
  if (r != cu::kSuccess) {
    CloseIpc(ptr);
    return GpuError::Cuda(r, "cuMemGetAddressRange");
  }
  int device = -1;
  r = api.PointerGetAttribute(&device, cu::kPointerAttributeDeviceOrdinal, ptr);
  if (r != cu::kSuccess) {
    CloseIpc(ptr);
    return GpuError::Cuda(r, "cuPointerGetAttribute(DEVICE_ORDINAL)");
  }
  out->device = device;
  return GpuError();
}

GpuError DeviceContext::CloseIpc(cu::DevicePtr ptr) {
  auto it = mapped_.find(ptr);
  if (it == mapped_.end()) {
    char msg[96];
    snprintf(msg, sizeof(msg), "pointer 0x%llx is not an IPC mapping open on this device", ptr);
    return GpuError::InvalidArg(msg, false);
  }
  ScopedContext scope(ctx_);
  if (scope.status() != cu::kSuccess) return GpuError::Cuda(scope.status(), "cuCtxPushCurrent");
  cu::Result r = CudaLib::Get().api().IpcCloseMemHandle(ptr);
  if (r != cu::kSuccess) return GpuError::Cuda(r, "cuIpcCloseMemHandle");
  if (--it->second == 0) mapped_.erase(it);
  ++ipcCloses_;
  return GpuError();
}

}  // namespace nccld
