// RingEndpoint: the device process's end of a rank ring, whatever runs the collectives (the host
// worker reduces them, the NCCL worker launches them). It maps and checks the region the daemon
// made, takes submission records, posts completions and sleeps on the doorbell; the threading
// and what a record means are the worker's. Used by one thread at a time: the worker's.
#pragma once

#include <napi.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ring_layout.h"
#include "shm_mapping.h"

namespace nccld {

class RingEndpoint {
 public:
  ~RingEndpoint();  // closes the three fds, unmaps the ring
  RingEndpoint(const RingEndpoint&) = delete;
  RingEndpoint& operator=(const RingEndpoint&) = delete;

  // Takes [memfd, submitEventfd, completeEventfd] from a JS array (they are owned, and closed
  // on failure, from the moment they are read), maps and checks the ring. On failure throws a
  // coded JS error prefixed with `who` and returns null.
  static std::unique_ptr<RingEndpoint> Attach(Napi::Env env, const Napi::Value& fds, const char* who);

  uint32_t max_buffers() const { return max_buffers_; }

  // Records waiting: 0 when none, kCorrupt when the daemon's head claims more than the ring
  // holds (not something the daemon writes: touch nothing).
  static constexpr uint64_t kCorrupt = ~uint64_t{0};
  uint64_t Waiting() const;
  // The daemon's head as it stands: every record submitted so far lies below it.
  uint64_t Head() const { return ctl_->sub_head.v.load(std::memory_order_acquire); }
  uint64_t Tail() const { return sub_tail_; }

  // Copies the next record out (header, then min(nbuf, max_buffers) slots into `slots`, and its
  // event handles into `events` when its flags say it has some: kEventsPerRecord ×
  // kEventHandleBytes) and frees its slot for the daemon: what the caller checks is what it uses.
  // Needs Waiting() > 0.
  void Take(ring::SubmitHeader* h, ring::BufferSlot* slots, uint8_t* events = nullptr);

  // Posts one completion, waiting for room (ringing the doorbell first) while the daemon has not
  // drained. False if `stopping` was set while waiting; `wake_efd` cuts the wait short.
  bool Post(uint64_t seq, int32_t code, const std::atomic<bool>& stopping, int wake_efd);
  // Rings the completion doorbell if anything was posted since it last rang.
  void Flush();

  // Blocks on the submission doorbell and `wake_efd` for at most timeout_ms, unless a record
  // arrived or `keep_awake` says otherwise after we told the daemon we sleep (no lost wake-up:
  // see ring_layout.h).
  template <typename KeepAwake>
  void Sleep(int wake_efd, int timeout_ms, KeepAwake keep_awake) {
    ctl_->worker_sleeping.v.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (ctl_->sub_head.v.load(std::memory_order_relaxed) == sub_tail_ && !keep_awake()) Block(wake_efd, timeout_ms);
    ctl_->worker_sleeping.v.store(0, std::memory_order_relaxed);
  }

 private:
  RingEndpoint() = default;
  void Block(int wake_efd, int timeout_ms);

  std::unique_ptr<ShmMapping> region_;
  ring::Control* ctl_ = nullptr;
  const char* sub_ring_ = nullptr;
  ring::Completion* comp_ring_ = nullptr;
  uint32_t capacity_ = 0;
  uint32_t max_buffers_ = 0;
  uint64_t record_size_ = 0;
  uint32_t events_ = 0;
  int memfd_ = -1;
  int submit_efd_ = -1;
  int complete_efd_ = -1;
  // Ours alone: the worker is the only writer of sub_tail and comp_head.
  uint64_t sub_tail_ = 0;
  uint64_t comp_head_ = 0;
  bool pending_ring_ = false;  // completions posted since the doorbell last rang
};

// How a worker waits for records. It spins for a while after its last one before it sleeps:
// spinning keeps a busy stream of collectives off the eventfd wake (tens of µs on VMs), and
// bounded, so an idle rank costs no CPU. The first spins are pause instructions only (a few
// µs); the rest yield the core between looks. One sleep lasts at most kRingSleepMs: stop() and
// inject() wake the thread at once through its own eventfd, so this only bounds the damage of a
// lost wake-up, should one ever happen.
constexpr std::chrono::microseconds kRingSpin{50};  // the default; attach() may set another
constexpr int64_t kMaxRingSpinUs = 1000000;
constexpr unsigned kRingPauseSpins = 256;
constexpr int kRingSleepMs = 100;

// Injected faults (tests and drills): what a worker does with its next record.
enum RingFault : int { kNoFault, kHang, kFail, kCrash };
// 'hang' | 'fail' | 'crash' | null (none) into *out; false for anything else.
bool ParseRingFault(const Napi::Value& v, int* out);

// Starts a worker thread with every signal blocked in it (they are the main thread's business).
// 0, or an errno value.
int StartWorkerThread(pthread_t* thread, void* (*main)(void*), void* arg);

// Eventfd helpers shared by the workers.
void RingEventfd(int efd);
void DrainEventfd(int efd);
// Waits on one of our own eventfds (stop, inject) for at most timeout_ms, and resets it.
void WaitEventfd(int efd, int timeout_ms);

}  // namespace nccld
