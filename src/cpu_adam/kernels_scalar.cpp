// The portable path: any x86-64 CPU (and any other).
#include "cpu_adam/kernels.hpp"
#include "cpu_adam/scalar_math.hpp"

namespace zinf::cpu_adam {
namespace scalar_isa {

using V = S;

void convert_to_f32(Dtype from, const void* in, float* out, std::size_t n) {
  scalar_to_f32(from, in, out, n);
}
void convert_from_f32(Dtype to, const float* in, void* out, std::size_t n) {
  scalar_from_f32(to, in, out, n);
}

double sum_squares_impl(const float* x, std::size_t n, bool* finite) {
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  *finite = std::isfinite(sum);
  return sum;
}

#include "cpu_adam/kernel_body.inc"

}  // namespace scalar_isa

const KernelTable& scalar_kernels() { return scalar_isa::table(); }

}  // namespace zinf::cpu_adam
