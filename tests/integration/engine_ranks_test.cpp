// The engine on two ranks (Gloo on the host-emulated device) against one:
// ZeRO stages 1, 2 and 3, each rank with micro-batch b, against one rank
// with micro-batch 2b (the same samples): every parameter within 1e-6
// relative (|a - b| / |b| over the tensor) after each of 10 steps, the
// gradient norm within 1e-5 at every step, and each rank holding half of
// what the one rank holds of every partitioned state. With
// communication_data_type fp16 the gradients are reduced in fp16: 1e-3, 1e-2,
// and a quarter of the one rank's gradient bytes leave each device.
//
// Not bit for bit: a split batch sums its gradients in another order, and
// Adam's update g / (|g| + eps) turns the rounding of an element whose
// gradient is near zero into a difference of up to about 1e-3 of lr there.
//
// The model is an MLP of units (no parameter whose gradient is zero in
// exact arithmetic: splitting a batch sums its gradients in another order,
// and Adam's first step turns rounding noise around zero into +-lr).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "integration/ranks.hpp"
#include "offload/plan.hpp"
#include "swap/swap_test_util.hpp"
#include "zinf/zinf.hpp"

namespace zinf {
namespace {

constexpr int kHidden = 128;
constexpr int kBatch = 4;  // per rank; the one rank takes 2 x kBatch
constexpr int kSteps = 10;

struct BlockImpl : torch::nn::Module {
  BlockImpl() { fc = register_module("fc", torch::nn::Linear(kHidden, kHidden)); }
  torch::Tensor forward(const torch::Tensor& x) { return x + torch::tanh(fc(x)); }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(Block);

struct HeadImpl : torch::nn::Module {
  HeadImpl() { out = register_module("out", torch::nn::Linear(kHidden, 8)); }
  torch::Tensor forward(const torch::Tensor& x) { return out(x); }
  torch::nn::Linear out{nullptr};
};
TORCH_MODULE(Head);

struct NetImpl : torch::nn::Module {
  NetImpl() {
    in = register_module("input", torch::nn::Linear(16, kHidden));
    for (int i = 0; i < 3; ++i)
      blocks.push_back(register_module("b" + std::to_string(i), zinf::Unit<Block>()));
    head = register_module("head", zinf::Unit<Head>());
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::tanh(in(x));
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (static_cast<int>(i) != skip) h = blocks[i](h);
    }
    return head(h);
  }
  int skip = -1;  // a block the forward leaves out (the order of units changes)
  torch::nn::Linear in{nullptr};
  std::vector<zinf::Unit<Block>> blocks;
  zinf::Unit<Head> head{nullptr};
};
TORCH_MODULE(Net);

// Micro-step k's samples of the whole job: 2 x kBatch of them.
std::pair<torch::Tensor, torch::Tensor> samples(std::uint64_t k) {
  torch::Generator gen = torch::make_generator<torch::CPUGeneratorImpl>(1000 + k);
  return {torch::randn({2 * kBatch, 16}, gen), torch::randn({2 * kBatch, 8}, gen)};
}

std::string contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

int env_int(const char* name, int otherwise) {
  return std::getenv(name) ? std::atoi(std::getenv(name)) : otherwise;
}

// The changing case's stage3_max_live_parameters: about 2.5 of the 4 units.
constexpr int kMaxLive = 40000;

struct Case {
  int stage = 2;
  std::string param = "none";
  std::string optim = "cpu";
  int accumulation = 1;
  bool bf16 = false;
  // Fewer live parameters than the model (the prefetch stops short, units
  // are evicted), a step whose order of units changes, and a forward without
  // backward: the gathers issued ahead are completed on every rank. (Ranks
  // whose fetches differ: CoordinatorTest.RanksThatFetchDifferentlyGather...)
  // And a reduce bucket smaller than a unit: each opened partition waits for
  // the reductions queued before it.
  bool changing = false;
  std::string comm;     // communication_data_type; empty: the gradients' own
  bool overlap = true;  // overlap_comm: false makes the backward wait for each reduction
};

std::string name_of(const Case& s) {
  return "stage" + std::to_string(s.stage) + "_param_" + s.param + "_optim_" + s.optim +
         (s.accumulation > 1 ? "_accumulation" : "") + (s.bf16 ? "_bf16" : "") +
         (s.changing ? "_changing" : "") + (s.comm.empty() ? "" : "_comm_" + s.comm) +
         (s.overlap ? "" : "_no_overlap");
}

Config config(const Case& s, const std::string& nvme, int world) {
  auto c =
      Config::from_string(R"({
    "train_micro_batch_size_per_gpu": )" +
                          std::to_string(kBatch * 2 / world) + R"(,
    "communication_data_type": )" +
                          (s.comm.empty() ? "null" : "\"" + s.comm + "\"") + R"(,
    "gradient_accumulation_steps": )" +
                          std::to_string(s.accumulation) + R"(,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}},
    "zero_optimization": {
      "stage": )" + std::to_string(s.stage) +
                          R"(,
      "stage3_param_persistence_threshold": 10,
      "stage3_max_live_parameters": )" +
                          std::to_string(s.changing ? kMaxLive : 1000000000) + R"(,
      "sub_group_size": 4096,
      "reduce_bucket_size": )" +
                          std::to_string(s.changing ? 1000 : 500000000) + R"(,
      "overlap_comm": )" + (s.overlap ? "true" : "false") +
                          R"(,
      "offload_param": {"device": ")" +
                          s.param + R"(", "nvme_path": ")" + nvme + R"("},
      "offload_optimizer": {"device": ")" +
                          s.optim + R"(", "nvme_path": ")" + nvme + R"("}
    },
    "zinf": {"device": "cpu", "comm_timeout": 60)" +
                          (s.changing ? R"(, "trace_path": ")" + nvme + R"(/trace.json")" : "") +
                          "}" + (s.bf16 ? R"(, "bf16": {"enabled": true})" : "") + "}");
  if (!c.is_ok()) throw Error(c.status());
  return *c;
}

