#include "ring_endpoint.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "args.h"
#include "errors.h"

namespace nccld {

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

int StartWorkerThread(pthread_t* thread, void* (*main)(void*), void* arg) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = pthread_create(thread, nullptr, main, arg);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return err;
}

bool ParseRingFault(const Napi::Value& v, int* out) {
  *out = kNoFault;
  if (v.IsNull() || v.IsUndefined()) return true;
  if (!v.IsString()) return false;
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "hang") {
    *out = kHang;
  } else if (s == "fail") {
    *out = kFail;
  } else if (s == "crash") {
    *out = kCrash;
  } else {
    return false;
  }
  return true;
}

void WaitEventfd(int efd, int timeout_ms) {
  struct pollfd p = {efd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) > 0 && (p.revents & POLLIN)) DrainEventfd(efd);
}

RingEndpoint::~RingEndpoint() {
  for (int fd : {memfd_, submit_efd_, complete_efd_}) {
    if (fd >= 0) close(fd);
  }
}

std::unique_ptr<RingEndpoint> RingEndpoint::Attach(Napi::Env env, const Napi::Value& value, const char* who) {
  std::string usage = std::string(who) + "(fds: [memfd, submitEventfd, completeEventfd], ...)";
  std::vector<int> fds;
  if (!ToFdList(value, 3, &fds)) {
    if (!env.IsExceptionPending()) ThrowCoded(env, kErrInvalidArg, usage, true);
    return nullptr;
  }
  std::unique_ptr<RingEndpoint> ep(new RingEndpoint());
  int* owned[3] = {&ep->memfd_, &ep->submit_efd_, &ep->complete_efd_};
  bool distinct = true;
  for (size_t i = 0; i < fds.size(); ++i) {
    // closed by the destructor on any failure (a repeated number only once)
    if (std::find(fds.begin(), fds.begin() + static_cast<std::ptrdiff_t>(i), fds[i]) != fds.begin() + static_cast<std::ptrdiff_t>(i)) {
      distinct = false;
      continue;
    }
    *owned[i] = fds[i];
  }
  if (fds.size() != 3 || !distinct) {
    ThrowCoded(env, kErrInvalidArg, usage, true);
    return nullptr;
  }
  auto bad_ring = [&](const std::string& why) {
    ThrowCoded(env, kErrBadBuffer, std::string(who) + ": fd " + std::to_string(ep->memfd_) + " " + why);
    return nullptr;
  };
  auto fail = [&](int err, const char* call) {
    ThrowErrno(env, err, std::string(who) + ": " + call, call);
    return nullptr;
  };
  struct stat st;
  if (fstat(ep->memfd_, &st) != 0) return fail(errno, "fstat");
  if (!S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(sizeof(ring::Control)) ||
      static_cast<uint64_t>(st.st_size) > ring::kMaxRegionBytes) {
    return bad_ring("is not a rank ring (size " + std::to_string(st.st_size) + ")");
  }
  // A region that could shrink under our mapping would SIGBUS this process.
  int seals = fcntl(ep->memfd_, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) return bad_ring("is not a memfd sealed against shrinking");
  for (int efd : {ep->submit_efd_, ep->complete_efd_}) {
    int fl = fcntl(efd, F_GETFL);
    if (fl < 0 || fcntl(efd, F_SETFL, fl | O_NONBLOCK) != 0) return fail(errno, "fcntl(eventfd)");
  }
  size_t bytes = static_cast<size_t>(st.st_size);
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, ep->memfd_, 0);
  if (addr == MAP_FAILED) return fail(errno, "mmap");
  ep->region_ = std::make_unique<ShmMapping>(addr, bytes);

  ring::Header h;
  memcpy(&h, addr, sizeof h);
  if (h.magic != ring::kMagic || h.version != ring::kVersion) {
    return bad_ring("is not a rank ring of version " + std::to_string(ring::kVersion));
  }
  if (!ring::IsPowerOfTwo(h.capacity) || h.capacity > ring::kMaxCapacity || h.max_buffers < 1 ||
      h.max_buffers > ring::kMaxBuffers) {
    return bad_ring("has a bad ring header");
  }
  if (h.events != 0 && h.events != ring::kEventsPerRecord) return bad_ring("has a bad ring header");
  ring::Geometry g = ring::Layout(h.capacity, h.max_buffers, h.events);
  if (h.record_size != g.record_size || h.submit_offset != g.submit_offset ||
      h.complete_offset != g.complete_offset || h.total_size != g.total_size || g.total_size > bytes) {
    return bad_ring("has a ring header that does not match its size");
  }
  ep->ctl_ = reinterpret_cast<ring::Control*>(addr);
  ep->sub_ring_ = ep->region_->data() + g.submit_offset;
  ep->comp_ring_ = reinterpret_cast<ring::Completion*>(ep->region_->data() + g.complete_offset);
  ep->capacity_ = h.capacity;
  ep->max_buffers_ = h.max_buffers;
  ep->record_size_ = g.record_size;
  ep->events_ = h.events;
  // The worker is the only writer of these two: start from wherever they stand.
  ep->sub_tail_ = ep->ctl_->sub_tail.v.load(std::memory_order_relaxed);
  ep->comp_head_ = ep->ctl_->comp_head.v.load(std::memory_order_relaxed);
  return ep;
}

