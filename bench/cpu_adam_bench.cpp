// cpu_adam: params/s and effective GB/s of every algorithm and precision
// pair, against two references measured in the same binary:
//   - a bandwidth kernel with fp32 AdamW's streams (read p, g, m, v; write
//     p, m, v: 28 bytes per parameter), the memory roofline;
//   - LibTorch's torch::optim::AdamW::step() on the same sizes;
// and the mixed-precision step (norm, overflow check, unscale, clip, AdamW,
// fp16/bf16 copy-out) fused as zinf runs it against DeepSpeed's separate passes.
// Threads: 2 (ZINF_BENCH_THREADS overrides).
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "zinf/common/aligned.hpp"
#include "zinf/common/cpu_features.hpp"
#include "zinf/cpu_adam/cpu_adam.hpp"
#ifdef ZINF_BENCH_WITH_TORCH
#include <torch/torch.h>
#endif

namespace {

using namespace zinf;
using namespace zinf::cpu_adam;

int threads() {
  const char* env = std::getenv("ZINF_BENCH_THREADS");
  return env ? std::atoi(env) : 2;
}

AlignedBuffer buffer(std::size_t n, std::size_t elem, float value) {
  auto b = AlignedBuffer::allocate(n * elem);
  if (elem == 4) {
    std::fill_n(b->as<float>(), n, value);
  } else {
    std::memset(b->data(), 0x3c, n * elem);  // 1.0-ish in both fp16 and bf16
  }
  return std::move(*b);
}

struct Case {
  Algorithm algorithm;
  Dtype param, state, grad;
  bool copy_out;
  float grad_scale;
};

double bytes_per_param(const Case& c) {
  const double p = static_cast<double>(size_of(c.param)), s = static_cast<double>(size_of(c.state));
  const double states = c.algorithm == Algorithm::kAdam ? 2 : 1;
  return 2 * p + static_cast<double>(size_of(c.grad)) + 2 * s * states + (c.copy_out ? 2 : 0);
}

void step_benchmark(benchmark::State& state, Case c) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto exec = Executor::create(threads());
  if (!exec.is_ok()) return state.SkipWithError(exec.status().to_string().c_str());
  AlignedBuffer p = buffer(n, size_of(c.param), 1.0f), g = buffer(n, size_of(c.grad), 0.01f),
                m = buffer(n, size_of(c.state), 0.0f), v = buffer(n, size_of(c.state), 0.0f),
                out = buffer(n, 2, 0.0f);
  Buffers b{p.data(),     c.param,  g.data(), c.grad,
            m.data(),     v.data(), c.state,  c.copy_out ? out.data() : nullptr,
            Dtype::kBF16, n};
  Hyper h;
  h.algorithm = c.algorithm;
  h.weight_decay = 0.01f;
  std::int64_t t = 0;
  for (auto _ : state) {
    Status s = (*exec)->step(h, ++t, b, c.grad_scale);
    if (!s.is_ok()) return state.SkipWithError(s.to_string().c_str());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(
      static_cast<std::int64_t>(static_cast<double>(state.iterations() * n) * bytes_per_param(c)));
  state.SetLabel(std::string(to_string((*exec)->isa())));
}

// Runs fn(begin, end) over [0, n) on the arena's threads, cut at the Executor's tile size
// with a static partitioner, as the Executor cuts its own passes.
template <typename Fn>
void parallel_tiles(tbb::task_arena& arena, std::size_t n, const Fn& fn) {
  constexpr std::size_t kTile = 4096;
  const std::size_t tiles = (n + kTile - 1) / kTile;
  arena.execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<std::size_t>(0, tiles),
        [&](const tbb::blocked_range<std::size_t>& r) {
          fn(r.begin() * kTile, std::min(r.end() * kTile, n));
        },
        tbb::static_partitioner());
  });
}

