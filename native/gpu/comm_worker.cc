#include "comm_worker.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "cuda_lib.h"
#include "exit_stop.h"
#include "nccl_lib.h"
#include "poll_backoff.h"

namespace nccld {

namespace {

constexpr std::size_t kMaxInflight = 64;  // bounds GPU queue depth (a full launch queue blocks)
}  // namespace

CommWorker::CommWorker(std::shared_ptr<SharedComm> shared, Notify notify)
    : shared_(std::move(shared)),
      comm_(shared_->comm),
      ctx_(shared_->ctx),
      stream_(shared_->stream),
      notify_(std::move(notify)),
      callMu_(shared_->mu) {
  thread_ = std::thread(&CommWorker::Run, this);
  StopAtExit(this, [this] { Stop(); });
}

CommWorker::~CommWorker() { Stop(); }

void CommWorker::Stop() {
  ForgetAtExit(this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    stopping_.store(true);
  }
  cv_.notify_all();
  std::lock_guard<std::mutex> lock(joinMu_);
  if (thread_.joinable()) thread_.join();
}

void CommWorker::Submit(const CommOp& op) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(op);
  }
  cv_.notify_one();
}

nccl::Result CommWorker::QueryAsync(nccl::Result* state) {
  std::lock_guard<std::mutex> lock(callMu_);
  return NcclLib::Get().api().CommGetAsyncError(comm_, state);
}

void CommWorker::Run() {
  cu::Result r = CudaLib::Get().api().CtxSetCurrent(ctx_);  // contexts are per thread
  if (r != cu::kSuccess) FailAll(GpuError::Cuda(r, "cuCtxSetCurrent (comm worker thread)"));
  unsigned polls = 0;
  for (;;) {
    bool progressed = ReapFinished();
    if (!inflight_.empty()) CheckAsyncError();
    CommOp op;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) break;
      bool canTake = !queue_.empty() && inflight_.size() < kMaxInflight;
      if (!canTake) {
        if (inflight_.empty()) {
          cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
          polls = 0;
        } else if (progressed) {
          polls = 0;
        } else {
          // GPU busy: look again soon, or as soon as new work arrives.
          std::chrono::microseconds d = PollDelay(polls++);
          if (d.count() == 0) {
            lock.unlock();
            std::this_thread::yield();
          } else {
            cv_.wait_for(lock, d, [this] {
              return stop_ || (!queue_.empty() && inflight_.size() < kMaxInflight);
            });
          }
        }
        continue;
      }
      op = queue_.front();
      queue_.pop_front();
    }
    polls = 0;
    Enqueue(op);
  }
  // Stopped. Events still pending on the GPU are released by the driver once they complete.
  const cu::Api& cuda = CudaLib::Get().api();
  for (const Inflight& f : inflight_) cuda.EventDestroy(f.event);
  for (cu::Event ev : spareEvents_) cuda.EventDestroy(ev);
  inflight_.clear();
  spareEvents_.clear();
}

void CommWorker::Enqueue(const CommOp& op) {
  if (failed_) {
    Complete(op.id, failure_);
    return;
  }
  const nccl::Api& nccl = NcclLib::Get().api();
  const cu::Api& cuda = CudaLib::Get().api();
  GpuError err;
  // A non-blocking comm takes no new call until init (or the previous call) has settled.
  if (!WaitSettled("NCCL communicator", &err)) return;
  if (!err.ok()) {
    FailAll(err);
    Complete(op.id, err);
    return;
  }
  nccl::Result r;
  {
    std::lock_guard<std::mutex> lock(callMu_);
    r = nccl.AllReduce(op.buffer, op.buffer, op.count, op.dtype, op.op, comm_, stream_);
  }
  if (r == nccl::kInProgress) {
    // The op is not on the stream yet: it must settle before we record the event behind it.
    if (!WaitSettled("ncclAllReduce", &err)) return;
    if (!err.ok()) {
      FailAll(err);
      Complete(op.id, err);
      return;
    }
  } else if (r != nccl::kSuccess) {
    Complete(op.id, GpuError::Nccl(r, "ncclAllReduce", comm_));
    return;
  }
  cu::Event ev = nullptr;
  if (!spareEvents_.empty()) {
    ev = spareEvents_.back();
    spareEvents_.pop_back();
  } else {
    cu::Result cr = cuda.EventCreate(&ev, cu::kEventDisableTiming);
    if (cr != cu::kSuccess) {
      // The collective is already enqueued; without an event we can only wait for the stream.
      Complete(op.id, GpuError::Cuda(cr, "cuEventCreate"));
      return;
    }
  }
  cu::Result cr = cuda.EventRecord(ev, stream_);
  if (cr != cu::kSuccess) {
    DropEvent(ev, false);
    Complete(op.id, GpuError::Cuda(cr, "cuEventRecord"));
    return;
  }
  inflight_.push_back({op.id, ev});
}

bool CommWorker::ReapFinished() {
  const cu::Api& cuda = CudaLib::Get().api();
  bool progressed = false;
  // Ops finish in stream order, so only the head can be the next to finish.
  while (!inflight_.empty()) {
    Inflight head = inflight_.front();
    cu::Result r = cuda.EventQuery(head.event);
    if (r == cu::kErrorNotReady) break;
    inflight_.pop_front();
    DropEvent(head.event, r == cu::kSuccess);
    Complete(head.id, r == cu::kSuccess ? GpuError() : GpuError::Cuda(r, "allReduce on the GPU (cuEventQuery)"));
    progressed = true;
  }
  return progressed;
}

void CommWorker::CheckAsyncError() {
  if (failed_) return;
  nccl::Result state = nccl::kSuccess;
  nccl::Result r = QueryAsync(&state);
  if (r != nccl::kSuccess) {
    FailAll(GpuError::Nccl(r, "ncclCommGetAsyncError", comm_));
  } else if (state != nccl::kSuccess && state != nccl::kInProgress) {
    FailAll(GpuError::Nccl(state, "NCCL communicator (asynchronous error)", comm_));
  }
}

bool CommWorker::WaitSettled(const char* call, GpuError* err) {
  for (unsigned attempt = 0;; ++attempt) {
    nccl::Result state = nccl::kSuccess;
    nccl::Result r = QueryAsync(&state);
    if (r != nccl::kSuccess) {
      *err = GpuError::Nccl(r, "ncclCommGetAsyncError", comm_);
      return true;
    }
    if (state != nccl::kInProgress) {
      if (state != nccl::kSuccess) *err = GpuError::Nccl(state, call, comm_);
      return true;
    }
    if (stopping_.load()) return false;
    PollPause(attempt);
  }
}

void CommWorker::Complete(uint64_t id, const GpuError& err) {
  notify_(new CommCompletion{id, err});
}

void CommWorker::FailAll(const GpuError& err) {
  if (!failed_) {
    failed_ = true;
    failure_ = err;
  }
  ReapFinished();  // ops the GPU already finished still succeed
  // The rest may never complete (kernels can spin on a dead peer): fail them, and drop their
  // events rather than reuse them.
  while (!inflight_.empty()) {
    Inflight f = inflight_.front();
    inflight_.pop_front();
    DropEvent(f.event, false);
    Complete(f.id, failure_);
  }
  std::deque<CommOp> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued.swap(queue_);
  }
  for (const CommOp& op : queued) Complete(op.id, failure_);
}

void CommWorker::DropEvent(cu::Event ev, bool reusable) {
  if (reusable) {
    spareEvents_.push_back(ev);
  } else {
    CudaLib::Get().api().EventDestroy(ev);
  }
}

}  // namespace nccld
