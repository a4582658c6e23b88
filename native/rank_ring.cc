#include "rank_ring.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "args.h"
#include "errors.h"
#include "reduce.h"

namespace nccld {

namespace {

// Marks JS objects that really are RankRings (napi_type_tag, N-API 8).
const napi_type_tag kRankRingTag = {0x6e63636c642d7261ULL, 0x6e6b52696e670000ULL};

struct RankRingClass {
  Napi::FunctionReference ctor;
};

// What create() passes to the constructor, wrapped in an External so that JS cannot construct
// a ring itself. Whatever the constructor does not take is released by the destructor.
struct PendingRing {
  std::unique_ptr<ShmMapping> region;
  uint32_t capacity = 0;
  uint32_t max_buffers = 0;
  uint32_t events = 0;
  int fds[3] = {-1, -1, -1};  // memfd, submission eventfd, completion eventfd
  ~PendingRing() {
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
  }
};

Napi::Value BadArg(Napi::Env env, const std::string& message) {
  if (!env.IsExceptionPending()) ThrowCoded(env, kErrInvalidArg, message, true);
  return Napi::Value();
}

// An eventfd counter += 1. Cannot block (non-blocking, and the counter never nears its limit).
void Ring(int efd) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(efd, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
}

}  // namespace

void RankRing::Init(Napi::Env env, Napi::Object exports) {
  auto* cls = new RankRingClass();
  Napi::Function func = DefineClass(env, "RankRing",
                                    {
                                        StaticMethod("create", &RankRing::Create, napi_default, cls),
                                        InstanceAccessor<&RankRing::GetFds>("fds"),
                                        InstanceAccessor<&RankRing::GetCapacity>("capacity"),
                                        InstanceMethod<&RankRing::Submit>("submit"),
                                        InstanceMethod<&RankRing::Start>("start"),
                                        InstanceMethod<&RankRing::Close>("close"),
                                        InstanceMethod<&RankRing::Drain>("drain"),
                                    });
  if (func.IsEmpty()) {
    delete cls;
    return;
  }
  cls->ctor = Napi::Persistent(func);
  env.AddCleanupHook([cls]() { delete cls; });
  exports.Set("RankRing", func);

  Napi::Array codes = Napi::Array::New(env, ring::kNumCodes);
  for (uint32_t i = 0; i < ring::kNumCodes; ++i) codes.Set(i, Napi::String::New(env, ring::kCodes[i]));
  codes.Freeze();
  exports.Set("RANK_RING_CODES", codes);
}

bool RankRing::IsSelf(const Napi::CallbackInfo& info) {
  Napi::Value self = info.This();
  if (self.IsObject() && self.As<Napi::Object>().CheckTypeTag(&kRankRingTag)) return true;
  if (!info.Env().IsExceptionPending()) ThrowCoded(info.Env(), kErrInvalidArg, "Illegal invocation", true);
  return false;
}

// RankRing.create(capacity, maxBuffers, withEvents?): capacity is rounded up to a power of two;
// withEvents gives each record room for two CUDA IPC event handles.
Napi::Value RankRing::Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t want, max_buffers;
  if (!ToInteger(info[0], 1, ring::kMaxCapacity, &want) || !ToInteger(info[1], 1, ring::kMaxBuffers, &max_buffers) ||
      !(info[2].IsUndefined() || info[2].IsBoolean())) {
    return BadArg(env, "RankRing.create(capacity: 1.." + std::to_string(ring::kMaxCapacity) +
                           ", maxBuffers: 1.." + std::to_string(ring::kMaxBuffers) + ", withEvents?: boolean)");
  }
  uint32_t events = info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value() ? ring::kEventsPerRecord : 0;
  uint32_t capacity = 1;
  while (capacity < want) capacity <<= 1;
  ring::Geometry g = ring::Layout(capacity, static_cast<uint32_t>(max_buffers), events);
  if (g.total_size > ring::kMaxRegionBytes) {
    return BadArg(env, "RankRing.create: " + std::to_string(capacity) + " records of " +
                           std::to_string(max_buffers) + " buffers need " + std::to_string(g.total_size) +
                           " bytes, over the " + std::to_string(ring::kMaxRegionBytes) + " allowed");
  }

