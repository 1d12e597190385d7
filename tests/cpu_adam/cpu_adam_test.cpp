// cpu_adam against a float64 reference, across every ISA this CPU has.
//
// The reference starts each step from the kernel's own (decoded) state and
// computes that one step in double, so every step of every configuration is
// checked element-wise. Tolerances (relative to the magnitudes involved):
//   fp32 storage: 8 ulp of fp32 (2^-20): the fp32 kernel rounds about 10
//                 times per element, each at most half an ulp;
//   fp16 storage: half an ulp of fp16 (2^-11) for the final rounding, plus
//                 the fp32 error above;
//   bf16 storage: half an ulp of bf16 (2^-8), likewise;
//   plus, for fp16, half the subnormal spacing (2^-25) as an absolute floor:
//   below 2^-14 fp16 precision is absolute, not relative.
#include "zinf/cpu_adam/cpu_adam.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace zinf::cpu_adam {
namespace {

// Encodes/decodes storage through the kernel's own converters (checked
// separately against hand-made values in ConversionTest).
struct Array {
  Dtype dtype;
  std::vector<std::uint16_t> half;
  std::vector<float> full;

  Array(Dtype d, std::size_t n) : dtype(d) {
    if (d == Dtype::kF32) {
      full.resize(n);
    } else {
      half.resize(n);
    }
  }
  void* data() { return dtype == Dtype::kF32 ? static_cast<void*>(full.data()) : half.data(); }
  std::size_t size() const { return dtype == Dtype::kF32 ? full.size() : half.size(); }
};

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (isa_available(isa)) out.push_back(isa);
  }
  return out;
}

std::unique_ptr<Executor> executor(Isa isa, int threads = 2) {
  auto e = Executor::create(threads, isa);
  EXPECT_TRUE(e.is_ok()) << e.status().to_string();
  return std::move(*e);
}

double half_to_double(Dtype d, std::uint16_t h) {
  std::uint32_t u;
  if (d == Dtype::kBF16) {
    u = static_cast<std::uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const std::uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  if (exp == 31) return mant ? NAN : sign * INFINITY;
  return sign * std::ldexp(1024 + mant, static_cast<int>(exp) - 25);
}

std::vector<double> decode(const Array& a) {
  std::vector<double> out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    out[i] = a.dtype == Dtype::kF32 ? a.full[i] : half_to_double(a.dtype, a.half[i]);
  }
  return out;
}

void encode(Executor& e, const std::vector<float>& values, Array& a) {
  ASSERT_TRUE(e.convert(values.data(), a.data(), a.dtype, values.size()).is_ok());
}

double storage_tolerance(Dtype d) {
  switch (d) {
    case Dtype::kF32:
      return std::ldexp(1.0, -20);
    case Dtype::kF16:
      return std::ldexp(1.0, -11) + std::ldexp(1.0, -20);
    case Dtype::kBF16:
      return std::ldexp(1.0, -8) + std::ldexp(1.0, -20);
  }
  return 0;
}

double absolute_floor(Dtype d) { return d == Dtype::kF16 ? std::ldexp(1.0, -25) : 1e-30; }

struct RefOut {
  double p, m, v, scale;  // scale: the magnitude the error is relative to
};

RefOut reference(const Hyper& h, std::int64_t t, double p, double g, double m, double v,
                 double gs) {
  g *= gs;
  switch (h.algorithm) {
    case Algorithm::kAdam: {
      if (!h.adamw_mode) g += h.weight_decay * p;
      if (h.adamw_mode) p *= 1.0 - static_cast<double>(h.lr) * h.weight_decay;
      m = h.beta1 * m + (1.0 - h.beta1) * g;
      v = h.beta2 * v + (1.0 - h.beta2) * g * g;
      const double bc1 = h.bias_correction ? 1.0 - std::pow(static_cast<double>(h.beta1), t) : 1.0;
      const double bc2 = h.bias_correction ? 1.0 - std::pow(static_cast<double>(h.beta2), t) : 1.0;
      const double upd = h.lr / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + h.eps);
      return {p - upd, m, v, std::abs(p) + std::abs(upd)};
    }
    case Algorithm::kAdagrad: {
      g += h.weight_decay * p;
      v += g * g;
      const double upd = h.lr * g / (std::sqrt(v) + h.eps);
      return {p - upd, m, v, std::abs(p) + std::abs(upd)};
    }
    case Algorithm::kLion: {
      const double c = h.beta1 * m + (1.0 - h.beta1) * g;
      const double s = c > 0 ? 1.0 : (c < 0 ? -1.0 : 0.0);
      const double np = p * (1.0 - static_cast<double>(h.lr) * h.weight_decay) - h.lr * s;
      return {np, h.beta2 * m + (1.0 - h.beta2) * g, v, std::abs(p) + h.lr};
    }
  }
  return {};
}

