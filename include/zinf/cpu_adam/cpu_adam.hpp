// CPU optimizer kernels: Adam/AdamW, Adagrad and Lion with DeepSpeed's
// semantics, one fused pass over the parameters at memory bandwidth.
//
// The update pass reads the gradient (fp32, fp16 or bf16), multiplies it by
// `grad_scale` (1/loss_scale times the clipping coefficient), updates the
// parameters and states in place, and optionally writes an fp16/bf16 copy of
// the updated parameters to `copy_out` (the buffer that goes back to the GPU
// or to NVMe). grad_stats() is the separate read pass that decides the
// clipping coefficient and whether the step is skipped.
//
// (param, state) precision pairs: (f32, f32), (f16, f32), (bf16, f32),
// (f16, f16), (bf16, bf16). Rounding to fp16/bf16 is round-to-nearest-even,
// NaN preserved. Any length and any alignment work.
//
// ISA: chosen at run time (AVX-512 with native bf16 conversion where present,
// AVX2+F16C+FMA, scalar); ZINF_CPU_ISA=avx512|avx2|scalar forces one, and a
// forced ISA this CPU lacks is an error.
//
// Threading: an Executor owns a oneTBB task arena of the size it was given;
// one Executor may be used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "zinf/common/busy_time.hpp"
#include "zinf/common/status.hpp"

namespace zinf::cpu_adam {

enum class Dtype : std::uint8_t { kF32, kF16, kBF16 };
enum class Isa : std::uint8_t { kScalar, kAvx2, kAvx512 };
enum class Algorithm : std::uint8_t { kAdam, kAdagrad, kLion };

std::string_view to_string(Dtype dtype);
std::string_view to_string(Isa isa);
std::string_view to_string(Algorithm algorithm);
std::size_t size_of(Dtype dtype);

bool isa_available(Isa isa);
Isa best_isa();
// ZINF_CPU_ISA if set (an unknown name or an ISA this CPU lacks is an error),
// otherwise best_isa().
Result<Isa> isa_from_environment();

struct Hyper {
  Algorithm algorithm = Algorithm::kAdam;
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  bool adamw_mode = true;       // Adam: decoupled weight decay (AdamW) instead of L2
  bool bias_correction = true;  // Adam
};

struct Buffers {
  void* params = nullptr;  // updated in place
  Dtype param_dtype = Dtype::kF32;
  const void* grads = nullptr;
  Dtype grad_dtype = Dtype::kF32;
  void* exp_avg = nullptr;     // Adam: m; Lion: m; Adagrad: unused (may be null)
  void* exp_avg_sq = nullptr;  // Adam: v; Adagrad: the sum of squares; Lion: unused
  Dtype state_dtype = Dtype::kF32;
  void* copy_out = nullptr;  // optional low-precision copy of the updated params
  Dtype copy_dtype = Dtype::kF16;
  std::size_t count = 0;  // elements
};

struct GradStats {
  double sq_norm = 0.0;  // sum of squares (of the unscaled values as stored)
  bool finite = true;    // false if any value is inf or nan
};

class Executor {
 public:
  // threads = 0: every core the process may run on. isa: nullopt = isa_from_environment().
  static Result<std::unique_ptr<Executor>> create(int threads = 0,
                                                  std::optional<Isa> isa = std::nullopt);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // One optimizer update. `step` is the 1-based count of updates including
  // this one (bias correction). Validates the buffers and hyper-parameters
  // first; on error nothing is written.
  Status step(const Hyper& hyper, std::int64_t step, const Buffers& buffers,
              float grad_scale = 1.0f);

  // One read pass over `count` gradients.
  Result<GradStats> grad_stats(const void* grads, Dtype dtype, std::size_t count);

  // Converts `count` fp32 values to fp16/bf16 (or copies fp32), the same
  // rounding as the fused copy-out.
  Status convert(const float* in, void* out, Dtype out_dtype, std::size_t count);

  // Gradient accumulation in fp32: acc = src (overwrite) or acc + src, with
  // src read in its dtype. Addition in fp32, in element order, as LibTorch's
  // `grad += g` on fp32 gradients.
  Status accumulate(const void* src, Dtype src_dtype, float* acc, std::size_t count,
                    bool overwrite);

  Isa isa() const;
  int threads() const;

  // For a timeline: while on, each thread of the executor logs when it ran
  // the tiled kernels (step, convert, accumulate; not grad_stats). Off by
  // default. take_thread_busy() returns each thread slot's busy periods
  // since the last call (slot 0: the arena's first thread, or the caller
  // when the work was not split).
  void record_thread_busy(bool on);
  std::vector<std::vector<Interval>> take_thread_busy();

 private:
  struct Impl;
  explicit Executor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace zinf::cpu_adam
