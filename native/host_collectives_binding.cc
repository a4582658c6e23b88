#include "host_collectives_binding.h"

#include <pthread.h>

#include <cstdint>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "host_collectives.h"
#include "reduce.h"

namespace nccld {

namespace {

// Bounds the threads one call starts; far above any world size a test uses.
constexpr uint32_t kMaxRanks = 256;

struct Span {
  char* data;
  uint64_t length;
};

// The bytes of an ArrayBuffer or of a Uint8Array (a Buffer is one), writable.
bool ToSpan(const Napi::Value& v, Span* out) {
  if (v.IsArrayBuffer()) {
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    *out = {static_cast<char*>(ab.Data()), ab.ByteLength()};
    return true;
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) return false;
  Napi::Uint8Array bytes = v.As<Napi::Uint8Array>();
  *out = {reinterpret_cast<char*>(bytes.Data()), bytes.ElementLength()};
  return true;
}

bool ToSpans(const Napi::Value& v, std::vector<Span>* out) {
  if (!v.IsArray()) return false;
  Napi::Array arr = v.As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n < 1 || n > kMaxRanks) return false;
  out->resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    Napi::Value item = arr.Get(i);
    if (item.IsEmpty() || !ToSpan(item, &(*out)[i])) return false;
  }
  return true;
}

// Distinct ranks in [0, nranks), in the order given.
bool ToRankList(const Napi::Value& v, uint32_t nranks, std::vector<uint32_t>* out) {
  if (!v.IsArray()) return false;
  Napi::Array arr = v.As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > nranks) return false;
  std::vector<bool> seen(nranks, false);
  for (uint32_t i = 0; i < n; ++i) {
    Napi::Value item = arr.Get(i);
    int64_t rank;
    if (item.IsEmpty() || !ToInteger(item, 0, nranks - 1, &rank) || seen[rank]) return false;
    seen[rank] = true;
    out->push_back(static_cast<uint32_t>(rank));
  }
  return true;
}

// nullptr if span holds `need` bytes starting on an element boundary; else the error code,
// and what is wrong in *why.
const char* CheckSpan(const Span& span, uint64_t need, size_t elem, std::string* why) {
  if (span.length < need) {
    *why = "holds " + std::to_string(span.length) + " bytes, need " + std::to_string(need);
    return kErrBufferTooSmall;
  }
  if (need != 0 && reinterpret_cast<uintptr_t>(span.data) % elem != 0) {
    *why = "does not start on a multiple of the element size " + std::to_string(elem);
    return kErrBadAlignment;
  }
  return nullptr;
}

// Whether [a, a + alen) and [b, b + blen) share a byte.
bool Overlap(const char* a, uint64_t alen, const char* b, uint64_t blen) {
  uintptr_t a0 = reinterpret_cast<uintptr_t>(a);
  uintptr_t b0 = reinterpret_cast<uintptr_t>(b);
  return alen != 0 && blen != 0 && a0 < b0 + blen && b0 < a0 + alen;
}

struct ShareRun {
  const HostCollective* c;
  uint32_t rank;
  int status;
};

void* RunShare(void* arg) {
  auto* run = static_cast<ShareRun*>(arg);
  run->status = RunHostShare(*run->c, run->rank);
  return nullptr;
}

// Runs the shares of `ranks`, each on a thread of its own, or in that order on this thread.
// The first failing share's status, else kShareOk.
int RunShares(const HostCollective& c, const std::vector<uint32_t>& ranks, bool threaded) {
  std::vector<ShareRun> runs;
  for (uint32_t rank : ranks) runs.push_back({&c, rank, kShareOk});
  std::vector<pthread_t> threads(runs.size());
  std::vector<bool> started(runs.size(), false);
  for (size_t i = 0; i < runs.size(); ++i) {
    // A share whose thread cannot start runs here: shares never wait for each other.
    started[i] = threaded && pthread_create(&threads[i], nullptr, &RunShare, &runs[i]) == 0;
    if (!started[i]) RunShare(&runs[i]);
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    if (started[i]) pthread_join(threads[i], nullptr);
  }
  for (const ShareRun& run : runs) {
    if (run.status != kShareOk) return run.status;
  }
  return kShareOk;
}

