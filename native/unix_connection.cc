#include "unix_connection.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <string>

#include "args.h"
#include "errors.h"
#include "scm_rights.h"

namespace nccld {

namespace {

// Marks JS objects that really are UnixConnections (napi_type_tag, N-API 8).
const napi_type_tag kUnixConnectionTag = {0x6e63636c642d756eULL, 0x6978436f6e6e6563ULL};

// One recvmsg reads at most this much...
constexpr size_t kReadBufferSize = 64 * 1024;
// ...and one readable event at most this much, so that a busy peer cannot starve the other
// connections. The poll is level-triggered: what is left brings us straight back.
constexpr size_t kReadBudget = 256 * 1024;
// Queued chunks gathered into one sendmsg.
constexpr size_t kMaxIov = 64;

// Per env: the constructor, handed to adopt() as its data pointer, and the read buffer that
// all of the env's connections share (reads happen on its JS thread only).
struct UnixConnectionClass {
  Napi::FunctionReference ctor;
  std::unique_ptr<char[]> read_buf{new char[kReadBufferSize]};
};

// What adopt() passes to the constructor, wrapped in an External so that JS (which cannot
// make Externals) cannot construct a connection itself.
struct PendingConnection {
  UnixConnectionClass* cls;
  int fd;
  Napi::Object handlers;
  Napi::Function on_data;
  Napi::Function on_drain;
  Napi::Function on_close;
};

Napi::Value BadArg(Napi::Env env, const std::string& message) {
  if (!env.IsExceptionPending()) ThrowCoded(env, kErrInvalidArg, message, true);
  return Napi::Value();
}

}  // namespace

void UnixConnection::Init(Napi::Env env, Napi::Object exports) {
  auto* cls = new UnixConnectionClass();
  Napi::Function func = DefineClass(
      env, "UnixConnection",
      {
          StaticMethod("adopt", &UnixConnection::Adopt, napi_default, cls),
          InstanceAccessor<&UnixConnection::GetFd>("fd"),
          InstanceAccessor<&UnixConnection::GetWritableLength>("writableLength"),
          InstanceMethod<&UnixConnection::Write>("write"),
          InstanceMethod<&UnixConnection::Pause>("pause"),
          InstanceMethod<&UnixConnection::Resume>("resume"),
          InstanceMethod<&UnixConnection::End>("end"),
          InstanceMethod<&UnixConnection::Close>("close"),
      });
  if (func.IsEmpty()) {
    delete cls;
    return;
  }
  cls->ctor = Napi::Persistent(func);
  env.AddCleanupHook([cls]() { delete cls; });
  exports.Set("UnixConnection", func);
}

bool UnixConnection::IsSelf(const Napi::CallbackInfo& info) {
  Napi::Value self = info.This();
  if (self.IsObject() && self.As<Napi::Object>().CheckTypeTag(&kUnixConnectionTag)) return true;
  if (!info.Env().IsExceptionPending()) ThrowCoded(info.Env(), kErrInvalidArg, "Illegal invocation", true);
  return false;
}

// UnixConnection.adopt(fd, { onData, onDrain, onClose }). On success the fd is the
// connection's; if adopt throws, it is still the caller's.
Napi::Value UnixConnection::Adopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "UnixConnection.adopt(fd: number, handlers: { onData, onDrain, onClose })";
  int fd;
  if (!ToFd(info[0], &fd) || !info[1].IsObject()) return BadArg(env, usage);
  Napi::Object handlers = info[1].As<Napi::Object>();
  // Read once: replacing a handler on the object later has no effect.
  Napi::Value on_data = handlers.Get("onData");
  Napi::Value on_drain = on_data.IsEmpty() ? Napi::Value() : handlers.Get("onDrain");
  Napi::Value on_close = on_drain.IsEmpty() ? Napi::Value() : handlers.Get("onClose");
  if (on_close.IsEmpty() || !on_data.IsFunction() || !on_drain.IsFunction() || !on_close.IsFunction()) {
    return BadArg(env, std::string(usage) + ": every handler must be a function");
  }
  // Stream semantics (and fds riding on bytes) are what the rest of this class assumes.
  int domain = 0, type = 0;
  socklen_t domain_len = sizeof domain, type_len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &domain_len) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0) {
    ThrowErrno(env, errno, "UnixConnection.adopt(" + std::to_string(fd) + ")", "getsockopt");
    return Napi::Value();
  }
  if (domain != AF_UNIX || type != SOCK_STREAM) {
    return BadArg(env, "UnixConnection.adopt(" + std::to_string(fd) + "): not a Unix stream socket");
  }
  auto* cls = static_cast<UnixConnectionClass*>(info.Data());
  PendingConnection pending{cls,
                            fd,
                            handlers,
                            on_data.As<Napi::Function>(),
                            on_drain.As<Napi::Function>(),
                            on_close.As<Napi::Function>()};
  Napi::Object obj = cls->ctor.New({Napi::External<PendingConnection>::New(env, &pending)});
  if (obj.IsEmpty()) return Napi::Value();
  return obj;
}