struct Config {
  Algorithm algorithm;
  Dtype param;
  Dtype state;
  Dtype grad;
};

// Runs `steps` steps of one configuration and checks each against the reference.
void check_against_reference(Isa isa, const Config& cfg, std::size_t n, int steps,
                             std::uint64_t seed) {
  SCOPED_TRACE(::testing::Message()
               << to_string(isa) << " " << to_string(cfg.algorithm) << " param "
               << to_string(cfg.param) << " state " << to_string(cfg.state) << " grad "
               << to_string(cfg.grad) << " n " << n);
  auto e = executor(isa);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.01f, 1.0f);
  Array p(cfg.param, n), g(cfg.grad, n), m(cfg.state, n), v(cfg.state, n), copy(Dtype::kBF16, n);
  std::vector<float> tmp(n);
  for (auto& x : tmp) x = normal(rng);
  encode(*e, tmp, p);
  for (auto& x : tmp) x = 0.1f * normal(rng);
  encode(*e, tmp, m);
  for (auto& x : tmp) x = 0.01f * uniform(rng);
  encode(*e, tmp, v);
  Hyper h;
  h.algorithm = cfg.algorithm;
  h.lr = cfg.algorithm == Algorithm::kLion ? 1e-4f : 1e-3f;
  h.beta1 = 0.9f;
  h.beta2 = 0.99f;
  h.eps = 1e-8f;
  h.weight_decay = 0.01f;
  h.adamw_mode = seed % 2 == 0;
  const float gs = 0.5f;
  for (int s = 1; s <= steps; ++s) {
    for (auto& x : tmp) x = normal(rng);
    encode(*e, tmp, g);
    const auto p0 = decode(p), g0 = decode(g), m0 = decode(m), v0 = decode(v);
    Buffers b{p.data(), cfg.param, g.data(),    cfg.grad,     m.data(),
              v.data(), cfg.state, copy.data(), Dtype::kBF16, n};
    ASSERT_TRUE(e->step(h, s, b, gs).is_ok());
    const auto p1 = decode(p), m1 = decode(m), v1 = decode(v), c1 = decode(copy);
    const double tp = storage_tolerance(cfg.param), ts = storage_tolerance(cfg.state);
    for (std::size_t i = 0; i < n; ++i) {
      const RefOut r = reference(h, s, p0[i], g0[i], m0[i], v0[i], gs);
      ASSERT_NEAR(p1[i], r.p, tp * r.scale + absolute_floor(cfg.param))
          << "param " << i << " step " << s;
      if (cfg.algorithm != Algorithm::kAdagrad) {
        ASSERT_NEAR(m1[i], r.m, ts * (std::abs(r.m) + std::abs(m0[i])) + absolute_floor(cfg.state))
            << "exp_avg " << i;
      }
      if (cfg.algorithm != Algorithm::kLion) {
        ASSERT_NEAR(v1[i], r.v, ts * (std::abs(r.v) + std::abs(v0[i])) + absolute_floor(cfg.state))
            << "exp_avg_sq " << i;
      }
      // The copy-out and the stored parameter are two roundings (bf16, and
      // the parameter's own type) of the same fp32 value.
      ASSERT_NEAR(c1[i], p1[i],
                  (std::ldexp(1.0, -8) + tp) * std::abs(p1[i]) + absolute_floor(cfg.param))
          << "copy_out " << i;
    }
  }
}

std::vector<Config> all_configs() {
  std::vector<Config> out;
  const std::pair<Dtype, Dtype> pairs[] = {{Dtype::kF32, Dtype::kF32},
                                           {Dtype::kF16, Dtype::kF32},
                                           {Dtype::kBF16, Dtype::kF32},
                                           {Dtype::kF16, Dtype::kF16},
                                           {Dtype::kBF16, Dtype::kBF16}};
  for (Algorithm a : {Algorithm::kAdam, Algorithm::kAdagrad, Algorithm::kLion}) {
    for (auto [param, state] : pairs) {
      for (Dtype grad : {Dtype::kF32, Dtype::kF16, Dtype::kBF16})
        out.push_back({a, param, state, grad});
    }
  }
  return out;
}

TEST(CpuAdamTest, EveryConfigurationMatchesTheFloat64Reference) {
  std::uint64_t seed = 1;
  for (Isa isa : available_isas()) {
    for (const Config& cfg : all_configs()) {
      for (std::size_t n : {1, 7, 15, 16, 17, 63, 1000, 40000})
        check_against_reference(isa, cfg, n, 4, seed++);
    }
  }
}