// An engine of this rank's job (the ranks start apart: the engine starts
// them from rank 0's values).
std::unique_ptr<Engine<Net>> make_engine(const Case& s, const Config& cfg, int seed) {
  torch::manual_seed(seed + env_int("RANK", 0));
  Net net = s.param == "none" ? Net() : zinf::partitioned(cfg, [] { return Net(); });
  return std::make_unique<Engine<Net>>(net, cfg);
}

// Step `step` on this rank's share of its samples.
void train_step(Engine<Net>& engine, const Case& s, int step) {
  const int rank = engine.rank(), share = 2 * kBatch / engine.world_size();
  const auto dtype = s.bf16 ? torch::kBFloat16 : torch::kFloat;
  engine.module()->skip = s.changing && step == 3 ? 1 : -1;
  for (int m = 0; m < s.accumulation; ++m) {
    auto [x, y] = samples(static_cast<std::uint64_t>(step * s.accumulation + m));
    auto out = engine(x.narrow(0, rank * share, share).to(dtype)).to(torch::kFloat);
    auto loss = torch::mse_loss(out, y.narrow(0, rank * share, share));
    engine.backward(loss);
    engine.step();
  }
  if (s.changing && step == 5) {
    torch::NoGradGuard evaluation;
    (void)engine(samples(0).first.narrow(0, rank * share, share).to(dtype));
  }
}

// The parameters, in the engine's order.
std::vector<torch::Tensor> parameters(const EngineBase& engine) {
  std::vector<torch::Tensor> out;
  for (const auto& p : engine.consolidated_parameters()) out.push_back(p.value());
  return out;
}

// Trains kSteps on this rank's share of the samples; calls `after(step,
// params)` after each step, with the parameters in name order.
void train(
    const Case& s, const std::string& nvme,
    const std::function<void(int, const std::vector<torch::Tensor>&, const EngineBase&)>& after) {
  const int world = env_int("WORLD_SIZE", 1);
  auto engine = make_engine(s, config(s, nvme, world), 3);
  ASSERT_EQ(engine->world_size(), world);
  for (int step = 0; step < kSteps; ++step) {
    train_step(*engine, s, step);
    after(step, parameters(*engine), *engine);
  }
}

// The Net's parameters for the planner.
offload::ModelShape net_shape() {
  auto linear = [](int in, int out) {
    return std::vector<offload::ModelParam>{{"weight", {out, in}}, {"bias", {out}}};
  };
  offload::ModelShape m;
  for (auto& p : linear(16, kHidden)) m.root.push_back({"input." + p.name, p.shape});
  for (int i = 0; i < 3; ++i) {
    offload::ModelUnit b{"b" + std::to_string(i), {}};
    for (auto& p : linear(kHidden, kHidden)) b.params.push_back({"fc." + p.name, p.shape});
    m.units.push_back(b);
  }
  offload::ModelUnit head{"head", {}};
  for (auto& p : linear(kHidden, 8)) head.params.push_back({"out." + p.name, p.shape});
  m.units.push_back(head);
  return m;
}