UnixConnection::UnixConnection(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UnixConnection>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    ThrowCoded(env, kErrInvalidArg, "use UnixConnection.adopt()", true);
    return;
  }
  auto* pending = info[0].As<Napi::External<PendingConnection>>().Data();
  Napi::Object self = info.This().As<Napi::Object>();
  self.TypeTag(&kUnixConnectionTag);
  if (env.IsExceptionPending()) return;
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ThrowCoded(env, kErrInternal, "UnixConnection: no event loop");
    return;
  }
  auto* poll = static_cast<uv_poll_t*>(malloc(uv_handle_size(uv::kPollHandle)));
  if (poll == nullptr) {
    ThrowErrno(env, ENOMEM, "UnixConnection.adopt", "malloc");
    return;
  }
  // Also sets O_NONBLOCK. Fails with EEXIST if this loop already watches the fd (adopted
  // twice, or still owned by a net.Socket).
  if (int r = uv_poll_init(loop, poll, pending->fd)) {
    free(poll);  // not initialised: no uv_close needed
    ThrowErrno(env, -r, "uv_poll_init(" + std::to_string(pending->fd) + ")", "uv_poll_init");
    return;
  }
  uv_handle_set_data(uv::AsHandle(poll), this);
  poll_ = poll;
  fd_ = pending->fd;
  read_buf_ = pending->cls->read_buf.get();
  handlers_ = Napi::Persistent(pending->handlers);
  on_data_ = Napi::Persistent(pending->on_data);
  on_drain_ = Napi::Persistent(pending->on_drain);
  on_close_ = Napi::Persistent(pending->on_close);
  async_context_ = std::make_unique<Napi::AsyncContext>(env, "nccld.UnixConnection", self);
  // Kept alive while open, so the handlers can fire; FireClose lets go.
  Ref();
  UpdatePoll();
}

UnixConnection::~UnixConnection() {
  // Open connections are strongly referenced, so only environment teardown gets here with
  // the handle still around: detach it so its callbacks cannot reach freed memory.
  if (poll_ != nullptr) {
    uv_handle_t* h = uv::AsHandle(poll_);
    uv_handle_set_data(h, nullptr);
    if (!uv_is_closing(h)) uv_close(h, OnPollClosed);
  }
  if (fd_ >= 0) close(fd_);
  for (Chunk& c : queue_) CloseAll(&c.fds);
}

void UnixConnection::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<UnixConnection*>(uv_handle_get_data(uv::AsHandle(handle)));
  if (self == nullptr || !self->open()) return;
  Napi::HandleScope scope(self->Env());
  if (status < 0) {
    // libuv reports POLLERR (a socket error, e.g. the peer closed with our bytes unread) as
    // EBADF and stops the handle. Bytes the peer sent before that are still ours: read them
    // unless paused (recvmsg then returns the real error), else take the error directly.
    self->poll_events_ = 0;
    if (!self->paused_) self->ReadSome(SIZE_MAX);
    if (!self->open()) return;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(self->fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0) err = -status;
    self->Teardown(ErrnoName(err));
    return;
  }
  // A hang-up shows as readable (recvmsg then returns 0 after the last bytes), or, while
  // paused, as writable with a write pending (sendmsg then fails with EPIPE).
  if (events & (uv::kReadable | uv::kDisconnect)) self->ReadSome(kReadBudget);
  if (self->open() && (events & uv::kWritable)) self->OnWritable();
}

