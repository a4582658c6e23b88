// Shares of the host backend's collectives.
//
// How the work is cut: every rank owns one SliceBounds piece of an index space and, for that
// piece, does all the work of every destination and every source.
//  - AllReduce, Broadcast, Reduce, ReduceScatter: the element index k < count of a receive
//    buffer (ReduceScatter: k within every rank's chunk of the send buffers).
//  - AllGather, AllToAll: the receive buffer's whole index x = i*count + k < nranks*count.
//    Slicing x rather than k keeps the shares on separate cache lines of the receive buffers
//    even when count*elem is not a multiple of 64 (the chunks i*count then start mid-line).
// Each share thus writes only receive elements of its own piece; which element of which
// buffer it reads is what the in-place cases must check:
//  - AllReduce, Reduce in place (recv_i == send_i): the share of k reads send_i[k] and writes
//    recv_i[k], the same element, itself; ReduceInto reads a block's inputs before its result.
//  - Broadcast in place (root's recv == send): the share of k reads send_root[k] only, and
//    skips copying it onto itself.
//  - AllGather in place (send_i == recv_i + i*count): send_i[k] is recv_i[x] with x = i*count+k,
//    read only by the share of x, which writes recv_j[x] for j != i and skips recv_i[x] itself.
//  - ReduceScatter in place (recv_j == send_j + j*count): recv_j[k] is send_j[j*count + k],
//    read only by the share of k (for destination j), which reads all n inputs of the block
//    before it writes the result there.
//  - AllToAll in place would not be safe: recv_j[x] is send_j[x], which the share owning
//    j*count + k (another piece, in general) reads to fill recv_i. Hence out of place only.
#include "host_collectives.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "reduce.h"

