// File-descriptor helpers for handing buffers between processes as sealed memfds: create and
// inspect them, and move them over Unix sockets outside a UnixConnection (seqpacket pairs,
// tests). Node has none of these: its fds are hidden inside libuv handles.
#include "fd_utils.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "scm_rights.h"

// Linux 5.1; older headers lack it, and its value is part of the kernel ABI.
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

namespace nccld {

namespace {

// recvFds allocates this much at most per call.
constexpr int64_t kMaxRecvBytes = int64_t{64} << 20;

// Throws INVALID_ARG unless a getter of the arguments already threw something.
Napi::Value BadArg(Napi::Env env, const std::string& usage) {
  if (!env.IsExceptionPending()) ThrowCoded(env, kErrInvalidArg, usage, true);
  return Napi::Value();
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  uint64_t bytes;
  if (!ToCString(info[0], &name) || !ToIndex(info[1], &bytes)) {
    return BadArg(env, "memfdCreate(name: string, bytes: number)");
  }
  if (bytes == 0) {
    ThrowCoded(env, "EINVAL", "memfdCreate(" + Quoted(name) + "): size must be > 0");
    return Napi::Value();
  }
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    ThrowErrno(env, errno, "memfd_create(" + Quoted(name) + ")", "memfd_create");
    return Napi::Value();
  }
  auto fail = [&](int err, const char* call) -> Napi::Value {
    close(fd);
    ThrowErrno(env, err, std::string(call) + "(memfd " + Quoted(name) + ")", call);
    return Napi::Value();
  };
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) return fail(errno, "ftruncate");
  // Reserve the pages now: running out of tmpfs space later would SIGBUS whoever touches
  // the page first (possibly the daemon); here it is an ENOSPC error.
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes))) return fail(err, "posix_fallocate");
  // The size is fixed for good, so a receiver that checks these seals can map the memfd
  // without fearing a truncation (SIGBUS) under it. Writes stay allowed: both sides write.
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) return fail(errno, "fcntl(F_ADD_SEALS)");
  return Napi::Number::New(env, fd);
}

Napi::Value FdInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ToFd(info[0], &fd)) return BadArg(env, "fdInfo(fd: number)");
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ThrowErrno(env, errno, "fstat(" + std::to_string(fd) + ")", "fstat");
    return Napi::Value();
  }
  // EINVAL for anything but a memfd created with MFD_ALLOW_SEALING (or a shmem file).
  int seals = fcntl(fd, F_GET_SEALS);
  const char* type = S_ISREG(st.st_mode) ? "file" : S_ISSOCK(st.st_mode) ? "socket" : "other";
  Napi::Object result = Napi::Object::New(env);
  result.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  result.Set("seals", Napi::Number::New(env, seals < 0 ? -1 : seals));
  result.Set("uid", Napi::Number::New(env, st.st_uid));
  result.Set("mode", Napi::Number::New(env, st.st_mode & 07777));
  result.Set("type", Napi::String::New(env, type));
  // What the daemon needs to trust a buffer: its pages reserved (a sparse file could fail to
  // allocate under a collective) and the descriptor open for writing (the result goes into it).
  result.Set("allocatedBytes", Napi::Number::New(env, static_cast<double>(st.st_blocks) * 512.0));
  int flags = fcntl(fd, F_GETFL);
  result.Set("readWrite", Napi::Boolean::New(env, flags >= 0 && (flags & O_ACCMODE) == O_RDWR));
  return result;
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ToFd(info[0], &fd)) return BadArg(env, "closeFd(fd: number)");
  // EINTR still closed the fd on Linux: retrying could close someone else's new fd.
  if (close(fd) != 0 && errno != EINTR) ThrowErrno(env, errno, "close(" + std::to_string(fd) + ")", "close");
  return Napi::Value();
}

Napi::Value DupFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ToFd(info[0], &fd)) return BadArg(env, "dupFd(fd: number)");
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) {
    ThrowErrno(env, errno, "fcntl(" + std::to_string(fd) + ", F_DUPFD_CLOEXEC)", "fcntl");
    return Napi::Value();
  }
  return Napi::Number::New(env, dup);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string kind;
  if (!ToCString(info[0], &kind) || (kind != "stream" && kind != "seqpacket")) {
    return BadArg(env, "socketPair(type: 'stream' | 'seqpacket')");
  }
  int type = kind == "stream" ? SOCK_STREAM : SOCK_SEQPACKET;
  int sv[2];
  if (socketpair(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) {
    ThrowErrno(env, errno, "socketpair(AF_UNIX, " + kind + ")", "socketpair");
    return Napi::Value();
  }
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, sv[0]));
  result.Set(1u, Napi::Number::New(env, sv[1]));
  return result;
}

