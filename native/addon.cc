// Module entry point: registers every native piece on the exports object.
#include <napi.h>

#include "fd_utils.h"
#include "gpu/gpu.h"
#include "host_collectives_binding.h"
#include "parent_death.h"
#include "peer_credentials.h"
#include "rank_ring.h"
#include "reduce_worker.h"
#include "ring_worker.h"
#include "sd_notify.h"
#include "shm_segment.h"
#include "unix_connection.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  nccld::ShmSegment::Init(env, exports);   // ShmSegment, shmUnlink
  nccld::UnixConnection::Init(env, exports);
  nccld::InitFdUtils(env, exports);  // memfdCreate, fdInfo, SEALS, sendFds, recvFds...
  nccld::ReduceWorker::Init(env, exports); // reduceSlice, sliceBounds
  nccld::InitHostCollectivesBinding(env, exports);  // hostCollective (tests)
  nccld::RankRing::Init(env, exports);     // RankRing, RANK_RING_CODES (daemon side)
  nccld::RingWorker::Init(env, exports);   // RingWorker (device side)
  nccld::InitPeerCredentials(env, exports);
  nccld::InitParentDeath(env, exports);  // setParentDeathSignal
  nccld::InitSdNotify(env, exports);     // sdNotify

  // CUDA and NCCL are opened with dlopen on first use, so this loads on machines without them.
  InitGpu(env, exports);

  return exports;
}

}  // namespace

NODE_API_MODULE(nccld, Init)
