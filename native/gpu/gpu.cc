#include "gpu.h"

#include <string>

#include "comm.h"
#include "cuda_lib.h"
#include "device.h"
#include "device_buffer.h"
#include "gpu_error.h"
#include "nccl_lib.h"
#include "nccl_ring_worker.h"

namespace nccld {
namespace {

void AppendReason(std::string* reason, const std::string& why) {
  if (!reason->empty()) *reason += "; ";
  *reason += why;
}

// Never throws: every failure becomes available=false with the reason spelled out.
Napi::Value ProbeImpl(Napi::Env env, bool needNccl) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Array devices = Napi::Array::New(env);
  std::string reason;
  const CudaLib& cuda = CudaLib::Get();
  if (cuda.driverVersion() > 0) out.Set("driverVersion", Napi::Number::New(env, cuda.driverVersion()));
  if (!cuda.ready()) {
    AppendReason(&reason, cuda.unavailableReason());
  } else {
    const cu::Api& api = cuda.api();
    int count = 0;
    cu::Result r = api.DeviceGetCount(&count);
    if (r != cu::kSuccess) {
      AppendReason(&reason, GpuError::Cuda(r, "cuDeviceGetCount").message);
    } else if (count == 0) {
      AppendReason(&reason, "cuDeviceGetCount reports 0 CUDA devices");
    }
    for (int i = 0; r == cu::kSuccess && i < count; ++i) {
      cu::Device dev = 0;
      char name[256] = {0};
      char bus[64] = {0};
      std::size_t total = 0;
      cu::Result dr = api.DeviceGet(&dev, i);
      if (dr == cu::kSuccess) dr = api.DeviceGetName(name, sizeof(name) - 1, dev);
      if (dr == cu::kSuccess) dr = api.DeviceGetPCIBusId(bus, sizeof(bus) - 1, dev);
      if (dr == cu::kSuccess) dr = api.DeviceTotalMem(&total, dev);
      if (dr != cu::kSuccess) {
        AppendReason(&reason, GpuError::Cuda(dr, "querying device " + std::to_string(i)).message);
        break;
      }
      Napi::Object d = Napi::Object::New(env);
      d.Set("ordinal", Napi::Number::New(env, i));
      d.Set("name", Napi::String::New(env, name));
      d.Set("pciBusId", Napi::String::New(env, bus));
      d.Set("totalBytes", Napi::Number::New(env, static_cast<double>(total)));
      devices.Set(devices.Length(), d);
    }
  }
  if (needNccl) {
    const NcclLib& nccl = NcclLib::Get();
    if (!nccl.loaded()) {
      AppendReason(&reason, nccl.unavailableReason());
    } else if (nccl.version() > 0) {
      out.Set("ncclVersion", Napi::Number::New(env, nccl.version()));
    }
  }
  out.Set("available", Napi::Boolean::New(env, reason.empty()));
  if (!reason.empty()) out.Set("reason", Napi::String::New(env, reason));
  out.Set("devices", devices);
  return out;
}

Napi::Value Probe(const Napi::CallbackInfo& info) { return ProbeImpl(info.Env(), true); }

Napi::Value ProbeCuda(const Napi::CallbackInfo& info) { return ProbeImpl(info.Env(), false); }

Napi::Value Version(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  int cuda = CudaLib::Get().driverVersion();
  int nccl = NcclLib::Get().version();
  out.Set("cuda", cuda > 0 ? Napi::Value(Napi::Number::New(env, cuda)) : env.Null());
  out.Set("nccl", nccl > 0 ? Napi::Value(Napi::Number::New(env, nccl)) : env.Null());
  return out;
}

Napi::Value GetUniqueId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const NcclLib& lib = NcclLib::Get();
  if (!lib.loaded()) {
    GpuError::Unavailable(lib.unavailableReason()).Throw(env);
    return env.Undefined();
  }
  nccl::UniqueId id;
  nccl::Result r = lib.api().GetUniqueId(&id);
  if (r != nccl::kSuccess) {
    GpuError::Nccl(r, "ncclGetUniqueId", nullptr).Throw(env);
    return env.Undefined();
  }
  return Napi::Buffer<char>::Copy(env, id.internal, sizeof(id.internal));
}

}  // namespace
}  // namespace nccld

void InitGpu(Napi::Env env, Napi::Object exports) {
  Napi::Object gpu = Napi::Object::New(env);
  gpu.Set("probe", Napi::Function::New<nccld::Probe>(env, "probe"));
  gpu.Set("probeCuda", Napi::Function::New<nccld::ProbeCuda>(env, "probeCuda"));
  gpu.Set("version", Napi::Function::New<nccld::Version>(env, "version"));
  gpu.Set("getUniqueId", Napi::Function::New<nccld::GetUniqueId>(env, "getUniqueId"));
  gpu.Set("Device", nccld::Device::Define(env));
  gpu.Set("Comm", nccld::Comm::Define(env));
  gpu.Set("DeviceBuffer", nccld::DeviceBuffer::Define(env));
  gpu.Set("NcclRingWorker", nccld::NcclRingWorker::Define(env));
  exports.Set("gpu", gpu);
}
