// peerCredentials(fd): the pid/uid/gid of the process at the other end of a connected
// Unix socket (SO_PEERCRED), which Node's net module does not expose.
#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <string>

#include "args.h"
#include "errors.h"
#include "peer_credentials.h"

namespace nccld {

namespace {

Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!ToInteger(info[0], 0, INT32_MAX, &fd)) {
    ThrowCoded(env, kErrInvalidArg, "peerCredentials(fd: number): fd must be a non-negative integer", true);
    return Napi::Value();
  }
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    ThrowErrno(env, errno, "getsockopt(" + std::to_string(fd) + ", SO_PEERCRED)", "getsockopt");
    return Napi::Value();
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("pid", Napi::Number::New(env, cred.pid));
  result.Set("uid", Napi::Number::New(env, cred.uid));
  result.Set("gid", Napi::Number::New(env, cred.gid));
  return result;
}

}  // namespace

void InitPeerCredentials(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCredentials", Napi::Function::New(env, &PeerCredentials, "peerCredentials"));
}

}  // namespace nccld
