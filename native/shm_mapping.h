// One mmap'd shared-memory region. Owned through std::shared_ptr by its ShmSegment, by the
// segment's external ArrayBuffer while that is attached, and by every in-flight reduction:
// whichever lets go last unmaps, so no one can be left holding a pointer into unmapped memory.
#pragma once

#include <sys/mman.h>

#include <cstddef>

namespace nccld {

class ShmMapping {
 public:
  ShmMapping(void* addr, size_t size) : addr_(addr), size_(size) {}
  ~ShmMapping() { munmap(addr_, size_); }
  ShmMapping(const ShmMapping&) = delete;
  ShmMapping& operator=(const ShmMapping&) = delete;

  char* data() const { return static_cast<char*>(addr_); }
  size_t size() const { return size_; }

 private:
  void* addr_;
  size_t size_;
};

}  // namespace nccld
