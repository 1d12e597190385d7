// One-float versions of the kernel operations and the software fp16/bf16
// conversions. Everything has internal linkage on purpose: each ISA
// translation unit compiles its own copy with its own flags, and the linker
// can never hand the AVX-512 copy to the scalar path.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace zinf::cpu_adam {
namespace {

inline std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN becomes a quiet NaN with the top payload bits.
inline std::uint16_t f32_to_bf16(float f) {
  const std::uint32_t u = bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float bf16_to_f32(std::uint16_t h) { return float_of(static_cast<std::uint32_t>(h) << 16); }

// Round to nearest even, exactly as F16C's vcvtps2ph with RNE: subnormals
// kept, overflow to infinity, NaN quieted with its top payload bits.
inline std::uint16_t f32_to_f16(float f) {
  std::uint32_t u = bits_of(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  std::uint32_t out;
  if (u > 0x7f800000u) {
    out = 0x7e00u | ((u >> 13) & 0x3ffu);
  } else if (u >= 0x47800000u) {  // >= 65536: infinity (65520..65536 round up below)
    out = 0x7c00u;
  } else if (u < 0x38800000u) {  // below the smallest normal fp16: let the FPU round
    const float magic = float_of(((127 - 15) + (23 - 10) + 1) << 23);
    out = bits_of(float_of(u) + magic) - bits_of(magic);
  } else {
    const std::uint32_t odd = (u >> 13) & 1u;
    u += (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu + odd;
    out = u >> 13;
  }
  return static_cast<std::uint16_t>(out | sign);
}

inline float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) return float_of(sign | bits_of(static_cast<float>(mant) * 0x1p-24f));
  if (exp == 31) return float_of(sign | 0x7f800000u | (mant << 13));
  return float_of(sign | ((exp + 112) << 23) | (mant << 13));
}

// The kernel interface for one float.
struct S {
  using T = float;
  static constexpr std::size_t kWidth = 1;
  static float load_f16(const std::uint16_t* p) { return f16_to_f32(*p); }
  static float load_bf16(const std::uint16_t* p) { return bf16_to_f32(*p); }
  static void store_f16(std::uint16_t* p, float x) { *p = f32_to_f16(x); }
  static void store_bf16(std::uint16_t* p, float x) { *p = f32_to_bf16(x); }
  static float load(const float* p) { return *p; }
  static void store(float* p, float x) { *p = x; }
  static float set1(float x) { return x; }
  static float add(float a, float b) { return a + b; }
  static float mul(float a, float b) { return a * b; }
  static float fmadd(float a, float b, float c) { return std::fma(a, b, c); }
  static float fnmadd(float a, float b, float c) { return std::fma(-a, b, c); }
  static float sqrt(float x) { return std::sqrt(x); }
  static float div(float a, float b) { return a / b; }
  static float sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == x ? 0.0f : x)); }
};

inline void scalar_to_f32(Dtype from, const void* in, float* out, std::size_t n) {
  switch (from) {
    case Dtype::kF32:
      std::memcpy(out, in, n * 4);
      return;
    case Dtype::kF16:
      for (std::size_t i = 0; i < n; ++i)
        out[i] = f16_to_f32(static_cast<const std::uint16_t*>(in)[i]);
      return;
    case Dtype::kBF16:
      for (std::size_t i = 0; i < n; ++i)
        out[i] = bf16_to_f32(static_cast<const std::uint16_t*>(in)[i]);
      return;
  }
}

inline void scalar_from_f32(Dtype to, const float* in, void* out, std::size_t n) {
  switch (to) {
    case Dtype::kF32:
      std::memcpy(out, in, n * 4);
      return;
    case Dtype::kF16:
      for (std::size_t i = 0; i < n; ++i) static_cast<std::uint16_t*>(out)[i] = f32_to_f16(in[i]);
      return;
    case Dtype::kBF16:
      for (std::size_t i = 0; i < n; ++i) static_cast<std::uint16_t*>(out)[i] = f32_to_bf16(in[i]);
      return;
  }
}

}  // namespace
}  // namespace zinf::cpu_adam
