#pragma once
#include <napi.h>

#include <string>

#include "cuda_api.h"
#include "nccl_api.h"

namespace nccld {

// An error as plain data, so native threads can build one and the JS thread can throw or
// reject with it later. Every JS error we raise carries a string `code`.
struct GpuError {
  std::string code;         // empty: no error
  std::string detailKey;    // "cudaError" / "ncclError" / "" (extra property on the JS error)
  std::string detailValue;  // CUresult or ncclResult_t name
  std::string message;
  bool typeError = false;   // raise as TypeError (argument type sanity)

  bool ok() const { return code.empty(); }
  Napi::Error ToJs(Napi::Env env) const;
  void Throw(Napi::Env env) const { ToJs(env).ThrowAsJavaScriptException(); }

  static GpuError Cuda(cu::Result r, const std::string& call);
  // lastErrorComm is passed to ncclGetLastError (NCCL ignores it today).
  static GpuError Nccl(nccl::Result r, const std::string& call, nccl::Comm lastErrorComm);
  static GpuError Unavailable(const std::string& why);
  static GpuError Closed(const std::string& what);
  static GpuError Aborted(const std::string& why);
  static GpuError InvalidArg(const std::string& why, bool typeError = true);
};

}  // namespace nccld
