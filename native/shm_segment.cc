#include "shm_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "args.h"
#include "errors.h"

namespace nccld {

namespace {

// Marks JS objects that really are ShmSegments (napi_type_tag, N-API 8).
const napi_type_tag kShmSegmentTag = {0x6e63636c642d7368ULL, 0x6d5365676d656e74ULL};

// Per-env constructor, handed to the static methods as their data pointer. Not instance
// data: that slot is one per addon, and native/gpu/ may want it.
struct ShmSegmentClass {
  Napi::FunctionReference ctor;
};

// What create()/open()/fromFd() pass to the constructor, wrapped in an External so that JS
// (which cannot make Externals) cannot construct a segment itself.
struct PendingSegment {
  std::string name;
  int fd;  // -1 for fromFd: the segment keeps no fd
  std::shared_ptr<ShmMapping> mapping;
};

}  // namespace

void ShmSegment::Init(Napi::Env env, Napi::Object exports) {
  auto* cls = new ShmSegmentClass();
  Napi::Function func = DefineClass(
      env, "ShmSegment",
      {
          StaticMethod("create", &ShmSegment::Create, napi_default, cls),
          StaticMethod("open", &ShmSegment::Open, napi_default, cls),
          StaticMethod("fromFd", &ShmSegment::FromFd, napi_default, cls),
          InstanceAccessor<&ShmSegment::GetName>("name"),
          InstanceAccessor<&ShmSegment::GetSize>("size"),
          InstanceAccessor<&ShmSegment::GetClosed>("closed"),
          InstanceMethod<&ShmSegment::Buffer>("buffer"),
          InstanceMethod<&ShmSegment::CurrentSizeJs>("currentSize"),
          InstanceMethod<&ShmSegment::Close>("close"),
      });
  if (func.IsEmpty()) {
    delete cls;
    return;
  }
  cls->ctor = Napi::Persistent(func);
  env.AddCleanupHook([cls]() { delete cls; });
  exports.Set("ShmSegment", func);
  exports.Set("shmUnlink", Napi::Function::New(env, &ShmSegment::Unlink, "shmUnlink"));
}

ShmSegment* ShmSegment::FromValue(const Napi::Value& v) {
  if (!v.IsObject()) return nullptr;
  Napi::Object obj = v.As<Napi::Object>();
  if (!obj.CheckTypeTag(&kShmSegmentTag)) return nullptr;
  return Unwrap(obj);
}

bool ShmSegment::IsSelf(const Napi::CallbackInfo& info) {
  Napi::Value self = info.This();
  if (self.IsObject() && self.As<Napi::Object>().CheckTypeTag(&kShmSegmentTag)) return true;
  if (!info.Env().IsExceptionPending()) ThrowCoded(info.Env(), kErrInvalidArg, "Illegal invocation", true);
  return false;
}

ShmSegment::ShmSegment(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ShmSegment>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    ThrowCoded(info.Env(), kErrInvalidArg, "use ShmSegment.create(), .open() or .fromFd()", true);
    return;
  }
  auto* pending = info[0].As<Napi::External<PendingSegment>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kShmSegmentTag);
  if (info.Env().IsExceptionPending()) return;  // the caller still owns fd and mapping
  name_ = pending->name;
  size_ = pending->mapping->size();
  fd_ = pending->fd;
  pending->fd = -1;
  mapping_ = std::move(pending->mapping);
}

ShmSegment::~ShmSegment() {
  // Collected without close(): the ArrayBuffer, if JS still holds it, keeps its own mapping
  // ref through buffer_hold_, so dropping ours cannot unmap memory under it.
  if (fd_ >= 0) close(fd_);
}

Napi::Value ShmSegment::Wrap(const Napi::CallbackInfo& info, const std::string& name, int fd,
                             std::shared_ptr<ShmMapping> mapping) {
  Napi::Env env = info.Env();
  auto* cls = static_cast<ShmSegmentClass*>(info.Data());
  PendingSegment pending{name, fd, std::move(mapping)};
  Napi::Object obj = cls->ctor.New({Napi::External<PendingSegment>::New(env, &pending)});
  if (pending.fd >= 0) close(pending.fd);  // constructor failed before taking ownership
  if (obj.IsEmpty()) return Napi::Value();
  return obj;
}