void UnixConnection::ReadSome(size_t budget) {
  size_t total = 0;
  while (open() && !paused_ && total < budget) {
    struct iovec iov = {read_buf_, kReadBufferSize};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    RightsControl ctl;
    ExpectRights(&msg, &ctl);
    ssize_t n = recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) Teardown(ErrnoName(errno));
      return;
    }
    std::vector<int> fds;
    TakeRights(msg, &fds);
    if (n == 0) {
      // End of stream. (Fds only ever come with bytes; close any all the same.)
      CloseAll(&fds);
      Teardown(nullptr);
      return;
    }
    total += static_cast<size_t>(n);
    Deliver(static_cast<size_t>(n), &fds, (msg.msg_flags & MSG_CTRUNC) != 0);
    // onData may have paused or closed us: the loop condition looks again.
  }
}

void UnixConnection::Deliver(size_t n, std::vector<int>* fds, bool fds_truncated) {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  // A copy: read_buf_ is reused by the next read, of this connection or another.
  Napi::Buffer<char> chunk = Napi::Buffer<char>::Copy(env, read_buf_, n);
  Napi::Array fd_list = chunk.IsEmpty() ? Napi::Array() : FdsToJs(env, *fds);
  if (chunk.IsEmpty() || fd_list.IsEmpty()) {
    // JS never learnt these fds: they would leak.
    CloseAll(fds);
    if (env.IsExceptionPending()) napi_fatal_exception(env, env.GetAndClearPendingException().Value());
    return;
  }
  fds->clear();  // JS owns them now
  Call(on_data_, {chunk, fd_list, Napi::Boolean::New(env, fds_truncated)});
}

void UnixConnection::OnWritable() {
  bool had_queue = !queue_.empty();
  if (!Flush()) return;
  if (!queue_.empty()) return;  // the kernel's buffer filled up again; keep waiting
  UpdatePoll();
  if (ending_) {
    Teardown(nullptr);
    return;
  }
  if (had_queue) Call(on_drain_, {});
}

bool UnixConnection::Flush() {
  while (!queue_.empty()) {
    struct iovec iov[kMaxIov];
    size_t niov = 0;
    for (auto it = queue_.begin(); it != queue_.end() && niov < kMaxIov; ++it) {
      // Fds ride on the first byte of their own write: a chunk with fds starts a sendmsg.
      if (niov > 0 && !it->fds.empty()) break;
      iov[niov++] = {it->data.get() + it->sent, it->size - it->sent};
    }
    Chunk& front = queue_.front();
    ssize_t n = SendWithRights(fd_, iov, niov, front.fds.data(), front.fds.size());
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      Teardown(ErrnoName(errno));
      return false;
    }
    if (n == 0) return true;  // not expected for a non-empty stream send; wait for writable
    // Sent with the first byte: the kernel holds its own references now.
    CloseAll(&front.fds);
    size_t left = static_cast<size_t>(n);
    writable_length_ -= left;
    while (left > 0) {
      Chunk& c = queue_.front();
      size_t take = std::min(left, c.size - c.sent);
      c.sent += take;
      left -= take;
      if (c.sent == c.size) queue_.pop_front();
    }
  }
  return true;
}

void UnixConnection::UpdatePoll() {
  if (!open()) return;
  int want = (paused_ ? 0 : uv::kReadable) | (queue_.empty() ? 0 : uv::kWritable);
  if (want == poll_events_) return;
  if (want == 0) {
    // Paused with nothing to write: nothing is watched, so a hang-up goes unnoticed until
    // resume() (then the remaining bytes are read and recvmsg returns 0) or until a write
    // (which fails with EPIPE or ECONNRESET and closes with that error).
    uv_poll_stop(poll_);
  } else if (int r = uv_poll_start(poll_, want, &UnixConnection::OnPoll)) {
    Teardown(ErrnoName(-r));
    return;
  }
  poll_events_ = want;
}

void UnixConnection::Teardown(const char* err) {
  if (!open()) return;
  close_err_ = err;
  // uv_close stops the poll (taking the fd out of epoll) before the fd goes away.
  uv_close(uv::AsHandle(poll_), &UnixConnection::OnPollClosed);
  poll_events_ = 0;
  close(fd_);
  fd_ = -1;
  for (Chunk& c : queue_) CloseAll(&c.fds);
  queue_.clear();
  writable_length_ = 0;
}

void UnixConnection::OnPollClosed(uv_handle_t* handle) {
  auto* self = static_cast<UnixConnection*>(uv_handle_get_data(handle));
  free(handle);
  if (self == nullptr) return;  // the connection was destroyed at environment teardown
  self->poll_ = nullptr;
  self->FireClose();
}