  PendingRing pending;
  pending.capacity = capacity;
  pending.max_buffers = static_cast<uint32_t>(max_buffers);
  pending.events = events;
  auto fail = [&](int err, const char* call) -> Napi::Value {
    ThrowErrno(env, err, std::string("RankRing.create: ") + call, call);
    return Napi::Value();
  };
  int memfd = memfd_create("nccld_rank_ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (memfd < 0) return fail(errno, "memfd_create");
  pending.fds[0] = memfd;
  if (ftruncate(memfd, static_cast<off_t>(g.total_size)) != 0) return fail(errno, "ftruncate");
  // Pages reserved now (ENOSPC here rather than SIGBUS later), and the size sealed: neither
  // side can truncate the region under the other's mapping.
  if (int err = posix_fallocate(memfd, 0, static_cast<off_t>(g.total_size))) return fail(err, "posix_fallocate");
  if (fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) return fail(errno, "fcntl(F_ADD_SEALS)");
  for (int i = 1; i <= 2; ++i) {
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return fail(errno, "eventfd");
    pending.fds[i] = efd;
  }
  void* addr = mmap(nullptr, g.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (addr == MAP_FAILED) return fail(errno, "mmap");
  pending.region = std::make_unique<ShmMapping>(addr, g.total_size);

  // The file starts zeroed: indices 0, worker awake. The header goes in last of all.
  auto* ctl = reinterpret_cast<ring::Control*>(addr);
  ring::Header h{};
  h.magic = ring::kMagic;
  h.version = ring::kVersion;
  h.capacity = capacity;
  h.record_size = static_cast<uint32_t>(g.record_size);
  h.max_buffers = static_cast<uint32_t>(max_buffers);
  h.submit_offset = g.submit_offset;
  h.complete_offset = g.complete_offset;
  h.total_size = g.total_size;
  h.events = events;
  memcpy(&ctl->header, &h, sizeof h);

  auto* cls = static_cast<RankRingClass*>(info.Data());
  Napi::Object obj = cls->ctor.New({Napi::External<PendingRing>::New(env, &pending)});
  if (obj.IsEmpty()) return Napi::Value();  // `pending` closes what was not taken
  return obj;
}

RankRing::RankRing(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RankRing>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    ThrowCoded(env, kErrInvalidArg, "use RankRing.create()", true);
    return;
  }
  auto* pending = info[0].As<Napi::External<PendingRing>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kRankRingTag);
  if (env.IsExceptionPending()) return;
  region_ = std::move(pending->region);
  capacity_ = pending->capacity;
  max_buffers_ = pending->max_buffers;
  events_ = pending->events;
  ring::Geometry g = ring::Layout(capacity_, max_buffers_, events_);
  record_size_ = g.record_size;
  ctl_ = reinterpret_cast<ring::Control*>(region_->data());
  sub_ring_ = region_->data() + g.submit_offset;
  comp_ring_ = reinterpret_cast<const ring::Completion*>(region_->data() + g.complete_offset);
  memfd_ = pending->fds[0];
  submit_efd_ = pending->fds[1];
  complete_efd_ = pending->fds[2];
  pending->fds[0] = pending->fds[1] = pending->fds[2] = -1;
}

RankRing::~RankRing() {
  // A started ring is strongly referenced until its poll handle has closed, so only
  // environment teardown gets here with the handle around: detach it from us.
  if (poll_ != nullptr) {
    uv_handle_t* h = uv::AsHandle(poll_);
    uv_handle_set_data(h, nullptr);
    if (!uv_is_closing(h)) uv_close(h, OnPollClosed);
    poll_ = nullptr;
  }
  Teardown();
}