// zinf-plan's accounting for this rank: the engine's bytes, exactly.
void expect_planned(const Case& s, const std::string& nvme, const EngineBase& e) {
  auto plan =
      offload::plan_memory(net_shape(), config(s, nvme, e.world_size()), e.world_size(), e.rank());
  ASSERT_TRUE(plan.is_ok()) << plan.status().to_string();
  const MemoryReport m = e.memory_report();
  const StepReport& r = e.last_step_report();
  const std::string where =
      "rank " + std::to_string(e.rank()) + " of " + std::to_string(e.world_size());
  EXPECT_EQ(plan->device_resident, m.device_live) << where;
  EXPECT_EQ(plan->host_params, m.host_params) << where;
  EXPECT_EQ(plan->host_param_buffers, m.host_param_buffers) << where;
  EXPECT_EQ(plan->host_grads, m.host_grads) << where;
  EXPECT_EQ(plan->host_grad_buffers, m.host_grad_buffers) << where;
  EXPECT_EQ(plan->host_optimizer, m.host_optimizer) << where;
  EXPECT_EQ(plan->nvme_params, m.nvme_params) << where;
  EXPECT_EQ(plan->nvme_optimizer, m.nvme_optimizer) << where;
  EXPECT_EQ(plan->h2d_bytes * r.micro_steps, r.h2d_bytes) << where;
  EXPECT_EQ(plan->param_read_bytes * r.micro_steps, r.param_read_bytes) << where;
  EXPECT_EQ(plan->d2h_bytes * r.micro_steps, r.d2h_bytes) << where;
  EXPECT_EQ(plan->optim_read_bytes, r.optim_read_bytes) << where;
  EXPECT_EQ(plan->optim_write_bytes, r.optim_write_bytes) << where;
  EXPECT_EQ(plan->param_write_bytes, r.param_write_bytes) << where;
  EXPECT_EQ(plan->comm_bytes * r.micro_steps + plan->step_comm_bytes, r.comm_bytes) << where;
}

// What a rank holds of each partitioned state.
nlohmann::json held(const MemoryReport& m) {
  return {{"device_live", m.device_live},  // between steps: what stays on the device
          {"host_params", m.host_params},      {"nvme_params", m.nvme_params},
          {"host_grads", m.host_grads},        {"host_optimizer", m.host_optimizer},
          {"nvme_optimizer", m.nvme_optimizer}};
}

void PrintTo(const Case& c, std::ostream* os) { *os << name_of(c); }

class EngineRanks : public ::testing::TestWithParam<Case> {};

