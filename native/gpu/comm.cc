#include "comm.h"

#include <chrono>
#include <cstring>
#include <system_error>
#include <thread>

#include "cuda_lib.h"
#include "device.h"
#include "js_args.h"
#include "nccl_lib.h"
#include "scoped_context.h"

namespace nccld {

namespace {

// Handed from initRank to the constructor through an External: JS cannot build one, so
// `new gpu.Comm()` from JS is refused.
struct InitData {
  std::shared_ptr<DeviceContext> dev;
  nccl::Comm comm;
  int nranks;
  int rank;
};

constexpr std::size_t kDefaultDestroyTimeoutMs = 10000;

// Marks JS objects that really are Comms (napi_type_tag).
const napi_type_tag kCommTag = {0x6e63636c64436f6dULL, 0x6d756e696361746fULL};

void AbortRaw(const std::shared_ptr<DeviceContext>& dev, nccl::Comm comm) {
  ScopedContext scope(dev->context());
  NcclLib::Get().api().CommAbort(comm);
}

}  // namespace

Napi::Function Comm::Define(Napi::Env env) {
  // Leaked on purpose: lives as long as the environment, and must not be deleted after it.
  auto* ctor = new Napi::FunctionReference();
  Napi::Function cls =
      DefineClass(env, "Comm",
                  {StaticMethod<&Comm::InitRank>("initRank", napi_default, ctor),
                   InstanceMethod<&Comm::Poll>("poll"),
                   InstanceMethod<&Comm::AllReduce>("allReduce"),
                   InstanceMethod<&Comm::AsyncError>("asyncError"),
                   InstanceMethod<&Comm::Abort>("abort"),
                   InstanceMethod<&Comm::Destroy>("destroy"),
                   InstanceAccessor<&Comm::GetRank>("rank"),
                   InstanceAccessor<&Comm::GetNranks>("nranks")});
  *ctor = Napi::Persistent(cls);
  ctor->SuppressDestruct();
  return cls;
}

Napi::Value Comm::InitRank(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CudaLib& cuda = CudaLib::Get();
  if (!cuda.ready()) {
    GpuError::Unavailable(cuda.unavailableReason()).Throw(env);
    return env.Undefined();
  }
  const NcclLib& lib = NcclLib::Get();
  if (!lib.loaded()) {
    GpuError::Unavailable(lib.unavailableReason()).Throw(env);
    return env.Undefined();
  }
  Device* device = Device::FromValue(info[0]);
  if (device == nullptr) {
    GpuError::InvalidArg("argument 'device' must be a gpu.Device").Throw(env);
    return env.Undefined();
  }
  std::shared_ptr<DeviceContext> dev = device->context();
  if (!dev) {
    GpuError::Closed("Device").Throw(env);
    return env.Undefined();
  }
  const void* idBytes = nullptr;
  int nranks = 0;
  int rank = 0;
  if (!js::FixedBytes(info, 1, "uniqueId", nccl::kUniqueIdBytes, &idBytes) ||
      !js::Int(info, 2, "nranks", &nranks) || !js::Int(info, 3, "rank", &rank)) {
    return env.Undefined();
  }
  nccl::UniqueId id;
  std::memcpy(id.internal, idBytes, sizeof(id.internal));
  nccl::Config config = nccl::DefaultConfig();
  config.blocking = 0;  // init and every later call return at once; progress is polled
  nccl::Comm comm = nullptr;
  nccl::Result r;
  {
    // NCCL takes the device from the calling thread's current context (cudaGetDevice).
    ScopedContext scope(dev->context());
    if (scope.status() != cu::kSuccess) {
      GpuError::Cuda(scope.status(), "cuCtxPushCurrent").Throw(env);
      return env.Undefined();
    }
    r = lib.api().CommInitRankConfig(&comm, nranks, id, rank, &config);
  }
  if (r != nccl::kSuccess && r != nccl::kInProgress) {
    GpuError err = GpuError::Nccl(r, "ncclCommInitRankConfig", comm);
    if (comm != nullptr) AbortRaw(dev, comm);
    err.Throw(env);
    return env.Undefined();
  }
  InitData data{dev, comm, nranks, rank};
  auto* ctor = static_cast<Napi::FunctionReference*>(info.Data());
  Napi::Object obj = ctor->New({Napi::External<InitData>::New(env, &data)});
  if (env.IsExceptionPending()) {
    if (data.comm != nullptr) AbortRaw(dev, data.comm);  // constructor never took it
    return env.Undefined();
  }
  return obj;
}

Comm::Comm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Comm>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    GpuError::InvalidArg("use gpu.Comm.initRank() to create a Comm").Throw(env);
    return;
  }
  InitData* data = info[0].As<Napi::External<InitData>>().Data();
  dev_ = data->dev;
  comm_ = data->comm;
  data->comm = nullptr;  // ours now: the destructor aborts it if construction fails below
  nranks_ = data->nranks;
  rank_ = data->rank;
  info.This().As<Napi::Object>().TypeTag(&kCommTag);
  if (env.IsExceptionPending()) return;
  shared_ = std::make_shared<SharedComm>();
  shared_->comm = comm_;
  shared_->ctx = dev_->context();
  shared_->stream = dev_->stream();
  shared_->rank = rank_;
  shared_->nranks = nranks_;

  bridge_ = new Bridge{this};
  tsfn_ = Tsfn::New(env, "nccld.allReduce", 0, 1, bridge_, &Comm::FinalizeBridge);
  if (env.IsExceptionPending()) {
    delete bridge_;
    bridge_ = nullptr;
    return;
  }
  tsfnLive_ = true;
  tsfn_.Unref(env);  // idle: never keep the event loop alive
  // Registered after the TSFN, so it runs before Node tears the TSFN down (hooks run LIFO).
  if (napi_add_env_cleanup_hook(env, &Comm::OnEnvCleanup, this) == napi_ok) cleanupHook_ = true;

  Tsfn tsfn = tsfn_;
  try {
    worker_.reset(new CommWorker(shared_, [tsfn](CommCompletion* c) {
      if (tsfn.NonBlockingCall(c) != napi_ok) delete c;  // closing: nobody left to tell
    }));
  } catch (const std::system_error& e) {
    GpuError::Unavailable(std::string("cannot start the comm worker thread: ") + e.what()).Throw(env);
  }
}

