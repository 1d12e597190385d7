// AVX-512 (F, BW, VL, DQ) with native bf16 conversion (AVX512_BF16) where the
// CPU has it. Compiled with those flags; called only on CPUs that have
// AVX-512F/BW/VL/DQ; the bf16 instruction is used only after a run-time check.
#include <immintrin.h>

#include "cpu_adam/kernels.hpp"
#include "cpu_adam/scalar_math.hpp"
#include "zinf/common/cpu_features.hpp"

namespace zinf::cpu_adam {
namespace avx512_isa {

// Without AVX512_BF16: the same round-to-nearest-even in integer arithmetic.
__m256i bf16_round_integer(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, quiet);
  return _mm512_cvtepi32_epi16(r);
}

__m256i bf16_round_native(__m512 x) {
  const __m256bh h = _mm512_cvtneps_pbh(x);
  __m256i out;
  static_assert(sizeof(h) == sizeof(out));
  std::memcpy(&out, &h, sizeof(out));
  return out;
}

// Read once: whether this CPU converts to bf16 natively.
const bool kNativeBf16 = cpu_features().avx512_bf16;

struct V {
  using T = __m512;
  static constexpr std::size_t kWidth = 16;
  static __m512 load_f16(const std::uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 load_bf16(const std::uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static void store_f16(std::uint16_t* p, __m512 x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void store_bf16(std::uint16_t* p, __m512 x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        kNativeBf16 ? bf16_round_native(x) : bf16_round_integer(x));
  }
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
  static __m512 set1(float x) { return _mm512_set1_ps(x); }
  static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
  static __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
  static __m512 fmadd(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
  static __m512 fnmadd(__m512 a, __m512 b, __m512 c) { return _mm512_fnmadd_ps(a, b, c); }
  static __m512 sqrt(__m512 x) { return _mm512_sqrt_ps(x); }
  static __m512 div(__m512 a, __m512 b) { return _mm512_div_ps(a, b); }
  static __m512 sign(__m512 x) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 r =
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ), zero, _mm512_set1_ps(1.0f));
    r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), r, _mm512_set1_ps(-1.0f));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, x);
  }
};

void convert_to_f32(Dtype from, const void* in, float* out, std::size_t n) {
  if (from == Dtype::kF32) return scalar_to_f32(from, in, out, n);
  const auto* src = static_cast<const std::uint16_t*>(in);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, from == Dtype::kF16 ? V::load_f16(src + i) : V::load_bf16(src + i));
  }
  scalar_to_f32(from, src + i, out + i, n - i);
}

void convert_from_f32(Dtype to, const float* in, void* out, std::size_t n) {
  if (to == Dtype::kF32) return scalar_from_f32(to, in, out, n);
  auto* dst = static_cast<std::uint16_t*>(out);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(in + i);
    if (to == Dtype::kF16) {
      V::store_f16(dst + i, x);
    } else {
      V::store_bf16(dst + i, x);
    }
  }
  scalar_from_f32(to, in + i, dst + i, n - i);
}

double sum_squares_impl(const float* x, std::size_t n, bool* finite) {
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi =
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    acc0 = _mm512_fmadd_pd(lo, lo, acc0);
    acc1 = _mm512_fmadd_pd(hi, hi, acc1);
  }
  double sum = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
  for (; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  *finite = std::isfinite(sum);
  return sum;
}

#include "cpu_adam/kernel_body.inc"

}  // namespace avx512_isa

const KernelTable& avx512_kernels() { return avx512_isa::table(); }

}  // namespace zinf::cpu_adam