TEST(CpuAdamTest, LongRunsAndLargeOddLengths) {
  std::uint64_t seed = 1000;
  for (Isa isa : available_isas()) {
    for (Algorithm a : {Algorithm::kAdam, Algorithm::kAdagrad, Algorithm::kLion}) {
      check_against_reference(isa, {a, Dtype::kF32, Dtype::kF32, Dtype::kF32}, 2000003, 2, seed++);
      check_against_reference(isa, {a, Dtype::kBF16, Dtype::kF32, Dtype::kBF16}, 65537, 20, seed++);
    }
  }
}

TEST(CpuAdamTest, BiasCorrectionOff) {
  for (Isa isa : available_isas()) {
    auto e = executor(isa, 1);
    std::vector<float> p = {1.0f}, g = {0.5f}, m = {0.0f}, v = {0.0f};
    Hyper h;
    h.bias_correction = false;
    ASSERT_TRUE(e->step(h, 1,
                        {p.data(), Dtype::kF32, g.data(), Dtype::kF32, m.data(), v.data(),
                         Dtype::kF32, nullptr, Dtype::kF16, 1})
                    .is_ok());
    const double m1 = 0.1 * 0.5, v1 = 0.001 * 0.25;
    EXPECT_NEAR(p[0], 1.0 - 1e-3 * m1 / (std::sqrt(v1) + 1e-8), 1e-7);
  }
}

// The same data through every ISA: the kernels perform the same IEEE
// operations in the same order, so the results are identical bit for bit.
TEST(CpuAdamTest, IsasAgreeBitForBit) {
  const auto isas = available_isas();
  for (const Config& cfg : all_configs()) {
    std::vector<std::vector<std::byte>> outputs;
    for (Isa isa : isas) {
      auto e = executor(isa);
      const std::size_t n = 70001;
      std::mt19937_64 rng(7);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      Array p(cfg.param, n), g(cfg.grad, n), m(cfg.state, n), v(cfg.state, n), copy(Dtype::kF16, n);
      std::vector<float> tmp(n);
      for (auto& x : tmp) x = normal(rng);
      encode(*e, tmp, p);
      encode(*e, tmp, g);
      for (auto& x : tmp) x = std::abs(x) * 0.01f;
      encode(*e, tmp, m);
      encode(*e, tmp, v);
      Hyper h;
      h.algorithm = cfg.algorithm;
      h.weight_decay = 0.1f;
      for (int s = 1; s <= 3; ++s) {
        ASSERT_TRUE(e->step(h, s,
                            {p.data(), cfg.param, g.data(), cfg.grad, m.data(), v.data(), cfg.state,
                             copy.data(), Dtype::kF16, n},
                            0.25f)
                        .is_ok());
      }
      std::vector<std::byte> all;
      for (Array* a : {&p, &m, &v, &copy}) {
        const auto* b = static_cast<const std::byte*>(a->data());
        all.insert(all.end(), b, b + a->size() * size_of(a->dtype));
      }
      outputs.push_back(std::move(all));
    }
    for (std::size_t i = 1; i < outputs.size(); ++i) {
      EXPECT_TRUE(outputs[i] == outputs[0])
          << to_string(isas[i]) << " differs from " << to_string(isas[0]) << " for "
          << to_string(cfg.algorithm) << " " << to_string(cfg.param) << "/" << to_string(cfg.state)
          << " grad " << to_string(cfg.grad);
    }
  }
}

// Buffers that are only element aligned (as tensor slices are), at an odd
// length, give the same result as 64-byte aligned ones.
TEST(CpuAdamTest, UnalignedBuffersWork) {
  for (Isa isa : available_isas()) {
    auto e = executor(isa);
    const std::size_t n = 50001;
    std::vector<float> p0(n), g(n);
    std::mt19937_64 rng(9);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (std::size_t i = 0; i < n; ++i) {
      p0[i] = normal(rng);
      g[i] = normal(rng);
    }
    auto run = [&](std::size_t shift) {
      std::vector<float> mem(5 * n + 64);
      auto* p = reinterpret_cast<float*>(reinterpret_cast<std::byte*>(mem.data()) + shift);
      auto* m = p + n;
      auto* v = m + n;
      auto* gr = v + n;
      auto* out = reinterpret_cast<std::uint16_t*>(gr + n);
      std::memcpy(p, p0.data(), 4 * n);
      std::memset(m, 0, 8 * n);
      std::memcpy(gr, g.data(), 4 * n);
      EXPECT_TRUE(
          e->step(Hyper{}, 1,
                  {p, Dtype::kF32, gr, Dtype::kF32, m, v, Dtype::kF32, out, Dtype::kBF16, n})
              .is_ok());
      std::vector<std::byte> result(reinterpret_cast<std::byte*>(p),
                                    reinterpret_cast<std::byte*>(out + n));
      return result;
    };
    EXPECT_EQ(run(0), run(4)) << to_string(isa);
    EXPECT_EQ(run(0), run(36)) << to_string(isa);
  }
}

