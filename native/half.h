// float16 / bfloat16 <-> float conversions, round-to-nearest-even, written with integer
// masks instead of branches or ?: so g++ can vectorise them on baseline x86-64 (no F16C).
// (A ?: whose arm holds float arithmetic gets sunk into a branch that -ftrapping-math then
// forbids if-converting back, which leaves the loop scalar.)
#pragma once

#include <cstdint>
#include <cstring>

namespace nccld {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// All ones when c holds, else zero.
inline uint32_t Mask(bool c) { return 0u - static_cast<uint32_t>(c); }

inline uint32_t Select(uint32_t mask, uint32_t a, uint32_t b) { return (a & mask) | (b & ~mask); }

inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float HalfToFloat(uint16_t h) {
  uint32_t em = h & 0x7fffu;
  uint32_t exp = em & 0x7c00u;
  uint32_t bits = (em << 13) + 0x38000000u;  // rebias exponent 15 -> 127
  bits += Mask(exp == 0x7c00u) & 0x38000000u;  // Inf/NaN: exponent all ones, payload kept
  // Zero/subnormal: build 2^-14 * (1 + m/1024) and subtract 2^-14, which is exact and
  // never feeds a float subnormal into the FPU (slow on some CPUs).
  uint32_t sub = FloatBits(BitsFloat(bits + 0x00800000u) - 0x1p-14f);
  uint32_t mag = Select(Mask(exp == 0), sub, bits);
  return BitsFloat(mag | (uint32_t(h & 0x8000u) << 16));
}

inline uint16_t FloatToHalf(float f) {
  uint32_t u = FloatBits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  // |f| >= 65536 (or Inf/NaN): Inf, or a quiet NaN. Smaller values that round up past
  // 65504 reach Inf through the normal path's carry.
  uint32_t special = 0x7c00u | (Mask(u > 0x7f800000u) & 0x0200u);
  // Result subnormal or zero (|f| < 2^-14): adding 0.5 lines the 10 mantissa bits up at the
  // bottom of the float and the FPU rounds to nearest even for us.
  uint32_t sub = FloatBits(BitsFloat(u) + 0.5f) - 0x3f000000u;
  // Normal: rebias exponent 127 -> 15 and round to nearest even on the 13 dropped bits.
  uint32_t normal = (u + 0xc8000000u + 0xfffu + ((u >> 13) & 1u)) >> 13;
  uint32_t h = Select(Mask(u >= 0x47800000u), special, Select(Mask(u < 0x38800000u), sub, normal));
  return static_cast<uint16_t>(h | sign);
}

inline float Bf16ToFloat(uint16_t b) { return BitsFloat(uint32_t(b) << 16); }

inline uint16_t FloatToBf16(float f) {
  uint32_t u = FloatBits(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t nan = (u >> 16) | 0x0040u;  // keep sign and payload, force quiet
  return static_cast<uint16_t>(Select(Mask((u & 0x7fffffffu) > 0x7f800000u), nan, rounded));
}

}  // namespace nccld
