#include "nccl_ring_worker.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "args.h"
#include "comm.h"
#include "cuda_lib.h"
#include "errors.h"
#include "exit_stop.h"
#include "gpu_error.h"
#include "host_collectives.h"
#include "js_args.h"
#include "nccl_lib.h"
#include "poll_backoff.h"
#include "reduce.h"
#include "ring_endpoint.h"
#include "ring_layout.h"

namespace nccld {

namespace {

const napi_type_tag kNcclRingWorkerTag = {0x6e63636c64526e67ULL, 0x4e63636c576b7231ULL};

// Batches in flight on the stream (one event each): bounds the GPU queue, since a full launch
// queue would block the thread inside NCCL.
constexpr size_t kMaxInflight = 64;
// Collectives fused into one ncclGroupStart/ncclGroupEnd.
constexpr size_t kMaxBatch = 32;
// While the GPU is busy, the communicator's asynchronous error is checked every this many polls
// (a kernel spinning on a dead peer never finishes; the error says so).
constexpr unsigned kAsyncCheckPolls = 32;
// Clients' events kept open (a torch backend reuses a small pool of them).
constexpr size_t kMaxClientEvents = 1024;

// One collective resolved against the buffer table, ready to launch.
struct Launch {
  uint64_t seq;
  uint8_t kind;
  int dtype;
  int op;
  int root;
  uint64_t count;
  void* send;
  void* recv;
};

}  // namespace

struct NcclRingWorker::Core {
  struct Buffer {
    uint64_t ptr;   // device address in this process
    uint64_t size;  // usable bytes from ptr
  };
  struct Batch {
    cu::Event event;
    size_t n;  // collectives: the next n of inflight_seqs
  };

  ~Core() { Shutdown(); }

  int Start() {
    int err = StartWorkerThread(&thread, &Core::Main, this);
    if (err == 0) {
      running = true;
      StopAtExit(this, [this] { Join(); });
    }
    return err;
  }

  void Join() {
    std::lock_guard<std::mutex> lock(join_mu);
    if (!running) return;
    stopping.store(true, std::memory_order_release);
    RingEventfd(wake_efd);
    pthread_join(thread, nullptr);
    running = false;
  }

  void Shutdown() {
    ForgetAtExit(this);
    Join();
    if (wake_efd >= 0) close(wake_efd);
    wake_efd = -1;
    ep.reset();
  }

  static void* Main(void* arg) {
    static_cast<Core*>(arg)->Run();
    return nullptr;
  }

  void Run() {
    using Clock = std::chrono::steady_clock;
    slots.resize(ep->max_buffers());
    Clock::time_point idle_since = Clock::now();
    unsigned spins = 0;
    unsigned busy_polls = 0;
    while (!stopping.load(std::memory_order_acquire)) {
      if (fault.load(std::memory_order_acquire) == kHang) {
        WaitEventfd(wake_efd, kRingSleepMs);
        continue;
      }
      if (comm_version.load(std::memory_order_acquire) != seen_version) AdoptComm();
      bool progressed = Reap();
      if (!inflight.empty() && busy_polls % kAsyncCheckPolls == kAsyncCheckPolls - 1) CheckAsyncError();
      uint64_t avail = ep->Waiting();
      if (avail == RingEndpoint::kCorrupt) {
        WaitEventfd(wake_efd, kRingSleepMs);  // not something the daemon writes: wait to be stopped
        continue;
      }
      if (avail > 0 && inflight.size() < kMaxInflight) {
        TakeBatch(std::min<uint64_t>(avail, kMaxBatch));
        progressed = true;
      }
      ep->Flush();
      if (progressed) {
        idle_since = Clock::now();
        spins = 0;
        busy_polls = 0;
        continue;
      }
      if (!inflight.empty()) {
        PollPause(busy_polls++);  // the GPU is busy: look again soon
        continue;
      }
      ++spins;
      if (spins < kRingPauseSpins) {
        ring::CpuRelax();
      } else if (Clock::now() - idle_since < spin) {
        sched_yield();
      } else {
        ep->Sleep(wake_efd, kRingSleepMs, [this] {
          return stopping.load(std::memory_order_acquire) || fault.load(std::memory_order_acquire) == kHang ||
                 comm_version.load(std::memory_order_acquire) != seen_version;
        });
        idle_since = Clock::now();
        spins = 0;
      }
    }
    // Stopped: what is still on the GPU is not ours to wait for. Events go back to the driver.
    FailInflight(ring::kAborted);
    DropSplitComms();
    for (cu::Event ev : spare_events) CudaLib::Get().api().EventDestroy(ev);
    spare_events.clear();
    for (auto& entry : client_events) CudaLib::Get().api().EventDestroy(entry.second);
    client_events.clear();
    if (scratch) CudaLib::Get().api().MemFree(scratch);
    scratch = 0;
    ep->Flush();
  }

