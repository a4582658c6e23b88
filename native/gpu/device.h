#pragma once
#include <napi.h>

#include <memory>
#include <string>

#include "device_context.h"

namespace nccld {

// gpu.Device: the GPU a device process drives (one per process). Holds a DeviceContext.
class Device : public Napi::ObjectWrap<Device> {
 public:
  static Napi::Function Define(Napi::Env env);
  // The Device wrapped by `value`, or nullptr if it is not one (type-tag checked, so another
  // wrapped class can never be reinterpreted as a Device).
  static Device* FromValue(Napi::Value value);

  explicit Device(const Napi::CallbackInfo& info);
  std::shared_ptr<DeviceContext> context() const { return ctx_; }  // null once closed

 private:
  Napi::Value GetOrdinal(const Napi::CallbackInfo& info);
  Napi::Value GetName(const Napi::CallbackInfo& info);
  Napi::Value GetPciBusId(const Napi::CallbackInfo& info);
  Napi::Value GetUuid(const Napi::CallbackInfo& info);
  Napi::Value OpenIpcHandle(const Napi::CallbackInfo& info);
  Napi::Value CloseIpcHandle(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<DeviceContext> ctx_;
  int ordinal_ = -1;
  std::string name_;
  std::string pciBusId_;
  std::string uuid_;
  uint64_t closedOpens_ = 0;   // stats survive close()
  uint64_t closedCloses_ = 0;
};

}  // namespace nccld
