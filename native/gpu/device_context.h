#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "cuda_api.h"
#include "gpu_error.h"

namespace nccld {

// What one device process holds on its GPU: the retained primary context, one stream and the
// IPC mappings it opened. Shared by Device and every Comm built on it, so Device.close() can
// never pull the stream or the mapped buffers out from under a communicator still using them:
// the resources go when the last holder lets go. Created and destroyed on the JS thread.
class DeviceContext {
 public:
  struct IpcMapping {
    cu::DevicePtr ptr = 0;   // mapped address in this process
    cu::DevicePtr base = 0;  // start of the allocation containing ptr
    std::size_t size = 0;    // size of that allocation
    int device = -1;         // ordinal the memory physically lives on
  };

  // Retains the primary context, makes it current on the calling thread (NCCL and other
  // runtime-API users pick the device up from there) and creates a non-blocking stream.
  static std::shared_ptr<DeviceContext> Open(int ordinal, GpuError* err);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  int ordinal() const { return ordinal_; }
  cu::Context context() const { return ctx_; }
  cu::Stream stream() const { return stream_; }
  const std::string& name() const { return name_; }
  const std::string& pciBusId() const { return pciBusId_; }
  const std::string& uuid() const { return uuid_; }

  GpuError OpenIpc(const cu::IpcMemHandle& handle, IpcMapping* out);
  GpuError CloseIpc(cu::DevicePtr ptr);
  uint64_t ipcOpens() const { return ipcOpens_; }
  uint64_t ipcCloses() const { return ipcCloses_; }

 private:
  DeviceContext() = default;
  int ordinal_ = -1;
  cu::Device device_ = 0;
  cu::Context ctx_ = nullptr;
  bool retained_ = false;
  cu::Stream stream_ = nullptr;
  std::string name_;
  std::string pciBusId_;
  std::string uuid_;
  // The driver refcounts repeated opens of one handle and returns the same pointer each time.
  std::unordered_map<cu::DevicePtr, unsigned> mapped_;
  uint64_t ipcOpens_ = 0;
  uint64_t ipcCloses_ = 0;
};

}  // namespace nccld