Napi::Value RankRing::GetFds(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  Napi::Array fds = Napi::Array::New(env, 3);
  fds.Set(0u, Napi::Number::New(env, memfd_));
  fds.Set(1u, Napi::Number::New(env, submit_efd_));
  fds.Set(2u, Napi::Number::New(env, complete_efd_));
  return fds;
}

Napi::Value RankRing::GetCapacity(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  return Napi::Number::New(info.Env(), capacity_);
}

// submit(seq, kind, dtype, op, count, ids: Uint32Array, offsets: Float64Array): boolean.
// The hot path: no allocation, no system call unless the worker sleeps.
Napi::Value RankRing::Submit(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  const char* usage =
      "RankRing.submit(seq, kind, dtype, op, count, ids: Uint32Array, offsets: Float64Array, "
      "extra?: Int32Array [root, comm, share, nshares, color, key, flags], events?: Uint8Array of "
      "2 CUDA IPC event handles): integers >= 0, ids and offsets of one length in 0..maxBuffers";
  uint64_t seq, count;
  int64_t kind, dtype, op;
  if (!ToIndex(info[0], &seq) || !ToInteger(info[1], 0, ring::kNumRecordKinds - 1, &kind) ||
      !ToInteger(info[2], 0, kNumDTypes - 1, &dtype) || !ToInteger(info[3], 0, kNumRedOps - 1, &op) ||
      !ToIndex(info[4], &count) || !info[5].IsTypedArray() || !info[6].IsTypedArray()) {
    return BadArg(env, usage);
  }
  Napi::TypedArray ids_ta = info[5].As<Napi::TypedArray>();
  Napi::TypedArray offs_ta = info[6].As<Napi::TypedArray>();
  if (ids_ta.TypedArrayType() != napi_uint32_array || offs_ta.TypedArrayType() != napi_float64_array) {
    return BadArg(env, usage);
  }
  Napi::Uint32Array ids = info[5].As<Napi::Uint32Array>();
  Napi::Float64Array offs = info[6].As<Napi::Float64Array>();
  size_t n = ids.ElementLength();
  if (n > max_buffers_ || offs.ElementLength() != n) return BadArg(env, usage);
  int32_t extra[7] = {-1, 0, 0, 0, 0, 0, 0};
  if (!info[7].IsUndefined()) {
    if (!info[7].IsTypedArray() || info[7].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
        info[7].As<Napi::Int32Array>().ElementLength() != 7) {
      return BadArg(env, usage);
    }
    memcpy(extra, info[7].As<Napi::Int32Array>().Data(), sizeof extra);
    if (extra[1] < 0 || extra[2] < 0 || extra[2] > 0xffff || extra[3] < 0 || extra[3] > 0xffff || extra[6] < 0 ||
        extra[6] > (ring::kFlagWaitEvent | ring::kFlagDoneEvent)) {
      return BadArg(env, usage);
    }
  }
  const uint8_t* handles = nullptr;
  if (extra[6] != 0) {
    // Event handles travel only in rings made for them.
    size_t len = 0;
    if (events_ == 0 || !ToBytes(info[8], &handles, &len) || len != ring::kEventsPerRecord * ring::kEventHandleBytes) {
      return BadArg(env, usage);
    }
  }
  const uint32_t* id = ids.Data();
  const double* off = offs.Data();
  for (size_t i = 0; i < n; ++i) {
    double d = off[i];
    if (!(d >= 0 && d <= static_cast<double>(kMaxSafeInteger)) || std::trunc(d) != d) {
      return BadArg(env, "RankRing.submit: offsets[" + std::to_string(i) + "] must be a non-negative integer");
    }
  }
  if (!open()) {
    ThrowCoded(env, kErrClosed, "RankRing is closed");
    return Napi::Value();
  }

  // Full? Only then look at how far the worker got. Unsigned arithmetic: a tail the worker
  // never could have written (ahead of our head) reads as full, never as room.
  if (sub_head_ - sub_tail_seen_ >= capacity_) {
    sub_tail_seen_ = ctl_->sub_tail.v.load(std::memory_order_acquire);
    if (sub_head_ - sub_tail_seen_ >= capacity_) return Napi::Boolean::New(env, false);
  }

  char* rec = sub_ring_ + (sub_head_ & (capacity_ - 1)) * record_size_;
  ring::SubmitHeader h{};
  h.seq = seq;
  h.count = count;
  h.kind = static_cast<uint8_t>(kind);
  h.dtype = static_cast<uint8_t>(dtype);
  h.op = static_cast<uint8_t>(op);
  h.nbuf = static_cast<uint16_t>(n);
  h.root = extra[0];
  h.comm = static_cast<uint32_t>(extra[1]);
  h.share = static_cast<uint16_t>(extra[2]);
  h.nshares = static_cast<uint16_t>(extra[3]);
  h.color = extra[4];
  h.key = extra[5];
  h.flags = static_cast<uint8_t>(extra[6]);
  memcpy(rec, &h, sizeof h);
  auto* slots = reinterpret_cast<ring::BufferSlot*>(rec + sizeof h);
  for (size_t i = 0; i < n; ++i) {
    ring::BufferSlot s{id[i], 0, static_cast<uint64_t>(off[i])};
    memcpy(&slots[i], &s, sizeof s);
  }
  if (handles != nullptr) memcpy(rec + ring::EventsOffset(max_buffers_), handles, ring::kEventsPerRecord * ring::kEventHandleBytes);
  ++sub_head_;
  ctl_->sub_head.v.store(sub_head_, std::memory_order_release);
  // Pairs with the worker's fence between setting worker_sleeping and re-reading sub_head:
  // either it sees our record, or we see it asleep and ring.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (ctl_->worker_sleeping.v.load(std::memory_order_relaxed) != 0) Ring(submit_efd_);
  return Napi::Boolean::New(env, true);
}

