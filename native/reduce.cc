// Reduction kernels. One template instance per dtype x op keeps the inner loops free of
// per-element switches; the loops are simple enough for g++ -O3 to vectorise with SSE2.
//
// Semantics follow NCCL (src/device/reduce_kernel.h, src/enqueue.cc hostToDevRedOp):
//  - integer sum/prod wrap modulo 2^bits (done in unsigned types: no UB);
//  - float min/max ignore NaN like fminf/fmaxf (NaN only if every input is NaN);
//  - avg on floats pre-multiplies every input by 1/nranks rounded to the dtype
//    (f16/bf16: float(1.0/n) rounded to half), then sums (FuncPreMulSum);
//  - avg on integers sums with wrap-around, then divides by nranks truncating toward zero,
//    negative sums of signed types included (FuncSumPostDiv);
//  - f16/bf16 are widened to float. Unlike NCCL, which rounds to half after every pairwise
//    step, we accumulate all N inputs in float and round once: never less accurate.
#include "reduce.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "half.h"

namespace nccld {

namespace {

// Accumulators per block: the block stays in L1 while the N inputs stream past it.
constexpr size_t kBlockElems = 2048;

// Codecs: how an element is stored (S) and what it is computed in (A).
template <typename T>
struct NativeCodec {
  using S = T;
  using A = T;
  static A Load(S x) { return x; }
  static S Store(A a) { return a; }
};

struct HalfCodec {
  using S = uint16_t;
  using A = float;
  static A Load(S x) { return HalfToFloat(x); }
  static S Store(A a) { return FloatToHalf(a); }
};

struct Bf16Codec {
  using S = uint16_t;
  using A = float;
  static A Load(S x) { return Bf16ToFloat(x); }
  static S Store(A a) { return FloatToBf16(a); }
};

// Ops: Pre() on every input, Combine() to fold it in, Finish() once per element.
// kPlainFinish lets the kernel store the accumulators directly when S == A.
// Sum, prod, min and max are a bare binary function F::Apply with no pre or post step.
template <class C, class F>
struct PlainOp {
  using A = typename C::A;
  static constexpr bool kPlainFinish = true;
  explicit PlainOp(uint32_t) {}
  A Pre(A x) const { return x; }
  A Combine(A a, A x) const { return F::Apply(a, x); }
  A Finish(A a) const { return a; }
};

struct Add {
  template <typename A>
  static A Apply(A a, A x) { return static_cast<A>(a + x); }
};

struct Mul {
  template <typename A>
  static A Apply(A a, A x) { return static_cast<A>(a * x); }
};

template <bool kMax>
struct MinMax {
  template <typename A>
  static A Apply(A a, A x) {
    A r = kMax ? (x > a ? x : a) : (x < a ? x : a);
    if (std::is_floating_point<A>::value) r = (a != a) ? x : r;  // NaN loses (fmin/fmax)
    return r;
  }
};

template <class C>
struct AvgFloatOp {
  using A = typename C::A;
  static constexpr bool kPlainFinish = true;
  // NCCL's scalar is 1/n converted to the element type.
  explicit AvgFloatOp(uint32_t nranks) : scale(C::Load(C::Store(static_cast<A>(1.0 / nranks)))) {}
  A Pre(A x) const { return x * scale; }
  A Combine(A a, A x) const { return a + x; }
  A Finish(A a) const { return a; }
  A scale;
};

template <class C, bool kSigned>
struct AvgIntOp {
  using A = typename C::A;  // unsigned: the sum wraps like NCCL's
  using S = typename std::make_signed<A>::type;
  // Quotient via a fixed-point reciprocal (as NCCL does): no hardware divide per element.
  // With recip = floor((2^bits - 1) / d) and |x| < 2^bits the estimate is low by at most one.
  // W holds |x|, the quotient and d; P the product. 8-bit types work in 16-bit lanes.
  static constexpr int kBits = 8 * sizeof(A);
  using W = typename std::conditional<sizeof(A) == 1, uint16_t,
                                      typename std::conditional<sizeof(A) == 4, uint32_t, uint64_t>::type>::type;
  using P = typename std::conditional<sizeof(A) == 1, uint16_t,
                                      typename std::conditional<sizeof(A) == 4, uint64_t, unsigned __int128>::type>::type;
  static constexpr bool kPlainFinish = false;
  // 8-bit: every d > 255 behaves like 256 (quotient 0), and 256 fits in W.
  explicit AvgIntOp(uint32_t nranks)
      : d(static_cast<W>(sizeof(A) == 1 ? std::min<uint32_t>(nranks, 256) : nranks)),
        recip(static_cast<W>(std::numeric_limits<A>::max() / nranks)) {}
  A Pre(A x) const { return x; }
  A Combine(A a, A x) const { return static_cast<A>(a + x); }
  // Truncates toward zero: divide |x|, then restore the sign. Masks rather than branches.
  A Finish(A x) const {
    W m = kSigned ? W(0) - W(x >> (8 * sizeof(A) - 1)) : W(0);  // all ones if negative
    W sx = kSigned ? static_cast<W>(static_cast<S>(x)) : W(x);  // sign-extended
    W xabs = (sx ^ m) - m;
    W q = static_cast<W>((P(xabs) * recip) >> kBits);
    q = static_cast<W>(q + static_cast<W>(static_cast<W>(xabs - q * d) >= d));
    return static_cast<A>((q ^ m) - m);
  }
  W d;
  W recip;
};

template <class C, class Op>
inline void Load(typename C::A* __restrict acc, const typename C::S* __restrict src, size_t n, const Op op) {
  for (size_t j = 0; j < n; ++j) acc[j] = op.Pre(C::Load(src[j]));
}

template <class C, class Op>
inline void Accumulate(typename C::A* __restrict acc, const typename C::S* __restrict src, size_t n,
                       const Op op) {
  for (size_t j = 0; j < n; ++j) acc[j] = op.Combine(acc[j], op.Pre(C::Load(src[j])));
}

template <class C, class Op>
inline void Finish(typename C::S* __restrict out, const typename C::A* __restrict acc, size_t n, const Op op) {
  for (size_t j = 0; j < n; ++j) out[j] = C::Store(op.Finish(acc[j]));
}

template <class C, class Op>
void Reduce(char* const* bufs, size_t nbufs, size_t begin, size_t end, uint32_t nranks) {
  using S = typename C::S;
  using A = typename C::A;
  constexpr bool kDirect = std::is_same<S, A>::value && Op::kPlainFinish;
  const Op op(nranks);
  alignas(64) A acc[kBlockElems];
  alignas(64) S out[kDirect ? 1 : kBlockElems];
  for (size_t base = begin; base < end; base += kBlockElems) {
    size_t n = std::min(kBlockElems, end - base);
    size_t off = base * sizeof(S);
    Load<C>(acc, reinterpret_cast<const S*>(bufs[0] + off), n, op);
    for (size_t i = 1; i < nbufs; ++i) Accumulate<C>(acc, reinterpret_cast<const S*>(bufs[i] + off), n, op);
    const void* result = acc;
    if (!kDirect) {
      Finish<C>(out, acc, n, op);
      result = out;
    }
    // glibc's memcpy picks the widest stores this CPU has, which we cannot at baseline ISA.
    for (size_t i = 0; i < nbufs; ++i) std::memcpy(bufs[i] + off, result, n * sizeof(S));
  }
}

// Reduce with read-only sources and one destination, written only after the whole block of
// inputs has been read: that is what lets dst be one of the sources.
template <class C, class Op>
void ReduceInto(const char* const* srcs, size_t nsrcs, char* dst, size_t begin, size_t end, uint32_t nranks) {
  using S = typename C::S;
  using A = typename C::A;
  const Op op(nranks);
  alignas(64) A acc[kBlockElems];
  for (size_t base = begin; base < end; base += kBlockElems) {
    size_t n = std::min(kBlockElems, end - base);
    size_t off = base * sizeof(S);
    Load<C>(acc, reinterpret_cast<const S*>(srcs[0] + off), n, op);
    for (size_t i = 1; i < nsrcs; ++i) Accumulate<C>(acc, reinterpret_cast<const S*>(srcs[i] + off), n, op);
    if constexpr (std::is_same<S, A>::value && Op::kPlainFinish) {
      std::memcpy(dst + off, acc, n * sizeof(S));
    } else {
      Finish<C>(reinterpret_cast<S*>(dst + off), acc, n, op);
    }
  }
}

// Kernel families: one function signature, one instance per codec x op.
struct InPlaceKernels {
  using Fn = ReduceFn;
  template <class C, class Op>
  static Fn Get() { return &Reduce<C, Op>; }
};

struct IntoKernels {
  using Fn = ReduceIntoFn;
  template <class C, class Op>
  static Fn Get() { return &ReduceInto<C, Op>; }
};

template <class K, class C>
typename K::Fn ForFloat(int op) {
  switch (op) {
    case kSum: return K::template Get<C, PlainOp<C, Add>>();
    case kProd: return K::template Get<C, PlainOp<C, Mul>>();
    case kMax: return K::template Get<C, PlainOp<C, MinMax<true>>>();
    case kMin: return K::template Get<C, PlainOp<C, MinMax<false>>>();
    case kAvg: return K::template Get<C, AvgFloatOp<C>>();
    default: return nullptr;
  }
}

template <class K, typename T>
typename K::Fn ForInt(int op) {
  using U = NativeCodec<typename std::make_unsigned<T>::type>;
  using I = NativeCodec<T>;
  switch (op) {
    case kSum: return K::template Get<U, PlainOp<U, Add>>();
    case kProd: return K::template Get<U, PlainOp<U, Mul>>();
    case kMax: return K::template Get<I, PlainOp<I, MinMax<true>>>();
    case kMin: return K::template Get<I, PlainOp<I, MinMax<false>>>();
    case kAvg: return K::template Get<U, AvgIntOp<U, std::is_signed<T>::value>>();
    default: return nullptr;
  }
}

template <class K>
typename K::Fn ForDType(int dtype, int op) {
  switch (dtype) {
    case kInt8: return ForInt<K, int8_t>(op);
    case kUint8: return ForInt<K, uint8_t>(op);
    case kInt32: return ForInt<K, int32_t>(op);
    case kUint32: return ForInt<K, uint32_t>(op);
    case kInt64: return ForInt<K, int64_t>(op);
    case kUint64: return ForInt<K, uint64_t>(op);
    case kFloat16: return ForFloat<K, HalfCodec>(op);
    case kFloat32: return ForFloat<K, NativeCodec<float>>(op);
    case kFloat64: return ForFloat<K, NativeCodec<double>>(op);
    case kBfloat16: return ForFloat<K, Bf16Codec>(op);
    default: return nullptr;
  }
}

}  // namespace

size_t DTypeSize(int dtype) {
  switch (dtype) {
    case kInt8: case kUint8: return 1;
    case kFloat16: case kBfloat16: return 2;
    case kInt32: case kUint32: case kFloat32: return 4;
    case kInt64: case kUint64: case kFloat64: return 8;
    default: return 0;
  }
}

void SliceBounds(uint64_t count, size_t elem_size, uint64_t rank, uint64_t nranks, uint64_t* begin,
                 uint64_t* end) {
  using u128 = unsigned __int128;
  uint64_t per_line = 64 / elem_size;
  uint64_t lines = count / per_line + (count % per_line != 0);
  // Line l0 of rank r is floor(lines * r / nranks): pieces differ by at most one line.
  uint64_t l0 = static_cast<uint64_t>(u128(lines) * rank / nranks);
  uint64_t l1 = static_cast<uint64_t>(u128(lines) * (rank + 1) / nranks);
  *begin = std::min<u128>(u128(l0) * per_line, count);
  *end = std::min<u128>(u128(l1) * per_line, count);
}

ReduceFn GetReduceFn(int dtype, int op) { return ForDType<InPlaceKernels>(dtype, op); }

ReduceIntoFn GetReduceIntoFn(int dtype, int op) { return ForDType<IntoKernels>(dtype, op); }

}  // namespace nccld
