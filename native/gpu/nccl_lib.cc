#include "nccl_lib.h"

#include "dynamic_library.h"

namespace nccld {

const NcclLib& NcclLib::Get() {
  // Leaked on purpose: NCCL's own threads may outlive static destruction.
  static const NcclLib* instance = new NcclLib();
  return *instance;
}

NcclLib::NcclLib() {
  // NCCLD_LIBNCCL: pip wheels (nvidia-nccl-cu*) install libnccl.so.2 outside the loader path.
  std::string path;
  std::string why;
  void* lib = OpenLibrary("NCCLD_LIBNCCL", "libnccl.so.2", &path, &why);
  if (lib == nullptr) {
    reason_ = "cannot load NCCL (" + why + ")";
    return;
  }
  bool ok = Resolve(lib, "ncclGetVersion", &api_.GetVersion, &why) &&
            Resolve(lib, "ncclGetUniqueId", &api_.GetUniqueId, &why) &&
            Resolve(lib, "ncclCommInitRankConfig", &api_.CommInitRankConfig, &why) &&
            Resolve(lib, "ncclCommGetAsyncError", &api_.CommGetAsyncError, &why) &&
            Resolve(lib, "ncclAllReduce", &api_.AllReduce, &why) &&
            Resolve(lib, "ncclBroadcast", &api_.Broadcast, &why) &&
            Resolve(lib, "ncclReduce", &api_.Reduce, &why) &&
            Resolve(lib, "ncclAllGather", &api_.AllGather, &why) &&
            Resolve(lib, "ncclReduceScatter", &api_.ReduceScatter, &why) &&
            Resolve(lib, "ncclSend", &api_.Send, &why) &&
            Resolve(lib, "ncclRecv", &api_.Recv, &why) &&
            Resolve(lib, "ncclGroupStart", &api_.GroupStart, &why) &&
            Resolve(lib, "ncclGroupEnd", &api_.GroupEnd, &why) &&
            Resolve(lib, "ncclCommSplit", &api_.CommSplit, &why) &&
            Resolve(lib, "ncclCommFinalize", &api_.CommFinalize, &why) &&
            Resolve(lib, "ncclCommDestroy", &api_.CommDestroy, &why) &&
            Resolve(lib, "ncclCommAbort", &api_.CommAbort, &why) &&
            Resolve(lib, "ncclGetErrorString", &api_.GetErrorString, &why) &&
            Resolve(lib, "ncclGetLastError", &api_.GetLastError, &why);
  if (!ok) {
    reason_ = path + " is unusable: " + why;
    return;
  }
  loaded_ = true;
  if (api_.GetVersion(&version_) != nccl::kSuccess) version_ = 0;
}

std::string NcclLib::ResultName(nccl::Result r) {
  switch (r) {
    case 0: return "ncclSuccess";
    case 1: return "ncclUnhandledCudaError";
    case 2: return "ncclSystemError";
    case 3: return "ncclInternalError";
    case 4: return "ncclInvalidArgument";
    case 5: return "ncclInvalidUsage";
    case 6: return "ncclRemoteError";
    case 7: return "ncclInProgress";
    case 8: return "ncclTimeout";  // only in NCCL releases newer than 2.28
    default: return "ncclResult(" + std::to_string(r) + ")";
  }
}

std::string NcclLib::ErrorString(nccl::Result r) const {
  const char* s = loaded_ ? api_.GetErrorString(r) : nullptr;
  return s ? s : "unknown NCCL result";
}

std::string NcclLib::LastError(nccl::Comm comm) const {
  const char* s = loaded_ ? api_.GetLastError(comm) : nullptr;
  return s ? s : "";
}

}  // namespace nccld