Napi::Value ShmSegment::Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  uint64_t bytes;
  int64_t mode;
  if (!ToCString(info[0], &name) || !ToIndex(info[1], &bytes) || !ToInteger(info[2], 0, 07777, &mode)) {
    ThrowCoded(env, kErrInvalidArg, "ShmSegment.create(name: string, bytes: number, mode: number)", true);
    return Napi::Value();
  }
  if (bytes == 0) {
    ThrowCoded(env, "EINVAL", "ShmSegment.create(" + Quoted(name) + "): size must be > 0");
    return Napi::Value();
  }
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, static_cast<mode_t>(mode));
  if (fd < 0) {
    ThrowErrno(env, errno, "shm_open(" + Quoted(name) + ")", "shm_open");
    return Napi::Value();
  }
  // Anything failing from here on must not leave the new object behind.
  auto fail = [&](const char* call) -> Napi::Value {
    int err = errno;
    close(fd);
    shm_unlink(name.c_str());
    ThrowErrno(env, err, std::string(call) + "(" + Quoted(name) + ")", call);
    return Napi::Value();
  };
  // shm_open's mode went through the umask; set exactly what was asked for.
  if (fchmod(fd, static_cast<mode_t>(mode)) != 0) return fail("fchmod");
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) return fail("ftruncate");
  // Reserve the pages now: a sparse tmpfs file that later runs out of space would SIGBUS
  // the daemon on first touch; here it is just an ENOSPC error.
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes))) {
    errno = err;
    return fail("posix_fallocate");
  }
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) return fail("mmap");
  Napi::Value seg = Wrap(info, name, fd, std::make_shared<ShmMapping>(addr, bytes));
  if (seg.IsEmpty()) shm_unlink(name.c_str());  // Wrap already closed fd and unmapped
  return seg;
}

Napi::Value ShmSegment::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  if (!ToCString(info[0], &name)) {
    ThrowCoded(env, kErrInvalidArg, "ShmSegment.open(name: string)", true);
    return Napi::Value();
  }
  int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "shm_open(" + Quoted(name) + ")", "shm_open");
    return Napi::Value();
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "fstat(" + Quoted(name) + ")", "fstat");
    return Napi::Value();
  }
  if (st.st_size <= 0) {
    close(fd);
    ThrowCoded(env, kErrBufferTooSmall, "ShmSegment.open(" + Quoted(name) + "): segment is empty");
    return Napi::Value();
  }
  size_t bytes = static_cast<size_t>(st.st_size);
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "mmap(" + Quoted(name) + ")", "mmap");
    return Napi::Value();
  }
  return Wrap(info, name, fd, std::make_shared<ShmMapping>(addr, bytes));
}

// ShmSegment.fromFd(fd, label): maps a whole sealed memfd. The fd stays the caller's, and the
// segment keeps none: a mapping outlives its fd, so the daemon can hold thousands of buffers
// without thousands of open fds.
Napi::Value ShmSegment::FromFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  std::string label;
  if (!ToFd(info[0], &fd) || !ToCString(info[1], &label)) {
    ThrowCoded(env, kErrInvalidArg, "ShmSegment.fromFd(fd: number, label: string)", true);
    return Napi::Value();
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ThrowErrno(env, errno, "fstat(" + Quoted(label) + ")", "fstat");
    return Napi::Value();
  }
  if (st.st_size <= 0) {
    ThrowCoded(env, kErrBadBuffer, "ShmSegment.fromFd(" + Quoted(label) + "): the file is empty");
    return Napi::Value();
  }
  // Without this seal the sender could truncate the file and SIGBUS the daemon mid-reduction;
  // with it the size is fixed, which is what lets the segment drop the fd.
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    ThrowCoded(env, kErrBadBuffer, "ShmSegment.fromFd(" + Quoted(label) + "): not a memfd sealed against shrinking");
    return Napi::Value();
  }
  size_t bytes = static_cast<size_t>(st.st_size);
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) {
    ThrowErrno(env, errno, "mmap(" + Quoted(label) + ")", "mmap");
    return Napi::Value();
  }
  return Wrap(info, label, -1, std::make_shared<ShmMapping>(addr, bytes));
}