Comm::~Comm() {
  Shutdown(nullptr, false, 0);
  if (bridge_ != nullptr) bridge_->owner = nullptr;  // completions still queued are ignored
}

std::shared_ptr<SharedComm> Comm::SharedFromValue(const Napi::Value& value) {
  if (!value.IsObject() || !value.As<Napi::Object>().CheckTypeTag(&kCommTag)) return nullptr;
  Comm* comm = Comm::Unwrap(value.As<Napi::Object>());
  if (comm == nullptr || comm->comm_ == nullptr) return nullptr;
  return comm->shared_;
}

void Comm::OnEnvCleanup(void* self) {
  Comm* comm = static_cast<Comm*>(self);
  comm->cleanupHook_ = false;  // consumed; must not be removed again
  comm->Shutdown(nullptr, false, 0);
}

void Comm::Deliver(Napi::Env env, Napi::Function, Bridge* bridge, CommCompletion* done) {
  std::unique_ptr<CommCompletion> owned(done);
  if (static_cast<napi_env>(env) == nullptr || bridge == nullptr || bridge->owner == nullptr) {
    return;  // TSFN being torn down, or the Comm is gone
  }
  bridge->owner->Settle(env, *done);
}

void Comm::FinalizeBridge(Napi::Env, void*, Bridge* bridge) {
  if (bridge->owner != nullptr) bridge->owner->bridge_ = nullptr;
  delete bridge;
}

void Comm::Settle(Napi::Env env, const CommCompletion& done) {
  auto it = pending_.find(done.id);
  if (it == pending_.end()) return;  // already rejected by abort()/destroy()
  Napi::Promise::Deferred deferred = it->second;
  pending_.erase(it);
  if (pending_.empty()) Hold(env, false);
  if (done.error.ok()) {
    deferred.Resolve(env.Undefined());
  } else {
    deferred.Reject(done.error.ToJs(env).Value());
  }
}

void Comm::Hold(Napi::Env env, bool hold) {
  if (hold == held_ || !tsfnLive_) return;
  held_ = hold;
  if (hold) {
    tsfn_.Ref(env);
    Ref();
  } else {
    tsfn_.Unref(env);
    Unref();
  }
}

