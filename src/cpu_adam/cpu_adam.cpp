// Executor: validation, per-step constants, tiling and oneTBB parallelism
// around the per-ISA kernels.
//
// Work is cut into tiles of kTile elements. Gradients are read and the
// copy-out written in their own dtypes inside the kernel's one pass. A tile
// of an fp16/bf16 parameter or state buffer is widened into an fp32 scratch
// tile on the stack (L1 resident), updated there and narrowed back, so every
// precision pair runs the same fp32 kernel and moves only the bytes it must.
#include "zinf/cpu_adam/cpu_adam.hpp"

#include <tbb/blocked_range.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_reduce.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/sanitizer.hpp"
#include "cpu_adam/kernels.hpp"
#include "zinf/common/cpu_features.hpp"
#include "zinf/common/logging.hpp"

namespace zinf::cpu_adam {
namespace {

constexpr std::size_t kTile = 4096;
// Below this many elements a step runs on the calling thread.
constexpr std::size_t kParallelThreshold = std::size_t{1} << 15;

const KernelTable& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return avx512_kernels();
    case Isa::kAvx2:
      return avx2_kernels();
    case Isa::kScalar:
      break;
  }
  return scalar_kernels();
}

const std::byte* at(const void* base, Dtype dtype, std::size_t index) {
  return static_cast<const std::byte*>(base) + index * size_of(dtype);
}
std::byte* at(void* base, Dtype dtype, std::size_t index) {
  return static_cast<std::byte*>(base) + index * size_of(dtype);
}

// A tile of one buffer as fp32: the buffer itself when it is fp32, else the
// scratch tile, filled on load and narrowed back on commit.
class Fp32Tile {
 public:
  Fp32Tile(const KernelTable& k, void* base, Dtype dtype, std::size_t begin, std::size_t len,
           float* scratch)
      : k_(k), dst_(base == nullptr ? nullptr : at(base, dtype, begin)), dtype_(dtype), len_(len) {
    if (dst_ == nullptr) return;
    if (dtype == Dtype::kF32) {
      data_ = reinterpret_cast<float*>(dst_);
    } else {
      k_.to_f32(dtype, dst_, scratch, len);
      data_ = scratch;
    }
  }
  float* data() const { return data_; }
  void commit() const {
    if (dst_ != nullptr && dtype_ != Dtype::kF32) k_.from_f32(dtype_, data_, dst_, len_);
  }

 private:
  const KernelTable& k_;
  std::byte* dst_;
  Dtype dtype_;
  std::size_t len_;
  float* data_ = nullptr;
};

bool finite(float x) { return std::isfinite(x); }

Status check(bool ok, const std::string& what) {
  return ok ? Status::ok() : Status::invalid_argument("cpu_adam: " + what);
}

Status validate(const Hyper& h, std::int64_t step, const Buffers& b, float grad_scale) {
  ZINF_RETURN_IF_ERROR(check(step >= 1, "step must be >= 1, got " + std::to_string(step)));
  ZINF_RETURN_IF_ERROR(
      check(finite(h.lr) && h.lr >= 0, "lr must be finite and >= 0, got " + std::to_string(h.lr)));
  ZINF_RETURN_IF_ERROR(check(finite(h.eps) && h.eps >= 0,
                             "eps must be finite and >= 0, got " + std::to_string(h.eps)));
  ZINF_RETURN_IF_ERROR(check(finite(h.weight_decay), "weight_decay must be finite"));
  ZINF_RETURN_IF_ERROR(
      check(finite(grad_scale), "grad_scale must be finite, got " + std::to_string(grad_scale)));
  if (h.algorithm != Algorithm::kAdagrad) {
    ZINF_RETURN_IF_ERROR(check(h.beta1 >= 0 && h.beta1 < 1,
                               "beta1 must be in [0, 1), got " + std::to_string(h.beta1)));
    ZINF_RETURN_IF_ERROR(check(h.beta2 >= 0 && h.beta2 < 1,
                               "beta2 must be in [0, 1), got " + std::to_string(h.beta2)));
  }
  const bool pair_ok = b.state_dtype == Dtype::kF32 || b.state_dtype == b.param_dtype;
  ZINF_RETURN_IF_ERROR(
      check(pair_ok, "unsupported (param, state) precision pair (" +
                         std::string(to_string(b.param_dtype)) + ", " +
                         std::string(to_string(b.state_dtype)) +
                         "); supported: (f32|f16|bf16, f32), (f16, f16), (bf16, bf16)"));
  if (b.count == 0) return Status::ok();
  ZINF_RETURN_IF_ERROR(check(b.params != nullptr, "params is null"));
  ZINF_RETURN_IF_ERROR(check(b.grads != nullptr, "grads is null"));
  const bool needs_m = h.algorithm != Algorithm::kAdagrad;
  const bool needs_v = h.algorithm != Algorithm::kLion;
  ZINF_RETURN_IF_ERROR(check(!needs_m || b.exp_avg != nullptr, "exp_avg is null"));
  ZINF_RETURN_IF_ERROR(check(!needs_v || b.exp_avg_sq != nullptr, "exp_avg_sq is null"));
  return Status::ok();
}