// The roofline: fp32 AdamW's seven streams with trivial arithmetic.
__attribute__((target("avx512f"))) void stream_avx512(float* p, const float* g, float* m, float* v,
                                                      std::size_t n) {
  const __m512 c = _mm512_set1_ps(0.5f);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 G = _mm512_loadu_ps(g + i);
    _mm512_storeu_ps(m + i, _mm512_fmadd_ps(G, c, _mm512_loadu_ps(m + i)));
    _mm512_storeu_ps(v + i, _mm512_fmadd_ps(G, G, _mm512_loadu_ps(v + i)));
    _mm512_storeu_ps(p + i, _mm512_fnmadd_ps(G, c, _mm512_loadu_ps(p + i)));
  }
  for (; i < n; ++i) {
    m[i] += g[i] * 0.5f;
    v[i] += g[i] * g[i];
    p[i] -= g[i] * 0.5f;
  }
}

void stream_portable(float* p, const float* g, float* m, float* v, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    m[i] += g[i] * 0.5f;
    v[i] += g[i] * g[i];
    p[i] -= g[i] * 0.5f;
  }
}

void BM_BandwidthRoofline(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  AlignedBuffer p = buffer(n, 4, 1.0f), g = buffer(n, 4, 0.01f), m = buffer(n, 4, 0.0f),
                v = buffer(n, 4, 0.0f);
  tbb::task_arena arena(threads());
  const bool avx512 = zinf::cpu_features().avx512f;
  for (auto _ : state) {
    parallel_tiles(arena, n, [&](std::size_t b, std::size_t e) {
      (avx512 ? stream_avx512 : stream_portable)(p.as<float>() + b, g.as<float>() + b,
                                                 m.as<float>() + b, v.as<float>() + b, e - b);
    });
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 28));
}

#ifdef ZINF_BENCH_WITH_TORCH
void BM_TorchAdamW(benchmark::State& state) {
  const auto n = state.range(0);
  torch::set_num_threads(threads());
  auto p = torch::ones({n}).requires_grad_();
  p.mutable_grad() = torch::full({n}, 0.01f);
  torch::optim::AdamW opt({p}, torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
  for (auto _ : state) opt.step();
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 28);
}
#endif

// The mixed-precision step, fused as zinf runs it, against the same work in DeepSpeed's
// separate passes. Per step, for fp32 master weights and Adam moments with fp16 (or bf16)
// gradients and parameters: the gradients' global norm and inf/nan check, the unscale by the
// loss scale, the clip by the global norm, AdamW, and the copy of the updated master into the
// fp16 parameters. Bytes per parameter are those each sequence must move:
//   fused (zinf), 2 passes, 30 bytes: Executor::grad_stats, the sum of squares and the
//     finiteness in one read (g: 2); Executor::step with grad_scale = clip / loss_scale and the
//     copy written by the kernel (reads g, p, m, v: 14; writes p, m, v, copy: 14).
//   separate (DeepSpeed's ZeRO stage 1/2 order), 5 passes, 44 bytes: the inf/nan check (g: 2);
//     the norm (grad_stats, g: 2); unscale and clip into an fp32 gradient, as DeepSpeed keeps
//     fp32 gradient partitions (g in, g32 out: 6); the update with grad_scale 1 and no copy
//     (28); the copy (Executor::convert: p in, copy out: 6).
// Both use one Executor with its threads. The two passes it has no primitive for are AVX-512
// loops below, cut into the same oneTBB tiles, so that the sequences differ in passes over
// memory, not in vector width or threading.
enum class Sequence { kFused, kSeparate };

double bytes_per_param(Sequence sequence) { return sequence == Sequence::kFused ? 30 : 44; }

// An fp16 or bf16 value is inf or nan when its exponent bits (`exponent`) are all ones.
__attribute__((target("avx512f,avx512bw,avx512vl"))) bool all_finite_avx512(const std::uint16_t* g,
                                                                            std::uint16_t exponent,
                                                                            std::size_t n) {
  const __m512i e = _mm512_set1_epi16(static_cast<short>(exponent));
  __mmask32 overflow = 0;
  for (std::size_t i = 0; i < n; i += 32) {
    const auto lanes = static_cast<__mmask32>(n - i >= 32 ? ~0u : (1u << (n - i)) - 1);
    const __m512i x = _mm512_maskz_loadu_epi16(lanes, g + i);
    overflow |= _mm512_mask_cmpeq_epi16_mask(lanes, _mm512_and_si512(x, e), e);
  }
  return overflow == 0;
}