GpuError Comm::Shutdown(napi_env env, bool finalize, std::size_t timeoutMs) {
  GpuError result;
  if (worker_) worker_->Stop();
  if (shared_) {
    // Waits out a call another thread is making; from here on no other thread touches comm_.
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->closed = true;
  }
  if (comm_ != nullptr) {
    const NcclLib& lib = NcclLib::Get();
    ScopedContext scope(dev_->context());
    bool freed = false;
    if (finalize) {
      nccl::Result state = lib.api().CommFinalize(comm_);
      auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
      while (state == nccl::kInProgress && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        nccl::Result r = lib.api().CommGetAsyncError(comm_, &state);
        if (r != nccl::kSuccess) state = r;
      }
      if (state == nccl::kSuccess) {
        nccl::Result r = lib.api().CommDestroy(comm_);
        if (r != nccl::kSuccess) result = GpuError::Nccl(r, "ncclCommDestroy", nullptr);
        freed = true;  // destroy owns the comm even when it reports an error
      } else if (state == nccl::kInProgress) {
        result = GpuError::Nccl(state,
                                "ncclCommFinalize (still in progress after " +
                                    std::to_string(timeoutMs) + " ms; aborted instead)",
                                comm_);
      } else {
        result = GpuError::Nccl(state, "ncclCommFinalize (aborted instead)", comm_);
      }
    }
    if (!freed) lib.api().CommAbort(comm_);  // always frees; kernels still running are told to quit
    comm_ = nullptr;
  }
  worker_.reset();
  if (env != nullptr && !pending_.empty()) {
    Napi::Env e(env);
    std::map<uint64_t, Napi::Promise::Deferred> pending;
    pending.swap(pending_);
    Hold(e, false);
    for (auto& entry : pending) {
      entry.second.Reject(
          GpuError::Aborted("allReduce aborted: the communicator was aborted or destroyed")
              .ToJs(e)
              .Value());
    }
  }
  pending_.clear();
  if (tsfnLive_) {
    tsfnLive_ = false;
    tsfn_.Release();  // completions already queued still arrive and are ignored
  }
  if (cleanupHook_) {
    napi_remove_env_cleanup_hook(env_, &Comm::OnEnvCleanup, this);
    cleanupHook_ = false;
  }
  dev_.reset();
  return result;
}

bool Comm::QueryAsync(Napi::Env env, nccl::Result* r, nccl::Result* state) {
  if (!worker_) {
    GpuError::Closed("Comm").Throw(env);
    return false;
  }
  *state = nccl::kSuccess;
  *r = worker_->QueryAsync(state);
  return true;
}

Napi::Value Comm::Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  nccl::Result r;
  nccl::Result state;
  if (!QueryAsync(env, &r, &state)) return env.Undefined();
  if (r != nccl::kSuccess) {
    GpuError::Nccl(r, "ncclCommGetAsyncError", comm_).Throw(env);
    return env.Undefined();
  }
  if (state == nccl::kSuccess) return Napi::String::New(env, "ready");
  if (state == nccl::kInProgress) return Napi::String::New(env, "pending");
  GpuError::Nccl(state, "NCCL communicator", comm_).Throw(env);
  return env.Undefined();
}

Napi::Value Comm::AllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t ptr = 0;
  std::size_t count = 0;
  int dtype = 0;
  int op = 0;
  if (!js::Pointer(info, 0, "ptr", &ptr) || !js::Size(info, 1, "count", &count) ||
      !js::Int(info, 2, "dtype", &dtype) || !js::Int(info, 3, "op", &op)) {
    return env.Undefined();
  }
  Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
  if (!worker_) {
    deferred.Reject(GpuError::Closed("Comm").ToJs(env).Value());
    return deferred.Promise();
  }
  uint64_t id = nextId_++;
  pending_.emplace(id, deferred);
  Hold(env, true);
  worker_->Submit({id, reinterpret_cast<void*>(static_cast<uintptr_t>(ptr)), count, dtype, op});
  return deferred.Promise();
}

Napi::Value Comm::AsyncError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  nccl::Result r;
  nccl::Result state;
  if (!QueryAsync(env, &r, &state)) return env.Undefined();
  if (r != nccl::kSuccess) state = r;  // the query itself failed: report that
  if (state == nccl::kSuccess) return env.Null();
  return Napi::String::New(env, NcclLib::ResultName(state));
}

Napi::Value Comm::Abort(const Napi::CallbackInfo& info) {
  Shutdown(info.Env(), false, 0);
  return info.Env().Undefined();
}

Napi::Value Comm::Destroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::size_t timeoutMs = 0;
  if (!js::Size(info, 0, "timeoutMs", &timeoutMs, true, kDefaultDestroyTimeoutMs)) {
    return env.Undefined();
  }
  // With ops still pending there is nothing to flush politely: abort and reject them.
  GpuError err = Shutdown(env, pending_.empty(), timeoutMs);
  if (!err.ok()) err.Throw(env);
  return env.Undefined();
}

Napi::Value Comm::GetRank(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), rank_);
}

Napi::Value Comm::GetNranks(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), nranks_);
}

}  // namespace nccld
