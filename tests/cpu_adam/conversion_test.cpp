// fp32 -> fp16/bf16 rounding on every ISA: round-to-nearest-even, ties, NaN,
// infinities, overflow and subnormals, against hand-derived bit patterns and
// against the scalar path on a million random bit patterns.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "zinf/common/cpu_features.hpp"
#include "zinf/cpu_adam/cpu_adam.hpp"

namespace zinf::cpu_adam {
namespace {

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<std::uint16_t> convert(Isa isa, const std::vector<float>& in, Dtype to) {
  auto e = Executor::create(1, isa);
  EXPECT_TRUE(e.is_ok());
  // Pad to a multiple of 16 so the vector paths (not only the tails) run.
  std::vector<float> padded = in;
  while (padded.size() % 16 != 0) padded.push_back(0.0f);
  std::vector<std::uint16_t> out(padded.size());
  EXPECT_TRUE((*e)->convert(padded.data(), out.data(), to, padded.size()).is_ok());
  out.resize(in.size());
  return out;
}

std::vector<Isa> isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (isa_available(isa)) out.push_back(isa);
  }
  return out;
}

// Native AVX512_BF16 conversion treats fp32 subnormal inputs as zero (the
// instruction's definition); the other paths round them. Everything else is
// identical.
bool native_bf16(Isa isa) { return isa == Isa::kAvx512 && cpu_features().avx512_bf16; }

TEST(ConversionTest, Fp16HandPickedValues) {
  const std::vector<std::pair<std::uint32_t, std::uint16_t>> cases = {
      {0x3f800000, 0x3c00},  // 1
      {0x3f801000, 0x3c00},  // 1 + 2^-11: tie, to even (down)
      {0x3f803000, 0x3c02},  // 1 + 3*2^-11: tie, to even (up)
      {0x3f801001, 0x3c01},  // just above the tie
      {0x477fe000, 0x7bff},  // 65504, the largest fp16
      {0x477ff000, 0x7c00},  // 65520: tie between 65504 and 65536 -> infinity
      {0x477fefff, 0x7bff},  // just below
      {0x33800000, 0x0001},  // 2^-24, the smallest subnormal
      {0x33000000, 0x0000},  // 2^-25: tie, to even (zero)
      {0x33400000, 0x0001},  // 1.5 * 2^-25
      {0x38800000, 0x0400},  // 2^-14, the smallest normal
      {0x80000000, 0x8000},  // -0
      {0x7f800000, 0x7c00},  // inf
      {0xff800000, 0xfc00},  // -inf
      {0x7fc00000, 0x7e00},  // quiet NaN
      {0x7f800001, 0x7e00},  // signalling NaN: quieted
      {0xffc02000, 0xfe01},  // NaN payload: top bits kept
      {0x2edbe6ff, 0x0000},  // 1e-10
      {0xc7c35000, 0xfc00},  // -100000: overflow
  };
  std::vector<float> in;
  for (auto [u, h] : cases) in.push_back(from_bits(u));
  for (Isa isa : isas()) {
    auto out = convert(isa, in, Dtype::kF16);
    for (std::size_t i = 0; i < cases.size(); ++i) {
      EXPECT_EQ(out[i], cases[i].second)
          << to_string(isa) << " input 0x" << std::hex << cases[i].first;
    }
  }
}

TEST(ConversionTest, Bf16HandPickedValues) {
  const std::vector<std::pair<std::uint32_t, std::uint16_t>> cases = {
      {0x3f800000, 0x3f80},  // 1
      {0x3f808000, 0x3f80},  // tie, to even (down)
      {0x3f818000, 0x3f82},  // tie, to even (up)
      {0x3f808001, 0x3f81},  // just above the tie
      {0x7f7fffff, 0x7f80},  // FLT_MAX rounds to infinity
      {0x7f7f7fff, 0x7f7f},  // stays finite
      {0x80000000, 0x8000},  // -0
      {0x7f800000, 0x7f80},  // inf
      {0xff800000, 0xff80},  // -inf
      {0x7fc00000, 0x7fc0},  // quiet NaN
      {0x7f800001, 0x7fc0},  // signalling NaN: quieted, never infinity
      {0xff810000, 0xffc1},  // NaN payload: top bits kept
      {0x00800000, 0x0080},  // the smallest normal
  };
  std::vector<float> in;
  for (auto [u, h] : cases) in.push_back(from_bits(u));
  for (Isa isa : isas()) {
    auto out = convert(isa, in, Dtype::kBF16);
    for (std::size_t i = 0; i < cases.size(); ++i) {
      EXPECT_EQ(out[i], cases[i].second)
          << to_string(isa) << " input 0x" << std::hex << cases[i].first;
    }
  }
}