void UnixConnection::FireClose() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Call(on_close_, {close_err_ != nullptr ? Napi::String::New(env, close_err_) : env.Null()});
  // Drop everything that could keep JS objects alive (the handlers usually close over this
  // connection), and let the object be collected.
  on_data_.Reset();
  on_drain_.Reset();
  on_close_.Reset();
  handlers_.Reset();
  async_context_.reset();
  Unref();
}

void UnixConnection::Call(const Napi::FunctionReference& fn, std::initializer_list<napi_value> args) {
  Napi::Env env = Env();
  if (fn.IsEmpty() || async_context_ == nullptr) return;
  fn.MakeCallback(handlers_.Value(), args, *async_context_);
  if (env.IsExceptionPending()) napi_fatal_exception(env, env.GetAndClearPendingException().Value());
}

Napi::Value UnixConnection::GetFd(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  return Napi::Number::New(info.Env(), fd_);
}

Napi::Value UnixConnection::GetWritableLength(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  return Napi::Number::New(info.Env(), static_cast<double>(writable_length_));
}

// write(data, fds?): sends now what the kernel takes, queues the rest. Returns writableLength.
// A failed send closes the connection; onClose reports it on a later turn.
Napi::Value UnixConnection::Write(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  const char* usage = "UnixConnection.write(data: Uint8Array, fds?: number[] (at most 16))";
  std::vector<int> fds;
  // The fds first: reading the array may run JS (getters), which could detach the bytes.
  if (!info[1].IsUndefined() && !ToFdList(info[1], kMaxPassedFds, &fds)) return BadArg(env, usage);
  const uint8_t* data;
  size_t len;
  if (!ToBytes(info[0], &data, &len)) return BadArg(env, usage);
  if (!open() || ending_) {
    ThrowCoded(env, kErrClosed, open() ? "UnixConnection: write after end()" : "UnixConnection is closed");
    return Napi::Value();
  }
  // A stream socket carries fds only along with bytes.
  if (len == 0 && !fds.empty()) return BadArg(env, "UnixConnection.write: fds need at least one byte of data");
  // A bad fd would fail the sendmsg and with it the connection: refuse it here instead.
  for (int fd : fds) {
    if (fcntl(fd, F_GETFD) < 0) {
      ThrowErrno(env, errno, "UnixConnection.write: fd " + std::to_string(fd), "fcntl");
      return Napi::Value();
    }
  }
  if (len == 0) return Napi::Number::New(env, static_cast<double>(writable_length_));

  size_t sent = 0;
  if (queue_.empty()) {
    struct iovec iov = {const_cast<uint8_t*>(data), len};
    ssize_t n = SendWithRights(fd_, &iov, 1, fds.data(), fds.size());
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      Teardown(ErrnoName(errno));
      return Napi::Number::New(env, 0);
    }
    if (n > 0) {
      sent = static_cast<size_t>(n);
      fds.clear();  // they went with the first byte
    }
  }
  if (sent == len) return Napi::Number::New(env, static_cast<double>(writable_length_));

  Chunk chunk;
  // Dups, so the caller may close its own copies as soon as write() returns.
  if (int err = DupAll(fds, &chunk.fds)) {
    // Nothing of this write has gone (fds go with the first byte), so failing it is clean.
    ThrowErrno(env, err, "UnixConnection.write: dup of the fds to queue", "fcntl");
    return Napi::Value();
  }
  chunk.size = len - sent;
  chunk.data.reset(new uint8_t[chunk.size]);
  memcpy(chunk.data.get(), data + sent, chunk.size);
  writable_length_ += chunk.size;
  queue_.push_back(std::move(chunk));
  UpdatePoll();
  return Napi::Number::New(env, static_cast<double>(writable_length_));
}

Napi::Value UnixConnection::Pause(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  paused_ = true;
  UpdatePoll();
  return Napi::Value();
}

Napi::Value UnixConnection::Resume(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  // Bytes already waiting in the kernel show up at the next poll (it is level-triggered).
  paused_ = false;
  UpdatePoll();
  return Napi::Value();
}

// end(): close once everything queued has gone; reading goes on until then.
Napi::Value UnixConnection::End(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  if (!open() || ending_) return Napi::Value();
  ending_ = true;
  if (queue_.empty()) Teardown(nullptr);
  return Napi::Value();
}

Napi::Value UnixConnection::Close(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Teardown(nullptr);
  return Napi::Value();
}

}  // namespace nccld
