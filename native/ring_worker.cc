#include "ring_worker.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
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
#include "reduce.h"
#include "ring_layout.h"
#include "shm_mapping.h"
#include "shm_segment.h"

namespace nccld {

namespace {

// Marks JS objects that really are RingWorkers (napi_type_tag, N-API 8).
const napi_type_tag kRingWorkerTag = {0x6e63636c642d7269ULL, 0x6e67576f726b6572ULL};

// How long the worker spins for new records after its last one before it sleeps. Spinning
// keeps a busy stream of collectives off the futex/eventfd wake (tens of µs on VMs); bounded,
// so an idle rank costs no CPU.
constexpr std::chrono::microseconds kSpin{50};
// The first part of that spin is pause instructions only (a few µs); the rest yields the
// core between looks.
constexpr unsigned kPauseSpins = 256;
// The longest one sleep lasts: stop() and inject() also wake the thread at once, through its
// private eventfd; this only bounds the damage of a lost wake-up, should one ever happen.
constexpr int kSleepMs = 100;

enum Fault : int { kNoFault, kHang, kFail, kCrash };

struct RingWorkerClass {
  Napi::FunctionReference ctor;
};

Napi::Value BadArg(Napi::Env env, const std::string& message) {
  if (!env.IsExceptionPending()) ThrowCoded(env, kErrInvalidArg, message, true);
  return Napi::Value();
}

void RingEventfd(int efd) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(efd, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
}

void DrainEventfd(int efd) {
  uint64_t counter;
  ssize_t n;
  do {
    n = read(efd, &counter, sizeof counter);
  } while (n < 0 && errno == EINTR);
}

}  // namespace

struct RingWorker::Core {
  struct Buffer {
    std::shared_ptr<ShmMapping> mapping;
    uint64_t size;  // usable bytes: the mapping's, or less if the object was smaller at setBuffer
  };

  ~Core() { Shutdown(); }

  // Starts the thread, all signals blocked in it (they are the main thread's business).
  // 0, or an errno value.
  int Start() {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&thread, nullptr, &Core::Main, this);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
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
    for (int* fd : {&memfd, &submit_efd, &complete_efd, &wake_efd}) {
      if (*fd >= 0) close(*fd);
      *fd = -1;
    }
    ctl = nullptr;
    region.reset();
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
    // The worker is the only writer of these two: start from wherever they stand.
    sub_tail = ctl->sub_tail.v.load(std::memory_order_relaxed);
    comp_head = ctl->comp_head.v.load(std::memory_order_relaxed);
    slots.resize(max_buffers);
    held.reserve(max_buffers);
    bufs.reserve(max_buffers);
    Clock::time_point idle_since = Clock::now();
    unsigned spins = 0;
    while (!stopping.load(std::memory_order_acquire)) {
      if (fault.load(std::memory_order_acquire) == kHang) {
        WaitForWake();
        idle_since = Clock::now();
        continue;
      }
      uint64_t head = ctl->sub_head.v.load(std::memory_order_acquire);
      if (head != sub_tail) {
        uint64_t avail = head - sub_tail;
        if (avail > capacity) {
          // Not something the daemon writes: touch nothing, wait to be stopped.
          WaitForWake();
          continue;
        }
        TakeBatch(avail);
        idle_since = Clock::now();
        spins = 0;
        continue;
      }
      ++spins;
      if (spins < kPauseSpins) {
        ring::CpuRelax();
        continue;
      }
      if (Clock::now() - idle_since >= kSpin) {
        Sleep();
        idle_since = Clock::now();
        spins = 0;
      } else {
        // Past the first few µs, let a thread waiting for this core (on a machine with fewer
        // cores than busy threads: the daemon's, another rank's) run before spinning on.
        sched_yield();
      }
    }
    if (pending_ring) RingEventfd(complete_efd);
  }

  // Takes up to `avail` records, then rings the completion doorbell once.
  void TakeBatch(uint64_t avail) {
    for (uint64_t i = 0; i < avail && !stopping.load(std::memory_order_acquire); ++i) {
      int f = fault.load(std::memory_order_acquire);
      if (f == kHang) break;
      if (f == kCrash) kill(getpid(), SIGKILL);
      bool failed = f == kFail && fault.compare_exchange_strong(f, kNoFault, std::memory_order_acq_rel);

      // Copy the record out before looking at it: what we check is what we use, whatever
      // the other side writes meanwhile. Then the slot is free for the daemon again.
      const char* rec = sub_ring + (sub_tail & (capacity - 1)) * record_size;
      ring::SubmitHeader h;
      memcpy(&h, rec, sizeof h);
      size_t nbuf = std::min<size_t>(h.nbuf, max_buffers);
      memcpy(slots.data(), rec + sizeof h, nbuf * sizeof(ring::BufferSlot));
      ++sub_tail;
      ctl->sub_tail.v.store(sub_tail, std::memory_order_release);

      int32_t code = failed ? ring::kInternal : Process(h);
      if (!Post(h.seq, code)) break;  // stopping
    }
    if (pending_ring) {
      RingEventfd(complete_efd);
      pending_ring = false;
    }
  }