  // A new communicator (or none): whatever ran on the old one ends ABORTED (the world broke, or
  // is being rebuilt), and so does every record submitted before the switch.
  void AdoptComm() {
    {
      std::lock_guard<std::mutex> lock(mu);
      seen_version = comm_version.load(std::memory_order_acquire);
      comm = next_comm;
      fence = next_fence;
    }
    FailInflight(ring::kAborted);
    DropSplitComms();  // split from the old world's comm: gone with it
    comm_failed = ring::kOk;
    if (comm) {
      cu::Result r = CudaLib::Get().api().CtxSetCurrent(comm->ctx);  // contexts are per thread
      if (r != cu::kSuccess) comm_failed = ring::kCuda;
    }
  }

  // Takes up to n records: those that cannot run get their completion now; consecutive ones
  // on one communicator launch together; communicator control runs in its place in the order.
  void TakeBatch(uint64_t n) {
    launches.clear();
    batch_comm = nullptr;
    for (uint64_t i = 0; i < n && !stopping.load(std::memory_order_acquire); ++i) {
      int f = fault.load(std::memory_order_acquire);
      if (f == kHang) break;
      if (f == kCrash) kill(getpid(), SIGKILL);
      bool failed = f == kFail && fault.compare_exchange_strong(f, kNoFault, std::memory_order_acq_rel);
      uint64_t index = ep->Tail();
      ring::SubmitHeader h;
      ep->Take(&h, slots.data(), events);
      int32_t code = ring::kOk;
      bool control = h.kind == ring::kKindSplitComm || h.kind == ring::kKindFreeComm;
      SharedComm* target = nullptr;
      if (failed) {
        code = ring::kNccl;  // as NCCL failing it would: the world breaks and is rebuilt
      } else if (index < fence) {
        code = ring::kAborted;  // submitted for a communicator that is gone
      } else if (!comm) {
        code = ring::kNotReady;
      } else if (comm_failed != ring::kOk) {
        code = comm_failed;
      } else if (control) {
        if (!launches.empty()) LaunchAll();  // what came before runs before it
        code = h.kind == ring::kKindSplitComm ? SplitComm(h) : FreeComm(h);
      } else if (!(target = CommFor(h.comm))) {
        code = ring::kBadRequest;  // a communicator this rank is not in
      } else if (h.flags != 0) {
        // With the client's events: launched alone, between a wait and a record on the stream.
        if (!launches.empty()) LaunchAll();
        batch_comm = target;
        launches.emplace_back();
        code = Resolve(h, *target, &launches.back());
        if (code != ring::kOk) {
          launches.pop_back();
        } else {
          LaunchWithEvents(h, *target);  // posts its own failure; else its end comes from the GPU
          continue;
        }
      } else {
        if (target != batch_comm && !launches.empty()) LaunchAll();
        batch_comm = target;
        launches.emplace_back();
        code = Resolve(h, *target, &launches.back());
        if (code != ring::kOk) launches.pop_back();
      }
      // Launched collectives complete when their event passes; everything else now.
      bool launched = !control && code == ring::kOk;
      if (!launched && !ep->Post(h.seq, code, stopping, wake_efd)) return;
    }
    if (!launches.empty()) LaunchAll();
  }

