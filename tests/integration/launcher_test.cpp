// zinf-launch: the environment each rank gets, its prefixed output, and how
// a failing rank or a signal stops the job.
#include <gtest/gtest.h>

#include <chrono>

#include "integration/ranks.hpp"

namespace zinf::test {
namespace {

std::string launch(const std::string& args) { return std::string(ZINF_LAUNCH_PATH) + " " + args; }

TEST(LauncherTest, EachRankGetsItsEnvironmentAndAPrefix) {
  Job job =
      run_shell(launch("-n 3 --master-port 29999 sh -c 'echo \"r=$RANK l=$LOCAL_RANK n=$WORLD_SIZE "
                       "a=$MASTER_ADDR p=$MASTER_PORT\"'"));
  EXPECT_EQ(job.status, 0) << job.output;
  for (int r = 0; r < 3; ++r) {
    const std::string line = "[rank" + std::to_string(r) + "]: r=" + std::to_string(r) +
                             " l=" + std::to_string(r) + " n=3 a=127.0.0.1 p=29999";
    EXPECT_NE(job.output.find(line), std::string::npos) << job.output;
  }
}

TEST(LauncherTest, AFailingRankStopsTheOthersAndIsNamed) {
  const auto t0 = std::chrono::steady_clock::now();
  Job job = run_shell(
      launch("-n 3 --grace 1 sh -c 'if [ $RANK = 1 ]; then echo bye; exit 3; fi; exec sleep 60'"));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30)) << job.output;
  EXPECT_NE(job.status, 0);
  EXPECT_NE(job.output.find("[rank1]: bye"), std::string::npos) << job.output;
  EXPECT_NE(job.output.find("rank 1 exited with status 3"), std::string::npos) << job.output;
}

TEST(LauncherTest, ARankKilledByASignalIsNamed) {
  Job job = run_shell(launch("-n 2 sh -c 'if [ $RANK = 0 ]; then kill -9 $$; fi; exec sleep 60'"));
  EXPECT_NE(job.status, 0);
  EXPECT_NE(job.output.find("rank 0 was killed by signal 9"), std::string::npos) << job.output;
}

TEST(LauncherTest, SigintStopsEveryRank) {
  const auto t0 = std::chrono::steady_clock::now();
  // The launcher in the background, SIGINT to it alone once the ranks run.
  Job job = run_shell("(" + launch("-n 2 --grace 1 sh -c 'trap \"\" INT; echo up; exec sleep 60'") +
                      " & pid=$!; sleep 2; kill -INT $pid; wait $pid; echo \"launcher=$?\")");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30)) << job.output;
  EXPECT_NE(job.output.find("launcher=130"), std::string::npos) << job.output;
  EXPECT_NE(job.output.find("stopping every rank"), std::string::npos) << job.output;
}

TEST(LauncherTest, AProgramThatDoesNotExistFails) {
  Job job = run_shell(launch("-n 2 /nonexistent/program"));
  EXPECT_NE(job.status, 0);
  EXPECT_NE(job.output.find("cannot run /nonexistent/program"), std::string::npos) << job.output;
}

}  // namespace
}  // namespace zinf::test
