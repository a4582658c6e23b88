// gpu.NcclRingWorker: the device process's end of a rank ring on the NCCL backend. attach() maps
// the ring the daemon made and starts one thread that takes submission records, launches them on
// the current communicator's stream (consecutive queued ones in one ncclGroupStart/ncclGroupEnd),
// records a CUDA event behind each batch and posts a completion when the GPU has passed it. No
// JavaScript runs per collective: JS sets the communicator (per world generation) and the buffer
// table (per registration).
#pragma once

#include <napi.h>

#include <memory>

namespace nccld {

class NcclRingWorker : public Napi::ObjectWrap<NcclRingWorker> {
 public:
  static Napi::Function Define(Napi::Env env);

  explicit NcclRingWorker(const Napi::CallbackInfo& info);  // only via attach
  ~NcclRingWorker() override;

  // The thread and all it uses. Defined in nccl_ring_worker.cc.
  struct Core;

 private:
  static Napi::Value Attach(const Napi::CallbackInfo& info);
  static bool IsSelf(const Napi::CallbackInfo& info);

  Napi::Value SetComm(const Napi::CallbackInfo& info);
  Napi::Value SetBuffer(const Napi::CallbackInfo& info);
  Napi::Value DropBuffer(const Napi::CallbackInfo& info);
  Napi::Value Inject(const Napi::CallbackInfo& info);
  Napi::Value SplitComms(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);

  std::unique_ptr<Core> core_;  // null once stopped
};

}  // namespace nccld