  // Launches the one collective in `launches` behind the client's wait event and records its done
  // event after it; posts kLaunched once the done event is on the stream. kOk when launched (its
  // end is posted later), else the failure has been posted.
  int32_t LaunchWithEvents(const ring::SubmitHeader& h, SharedComm& on) {
    const cu::Api& cuda = CudaLib::Get().api();
    uint64_t seq = h.seq;
    int32_t code = ring::kOk;
    if (h.flags & ring::kFlagWaitEvent) {
      cu::Event wait = OpenEvent(events);
      if (wait == nullptr || cuda.StreamWaitEvent(on.stream, wait, 0) != cu::kSuccess) code = ring::kCuda;
    }
    if (code != ring::kOk) {
      launches.clear();
      ep->Post(seq, code, stopping, wake_efd);
      return code;
    }
    if (!LaunchAll()) return ring::kNccl;  // posted by LaunchAll
    if (h.flags & ring::kFlagDoneEvent) {
      cu::Event done = OpenEvent(events + ring::kEventHandleBytes);
      if (done == nullptr || cuda.EventRecord(done, on.stream) != cu::kSuccess) {
        // The collective runs; the client would wait on an event we never recorded: say so.
        FailComm(ring::kCuda);
        return ring::kCuda;
      }
      ep->Post(seq, ring::kLaunched, stopping, wake_efd);
    }
    return ring::kOk;
  }

  // The event a client shared (cuIpcOpenEventHandle), opened once per handle and kept.
  cu::Event OpenEvent(const uint8_t* handle) {
    std::string key(reinterpret_cast<const char*>(handle), ring::kEventHandleBytes);
    auto it = client_events.find(key);
    if (it != client_events.end()) return it->second;
    const cu::Api& cuda = CudaLib::Get().api();
    if (client_events.size() >= kMaxClientEvents) {
      // A client cycling through fresh events: start over (work already enqueued keeps them).
      for (auto& entry : client_events) cuda.EventDestroy(entry.second);
      client_events.clear();
    }
    cu::IpcEventHandle h;
    memcpy(h.reserved, handle, sizeof h.reserved);
    cu::Event ev = nullptr;
    if (cuda.IpcOpenEventHandle(&ev, h) != cu::kSuccess) return nullptr;
    client_events.emplace(std::move(key), ev);
    return ev;
  }

  SharedComm* CommFor(uint32_t id) {
    if (id == 0) return comm.get();
    auto it = split_comms.find(id);
    return it == split_comms.end() ? nullptr : it->second.get();
  }

  // ncclCommSplit of the world's communicator: a collective over every world rank, members
  // (color >= 0) get communicator h.comm with rank h.key among h.count ranks. Waits for it.
  int32_t SplitComm(const ring::SubmitHeader& h) {
    const nccl::Api& api = NcclLib::Get().api();
    if (h.comm == 0 || split_comms.count(h.comm) != 0) return ring::kBadRequest;
    nccl::Result r = Settle(*comm);
    nccl::Comm child = nullptr;
    if (r == nccl::kSuccess) {
      nccl::Config config = nccl::DefaultConfig();
      config.blocking = 0;
      std::lock_guard<std::mutex> lock(comm->mu);
      r = comm->closed ? -1 : api.CommSplit(comm->comm, h.color < 0 ? nccl::kSplitNoColor : h.color, h.key, &child, &config);
    }
    if (r == nccl::kInProgress || r == nccl::kSuccess) r = Settle(*comm);
    if (r == nccl::kSuccess && child != nullptr) {
      // The child settles on its own (its state is its own async error).
      for (unsigned attempt = 0;; ++attempt) {
        nccl::Result state = nccl::kSuccess;
        nccl::Result q = api.CommGetAsyncError(child, &state);
        if (q != nccl::kSuccess) state = q;
        if (state != nccl::kInProgress) {
          r = state;
          break;
        }
        if (stopping.load(std::memory_order_acquire)) {
          r = -1;
          break;
        }
        PollPause(attempt);
      }
    }
    if (r != nccl::kSuccess) {
      if (child != nullptr) api.CommAbort(child);
      return r == -1 ? ring::kAborted : ring::kNccl;
    }
    if (child != nullptr) {
      auto shared = std::make_shared<SharedComm>();
      shared->comm = child;
      shared->ctx = comm->ctx;
      shared->stream = comm->stream;
      shared->rank = h.key;
      shared->nranks = static_cast<int>(h.count);
      split_comms[h.comm] = std::move(shared);
      live_splits.store(split_comms.size(), std::memory_order_relaxed);
    }
    return ring::kOk;
  }

