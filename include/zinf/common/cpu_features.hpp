// Run-time CPU feature detection (cpuid + xgetbv, so a feature the OS does not
// save state for counts as absent). Kernels dispatch on this, never on the
// flags the binary was built with.
#pragma once

#include <string>

namespace zinf {

struct CpuFeatures {
  bool sse42 = false;
  bool pclmul = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512dq = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;
  bool avx512_fp16 = false;
  bool clflushopt = false;
  std::string brand;

  // "avx512f avx512bw ... (AMD Ryzen ...)"
  std::string to_string() const;
};

// Detected once, on first use; thread safe.
const CpuFeatures& cpu_features();

}  // namespace zinf
