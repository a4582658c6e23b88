#pragma once
#include <mutex>

#include "cuda_api.h"
#include "nccl_api.h"

namespace nccld {

// One NCCL communicator as the native threads that drive it share it (the Comm's own worker and
// a ring worker). NCCL communicators are not thread-safe, so every call on `comm` holds `mu`;
// none is made once `closed`, which the owner sets under `mu` before it aborts or destroys the
// comm. ctx and stream are the device's: they outlive the comm.
struct SharedComm {
  nccl::Comm comm = nullptr;
  cu::Context ctx = nullptr;
  cu::Stream stream = nullptr;
  int rank = 0;
  int nranks = 0;
  std::mutex mu;
  bool closed = false;
};

}  // namespace nccld