  // Frees split communicator h.comm once the GPU is done with what was launched on it.
  int32_t FreeComm(const ring::SubmitHeader& h) {
    auto it = split_comms.find(h.comm);
    if (it == split_comms.end()) return ring::kOk;  // this rank was not a member
    for (unsigned attempt = 0; !inflight.empty() && !stopping.load(std::memory_order_acquire); ++attempt) {
      if (!Reap()) PollPause(attempt);
    }
    ep->Flush();
    NcclLib::Get().api().CommAbort(it->second->comm);  // frees it; nothing of ours runs on it now
    split_comms.erase(it);
    live_splits.store(split_comms.size(), std::memory_order_relaxed);
    return ring::kOk;
  }

  void DropSplitComms() {
    for (auto& entry : split_comms) NcclLib::Get().api().CommAbort(entry.second->comm);
    split_comms.clear();
    live_splits.store(0, std::memory_order_relaxed);
  }

  // Checks a record against the buffer table and NCCL's rules for its collective.
  int32_t Resolve(const ring::SubmitHeader& h, const SharedComm& on, Launch* out) {
    bool reduces = ring::Reduces(h.kind);
    bool rooted = ring::Rooted(h.kind);
    if (h.kind == ring::kKindBarrier) {
      // NCCL has no barrier: a one-element AllReduce on a scratch word of ours is one.
      if (!scratch && CudaLib::Get().api().MemAlloc(&scratch, sizeof(float)) != cu::kSuccess) {
        scratch = 0;
        return ring::kCuda;
      }
      void* p = reinterpret_cast<void*>(static_cast<uintptr_t>(scratch));
      *out = Launch{h.seq, ring::kKindAllReduce, kFloat32, kSum, 0, 1, p, p};
      return ring::kOk;
    }
    if (h.kind >= ring::kNumKinds || h.dtype >= kNumDTypes || (reduces && h.op >= kNumRedOps) || h.nbuf < 1 ||
        h.nbuf > 2 || h.nbuf > ep->max_buffers() || (h.nbuf == 1 && h.kind == ring::kKindAllToAll) ||
        (rooted && (h.root < 0 || h.root >= on.nranks))) {
      return ring::kBadRequest;
    }
    uint64_t elem = DTypeSize(h.dtype);
    if (elem == 0 || h.count > (uint64_t{1} << 48) / elem) return ring::kBadRequest;
    uint64_t need[2];
    CollectiveBytes(h.kind, h.count, elem, static_cast<uint32_t>(on.nranks), &need[0], &need[1]);
    uint64_t ptr[2];
    {
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i = 0; i < 2; ++i) {
        const ring::BufferSlot& s = slots[h.nbuf == 2 ? i : 0];  // one slot: in place
        auto it = buffers.find(s.id);
        if (it == buffers.end()) return ring::kNoSuchBuffer;
        if (s.offset % elem != 0) return ring::kBadAlignment;
        if (s.offset > it->second.size || need[i] > it->second.size - s.offset) return ring::kBufferTooSmall;
        ptr[i] = it->second.ptr + s.offset;
      }
    }
    if (h.nbuf == 1) {
      // NCCL's in-place pairs: AllGather's input is this rank's block of the output,
      // ReduceScatter's output this rank's block of the input.
      uint64_t block = h.count * elem * static_cast<uint64_t>(on.rank);
      if (h.kind == ring::kKindAllGather) ptr[0] += block;
      if (h.kind == ring::kKindReduceScatter) ptr[1] += block;
    }
    *out = Launch{h.seq, h.kind, h.dtype, h.op, h.root, h.count, reinterpret_cast<void*>(ptr[0]), reinterpret_cast<void*>(ptr[1])};
    return ring::kOk;
  }

