// The crash test: train_gpt trains with a checkpoint after every step and
// is killed with SIGKILL at seeded random instants (in a forward, a step, a
// checkpoint being written). After every kill, `zinf-ckpt verify` passes on
// what `latest` names, and the run resumed from it, again and again until
// it finishes, ends with exactly the optimizer state of a run that was
// never interrupted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "swap/swap_test_util.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using zinf::swap::testing::ScratchDir;

constexpr int kSteps = 400;  // more than the killed runs get through
constexpr int kKills = 20;

// train_gpt on a small GPT, its swap under `nvme`, checkpoints in `ckpt`.
std::vector<std::string> train_args(const fs::path& nvme, const fs::path& ckpt, bool resume) {
  std::vector<std::string> args = {TRAIN_GPT_PATH, "--config=" ZINF_CONFIGS_DIR "/zero3_nvme.json",
                                   "--steps=" + std::to_string(kSteps),
                                   "--nvme-path=" + nvme.string(),
                                   "--checkpoint-dir=" + ckpt.string()};
  for (const char* flag : {"--layers=2", "--hidden=64", "--heads=4", "--device-budget=64M",
                           "--print-every=1000", "--checkpoint-every=1", "--checkpoint-keep=2"})
    args.emplace_back(flag);
  if (resume) args.emplace_back("--resume");
  return args;
}

pid_t spawn(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc == 0 ? pid : -1;
}

int wait_for(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

int run(const std::vector<std::string>& args, const fs::path& log) {
  const pid_t pid = spawn(args, log);
  return pid < 0 ? -1 : wait_for(pid);
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::string latest_tag(const fs::path& ckpt) {
  std::ifstream in(ckpt / "latest");
  std::string tag;
  std::getline(in, tag);
  return tag;
}

TEST(CrashTest, KilledRunsResumeToTheUninterruptedRunsStateExactly) {
  ScratchDir dir;
  const fs::path log = dir.path() / "train.log";
  const fs::path straight = dir.path() / "straight";
  ASSERT_EQ(run(train_args(dir.path() / "nvme-straight", straight, false), log), 0)
      << read_all(log);

  const fs::path ckpt = dir.path() / "killed";
  const fs::path nvme = dir.path() / "nvme-killed";
  // Even kills fall at a random instant after the start (starting up,
  // loading, training, saving); odd ones a little after the run's first new
  // checkpoint, so that the runs make progress however slow the machine.
  std::mt19937 rng(2026);
  std::uniform_int_distribution<int> anytime_ms(0, 600), soon_ms(0, 40);
  int kills = 0, advanced = 0;
  while (kills < kKills) {
    const std::string before = latest_tag(ckpt);
    const pid_t pid = spawn(train_args(nvme, ckpt, !before.empty()), log);
    ASSERT_GT(pid, 0);
    if (kills % 2 == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(anytime_ms(rng)));
    } else {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      while (latest_tag(ckpt) == before && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      std::this_thread::sleep_for(std::chrono::milliseconds(soon_ms(rng)));
    }
    ::kill(pid, SIGKILL);
    const int status = wait_for(pid);
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0) << read_all(log);
      if (latest_tag(ckpt) == "global_step" + std::to_string(kSteps)) break;  // finished first
      continue;
    }
    ++kills;
    advanced += latest_tag(ckpt) != before;
    if (!fs::exists(ckpt / "latest")) continue;  // killed before its first checkpoint
    const std::string verify =
        std::string(ZINF_CKPT_PATH) + " verify " + ckpt.string() + " >> " + log.string() + " 2>&1";
    ASSERT_EQ(std::system(verify.c_str()), 0)
        << "after kill " << kills << ", latest = " << latest_tag(ckpt) << "\n"
        << read_all(log);
  }
  EXPECT_EQ(kills, kKills) << "the killed runs finished the training: raise kSteps";
  EXPECT_GE(advanced, kKills / 2) << "runs killed after a new checkpoint";
  // The last run goes on from where the killed ones got to (a run that
  // started over would end in the same state, and prove nothing).
  const std::string reached = latest_tag(ckpt);
  ASSERT_FALSE(reached.empty());
  if (reached != "global_step" + std::to_string(kSteps)) {
    const fs::path last_log = dir.path() / "last.log";
    ASSERT_EQ(run(train_args(nvme, ckpt, true), last_log), 0) << read_all(last_log);
    EXPECT_NE(read_all(last_log).find("resumed from " + ckpt.string() + " at step " +
                                      reached.substr(std::string("global_step").size())),
              std::string::npos)
        << read_all(last_log);
  }
  const std::string tag = "global_step" + std::to_string(kSteps);
  ASSERT_EQ(latest_tag(ckpt), tag);
  EXPECT_TRUE(read_all(ckpt / tag / "rank0.state") == read_all(straight / tag / "rank0.state"))
      << "the resumed run's optimizer state differs from the uninterrupted run's";
  for (const auto& e : fs::directory_iterator(ckpt))
    EXPECT_EQ(e.path().filename().string().find(".saving-"), std::string::npos)
        << "an abandoned save was left: " << e.path();
}

}  // namespace
