// The host backend's collectives, cut into per-rank shares. Every rank maps every rank's
// buffers; each runs its own share, concurrently with the others, and together the shares are
// the collective. No share writes a byte another share of the same collective reads or writes,
// and shares write disjoint 64-byte lines of 64-byte aligned buffers, so they need no
// synchronisation with each other: only a barrier between one collective and the next.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nccld {

// NCCL's collectives, numbered as the ring record's `kind` carries them.
enum CollKind : uint8_t {
  kCollAllReduce = 0,
  kCollBroadcast = 1,
  kCollReduce = 2,
  kCollAllGather = 3,
  kCollReduceScatter = 4,
  kCollAllToAll = 5,
  kCollBarrier = 6,
  kNumCollKinds
};

// One collective over nranks ranks. count is NCCL's count argument; buffers are element-aligned.
//   AllReduce      recv_j[k] = op_i send_i[k]                     k < count
//   Broadcast      recv_j[k] = send_root[k]                       k < count
//   Reduce         recv_root[k] = op_i send_i[k]; other recvs untouched
//   AllGather      recv_j[i*count + k] = send_i[k]
//   ReduceScatter  recv_j[k] = op_i send_i[j*count + k]
//   AllToAll       recv_j[i*count + k] = send_i[j*count + k]
//   Barrier        no data
// In place (IsInPlace) is allowed for every kind but AllToAll, which the caller must refuse: its
// shares would overwrite data other shares still read. Apart from in-place pairs, no buffer may
// overlap a receive buffer. op and root matter only where they appear above; avg divides by nranks.
struct HostCollective {
  uint8_t kind;
  int dtype;
  int op;
  uint64_t count;
  uint32_t root;
  uint32_t nranks;
  char* const* send;  // send[i]: rank i's send buffer (element 0); unused for Barrier
  char* const* recv;  // recv[i]: rank i's receive buffer; the in-place address for in place
};

// RunHostShare's results.
enum HostShareStatus : int {
  kShareOk = 0,
  kShareBadKind,
  kShareBadDType,
  kShareBadOp,
  kShareBadRoot,
  kShareBadRank,      // nranks == 0, or rank >= nranks
  kShareTooLarge,     // a buffer's byte size does not fit in 64 bits
};

// Byte sizes every rank's send and receive buffers must have, by NCCL's conventions (0 for
// none); both backends check buffers against them. UINT64_MAX where the size does not fit in 64 bits.
void CollectiveBytes(uint8_t kind, uint64_t count, size_t elem, uint32_t nranks, uint64_t* send_bytes,
                         uint64_t* recv_bytes);

// Whether rank's send/recv pair is NCCL's in-place pair for kind: send == recv, except
// AllGather (send == recv + rank*count*elem) and ReduceScatter (recv == send + rank*count*elem).
// Always false for AllToAll and Barrier.
bool IsInPlace(uint8_t kind, const char* send, const char* recv, uint64_t count, size_t elem, uint32_t rank);

// Runs rank's share of c. kShareOk, or a HostShareStatus for a bad kind/dtype/op/root/rank
// (nothing is touched then).
int RunHostShare(const HostCollective& c, uint32_t rank);

}  // namespace nccld
