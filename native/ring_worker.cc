#include "ring_worker.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "args.h"
#include "errors.h"
#include "host_collectives.h"
#include "reduce.h"
#include "ring_endpoint.h"
#include "ring_layout.h"
#include "shm_mapping.h"
#include "shm_segment.h"

namespace nccld {

namespace {

// Marks JS objects that really are RingWorkers (napi_type_tag, N-API 8).
const napi_type_tag kRingWorkerTag = {0x6e63636c642d7269ULL, 0x6e67576f726b6572ULL};

struct RingWorkerClass {
  Napi::FunctionReference ctor;
};

Napi::Value BadArg(Napi::Env env, const std::string& message) {
  if (!env.IsExceptionPending()) ThrowCoded(env, kErrInvalidArg, message, true);
  return Napi::Value();
}

}  // namespace

struct RingWorker::Core {
  struct Buffer {
    std::shared_ptr<ShmMapping> mapping;
    uint64_t size;  // usable bytes: the mapping's, or less if the object was smaller at setBuffer
  };

  ~Core() { Shutdown(); }

  // 0, or an errno value.
  int Start() {
    int err = StartWorkerThread(&thread, &Core::Main, this);
    if (err == 0) running = true;
    return err;
  }

  // Stops and joins the thread (a hung one too: it waits on wake_efd), closes the fds and
  // unmaps the ring. Buffers' mappings are let go; an ArrayBuffer or segment may still hold them.
  void Shutdown() {
    if (running) {
      stopping.store(true, std::memory_order_release);
      Wake();
      pthread_join(thread, nullptr);
      running = false;
    }
    if (wake_efd >= 0) close(wake_efd);
    wake_efd = -1;
    ep.reset();
    std::lock_guard<std::mutex> lock(mu);
    buffers.clear();
  }

  void Wake() {
    if (wake_efd >= 0) RingEventfd(wake_efd);
  }

  static void* Main(void* arg) {
    static_cast<Core*>(arg)->Run();
    return nullptr;
  }

  void Run() {
    using Clock = std::chrono::steady_clock;
    slots.resize(ep->max_buffers());
    held.reserve(ep->max_buffers());
    send.reserve(ep->max_buffers());
    recv.reserve(ep->max_buffers());
    Clock::time_point idle_since = Clock::now();
    unsigned spins = 0;
    while (!stopping.load(std::memory_order_acquire)) {
      if (fault.load(std::memory_order_acquire) == kHang) {
        WaitEventfd(wake_efd, kRingSleepMs);
        idle_since = Clock::now();
        continue;
      }
      uint64_t avail = ep->Waiting();
      if (avail == RingEndpoint::kCorrupt) {
        // Not something the daemon writes: touch nothing, wait to be stopped.
        WaitEventfd(wake_efd, kRingSleepMs);
        continue;
      }
      if (avail > 0) {
        TakeBatch(avail);
        idle_since = Clock::now();
        spins = 0;
        continue;
      }
      ++spins;
      if (spins < kRingPauseSpins) {
        ring::CpuRelax();
        continue;
      }
      if (Clock::now() - idle_since >= spin) {
        ep->Sleep(wake_efd, kRingSleepMs, [this] {
          return stopping.load(std::memory_order_acquire) || fault.load(std::memory_order_acquire) == kHang;
        });
        idle_since = Clock::now();
        spins = 0;
      } else {
        // Past the first few µs, let a thread waiting for this core (on a machine with fewer
        // cores than busy threads: the daemon's, another rank's) run before spinning on.
        sched_yield();
      }
    }
    ep->Flush();
  }

  // Takes up to `avail` records, then rings the completion doorbell once.
  void TakeBatch(uint64_t avail) {
    for (uint64_t i = 0; i < avail && !stopping.load(std::memory_order_acquire); ++i) {
      int f = fault.load(std::memory_order_acquire);
      if (f == kHang) break;
      if (f == kCrash) kill(getpid(), SIGKILL);
      bool failed = f == kFail && fault.compare_exchange_strong(f, kNoFault, std::memory_order_acq_rel);
      ring::SubmitHeader h;
      ep->Take(&h, slots.data());
      int32_t code = failed ? ring::kInternal : Process(h);
      if (!ep->Post(h.seq, code, stopping, wake_efd)) break;  // stopping
    }
    ep->Flush();
  }