// hostCollective(kind, dtype, op, count, root, sendBuffers, recvBuffers, ranks?): one buffer
// per rank in each list (ArrayBuffers or Uint8Arrays). Without `ranks`, every rank's share runs
// on its own thread; with it, those shares only, in that order, on the calling thread.
Napi::Value HostCollectiveJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto fail = [&](const char* code, const std::string& what, bool type_error = false) {
    ThrowCoded(env, code, "hostCollective: " + what, type_error);
    return env.Undefined();
  };
  auto bad_arg = [&](const std::string& what) { return fail(kErrInvalidArg, what, true); };

  int64_t kind, dtype, op, root;
  uint64_t count;
  std::vector<Span> sends, recvs;
  if (!ToInteger(info[0], 0, kNumCollKinds - 1, &kind)) return bad_arg("unknown kind");
  if (!ToInteger(info[1], 0, kNumDTypes - 1, &dtype)) return bad_arg("unknown dtype");
  if (!ToInteger(info[2], 0, kNumRedOps - 1, &op)) return bad_arg("unknown op");
  if (!ToIndex(info[3], &count)) return bad_arg("count must be a non-negative integer");
  if (!ToSpans(info[5], &sends) || !ToSpans(info[6], &recvs) || sends.size() != recvs.size()) {
    return bad_arg("sendBuffers and recvBuffers must each hold one ArrayBuffer or Uint8Array per rank (1.." +
                   std::to_string(kMaxRanks) + ")");
  }
  uint32_t nranks = static_cast<uint32_t>(sends.size());
  if (!ToInteger(info[4], 0, nranks - 1, &root)) return bad_arg("root must be an integer in [0, nranks)");
  std::vector<uint32_t> ranks;
  bool threaded = info[7].IsUndefined();
  if (threaded) {
    for (uint32_t r = 0; r < nranks; ++r) ranks.push_back(r);
  } else if (!ToRankList(info[7], nranks, &ranks)) {
    return bad_arg("ranks must be an array of distinct ranks in [0, nranks)");
  }

  auto k = static_cast<uint8_t>(kind);
  size_t elem = DTypeSize(static_cast<int>(dtype));
  uint64_t send_bytes, recv_bytes;
  CollectiveBytes(k, count, elem, nranks, &send_bytes, &recv_bytes);
  for (uint32_t i = 0; i < nranks; ++i) {
    std::string why;
    const char* code = CheckSpan(sends[i], send_bytes, elem, &why);
    if (code != nullptr) return fail(code, "sendBuffers[" + std::to_string(i) + "] " + why);
    code = CheckSpan(recvs[i], recv_bytes, elem, &why);
    if (code != nullptr) return fail(code, "recvBuffers[" + std::to_string(i) + "] " + why);
  }
  // Only NCCL's in-place pairs may share bytes with a receive buffer: anything else would race.
  for (uint32_t j = 0; j < nranks; ++j) {
    for (uint32_t i = 0; i < nranks; ++i) {
      if (i < j && Overlap(recvs[i].data, recv_bytes, recvs[j].data, recv_bytes)) {
        return fail(kErrBufferOverlap,
                    "recvBuffers[" + std::to_string(i) + "] and [" + std::to_string(j) + "] overlap");
      }
      bool in_place = i == j && IsInPlace(k, sends[i].data, recvs[i].data, count, elem, i);
      if (!in_place && Overlap(sends[i].data, send_bytes, recvs[j].data, recv_bytes)) {
        return fail(kErrBufferOverlap, "sendBuffers[" + std::to_string(i) + "] overlaps recvBuffers[" +
                                           std::to_string(j) + "] other than as an in-place pair");
      }
    }
  }

  std::vector<char*> send_ptrs, recv_ptrs;
  for (uint32_t i = 0; i < nranks; ++i) {
    send_ptrs.push_back(sends[i].data);
    recv_ptrs.push_back(recvs[i].data);
  }
  HostCollective c{k, static_cast<int>(dtype), static_cast<int>(op), count, static_cast<uint32_t>(root),
                   nranks, send_ptrs.data(), recv_ptrs.data()};
  if (int status = RunShares(c, ranks, threaded)) {
    return fail(kErrInternal, "a share failed with status " + std::to_string(status));
  }
  return env.Undefined();
}

}  // namespace

void InitHostCollectivesBinding(Napi::Env env, Napi::Object exports) {
  exports.Set("hostCollective", Napi::Function::New(env, &HostCollectiveJs, "hostCollective"));
}

}  // namespace nccld