StepConsts make_consts(const Hyper& h, std::int64_t step, float grad_scale) {
  StepConsts c;
  c.grad_scale = grad_scale;
  c.lr = h.lr;
  c.beta1 = h.beta1;
  c.beta2 = h.beta2;
  c.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  c.one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
  c.eps = h.eps;
  c.weight_decay = h.weight_decay;
  c.decay = static_cast<float>(1.0 - static_cast<double>(h.lr) * h.weight_decay);
  const auto t = static_cast<double>(step);
  const bool correct = h.bias_correction && h.algorithm == Algorithm::kAdam;
  const double bc1 = correct ? 1.0 - std::pow(static_cast<double>(h.beta1), t) : 1.0;
  const double bc2 = correct ? 1.0 - std::pow(static_cast<double>(h.beta2), t) : 1.0;
  c.step_size = static_cast<float>(h.lr / bc1);
  c.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  switch (h.algorithm) {
    case Algorithm::kAdam:
      c.decoupled = h.adamw_mode && h.weight_decay != 0.0f;
      c.l2 = !h.adamw_mode && h.weight_decay != 0.0f;
      break;
    case Algorithm::kAdagrad:
      c.l2 = h.weight_decay != 0.0f;
      break;
    case Algorithm::kLion:
      c.decoupled = true;
      break;
  }
  if (!c.decoupled) c.decay = 1.0f;
  return c;
}

}  // namespace

std::string_view to_string(Dtype dtype) {
  switch (dtype) {
    case Dtype::kF32:
      return "f32";
    case Dtype::kF16:
      return "f16";
    case Dtype::kBF16:
      return "bf16";
  }
  return "?";
}

std::string_view to_string(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

std::string_view to_string(Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::kAdam:
      return "adam";
    case Algorithm::kAdagrad:
      return "adagrad";
    case Algorithm::kLion:
      return "lion";
  }
  return "?";
}

std::size_t size_of(Dtype dtype) { return dtype == Dtype::kF32 ? 4 : 2; }

bool isa_available(Isa isa) {
  const CpuFeatures& f = cpu_features();
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return avx2;
    case Isa::kAvx512:
      return avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  }
  return false;
}

Isa best_isa() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (isa_available(isa)) return isa;
  }
  return Isa::kScalar;
}

Result<Isa> isa_from_environment() {
  const char* env = std::getenv("ZINF_CPU_ISA");
  if (env == nullptr || *env == '\0') return best_isa();
  const std::string name(env);
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kScalar}) {
    if (name != to_string(isa)) continue;
    if (!isa_available(isa)) {
      return Status::unavailable("ZINF_CPU_ISA=" + name + ": this CPU lacks it (" +
                                 cpu_features().to_string() + ")");
    }
    return isa;
  }
  return Status::invalid_argument("ZINF_CPU_ISA=" + name +
                                  ": unknown (use avx512, avx2 or scalar)");
}

struct Executor::Impl {
  Impl(int n, Isa i)
      : threads(n), isa(i), kernels(kernels_for(i)), arena(n), thread_busy(std::max(1, n)) {}