  // Validates a record against the buffer table and runs this rank's share of it.
  int32_t Process(const ring::SubmitHeader& h) {
    bool reduces = ring::Reduces(h.kind);
    bool rooted = ring::Rooted(h.kind);
    // A group's collective names its own ranks; a world's, every rank.
    uint32_t n = h.nshares != 0 ? h.nshares : nranks;
    uint32_t me = h.nshares != 0 ? h.share : static_cast<uint32_t>(rank);
    if (h.kind >= ring::kNumKinds || h.dtype >= kNumDTypes || (reduces && h.op >= kNumRedOps) || me >= n ||
        (rooted && (h.root < 0 || static_cast<uint32_t>(h.root) >= n))) {
      return ring::kBadRequest;
    }
    if (h.kind == ring::kKindBarrier) return ring::kOk;  // the daemon's join of every rank is the barrier
    bool in_place = h.nbuf == n;
    if ((!in_place && h.nbuf != 2 * n) || h.nbuf > ep->max_buffers() || (in_place && h.kind == ring::kKindAllToAll)) {
      return ring::kBadRequest;
    }
    size_t elem = DTypeSize(h.dtype);
    uint64_t send_bytes, recv_bytes;
    CollectiveBytes(h.kind, h.count, elem, n, &send_bytes, &recv_bytes);
    if (send_bytes == UINT64_MAX || recv_bytes == UINT64_MAX) return ring::kBufferTooSmall;
    // The mappings are held (not just looked up) until the share is done: a dropBuffer() or a
    // segment's close() meanwhile cannot unmap them under us.
    struct Release {
      std::vector<Buffer>* v;
      ~Release() { v->clear(); }
    } release{&held};
    {
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i = 0; i < h.nbuf; ++i) {
        auto it = buffers.find(slots[i].id);
        if (it == buffers.end()) return ring::kNoSuchBuffer;
        held.push_back(it->second);
      }
    }
    send.clear();
    recv.clear();
    for (size_t i = 0; i < h.nbuf; ++i) {
      uint64_t off = slots[i].offset;
      uint64_t size = held[i].size;
      bool is_send = i < n;
      // In place, one buffer is both: it must hold the larger of the two.
      uint64_t need = in_place ? std::max(send_bytes, recv_bytes) : (is_send ? send_bytes : recv_bytes);
      if (off % elem != 0) return ring::kBadAlignment;
      if (off > size || need > size - off) return ring::kBufferTooSmall;
      char* p = held[i].mapping->data() + off;
      (is_send ? send : recv).push_back(p);
    }
    if (in_place) {
      // NCCL's in-place pairs: AllGather's input is block i of the output, ReduceScatter's
      // output block i of the input; the others read and write one buffer.
      recv = send;
      uint64_t block = h.count * elem;
      for (uint32_t i = 0; i < n; ++i) {
        if (h.kind == ring::kKindAllGather) send[i] += i * block;
        if (h.kind == ring::kKindReduceScatter) recv[i] += i * block;
      }
    }
    HostCollective c{h.kind, h.dtype, h.op, h.count, static_cast<uint32_t>(rooted ? h.root : 0), n, send.data(), recv.data()};
    return RunHostShare(c, me) == kShareOk ? ring::kOk : ring::kBadRequest;
  }

  // Fixed at attach.
  std::unique_ptr<RingEndpoint> ep;
  uint64_t rank = 0;
  uint32_t nranks = 1;
  std::chrono::microseconds spin = kRingSpin;
  int wake_efd = -1;  // ours: stop() and inject() wake the thread through it

  pthread_t thread{};
  bool running = false;
  std::atomic<bool> stopping{false};
  std::atomic<int> fault{kNoFault};

  std::mutex mu;  // guards buffers
  std::unordered_map<uint32_t, Buffer> buffers;

  // The thread's own.
  std::vector<ring::BufferSlot> slots;
  std::vector<Buffer> held;
  std::vector<char*> send;
  std::vector<char*> recv;
};

void RingWorker::Init(Napi::Env env, Napi::Object exports) {
  auto* cls = new RingWorkerClass();
  Napi::Function func = DefineClass(env, "RingWorker",
                                    {
                                        StaticMethod("attach", &RingWorker::Attach, napi_default, cls),
                                        InstanceMethod<&RingWorker::SetBuffer>("setBuffer"),
                                        InstanceMethod<&RingWorker::DropBuffer>("dropBuffer"),
                                        InstanceMethod<&RingWorker::Inject>("inject"),
                                        InstanceMethod<&RingWorker::Stop>("stop"),
                                    });
  if (func.IsEmpty()) {
    delete cls;
    return;
  }
  cls->ctor = Napi::Persistent(func);
  env.AddCleanupHook([cls]() { delete cls; });
  exports.Set("RingWorker", func);
}

bool RingWorker::IsSelf(const Napi::CallbackInfo& info) {
  Napi::Value self = info.This();
  if (self.IsObject() && self.As<Napi::Object>().CheckTypeTag(&kRingWorkerTag)) return true;
  if (!info.Env().IsExceptionPending()) ThrowCoded(info.Env(), kErrInvalidArg, "Illegal invocation", true);
  return false;
}

