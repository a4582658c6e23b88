// UnixConnection: a connected Unix stream socket read and written from the event loop by
// native code, because Node's net sockets cannot carry file descriptors (SCM_RIGHTS).
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <memory>
#include <vector>

#include "uv_poll_api.h"

namespace nccld {

class UnixConnection : public Napi::ObjectWrap<UnixConnection> {
 public:
  // Exports UnixConnection (with static adopt).
  static void Init(Napi::Env env, Napi::Object exports);

  explicit UnixConnection(const Napi::CallbackInfo& info);
  ~UnixConnection() override;

 private:
  // One write, or what is left of it, not yet taken by the kernel.
  struct Chunk {
    std::unique_ptr<uint8_t[]> data;
    size_t size = 0;
    size_t sent = 0;
    std::vector<int> fds;  // our dups; they go with the first byte, then are closed
  };

  static Napi::Value Adopt(const Napi::CallbackInfo& info);
  // Guards methods against being called with a `this` that is not a UnixConnection.
  static bool IsSelf(const Napi::CallbackInfo& info);
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnPollClosed(uv_handle_t* handle);

  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value GetWritableLength(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Pause(const Napi::CallbackInfo& info);
  Napi::Value Resume(const Napi::CallbackInfo& info);
  Napi::Value End(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  bool open() const { return fd_ >= 0; }
  // recvmsg until EAGAIN, the end, a pause or close from JS, or `budget` bytes; each chunk
  // goes to onData.
  void ReadSome(size_t budget);
  // Hands one received chunk (in read_buf_) and its fds to onData.
  void Deliver(size_t n, std::vector<int>* fds, bool fds_truncated);
  // The socket is writable: flush, then onDrain (or the close end() asked for).
  void OnWritable();
  // sendmsg from the queue until it is empty or the kernel's buffer is full. Calls no JS.
  // False when a send failed and the connection was torn down.
  bool Flush();
  // Starts, changes or stops the poll to wait for what we need: readable unless paused,
  // writable while the queue holds bytes.
  void UpdatePoll();
  // Closes the fd, drops the queue and closes the poll handle. onClose(err) follows from the
  // handle's close callback, on a later loop turn, never from inside a call from JS.
  // `err` is an errno name (a string literal) or nullptr.
  void Teardown(const char* err);
  void FireClose();
  // MakeCallback (microtasks run after it); an exception the callback throws goes to
  // process 'uncaughtException', as it would from a net.Socket's handlers.
  void Call(const Napi::FunctionReference& fn, std::initializer_list<napi_value> args);

  int fd_ = -1;               // -1 once torn down
  uv_poll_t* poll_ = nullptr;  // malloc'd; freed by its close callback
  int poll_events_ = 0;        // what poll_ waits for now; 0: stopped
  bool paused_ = false;
  bool ending_ = false;        // end() called: close once the queue is empty
  const char* close_err_ = nullptr;
  std::deque<Chunk> queue_;
  size_t writable_length_ = 0;
  char* read_buf_ = nullptr;   // per env, shared by its connections: each chunk is copied out
  Napi::ObjectReference handlers_;
  Napi::FunctionReference on_data_;
  Napi::FunctionReference on_drain_;
  Napi::FunctionReference on_close_;
  std::unique_ptr<Napi::AsyncContext> async_context_;
};

}  // namespace nccld