  // Whether [0, count) is worth splitting over the arena. Never under
  // ThreadSanitizer: oneTBB's scheduler hands tasks over inside its own,
  // uninstrumented library, so TSan would see every tile as a race.
  bool parallel(std::size_t count) const {
    return threads > 1 && count >= kParallelThreshold && !kThreadSanitizer;
  }

  // Runs fn(begin, end) over [0, count) in tiles, in parallel when worth it.
  template <typename Fn>
  void for_tiles(std::size_t count, Fn&& fn) {
    const std::size_t tiles = (count + kTile - 1) / kTile;
    if (!parallel(count)) {
      timed(0, [&] { fn(std::size_t{0}, count); });
      return;
    }
    arena.execute([&] {
      tbb::parallel_for(
          tbb::blocked_range<std::size_t>(0, tiles),
          [&](const tbb::blocked_range<std::size_t>& r) {
            const int slot = tbb::this_task_arena::current_thread_index();
            timed(slot, [&] { fn(r.begin() * kTile, std::min(r.end() * kTile, count)); });
          },
          tbb::static_partitioner());
    });
  }

  // work(), logged on thread slot `slot` when recording.
  template <typename Work>
  void timed(int slot, Work&& work) {
    if (!recording.load(std::memory_order_relaxed)) return work();
    const auto t0 = SteadyClock::now();
    work();
    const auto i = static_cast<std::size_t>(std::max(0, slot));
    thread_busy[std::min(i, thread_busy.size() - 1)].add({t0, SteadyClock::now()});
  }

  void update(const Hyper& h, const StepConsts& c, const Buffers& b, std::size_t begin,
              std::size_t end) const {
    alignas(64) float scratch[3][kTile];
    const KernelTable& k = kernels;
    const bool needs_m = h.algorithm != Algorithm::kAdagrad;
    const bool needs_v = h.algorithm != Algorithm::kLion;
    for (std::size_t t = begin; t < end; t += kTile) {
      const std::size_t len = std::min(kTile, end - t);
      Fp32Tile p(k, b.params, b.param_dtype, t, len, scratch[0]);
      Fp32Tile m(k, needs_m ? b.exp_avg : nullptr, b.state_dtype, t, len, scratch[1]);
      Fp32Tile v(k, needs_v ? b.exp_avg_sq : nullptr, b.state_dtype, t, len, scratch[2]);
      const void* g = at(b.grads, b.grad_dtype, t);
      void* out = b.copy_out == nullptr ? nullptr : at(b.copy_out, b.copy_dtype, t);
      switch (h.algorithm) {
        case Algorithm::kAdam:
          k.adam(c, p.data(), g, b.grad_dtype, m.data(), v.data(), out, b.copy_dtype, len);
          break;
        case Algorithm::kAdagrad:
          k.adagrad(c, p.data(), g, b.grad_dtype, v.data(), out, b.copy_dtype, len);
          break;
        case Algorithm::kLion:
          k.lion(c, p.data(), g, b.grad_dtype, m.data(), out, b.copy_dtype, len);
          break;
      }
      p.commit();
      m.commit();
      v.commit();
    }
  }

  int threads;
  Isa isa;
  const KernelTable& kernels;
  tbb::task_arena arena;
  std::atomic<bool> recording{false};
  std::vector<BusyLog> thread_busy;  // one per thread slot
};

Result<std::unique_ptr<Executor>> Executor::create(int threads, std::optional<Isa> isa) {
  if (threads < 0)
    return Status::invalid_argument("cpu_adam: threads must be >= 0, got " +
                                    std::to_string(threads));
  Isa chosen;
  if (isa) {
    if (!isa_available(*isa)) {
      return Status::unavailable("cpu_adam: ISA " + std::string(to_string(*isa)) +
                                 " is not available on this CPU (" + cpu_features().to_string() +
                                 ")");
    }
    chosen = *isa;
  } else {
    ZINF_ASSIGN_OR_RETURN(chosen, isa_from_environment());
  }
  const int n = threads == 0 ? tbb::info::default_concurrency() : threads;
  ZINF_LOG(kDebug) << "cpu_adam: " << to_string(chosen) << ", " << n << " threads";
  return std::unique_ptr<Executor>(new Executor(std::make_unique<Impl>(n, chosen)));
}

Executor::Executor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

