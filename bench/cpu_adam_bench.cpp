// cpu_adam: params/s and effective GB/s of every algorithm and precision
// pair, against two references measured in the same binary:
//   - a bandwidth kernel with fp32 AdamW's streams (read p, g, m, v; write
//     p, m, v: 28 bytes per parameter), the memory roofline;
//   - LibTorch's torch::optim::AdamW::step() on the same sizes.
// Threads: 2 (ZINF_BENCH_THREADS overrides).
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <cstdlib>
#include <cstring>
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
  constexpr std::size_t kTile = 4096;
  const std::size_t tiles = (n + kTile - 1) / kTile;
  for (auto _ : state) {
    arena.execute([&] {
      tbb::parallel_for(
          tbb::blocked_range<std::size_t>(0, tiles),
          [&](const tbb::blocked_range<std::size_t>& r) {
            const std::size_t b = r.begin() * kTile, e = std::min(r.end() * kTile, n);
            (avx512 ? stream_avx512 : stream_portable)(p.as<float>() + b, g.as<float>() + b,
                                                       m.as<float>() + b, v.as<float>() + b, e - b);
          },
          tbb::static_partitioner());
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
#ifdef ZINF_BENCH_WITH_TORCH
  benchmark::RegisterBenchmark("BM_TorchAdamW", BM_TorchAdamW)->Apply(vector_sizes)->Iterations(3);
#endif
}

// Registered before main runs, as BENCHMARK() would.
[[maybe_unused]] const bool kRegistered = (register_all(), true);

}  // namespace

BENCHMARK_MAIN();
