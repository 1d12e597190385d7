// DeepSpeed's dynamic loss scaling, on traces worked from its source
// (deepspeed/runtime/fp16/loss_scaler.py; ../shared/REFERENCE-TRAINING.md).
#include "zinf/common/loss_scaler.hpp"

#include <gtest/gtest.h>

#include <string>

namespace zinf {
namespace {

Fp16Config dynamic(int power, int window, int hysteresis) {
  Fp16Config c;
  c.enabled = true;
  c.initial_scale_power = power;
  c.loss_scale_window = window;
  c.hysteresis = hysteresis;
  return c;
}

TEST(LossScalerTest, FollowsDeepSpeedsTrace) {
  // Overflow flags O O . . . . O . O with power 4, window 2, hysteresis 2.
  LossScaler s(dynamic(4, 2, 2));
  EXPECT_DOUBLE_EQ(s.scale(), 16);
  const std::string flags = "OO....O.O";
  const double scales[] = {16, 8, 8, 8, 16, 16, 16, 16, 8};
  const int hysteresis[] = {1, 1, 1, 1, 2, 2, 1, 1, 1};
  for (std::size_t i = 0; i < flags.size(); ++i) {
    ASSERT_TRUE(s.update(flags[i] == 'O').is_ok());
    EXPECT_DOUBLE_EQ(s.scale(), scales[i]) << "after step " << i;
    EXPECT_EQ(s.hysteresis_left(), hysteresis[i]) << "after step " << i;
  }
}

TEST(LossScalerTest, TheFirstDoublingComesAfterTheWindowsFirstStep) {
  LossScaler s(dynamic(16, 1000, 2));
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(s.update(false).is_ok());
  EXPECT_DOUBLE_EQ(s.scale(), 65536) << "steps 0..999 leave 2^16";
  ASSERT_TRUE(s.update(false).is_ok());
  EXPECT_DOUBLE_EQ(s.scale(), 131072) << "step 1000 doubles: step 1001 runs at 2^17";
}

TEST(LossScalerTest, AnOverflowAtTheMinimumIsAnError) {
  Fp16Config c = dynamic(4, 1000, 2);
  c.min_loss_scale = 1;
  LossScaler s(c);
  const double scales[] = {16, 8, 4, 2, 1};
  for (double expected : scales) {
    ASSERT_TRUE(s.update(true).is_ok());
    EXPECT_DOUBLE_EQ(s.scale(), expected);
  }
  Status sixth = s.update(true);
  EXPECT_FALSE(sixth.is_ok());
  EXPECT_NE(sixth.message().find("fp16.min_loss_scale"), std::string::npos) << sixth.message();
  EXPECT_DOUBLE_EQ(s.scale(), 1);
}

TEST(LossScalerTest, ConsecutiveHysteresisRefillsOnEveryCleanStep) {
  Fp16Config c = dynamic(4, 1000, 2);
  c.consecutive_hysteresis = true;
  LossScaler s(c);
  ASSERT_TRUE(s.update(true).is_ok());   // uses up one
  ASSERT_TRUE(s.update(false).is_ok());  // refilled
  ASSERT_TRUE(s.update(true).is_ok());
  EXPECT_DOUBLE_EQ(s.scale(), 16) << "two overflows apart never halve";
}

TEST(LossScalerTest, FixedScaleAndNoFp16NeverChange) {
  Fp16Config fixed;
  fixed.enabled = true;
  fixed.loss_scale = 128;
  LossScaler s(fixed);
  EXPECT_FALSE(s.dynamic());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(s.update(i % 2 == 0).is_ok());
  EXPECT_DOUBLE_EQ(s.scale(), 128);
  LossScaler off(Fp16Config{});
  EXPECT_DOUBLE_EQ(off.scale(), 1);
}

}  // namespace
}  // namespace zinf