  // Validates a record against the buffer table and reduces this rank's slice of it.
  int32_t Process(const ring::SubmitHeader& h) {
    if (h.kind != ring::kKindAllReduce || h.dtype >= kNumDTypes || h.op >= kNumRedOps || h.nbuf < 1 ||
        h.nbuf > max_buffers) {
      return ring::kBadRequest;
    }
    size_t n = h.nbuf;
    size_t elem = DTypeSize(h.dtype);
    ReduceFn fn = GetReduceFn(h.dtype, h.op);
    if (elem == 0 || fn == nullptr) return ring::kInternal;
    // The mappings are held (not just looked up) until the reduction is done: a dropBuffer()
    // or a segment's close() meanwhile cannot unmap them under us.
    struct Release {
      std::vector<Buffer>* v;
      ~Release() { v->clear(); }
    } release{&held};
    {
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i = 0; i < n; ++i) {
        auto it = buffers.find(slots[i].id);
        if (it == buffers.end()) return ring::kNoSuchBuffer;
        held.push_back(it->second);
      }
    }
    bufs.clear();
    for (size_t i = 0; i < n; ++i) {
      uint64_t off = slots[i].offset;
      uint64_t size = held[i].size;
      if (off % elem != 0) return ring::kBadAlignment;
      if (off > size || h.count > (size - off) / elem) return ring::kBufferTooSmall;
      bufs.push_back(held[i].mapping->data() + off);
    }
    uint64_t begin, end;
    SliceBounds(h.count, elem, rank, nranks, &begin, &end);
    if (begin < end) fn(bufs.data(), n, begin, end, nranks);
    return ring::kOk;
  }

  // Posts one completion, first waiting for room if the daemon has not drained (it is rung
  // before we wait). False if stop() came while waiting.
  bool Post(uint64_t seq, int32_t code) {
    unsigned tries = 0;
    while (comp_head - ctl->comp_tail.v.load(std::memory_order_acquire) >= capacity) {
      if (pending_ring) {
        RingEventfd(complete_efd);
        pending_ring = false;
      }
      if (stopping.load(std::memory_order_acquire)) return false;
      if (++tries < 1000) {
        ring::CpuRelax();
      } else if (tries < 2000) {
        sched_yield();
      } else {
        WaitForWake(1);
      }
    }
    ring::Completion c{seq, code, 0};
    memcpy(&comp_ring[comp_head & (capacity - 1)], &c, sizeof c);
    ++comp_head;
    ctl->comp_head.v.store(comp_head, std::memory_order_release);
    pending_ring = true;
    return true;
  }

  // Blocks on the submission doorbell (and our own). The daemon rings only while it sees
  // worker_sleeping set; the fence orders our store of it before our re-read of sub_head,
  // against the daemon's store of sub_head before its read of worker_sleeping.
  void Sleep() {
    ctl->worker_sleeping.v.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (ctl->sub_head.v.load(std::memory_order_relaxed) == sub_tail && !stopping.load(std::memory_order_acquire) &&
        fault.load(std::memory_order_acquire) != kHang) {
      struct pollfd p[2] = {{submit_efd, POLLIN, 0}, {wake_efd, POLLIN, 0}};
      if (poll(p, 2, kSleepMs) > 0) {
        if (p[0].revents & POLLIN) DrainEventfd(submit_efd);
        if (p[1].revents & POLLIN) DrainEventfd(wake_efd);
      }
    }
    ctl->worker_sleeping.v.store(0, std::memory_order_relaxed);
  }

  // Waits on our own doorbell only (stop, inject), at most timeout_ms.
  void WaitForWake(int timeout_ms = kSleepMs) {
    struct pollfd p = {wake_efd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) > 0 && (p.revents & POLLIN)) DrainEventfd(wake_efd);
  }

  // Fixed at attach.
  std::unique_ptr<ShmMapping> region;
  ring::Control* ctl = nullptr;
  const char* sub_ring = nullptr;
  ring::Completion* comp_ring = nullptr;
  uint32_t capacity = 0;
  uint32_t max_buffers = 0;
  uint64_t record_size = 0;
  uint64_t rank = 0;
  uint32_t nranks = 1;
  int memfd = -1;
  int submit_efd = -1;
  int complete_efd = -1;
  int wake_efd = -1;  // ours: stop() and inject() wake the thread through it

  pthread_t thread{};
  bool running = false;
  std::atomic<bool> stopping{false};
  std::atomic<int> fault{kNoFault};

  std::mutex mu;  // guards buffers
  std::unordered_map<uint32_t, Buffer> buffers;

  // The thread's own.
  uint64_t sub_tail = 0;
  uint64_t comp_head = 0;
  bool pending_ring = false;  // completions posted since the doorbell last rang
  std::vector<ring::BufferSlot> slots;
  std::vector<Buffer> held;
  std::vector<char*> bufs;
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

