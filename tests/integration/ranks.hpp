// Multi-process tests: a test body that runs on every rank of a job that
// zinf-launch starts from this very test binary.
//
//   TEST(X, Y) {
//     if (zinf::test::ran_on_ranks(2)) return;  // the job ran this test on 2 ranks
//     ... what each rank does (EXPECTs fail the rank, and so the job) ...
//   }
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "run_shell.hpp"

namespace zinf::test {

inline bool in_rank() { return std::getenv("ZINF_TEST_IN_RANK") != nullptr; }

// `ranks` copies of this binary, running only `test` (a gtest filter), under
// zinf-launch, with `env` ("K=V ...") added.
inline Job launch_self(int ranks, const std::string& test, const std::string& env = "") {
  return run_shell(
      "env ZINF_TEST_IN_RANK=1 " + env + " " + ZINF_LAUNCH_PATH + " -n " + std::to_string(ranks) +
      " " + std::filesystem::read_symlink("/proc/self/exe").string() + " --gtest_filter=" + test);
}

// Outside a job: runs the current test on `ranks` ranks (with `env` added),
// expects every one to pass, and returns true. Inside one (a rank): false.
inline bool ran_on_ranks(int ranks, const std::string& env = "") {
  if (in_rank()) return false;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const Job job =
      launch_self(ranks, std::string(info->test_suite_name()) + "." + info->name(), env);
  EXPECT_EQ(job.status, 0) << job.output;
  for (int r = 0; r < ranks; ++r) {
    EXPECT_NE(job.output.find("[rank" + std::to_string(r) + "]: [       OK ]"), std::string::npos)
        << "rank " << r << " did not pass:\n"
        << job.output;
  }
  return true;
}

}  // namespace zinf::test
