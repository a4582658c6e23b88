#include "scm_rights.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace nccld {

void AttachRights(struct msghdr* msg, RightsControl* ctl, const int* fds, size_t n) {
  if (n == 0) {
    msg->msg_control = nullptr;
    msg->msg_controllen = 0;
    return;
  }
  memset(ctl, 0, sizeof *ctl);
  msg->msg_control = ctl->buf;
  msg->msg_controllen = CMSG_SPACE(sizeof(int) * n);
  struct cmsghdr* cmsg = CMSG_FIRSTHDR(msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * n);
  memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * n);
}

ssize_t SendWithRights(int sock, const struct iovec* iov, size_t niov, const int* fds, size_t nfds) {
  struct msghdr msg = {};
  msg.msg_iov = const_cast<struct iovec*>(iov);
  msg.msg_iovlen = niov;
  RightsControl ctl;
  AttachRights(&msg, &ctl, fds, nfds);
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  return n;
}

void ExpectRights(struct msghdr* msg, RightsControl* ctl) {
  msg->msg_control = ctl->buf;
  msg->msg_controllen = sizeof ctl->buf;
}

void TakeRights(const struct msghdr& msg, std::vector<int>* out) {
  if (msg.msg_controllen == 0) return;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(const_cast<struct msghdr*>(&msg), c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    // CMSG_DATA need not be int-aligned for the compiler's taste: copy out.
    const unsigned char* data = CMSG_DATA(c);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      memcpy(&fd, data + i * sizeof(int), sizeof fd);
      out->push_back(fd);
    }
  }
}

int DupAll(const std::vector<int>& fds, std::vector<int>* out) {
  out->clear();
  out->reserve(fds.size());
  for (int fd : fds) {
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) {
      int err = errno;
      CloseAll(out);
      return err;
    }
    out->push_back(dup);
  }
  return 0;
}

void CloseAll(std::vector<int>* fds) {
  // No retry on EINTR: on Linux the fd is gone whatever close() returns.
  for (int fd : *fds) close(fd);
  fds->clear();
}

Napi::Array FdsToJs(Napi::Env env, const std::vector<int>& fds) {
  Napi::Array arr = Napi::Array::New(env, fds.size());
  for (size_t i = 0; i < fds.size(); ++i) arr.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  return arr;
}

}  // namespace nccld
