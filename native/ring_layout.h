// The shared-memory layout of a rank ring: what the daemon (RankRing) and a device process's
// worker thread (RingWorker) both map. One memfd holds, in order:
//
//   Control      header (magic, version, sizes) and the ring indices, each on its own cache line
//   submission   capacity records of record_size bytes: SubmitHeader, then max_buffers BufferSlots
//   completion   capacity Completions
//
// Both rings are single-producer single-consumer. Indices count records forever (u64, never
// wrapped); a record lives at index & (capacity - 1). The producer writes the record, then
// publishes head with a release store; the consumer reads head with an acquire load, reads the
// record, then frees the slot by publishing tail with a release store.
//
//   submission: producer the daemon (sub_head), consumer the worker (sub_tail)
//   completion: producer the worker (comp_head), consumer the daemon (comp_tail)
//
// Doorbells (eventfds, outside the region): the daemon writes the submission eventfd only when
// worker_sleeping is set; the worker writes the completion eventfd after every batch. No lost
// wake-up: the daemon stores head, fences (seq_cst), then loads worker_sleeping; the worker
// stores worker_sleeping = 1, fences (seq_cst), then loads head before blocking. One of the two
// always sees the other's store.
//
// Neither side trusts the other's indices beyond what keeps it memory-safe: an index that
// claims more than capacity records is clamped; codes are range-checked.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "error_codes.h"

namespace nccld {
namespace ring {

static_assert(std::atomic<uint64_t>::is_always_lock_free, "ring indices must be lock-free (they live in shared memory)");
static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t), "an atomic index must be a bare u64");

constexpr uint64_t kMagic = 0x31676e69524c4343ULL;  // "CCLRing1", little-endian
constexpr uint32_t kVersion = 2;
constexpr size_t kCacheLine = 64;

// A CUDA IPC event handle (CUipcEventHandle), and the two a record may carry after its slots:
// one the rank's stream waits on before the collective, one it records right after.
constexpr size_t kEventHandleBytes = 64;
constexpr uint32_t kEventsPerRecord = 2;
constexpr uint8_t kFlagWaitEvent = 1;  // handle 0
constexpr uint8_t kFlagDoneEvent = 2;  // handle 1: also asks for a kLaunched note

// Record kinds (SubmitHeader::kind): NCCL's collectives, in the order the protocol numbers them.
constexpr uint8_t kKindAllReduce = 0;
constexpr uint8_t kKindBroadcast = 1;
constexpr uint8_t kKindReduce = 2;
constexpr uint8_t kKindAllGather = 3;
constexpr uint8_t kKindReduceScatter = 4;
constexpr uint8_t kKindAllToAll = 5;
constexpr uint8_t kKindBarrier = 6;
constexpr uint8_t kNumKinds = 7;  // the collectives; the kinds below are communicator control
// NCCL only, on every rank of the world comm, in ring order like a collective: split the world
// comm (color, key; color < 0: not a member) into communicator `comm`, or free communicator `comm`.
constexpr uint8_t kKindSplitComm = 7;
constexpr uint8_t kKindFreeComm = 8;
constexpr uint8_t kNumRecordKinds = 9;

// The collectives that take an op, and those that take a root.
constexpr bool Reduces(uint8_t kind) {
  return kind == kKindAllReduce || kind == kKindReduce || kind == kKindReduceScatter;
}
constexpr bool Rooted(uint8_t kind) { return kind == kKindBroadcast || kind == kKindReduce; }

// Limits, on both sides.
constexpr uint32_t kMaxCapacity = 1u << 16;
constexpr uint32_t kMaxBuffers = 1024;           // nbuf is a u16; far above any real world size
constexpr uint64_t kMaxRegionBytes = 64u << 20;  // capacity × record size stays reasonable

struct Header {
  uint64_t magic;
  uint32_t version;
  uint32_t capacity;     // a power of two
  uint32_t record_size;  // bytes per submission record
  uint32_t max_buffers;  // BufferSlots per submission record
  uint64_t submit_offset;    // from the start of the region
  uint64_t complete_offset;  // from the start of the region
  uint64_t total_size;       // bytes of the region
  uint32_t events;           // CUDA IPC event handles per record, after its slots: 0 or kEventsPerRecord
  uint8_t reserved[kCacheLine - 52];
};
static_assert(sizeof(Header) == kCacheLine, "the header fills one cache line");

// An index alone on its cache line: producer and consumer never false-share.
struct alignas(kCacheLine) Index {
  std::atomic<uint64_t> v;
  uint8_t pad[kCacheLine - sizeof(std::atomic<uint64_t>)];
};
static_assert(sizeof(Index) == kCacheLine, "one index per cache line");