Napi::Value ShmSegment::Unlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  if (!ToCString(info[0], &name)) {
    ThrowCoded(env, kErrInvalidArg, "shmUnlink(name: string)", true);
    return Napi::Value();
  }
  if (shm_unlink(name.c_str()) != 0) ThrowErrno(env, errno, "shm_unlink(" + Quoted(name) + ")", "shm_unlink");
  return Napi::Value();
}

int ShmSegment::CurrentSize(uint64_t* out) const {
  if (closed_) return EBADF;
  if (fd_ < 0) {
    // fromFd: FromFd insisted on F_SEAL_SHRINK, so the file can never shrink under the mapping.
    *out = size_;
    return 0;
  }
  struct stat st;
  if (fstat(fd_, &st) != 0) return errno;
  *out = st.st_size > 0 ? static_cast<uint64_t>(st.st_size) : 0;
  return 0;
}

Napi::Value ShmSegment::GetName(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  return Napi::String::New(info.Env(), name_);
}

Napi::Value ShmSegment::GetSize(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  return Napi::Number::New(info.Env(), static_cast<double>(size_));
}

Napi::Value ShmSegment::GetClosed(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  return Napi::Boolean::New(info.Env(), closed());
}

Napi::Value ShmSegment::Buffer(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  if (closed()) {
    ThrowCoded(env, kErrBufferClosed, "shm segment " + Quoted(name_) + " is closed");
    return Napi::Value();
  }
  if (!buffer_ref_.IsEmpty()) return buffer_ref_.Value();
  auto* hold = new BufferHold{mapping_};
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(
      env, mapping_->data(), mapping_->size(), [](Napi::Env, void*, BufferHold* h) { delete h; }, hold);
  if (ab.IsEmpty()) {
    delete hold;
    return Napi::Value();
  }
  buffer_ref_ = Napi::Persistent(ab);
  buffer_hold_ = hold;
  return ab;
}

Napi::Value ShmSegment::CurrentSizeJs(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  Napi::Env env = info.Env();
  if (closed()) {
    ThrowCoded(env, kErrBufferClosed, "shm segment " + Quoted(name_) + " is closed");
    return Napi::Value();
  }
  uint64_t size;
  if (int err = CurrentSize(&size)) {
    ThrowErrno(env, err, "fstat(" + Quoted(name_) + ")", "fstat");
    return Napi::Value();
  }
  return Napi::Number::New(env, static_cast<double>(size));
}

Napi::Value ShmSegment::Close(const Napi::CallbackInfo& info) {
  if (!IsSelf(info)) return Napi::Value();
  if (closed()) return Napi::Value();
  if (!buffer_ref_.IsEmpty()) {
    napi_env env = info.Env();
    napi_value ab = buffer_ref_.Value();
    bool detached = true;
    if (napi_is_detached_arraybuffer(env, ab, &detached) == napi_ok && !detached &&
        napi_detach_arraybuffer(env, ab) == napi_ok) {
      // JS can no longer reach the memory through this buffer: let go of its ref now
      // rather than whenever the finalizer runs.
      buffer_hold_->mapping.reset();
    }
    // Otherwise someone else detached it first (e.g. transferred it elsewhere), or it
    // cannot be detached; then the hold keeps the memory mapped until the buffer is freed.
    buffer_ref_.Reset();
    buffer_hold_ = nullptr;
  }
  mapping_.reset();  // unmaps here unless a reduction still holds the mapping
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  closed_ = true;
  return Napi::Value();
}

}  // namespace nccld
