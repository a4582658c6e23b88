#include "device.h"

#include <cstring>

#include "cuda_lib.h"
#include "js_args.h"

namespace nccld {

namespace {
const napi_type_tag kDeviceTag = {0x6e63636c64446576ULL, 0x9c1f3a2b7d4e5a61ULL};
}  // namespace

Napi::Function Device::Define(Napi::Env env) {
  return DefineClass(env, "Device",
                     {InstanceAccessor<&Device::GetOrdinal>("ordinal"),
                      InstanceAccessor<&Device::GetName>("name"),
                      InstanceAccessor<&Device::GetPciBusId>("pciBusId"),
                      InstanceAccessor<&Device::GetUuid>("uuid"),
                      InstanceMethod<&Device::OpenIpcHandle>("openIpcHandle"),
                      InstanceMethod<&Device::CloseIpcHandle>("closeIpcHandle"),
                      InstanceMethod<&Device::Stats>("stats"),
                      InstanceMethod<&Device::Close>("close")});
}

Device* Device::FromValue(Napi::Value value) {
  if (!value.IsObject()) return nullptr;
  Napi::Object obj = value.As<Napi::Object>();
  if (!obj.CheckTypeTag(&kDeviceTag)) return nullptr;
  return Device::Unwrap(obj);
}

Device::Device(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Device>(info) {
  Napi::Env env = info.Env();
  const CudaLib& cuda = CudaLib::Get();
  if (!cuda.ready()) {
    GpuError::Unavailable(cuda.unavailableReason()).Throw(env);
    return;
  }
  if (!js::Int(info, 0, "ordinal", &ordinal_)) return;
  GpuError err;
  ctx_ = DeviceContext::Open(ordinal_, &err);
  if (!ctx_) {
    err.Throw(env);
    return;
  }
  name_ = ctx_->name();
  pciBusId_ = ctx_->pciBusId();
  uuid_ = ctx_->uuid();
  info.This().As<Napi::Object>().TypeTag(&kDeviceTag);
}

Napi::Value Device::GetOrdinal(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ordinal_);
}

Napi::Value Device::GetName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), name_);
}

Napi::Value Device::GetPciBusId(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), pciBusId_);
}

Napi::Value Device::GetUuid(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), uuid_);
}

Napi::Value Device::OpenIpcHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ctx_) {
    GpuError::Closed("Device").Throw(env);
    return env.Undefined();
  }
  const void* bytes = nullptr;
  if (!js::FixedBytes(info, 0, "handle", cu::kIpcHandleSize, &bytes)) return env.Undefined();
  cu::IpcMemHandle handle;
  std::memcpy(handle.reserved, bytes, sizeof(handle.reserved));
  DeviceContext::IpcMapping m;
  GpuError err = ctx_->OpenIpc(handle, &m);
  if (!err.ok()) {
    err.Throw(env);
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("ptr", Napi::BigInt::New(env, static_cast<uint64_t>(m.ptr)));
  out.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(m.base)));
  out.Set("size", Napi::Number::New(env, static_cast<double>(m.size)));
  out.Set("device", Napi::Number::New(env, m.device));
  return out;
}

Napi::Value Device::CloseIpcHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ctx_) {
    GpuError::Closed("Device").Throw(env);
    return env.Undefined();
  }
  uint64_t ptr = 0;
  if (!js::Pointer(info, 0, "ptr", &ptr)) return env.Undefined();
  GpuError err = ctx_->CloseIpc(ptr);
  if (!err.ok()) err.Throw(env);
  return env.Undefined();
}

Napi::Value Device::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("ipcOpens", Napi::Number::New(env, static_cast<double>(ctx_ ? ctx_->ipcOpens() : closedOpens_)));
  out.Set("ipcCloses",
          Napi::Number::New(env, static_cast<double>(ctx_ ? ctx_->ipcCloses() : closedCloses_)));
  return out;
}

Napi::Value Device::Close(const Napi::CallbackInfo& info) {
  if (ctx_) {
    closedOpens_ = ctx_->ipcOpens();
    closedCloses_ = ctx_->ipcCloses();
    // The stream, the mappings and the context go now, or when the last Comm using them is
    // closed, whichever is later.
    ctx_.reset();
  }
  return info.Env().Undefined();
}

}  // namespace nccld