// RingWorker.attach([memfd, submitEventfd, completeEventfd], rank, nranks). Owns the three fds
// from the moment they are read as a list, whether attach succeeds or throws.
Napi::Value RingWorker::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "RingWorker.attach(fds: [memfd, submitEventfd, completeEventfd], rank, nranks)";
  std::vector<int> fds;
  if (!ToFdList(info[0], 3, &fds)) return BadArg(env, usage);
  auto core = std::make_unique<Core>();
  int* owned[3] = {&core->memfd, &core->submit_efd, &core->complete_efd};
  bool distinct = true;
  for (size_t i = 0; i < fds.size(); ++i) {
    // closed by ~Core on any failure (a repeated number only once)
    if (std::find(fds.begin(), fds.begin() + static_cast<std::ptrdiff_t>(i), fds[i]) != fds.begin() + static_cast<std::ptrdiff_t>(i)) {
      distinct = false;
      continue;
    }
    *owned[i] = fds[i];
  }
  int64_t rank, nranks;
  if (fds.size() != 3 || !distinct || !ToInteger(info[2], 1, INT32_MAX, &nranks) || !ToInteger(info[1], 0, nranks - 1, &rank)) {
    return BadArg(env, usage);
  }
  core->rank = static_cast<uint64_t>(rank);
  core->nranks = static_cast<uint32_t>(nranks);

  auto bad_ring = [&](const std::string& why) -> Napi::Value {
    ThrowCoded(env, kErrBadBuffer, "RingWorker.attach: fd " + std::to_string(core->memfd) + " " + why);
    return Napi::Value();
  };
  auto fail = [&](int err, const char* call) -> Napi::Value {
    ThrowErrno(env, err, std::string("RingWorker.attach: ") + call, call);
    return Napi::Value();
  };
  struct stat st;
  if (fstat(core->memfd, &st) != 0) return fail(errno, "fstat");
  if (!S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(sizeof(ring::Control)) ||
      static_cast<uint64_t>(st.st_size) > ring::kMaxRegionBytes) {
    return bad_ring("is not a rank ring (size " + std::to_string(st.st_size) + ")");
  }
  // A region that could shrink under our mapping would SIGBUS this process.
  int seals = fcntl(core->memfd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) return bad_ring("is not a memfd sealed against shrinking");
  for (int efd : {core->submit_efd, core->complete_efd}) {
    int fl = fcntl(efd, F_GETFL);
    if (fl < 0 || fcntl(efd, F_SETFL, fl | O_NONBLOCK) != 0) return fail(errno, "fcntl(eventfd)");
  }
  size_t bytes = static_cast<size_t>(st.st_size);
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, core->memfd, 0);
  if (addr == MAP_FAILED) return fail(errno, "mmap");
  core->region = std::make_unique<ShmMapping>(addr, bytes);

  ring::Header h;
  memcpy(&h, addr, sizeof h);
  if (h.magic != ring::kMagic || h.version != ring::kVersion) return bad_ring("is not a rank ring of version 1");
  if (!ring::IsPowerOfTwo(h.capacity) || h.capacity > ring::kMaxCapacity || h.max_buffers < 1 ||
      h.max_buffers > ring::kMaxBuffers) {
    return bad_ring("has a bad ring header");
  }
  ring::Geometry g = ring::Layout(h.capacity, h.max_buffers);
  if (h.record_size != g.record_size || h.submit_offset != g.submit_offset ||
      h.complete_offset != g.complete_offset || h.total_size != g.total_size || g.total_size > bytes) {
    return bad_ring("has a ring header that does not match its size");
  }
  core->ctl = reinterpret_cast<ring::Control*>(addr);
  core->sub_ring = core->region->data() + g.submit_offset;
  core->comp_ring = reinterpret_cast<ring::Completion*>(core->region->data() + g.complete_offset);
  core->capacity = h.capacity;
  core->max_buffers = h.max_buffers;
  core->record_size = g.record_size;

  core->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (core->wake_efd < 0) return fail(errno, "eventfd");
  if (int err = core->Start()) return fail(err, "pthread_create");

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
  int f = kNoFault;
  if (info[0].IsString()) {
    std::string s = info[0].As<Napi::String>().Utf8Value();
    if (s == "hang") {
      f = kHang;
    } else if (s == "fail") {
      f = kFail;
    } else if (s == "crash") {
      f = kCrash;
    } else {
      return BadArg(env, "RingWorker.inject('hang' | 'fail' | 'crash' | null)");
    }
  } else if (!info[0].IsNull() && !info[0].IsUndefined()) {
    return BadArg(env, "RingWorker.inject('hang' | 'fail' | 'crash' | null)");
  }
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