TEST_P(EngineRanks, TwoRanksTrainAsOneWithTheirBatchesTogether) {
  if (!ZINF_TEST_GLOO)
    GTEST_SKIP() << "this build has no c10d Gloo (Gloo's headers were not found)";
  const Case s = GetParam();
  const std::string reference = std::string(ZINF_TEST_TMP) + "/ranks_" + name_of(s);
  if (!test::in_rank()) {
    swap::testing::ScratchDir dir;
    std::vector<torch::Tensor> all;
    nlohmann::json one;
    train(s, dir.path().string(),
          [&](int step, const std::vector<torch::Tensor>& params, const EngineBase& e) {
            all.insert(all.end(), params.begin(), params.end());
            one["memory"] = held(e.memory_report());
            one["grad_norms"].push_back(e.last_step_report().grad_norm);
            one["d2h_bytes"] = e.last_step_report().d2h_bytes;
            if (step + 1 == kSteps && !s.changing) expect_planned(s, dir.path().string(), e);
          });
    torch::save(all, reference + ".pt");
    std::ofstream(reference + ".json") << one.dump();
    test::ran_on_ranks(2);
    return;
  }
  std::vector<torch::Tensor> all;
  torch::load(all, reference + ".pt");
  nlohmann::json one;
  std::ifstream(reference + ".json") >> one;
  swap::testing::ScratchDir dir;
  std::vector<std::uint64_t> comm_bytes;
  std::uint64_t reduce_waits = 0;
  train(s, dir.path().string(),
        [&](int step, const std::vector<torch::Tensor>& params, const EngineBase& e) {
          comm_bytes.push_back(e.last_step_report().comm_bytes);
          reduce_waits += e.last_step_report().reduce_waits;
          ASSERT_EQ(all.size(), params.size() * kSteps);
          // The norm of the mean gradient (an average taken wrong shows here: Adam hides scale).
          // Gradients reduced in fp16 (communication_data_type) are rounded there.
          const double tolerance = s.comm == "fp16" ? 1e-3 : 1e-6;
          const double norm = one["grad_norms"][step].get<double>();
          EXPECT_NEAR(e.last_step_report().grad_norm, norm, 10 * tolerance * norm)
              << "step " << step + 1;
          for (std::size_t i = 0; i < params.size(); ++i) {
            const torch::Tensor ref = all[step * params.size() + i].to(torch::kDouble);
            const torch::Tensor got = params[i].to(torch::kDouble);
            const double error = (got - ref).norm().item<double>() / ref.norm().item<double>();
            EXPECT_LE(error, tolerance)
                << "step " << step + 1 << ", parameter " << i << ": max abs diff "
                << (got - ref).abs().max().item<double>();
          }
          if (step + 1 < kSteps) return;
          if (s.stage == 3) {
            EXPECT_GT(e.coordinator_stats().gathers_ahead, 0u) << "rank " << e.rank();
            if (s.changing) {
              EXPECT_GT(e.coordinator_stats().evictions, 0u);
              EXPECT_GT(e.coordinator_stats().trace_invalidations, 0u);
            }
          }
          if (!s.changing) expect_planned(s, dir.path().string(), e);
          // Half of each partitioned state (NVMe extents round each sub-group up to 4 KiB).
          nlohmann::json mine = held(e.memory_report());
          nlohmann::json memory = one["memory"];
          mine["d2h_bytes"] = e.last_step_report().d2h_bytes;
          memory["d2h_bytes"] = one["d2h_bytes"];
          auto expect_share = [&](const char* key, bool partitioned, double share) {
            const double a = mine[key].get<double>(), b = memory[key].get<double>();
            if (!partitioned || b == 0) return;
            EXPECT_NEAR(a, b * share, 0.1 * b) << key << ": this rank " << a << ", one rank " << b;
          };
          auto expect_half = [&](const char* key, bool partitioned) {
            expect_share(key, partitioned, 0.5);
          };
          expect_half("host_optimizer", s.optim == "cpu");
          expect_half("nvme_optimizer", s.optim == "nvme");
          expect_half("host_grads", s.stage >= 2);
          expect_half("host_params", s.stage == 3 && s.param == "cpu");
          expect_half("nvme_params", s.stage == 3 && s.param == "nvme");
          expect_half("device_live", s.stage == 3 && s.param == "none");
          // Reduced on the device, only this rank's shard of the gradients
          // leaves it, in the dtype of the reduction (fp32 gradients here).
          expect_share("d2h_bytes", s.stage >= 2, s.comm == "fp16" ? 0.25 : 0.5);
          if (s.stage == 1) {
            EXPECT_EQ(mine["host_grads"],
                      memory["host_grads"]);  // stage 1 keeps the gradients whole
          }
        });
  // overlap_comm leaves each reduction running behind the backward, and a
  // bucket larger than the model never waits; without it, the backward
  // waits for each unit's partitions as the unit's gradients are in: the
  // blocks' and the head's two (its 8-element bias stays resident). The
  // root's are reduced after the backward either way.
  if (s.stage >= 2 && !s.changing) {
    const std::uint64_t partitions = 3 + 2;
    EXPECT_EQ(reduce_waits, s.overlap ? 0u : partitions * kSteps * s.accumulation)
        << "rank " << env_int("RANK", 0);
  }
  if (!s.changing) return;
  // The trace: each collective a span on its channel, whose bytes add up to
  // the step's (from step 2: step 1's count the broadcasts at construction).
  std::ifstream in(dir.path() / ("trace.rank" + std::to_string(env_int("RANK", 0)) + ".json"));
  const auto trace = nlohmann::json::parse(in);
  std::map<std::uint64_t, std::uint64_t> traced;
  std::set<std::string> ops;
  for (const auto& e : trace) {
    if (e["ph"] != "b" || e["cat"].get<std::string>().rfind("collectives: ", 0) != 0) continue;
    traced[e["args"]["step"]] += e["args"]["bytes"].get<std::uint64_t>();
    ops.insert(e["cat"].get<std::string>() + " " + e["args"]["op"].get<std::string>());
  }
  for (std::size_t k = 1; k < comm_bytes.size(); ++k)
    EXPECT_EQ(traced[k + 1], comm_bytes[k]) << "step " << k + 1;
  EXPECT_TRUE(ops.count("collectives: parameters all_gather")) << ops.size();
}

