// ReduceWorker: runs one rank's reduceSlice() on the libuv thread pool.
#pragma once

#include <napi.h>

#include <memory>
#include <vector>

#include "reduce.h"
#include "shm_mapping.h"

namespace nccld {

class ReduceWorker : public Napi::AsyncWorker {
 public:
  // Exports reduceSlice and sliceBounds.
  static void Init(Napi::Env env, Napi::Object exports);

 private:
  ReduceWorker(Napi::Env env, Napi::Promise::Deferred deferred, ReduceFn fn,
               std::vector<std::shared_ptr<ShmMapping>> mappings, std::vector<char*> bufs, uint64_t begin,
               uint64_t end, uint32_t nranks);

  static Napi::Value ReduceSlice(const Napi::CallbackInfo& info);
  static Napi::Value SliceBoundsJs(const Napi::CallbackInfo& info);

  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override;

  Napi::Promise::Deferred deferred_;
  ReduceFn fn_;
  // Held until the worker is destroyed (on the JS thread, after OnOK), so a close() during
  // the run cannot unmap memory the kernel is using.
  std::vector<std::shared_ptr<ShmMapping>> mappings_;
  std::vector<char*> bufs_;  // element 0 of each buffer
  uint64_t begin_;
  uint64_t end_;
  uint32_t nranks_;
};

}  // namespace nccld