namespace nccld {

namespace {

// Copies go this many bytes at a time through every destination, so a source block comes from
// memory once and is in cache for the other copies.
constexpr uint64_t kCopyBlockBytes = 32 << 10;

uint64_t MulSaturated(uint64_t a, uint64_t b) {
  uint64_t r;
  return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

bool Reduces(uint8_t kind) {
  return kind == kCollAllReduce || kind == kCollReduce || kind == kCollReduceScatter;
}

bool Rooted(uint8_t kind) { return kind == kCollBroadcast || kind == kCollReduce; }

// [begin, end): this share's piece of the index space; elements of elem bytes.
struct Piece {
  uint64_t begin;
  uint64_t end;
  size_t elem;
};

// Calls fn(b0, b1) for consecutive blocks of at most kCopyBlockBytes covering [from, to).
template <class F>
void ForEachBlock(size_t elem, uint64_t from, uint64_t to, F fn) {
  uint64_t step = kCopyBlockBytes / elem;
  for (uint64_t b = from; b < to; b += step) fn(b, std::min(to, b + step));
}

// Calls fn(i, from, to) for the piece cut at every chunk boundary i*count: [from, to) lies
// within receive chunk i.
template <class F>
void ForEachChunk(const Piece& p, uint64_t count, F fn) {
  for (uint64_t x = p.begin; x < p.end;) {
    uint64_t i = x / count;
    uint64_t to = std::min(p.end, (i + 1) * count);
    fn(i, x, to);
    x = to;
  }
}

void AllReduceShare(const HostCollective& c, const Piece& p) {
  uint32_t n = c.nranks;
  if (std::equal(c.send, c.send + n, c.recv)) {
    GetReduceFn(c.dtype, c.op)(c.recv, n, p.begin, p.end, n);
    return;
  }
  // Reduced once into recv[0], then copied from there while the block is still in cache.
  ReduceIntoFn into = GetReduceIntoFn(c.dtype, c.op);
  ForEachBlock(p.elem, p.begin, p.end, [&](uint64_t from, uint64_t to) {
    into(c.send, n, c.recv[0], from, to, n);
    const char* block = c.recv[0] + from * p.elem;
    for (uint32_t j = 1; j < n; ++j) std::memcpy(c.recv[j] + from * p.elem, block, (to - from) * p.elem);
  });
}

void BroadcastShare(const HostCollective& c, const Piece& p) {
  const char* src = c.send[c.root];
  ForEachBlock(p.elem, p.begin, p.end, [&](uint64_t from, uint64_t to) {
    for (uint32_t j = 0; j < c.nranks; ++j) {
      if (c.recv[j] != src) std::memcpy(c.recv[j] + from * p.elem, src + from * p.elem, (to - from) * p.elem);
    }
  });
}

void ReduceShare(const HostCollective& c, const Piece& p) {
  GetReduceIntoFn(c.dtype, c.op)(c.send, c.nranks, c.recv[c.root], p.begin, p.end, c.nranks);
}

void ReduceScatterShare(const HostCollective& c, const Piece& p) {
  ReduceIntoFn into = GetReduceIntoFn(c.dtype, c.op);
  uint64_t chunk_bytes = c.count * p.elem;
  std::vector<const char*> srcs(c.nranks);
  for (uint32_t j = 0; j < c.nranks; ++j) {
    for (uint32_t i = 0; i < c.nranks; ++i) srcs[i] = c.send[i] + j * chunk_bytes;
    into(srcs.data(), c.nranks, c.recv[j], p.begin, p.end, c.nranks);
  }
}

void AllGatherShare(const HostCollective& c, const Piece& p) {
  ForEachChunk(p, c.count, [&](uint64_t i, uint64_t chunk_from, uint64_t chunk_to) {
    const char* src = c.send[i] + (chunk_from - i * c.count) * p.elem;
    ForEachBlock(p.elem, chunk_from, chunk_to, [&](uint64_t from, uint64_t to) {
      const char* block = src + (from - chunk_from) * p.elem;
      for (uint32_t j = 0; j < c.nranks; ++j) {
        char* dst = c.recv[j] + from * p.elem;
        if (dst != block) std::memcpy(dst, block, (to - from) * p.elem);
      }
    });
  });
}

void AllToAllShare(const HostCollective& c, const Piece& p) {
  ForEachChunk(p, c.count, [&](uint64_t i, uint64_t from, uint64_t to) {
    uint64_t k = from - i * c.count;
    for (uint32_t j = 0; j < c.nranks; ++j) {
      std::memcpy(c.recv[j] + from * p.elem, c.send[i] + (j * c.count + k) * p.elem, (to - from) * p.elem);
    }
  });
}

}  // namespace

void CollectiveBytes(uint8_t kind, uint64_t count, size_t elem, uint32_t nranks, uint64_t* send_bytes,
                         uint64_t* recv_bytes) {
  uint64_t chunk = MulSaturated(count, elem);
  uint64_t all = MulSaturated(chunk, nranks);
  switch (kind) {
    case kCollAllReduce:
    case kCollBroadcast:
    case kCollReduce: *send_bytes = chunk; *recv_bytes = chunk; return;
    case kCollAllGather: *send_bytes = chunk; *recv_bytes = all; return;
    case kCollReduceScatter: *send_bytes = all; *recv_bytes = chunk; return;
    case kCollAllToAll: *send_bytes = all; *recv_bytes = all; return;
    default: *send_bytes = 0; *recv_bytes = 0; return;
  }
}

bool IsInPlace(uint8_t kind, const char* send, const char* recv, uint64_t count, size_t elem, uint32_t rank) {
  // Addresses as integers: the shifted one may lie outside any buffer.
  uintptr_t s = reinterpret_cast<uintptr_t>(send);
  uintptr_t r = reinterpret_cast<uintptr_t>(recv);
  uint64_t shift = MulSaturated(MulSaturated(count, elem), rank);
  switch (kind) {
    case kCollAllReduce:
    case kCollBroadcast:
    case kCollReduce: return s == r;
    case kCollAllGather: return shift != UINT64_MAX && s - r == shift && s >= r;
    case kCollReduceScatter: return shift != UINT64_MAX && r - s == shift && r >= s;
    default: return false;
  }
}

int RunHostShare(const HostCollective& c, uint32_t rank) {
  if (c.nranks == 0 || rank >= c.nranks) return kShareBadRank;
  if (c.kind >= kNumCollKinds) return kShareBadKind;
  if (c.kind == kCollBarrier) return kShareOk;
  size_t elem = DTypeSize(c.dtype);
  if (elem == 0) return kShareBadDType;
  if (Reduces(c.kind) && GetReduceIntoFn(c.dtype, c.op) == nullptr) return kShareBadOp;
  if (Rooted(c.kind) && c.root >= c.nranks) return kShareBadRoot;
  uint64_t send_bytes, recv_bytes;
  CollectiveBytes(c.kind, c.count, elem, c.nranks, &send_bytes, &recv_bytes);
  if (send_bytes == UINT64_MAX || recv_bytes == UINT64_MAX) return kShareTooLarge;

  bool whole_receive = c.kind == kCollAllGather || c.kind == kCollAllToAll;
  uint64_t space = whole_receive ? c.count * c.nranks : c.count;
  Piece p{0, 0, elem};
  SliceBounds(space, elem, rank, c.nranks, &p.begin, &p.end);
  if (p.begin == p.end) return kShareOk;
  switch (c.kind) {
    case kCollAllReduce: AllReduceShare(c, p); break;
    case kCollBroadcast: BroadcastShare(c, p); break;
    case kCollReduce: ReduceShare(c, p); break;
    case kCollAllGather: AllGatherShare(c, p); break;
    case kCollReduceScatter: ReduceScatterShare(c, p); break;
    case kCollAllToAll: AllToAllShare(c, p); break;
    default: break;
  }
  return kShareOk;
}

}  // namespace nccld