TEST(ConversionTest, Bf16SubnormalInputs) {
  const std::vector<float> in = {from_bits(0x000116c2), from_bits(0x807fffff),
                                 from_bits(0x00008000)};
  for (Isa isa : isas()) {
    auto out = convert(isa, in, Dtype::kBF16);
    if (native_bf16(isa)) {
      EXPECT_EQ(out, (std::vector<std::uint16_t>{0x0000, 0x8000, 0x0000}))
          << "treated as signed zero";
    } else {
      EXPECT_EQ(out, (std::vector<std::uint16_t>{0x0001, 0x8080, 0x0000}))
          << to_string(isa) << ": rounded";
    }
  }
}

TEST(ConversionTest, EveryIsaMatchesScalarOnRandomBitPatterns) {
  std::mt19937 rng(1);
  std::vector<float> in(1 << 20);
  for (auto& f : in) f = from_bits(rng());
  for (Dtype to : {Dtype::kF16, Dtype::kBF16}) {
    const auto expected = convert(Isa::kScalar, in, to);
    for (Isa isa : isas()) {
      const auto got = convert(isa, in, to);
      for (std::size_t i = 0; i < in.size(); ++i) {
        std::uint32_t u;
        std::memcpy(&u, &in[i], 4);
        const bool subnormal = (u & 0x7f800000u) == 0 && (u & 0x007fffffu) != 0;
        if (to == Dtype::kBF16 && subnormal && native_bf16(isa)) {
          ASSERT_EQ(got[i], static_cast<std::uint16_t>((u >> 16) & 0x8000u));
        } else {
          ASSERT_EQ(got[i], expected[i])
              << to_string(isa) << " " << to_string(to) << " input 0x" << std::hex << u;
        }
      }
    }
  }
}

}  // namespace
}  // namespace zinf::cpu_adam

namespace zinf::cpu_adam {
namespace {

// The exact fp32 value of an fp16 or bf16 bit pattern (both are subsets of fp32).
float widen(std::uint16_t h, Dtype d) {
  if (d == Dtype::kBF16) return from_bits(std::uint32_t{h} << 16);
  const std::uint32_t sign = std::uint32_t{h & 0x8000u} << 16;
  const int exponent = (h >> 10) & 0x1f;
  const std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return from_bits(sign | 0x7f800000u | (mantissa << 13));
  const float magnitude = exponent == 0
                              ? std::ldexp(static_cast<float>(mantissa), -24)
                              : std::ldexp(static_cast<float>(mantissa | 0x400u), exponent - 25);
  return sign != 0 ? -magnitude : magnitude;
}

// Accumulation widens each dtype exactly and adds in fp32: the same values as
// a scalar loop, on every ISA, across the parallel threshold.
TEST(AccumulateTest, OverwriteThenAddEqualsAScalarLoop) {
  const std::size_t n = 100003;
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> a(n), b(n);
  for (auto& x : a) x = dist(rng);
  for (auto& x : b) x = dist(rng);
  for (Isa isa : isas()) {
    auto e = Executor::create(2, isa);
    ASSERT_TRUE(e.is_ok());
    for (Dtype d : {Dtype::kF32, Dtype::kF16, Dtype::kBF16}) {
      // The sources in dtype d, and their exact fp32 values.
      std::vector<std::uint16_t> a16(n), b16(n);
      std::vector<float> wa = a, wb = b;
      const void* pa = a.data();
      const void* pb = b.data();
      if (d != Dtype::kF32) {
        ASSERT_TRUE((*e)->convert(a.data(), a16.data(), d, n).is_ok());
        ASSERT_TRUE((*e)->convert(b.data(), b16.data(), d, n).is_ok());
        for (std::size_t i = 0; i < n; ++i) {
          wa[i] = widen(a16[i], d);
          wb[i] = widen(b16[i], d);
        }
        pa = a16.data();
        pb = b16.data();
      }
      std::vector<float> acc(n, 123.0f);
      ASSERT_TRUE((*e)->accumulate(pa, d, acc.data(), n, true).is_ok());
      ASSERT_EQ(std::memcmp(acc.data(), wa.data(), n * 4), 0) << to_string(isa) << to_string(d);
      ASSERT_TRUE((*e)->accumulate(pb, d, acc.data(), n, false).is_ok());
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_EQ(acc[i], wa[i] + wb[i]) << to_string(isa) << " " << to_string(d) << " at " << i;
    }
  }
  auto e = Executor::create(1);
  EXPECT_FALSE((*e)->accumulate(nullptr, Dtype::kF32, nullptr, 4, true).is_ok());
}

}  // namespace
}  // namespace zinf::cpu_adam
