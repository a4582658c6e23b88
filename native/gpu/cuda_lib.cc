#include "cuda_lib.h"

#include "dynamic_library.h"

namespace nccld {

const CudaLib& CudaLib::Get() {
  // Leaked on purpose: no destructor may run (or dlclose) while NCCL threads still use the driver.
  static const CudaLib* instance = new CudaLib();
  return *instance;
}

CudaLib::CudaLib() {
  // NCCLD_LIBCUDA lets a host with the driver outside the loader path (or a test stub) point at it.
  std::string path;
  std::string why;
  void* lib = OpenLibrary("NCCLD_LIBCUDA", "libcuda.so.1", &path, &why);
  if (lib == nullptr) {
    reason_ = "cannot load the CUDA driver (" + why + ")";
    return;
  }
  // Versioned names are what cuda.h's #defines map the plain names to (CUDA 12/13).
  bool ok = Resolve(lib, "cuGetErrorName", &api_.GetErrorName, &why) &&
            Resolve(lib, "cuGetErrorString", &api_.GetErrorString, &why) &&
            Resolve(lib, "cuInit", &api_.Init, &why) &&
            Resolve(lib, "cuDriverGetVersion", &api_.DriverGetVersion, &why) &&
            Resolve(lib, "cuDeviceGet", &api_.DeviceGet, &why) &&
            Resolve(lib, "cuDeviceGetCount", &api_.DeviceGetCount, &why) &&
            Resolve(lib, "cuDeviceGetName", &api_.DeviceGetName, &why) &&
            Resolve(lib, "cuDeviceGetPCIBusId", &api_.DeviceGetPCIBusId, &why) &&
            Resolve(lib, "cuDeviceGetUuid_v2", &api_.DeviceGetUuid, &why) &&
            Resolve(lib, "cuDeviceTotalMem_v2", &api_.DeviceTotalMem, &why) &&
            Resolve(lib, "cuDevicePrimaryCtxRetain", &api_.DevicePrimaryCtxRetain, &why) &&
            Resolve(lib, "cuDevicePrimaryCtxRelease_v2", &api_.DevicePrimaryCtxRelease, &why) &&
            Resolve(lib, "cuCtxSetCurrent", &api_.CtxSetCurrent, &why) &&
            Resolve(lib, "cuCtxPushCurrent_v2", &api_.CtxPushCurrent, &why) &&
            Resolve(lib, "cuCtxPopCurrent_v2", &api_.CtxPopCurrent, &why) &&
            Resolve(lib, "cuCtxSynchronize", &api_.CtxSynchronize, &why) &&
            Resolve(lib, "cuStreamCreate", &api_.StreamCreate, &why) &&
            Resolve(lib, "cuStreamDestroy_v2", &api_.StreamDestroy, &why) &&
            Resolve(lib, "cuEventCreate", &api_.EventCreate, &why) &&
            Resolve(lib, "cuEventDestroy_v2", &api_.EventDestroy, &why) &&
            Resolve(lib, "cuEventRecord", &api_.EventRecord, &why) &&
            Resolve(lib, "cuEventQuery", &api_.EventQuery, &why) &&
            Resolve(lib, "cuMemAlloc_v2", &api_.MemAlloc, &why) &&
            Resolve(lib, "cuMemFree_v2", &api_.MemFree, &why) &&
            Resolve(lib, "cuMemcpyHtoD_v2", &api_.MemcpyHtoD, &why) &&
            Resolve(lib, "cuMemcpyDtoH_v2", &api_.MemcpyDtoH, &why) &&
            Resolve(lib, "cuMemGetAddressRange_v2", &api_.MemGetAddressRange, &why) &&
            Resolve(lib, "cuPointerGetAttribute", &api_.PointerGetAttribute, &why) &&
            Resolve(lib, "cuIpcGetMemHandle", &api_.IpcGetMemHandle, &why) &&
            Resolve(lib, "cuIpcOpenMemHandle_v2", &api_.IpcOpenMemHandle, &why) &&
            Resolve(lib, "cuIpcCloseMemHandle", &api_.IpcCloseMemHandle, &why) &&
            Resolve(lib, "cuIpcGetEventHandle", &api_.IpcGetEventHandle, &why) &&
            Resolve(lib, "cuIpcOpenEventHandle", &api_.IpcOpenEventHandle, &why) &&
            Resolve(lib, "cuStreamWaitEvent", &api_.StreamWaitEvent, &why);
  if (!ok) {
    reason_ = path + " is unusable: " + why;
    return;  // keep the handle open: harmless, and dlclose of libcuda is never safe mid-process
  }
  loaded_ = true;
  if (api_.DriverGetVersion(&driverVersion_) != cu::kSuccess) driverVersion_ = 0;
  initResult_ = api_.Init(0);
  if (initResult_ != cu::kSuccess) {
    reason_ = "cuInit(0) failed: " + ErrorName(initResult_) + " (" + ErrorString(initResult_) + ")";
  }
}

std::string CudaLib::ErrorName(cu::Result r) const {
  const char* s = nullptr;
  if (loaded_ && api_.GetErrorName(r, &s) == cu::kSuccess && s != nullptr) return s;
  return "CUresult(" + std::to_string(r) + ")";
}

std::string CudaLib::ErrorString(cu::Result r) const {
  const char* s = nullptr;
  if (loaded_ && api_.GetErrorString(r, &s) == cu::kSuccess && s != nullptr) return s;
  return "unrecognized CUDA error code";
}

}  // namespace nccld
