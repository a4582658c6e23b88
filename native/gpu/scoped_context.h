#pragma once
#include "cuda_api.h"

namespace nccld {

// Pushes a context on the calling thread for one native call and pops it afterwards, so the
// caller's current context (if any) is restored. CUDA contexts are per thread: every JS entry
// point may run on a thread where nothing, or something else, is current.
class ScopedContext {
 public:
  explicit ScopedContext(cu::Context ctx);
  ~ScopedContext();
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;

  cu::Result status() const { return status_; }  // result of cuCtxPushCurrent

 private:
  cu::Result status_;
};

}  // namespace nccld
