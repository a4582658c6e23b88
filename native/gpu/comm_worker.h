#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_api.h"
#include "gpu_error.h"
#include "nccl_api.h"
#include "shared_comm.h"

namespace nccld {

struct CommOp {
  uint64_t id;
  void* buffer;  // reduced in place
  std::size_t count;
  int dtype;     // ncclDataType_t
  int op;        // ncclRedOp_t
};

struct CommCompletion {
  uint64_t id;
  GpuError error;  // ok() on success
};

// One native thread per communicator. It owns every NCCL call on the comm while the comm is
// open (NCCL communicators are not thread-safe, and with non-blocking comms even
// ncclCommGetAsyncError advances internal state), so:
//   - ops are enqueued in FIFO order on the device stream; when ncclAllReduce answers
//     ncclInProgress it polls ncclCommGetAsyncError (with backoff) until the call settles;
//   - a CUevent is recorded after each op; events are polled head-first with cuEventQuery,
//     and ncclCommGetAsyncError is checked while waiting, so a remote failure that leaves a
//     kernel spinning still rejects the op instead of hanging it;
//   - each finished op is handed to `notify` (on this thread), which forwards it to JS.
// The JS thread only queries through QueryAsync(), which takes the same lock.
class CommWorker {
 public:
  using Notify = std::function<void(CommCompletion*)>;  // receives ownership

  CommWorker(std::shared_ptr<SharedComm> shared, Notify notify);
  ~CommWorker();  // Stop()
  CommWorker(const CommWorker&) = delete;
  CommWorker& operator=(const CommWorker&) = delete;

  void Submit(const CommOp& op);
  // ncclCommGetAsyncError, serialized with the worker's own NCCL calls. Any thread.
  nccl::Result QueryAsync(nccl::Result* state);
  // Idempotent. Returns once the thread has exited, i.e. no CUDA or NCCL call of ours is in
  // flight on the comm; ops not yet finished are dropped without notification (the owner
  // rejects them). Every wait in the thread is bounded, so this returns promptly.
  void Stop();

 private:
  struct Inflight {
    uint64_t id;
    cu::Event event;
  };

  void Run();
  void Enqueue(const CommOp& op);
  bool ReapFinished();                       // true if any op completed
  void CheckAsyncError();
  // Waits until the comm has no call in progress (init, or the previous non-blocking call).
  // Returns false if stopped meanwhile; otherwise *err is set when the comm reports an error.
  bool WaitSettled(const char* call, GpuError* err);
  void Complete(uint64_t id, const GpuError& err);
  void FailAll(const GpuError& err);         // the comm is unusable: fail everything, now and later
  void DropEvent(cu::Event ev, bool reusable);

  const std::shared_ptr<SharedComm> shared_;
  const nccl::Comm comm_;
  const cu::Context ctx_;
  const cu::Stream stream_;
  const Notify notify_;

  std::mutex& callMu_;  // the shared comm's: serializes NCCL calls on comm_

  std::mutex mu_;      // guards queue_ and stop_
  std::condition_variable cv_;
  std::deque<CommOp> queue_;
  bool stop_ = false;
  std::atomic<bool> stopping_{false};  // lock-free view of stop_ for polling loops

  // Worker-thread only.
  std::deque<Inflight> inflight_;
  std::vector<cu::Event> spareEvents_;
  bool failed_ = false;
  GpuError failure_;

  std::mutex joinMu_;  // Stop() may race between the JS thread and the exit handler
  std::thread thread_;
};

}  // namespace nccld