uint64_t RingEndpoint::Waiting() const {
  uint64_t avail = ctl_->sub_head.v.load(std::memory_order_acquire) - sub_tail_;
  return avail > capacity_ ? kCorrupt : avail;
}

void RingEndpoint::Take(ring::SubmitHeader* h, ring::BufferSlot* slots, uint8_t* events) {
  const char* rec = sub_ring_ + (sub_tail_ & (capacity_ - 1)) * record_size_;
  memcpy(h, rec, sizeof *h);
  size_t nbuf = std::min<size_t>(h->nbuf, max_buffers_);
  memcpy(slots, rec + sizeof *h, nbuf * sizeof(ring::BufferSlot));
  if (events_ == 0) h->flags = 0;  // no room for handles: none can be in use
  if (h->flags != 0 && events != nullptr) {
    memcpy(events, rec + ring::EventsOffset(max_buffers_), ring::kEventsPerRecord * ring::kEventHandleBytes);
  }
  ++sub_tail_;
  ctl_->sub_tail.v.store(sub_tail_, std::memory_order_release);
}

bool RingEndpoint::Post(uint64_t seq, int32_t code, const std::atomic<bool>& stopping, int wake_efd) {
  unsigned tries = 0;
  while (comp_head_ - ctl_->comp_tail.v.load(std::memory_order_acquire) >= capacity_) {
    Flush();
    if (stopping.load(std::memory_order_acquire)) return false;
    if (++tries < 1000) {
      ring::CpuRelax();
    } else if (tries < 2000) {
      sched_yield();
    } else {
      WaitEventfd(wake_efd, 1);
    }
  }
  ring::Completion c{seq, code, 0};
  memcpy(&comp_ring_[comp_head_ & (capacity_ - 1)], &c, sizeof c);
  ++comp_head_;
  ctl_->comp_head.v.store(comp_head_, std::memory_order_release);
  pending_ring_ = true;
  return true;
}

void RingEndpoint::Flush() {
  if (!pending_ring_) return;
  RingEventfd(complete_efd_);
  pending_ring_ = false;
}

void RingEndpoint::Block(int wake_efd, int timeout_ms) {
  struct pollfd p[2] = {{submit_efd_, POLLIN, 0}, {wake_efd, POLLIN, 0}};
  if (poll(p, 2, timeout_ms) > 0) {
    if (p[0].revents & POLLIN) DrainEventfd(submit_efd_);
    if (p[1].revents & POLLIN) DrainEventfd(wake_efd);
  }
}

}  // namespace nccld
