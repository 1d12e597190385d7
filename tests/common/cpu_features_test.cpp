#include "zinf/common/cpu_features.hpp"

#include <gtest/gtest.h>

namespace zinf {
namespace {

TEST(CpuFeaturesTest, ImpliedFeaturesAreConsistent) {
  const CpuFeatures& f = cpu_features();
  // Each extension needs its base: a detector that reports otherwise is wrong.
  if (f.avx512bw || f.avx512vl || f.avx512dq || f.avx512_bf16) {
    EXPECT_TRUE(f.avx512f);
  }
  if (f.avx512f) {
    EXPECT_TRUE(f.avx2);
  }
  EXPECT_EQ(&f, &cpu_features());
  EXPECT_FALSE(f.to_string().empty());
}

TEST(CpuFeaturesTest, MatchesCompilerBuiltins) {
  const CpuFeatures& f = cpu_features();
  __builtin_cpu_init();
  EXPECT_EQ(f.avx2, static_cast<bool>(__builtin_cpu_supports("avx2")));
  EXPECT_EQ(f.avx512f, static_cast<bool>(__builtin_cpu_supports("avx512f")));
}

}  // namespace
}  // namespace zinf
