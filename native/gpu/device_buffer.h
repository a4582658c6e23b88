#pragma once
#include <napi.h>

#include <cstddef>

#include "cuda_api.h"

namespace nccld {

// gpu.DeviceBuffer: client-side device memory (cuMemAlloc in the device's primary context)
// that can be filled, read back and exported as a CUDA IPC handle. Needs libcuda only.
class DeviceBuffer : public Napi::ObjectWrap<DeviceBuffer> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit DeviceBuffer(const Napi::CallbackInfo& info);  // only via DeviceBuffer.alloc
  ~DeviceBuffer() override;

 private:
  static Napi::Value Alloc(const Napi::CallbackInfo& info);
  Napi::Value GetOrdinal(const Napi::CallbackInfo& info);
  Napi::Value GetBytes(const Napi::CallbackInfo& info);
  Napi::Value GetPtr(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value IpcHandle(const Napi::CallbackInfo& info);
  Napi::Value Free(const Napi::CallbackInfo& info);

  // Validates the open state and the [offset, offset+len) range; throws and returns false.
  bool CheckRange(Napi::Env env, std::size_t offset, std::size_t len);
  void Release();  // cuMemFree + primary context release; idempotent

  int ordinal_ = -1;
  cu::Device device_ = 0;
  cu::Context ctx_ = nullptr;
  cu::DevicePtr ptr_ = 0;
  std::size_t bytes_ = 0;
};

}  // namespace nccld