struct Control {
  Header header;
  Index sub_head;         // written by the daemon
  Index sub_tail;         // written by the worker
  Index comp_head;        // written by the worker
  Index comp_tail;        // written by the daemon
  Index worker_sleeping;  // 1 while the worker is (about to be) blocked on the submission eventfd
};
static_assert(sizeof(Control) == 6 * kCacheLine, "control block layout");

// The fixed 64-byte head of a submission record.
struct SubmitHeader {
  uint64_t seq;    // the daemon's id for the collective; echoed in its completion
  uint64_t count;  // elements
  uint8_t kind;    // kKind*
  uint8_t dtype;   // ncclDataType_t
  uint8_t op;      // ncclRedOp_t
  uint8_t flags;   // kFlag*: which event handles after the slots are in use
  uint16_t nbuf;   // BufferSlots in use, 0..max_buffers: every share's send, then (unless in
                   // place) every share's receive buffer; NCCL: this rank's send (and receive)
  uint16_t pad1;
  int32_t root;    // broadcast, reduce: the root's share
  uint32_t comm;   // NCCL: 0 the world's communicator, else a split one
  uint16_t share;  // host: this rank's share of the collective, 0..nshares-1
  uint16_t nshares;  // host: ranks taking part (0: the whole world, share = the rank)
  int32_t color;   // kKindSplitComm
  int32_t key;     // kKindSplitComm
  uint8_t reserved[20];
};
static_assert(sizeof(SubmitHeader) == 64, "submission record header is 64 bytes");
static_assert(offsetof(SubmitHeader, kind) == 16 && offsetof(SubmitHeader, nbuf) == 20 &&
                  offsetof(SubmitHeader, root) == 24 && offsetof(SubmitHeader, comm) == 28,
              "submission record header layout");

struct BufferSlot {
  uint32_t id;
  uint32_t pad;
  uint64_t offset;  // bytes
};
static_assert(sizeof(BufferSlot) == 16, "buffer slot is 16 bytes");

struct Completion {
  uint64_t seq;
  int32_t code;  // index into kCodes
  uint32_t pad;
};
static_assert(sizeof(Completion) == 16, "completion record is 16 bytes");

// Completion codes: what RANK_RING_CODES exports, index for index. Only the code crosses the
// ring: the worker logs the details of NCCL and CUDA failures itself.
enum Code : int32_t {
  kOk, kNoSuchBuffer, kBufferTooSmall, kBadAlignment, kInternal, kBadRequest,
  kAborted,   // the communicator was aborted (the world broke) before the collective finished
  kNccl,      // NCCL failed the collective, or the communicator reported an asynchronous error
  kCuda,      // the CUDA driver failed (event create/record/query)
  kNotReady,  // the rank had no communicator when it took the collective
  kLaunched,  // not an end: the collective is on the stream and its done event recorded
  kNumCodes
};
constexpr const char* kCodes[kNumCodes] = {"OK",         kErrNoSuchBuffer, kErrBufferTooSmall, kErrBadAlignment,
                                           kErrInternal, kErrBadRequest,   kErrAborted,        kErrNccl,
                                           kErrCuda,     kErrNotReady,     "LAUNCHED"};

// A record: its header, max_buffers slots, then `events` event handles, rounded up to whole
// cache lines.
constexpr uint64_t EventsOffset(uint32_t max_buffers) {
  return sizeof(SubmitHeader) + uint64_t{max_buffers} * sizeof(BufferSlot);
}
constexpr uint64_t RecordSize(uint32_t max_buffers, uint32_t events) {
  return (EventsOffset(max_buffers) + uint64_t{events} * kEventHandleBytes + kCacheLine - 1) / kCacheLine * kCacheLine;
}

struct Geometry {
  uint64_t record_size;
  uint64_t submit_offset;
  uint64_t complete_offset;
  uint64_t total_size;
};

// Offsets and sizes for capacity (a power of two, <= kMaxCapacity) and max_buffers
// (1..kMaxBuffers): every part starts on a cache line.
constexpr Geometry Layout(uint32_t capacity, uint32_t max_buffers, uint32_t events) {
  Geometry g{};
  g.record_size = RecordSize(max_buffers, events);
  g.submit_offset = sizeof(Control);
  g.complete_offset = g.submit_offset + uint64_t{capacity} * g.record_size;
  uint64_t comp_bytes = uint64_t{capacity} * sizeof(Completion);
  g.total_size = (g.complete_offset + comp_bytes + kCacheLine - 1) / kCacheLine * kCacheLine;
  return g;
}

constexpr bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

// A pause hint for spin loops.
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace ring
}  // namespace nccld
