// sdNotify(state): systemd's sd_notify() protocol without linking libsystemd (the binary
// travels to hosts that may lack it): one datagram with `state` ("READY=1\nSTATUS=...") to
// the AF_UNIX socket named in NOTIFY_SOCKET. Returns false when NOTIFY_SOCKET is unset or
// empty (not run by systemd), true once sent.
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "errors.h"
#include "sd_notify.h"

namespace nccld {

namespace {

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) {
    ThrowCoded(env, kErrInvalidArg, "sdNotify(state: string): state must be a string", true);
    return Napi::Value();
  }
  std::string state = info[0].As<Napi::String>().Utf8Value();
  // Read at call time: the daemon may unset it so that its own children do not notify.
  const char* name = std::getenv("NOTIFY_SOCKET");
  if (name == nullptr || *name == '\0') return Napi::Boolean::New(env, false);
  const std::string what = "sdNotify(NOTIFY_SOCKET=" + Quoted(name) + ")";

  sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  size_t len = std::strlen(name);
  // A leading '@' names an abstract address: a NUL byte, then exactly the rest (its length
  // is part of the name, so no trailing NUL and no sizeof). A path keeps room for its NUL.
  bool abstract = name[0] == '@';
  if (abstract ? len > sizeof addr.sun_path : len >= sizeof addr.sun_path) {
    ThrowErrno(env, EINVAL, what + " is longer than sun_path allows", "sendto");
    return Napi::Value();
  }
  std::memcpy(addr.sun_path, name, len);
  if (abstract) addr.sun_path[0] = '\0';
  socklen_t addrlen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len + (abstract ? 0 : 1));

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowErrno(env, errno, what, "socket");
    return Napi::Value();
  }
  // MSG_DONTWAIT: if the manager's queue is full we fail with EAGAIN rather than block the
  // event loop.
  ssize_t sent;
  do {
    sent = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                  reinterpret_cast<const sockaddr*>(&addr), addrlen);
  } while (sent < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (sent < 0) {
    ThrowErrno(env, err, what, "sendto");
    return Napi::Value();
  }
  return Napi::Boolean::New(env, true);
}

}  // namespace

void InitSdNotify(Napi::Env env, Napi::Object exports) {
  exports.Set("sdNotify", Napi::Function::New(env, &SdNotify, "sdNotify"));
}

}  // namespace nccld
