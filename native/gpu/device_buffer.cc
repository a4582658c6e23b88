#include "device_buffer.h"

#include "cuda_lib.h"
#include "gpu_error.h"
#include "js_args.h"
#include "scoped_context.h"

namespace nccld {

namespace {

struct AllocData {  // initRank-style handoff: JS cannot construct an External
  int ordinal;
  cu::Device device;
  cu::Context ctx;
  cu::DevicePtr ptr;
  std::size_t bytes;
};

}  // namespace

Napi::Function DeviceBuffer::Define(Napi::Env env) {
  auto* ctor = new Napi::FunctionReference();  // leaked: lives as long as the environment
  Napi::Function cls =
      DefineClass(env, "DeviceBuffer",
                  {StaticMethod<&DeviceBuffer::Alloc>("alloc", napi_default, ctor),
                   InstanceAccessor<&DeviceBuffer::GetOrdinal>("ordinal"),
                   InstanceAccessor<&DeviceBuffer::GetBytes>("bytes"),
                   InstanceAccessor<&DeviceBuffer::GetPtr>("ptr"),
                   InstanceMethod<&DeviceBuffer::Write>("write"),
                   InstanceMethod<&DeviceBuffer::Read>("read"),
                   InstanceMethod<&DeviceBuffer::IpcHandle>("ipcHandle"),
                   InstanceMethod<&DeviceBuffer::Free>("free")});
  *ctor = Napi::Persistent(cls);
  ctor->SuppressDestruct();
  return cls;
}

Napi::Value DeviceBuffer::Alloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CudaLib& cuda = CudaLib::Get();
  if (!cuda.ready()) {
    GpuError::Unavailable(cuda.unavailableReason()).Throw(env);
    return env.Undefined();
  }
  AllocData d{-1, 0, nullptr, 0, 0};
  if (!js::Int(info, 0, "ordinal", &d.ordinal) || !js::Size(info, 1, "bytes", &d.bytes)) {
    return env.Undefined();
  }
  const cu::Api& api = cuda.api();
  cu::Result r = api.DeviceGet(&d.device, d.ordinal);
  if (r != cu::kSuccess) {
    GpuError::Cuda(r, "cuDeviceGet(" + std::to_string(d.ordinal) + ")").Throw(env);
    return env.Undefined();
  }
  if ((r = api.DevicePrimaryCtxRetain(&d.ctx, d.device)) != cu::kSuccess) {
    GpuError::Cuda(r, "cuDevicePrimaryCtxRetain").Throw(env);
    return env.Undefined();
  }
  {
    ScopedContext scope(d.ctx);
    r = scope.status() != cu::kSuccess ? scope.status() : api.MemAlloc(&d.ptr, d.bytes);
  }
  if (r != cu::kSuccess) {
    api.DevicePrimaryCtxRelease(d.device);
    GpuError::Cuda(r, "cuMemAlloc(" + std::to_string(d.bytes) + " bytes)").Throw(env);
    return env.Undefined();
  }
  auto* ctor = static_cast<Napi::FunctionReference*>(info.Data());
  Napi::Object obj = ctor->New({Napi::External<AllocData>::New(env, &d)});
  if (env.IsExceptionPending()) {
    if (d.ptr != 0) {  // constructor never took it
      {
        ScopedContext scope(d.ctx);
        api.MemFree(d.ptr);
      }
      api.DevicePrimaryCtxRelease(d.device);
    }
    return env.Undefined();
  }
  return obj;
}

DeviceBuffer::DeviceBuffer(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<DeviceBuffer>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    GpuError::InvalidArg("use gpu.DeviceBuffer.alloc() to create a DeviceBuffer").Throw(info.Env());
    return;
  }
  AllocData* d = info[0].As<Napi::External<AllocData>>().Data();
  ordinal_ = d->ordinal;
  device_ = d->device;
  ctx_ = d->ctx;
  ptr_ = d->ptr;
  bytes_ = d->bytes;
  d->ptr = 0;  // ours now
}

DeviceBuffer::~DeviceBuffer() { Release(); }

void DeviceBuffer::Release() {
  if (ptr_ == 0) return;
  const cu::Api& api = CudaLib::Get().api();
  {
    ScopedContext scope(ctx_);
    api.MemFree(ptr_);
  }
  api.DevicePrimaryCtxRelease(device_);
  ptr_ = 0;
  ctx_ = nullptr;
}

Napi::Value DeviceBuffer::GetOrdinal(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ordinal_);
}

Napi::Value DeviceBuffer::GetBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(bytes_));
}

Napi::Value DeviceBuffer::GetPtr(const Napi::CallbackInfo& info) {
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(ptr_));  // 0n once freed
}

bool DeviceBuffer::CheckRange(Napi::Env env, std::size_t offset, std::size_t len) {
  if (ptr_ == 0) {
    GpuError::Closed("DeviceBuffer").Throw(env);
    return false;
  }
  // Bounds are memory safety, not policy: checked here even though JS validates too.
  if (offset > bytes_ || len > bytes_ - offset) {
    GpuError::InvalidArg("range [" + std::to_string(offset) + ", +" + std::to_string(len) +
                             ") exceeds the buffer's " + std::to_string(bytes_) + " bytes",
                         false)
        .Throw(env);
    return false;
  }
  return true;
}

Napi::Value DeviceBuffer::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* src = nullptr;
  std::size_t len = 0;
  std::size_t offset = 0;
  if (!js::View(info, 0, "src", &src, &len) || !js::Size(info, 1, "byteOffset", &offset, true, 0) ||
      !CheckRange(env, offset, len)) {
    return env.Undefined();
  }
  const cu::Api& api = CudaLib::Get().api();
  ScopedContext scope(ctx_);
  cu::Result r = scope.status();
  if (r == cu::kSuccess) r = api.MemcpyHtoD(ptr_ + offset, src, len);
  // From pageable memory the call may return before the DMA lands; the buffer is about to be
  // handed to another process that cannot order against our stream, so wait for it here.
  if (r == cu::kSuccess) r = api.CtxSynchronize();
  if (r != cu::kSuccess) GpuError::Cuda(r, "cuMemcpyHtoD").Throw(env);
  return env.Undefined();
}

Napi::Value DeviceBuffer::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* dst = nullptr;
  std::size_t len = 0;
  std::size_t offset = 0;
  if (!js::View(info, 0, "dst", &dst, &len) || !js::Size(info, 1, "byteOffset", &offset, true, 0) ||
      !CheckRange(env, offset, len)) {
    return env.Undefined();
  }
  ScopedContext scope(ctx_);
  cu::Result r = scope.status();
  if (r == cu::kSuccess) r = CudaLib::Get().api().MemcpyDtoH(dst, ptr_ + offset, len);
  if (r != cu::kSuccess) GpuError::Cuda(r, "cuMemcpyDtoH").Throw(env);
  return env.Undefined();
}

Napi::Value DeviceBuffer::IpcHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckRange(env, 0, 0)) return env.Undefined();
  cu::IpcMemHandle handle;
  ScopedContext scope(ctx_);
  cu::Result r = scope.status();
  if (r == cu::kSuccess) r = CudaLib::Get().api().IpcGetMemHandle(&handle, ptr_);
  if (r != cu::kSuccess) {
    GpuError::Cuda(r, "cuIpcGetMemHandle").Throw(env);
    return env.Undefined();
  }
  return Napi::Buffer<char>::Copy(env, handle.reserved, sizeof(handle.reserved));
}

Napi::Value DeviceBuffer::Free(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

}  // namespace nccld
