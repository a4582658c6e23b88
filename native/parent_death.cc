// setParentDeathSignal(expectedParentPid): asks the kernel to SIGKILL this process when its
// parent dies, so a forked device process never outlives the daemon, even one killed by
// SIGKILL or with its own event loop stuck (a 'disconnect' handler would need a live loop).
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>

#include "args.h"
#include "errors.h"
#include "parent_death.h"

namespace nccld {

namespace {

Napi::Value SetParentDeathSignal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t expected;
  if (!ToInteger(info[0], 1, INT32_MAX, &expected)) {
    ThrowCoded(env, kErrInvalidArg,
               "setParentDeathSignal(expectedParentPid: number): expectedParentPid must be a positive integer",
               true);
    return Napi::Value();
  }
  // The signal fires when the thread that forked us exits; Node forks from its main thread,
  // which lives exactly as long as the daemon process.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    ThrowErrno(env, errno, "prctl(PR_SET_PDEATHSIG, SIGKILL)", "prctl");
    return Napi::Value();
  }
  // A parent that died before the prctl never signals us: we were reparented already, so
  // getppid() no longer matches. The caller exits then.
  return Napi::Boolean::New(env, getppid() == static_cast<pid_t>(expected));
}

}  // namespace

void InitParentDeath(Napi::Env env, Napi::Object exports) {
  exports.Set("setParentDeathSignal", Napi::Function::New(env, &SetParentDeathSignal, "setParentDeathSignal"));
}

}  // namespace nccld