// start(onComplete(seqs: Float64Array, codes: Int32Array)).
Napi::Value RankRing::Start(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) return BadArg(env, "RankRing.start(onComplete: (seqs, codes) => void)");
  if (!open()) {
    ThrowCoded(env, kErrClosed, "RankRing is closed");
    return Napi::Value();
  }
  if (poll_ != nullptr) return BadArg(env, "RankRing.start: already started");
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ThrowCoded(env, kErrInternal, "RankRing.start: no event loop");
    return Napi::Value();
  }
  auto* poll = static_cast<uv_poll_t*>(malloc(uv_handle_size(uv::kPollHandle)));
  if (poll == nullptr) {
    ThrowErrno(env, ENOMEM, "RankRing.start", "malloc");
    return Napi::Value();
  }
  if (int r = uv_poll_init(loop, poll, complete_efd_)) {
    free(poll);  // not initialised: no uv_close needed
    ThrowErrno(env, -r, "uv_poll_init(" + std::to_string(complete_efd_) + ")", "uv_poll_init");
    return Napi::Value();
  }
  uv_handle_set_data(uv::AsHandle(poll), this);
  poll_ = poll;
  // Level-triggered: completions posted before start() show up at once.
  if (int r = uv_poll_start(poll_, uv::kReadable, &RankRing::OnPoll)) {
    uv_close(uv::AsHandle(poll_), [](uv_handle_t* h) { free(h); });
    uv_handle_set_data(uv::AsHandle(poll_), nullptr);
    poll_ = nullptr;
    ThrowErrno(env, -r, "uv_poll_start(" + std::to_string(complete_efd_) + ")", "uv_poll_start");
    return Napi::Value();
  }
  on_complete_ = Napi::Persistent(info[0].As<Napi::Function>());
  async_context_ = std::make_unique<Napi::AsyncContext>(env, "nccld.RankRing", info.This().As<Napi::Object>());
  // Kept alive while watching, so onComplete can fire; OnPollClosed lets go.
  Ref();
  return Napi::Value();
}