TEST(EngineRanksTest, RanksWithDifferentConfigsFailOnEveryRank) {
  if (!ZINF_TEST_GLOO)
    GTEST_SKIP() << "this build has no c10d Gloo (Gloo's headers were not found)";
  if (test::ran_on_ranks(2)) return;
  Config cfg = config(Case{}, "", 2);
  cfg.optimizer->lr *= 1 + std::atoi(std::getenv("RANK"));
  try {
    Engine<Net> engine(Net(), cfg);
    FAIL() << "built an engine whose ranks disagree";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("runs a different configuration"), std::string::npos)
        << e.what();
  }
}

// Checkpoints of two ranks: each rank writes its shard of the state; N
// steps, a save, a load in new processes and N more steps equal 2N steps
// without one, bit for bit; zinf-ckpt verifies the checkpoint and
// consolidates both ranks' shards into the parameters the job had; a job
// of one rank refuses it, changing nothing, and loads it once zinf-ckpt
// has resharded it for one rank.
class RankCheckpoints : public ::testing::TestWithParam<Case> {};

TEST_P(RankCheckpoints, ResumeOnTwoRanksEqualsNoInterruption) {
  if (!ZINF_TEST_GLOO)
    GTEST_SKIP() << "this build has no c10d Gloo (Gloo's headers were not found)";
  constexpr int kHalf = 3;
  const Case s = GetParam();
  const std::filesystem::path ckpt = std::string(ZINF_TEST_TMP) + "/ckpt_" + name_of(s);
  const std::filesystem::path saved = ckpt.string() + ".params.pt";
  if (!test::in_rank()) {
    std::filesystem::remove_all(ckpt);
    if (!test::ran_on_ranks(2, "ZINF_TEST_PHASE=save")) return;
    const auto verify = test::run_shell(std::string(ZINF_CKPT_PATH) + " verify " + ckpt.string());
    EXPECT_EQ(verify.status, 0) << verify.output;
    const auto out = ckpt.string() + ".fp32.pt";
    const auto consolidated =
        test::run_shell(std::string(ZINF_CKPT_PATH) + " consolidate " + ckpt.string() + " " + out);
    ASSERT_EQ(consolidated.status, 0) << consolidated.output;
    Net plain;
    torch::load(plain, out);
    std::vector<torch::Tensor> expected;
    torch::load(expected, saved.string());
    std::ifstream names(saved.string() + ".names");
    std::size_t i = 0;
    for (std::string name; std::getline(names, name); ++i) {
      ASSERT_LT(i, expected.size());
      // fp32 masters; the engine's bf16 parameters are them rounded.
      const torch::Tensor master = plain->named_parameters()[name];
      EXPECT_EQ(master.scalar_type(), torch::kFloat) << name;
      EXPECT_TRUE(torch::equal(master.to(expected[i].scalar_type()), expected[i])) << name;
    }
    EXPECT_EQ(i, expected.size());
    // A job of another size is refused before anything changes.
    swap::testing::ScratchDir dir;
    auto alone = make_engine(s, config(s, dir.path().string(), 1), 3);
    const auto before = parameters(*alone);
    try {
      alone->load_checkpoint(ckpt);
      ADD_FAILURE() << "a world of one loaded a checkpoint of two ranks";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("saved by 2 ranks; this job runs 1"), std::string::npos)
          << e.what();
    }
    const auto after = parameters(*alone);
    for (std::size_t k = 0; k < after.size(); ++k) EXPECT_TRUE(torch::equal(after[k], before[k]));
    // Resharded for one rank, it loads there with the parameters the two
    // ranks had; resharded back for two, every file is the original.
    const std::string one = ckpt.string() + ".one", two = ckpt.string() + ".two";
    std::filesystem::remove_all(one);
    std::filesystem::remove_all(two);
    auto reshard = [](const std::string& from, const std::string& to, int world) {
      return test::run_shell(std::string(ZINF_CKPT_PATH) + " reshard " + from + " " + to +
                             " --world-size " + std::to_string(world));
    };
    const auto to_one = reshard(ckpt.string(), one, 1);
    ASSERT_EQ(to_one.status, 0) << to_one.output;
    alone->load_checkpoint(one);
    EXPECT_EQ(alone->global_steps(), static_cast<std::uint64_t>(kHalf));
    const auto loaded = alone->consolidated_parameters();
    ASSERT_EQ(loaded.size(), expected.size());
    for (std::size_t k = 0; k < expected.size(); ++k)
      EXPECT_TRUE(torch::equal(loaded[k].value(), expected[k])) << loaded[k].key();
    const auto to_two = reshard(one, two, 2);
    ASSERT_EQ(to_two.status, 0) << to_two.output;
    const std::string tag = "global_step" + std::to_string(kHalf);
    for (int r = 0; r < 2; ++r) {
      const std::string file = "/" + tag + "/rank" + std::to_string(r) + ".state";
      const std::string original = contents(ckpt.string() + file);
      EXPECT_FALSE(original.empty()) << file;
      EXPECT_TRUE(contents(two + file) == original) << file;
    }
    // Never over a checkpoint, nor for no ranks.
    const auto again = reshard(ckpt.string(), one, 1);
    EXPECT_NE(again.status, 0);
    EXPECT_NE(again.output.find("exists"), std::string::npos) << again.output;
    EXPECT_NE(reshard(ckpt.string(), ckpt.string() + ".none", 0).status, 0);
    test::ran_on_ranks(2, "ZINF_TEST_PHASE=resume");
    return;
  }
  swap::testing::ScratchDir dir;
  const Config cfg = config(s, dir.path().string(), 2);
  if (std::string(std::getenv("ZINF_TEST_PHASE")) == "save") {
    auto first = make_engine(s, cfg, 3);
    for (int step = 0; step < kHalf; ++step) train_step(*first, s, step);
    first->save_checkpoint(ckpt);
    const auto params = first->consolidated_parameters();  // a collective: every rank
    if (first->rank() == 0) {
      std::vector<torch::Tensor> values;
      std::ofstream names(saved.string() + ".names");
      for (const auto& p : params) {
        values.push_back(p.value());
        names << p.key() << "\n";
      }
      torch::save(values, saved.string());
    }
    return;
  }
  auto straight = make_engine(s, cfg, 3);
  for (int step = 0; step < 2 * kHalf; ++step) train_step(*straight, s, step);
  const auto expected = parameters(*straight);
  straight.reset();
  auto resumed = make_engine(s, cfg, 99);
  resumed->load_checkpoint(ckpt);
  EXPECT_EQ(resumed->global_steps(), static_cast<std::uint64_t>(kHalf));
  for (int step = kHalf; step < 2 * kHalf; ++step) train_step(*resumed, s, step);
  const auto got = parameters(*resumed);
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    EXPECT_TRUE(torch::equal(got[i], expected[i])) << "parameter " << i;
}

