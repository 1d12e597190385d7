// zinf-config check: exit status and output for a good, an ignored-keys and
// a bad config.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "zinf/common/config.hpp"

namespace {

struct Result {
  int status = -1;
  std::string out;  // stdout and stderr
};

Result run(const std::string& args) {
  Result r;
  FILE* pipe = ::popen((std::string(ZINF_CONFIG_PATH) + " " + args + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.out.append(buf, n);
  const int raw = ::pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return r;
}

std::string write(const std::string& name, const std::string& text) {
  const std::string path = std::string(ZINF_TEST_TMP) + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ZinfConfigTest, PrintsEffectiveSettingsThatLoadAgainAndTheIgnoredKeys) {
  const std::string path = write("good.json", R"({"train_batch_size": 8,
    "wall_clock_breakdown": true,
    "zero_optimization": {"stage": 3, "prefetch_bucket_size": 1e7, "overlap_comm": true,
                          "offload_optimizer": {"device": "cpu"}}})");
  Result r = run("check " + path + " --world-size 2");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("valid for 2 ranks"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"stage3_prefetch_bucket_size\": 10000000"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"train_micro_batch_size_per_gpu\": 4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  wall_clock_breakdown ("), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  zero_optimization.overlap_comm ("), std::string::npos) << r.out;
  const auto begin = r.out.find("effective settings:\n");
  const auto end = r.out.find("\nignored");
  ASSERT_NE(begin, std::string::npos);
  const std::string settings = r.out.substr(begin + 20, end - begin - 20);
  auto again = zinf::Config::from_string(settings);
  EXPECT_TRUE(again.is_ok()) << again.status().message() << "\n" << settings;
}

TEST(ZinfConfigTest, ABadConfigExitsNonZeroNamingTheKey) {
  const std::string path =
      write("bad.json", R"({"zero_optimization": {"stage": 3, "stage3_max_live_parameters": -1}})");
  Result r = run("check " + path);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("error: " + path + ": zero_optimization.stage3_max_live_parameters"),
            std::string::npos)
      << r.out;
  const std::string batch = write("batch.json", R"({"train_batch_size": 30,
    "train_micro_batch_size_per_gpu": 4})");
  r = run("check " + batch);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("train_batch_size (30)"), std::string::npos) << r.out;
  r = run("check /nonexistent/ds.json");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("/nonexistent/ds.json"), std::string::npos) << r.out;
}

}  // namespace