// out = g * scale, g read as fp16 or bf16.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void unscale_to_f32_avx512(
    const std::uint16_t* g, Dtype dtype, float scale, float* out, std::size_t n) {
  const __m512 s = _mm512_set1_ps(scale);
  for (std::size_t i = 0; i < n; i += 16) {
    const auto lanes = static_cast<__mmask16>(n - i >= 16 ? 0xffffu : (1u << (n - i)) - 1);
    const __m256i h = _mm256_maskz_loadu_epi16(lanes, g + i);
    // Masked forms throughout: GCC 12's unmasked ones trip -Wmaybe-uninitialized (bug 105593).
    const __m512 x = dtype == Dtype::kF16 ? _mm512_maskz_cvtph_ps(lanes, h)
                                          : _mm512_castsi512_ps(_mm512_maskz_slli_epi32(
                                                lanes, _mm512_maskz_cvtepu16_epi32(lanes, h), 16));
    _mm512_mask_storeu_ps(out + i, lanes, _mm512_mul_ps(x, s));
  }
}

// Values in [-1, 1) that differ from element to element (a multiplicative hash of the index),
// so that the agreement check compares many different values.
float spread(std::size_t i) {
  const auto h = static_cast<std::uint32_t>(i * 2654435761u);
  return static_cast<float>(h >> 8) * 0x1p-23f - 1.0f;
}

// Units in the last place between two fp16 (or two bf16) values: both are sign and magnitude.
int ulp_distance(std::uint16_t a, std::uint16_t b) {
  const auto ordered = [](std::uint16_t x) {
    const int magnitude = x & 0x7fff;
    return (x & 0x8000) != 0 ? -magnitude : magnitude;
  };
  return std::abs(ordered(a) - ordered(b));
}

Status overflowed() {
  return Status::internal("a gradient is inf or nan (the benchmark's are finite): step skipped");
}

// The buffers of one step and both sequences over them. `dtype` is that of the gradients and
// of the parameter copy.
class MixedPrecisionStep {
 public:
  static constexpr double kLossScale = 1024;
  static constexpr double kMaxNorm = 1;

  MixedPrecisionStep(Executor& exec, std::size_t n, Dtype dtype)
      : exec_(exec),
        arena_(exec.threads()),
        n_(n),
        dtype_(dtype),
        master_(buffer(n, 4, 0.0f)),
        exp_avg_(buffer(n, 4, 0.0f)),
        exp_avg_sq_(buffer(n, 4, 0.0f)),
        grads_(buffer(n, 2, 0.0f)),
        params_(buffer(n, 2, 0.0f)),
        grads_f32_(buffer(n, 4, 0.0f)) {
    hyper_.weight_decay = 0.01f;
  }

  // The state before the first step: master weights in [0.5, 1.5), zero moments and copy,
  // gradients (times the loss scale) in [-0.01, 0.01): a norm of about 47 at 64M, so the clip
  // applies.
  Status reset() {
    float* g32 = grads_f32_.as<float>();
    float* master = master_.as<float>();
    for (std::size_t i = 0; i < n_; ++i) {
      g32[i] = static_cast<float>(kLossScale) * 0.01f * spread(i);
      master[i] = 1.0f + 0.5f * spread(n_ + i);
    }
    std::fill_n(exp_avg_.as<float>(), n_, 0.0f);
    std::fill_n(exp_avg_sq_.as<float>(), n_, 0.0f);
    std::fill_n(params_.as<std::uint16_t>(), n_, 0);  // so that a missed copy shows
    return exec_.convert(g32, grads_.data(), dtype_, n_);
  }

  Status run(Sequence sequence, std::int64_t step) {
    return sequence == Sequence::kFused ? fused(step) : separate(step);
  }