INSTANTIATE_TEST_SUITE_P(Stages, RankCheckpoints,
                         ::testing::Values(Case{1, "none", "cpu"}, Case{2, "none", "nvme", 1, true},
                                           Case{3, "nvme", "nvme"}, Case{3, "cpu", "cpu", 1, true},
                                           Case{3, "none", "cpu"}),
                         [](const auto& p) { return name_of(p.param); });

INSTANTIATE_TEST_SUITE_P(AllStages, EngineRanks,
                         ::testing::Values(Case{1, "none", "cpu"}, Case{1, "none", "nvme"},
                                           Case{2, "none", "cpu"}, Case{2, "none", "nvme"},
                                           Case{2, "none", "cpu", 2}, Case{3, "cpu", "cpu"},
                                           Case{3, "nvme", "nvme"}, Case{3, "nvme", "cpu", 2},
                                           Case{3, "none", "cpu"}, Case{3, "none", "nvme", 2},
                                           Case{3, "cpu", "cpu", 1, false, true},
                                           Case{3, "cpu", "cpu", 1, false, false, "fp16"},
                                           Case{2, "none", "cpu", 1, false, false, "", false},
                                           Case{3, "cpu", "cpu", 1, false, false, "", false},
                                           Case{3, "nvme", "nvme", 2, false, true}),
                         [](const auto& p) { return name_of(p.param); });

}  // namespace
}  // namespace zinf
