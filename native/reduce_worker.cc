#include "reduce_worker.h"

#include <cstdint>
#include <string>

#include "args.h"
#include "errors.h"
#include "shm_segment.h"

namespace nccld {

namespace {

constexpr int64_t kMaxRanks = INT32_MAX;

Napi::Value Rejected(Napi::Promise::Deferred deferred, const Napi::Error& e) {
  deferred.Reject(e.Value());
  return deferred.Promise();
}

}  // namespace

void ReduceWorker::Init(Napi::Env env, Napi::Object exports) {
  exports.Set("reduceSlice", Napi::Function::New(env, &ReduceWorker::ReduceSlice, "reduceSlice"));
  exports.Set("sliceBounds", Napi::Function::New(env, &ReduceWorker::SliceBoundsJs, "sliceBounds"));
}

ReduceWorker::ReduceWorker(Napi::Env env, Napi::Promise::Deferred deferred, ReduceFn fn,
                           std::vector<std::shared_ptr<ShmMapping>> mappings, std::vector<char*> bufs,
                           uint64_t begin, uint64_t end, uint32_t nranks)
    : Napi::AsyncWorker(env, "nccld.reduceSlice"),
      deferred_(deferred),
      fn_(fn),
      mappings_(std::move(mappings)),
      bufs_(std::move(bufs)),
      begin_(begin),
      end_(end),
      nranks_(nranks) {}

// reduceSlice(segments, byteOffsets, count, dtype, op, rank, nranks): Promise<void>.
// Every failure, argument errors included, is a rejection: callers only need one path.
Napi::Value ReduceWorker::ReduceSlice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
  auto bad_arg = [&](const std::string& what) {
    return Rejected(deferred, CodedError(env, kErrInvalidArg, "reduceSlice: " + what, true));
  };

  if (!info[0].IsArray() || !info[1].IsArray()) return bad_arg("segments and byteOffsets must be arrays");
  Napi::Array segs = info[0].As<Napi::Array>();
  Napi::Array offs = info[1].As<Napi::Array>();
  uint32_t n = segs.Length();
  if (n < 1 || offs.Length() != n) return bad_arg("need >= 1 segment and one byte offset per segment");
  uint64_t count;
  int64_t dtype, op, rank, nranks;
  if (!ToIndex(info[2], &count)) return bad_arg("count must be a non-negative integer");
  if (!ToInteger(info[3], 0, kNumDTypes - 1, &dtype)) return bad_arg("unknown dtype");
  if (!ToInteger(info[4], 0, kNumRedOps - 1, &op)) return bad_arg("unknown op");
  if (!ToInteger(info[6], 1, kMaxRanks, &nranks)) return bad_arg("nranks must be an integer >= 1");
  if (!ToInteger(info[5], 0, nranks - 1, &rank)) return bad_arg("rank must be an integer in [0, nranks)");
  size_t elem = DTypeSize(static_cast<int>(dtype));
  // count <= 2^53 and elem <= 8: the byte length fits easily in 64 bits.
  uint64_t bytes = count * elem;

  std::vector<std::shared_ptr<ShmMapping>> mappings;
  std::vector<char*> bufs;
  mappings.reserve(n);
  bufs.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    std::string which = "segment " + std::to_string(i);
    ShmSegment* seg = ShmSegment::FromValue(segs.Get(i));
    if (env.IsExceptionPending()) return Rejected(deferred, env.GetAndClearPendingException());
    if (seg == nullptr) return bad_arg(which + " is not a ShmSegment");
    Napi::Value off_value = offs.Get(i);
    if (env.IsExceptionPending()) return Rejected(deferred, env.GetAndClearPendingException());
    uint64_t off;
    if (!ToIndex(off_value, &off)) return bad_arg("byteOffsets[" + std::to_string(i) + "] must be a non-negative integer");
    which = "shm segment " + Quoted(seg->name());
    if (seg->closed()) return Rejected(deferred, CodedError(env, kErrBufferClosed, "reduceSlice: " + which + " is closed"));
    if (off % elem != 0) {
      return Rejected(deferred, CodedError(env, kErrBadAlignment,
                                           "reduceSlice: byte offset " + std::to_string(off) + " into " + which +
                                               " is not a multiple of the element size " + std::to_string(elem)));
    }
    // A segment truncated below what we touch would SIGBUS the daemon: check the size now.
    uint64_t now;
    if (int err = seg->CurrentSize(&now)) return Rejected(deferred, ErrnoError(env, err, "fstat(" + Quoted(seg->name()) + ")", "fstat"));
    uint64_t limit = std::min<uint64_t>(now, seg->mapping()->size());
    if (off > limit || bytes > limit - off) {
      return Rejected(deferred, CodedError(env, kErrBufferTooSmall,
                                           "reduceSlice: " + which + " holds " + std::to_string(limit) +
                                               " bytes, need " + std::to_string(bytes) + " at offset " +
                                               std::to_string(off)));
    }
    mappings.push_back(seg->mapping());
    bufs.push_back(seg->mapping()->data() + off);
  }

  uint64_t begin, end;
  SliceBounds(count, elem, static_cast<uint64_t>(rank), static_cast<uint64_t>(nranks), &begin, &end);
  ReduceFn fn = GetReduceFn(static_cast<int>(dtype), static_cast<int>(op));
  auto* worker = new ReduceWorker(env, deferred, fn, std::move(mappings), std::move(bufs), begin, end,
                                  static_cast<uint32_t>(nranks));
  worker->Queue();
  return deferred.Promise();
}

// sliceBounds(count, elemSize, rank, nranks): [begin, end) in elements.
Napi::Value ReduceWorker::SliceBoundsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t count;
  int64_t elem, rank, nranks;
  if (!ToIndex(info[0], &count) || !ToInteger(info[1], 1, 8, &elem) || (elem & (elem - 1)) != 0 ||
      !ToInteger(info[3], 1, kMaxRanks, &nranks) || !ToInteger(info[2], 0, nranks - 1, &rank)) {
    ThrowCoded(env, kErrInvalidArg,
               "sliceBounds(count, elemSize: 1|2|4|8, rank: 0..nranks-1, nranks >= 1): bad argument", true);
    return Napi::Value();
  }
  uint64_t begin, end;
  SliceBounds(count, static_cast<size_t>(elem), static_cast<uint64_t>(rank), static_cast<uint64_t>(nranks),
              &begin, &end);
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, static_cast<double>(begin)));
  result.Set(1u, Napi::Number::New(env, static_cast<double>(end)));
  return result;
}

void ReduceWorker::Execute() {
  if (begin_ < end_) fn_(bufs_.data(), bufs_.size(), begin_, end_, nranks_);
}

void ReduceWorker::OnOK() { deferred_.Resolve(Env().Undefined()); }

void ReduceWorker::OnError(const Napi::Error& e) { deferred_.Reject(e.Value()); }

}  // namespace nccld