// sendFds(sock, data, fds): one sendmsg. Meant for seqpacket sockets, where a message goes
// whole or not at all; on a stream socket a partial send throws EAGAIN with `bytesSent` set
// (the fds did go, with the first byte).
Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock;
  const uint8_t* data;
  size_t len;
  std::vector<int> fds;
  // The bytes last: reading the fd array may run JS (getters), which could detach them.
  if (!ToFd(info[0], &sock) || !ToFdList(info[2], kMaxPassedFds, &fds) || !ToBytes(info[1], &data, &len)) {
    return BadArg(env, "sendFds(sock: number, data: Uint8Array, fds: number[] (at most 16))");
  }
  // Fds travel with bytes, and an empty seqpacket message reads as end-of-file on the other side.
  if (len == 0) return BadArg(env, "sendFds: data must hold at least one byte");
  struct iovec iov = {const_cast<uint8_t*>(data), len};
  ssize_t n = SendWithRights(sock, &iov, 1, fds.data(), fds.size());
  if (n < 0) {
    ThrowErrno(env, errno, "sendmsg(" + std::to_string(sock) + ")", "sendmsg");
    return Napi::Value();
  }
  if (static_cast<size_t>(n) < len) {
    Napi::Error e = ErrnoError(env, EAGAIN,
                               "sendmsg(" + std::to_string(sock) + "): only " + std::to_string(n) + " of " +
                                   std::to_string(len) + " bytes sent (sendFds is meant for seqpacket sockets)",
                               "sendmsg");
    e.Set("bytesSent", Napi::Number::New(env, static_cast<double>(n)));
    e.ThrowAsJavaScriptException();
  }
  return Napi::Value();
}

// recvFds(sock, maxBytes): one recvmsg; null when nothing is waiting. Zero bytes and no fds
// means the peer closed (or, on seqpacket, sent an empty message).
Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock;
  int64_t max_bytes;
  if (!ToFd(info[0], &sock) || !ToInteger(info[1], 1, kMaxRecvBytes, &max_bytes)) {
    return BadArg(env, "recvFds(sock: number, maxBytes: 1.." + std::to_string(kMaxRecvBytes) + ")");
  }
  std::unique_ptr<char[]> buf(new char[max_bytes]);
  struct iovec iov = {buf.get(), static_cast<size_t>(max_bytes)};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  RightsControl ctl;
  ExpectRights(&msg, &ctl);
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, errno, "recvmsg(" + std::to_string(sock) + ")", "recvmsg");
    return Napi::Value();
  }
  std::vector<int> fds;
  TakeRights(msg, &fds);
  Napi::Object result = Napi::Object::New(env);
  Napi::Buffer<char> bytes = Napi::Buffer<char>::Copy(env, buf.get(), static_cast<size_t>(n));
  if (bytes.IsEmpty()) {
    CloseAll(&fds);  // nobody would ever learn their numbers
    return Napi::Value();
  }
  result.Set("data", bytes);
  result.Set("fds", FdsToJs(env, fds));
  // Seqpacket: the message was longer than maxBytes and the rest is lost.
  result.Set("truncated", Napi::Boolean::New(env, (msg.msg_flags & MSG_TRUNC) != 0));
  result.Set("fdsTruncated", Napi::Boolean::New(env, (msg.msg_flags & MSG_CTRUNC) != 0));
  return result;
}

Napi::Value RlimitToJs(Napi::Env env, rlim_t v) {
  return Napi::Number::New(env, v == RLIM_INFINITY ? INFINITY : static_cast<double>(v));
}

// raiseFdLimit(): RLIMIT_NOFILE's soft limit up to its hard limit, since every registered
// buffer may hold an fd for a while. (Node already does this at start-up; calling it again
// says what the limits are and covers embedders that did not.)
Napi::Value RaiseFdLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) {
    ThrowErrno(env, errno, "getrlimit(RLIMIT_NOFILE)", "getrlimit");
    return Napi::Value();
  }
  if (lim.rlim_cur != lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
      ThrowErrno(env, errno, "setrlimit(RLIMIT_NOFILE)", "setrlimit");
      return Napi::Value();
    }
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("soft", RlimitToJs(env, lim.rlim_cur));
  result.Set("hard", RlimitToJs(env, lim.rlim_max));
  return result;
}

}  // namespace

void InitFdUtils(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, &MemfdCreate, "memfdCreate"));
  exports.Set("fdInfo", Napi::Function::New(env, &FdInfo, "fdInfo"));
  exports.Set("closeFd", Napi::Function::New(env, &CloseFd, "closeFd"));
  exports.Set("dupFd", Napi::Function::New(env, &DupFd, "dupFd"));
  exports.Set("socketPair", Napi::Function::New(env, &SocketPair, "socketPair"));
  exports.Set("sendFds", Napi::Function::New(env, &SendFds, "sendFds"));
  exports.Set("recvFds", Napi::Function::New(env, &RecvFds, "recvFds"));
  exports.Set("raiseFdLimit", Napi::Function::New(env, &RaiseFdLimit, "raiseFdLimit"));

  Napi::Object seals = Napi::Object::New(env);
  seals.Set("SEAL", Napi::Number::New(env, F_SEAL_SEAL));
  seals.Set("SHRINK", Napi::Number::New(env, F_SEAL_SHRINK));
  seals.Set("GROW", Napi::Number::New(env, F_SEAL_GROW));
  seals.Set("WRITE", Napi::Number::New(env, F_SEAL_WRITE));
  seals.Set("FUTURE_WRITE", Napi::Number::New(env, F_SEAL_FUTURE_WRITE));
  seals.Freeze();
  exports.Set("SEALS", seals);
}

}  // namespace nccld