TEST(CpuAdamTest, GradStatsSumOfSquaresAndFiniteness) {
  for (Isa isa : available_isas()) {
    auto e = executor(isa);
    for (Dtype d : {Dtype::kF32, Dtype::kF16, Dtype::kBF16}) {
      const std::size_t n = 100003;
      std::vector<float> values(n);
      std::mt19937_64 rng(3);
      std::normal_distribution<float> normal(0.0f, 2.0f);
      for (auto& x : values) x = normal(rng);
      Array a(d, n);
      encode(*e, values, a);
      double expected = 0;
      for (double x : decode(a)) expected += x * x;
      auto stats = e->grad_stats(a.data(), d, n);
      ASSERT_TRUE(stats.is_ok());
      EXPECT_TRUE(stats->finite);
      EXPECT_NEAR(stats->sq_norm, expected,
                  1e-12 * expected);  // double accumulation, order differs
      for (float bad : {INFINITY, -INFINITY, NAN}) {
        values[n / 2] = bad;
        encode(*e, values, a);
        auto s = e->grad_stats(a.data(), d, n);
        ASSERT_TRUE(s.is_ok());
        EXPECT_FALSE(s->finite) << to_string(isa) << " " << to_string(d) << " " << bad;
      }
    }
  }
}

TEST(CpuAdamTest, BadInputIsAnErrorAndWritesNothing) {
  auto e = executor(best_isa());
  std::vector<float> p(100, 1.0f), g(100, 1.0f), m(100, 2.0f), v(100, 3.0f);
  const auto p0 = p, m0 = m, v0 = v;
  Buffers b{p.data(), Dtype::kF32, g.data(), Dtype::kF32, m.data(),
            v.data(), Dtype::kF32, nullptr,  Dtype::kF16, 100};
  auto expect_rejected = [&](Hyper h, std::int64_t step, Buffers buf, float gs,
                             const char* needle) {
    Status s = e->step(h, step, buf, gs);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
    EXPECT_EQ(p, p0);
    EXPECT_EQ(m, m0);
    EXPECT_EQ(v, v0);
  };
  Hyper h;
  expect_rejected(h, 0, b, 1.0f, "step must be >= 1");
  Hyper bad_lr = h;
  bad_lr.lr = NAN;
  expect_rejected(bad_lr, 1, b, 1.0f, "lr");
  Hyper bad_beta = h;
  bad_beta.beta2 = 1.0f;
  expect_rejected(bad_beta, 1, b, 1.0f, "beta2 must be in [0, 1)");
  expect_rejected(h, 1, b, INFINITY, "grad_scale");
  Buffers no_m = b;
  no_m.exp_avg = nullptr;
  expect_rejected(h, 1, no_m, 1.0f, "exp_avg is null");
  Buffers pair = b;
  pair.param_dtype = Dtype::kF16;
  pair.state_dtype = Dtype::kBF16;
  expect_rejected(h, 1, pair, 1.0f, "unsupported (param, state) precision pair (f16, bf16)");
}

TEST(CpuAdamTest, IsaFromEnvironment) {
  ::setenv("ZINF_CPU_ISA", "scalar", 1);
  auto isa = isa_from_environment();
  ASSERT_TRUE(isa.is_ok());
  EXPECT_EQ(*isa, Isa::kScalar);
  ::setenv("ZINF_CPU_ISA", "sse9", 1);
  EXPECT_EQ(isa_from_environment().status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Executor::create(1).status().code(), StatusCode::kInvalidArgument);
  for (Isa missing : {Isa::kAvx2, Isa::kAvx512}) {
    if (isa_available(missing)) continue;
    ::setenv("ZINF_CPU_ISA", std::string(to_string(missing)).c_str(), 1);
    EXPECT_EQ(isa_from_environment().status().code(), StatusCode::kUnavailable);
  }
  ::unsetenv("ZINF_CPU_ISA");
  EXPECT_EQ(*isa_from_environment(), best_isa());
}

}  // namespace
}  // namespace zinf::cpu_adam
