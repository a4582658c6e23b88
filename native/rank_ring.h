// RankRing: the daemon's end of one rank's shared-memory data plane (host backend). A sealed
// memfd holds a submission ring and a completion ring (layout in ring_layout.h); two eventfds
// are the doorbells. submit() writes records from the event loop thread without a system call
// unless the device's worker sleeps; completions come back through a uv_poll on the completion
// eventfd, one JS callback per wake with everything posted since the last.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>

#include "ring_layout.h"
#include "shm_mapping.h"
#include "uv_poll_api.h"

namespace nccld {

class RankRing : public Napi::ObjectWrap<RankRing> {
 public:
  // Exports RankRing (with static create) and RANK_RING_CODES.
  static void Init(Napi::Env env, Napi::Object exports);

  explicit RankRing(const Napi::CallbackInfo& info);
  ~RankRing() override;

 private:
  static Napi::Value Create(const Napi::CallbackInfo& info);
  // Guards methods against being called with a `this` that is not a RankRing.
  static bool IsSelf(const Napi::CallbackInfo& info);
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnPollClosed(uv_handle_t* handle);

  Napi::Value GetFds(const Napi::CallbackInfo& info);
  Napi::Value GetCapacity(const Napi::CallbackInfo& info);
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  // Takes whatever completions are posted now, without waiting for the doorbell (a worker's
  // process exited: what it finished first still counts).
  Napi::Value Drain(const Napi::CallbackInfo& info);

  bool open() const { return ctl_ != nullptr; }
  // Resets the doorbell, takes every posted completion and hands them to onComplete.
  void OnReadable();
  // Closes the poll (if started), the fds and the mapping. Calls no JS.
  void Teardown();

  std::unique_ptr<ShmMapping> region_;
  ring::Control* ctl_ = nullptr;  // null once closed
  char* sub_ring_ = nullptr;
  const ring::Completion* comp_ring_ = nullptr;
  uint32_t capacity_ = 0;
  uint32_t max_buffers_ = 0;
  uint32_t events_ = 0;  // event handles per record
  uint64_t record_size_ = 0;
  // Our own copies of the indices we produce or consume: never read back from shared memory,
  // so a confused device process cannot make us overwrite live records.
  uint64_t sub_head_ = 0;
  uint64_t sub_tail_seen_ = 0;  // the worker's sub_tail as last read (refreshed when full)
  uint64_t comp_tail_ = 0;
  int memfd_ = -1;
  int submit_efd_ = -1;
  int complete_efd_ = -1;
  uv_poll_t* poll_ = nullptr;  // malloc'd; freed by its close callback
  Napi::FunctionReference on_complete_;
  std::unique_ptr<Napi::AsyncContext> async_context_;
};

}  // namespace nccld
