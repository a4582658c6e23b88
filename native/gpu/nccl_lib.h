#pragma once
#include <string>

#include "nccl_api.h"

namespace nccld {

// libnccl.so.2, opened lazily once per process. Never throws; see CudaLib.
class NcclLib {
 public:
  static const NcclLib& Get();  // first call dlopens, resolves every symbol, reads the version

  bool loaded() const { return loaded_; }
  const std::string& unavailableReason() const { return reason_; }
  int version() const { return version_; }  // e.g. 22803 for 2.28.3; 0 when unknown
  const nccl::Api& api() const { return api_; }

  static std::string ResultName(nccl::Result r);  // "ncclRemoteError"
  std::string ErrorString(nccl::Result r) const;  // ncclGetErrorString
  std::string LastError(nccl::Comm comm) const;   // ncclGetLastError (may be unrelated/empty)

 private:
  NcclLib();
  bool loaded_ = false;
  int version_ = 0;
  std::string reason_;
  nccl::Api api_{};
};

}  // namespace nccld
