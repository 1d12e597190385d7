#include "zinf/common/cpu_features.hpp"

#include <cpuid.h>

#include <cstdint>
#include <cstring>

namespace zinf {
namespace {

std::uint64_t read_xcr0() {
  std::uint32_t eax = 0;
  std::uint32_t edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return f;
  f.sse42 = (ecx & bit_SSE4_2) != 0;
  f.pclmul = (ecx & bit_PCLMUL) != 0;
  const bool osxsave = (ecx & bit_OSXSAVE) != 0;
  const bool fma = (ecx & bit_FMA) != 0;
  const bool f16c = (ecx & bit_F16C) != 0;
  const std::uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;                 // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM

  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    f.avx2 = os_avx && (ebx & bit_AVX2) != 0;
    f.avx512f = os_avx512 && (ebx & bit_AVX512F) != 0;
    f.avx512bw = os_avx512 && (ebx & bit_AVX512BW) != 0;
    f.avx512dq = os_avx512 && (ebx & bit_AVX512DQ) != 0;
    f.avx512vl = os_avx512 && (ebx & bit_AVX512VL) != 0;
    f.avx512_fp16 = os_avx512 && (edx & (1u << 23)) != 0;
    f.clflushopt = (ebx & (1u << 23)) != 0;
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    f.avx512_bf16 = os_avx512 && (eax & (1u << 5)) != 0;
  }
  f.fma = os_avx && fma;
  f.f16c = os_avx && f16c;

  char brand[49] = {};
  // clang's cpuid.h returns the leaf as int, GCC's as unsigned.
  if (static_cast<unsigned>(__get_cpuid_max(0x80000000, nullptr)) >= 0x80000004u) {
    for (unsigned i = 0; i < 3; ++i) {
      unsigned regs[4];
      __get_cpuid(0x80000002 + i, &regs[0], &regs[1], &regs[2], &regs[3]);
      std::memcpy(brand + 16 * i, regs, sizeof(regs));
    }
  }
  f.brand = brand;
  while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
  return f;
}

}  // namespace

std::string CpuFeatures::to_string() const {
  std::string out;
  auto add = [&out](bool on, const char* name) {
    if (!on) return;
    if (!out.empty()) out += ' ';
    out += name;
  };
  add(sse42, "sse4.2");
  add(pclmul, "pclmul");
  add(avx2, "avx2");
  add(fma, "fma");
  add(f16c, "f16c");
  add(avx512f, "avx512f");
  add(avx512bw, "avx512bw");
  add(avx512dq, "avx512dq");
  add(avx512vl, "avx512vl");
  add(avx512_bf16, "avx512_bf16");
  add(avx512_fp16, "avx512_fp16");
  add(clflushopt, "clflushopt");
  if (!brand.empty()) out += " (" + brand + ")";
  return out;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace zinf
