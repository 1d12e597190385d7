// zinf-plan: its JSON has what a plan must say, adds up, and bad input is
// an error naming the flag or file. (Its bytes against the engine's own:
// tests/offload/engine_test.cpp, ThePlanIsTheEnginesMemoryExactly.)
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "run_shell.hpp"

namespace {

const std::string kSmall = " --layers 2 --hidden 64 --heads 4 --seq 16 --device cpu";

zinf::test::Job run(const std::string& args) {
  return zinf::test::run_shell(std::string(ZINF_PLAN_PATH) + " " + args);
}

std::string config(const char* name) { return std::string(ZINF_CONFIGS_DIR) + "/" + name; }
std::string path(const std::string& name) { return std::string(ZINF_TEST_TMP) + "/" + name; }

nlohmann::json plan(const std::string& args) {
  zinf::test::Job r = run(args + " --json 2>/dev/null");
  EXPECT_EQ(r.status, 0) << r.output;
  return nlohmann::json::parse(r.output);
}

TEST(ZinfPlanTest, TheJsonSaysWhatAPlanMustAndAddsUp) {
  const auto p = plan("--config " + config("zero3_cpu.json") + kSmall);
  for (const char* key :
       {"device_peak_bytes", "host_bytes", "pinned_bytes", "nvme_bytes", "nvme_read_bytes_per_step",
        "nvme_write_bytes_per_step", "step_s", "bottleneck", "fits"})
    EXPECT_TRUE(p.contains(key)) << key;
  std::uint64_t host = 0;
  for (const auto& [k, v] : p["host"].items()) host += v.get<std::uint64_t>();
  EXPECT_EQ(p["host_bytes"].get<std::uint64_t>(), host);
  EXPECT_EQ(p["nvme_bytes"], 0);
  EXPECT_GT(p["step_s"].get<double>(), 0);
  EXPECT_GE(p["step_s"].get<double>(), p["fwd_bwd_s"].get<double>());
  EXPECT_LE(p["pinned_bytes"].get<std::uint64_t>(), host);
  // train_gpt's default budget on the emulated device: a quarter of the fp32 parameters.
  EXPECT_EQ(p["device_budget_bytes"].get<std::uint64_t>(),
            p["model"]["parameters"].get<std::uint64_t>());
  EXPECT_FALSE(
      plan("--config " + config("zero3_cpu.json") + kSmall + " --device-budget 64K")["fits"]);
  EXPECT_GT(p["device_peak_bytes"].get<std::uint64_t>(),
            p["device_resident_bytes"].get<std::uint64_t>());
}

TEST(ZinfPlanTest, NvmeTrafficComesWithTheSwapbenchRatesItIsTimedBy) {
  std::ofstream(path("plan-swapbench.json")) << R"({"tool": "swapbench", "results": [
    {"op": "read", "block_size": 1048576, "queue_depth": 8, "gbps": 2.0},
    {"op": "read", "block_size": 131072, "queue_depth": 8, "gbps": 9.0},
    {"op": "mixed", "block_size": 1048576, "queue_depth": 8, "gbps": 1.0}]})";
  const auto p = plan("--config " + config("zero3_nvme.json") + kSmall + " --swapbench " +
                      path("plan-swapbench.json"));
  EXPECT_GT(p["nvme_bytes"].get<std::uint64_t>(), 0u);
  // The row at the config's aio block size and queue depth (1M, 8), not the fastest.
  EXPECT_DOUBLE_EQ(p["rates"]["nvme_read_gbps"].get<double>(), 2.0);
  const double reads = p["nvme_read_bytes_per_step"].get<double>();
  EXPECT_GT(reads, 0);
  EXPECT_NEAR(p["stages"]["optimizer io"].get<double>(),
              (p["nvme_write_bytes_per_step"].get<double>() + reads -
               p["h2d_bytes_per_step"].get<double>()) /
                  1e9,
              1e-9);
}

// Across ranks: the collectives' bytes (the engine's, exactly: the
// engine_ranks_test checks them), timed at --comm-gbps in both phases.
TEST(ZinfPlanTest, CollectivesAcrossRanksAreTimedAtTheGivenRate) {
  const std::string args = "--config " + config("zero3_cpu.json") + kSmall + " --world-size 2";
  const auto untimed = plan(args);
  const double bytes = untimed["comm_bytes_per_step"].get<double>();
  EXPECT_GT(bytes, 0);
  EXPECT_EQ(untimed["stages"]["collectives"].get<double>(), 0);
  const auto p = plan(args + " --comm-gbps 2");
  EXPECT_NEAR(
      p["stages"]["collectives"].get<double>() + p["stages"]["update collectives"].get<double>(),
      bytes / 2e9, 1e-12);
  EXPECT_EQ(plan("--config " + config("zero3_cpu.json") + kSmall)["comm_bytes_per_step"], 0);
}

// Stages 2-3 without overlap_comm: the backward waits for each reduction,
// whose time (the gradients' share of the collectives) joins the compute's.
TEST(ZinfPlanTest, WithoutOverlapCommTheReductionsJoinTheCompute) {
  auto with_overlap = [&](bool on) {
    const std::string file = path(on ? "plan-overlap.json" : "plan-serial.json");
    std::ofstream(file) << R"({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
                               "zero_optimization": {"stage": 2, "overlap_comm": )"
                        << (on ? "true" : "false")
                        << R"(, "offload_optimizer": {"device": "cpu"}}})";
    return plan("--config " + file + kSmall + " --world-size 2 --comm-gbps 2");
  };
  const auto overlapped = with_overlap(true), serial = with_overlap(false);
  EXPECT_EQ(overlapped["backward_waits_s_per_micro_step"].get<double>(), 0);
  const double waits = serial["backward_waits_s_per_micro_step"].get<double>();
  // Stage 2 gathers nothing: every micro-step collective is a reduction.
  EXPECT_NEAR(waits, serial["stages"]["collectives"].get<double>(), 1e-12);
  EXPECT_GT(waits, 0);
  EXPECT_NEAR(serial["stages"]["compute"].get<double>(),
              serial["rates"]["compute_s_per_micro_step"].get<double>() + waits, 1e-12);
}

TEST(ZinfPlanTest, BadInputIsAnErrorNamingTheFlagOrFile) {
  zinf::test::Job r = run("--config " + config("zero3_nvme.json") + kSmall);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("--swapbench"), std::string::npos) << r.output;
  std::ofstream(path("plan-bad.json")) << "{not json";
  r = run("--config " + config("zero3_nvme.json") + kSmall + " --swapbench " +
          path("plan-bad.json"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("plan-bad.json: not JSON"), std::string::npos) << r.output;
  r = run("--config " + config("zero3_cpu.json") + kSmall + " --batch 5");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("--batch 5 contradicts"), std::string::npos) << r.output;
  r = run("--config " + config("zero3_cpu.json") + kSmall + " --device-budget 12X");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("--device-budget 12X: unknown suffix"), std::string::npos) << r.output;
  r = run("--config " + path("missing.json") + kSmall);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("missing.json"), std::string::npos) << r.output;
}

}  // namespace
