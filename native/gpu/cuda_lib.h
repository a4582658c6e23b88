#pragma once
#include <string>

#include "cuda_api.h"

namespace nccld {

// libcuda.so.1, opened lazily once per process. Never throws: callers read loaded()/ready()
// and turn the recorded reason into NCCLD_ERR_GPU_UNAVAILABLE.
class CudaLib {
 public:
  static const CudaLib& Get();  // first call dlopens, resolves every symbol and runs cuInit(0)

  bool loaded() const { return loaded_; }                     // library and all symbols present
  bool ready() const { return loaded_ && initResult_ == cu::kSuccess; }
  const std::string& unavailableReason() const { return reason_; }
  int driverVersion() const { return driverVersion_; }        // 0 when unknown
  const cu::Api& api() const { return api_; }

  std::string ErrorName(cu::Result r) const;                  // "CUDA_ERROR_OUT_OF_MEMORY"
  std::string ErrorString(cu::Result r) const;                // "out of memory"

 private:
  CudaLib();
  bool loaded_ = false;
  cu::Result initResult_ = -1;
  int driverVersion_ = 0;
  std::string reason_;
  cu::Api api_{};
};

}  // namespace nccld
