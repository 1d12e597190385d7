// zinf-config check: exit status and output for a good, an ignored-keys and
// a bad config.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "run_shell.hpp"
#include "zinf/common/config.hpp"

namespace {

zinf::test::Job run(const std::string& args) {
  return zinf::test::run_shell(std::string(ZINF_CONFIG_PATH) + " " + args);
}

std::string write(const std::string& name, const std::string& text) {
  const std::string path = std::string(ZINF_TEST_TMP) + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ZinfConfigTest, PrintsEffectiveSettingsThatLoadAgainAndTheIgnoredKeys) {
  const std::string path = write("good.json", R"({"train_batch_size": 8,
    "wall_clock_breakdown": true,
    "zero_optimization": {"stage": 3, "prefetch_bucket_size": 1e7, "contiguous_gradients": true,
                          "offload_optimizer": {"device": "cpu"}}})");
  zinf::test::Job r = run("check " + path + " --world-size 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("valid for 2 ranks"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"stage3_prefetch_bucket_size\": 10000000"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("\"train_micro_batch_size_per_gpu\": 4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("  wall_clock_breakdown ("), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("  zero_optimization.contiguous_gradients ("), std::string::npos)
      << r.output;
  const auto begin = r.output.find("effective settings:\n");
  const auto end = r.output.find("\nignored");
  ASSERT_NE(begin, std::string::npos);
  const std::string settings = r.output.substr(begin + 20, end - begin - 20);
  auto again = zinf::Config::from_string(settings);
  EXPECT_TRUE(again.is_ok()) << again.status().message() << "\n" << settings;
}

TEST(ZinfConfigTest, ABadConfigExitsNonZeroNamingTheKey) {
  const std::string path =
      write("bad.json", R"({"zero_optimization": {"stage": 3, "stage3_max_live_parameters": -1}})");
  zinf::test::Job r = run("check " + path);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + path + ": zero_optimization.stage3_max_live_parameters"),
            std::string::npos)
      << r.output;
  const std::string batch = write("batch.json", R"({"train_batch_size": 30,
    "train_micro_batch_size_per_gpu": 4})");
  r = run("check " + batch);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("train_batch_size (30)"), std::string::npos) << r.output;
  r = run("check /nonexistent/ds.json");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("/nonexistent/ds.json"), std::string::npos) << r.output;
}

}  // namespace
