#pragma once
#include <napi.h>

#include <cstdint>
#include <map>
#include <memory>

#include "comm_worker.h"
#include "device_context.h"
#include "nccl_api.h"
#include "shared_comm.h"

namespace nccld {

// gpu.Comm: one NCCL rank (non-blocking communicator) plus the CommWorker thread that drives
// it. allReduce() returns a Promise; the worker reports each finished op through a
// ThreadSafeFunction, and the Promise settles on the JS thread. The TSFN and this object are
// ref'd only while ops are pending, so an idle Comm never keeps the process alive and a busy
// one is never collected with promises outstanding.
class Comm : public Napi::ObjectWrap<Comm> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Comm(const Napi::CallbackInfo& info);  // only via Comm.initRank
  ~Comm() override;

  // The communicator of a live gpu.Comm, for another native thread to drive (see SharedComm);
  // null if `value` is not a Comm or it is closed.
  static std::shared_ptr<SharedComm> SharedFromValue(const Napi::Value& value);

 private:
  struct Bridge {  // TSFN context: outlives this object if completions are still queued
    Comm* owner;
  };
  static void Deliver(Napi::Env env, Napi::Function, Bridge* bridge, CommCompletion* done);
  static void FinalizeBridge(Napi::Env env, void*, Bridge* bridge);
  using Tsfn = Napi::TypedThreadSafeFunction<Bridge, CommCompletion, &Comm::Deliver>;
  static void OnEnvCleanup(void* self);

  static Napi::Value InitRank(const Napi::CallbackInfo& info);
  Napi::Value Poll(const Napi::CallbackInfo& info);
  Napi::Value AllReduce(const Napi::CallbackInfo& info);
  Napi::Value AsyncError(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  Napi::Value GetRank(const Napi::CallbackInfo& info);
  Napi::Value GetNranks(const Napi::CallbackInfo& info);

  // Shared by poll() and asyncError(): throws NCCLD_ERR_CLOSED and returns false once closed;
  // else *r is what ncclCommGetAsyncError returned and *state the comm's state it reported.
  bool QueryAsync(Napi::Env env, nccl::Result* r, nccl::Result* state);
  void Settle(Napi::Env env, const CommCompletion& done);
  void Hold(Napi::Env env, bool hold);
  // Stops the worker and frees the communicator: ncclCommFinalize + ncclCommDestroy when
  // `finalize` (bounded by timeoutMs, falling back to ncclCommAbort), else ncclCommAbort.
  // Pending promises are rejected with NCCLD_ERR_ABORTED when env is given (else dropped:
  // the environment is going away). Idempotent.
  GpuError Shutdown(napi_env env, bool finalize, std::size_t timeoutMs);

  napi_env env_;
  std::shared_ptr<DeviceContext> dev_;
  nccl::Comm comm_ = nullptr;
  std::shared_ptr<SharedComm> shared_;  // comm_ as other threads borrow it; closed before it is freed
  int rank_ = -1;
  int nranks_ = 0;
  std::unique_ptr<CommWorker> worker_;
  Tsfn tsfn_;
  bool tsfnLive_ = false;
  Bridge* bridge_ = nullptr;
  bool cleanupHook_ = false;
  bool held_ = false;
  std::map<uint64_t, Napi::Promise::Deferred> pending_;  // ordered: rejected in submit order
  uint64_t nextId_ = 1;
};

}  // namespace nccld
