#include "gpu_error.h"

#include "cuda_lib.h"
#include "error_codes.h"
#include "nccl_lib.h"

namespace nccld {

Napi::Error GpuError::ToJs(Napi::Env env) const {
  Napi::Error err = typeError ? Napi::TypeError::New(env, message) : Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  if (!detailKey.empty()) err.Set(detailKey, Napi::String::New(env, detailValue));
  return err;
}

GpuError GpuError::Cuda(cu::Result r, const std::string& call) {
  const CudaLib& lib = CudaLib::Get();
  GpuError e;
  e.code = kErrCuda;
  e.detailKey = "cudaError";
  e.detailValue = lib.ErrorName(r);
  e.message = call + " failed: " + e.detailValue + " (" + lib.ErrorString(r) + ")";
  return e;
}

GpuError GpuError::Nccl(nccl::Result r, const std::string& call, nccl::Comm lastErrorComm) {
  const NcclLib& lib = NcclLib::Get();
  GpuError e;
  e.code = kErrNccl;
  e.detailKey = "ncclError";
  e.detailValue = NcclLib::ResultName(r);
  e.message = call + " failed: " + e.detailValue + " (" + lib.ErrorString(r) + ")";
  std::string last = lib.LastError(lastErrorComm);
  if (!last.empty()) e.message += "; NCCL last error: " + last;
  return e;
}

GpuError GpuError::Unavailable(const std::string& why) {
  GpuError e;
  e.code = kErrGpuUnavailable;
  e.message = "GPU support unavailable: " + why;
  return e;
}

GpuError GpuError::Closed(const std::string& what) {
  GpuError e;
  e.code = kErrClosed;
  e.message = what + " is closed";
  return e;
}

GpuError GpuError::Aborted(const std::string& why) {
  GpuError e;
  e.code = kErrAborted;
  e.message = why;
  return e;
}

GpuError GpuError::InvalidArg(const std::string& why, bool typeError) {
  GpuError e;
  e.code = kErrInvalidArg;
  e.message = why;
  e.typeError = typeError;
  return e;
}

}  // namespace nccld