  // One step of each sequence from the same state must give the same parameter copy, to within
  // one unit in the last place, and the same first moments, to within 1e-6 relative: the two
  // clip formulas round their multiplier apart. The moments carry the unscale and the clip,
  // which Adam's update itself cancels (m / sqrt(v) does not change when every gradient is
  // scaled alike), so a wrong multiplier would not show in the parameters.
  Status check_agreement() {
    ZINF_RETURN_IF_ERROR(reset());
    ZINF_RETURN_IF_ERROR(fused(1));
    const auto* params = params_.as<std::uint16_t>();
    const float* exp_avg = exp_avg_.as<float>();
    const std::vector<std::uint16_t> fused_params(params, params + n_);
    const std::vector<float> fused_exp_avg(exp_avg, exp_avg + n_);
    ZINF_RETURN_IF_ERROR(reset());
    ZINF_RETURN_IF_ERROR(separate(1));
    for (std::size_t i = 0; i < n_; ++i) {
      const int ulps = ulp_distance(fused_params[i], params[i]);
      const float moment_diff = std::abs(fused_exp_avg[i] - exp_avg[i]);
      if (ulps > 1 || moment_diff > 1e-6f * std::abs(fused_exp_avg[i])) {
        std::ostringstream why;
        why << "fused and separate steps differ at element " << i << ": parameter copies " << ulps
            << " ulps apart, exp_avg " << fused_exp_avg[i] << " and " << exp_avg[i];
        return Status::internal(why.str());
      }
    }
    return Status::ok();
  }

 private:
  Status fused(std::int64_t step) {
    ZINF_ASSIGN_OR_RETURN(const GradStats stats, exec_.grad_stats(grads_.data(), dtype_, n_));
    if (!stats.finite) return overflowed();
    // As zinf's engine: min(1, max_norm / (norm + 1e-6)), fused with the unscale.
    const double norm = std::sqrt(stats.sq_norm) / kLossScale;
    const double clip = std::min(1.0, kMaxNorm / (norm + 1e-6));
    const Buffers b{master_.data(),     Dtype::kF32, grads_.data(),  dtype_, exp_avg_.data(),
                    exp_avg_sq_.data(), Dtype::kF32, params_.data(), dtype_, n_};
    return exec_.step(hyper_, step, b, static_cast<float>(clip / kLossScale));
  }

  Status separate(std::int64_t step) {
    const auto* g = grads_.as<std::uint16_t>();
    const std::uint16_t exponent = dtype_ == Dtype::kF16 ? 0x7c00 : 0x7f80;
    std::atomic<bool> overflow{false};
    parallel_tiles(arena_, n_, [&](std::size_t begin, std::size_t end) {
      if (!all_finite_avx512(g + begin, exponent, end - begin)) {
        overflow.store(true, std::memory_order_relaxed);
      }
    });
    if (overflow) return overflowed();
    // The norm pass. grad_stats also reports finiteness, which DeepSpeed checks in a pass of
    // its own, above.
    ZINF_ASSIGN_OR_RETURN(const GradStats stats, exec_.grad_stats(g, dtype_, n_));
    // DeepSpeed's unscale_and_clip_grads: one divisor from the scaled norm.
    const double clip = (std::sqrt(stats.sq_norm) / kLossScale + 1e-6) / kMaxNorm;
    const double combined = clip > 1 ? clip * kLossScale : kLossScale;
    const auto scale = static_cast<float>(1 / combined);
    float* g32 = grads_f32_.as<float>();
    parallel_tiles(arena_, n_, [&](std::size_t begin, std::size_t end) {
      unscale_to_f32_avx512(g + begin, dtype_, scale, g32 + begin, end - begin);
    });
    const Buffers b{master_.data(),     Dtype::kF32, g32,     Dtype::kF32, exp_avg_.data(),
                    exp_avg_sq_.data(), Dtype::kF32, nullptr, dtype_,      n_};
    ZINF_RETURN_IF_ERROR(exec_.step(hyper_, step, b));
    return exec_.convert(master_.as<float>(), params_.data(), dtype_, n_);
  }

  Executor& exec_;
  tbb::task_arena arena_;
  std::size_t n_;
  Dtype dtype_;
  Hyper hyper_;
  AlignedBuffer master_, exp_avg_, exp_avg_sq_;
  AlignedBuffer grads_, params_;  // in `dtype_`
  AlignedBuffer grads_f32_;       // the separate sequence's fp32 gradients
};

