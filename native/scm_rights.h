// SCM_RIGHTS plumbing shared by UnixConnection and sendFds/recvFds: attaching file descriptors
// to a sendmsg (and sending it) and collecting those a recvmsg brought.
#pragma once

#include <napi.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <vector>

namespace nccld {

// Most fds one message may carry. Senders refuse more, because receivers only make room
// for this many: the kernel would drop the rest (MSG_CTRUNC) on the receiving side.
constexpr size_t kMaxPassedFds = 16;

// Control-message room for kMaxPassedFds descriptors, aligned as cmsghdr needs.
union RightsControl {
  char buf[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
  struct cmsghdr align;
};

// Points msg's control data at `ctl`, holding fds[0..n) as one SCM_RIGHTS message; no
// control data when n == 0. n <= kMaxPassedFds.
void AttachRights(struct msghdr* msg, RightsControl* ctl, const int* fds, size_t n);

// One sendmsg of iov[0..niov) with fds[0..nfds) attached to its first byte (nfds <=
// kMaxPassedFds), never blocking and never raising SIGPIPE, retried on EINTR: the bytes sent,
// or -1 with errno set (EAGAIN/EWOULDBLOCK when the socket's buffer is full). What the write
// paths of UnixConnection and sendFds share.
ssize_t SendWithRights(int sock, const struct iovec* iov, size_t niov, const int* fds, size_t nfds);

// Points msg's control data at `ctl`, with room for kMaxPassedFds descriptors.
void ExpectRights(struct msghdr* msg, RightsControl* ctl);

// After a successful recvmsg: appends every fd it brought to `out`, in order.
void TakeRights(const struct msghdr& msg, std::vector<int>* out);

// F_DUPFD_CLOEXEC of each fd into `out`; 0, or errno with nothing left open.
int DupAll(const std::vector<int>& fds, std::vector<int>* out);

// Closes every fd in `fds` and empties it.
void CloseAll(std::vector<int>* fds);

// [fd, ...] as a JS array of numbers.
Napi::Array FdsToJs(Napi::Env env, const std::vector<int>& fds);

}  // namespace nccld