  // Launches `launches` on the communicator (in one group when more than one) and records an
  // event behind them.
  // False when nothing was launched (each collective's failure is posted).
  bool LaunchAll() {
    const nccl::Api& api = NcclLib::Get().api();
    SharedComm& on = *batch_comm;
    nccl::Result r = Settle(on);
    if (r == nccl::kSuccess) {
      std::lock_guard<std::mutex> lock(on.mu);
      if (on.closed) {
        r = -1;
      } else {
        bool group = launches.size() > 1;
        if (group) r = api.GroupStart();
        for (size_t i = 0; i < launches.size() && (r == nccl::kSuccess || r == nccl::kInProgress); ++i) {
          r = Call(api, on, launches[i]);
        }
        if (group) {
          nccl::Result end = api.GroupEnd();  // ends the group even after a failed call
          if (r == nccl::kSuccess || r == nccl::kInProgress) r = end;
        }
      }
    }
    // A non-blocking comm may still be enqueuing: the work must be on the stream before the event.
    if (r == nccl::kInProgress) r = Settle(on);
    if (r != nccl::kSuccess) {
      if (r == -1) {
        for (const Launch& l : launches) ep->Post(l.seq, ring::kAborted, stopping, wake_efd);
      } else {
        FailComm(ring::kNccl);
        for (const Launch& l : launches) ep->Post(l.seq, ring::kNccl, stopping, wake_efd);
      }
      launches.clear();
      return false;
    }
    const cu::Api& cuda = CudaLib::Get().api();
    cu::Event ev = nullptr;
    cu::Result cr = cu::kSuccess;
    if (!spare_events.empty()) {
      ev = spare_events.back();
      spare_events.pop_back();
    } else {
      cr = cuda.EventCreate(&ev, cu::kEventDisableTiming);
    }
    if (cr == cu::kSuccess) {
      cr = cuda.EventRecord(ev, on.stream);
      if (cr != cu::kSuccess) cuda.EventDestroy(ev);
    }
    if (cr != cu::kSuccess) {
      // Enqueued, but nothing to tell us when it ends: the rank cannot go on.
      FailComm(ring::kCuda);
      for (const Launch& l : launches) ep->Post(l.seq, ring::kCuda, stopping, wake_efd);
      launches.clear();
      return false;
    }
    for (const Launch& l : launches) inflight_seqs.push_back(l.seq);
    inflight.push_back({ev, launches.size()});
    launches.clear();
    return true;
  }

  nccl::Result Call(const nccl::Api& api, const SharedComm& on, const Launch& l) {
    nccl::Comm c = on.comm;
    cu::Stream s = on.stream;
    size_t n = static_cast<size_t>(l.count);
    switch (l.kind) {
      case ring::kKindAllReduce: return api.AllReduce(l.send, l.recv, n, l.dtype, l.op, c, s);
      case ring::kKindBroadcast: return api.Broadcast(l.send, l.recv, n, l.dtype, l.root, c, s);
      case ring::kKindReduce: return api.Reduce(l.send, l.recv, n, l.dtype, l.op, l.root, c, s);
      case ring::kKindAllGather: return api.AllGather(l.send, l.recv, n, l.dtype, c, s);
      case ring::kKindReduceScatter: return api.ReduceScatter(l.send, l.recv, n, l.dtype, l.op, c, s);
      case ring::kKindAllToAll: {
        // Point-to-point to every peer, in one group (NCCL's own all-to-all pattern).
        size_t chunk = n * DTypeSize(l.dtype);
        nccl::Result r = api.GroupStart();
        for (int peer = 0; peer < on.nranks && r == nccl::kSuccess; ++peer) {
          r = api.Send(static_cast<char*>(l.send) + peer * chunk, n, l.dtype, peer, c, s);
          if (r == nccl::kSuccess) r = api.Recv(static_cast<char*>(l.recv) + peer * chunk, n, l.dtype, peer, c, s);
        }
        nccl::Result end = api.GroupEnd();
        return r == nccl::kSuccess ? end : r;
      }
      default: return 5;  // ncclInvalidUsage: Resolve lets no other kind through
    }
  }

