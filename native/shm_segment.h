// ShmSegment: a shared-memory object mapped read/write into this process: a POSIX one by name
// (create/open), or a sealed memfd handed over as an fd (fromFd).
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>

#include "shm_mapping.h"

namespace nccld {

class ShmSegment : public Napi::ObjectWrap<ShmSegment> {
 public:
  // Exports ShmSegment (with static create/open/fromFd) and shmUnlink.
  static void Init(Napi::Env env, Napi::Object exports);

  // The segment behind `v`, or nullptr when `v` is not a ShmSegment. Checked by type tag,
  // so neither a look-alike object nor another addon class can be mistaken for one.
  static ShmSegment* FromValue(const Napi::Value& v);

  explicit ShmSegment(const Napi::CallbackInfo& info);
  ~ShmSegment() override;

  const std::string& name() const { return name_; }
  bool closed() const { return closed_; }
  // Null once closed.
  const std::shared_ptr<ShmMapping>& mapping() const { return mapping_; }
  // The object's size right now (fstat), or the mapped size for a segment made by fromFd,
  // whose memfd is sealed against shrinking; 0 on success, else errno.
  int CurrentSize(uint64_t* out) const;

 private:
  static Napi::Value Create(const Napi::CallbackInfo& info);
  static Napi::Value Open(const Napi::CallbackInfo& info);
  static Napi::Value FromFd(const Napi::CallbackInfo& info);
  static Napi::Value Unlink(const Napi::CallbackInfo& info);
  // Wraps a freshly mapped object into a JS ShmSegment; on failure cleans up and returns empty.
  static Napi::Value Wrap(const Napi::CallbackInfo& info, const std::string& name, int fd,
                          std::shared_ptr<ShmMapping> mapping);

  // Guards methods against being called with a `this` that is not a ShmSegment.
  static bool IsSelf(const Napi::CallbackInfo& info);

  Napi::Value GetName(const Napi::CallbackInfo& info);
  Napi::Value GetSize(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value Buffer(const Napi::CallbackInfo& info);
  Napi::Value CurrentSizeJs(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  // What the ArrayBuffer's finalizer hint owns: a mapping ref that close() can drop early.
  struct BufferHold {
    std::shared_ptr<ShmMapping> mapping;
  };

  std::string name_;
  size_t size_ = 0;
  int fd_ = -1;  // kept for currentSize(); -1 once closed, and always for fromFd segments
  bool closed_ = false;
  std::shared_ptr<ShmMapping> mapping_;
  // Strong ref: keeps buffer() returning the same object, and keeps the buffer (hence
  // buffer_hold_) alive for as long as this segment is.
  Napi::Reference<Napi::ArrayBuffer> buffer_ref_;
  BufferHold* buffer_hold_ = nullptr;  // owned by the ArrayBuffer's finalizer
};

}  // namespace nccld