void RankRing::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<RankRing*>(uv_handle_get_data(uv::AsHandle(handle)));
  if (self == nullptr || !self->open()) return;
  // An eventfd reports no errors of its own; on one, still look at the ring (libuv has
  // stopped the handle, so this is the last wake: the integrator's deadlines take over).
  (void)status;
  (void)events;
  self->OnReadable();
}

void RankRing::OnReadable() {
  // Reset the doorbell first, then drain: a completion posted after the drain rings again.
  uint64_t counter;
  ssize_t r;
  do {
    r = read(complete_efd_, &counter, sizeof counter);
  } while (r < 0 && errno == EINTR);

  uint64_t head = ctl_->comp_head.v.load(std::memory_order_acquire);
  uint64_t n = head - comp_tail_;
  // More than a ring holds (or a head behind our tail): not something a worker writes. Take
  // nothing rather than garbage; the integrator's deadlines cover a worker gone wrong.
  if (n == 0 || n > capacity_) return;

  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Napi::Float64Array seqs = Napi::Float64Array::New(env, n);
  Napi::Int32Array codes = Napi::Int32Array::New(env, n);
  if (seqs.IsEmpty() || codes.IsEmpty()) {
    if (env.IsExceptionPending()) napi_fatal_exception(env, env.GetAndClearPendingException().Value());
    return;  // the doorbell was reset: the next completion brings these along
  }
  double* seq_out = seqs.Data();
  int32_t* code_out = codes.Data();
  for (uint64_t i = 0; i < n; ++i) {
    ring::Completion c;
    memcpy(&c, &comp_ring_[(comp_tail_ + i) & (capacity_ - 1)], sizeof c);
    seq_out[i] = static_cast<double>(c.seq);
    code_out[i] = (c.code >= 0 && c.code < ring::kNumCodes) ? c.code : ring::kInternal;
  }
  comp_tail_ += n;
  ctl_->comp_tail.v.store(comp_tail_, std::memory_order_release);

  // Nothing of ours is touched after the callback: it may close() the ring.
  if (on_complete_.IsEmpty() || async_context_ == nullptr) return;
  on_complete_.MakeCallback(Value(), {seqs, codes}, *async_context_);
  if (env.IsExceptionPending()) napi_fatal_exception(env, env.GetAndClearPendingException().Value());
}

Napi::Value RankRing::Drain(const Napi::CallbackInfo& info) {
  (void)info;
  if (open() && poll_ != nullptr) OnReadable();
  return Napi::Value();
}

void RankRing::OnPollClosed(uv_handle_t* handle) {
  auto* self = static_cast<RankRing*>(uv_handle_get_data(handle));
  free(handle);
  if (self == nullptr) return;  // destroyed at environment teardown
  self->poll_ = nullptr;
  self->on_complete_.Reset();
  self->async_context_.reset();
  self->Unref();
}

void RankRing::Teardown() {
  if (!open()) return;
  // uv_close takes the fd out of epoll before the fd goes away; the handle itself is freed,
  // and our ref dropped, in OnPollClosed on a later loop turn (never inside onComplete).
  if (poll_ != nullptr && !uv_is_closing(uv::AsHandle(poll_))) uv_close(uv::AsHandle(poll_), &RankRing::OnPollClosed);
  for (int* fd : {&memfd_, &submit_efd_, &complete_efd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
  ctl_ = nullptr;
  sub_ring_ = nullptr;
  comp_ring_ = nullptr;
  region_.reset();
}

Napi::Value RankRing::Close(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Teardown();
  return Napi::Value();
}

}  // namespace nccld