// RingWorker.attach([memfd, submitEventfd, completeEventfd], rank, nranks, spinUs?). Owns the three fds
// from the moment they are read as a list, whether attach succeeds or throws.
Napi::Value RingWorker::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto core = std::make_unique<Core>();
  core->ep = RingEndpoint::Attach(env, info[0], "RingWorker.attach");
  if (!core->ep) return Napi::Value();
  int64_t rank, nranks;
  int64_t spin_us = kRingSpin.count();
  if (!ToInteger(info[2], 1, INT32_MAX, &nranks) || !ToInteger(info[1], 0, nranks - 1, &rank) ||
      (!info[3].IsUndefined() && !ToInteger(info[3], 0, kMaxRingSpinUs, &spin_us))) {
    return BadArg(env, "RingWorker.attach(fds: [memfd, submitEventfd, completeEventfd], rank, nranks, spinUs?: 0..1000000)");
  }
  core->spin = std::chrono::microseconds(spin_us);
  core->rank = static_cast<uint64_t>(rank);
  core->nranks = static_cast<uint32_t>(nranks);
  core->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (core->wake_efd < 0) {
    ThrowErrno(env, errno, "RingWorker.attach: eventfd", "eventfd");
    return Napi::Value();
  }
  if (int err = core->Start()) {
    ThrowErrno(env, err, "RingWorker.attach: pthread_create", "pthread_create");
    return Napi::Value();
  }

  auto* cls = static_cast<RingWorkerClass*>(info.Data());
  Napi::Object obj = cls->ctor.New({Napi::External<std::unique_ptr<Core>>::New(env, &core)});
  if (obj.IsEmpty()) return Napi::Value();  // `core` (if not taken) stops the thread, closes the fds
  return obj;
}

RingWorker::RingWorker(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingWorker>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    ThrowCoded(env, kErrInvalidArg, "use RingWorker.attach()", true);
    return;
  }
  auto* pending = info[0].As<Napi::External<std::unique_ptr<Core>>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kRingWorkerTag);
  if (env.IsExceptionPending()) return;
  core_ = std::move(*pending);
}

// Collected without stop(): stop now (joins the thread).
RingWorker::~RingWorker() = default;

// setBuffer(id, segment): records may name `id` from now on. Replaces an earlier one.
Napi::Value RingWorker::SetBuffer(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  int64_t id;
  ShmSegment* seg = ShmSegment::FromValue(info[1]);
  if (env.IsExceptionPending()) return Napi::Value();
  if (!ToInteger(info[0], 0, UINT32_MAX, &id) || seg == nullptr) {
    return BadArg(env, "RingWorker.setBuffer(id: 0..2^32-1, segment: ShmSegment)");
  }
  if (!core_) {
    ThrowCoded(env, kErrClosed, "RingWorker is stopped");
    return Napi::Value();
  }
  if (seg->closed()) {
    ThrowCoded(env, kErrBufferClosed, "RingWorker.setBuffer: shm segment " + Quoted(seg->name()) + " is closed");
    return Napi::Value();
  }
  // What the worker may touch is fixed now. For a sealed memfd (fromFd) that is the whole
  // mapping for good; a POSIX segment truncated later would still SIGBUS this process.
  uint64_t now;
  if (int err = seg->CurrentSize(&now)) {
    ThrowErrno(env, err, "fstat(" + Quoted(seg->name()) + ")", "fstat");
    return Napi::Value();
  }
  Core::Buffer b{seg->mapping(), std::min<uint64_t>(now, seg->mapping()->size())};
  std::lock_guard<std::mutex> lock(core_->mu);
  core_->buffers[static_cast<uint32_t>(id)] = std::move(b);
  return Napi::Value();
}

Napi::Value RingWorker::DropBuffer(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  int64_t id;
  if (!ToInteger(info[0], 0, UINT32_MAX, &id)) return BadArg(info.Env(), "RingWorker.dropBuffer(id: 0..2^32-1)");
  if (!core_) return Napi::Value();
  std::lock_guard<std::mutex> lock(core_->mu);
  core_->buffers.erase(static_cast<uint32_t>(id));
  return Napi::Value();
}

// inject('hang' | 'fail' | 'crash' | null): arms a fault for the next record (null disarms,
// and lets a hung worker go on).
Napi::Value RingWorker::Inject(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  int f;
  if (!ParseRingFault(info[0], &f)) return BadArg(env, "RingWorker.inject('hang' | 'fail' | 'crash' | null)");
  if (!core_) return Napi::Value();
  core_->fault.store(f, std::memory_order_release);
  core_->Wake();
  return Napi::Value();
}

Napi::Value RingWorker::Stop(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  core_.reset();
  return Napi::Value();
}

}  // namespace nccld