  // Waits until the comm has no call in progress. kSuccess, an NCCL error, or -1 once the comm
  // is closed or we are stopping.
  nccl::Result Settle(SharedComm& on) {
    const nccl::Api& api = NcclLib::Get().api();
    for (unsigned attempt = 0;; ++attempt) {
      nccl::Result state = nccl::kSuccess;
      {
        std::lock_guard<std::mutex> lock(on.mu);
        if (on.closed) return -1;
        nccl::Result r = api.CommGetAsyncError(on.comm, &state);
        if (r != nccl::kSuccess) return r;
      }
      if (state != nccl::kInProgress) return state;
      if (stopping.load(std::memory_order_acquire)) return -1;
      PollPause(attempt);
    }
  }

  // Posts a completion for every batch the GPU has finished, head first (stream order).
  bool Reap() {
    const cu::Api& cuda = CudaLib::Get().api();
    bool progressed = false;
    while (!inflight.empty()) {
      Batch& head = inflight.front();
      cu::Result r = cuda.EventQuery(head.event);
      if (r == cu::kErrorNotReady) break;
      if (r == cu::kSuccess) {
        spare_events.push_back(head.event);
      } else {
        cuda.EventDestroy(head.event);
        comm_failed = ring::kCuda;  // the context is likely gone for good
      }
      int32_t code = r == cu::kSuccess ? ring::kOk : ring::kCuda;
      for (size_t i = 0; i < head.n; ++i) {
        ep->Post(inflight_seqs.front(), code, stopping, wake_efd);
        inflight_seqs.pop_front();
      }
      inflight.pop_front();
      progressed = true;
    }
    return progressed;
  }

  void CheckAsyncError() {
    if (!comm || comm_failed != ring::kOk) return;
    nccl::Result state = nccl::kSuccess;
    {
      std::lock_guard<std::mutex> lock(comm->mu);
      if (comm->closed) {
        FailComm(ring::kAborted);
        return;
      }
      nccl::Result r = NcclLib::Get().api().CommGetAsyncError(comm->comm, &state);
      if (r != nccl::kSuccess) state = r;
    }
    if (state != nccl::kSuccess && state != nccl::kInProgress) FailComm(ring::kNccl);
  }

  // The comm cannot be trusted any more: what is in flight fails (its kernels may spin on a
  // dead peer for ever) and so does every later record until JS sets a new comm.
  void FailComm(int32_t code) {
    Reap();  // batches the GPU already finished still succeed
    if (comm_failed == ring::kOk) comm_failed = code;
    FailInflight(code);
  }

  void FailInflight(int32_t code) {
    const cu::Api& cuda = CudaLib::Get().api();
    for (const Batch& b : inflight) cuda.EventDestroy(b.event);  // may still be pending: not reused
    inflight.clear();
    for (uint64_t seq : inflight_seqs) ep->Post(seq, code, stopping, wake_efd);
    inflight_seqs.clear();
  }

  // Fixed at attach.
  std::unique_ptr<RingEndpoint> ep;
  std::chrono::microseconds spin = kRingSpin;
  int wake_efd = -1;

  pthread_t thread{};
  bool running = false;
  std::mutex join_mu;
  std::atomic<bool> stopping{false};
  std::atomic<int> fault{kNoFault};

