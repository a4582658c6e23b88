#include "scoped_context.h"

#include "cuda_lib.h"

namespace nccld {

ScopedContext::ScopedContext(cu::Context ctx)
    : status_(CudaLib::Get().api().CtxPushCurrent(ctx)) {}

ScopedContext::~ScopedContext() {
  if (status_ != cu::kSuccess) return;
  cu::Context popped = nullptr;
  CudaLib::Get().api().CtxPopCurrent(&popped);
}

}  // namespace nccld