void Executor::record_thread_busy(bool on) { impl_->recording.store(on); }

std::vector<std::vector<Interval>> Executor::take_thread_busy() {
  std::vector<std::vector<Interval>> out;
  for (BusyLog& log : impl_->thread_busy) out.push_back(log.take());
  return out;
}
Executor::~Executor() = default;

Status Executor::step(const Hyper& hyper, std::int64_t step, const Buffers& buffers,
                      float grad_scale) {
  ZINF_RETURN_IF_ERROR(validate(hyper, step, buffers, grad_scale));
  if (buffers.count == 0) return Status::ok();
  const StepConsts c = make_consts(hyper, step, grad_scale);
  impl_->for_tiles(buffers.count, [&](std::size_t begin, std::size_t end) {
    impl_->update(hyper, c, buffers, begin, end);
  });
  return Status::ok();
}

Result<GradStats> Executor::grad_stats(const void* grads, Dtype dtype, std::size_t count) {
  if (count == 0) return GradStats{};
  if (grads == nullptr) return Status::invalid_argument("cpu_adam: grads is null");
  const KernelTable& k = impl_->kernels;
  auto range_stats = [&](std::size_t begin, std::size_t end) {
    alignas(64) float scratch[kTile];
    GradStats s;
    for (std::size_t t = begin; t < end; t += kTile) {
      const std::size_t len = std::min(kTile, end - t);
      const float* x = reinterpret_cast<const float*>(at(grads, dtype, t));
      if (dtype != Dtype::kF32) {
        k.to_f32(dtype, at(grads, dtype, t), scratch, len);
        x = scratch;
      }
      bool tile_finite = true;
      s.sq_norm += k.sum_squares(x, len, &tile_finite);
      s.finite = s.finite && tile_finite;
    }
    return s;
  };
  if (!impl_->parallel(count)) return range_stats(0, count);
  const std::size_t tiles = (count + kTile - 1) / kTile;
  GradStats total;
  impl_->arena.execute([&] {
    total = tbb::parallel_reduce(
        tbb::blocked_range<std::size_t>(0, tiles), GradStats{},
        [&](const tbb::blocked_range<std::size_t>& r, GradStats acc) {
          GradStats s = range_stats(r.begin() * kTile, std::min(r.end() * kTile, count));
          return GradStats{acc.sq_norm + s.sq_norm, acc.finite && s.finite};
        },
        [](GradStats a, GradStats b) {
          return GradStats{a.sq_norm + b.sq_norm, a.finite && b.finite};
        },
        tbb::static_partitioner());
  });
  return total;
}

Status Executor::convert(const float* in, void* out, Dtype out_dtype, std::size_t count) {
  if (count == 0) return Status::ok();
  if (in == nullptr || out == nullptr)
    return Status::invalid_argument("cpu_adam: convert: null buffer");
  impl_->for_tiles(count, [&](std::size_t begin, std::size_t end) {
    impl_->kernels.from_f32(out_dtype, in + begin, at(out, out_dtype, begin), end - begin);
  });
  return Status::ok();
}

Status Executor::accumulate(const void* src, Dtype src_dtype, float* acc, std::size_t count,
                            bool overwrite) {
  if (count == 0) return Status::ok();
  if (src == nullptr || acc == nullptr)
    return Status::invalid_argument("cpu_adam: accumulate: null buffer");
  impl_->for_tiles(count, [&](std::size_t begin, std::size_t end) {
    alignas(64) float scratch[kTile];
    for (std::size_t t = begin; t < end; t += kTile) {
      const std::size_t len = std::min(kTile, end - t);
      const float* x = reinterpret_cast<const float*>(at(src, src_dtype, t));
      if (src_dtype != Dtype::kF32) {
        impl_->kernels.to_f32(src_dtype, at(src, src_dtype, t), scratch, len);
        x = scratch;
      }
      float* out = acc + t;
      if (overwrite) {
        std::copy_n(x, len, out);
      } else {
        for (std::size_t i = 0; i < len; ++i) out[i] += x[i];
      }
    }
  });
  return Status::ok();
}

Isa Executor::isa() const { return impl_->isa; }
int Executor::threads() const { return impl_->threads; }

}  // namespace zinf::cpu_adam