  std::mutex mu;  // guards buffers and next_*
  std::unordered_map<uint32_t, Buffer> buffers;
  std::shared_ptr<SharedComm> next_comm;
  uint64_t next_fence = 0;
  std::atomic<uint64_t> comm_version{0};
  std::atomic<size_t> live_splits{0};  // split communicators held now (for stats)

  // The thread's own.
  uint64_t seen_version = 0;
  std::shared_ptr<SharedComm> comm;  // the world's
  std::unordered_map<uint32_t, std::shared_ptr<SharedComm>> split_comms;  // ours alone: no other thread
  SharedComm* batch_comm = nullptr;  // what `launches` run on
  cu::DevicePtr scratch = 0;         // barrier's word
  uint8_t events[ring::kEventsPerRecord * ring::kEventHandleBytes];  // the record's, when it has some
  std::unordered_map<std::string, cu::Event> client_events;          // by IPC handle bytes
  uint64_t fence = 0;            // records below this ring index predate the comm: ABORTED
  int32_t comm_failed = ring::kOk;  // nonzero: every record fails with it until the next comm
  std::vector<ring::BufferSlot> slots;
  std::vector<Launch> launches;
  std::deque<Batch> inflight;
  std::deque<uint64_t> inflight_seqs;
  std::vector<cu::Event> spare_events;
};

Napi::Function NcclRingWorker::Define(Napi::Env env) {
  auto* ctor = new Napi::FunctionReference();  // leaked: lives as long as the environment
  Napi::Function cls = DefineClass(env, "NcclRingWorker",
                                   {StaticMethod<&NcclRingWorker::Attach>("attach", napi_default, ctor),
                                    InstanceMethod<&NcclRingWorker::SetComm>("setComm"),
                                    InstanceMethod<&NcclRingWorker::SetBuffer>("setBuffer"),
                                    InstanceMethod<&NcclRingWorker::DropBuffer>("dropBuffer"),
                                    InstanceMethod<&NcclRingWorker::Inject>("inject"),
                                    InstanceAccessor<&NcclRingWorker::SplitComms>("splitComms"),
                                    InstanceMethod<&NcclRingWorker::Stop>("stop")});
  *ctor = Napi::Persistent(cls);
  ctor->SuppressDestruct();
  return cls;
}

bool NcclRingWorker::IsSelf(const Napi::CallbackInfo& info) {
  Napi::Value self = info.This();
  if (self.IsObject() && self.As<Napi::Object>().CheckTypeTag(&kNcclRingWorkerTag)) return true;
  if (!info.Env().IsExceptionPending()) ThrowCoded(info.Env(), kErrInvalidArg, "Illegal invocation", true);
  return false;
}

// NcclRingWorker.attach([memfd, submitEventfd, completeEventfd], spinUs?): the fds are ours from the
// moment they are read, whether attach succeeds or throws.
Napi::Value NcclRingWorker::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CudaLib& cuda = CudaLib::Get();
  const NcclLib& nccl = NcclLib::Get();
  auto core = std::make_unique<Core>();
  core->ep = RingEndpoint::Attach(env, info[0], "NcclRingWorker.attach");
  if (!core->ep) return Napi::Value();
  int64_t spin_us = kRingSpin.count();
  if (!info[1].IsUndefined() && !ToInteger(info[1], 0, kMaxRingSpinUs, &spin_us)) {
    ThrowCoded(env, kErrInvalidArg, "NcclRingWorker.attach(fds, spinUs?: 0..1000000)", true);
    return Napi::Value();
  }
  core->spin = std::chrono::microseconds(spin_us);
  if (!cuda.ready() || !nccl.loaded()) {
    GpuError::Unavailable(!cuda.ready() ? cuda.unavailableReason() : nccl.unavailableReason()).Throw(env);
    return Napi::Value();
  }
  core->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (core->wake_efd < 0) {
    ThrowErrno(env, errno, "NcclRingWorker.attach: eventfd", "eventfd");
    return Napi::Value();
  }
  if (int err = core->Start()) {
    ThrowErrno(env, err, "NcclRingWorker.attach: pthread_create", "pthread_create");
    return Napi::Value();
  }
  auto* ctor = static_cast<Napi::FunctionReference*>(info.Data());
  Napi::Object obj = ctor->New({Napi::External<std::unique_ptr<Core>>::New(env, &core)});
  if (obj.IsEmpty()) return Napi::Value();
  return obj;
}

