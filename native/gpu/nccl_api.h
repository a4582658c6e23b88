#pragma once
// Our own minimal declarations of the NCCL API (ABI of nccl.h, NCCL 2.28). We never include
// nccl.h: libnccl.so.2 is opened with dlopen at run time (see NcclLib).
#include <climits>
#include <cstddef>

#include "cuda_api.h"

namespace nccld {
namespace nccl {

// ncclResult_t is a C enum of small values: passed and returned as a 32-bit int.
using Result = int;
constexpr Result kSuccess = 0;      // ncclSuccess
constexpr Result kInProgress = 7;   // ncclInProgress (non-blocking communicators)
constexpr int kSplitNoColor = -1;   // NCCL_SPLIT_NOCOLOR: this rank joins no new communicator

struct CommSt;
using Comm = CommSt*;               // ncclComm_t

constexpr std::size_t kUniqueIdBytes = 128;                 // NCCL_UNIQUE_ID_BYTES
struct UniqueId { char internal[kUniqueIdBytes]; };        // ncclUniqueId (passed by value)
static_assert(sizeof(UniqueId) == 128 && alignof(UniqueId) == 1, "ncclUniqueId ABI");

constexpr int kConfigUndefInt = INT_MIN;                    // NCCL_CONFIG_UNDEF_INT
constexpr unsigned kApiMagic = 0xcafebeef;                  // NCCL_API_MAGIC
constexpr unsigned kConfigVersion = 22800;                  // NCCL_VERSION(2,28,0): our layout

// ncclConfig_t as of NCCL 2.28 (struct ncclConfig_v22800). NCCL copies min(size, its own
// sizeof) bytes and ignores fields newer than `version`, so older and newer 2.x libraries both
// accept it; fields we leave unset keep NCCL's defaults.
struct Config {
  std::size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char* netName;
  int splitShare;
  int trafficClass;
  const char* commName;
  int collnetEnable;
  int CTAPolicy;
  int shrinkShare;
  int nvlsCTAs;
  int nChannelsPerNetPeer;   // 2.28
  int nvlinkCentricSched;    // 2.28
};
static_assert(offsetof(Config, blocking) == 16 && offsetof(Config, netName) == 32 &&
                  offsetof(Config, commName) == 48 && offsetof(Config, nvlsCTAs) == 68 &&
                  offsetof(Config, nvlinkCentricSched) == 76 && sizeof(Config) == 80,
              "ncclConfig_v22800 layout");

// Equivalent of NCCL_CONFIG_INITIALIZER for the layout above.
inline Config DefaultConfig() {
  Config c;
  c.size = sizeof(Config);
  c.magic = kApiMagic;
  c.version = kConfigVersion;
  c.blocking = c.cgaClusterSize = c.minCTAs = c.maxCTAs = kConfigUndefInt;
  c.netName = nullptr;
  c.splitShare = c.trafficClass = kConfigUndefInt;
  c.commName = nullptr;
  c.collnetEnable = c.CTAPolicy = c.shrinkShare = c.nvlsCTAs = kConfigUndefInt;
  c.nChannelsPerNetPeer = c.nvlinkCentricSched = kConfigUndefInt;
  return c;
}

// Entry points (NCCL exports unversioned names).
struct Api {
  Result (*GetVersion)(int*);                                         // ncclGetVersion
  Result (*GetUniqueId)(UniqueId*);                                   // ncclGetUniqueId
  Result (*CommInitRankConfig)(Comm*, int, UniqueId, int, Config*);   // ncclCommInitRankConfig
  Result (*CommGetAsyncError)(Comm, Result*);                         // ncclCommGetAsyncError
  Result (*AllReduce)(const void*, void*, std::size_t, int /*ncclDataType_t*/,
                      int /*ncclRedOp_t*/, Comm, cu::Stream);          // ncclAllReduce
  Result (*Broadcast)(const void*, void*, std::size_t, int, int /*root*/, Comm, cu::Stream);  // ncclBroadcast
  Result (*Reduce)(const void*, void*, std::size_t, int, int, int /*root*/, Comm, cu::Stream); // ncclReduce
  Result (*AllGather)(const void*, void*, std::size_t, int, Comm, cu::Stream);      // ncclAllGather
  Result (*ReduceScatter)(const void*, void*, std::size_t, int, int, Comm, cu::Stream); // ncclReduceScatter
  Result (*Send)(const void*, std::size_t, int, int /*peer*/, Comm, cu::Stream);    // ncclSend
  Result (*Recv)(void*, std::size_t, int, int /*peer*/, Comm, cu::Stream);          // ncclRecv
  Result (*GroupStart)();                                             // ncclGroupStart
  Result (*GroupEnd)();                                               // ncclGroupEnd
  Result (*CommSplit)(Comm, int /*color*/, int /*key*/, Comm*, Config*); // ncclCommSplit
  Result (*CommFinalize)(Comm);                                       // ncclCommFinalize
  Result (*CommDestroy)(Comm);                                        // ncclCommDestroy
  Result (*CommAbort)(Comm);                                          // ncclCommAbort
  const char* (*GetErrorString)(Result);                              // ncclGetErrorString
  const char* (*GetLastError)(Comm);                                  // ncclGetLastError
};

}  // namespace nccl
}  // namespace nccld