void mixed_step_benchmark(benchmark::State& state, Dtype dtype, Sequence sequence) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto exec = Executor::create(threads());
  if (!exec.is_ok()) return state.SkipWithError(exec.status().to_string().c_str());
  if ((*exec)->isa() != Isa::kAvx512) {
    return state.SkipWithError("the separate passes are written for AVX-512, the Executor's ISA");
  }
  MixedPrecisionStep step(**exec, n, dtype);
  if (Status s = step.check_agreement(); !s.is_ok()) {
    return state.SkipWithError(s.to_string().c_str());
  }
  std::int64_t t = 1;
  for (auto _ : state) {
    Status s = step.run(sequence, ++t);
    if (!s.is_ok()) return state.SkipWithError(s.to_string().c_str());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<double>(state.iterations() * n) *
                                                    bytes_per_param(sequence)));
  state.SetLabel(std::string(to_string((*exec)->isa())));
}

// Every benchmark here runs at 1M, 16M and 64M elements, timed by the wall clock.
void vector_sizes(benchmark::internal::Benchmark* b) {
  b->Arg(1 << 20)->Arg(16 << 20)->Arg(64 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);
}

void register_all() {
  const std::pair<Dtype, Dtype> pairs[] = {{Dtype::kF32, Dtype::kF32},
                                           {Dtype::kF16, Dtype::kF32},
                                           {Dtype::kBF16, Dtype::kF32},
                                           {Dtype::kF16, Dtype::kF16},
                                           {Dtype::kBF16, Dtype::kBF16}};
  for (Algorithm a : {Algorithm::kAdam, Algorithm::kAdagrad, Algorithm::kLion}) {
    for (auto [param, st] : pairs) {
      const Dtype grad = param;  // gradients arrive in the parameter's precision
      const std::string name = "BM_Step/" + std::string(to_string(a)) + "/p_" +
                               std::string(to_string(param)) + "/s_" + std::string(to_string(st)) +
                               "/g_" + std::string(to_string(grad));
      benchmark::RegisterBenchmark(name.c_str(), step_benchmark,
                                   Case{a, param, st, grad, false, 1.0f})
          ->Apply(vector_sizes);
    }
  }
  // The bar: fp32 AdamW, and the same update fed bf16 gradients with the
  // unscale fused and a bf16 copy of the parameters written (same bytes).
  benchmark::RegisterBenchmark(
      "BM_AdamW_fp32", step_benchmark,
      Case{Algorithm::kAdam, Dtype::kF32, Dtype::kF32, Dtype::kF32, false, 1.0f})
      ->Apply(vector_sizes);
  benchmark::RegisterBenchmark(
      "BM_AdamW_bf16grad_unscale_copyout", step_benchmark,
      Case{Algorithm::kAdam, Dtype::kF32, Dtype::kF32, Dtype::kBF16, true, 1.0f / 1024})
      ->Apply(vector_sizes);
  benchmark::RegisterBenchmark("BM_BandwidthRoofline", BM_BandwidthRoofline)->Apply(vector_sizes);
  // The mixed-precision step at 64M only, fused and separate side by side.
  for (Dtype dtype : {Dtype::kF16, Dtype::kBF16}) {
    for (auto [sequence, name] :
         {std::pair{Sequence::kFused, "fused"}, std::pair{Sequence::kSeparate, "separate"}}) {
      const std::string full =
          "BM_MixedPrecisionStep/" + std::string(to_string(dtype)) + "/" + name;
      benchmark::RegisterBenchmark(full.c_str(), mixed_step_benchmark, dtype, sequence)
          ->Arg(64 << 20)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
#ifdef ZINF_BENCH_WITH_TORCH
  benchmark::RegisterBenchmark("BM_TorchAdamW", BM_TorchAdamW)->Apply(vector_sizes)->Iterations(3);
#endif
}

// Registered before main runs, as BENCHMARK() would.
[[maybe_unused]] const bool kRegistered = (register_all(), true);

}  // namespace

BENCHMARK_MAIN();