NcclRingWorker::NcclRingWorker(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NcclRingWorker>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    ThrowCoded(env, kErrInvalidArg, "use gpu.NcclRingWorker.attach()", true);
    return;
  }
  auto* pending = info[0].As<Napi::External<std::unique_ptr<Core>>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kNcclRingWorkerTag);
  if (env.IsExceptionPending()) return;
  core_ = std::move(*pending);
}

NcclRingWorker::~NcclRingWorker() = default;

// setComm(comm | null): collectives run on `comm` from now on. Whatever is in flight on the
// previous one, and every record the daemon submitted before this call, ends ABORTED.
Napi::Value NcclRingWorker::SetComm(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  std::shared_ptr<SharedComm> comm;
  if (!info[0].IsNull()) {
    comm = Comm::SharedFromValue(info[0]);
    if (!comm) {
      ThrowCoded(env, kErrInvalidArg, "NcclRingWorker.setComm(comm: an open gpu.Comm | null)", true);
      return Napi::Value();
    }
  }
  if (!core_) return Napi::Value();
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->next_comm = std::move(comm);
    core_->next_fence = core_->ep->Head();
    core_->comm_version.fetch_add(1, std::memory_order_acq_rel);
  }
  RingEventfd(core_->wake_efd);
  return Napi::Value();
}

// setBuffer(id, ptr: bigint, bytes): records may name `id` from now on. The caller keeps the
// memory mapped until dropBuffer(id) and until no collective in flight uses it.
Napi::Value NcclRingWorker::SetBuffer(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  int64_t id = 0;
  uint64_t ptr = 0;
  std::size_t bytes = 0;
  if (!ToInteger(info[0], 0, UINT32_MAX, &id)) {
    ThrowCoded(env, kErrInvalidArg, "NcclRingWorker.setBuffer(id: 0..2^32-1, ptr: bigint, bytes)", true);
    return Napi::Value();
  }
  if (!js::Pointer(info, 1, "ptr", &ptr) || !js::Size(info, 2, "bytes", &bytes)) return Napi::Value();
  if (!core_) return Napi::Value();
  std::lock_guard<std::mutex> lock(core_->mu);
  core_->buffers[static_cast<uint32_t>(id)] = Core::Buffer{ptr, bytes};
  return Napi::Value();
}

Napi::Value NcclRingWorker::DropBuffer(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  int64_t id = 0;
  if (!ToInteger(info[0], 0, UINT32_MAX, &id)) {
    ThrowCoded(info.Env(), kErrInvalidArg, "NcclRingWorker.dropBuffer(id: 0..2^32-1)", true);
    return Napi::Value();
  }
  if (!core_) return Napi::Value();
  std::lock_guard<std::mutex> lock(core_->mu);
  core_->buffers.erase(static_cast<uint32_t>(id));
  return Napi::Value();
}

// inject('hang' | 'fail' | 'crash' | null): what the worker does with its next record.
Napi::Value NcclRingWorker::Inject(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  int f;
  if (!ParseRingFault(info[0], &f)) {
    ThrowCoded(info.Env(), kErrInvalidArg, "NcclRingWorker.inject('hang' | 'fail' | 'crash' | null)", true);
    return Napi::Value();
  }
  if (!core_) return Napi::Value();
  core_->fault.store(f, std::memory_order_release);
  RingEventfd(core_->wake_efd);
  return Napi::Value();
}

Napi::Value NcclRingWorker::SplitComms(const Napi::CallbackInfo& info) {
  size_t n = core_ ? core_->live_splits.load(std::memory_order_relaxed) : 0;
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value NcclRingWorker::Stop(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  core_.reset();
  return Napi::Value();
}

}  // namespace nccld
