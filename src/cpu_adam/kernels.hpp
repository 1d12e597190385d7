// The per-ISA kernel tables (private to cpu_adam). Each ISA translation unit
// (kernels_scalar.cpp, kernels_avx2.cpp, kernels_avx512.cpp) compiles the one
// generic body in kernel_body.inc with its own vector type and fills a
// KernelTable; cpu_adam.cpp picks the table at run time.
#pragma once

#include <cstddef>

#include "zinf/cpu_adam/cpu_adam.hpp"

namespace zinf::cpu_adam {

// Everything the update needs besides the arrays, computed once per step.
struct StepConsts {
  float grad_scale = 1.0f;
  float lr = 0.0f;
  float beta1 = 0.0f;
  float beta2 = 0.0f;
  float one_minus_beta1 = 1.0f;
  float one_minus_beta2 = 1.0f;
  float eps = 0.0f;
  float weight_decay = 0.0f;
  float decay = 1.0f;         // 1 - lr * weight_decay (decoupled decay)
  float step_size = 0.0f;     // Adam: lr / (1 - beta1^t) (lr without bias correction)
  float inv_sqrt_bc2 = 1.0f;  // Adam: 1 / sqrt(1 - beta2^t)
  bool l2 = false;            // add weight_decay * p to the gradient
  bool decoupled = false;     // multiply p by `decay` first
};

struct KernelTable {
  // In-place fp32 updates of n elements. The gradient is read in its own
  // dtype; when `out` is not null the updated p is also written there in
  // `out_dtype`. Both conversions happen in registers, inside the one pass.
  void (*adam)(const StepConsts&, float* p, const void* g, Dtype g_dtype, float* m, float* v,
               void* out, Dtype out_dtype, std::size_t n);
  void (*adagrad)(const StepConsts&, float* p, const void* g, Dtype g_dtype, float* v, void* out,
                  Dtype out_dtype, std::size_t n);
  void (*lion)(const StepConsts&, float* p, const void* g, Dtype g_dtype, float* m, void* out,
               Dtype out_dtype, std::size_t n);
  // Conversions to and from fp32, round-to-nearest-even, NaN kept.
  void (*to_f32)(Dtype from, const void* in, float* out, std::size_t n);
  void (*from_f32)(Dtype to, const float* in, void* out, std::size_t n);
  // Sum of squares in double, and whether every value is finite.
  double (*sum_squares)(const float* x, std::size_t n, bool* finite);
};

const KernelTable& scalar_kernels();
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();

}  // namespace zinf::cpu_adam
