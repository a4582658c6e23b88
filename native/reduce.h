// The host backend's reduction kernels: N-way reduce of one rank's slice, in place or into
// a separate destination.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nccld {

// NCCL's numbering (ncclDataType_t, ncclRedOp_t).
enum DType : int { kInt8, kUint8, kInt32, kUint32, kInt64, kUint64, kFloat16, kFloat32, kFloat64, kBfloat16, kNumDTypes };
enum RedOp : int { kSum, kProd, kMax, kMin, kAvg, kNumRedOps };

// Bytes per element, 0 for an unknown dtype.
size_t DTypeSize(int dtype);

// Rank's part [*begin, *end) of [0, count): nranks contiguous pieces, every inner boundary a
// multiple of 64 bytes' worth of elements so ranks never share a cache line of 64-byte
// aligned buffers. Pieces may be empty; together they cover [0, count) exactly.
// elem_size must divide 64; rank < nranks.
void SliceBounds(uint64_t count, size_t elem_size, uint64_t rank, uint64_t nranks, uint64_t* begin,
                 uint64_t* end);

// Reduces elements [begin, end) across the n buffers (each pointing at its element 0) and
// writes the result into all of them. nranks is the avg divisor.
using ReduceFn = void (*)(char* const* bufs, size_t n, size_t begin, size_t end, uint32_t nranks);

// nullptr for an unknown dtype/op.
ReduceFn GetReduceFn(int dtype, int op);

// Reduces elements [begin, end) of the n sources (each pointing at its element 0) into dst,
// with the same arithmetic as ReduceFn. dst may be one of the sources (the same element
// index): a block's inputs are all read before its result is stored. nranks is the avg divisor.
using ReduceIntoFn = void (*)(const char* const* srcs, size_t n, char* dst, size_t begin, size_t end,
                              uint32_t nranks);

// nullptr for an unknown dtype/op.
ReduceIntoFn GetReduceIntoFn(int dtype, int op);

}  // namespace nccld
