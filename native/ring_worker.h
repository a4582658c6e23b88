// RingWorker: the device process's end of a rank ring (host backend). attach() maps the ring
// the daemon made (RankRing) and starts a thread that takes submission records, reduces this
// rank's slice of each in place (as reduceSlice does) and posts completions. Between records
// it spins briefly, then sleeps on the submission eventfd (telling the daemon so through
// worker_sleeping); after each batch it rings the completion eventfd once.
#pragma once

#include <napi.h>

#include <memory>

namespace nccld {

class RingWorker : public Napi::ObjectWrap<RingWorker> {
 public:
  // Exports RingWorker (with static attach).
  static void Init(Napi::Env env, Napi::Object exports);

  explicit RingWorker(const Napi::CallbackInfo& info);
  ~RingWorker() override;

  // Everything the thread uses: the mapping, the fds, the buffer table, the thread itself.
  // Defined in ring_worker.cc.
  struct Core;

 private:
  static Napi::Value Attach(const Napi::CallbackInfo& info);
  // Guards methods against being called with a `this` that is not a RingWorker.
  static bool IsSelf(const Napi::CallbackInfo& info);

  Napi::Value SetBuffer(const Napi::CallbackInfo& info);
  Napi::Value DropBuffer(const Napi::CallbackInfo& info);
  Napi::Value Inject(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);

  std::unique_ptr<Core> core_;  // null once stopped
};

}  // namespace nccld
