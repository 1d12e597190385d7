// The stage-3 engine against plain LibTorch, on the host-emulated device:
// the same GPT (examples/gpt/model.hpp), init and data trained by
// torch::optim::AdamW with everything in one place, and by zinf::Engine with
// parameters on the device, in pinned host memory or on NVMe and the
// optimizer state in host memory or on NVMe.
//
// Tolerances (fp32): parameters within 1e-6 relative (1e-9 absolute floor
// for values near zero) after one step; the loss within 1e-4 relative at
// every step of 20. The forward and backward are LibTorch's own kernels on
// the same values, so the gradients of step 1 agree exactly; the fused CPU
// Adam rounds differently from LibTorch's (fused multiply-adds), a few ulp
// per step, and the differences feed back through later gradients.
#include <gtest/gtest.h>
#include <malloc.h>
#include <sys/resource.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <tuple>

#include "common/sanitizer.hpp"
#include "gpt/model.hpp"
#include "offload/checkpoint_file.hpp"
#include "offload/plan.hpp"
#include "offload/trace.hpp"
#include "run_shell.hpp"
#include "stderr_of.hpp"
#include "swap/swap_test_util.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/zinf.hpp"

namespace zinf {
namespace {

using swap::testing::ScratchDir;

gpt::Options small_gpt() {
  gpt::Options o;
  o.layers = 3;
  o.hidden = 64;
  o.heads = 4;
  o.seq = 16;
  o.vocab = 96;
  return o;
}

std::string synthetic_text() {
  std::string text;
  for (int i = 0; i < 4000; ++i) text += static_cast<char>(32 + (i * 37 + i / 7) % 64);
  return text;
}

struct Homes {
  std::string param = "none";        // offload_param.device
  std::string optim = "cpu";         // offload_optimizer.device
  std::uint64_t persistence = 1000;  // so that the blocks and the head are gathered
  std::string zero_extra;            // more zero_optimization keys, with a leading comma
  int accumulation = 1;
  std::uint64_t budget = 0;    // zinf.device_budget
  std::string device = "cpu";  // zinf.device
  std::string top_extra;       // more top-level keys, with a leading comma
  std::string zinf_extra;      // more zinf keys, with a leading comma
};

std::string config_json(const Homes& s, const std::string& nvme) {
  return R"({
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": )" +
         std::to_string(s.accumulation) + R"(,
    "optimizer": {"type": "AdamW",
                  "params": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}},
    "zero_optimization": {
      "stage": 3,
      "stage3_param_persistence_threshold": )" +
         std::to_string(s.persistence) + R"(,
      "sub_group_size": 20000,
      "offload_param": {"device": ")" +
         s.param + R"(", "nvme_path": ")" + nvme + R"(", "buffer_count": 4},
      "offload_optimizer": {"device": ")" +
         s.optim + R"(", "nvme_path": ")" + nvme + R"("})" + s.zero_extra + R"(
    },
    "zinf": {"device": ")" +
         s.device + R"(", "device_budget": )" + std::to_string(s.budget) + s.zinf_extra + "}" +
         s.top_extra +
         R"(
  })";
}

Config parse(const std::string& json) {
  auto c = Config::from_string(json);
  if (!c.is_ok()) throw Error(c.status());
  return *c;
}

// The loss of each step (the mean over its micro-steps) and every
// parameter after the first step.
struct Trace {
  std::vector<double> losses;
  std::map<std::string, torch::Tensor> after_first;
  std::map<std::string, torch::Tensor> last;  // after the last step (engines only)
};

// Micro-batch k of the run: the same data for every trainer.
std::pair<torch::Tensor, torch::Tensor> micro_batch(const gpt::Options& o, std::uint64_t k,
                                                    int batch = 4) {
  static const std::string text = synthetic_text();
  return gpt::Batches(text, batch, o.seq, 1).get(k);
}

// Plain LibTorch: the model and torch::optim::AdamW, gradients summed over
// `accumulation` micro-steps of loss / accumulation (DeepSpeed's scaling),
// clipped by torch::nn::utils::clip_grad_norm_ to `max_norm` (DeepSpeed's
// default gradient_clipping, 1.0, unless given; 0: no clipping).
using OptimizerFactory =
    std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;

// The optimizer of config_json's block: AdamW, lr 1e-3, weight decay 0.01.
std::unique_ptr<torch::optim::Optimizer> adamw(std::vector<torch::Tensor> params) {
  return std::make_unique<torch::optim::AdamW>(
      std::move(params),
      torch::optim::AdamWOptions(1e-3).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.01));
}

Trace train_reference(const gpt::Options& o, int steps, int accumulation = 1,
                      torch::Device device = torch::kCPU, const Config* schedule = nullptr,
                      double max_norm = 1.0, const OptimizerFactory& make_optimizer = adamw) {
  // The threads the engine's emulated device computes with: BLAS results
  // depend on them, and Adam's first step turns the rounding noise of a
  // gradient that is zero in exact arithmetic (the key bias) into +-lr.
  set_host_compute_threads();
  torch::manual_seed(7);
  gpt::GPT model(o);
  model->to(device);
  const auto optimizer = make_optimizer(model->parameters());
  torch::optim::Optimizer& opt = *optimizer;
  std::optional<LrScheduler> scheduler;
  if (schedule != nullptr) scheduler.emplace(LrScheduler::from_config(opt, *schedule));
  Trace t;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    double loss_sum = 0;
    for (int m = 0; m < accumulation; ++m) {
      auto [x, y] = micro_batch(o, static_cast<std::uint64_t>(s * accumulation + m));
      auto loss = gpt::loss(model(x.to(device)), y.to(device));
      (loss / accumulation).backward();
      loss_sum += loss.item<double>();
    }
    if (max_norm > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), max_norm);
    opt.step();
    if (scheduler) scheduler->step();
    t.losses.push_back(loss_sum / accumulation);
    if (s == 0) {
      for (const auto& p : model->named_parameters())
        t.after_first[p.key()] = p.value().to(torch::kCPU).clone();
    }
  }
  return t;
}

gpt::GPT build(const gpt::Options& o, const Config& cfg, bool partitioned) {
  torch::manual_seed(7);
  return partitioned ? zinf::partitioned(cfg, [&] { return gpt::GPT(o); }) : gpt::GPT(o);
}

std::map<std::string, torch::Tensor> parameters(const EngineBase& engine) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : engine.consolidated_parameters()) out[p.key()] = p.value();
  return out;
}

// One micro-step: forward, backward, step (which updates only on an
// accumulation boundary). Returns the loss.
double micro_step(Engine<gpt::GPT>& engine, const gpt::Options& o, std::uint64_t k, int batch = 4) {
  auto [x, y] = micro_batch(o, k, batch);
  auto loss = gpt::loss(engine(x.to(engine.device())), y.to(engine.device()));
  engine.backward(loss);
  engine.step();
  return loss.item<double>();
}

Trace train_engine(const gpt::Options& o, const Config& cfg, int steps, bool partitioned,
                   EngineOptions options = {}) {
  Engine<gpt::GPT> engine(build(o, cfg, partitioned), cfg, std::move(options));
  const int accumulation = static_cast<int>(cfg.gradient_accumulation_steps.value_or(1));
  Trace t;
  for (int s = 0; s < steps; ++s) {
    double loss_sum = 0;
    for (int m = 0; m < accumulation; ++m)
      loss_sum += micro_step(engine, o, static_cast<std::uint64_t>(s * accumulation + m));
    EXPECT_EQ(engine.global_steps(), static_cast<std::uint64_t>(s + 1));
    t.losses.push_back(loss_sum / accumulation);
    if (s == 0) t.after_first = parameters(engine);
  }
  t.last = parameters(engine);
  return t;
}

// Within 1e-6 relative of the reference, or of the step's size where a
// parameter lands near zero (p - lr * u, cancelling: the rounding of its
// operands is what is left, about an ulp of lr).
void expect_params_close(const Trace& a, const Trace& ref, double lr = 1e-3) {
  ASSERT_EQ(a.after_first.size(), ref.after_first.size());
  for (const auto& [name, r] : ref.after_first) {
    auto it = a.after_first.find(name);
    ASSERT_NE(it, a.after_first.end()) << name;
    auto x = it->second.to(torch::kDouble), y = r.to(torch::kDouble);
    ASSERT_EQ(x.sizes(), y.sizes()) << name;
    auto excess = ((x - y).abs() - 1e-6 * (y.abs() + lr)).max().item<double>();
    EXPECT_LE(excess, 0.0) << name << ": max abs diff " << (x - y).abs().max().item<double>();
  }
}

void expect_losses_close(const Trace& a, const Trace& ref) {
  ASSERT_EQ(a.losses.size(), ref.losses.size());
  for (std::size_t s = 0; s < ref.losses.size(); ++s)
    EXPECT_NEAR(a.losses[s], ref.losses[s], 1e-4 * std::abs(ref.losses[s])) << "step " << s;
}

class EngineEquivalence : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(EngineEquivalence, MatchesLibTorchAdamW) {
  ScratchDir dir;
  Homes s;
  s.param = std::get<0>(GetParam());
  s.optim = std::get<1>(GetParam());
  const auto o = small_gpt();
  const Trace ref = train_reference(o, 20);
  const Trace got = train_engine(o, parse(config_json(s, dir.path().string())), 20,
                                 /*partitioned=*/s.param != "none");
  expect_params_close(got, ref);
  expect_losses_close(got, ref);
}

// The same on a CUDA GPU: the engine's device is the GPU, LibTorch's
// reference trains there too. Runs under scripts/gpu-check.sh.
TEST(EngineCudaTest, MatchesLibTorchAdamWOnTheGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU (or a LibTorch without CUDA)";
  ScratchDir dir;
  Homes s;
  s.param = "nvme";
  s.device = "cuda";
  const auto o = small_gpt();
  const Trace ref = train_reference(o, 20, 1, torch::Device(torch::kCUDA));
  const Trace got = train_engine(o, parse(config_json(s, dir.path().string())), 20, true);
  expect_params_close(got, ref);
  expect_losses_close(got, ref);
}

INSTANTIATE_TEST_SUITE_P(AllHomes, EngineEquivalence,
                         ::testing::Combine(::testing::Values("none", "cpu", "nvme"),
                                            ::testing::Values("cpu", "nvme")),
                         [](const auto& p) {
                           return "param_" + std::get<0>(p.param) + "_optim_" +
                                  std::get<1>(p.param);
                         });

TEST(EngineTest, GradientAccumulationMatchesLibTorch) {
  ScratchDir dir;
  Homes s;
  s.param = "nvme";
  s.accumulation = 2;
  const auto o = small_gpt();
  const Trace ref = train_reference(o, 8, 2);
  const Trace got = train_engine(o, parse(config_json(s, dir.path().string())), 8, true);
  expect_params_close(got, ref);
  expect_losses_close(got, ref);
}

// The optimizer block's other types train as LibTorch's optimizers with the
// same update: Adam with adam_w_mode false is torch::optim::Adam (an L2
// penalty), Adagrad is torch::optim::Adagrad (DeepSpeed's CPU Adagrad, with
// its defaults lr 1e-2 and eps 1e-10).
TEST(EngineTest, AdamL2AndAdagradMatchLibTorch) {
  ScratchDir dir;
  const auto o = small_gpt();
  auto config = [&](const std::string& block) {
    Homes s;
    s.param = "cpu";
    Config c = parse(config_json(s, dir.path().string()));
    const Config typed = parse(R"({"optimizer": )" + block + "}");
    c.optimizer = typed.optimizer;
    return c;
  };
  const Config adam = config(R"({"type": "Adam", "params": {"lr": 1e-3, "weight_decay": 0.01,
                                                           "adam_w_mode": false}})");
  const Trace adam_ref =
      train_reference(o, 8, 1, torch::kCPU, nullptr, 1.0, [](std::vector<torch::Tensor> p) {
        return std::make_unique<torch::optim::Adam>(
            std::move(p), torch::optim::AdamOptions(1e-3).weight_decay(0.01));
      });
  expect_params_close(train_engine(o, adam, 8, true), adam_ref);
  const Config adagrad = config(R"({"type": "adagrad", "params": {"weight_decay": 0.01}})");
  const Trace adagrad_ref =
      train_reference(o, 8, 1, torch::kCPU, nullptr, 1.0, [](std::vector<torch::Tensor> p) {
        return std::make_unique<torch::optim::Adagrad>(
            std::move(p), torch::optim::AdagradOptions(1e-2).eps(1e-10).weight_decay(0.01));
      });
  expect_params_close(train_engine(o, adagrad, 8, true), adagrad_ref, 1e-2);
}

// N micro-batches with accumulation train as one batch N times larger: the
// mean of the micro-batches' mean losses is the large batch's mean loss.
// Adam's eps is raised, and clipping is off, so that a wrong gradient scale
// shows, and the rounding noise of gradients that are zero in exact
// arithmetic (it differs between the two sums) stays far below the update
// instead of becoming +-lr.
TEST(EngineTest, AccumulationEqualsOneLargerBatch) {
  ScratchDir dir;
  const auto o = small_gpt();
  auto config = [&](int accumulation) {
    Homes s;
    s.param = "cpu";
    s.accumulation = accumulation;
    Config c = parse(config_json(s, dir.path().string()));
    c.optimizer->eps = 1e-3;
    c.gradient_clipping = 0;  // clipping would hide a wrong gradient scale
    return c;
  };
  const Config two = config(2), one = config(1);
  Engine<gpt::GPT> accumulated(build(o, two, true), two);
  Engine<gpt::GPT> large(build(o, one, true), one);
  for (std::uint64_t s = 0; s < 4; ++s) {
    auto [x0, y0] = micro_batch(o, 2 * s);
    auto [x1, y1] = micro_batch(o, 2 * s + 1);
    for (auto* xy : {&x0, &x1}) {
      const torch::Tensor& y = xy == &x0 ? y0 : y1;
      accumulated.backward(gpt::loss(accumulated(*xy), y));
      accumulated.step();
    }
    large.backward(gpt::loss(large(torch::cat({x0, x1})), torch::cat({y0, y1})));
    large.step();
  }
  EXPECT_EQ(accumulated.global_steps(), 4u);
  // Within 1e-6 of each tensor's largest value: the two sums round apart
  // by an ulp or so.
  const auto b = parameters(large);
  for (const auto& [name, x] : parameters(accumulated)) {
    const auto& y = b.at(name);
    EXPECT_LE((x - y).abs().max().item<double>(), 1e-6 * y.abs().max().item<double>()) << name;
  }
}

// gradient_clipping scales the gradients by min(1, clip / (norm + 1e-6)) of
// their global norm, as torch::nn::utils::clip_grad_norm_ does; a clip well
// below the model's gradient norm makes every step clip.
TEST(EngineTest, GradientClippingMatchesLibTorch) {
  ScratchDir dir;
  Homes s;
  s.param = "cpu";
  s.top_extra = R"(, "gradient_clipping": 0.05)";
  const Config cfg = parse(config_json(s, dir.path().string()));
  const auto o = small_gpt();
  const Trace ref = train_reference(o, 8, 1, torch::kCPU, nullptr, 0.05);
  Engine<gpt::GPT> engine(build(o, cfg, true), cfg);
  micro_step(engine, o, 0);
  EXPECT_GT(engine.last_step_report().grad_norm, 0.1);  // so every step clips
  const Trace got = train_engine(o, cfg, 8, true);
  expect_params_close(got, ref);
  expect_losses_close(got, ref);
}

// zinf.checkpoint_units: each unit's backward gathers it again and
// recomputes its forward. The run is the plain run, bit for bit, and the
// device holds fewer activations; with cpu_checkpointing the saved inputs
// wait in host memory, and fewer still.
TEST(EngineTest, CheckpointedUnitsTrainAsPlainOnesWithFewerActivations) {
  ScratchDir dir;
  auto o = small_gpt();
  o.seq = 64;
  struct Run {
    Trace trace;
    std::uint64_t peak = 0;
  };
  auto train = [&](const std::string& zinf_extra, const std::string& top_extra) {
    Homes s;
    s.param = "nvme";
    s.zinf_extra = zinf_extra;
    s.top_extra = top_extra;
    const Config cfg = parse(config_json(s, dir.path().string()));
    Engine<gpt::GPT> engine(build(o, cfg, true), cfg);
    Run r;
    for (std::uint64_t k = 0; k < 4; ++k) r.trace.losses.push_back(micro_step(engine, o, k, 8));
    r.trace.last = parameters(engine);
    r.peak = engine.memory_report().device_peak;
    return r;
  };
  const Run plain = train("", "");
  const Run ckpt = train(R"(, "checkpoint_units": true)", "");
  const Run host = train(R"(, "checkpoint_units": true)",
                         R"(, "activation_checkpointing": {"cpu_checkpointing": true,
                                                           "synchronize_checkpoint_boundary": true})");
  for (const Run* r : {&ckpt, &host}) {
    EXPECT_EQ(r->trace.losses, plain.trace.losses);
    for (const auto& [name, value] : plain.trace.last)
      EXPECT_TRUE(torch::equal(value, r->trace.last.at(name))) << name;
  }
  EXPECT_LT(ckpt.peak, plain.peak * 3 / 4)
      << "plain " << plain.peak << ", checkpointed " << ckpt.peak;
  EXPECT_LT(host.peak, ckpt.peak) << "on the device " << ckpt.peak << ", in host memory "
                                  << host.peak;
}

// Units with dropout: the replay in backward draws the masks the forward
// drew, so checkpointing changes nothing, and the random stream after a
// step is the one a plain run leaves.
struct NoisyImpl : torch::nn::Module {
  NoisyImpl() : fc(register_module("fc", torch::nn::Linear(32, 32))) {}
  torch::Tensor forward(torch::Tensor x) {
    return torch::dropout(torch::relu(fc(x)), 0.5, is_training());
  }
  torch::nn::Linear fc;
};
TORCH_MODULE(Noisy);

struct NoisyNetImpl : torch::nn::Module {
  NoisyNetImpl() : head(register_module("head", torch::nn::Linear(32, 1))) {
    for (int i = 0; i < 3; ++i)
      blocks.push_back(register_module("b" + std::to_string(i), zinf::Unit<Noisy>()));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& b : blocks) x = b(x);
    return head(x);
  }
  std::vector<zinf::Unit<Noisy>> blocks;
  torch::nn::Linear head;
};
TORCH_MODULE(NoisyNet);

TEST(EngineTest, CheckpointedUnitsReplayTheirDropoutMasks) {
  ScratchDir dir;
  auto train = [&](const std::string& zinf_extra) {
    Homes s;
    s.param = "cpu";
    s.persistence = 100;
    s.zinf_extra = zinf_extra;
    const Config cfg = parse(config_json(s, dir.path().string()));
    torch::manual_seed(11);
    Engine<NoisyNet> engine(NoisyNet(), cfg);
    std::vector<double> losses;
    for (int k = 0; k < 3; ++k) {
      auto loss = engine(torch::randn({16, 32})).pow(2).mean();
      engine.backward(loss);
      engine.step();
      losses.push_back(loss.item<double>());
    }
    losses.push_back(torch::rand({1}).item<double>());  // where the random stream is
    return std::pair{losses, parameters(engine)};
  };
  const auto [plain_losses, plain] = train("");
  const auto [ckpt_losses, ckpt] = train(R"(, "checkpoint_units": true)");
  EXPECT_EQ(ckpt_losses, plain_losses);
  for (const auto& [name, value] : plain) EXPECT_TRUE(torch::equal(value, ckpt.at(name))) << name;
}

// Resume equals no interruption: 6 steps, or 3 steps + save + load into a
// fresh engine over a model initialised otherwise + 3 steps, end with the
// same parameters bit for bit, at the same lr (the schedule's position) and
// global step, with the optimizer state in host memory or on NVMe, in fp32
// and bf16.
class EngineCheckpoints : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(EngineCheckpoints, ResumeEqualsNoInterruption) {
  ScratchDir dir;
  Homes s;
  s.param = "nvme";
  s.optim = std::get<0>(GetParam());
  s.top_extra = R"(, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 8}})";
  if (std::get<1>(GetParam())) s.top_extra += R"(, "bf16": {"enabled": true})";
  const Config cfg = parse(config_json(s, dir.path().string()));
  const auto o = small_gpt();
  Engine<gpt::GPT> straight(build(o, cfg, true), cfg);
  for (std::uint64_t k = 0; k < 6; ++k) micro_step(straight, o, k);
  const auto ckpt = dir.path() / "ckpt";
  {
    Engine<gpt::GPT> first(build(o, cfg, true), cfg);
    for (std::uint64_t k = 0; k < 3; ++k) micro_step(first, o, k);
    first.save_checkpoint(ckpt);
  }
  std::ifstream latest(ckpt / "latest");
  std::string tag;
  std::getline(latest, tag);
  EXPECT_EQ(tag, "global_step3");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(ckpt), {}), 2)
      << "tag and latest only";
  torch::manual_seed(99);
  Engine<gpt::GPT> resumed(zinf::partitioned(cfg, [&] { return gpt::GPT(o); }), cfg);
  resumed.load_checkpoint(ckpt);
  EXPECT_EQ(resumed.global_steps(), 3u);
  for (std::uint64_t k = 3; k < 6; ++k) micro_step(resumed, o, k);
  EXPECT_EQ(resumed.global_steps(), straight.global_steps());
  EXPECT_EQ(resumed.last_step_report().lr, straight.last_step_report().lr);
  const auto expected = parameters(straight);
  for (const auto& [name, value] : parameters(resumed))
    EXPECT_TRUE(torch::equal(value, expected.at(name))) << name;
}

INSTANTIATE_TEST_SUITE_P(Tiers, EngineCheckpoints,
                         ::testing::Combine(::testing::Values("cpu", "nvme"), ::testing::Bool()),
                         [](const auto& p) {
                           return "optim_" + std::get<0>(p.param) +
                                  (std::get<1>(p.param) ? "_bf16" : "_fp32");
                         });

// Inverts one byte of `file` in place.
void flip_byte(const std::filesystem::path& file, std::streamoff at) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  const auto byte = static_cast<char>(~f.get());
  f.seekp(at);
  f.put(byte);
}

// The engine says what each swap path is on, in its log and its memory
// report, and warns where one is memory (a tmpfs), not where it is a disk.
TEST(EngineTest, ReportsWhatEachSwapPathIsOnAndWarnsOnTmpfs) {
  std::error_code ec;
  const std::filesystem::path shm = "/dev/shm";
  if (!std::filesystem::is_directory(shm, ec) || !swap::describe_storage(shm).ram_backed)
    GTEST_SKIP() << "no tmpfs at /dev/shm here";
  const auto o = small_gpt();
  for (const bool on_tmpfs : {false, true}) {
    ScratchDir disk;
    const std::filesystem::path where = on_tmpfs ? shm : disk.path();
    Homes s;
    s.param = "nvme";
    s.optim = "nvme";
    const Config cfg = parse(config_json(s, where.string()));
    std::optional<Engine<gpt::GPT>> engine;
    std::string refused;
    const std::string log = test::stderr_of([&] {
      try {
        engine.emplace(build(o, cfg, false), cfg);
      } catch (const Error& e) {
        refused = e.what();
      }
    });
    if (on_tmpfs && refused.find("O_DIRECT") != std::string::npos)
      GTEST_SKIP() << "this kernel's tmpfs refuses O_DIRECT: " << refused;
    ASSERT_TRUE(refused.empty()) << refused;
    const MemoryReport m = engine->memory_report();
    ASSERT_EQ(m.nvme_paths.size(), 2u);
    for (const auto& p : m.nvme_paths) {
      EXPECT_EQ(p.path, where.string());
      EXPECT_EQ(p.storage.ram_backed, on_tmpfs) << p.storage.describe();
      EXPECT_NE(log.find(p.role + ".nvme_path " + where.string() + ": " + p.storage.describe()),
                std::string::npos)
          << log;
    }
    EXPECT_EQ(m.nvme_paths[0].role, "offload_param");
    EXPECT_EQ(m.nvme_paths[1].role, "offload_optimizer");
    EXPECT_EQ(log.find("memory, not NVMe") != std::string::npos, on_tmpfs) << log;
  }
}

// zinf-ckpt: inspect and verify a checkpoint, and consolidate it into one
// fp32 file that a plain LibTorch program loads with torch::load, holding
// the engine's parameters (DeepSpeed's zero_to_fp32); a corrupt one fails
// verify, naming the file.
TEST(EngineTest, ZinfCkptInspectsVerifiesAndConsolidates) {
  ScratchDir dir;
  Homes s;
  s.param = "nvme";
  s.optim = "nvme";
  const Config cfg = parse(config_json(s, dir.path().string()));
  const auto o = small_gpt();
  Engine<gpt::GPT> engine(build(o, cfg, true), cfg);
  for (std::uint64_t k = 0; k < 2; ++k) micro_step(engine, o, k);
  const auto ckpt = dir.path() / "ckpt";
  engine.save_checkpoint(ckpt);
  auto run = [](const std::string& args) {
    const auto job = test::run_shell(std::string(ZINF_CKPT_PATH) + " " + args);
    return std::pair{job.status, job.output};
  };
  auto [inspect_status, inspected] = run("inspect " + ckpt.string());
  EXPECT_EQ(inspect_status, 0) << inspected;
  EXPECT_NE(inspected.find("tag global_step2, step 2"), std::string::npos) << inspected;
  EXPECT_NE(inspected.find("h0.attn.qkv.weight"), std::string::npos) << inspected;
  auto [verify_status, verified] = run("verify " + ckpt.string());
  EXPECT_EQ(verify_status, 0) << verified;
  const auto out = dir.path() / "fp32.pt";
  auto [status, said] = run("consolidate " + ckpt.string() + " " + out.string());
  ASSERT_EQ(status, 0) << said;
  torch::manual_seed(5);
  gpt::GPT plain(o);
  torch::load(plain, out.string());
  const auto expected = parameters(engine);
  for (const auto& p : plain->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), expected.at(p.key()))) << p.key();
  flip_byte(ckpt / "global_step2" / "rank0.state", 100);
  auto [corrupt_status, complaint] = run("verify " + ckpt.string());
  EXPECT_EQ(corrupt_status, 1) << complaint;
  EXPECT_NE(complaint.find("rank0.state: state 0 fails its CRC32C"), std::string::npos)
      << complaint;
}

// zinf.trace_path: a Chrome trace with every stage's track, whose spans,
// track by track and step by step, add up to the StepReport's times and
// stay inside their step, with counters once a step (pinned bytes also
// once a micro-step); a span per NVMe transfer and per copy whose bytes add
// up to the report's, and per unit's forward and backward; a track per CPU
// optimizer thread and per NVMe lane; LibTorch's operators on their threads'.
TEST(EngineTest, TraceSpansAddUpToEachStepsReport) {
  ScratchDir dir;
  Homes s;
  s.param = "nvme";
  s.optim = "nvme";
  Config cfg = parse(config_json(s, dir.path().string()));
  cfg.zinf.trace_path = (dir.path() / "trace.json").string();
  const auto o = small_gpt();
  std::vector<StepReport> reports;
  {
    Engine<gpt::GPT> engine(build(o, cfg, false), cfg);
    for (std::uint64_t k = 0; k < 3; ++k) {
      micro_step(engine, o, k);
      reports.push_back(engine.last_step_report());
    }
  }
  std::ifstream in(dir.path() / "trace.json");
  const auto trace = nlohmann::json::parse(in);
  std::map<int, std::string> tracks;
  for (const auto& e : trace)
    if (e["ph"] == "M" && e["name"] == "thread_name") tracks[e["tid"]] = e["args"]["name"];
  const std::map<std::string, double StepReport::*> figures = {
      {"step (update)", &StepReport::step_s},
      {"forward + backward", &StepReport::fwd_bwd_s},
      {"compute", &StepReport::compute_s},
      {"stall (waiting for parameters)", &StepReport::stall_s},
      {"nvme: parameter reads", &StepReport::param_read_s},
      {"copy: host to device", &StepReport::h2d_s},
      {"copy: device to host", &StepReport::d2h_s},
      {"nvme: optimizer state + parameter write-back", &StepReport::optim_io_s},
      {"communication", &StepReport::comm_s},
      {"cpu adam", &StepReport::cpu_adam_s}};
  std::set<std::string> named;
  for (const auto& [tid, name] : tracks) named.insert(name);
  for (const auto& [name, figure] : figures) EXPECT_TRUE(named.count(name)) << name;
  std::map<std::pair<std::uint64_t, std::string>, double> sums;
  std::map<std::uint64_t, std::pair<double, double>> bounds;  // first forward, update's end (us)
  std::map<std::string, int> counters;
  for (const auto& e : trace) {
    if (e["ph"] == "C") ++counters[e["name"]];
    if (e["ph"] != "X") continue;
    const std::uint64_t step = e["args"]["step"];
    const std::string track = tracks.at(e["tid"]);
    const double ts = e["ts"], dur = e["dur"];
    EXPECT_GE(dur, 0) << track;
    sums[{step, track}] += dur / 1e6;
    auto& b = bounds.try_emplace(step, 1e300, -1e300).first->second;
    if (track == "forward + backward") b.first = std::min(b.first, ts);
    if (track == "step (update)") b.second = ts + dur;
  }
  ASSERT_EQ(bounds.size(), reports.size());
  for (const StepReport& r : reports) {
    for (const auto& [name, figure] : figures) {
      const double want = r.*figure;
      const double got = sums[{r.step, name}];
      EXPECT_NEAR(got, want, std::max(1e-6, 0.01 * want)) << "step " << r.step << ", " << name;
    }
    EXPECT_GT(r.param_read_s, 0) << "the test should see parameter reads";
  }
  for (const auto& e : trace) {
    if (e["ph"] != "X") continue;
    const auto [from, to] = bounds.at(e["args"]["step"]);
    const double ts = e["ts"], dur = e["dur"];
    EXPECT_GE(ts, from - 1e-3) << tracks.at(e["tid"]) << " before its step";
    EXPECT_LE(ts + dur, to + 1e-3) << tracks.at(e["tid"]) << " after its step";
  }
  EXPECT_EQ(counters["device bytes"], 3);
  EXPECT_EQ(counters["loss scale"], 3);
  EXPECT_EQ(counters["pinned bytes in use"], 6);  // after each micro-step and each step
  // Each NVMe transfer and each copy: an async span from its start to its
  // end, whose bytes add up, step by step, to the report's.
  std::map<std::pair<std::string, std::uint64_t>, double> began;
  std::map<std::tuple<std::uint64_t, std::string, std::string>, std::uint64_t> moved;
  std::set<std::string> units, copied;
  std::map<std::uint64_t, std::set<std::pair<std::string, std::string>>> computed;  // (unit, op)
  std::vector<std::pair<double, double>> unit_compute;
  for (const auto& e : trace) {
    if (e["ph"] == "b") {
      began[{e["cat"], e["id"]}] = e["ts"];
      if (e["cat"] == "compute: units")
        computed[e["args"]["step"]].emplace(e["name"].get<std::string>(),
                                            e["args"]["op"].get<std::string>());
      moved[{e["args"]["step"], e["cat"], e["args"]["op"]}] +=
          e["args"]["bytes"].get<std::uint64_t>();
      if (e["cat"] == "parameters") units.insert(e["name"]);
      if (e["cat"] == "copies: h2d" || e["cat"] == "copies: d2h") copied.insert(e["name"]);
      if (e["cat"] == "optimizer state") {
        EXPECT_TRUE(e["args"].contains("sub_group"));
      }
    } else if (e["ph"] == "e") {
      const auto b = began.find({e["cat"], e["id"]});
      ASSERT_NE(b, began.end()) << "an end without its begin";
      EXPECT_GE(e["ts"].get<double>(), b->second);
      if (e["cat"] == "compute: units") unit_compute.emplace_back(b->second, e["ts"]);
      began.erase(b);
    }
  }
  EXPECT_TRUE(began.empty()) << began.size() << " transfers without an end";
  for (const StepReport& r : reports) {
    EXPECT_EQ((moved[{r.step, "parameters", "read"}]), r.param_read_bytes) << "step " << r.step;
    EXPECT_EQ((moved[{r.step, "parameters", "write"}]), r.param_write_bytes) << "step " << r.step;
    EXPECT_EQ((moved[{r.step, "optimizer state", "read"}]), r.optim_read_bytes)
        << "step " << r.step;
    EXPECT_EQ((moved[{r.step, "optimizer state", "write"}]), r.optim_write_bytes)
        << "step " << r.step;
    EXPECT_EQ((moved[{r.step, "copies: h2d", "copy"}]), r.h2d_bytes) << "step " << r.step;
    EXPECT_EQ((moved[{r.step, "copies: d2h", "copy"}]), r.d2h_bytes) << "step " << r.step;
  }
  EXPECT_TRUE(units.count("h0") && units.count("head")) << "transfers are named after their units";
  // A span per unit's forward and backward, one after another on the
  // compute thread.
  for (const StepReport& r : reports) {
    for (const char* unit : {"h0", "h1", "head"}) {
      for (const char* op : {"forward", "backward"})
        EXPECT_TRUE(computed[r.step].count({unit, op})) << unit << " " << op << ", step " << r.step;
    }
  }
  std::sort(unit_compute.begin(), unit_compute.end());
  for (std::size_t k = 1; k < unit_compute.size(); ++k)
    EXPECT_GE(unit_compute[k].first, unit_compute[k - 1].second - 1e-3) << "units' spans overlap";
  // LibTorch's operators, each on its thread's track, inside its step: on
  // the emulated device every unit's forward and backward span holds some.
  std::vector<std::pair<double, double>> ops;
  std::set<std::string> op_names;
  std::set<std::uint64_t> op_steps;
  for (const auto& e : trace) {
    if (e["ph"] != "X" || tracks.at(e["tid"]).rfind("ops: thread ", 0) != 0) continue;
    ops.emplace_back(e["ts"].get<double>(), e["ts"].get<double>() + e["dur"].get<double>());
    op_names.insert(e["name"].get<std::string>());
    op_steps.insert(e["args"]["step"].get<std::uint64_t>());
  }
  EXPECT_EQ(op_steps.size(), reports.size()) << "a step without operators";
  EXPECT_TRUE(op_names.count("aten::linear") || op_names.count("aten::matmul")) << op_names.size();
  EXPECT_TRUE(std::any_of(op_names.begin(), op_names.end(), [](const std::string& n) {
    return n.find("Backward") != std::string::npos;
  })) << "autograd's backward functions";
  for (const auto& [from, to] : unit_compute) {
    EXPECT_TRUE(std::any_of(
        ops.begin(), ops.end(),
        [&](const auto& op) { return op.first >= from - 1e-3 && op.second <= to + 1e-3; }))
        << "a unit's span at " << from << " holds no operator";
  }
  EXPECT_TRUE(copied.count("h0")) << "a unit's copy onto the device is named after it";
  EXPECT_TRUE(std::any_of(copied.begin(), copied.end(), [](const std::string& n) {
    return n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
  })) << "a gradient's copy off it is named after its parameter";
  // Tracks of parts inside a stage's track: the optimizer's threads, each on
  // a track of its own, work only inside the cpu adam track's periods; each
  // NVMe lane's chunks are in flight only while its store's operations are.
  auto periods = [&](const std::string& track) {
    std::vector<std::pair<double, double>> out;
    for (const auto& e : trace) {
      if (e["ph"] == "X" && tracks.at(e["tid"]) == track)
        out.emplace_back(e["ts"].get<double>(), e["ts"].get<double>() + e["dur"].get<double>());
    }
    return out;
  };
  auto expect_inside = [&](const std::string& prefix, const std::string& suffix,
                           const std::string& whole) {
    const auto outer = periods(whole);
    int spans = 0;
    for (const auto& e : trace) {
      if (e["ph"] != "X") continue;
      const std::string& track = tracks.at(e["tid"]);
      if (track.rfind(prefix, 0) != 0 || track.size() < suffix.size() ||
          track.compare(track.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      ++spans;
      const double from = e["ts"], to = from + e["dur"].get<double>();
      EXPECT_TRUE(std::any_of(
          outer.begin(), outer.end(),
          [&](const auto& a) { return from >= a.first - 1e-3 && to <= a.second + 1e-3; }))
          << track << " at " << from << " outside the " << whole << " track";
    }
    EXPECT_GT(spans, 0) << prefix << "*" << suffix;
  };
  expect_inside("cpu adam thread ", "", "cpu adam");
  expect_inside("nvme parameters lane ", " reads", "nvme: parameter reads");
  expect_inside("nvme optimizer lane ", " writes", "nvme: optimizer state + parameter write-back");
  expect_inside("nvme optimizer lane ", " reads", "nvme: optimizer state + parameter write-back");
  EXPECT_EQ(offload::Trace::path_for("/runs/t.json", 0, 1), "/runs/t.json");
  EXPECT_EQ(offload::Trace::path_for("/runs/t.json", 1, 2), "/runs/t.rank1.json");
  Config bad = cfg;
  bad.zinf.trace_path = (dir.path() / "missing" / "trace.json").string();
  try {
    Engine<gpt::GPT> engine(build(o, bad, false), bad);
    ADD_FAILURE() << "built with a trace_path in a missing folder";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("zinf.trace_path: cannot create " + bad.zinf.trace_path),
              std::string::npos)
        << e.what();
  }
}

// A checkpoint that does not fit the engine (another model, a corrupt file,
// no checkpoint) is refused saying what differs, and nothing changes: with
// the optimizer state on NVMe (checked as it streams into the tier, which
// does not commit) and in host memory (checked as it fills a second copy,
// which is dropped).
class CheckpointRefusals : public ::testing::TestWithParam<std::string> {};

TEST_P(CheckpointRefusals, ACheckpointThatDoesNotFitIsRefusedWithNothingChanged) {
  ScratchDir dir;
  Homes s;
  s.param = "cpu";
  s.optim = GetParam();
  const Config cfg = parse(config_json(s, dir.path().string()));
  const auto o = small_gpt();
  const auto ckpt = dir.path() / "ckpt";
  {
    Engine<gpt::GPT> saver(build(o, cfg, true), cfg);
    micro_step(saver, o, 0);
    saver.save_checkpoint(ckpt, "mine");
  }
  for (const char* file : {"manifest.json", "rank0.state"})
    EXPECT_EQ(std::filesystem::status(ckpt / "mine" / file).permissions(),
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write)
        << file;
  EXPECT_EQ(std::filesystem::status(ckpt / "mine").permissions(),
            std::filesystem::perms::owner_all);
  auto expect_refused = [&](const gpt::Options& model, const std::string& needle) {
    Engine<gpt::GPT> engine(build(model, cfg, true), cfg);
    micro_step(engine, model, 0);
    micro_step(engine, model, 1);
    const auto before = parameters(engine);
    try {
      engine.load_checkpoint(ckpt);
      ADD_FAILURE() << "loaded; expected: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_EQ(engine.global_steps(), 2u);
    for (const auto& [name, value] : parameters(engine))
      EXPECT_TRUE(torch::equal(value, before.at(name))) << name;
  };
  auto wider = o;
  wider.hidden = 32;
  expect_refused(wider, "in the checkpoint, '");
  flip_byte(ckpt / "mine" / "rank0.state", 4096);
  expect_refused(o, "fails its CRC32C");
  std::ofstream(ckpt / "latest") << "../" << dir.path().filename().string();
  expect_refused(o, "is not a folder name");
  std::filesystem::create_directory_symlink(ckpt / "mine", ckpt / "linked");
  std::ofstream(ckpt / "latest") << "linked";
  expect_refused(o, "linked is a symbolic link");
  std::filesystem::remove(ckpt / "latest");
  expect_refused(o, "latest not found");
}

INSTANTIATE_TEST_SUITE_P(Tiers, CheckpointRefusals, ::testing::Values("nvme", "cpu"));

// The config's scheduler steps after each applied update, as DeepSpeed's
// engine does: update k runs with the schedule's lr(k - 2), lr(-1) being what
// its constructor sets; and the engine trains as LibTorch's AdamW driven by
// zinf::LrScheduler with the same block.
TEST(EngineTest, SchedulerStepsAfterEachUpdate) {
  ScratchDir dir;
  Homes s;
  s.param = "cpu";
  s.top_extra = R"(, "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0,
      "warmup_max_lr": 1e-3, "warmup_num_steps": 4, "warmup_type": "linear"}})";
  const Config cfg = parse(config_json(s, dir.path().string()));
  const auto o = small_gpt();
  Engine<gpt::GPT> engine(build(o, cfg, true), cfg);
  const double expected[] = {0.0, 0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3};
  for (std::uint64_t k = 0; k < std::size(expected); ++k) {
    micro_step(engine, o, k);
    EXPECT_FLOAT_EQ(engine.last_step_report().lr, expected[k]) << "update " << k + 1;
  }
  const Trace ref = train_reference(o, 8, 1, torch::kCPU, &cfg);
  const Trace got = train_engine(o, cfg, 8, true);
  expect_params_close(got, ref);
  expect_losses_close(got, ref);
}

TEST(EngineTest, NvmeEqualsCpuBitForBit) {
  ScratchDir dir;
  const auto o = small_gpt();
  Homes cpu;
  cpu.param = "cpu";
  Homes nvme;
  nvme.param = "nvme";
  nvme.optim = "nvme";
  const Trace a = train_engine(o, parse(config_json(cpu, dir.path().string())), 20, true);
  const Trace b = train_engine(o, parse(config_json(nvme, dir.path().string())), 20, true);
  ASSERT_EQ(a.last.size(), b.last.size());
  for (const auto& [name, value] : a.last)
    EXPECT_TRUE(torch::equal(value, b.last.at(name))) << name;
  EXPECT_EQ(a.losses, b.losses);
}

// Every parameter but the persistent ones (norms and biases, below the
// threshold of 1000 elements) has its home on NVMe: one value per unit,
// each padded to the I/O alignment.
void expect_on_nvme(const MemoryReport& m, const gpt::Options& o) {
  const std::uint64_t persistent = static_cast<std::uint64_t>(o.hidden) * (2 + 13 * o.layers);
  const std::uint64_t bytes = (static_cast<std::uint64_t>(o.parameters()) - persistent) * 4;
  const std::uint64_t units = static_cast<std::uint64_t>(o.layers) + 2;  // + root and head
  EXPECT_GE(m.nvme_params, bytes);
  EXPECT_LT(m.nvme_params, bytes + units * kIoAlignment);
}

// A model whose parameters are 4x the emulated device's budget trains within
// it; the same model with its parameters kept on the device does not fit.
TEST(EngineTest, TrainsAModelFourTimesTheDeviceBudget) {
  ScratchDir dir;
  // Wide blocks and one short sequence: parameters dominate the activations,
  // as in the large models this is for.
  gpt::Options o = small_gpt();
  o.layers = 15;
  o.hidden = 256;
  o.seq = 8;
  Homes s;
  s.param = "nvme";
  s.optim = "nvme";
  s.budget = 11 << 20;
  s.zero_extra = R"(, "stage3_max_live_parameters": 1650000,
                      "stage3_prefetch_bucket_size": 800000, "stage3_max_reuse_distance": 0)";
  const std::uint64_t param_bytes = static_cast<std::uint64_t>(o.parameters()) * sizeof(float);
  ASSERT_GE(param_bytes, 4 * s.budget);
  const Config cfg = parse(config_json(s, dir.path().string()));
  Engine<gpt::GPT> engine(build(o, cfg, true), cfg);
  std::vector<double> losses;
  for (int step = 0; step < 5; ++step) losses.push_back(micro_step(engine, o, 0, /*batch=*/1));
  const MemoryReport m = engine.memory_report();
  EXPECT_EQ(m.device_budget, s.budget);
  EXPECT_LE(m.device_peak, s.budget);
  EXPECT_GT(m.device_peak, s.budget / 2) << "the live units and activations are counted";
  expect_on_nvme(m, o);
  EXPECT_LT(losses.back(), losses.front()) << "training on one batch lowers its loss";
  const CoordinatorStats c = engine.coordinator_stats();
  EXPECT_GT(c.prefetch_hits, 0u);
  EXPECT_LE(c.peak_live_elements, 1650000u);

  Homes resident = s;
  resident.param = "none";
  const Config rc = parse(config_json(resident, dir.path().string()));
  try {
    Engine<gpt::GPT> e(build(o, rc, false), rc);
    FAIL() << "a model 4x the budget was placed on the device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the budget is 11.0 MiB"), std::string::npos) << e.what();
  }
}

// Resets the kernel's peak RSS of this process to its current RSS; false
// where that is not allowed.
// The heap's free memory goes back to the system first (glibc), so that
// what earlier tests freed is not reused unseen.
bool reset_peak_rss() {
  ::malloc_trim(0);
  std::ofstream clear("/proc/self/clear_refs");
  return static_cast<bool>(clear << "5" << std::flush);
}

std::uint64_t peak_rss() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) << 10;
  }
  return 0;
}

// zero.Init: building a model 8x the host memory this test allows, inside
// the scope, holds a few units at a time (the peak RSS, allocator slack
// included, is about 4 units here: 12.5-12.8 MB of a 127 MB model); without
// it, the whole model.
TEST(EngineTest, PartitionedConstructionHoldsAboutOneUnit) {
  if (kThreadSanitizer) GTEST_SKIP() << "under ThreadSanitizer the RSS holds its shadow memory";
  if (!reset_peak_rss()) GTEST_SKIP() << "/proc/self/clear_refs cannot reset the peak RSS here";
  ScratchDir dir;
  gpt::Options o;
  o.layers = 40;
  o.hidden = 256;
  o.vocab = 256;
  o.seq = 16;
  const std::uint64_t model_bytes = static_cast<std::uint64_t>(o.parameters()) * sizeof(float);
  const std::uint64_t unit_bytes = 12ull * o.hidden * o.hidden * sizeof(float);
  const std::uint64_t host_budget = model_bytes / 8;
  ASSERT_GE(host_budget, 3 * unit_bytes);
  Homes s;
  s.param = "nvme";
  s.optim = "nvme";
  const Config cfg = parse(config_json(s, dir.path().string()));
  {
    (void)reset_peak_rss();
    const std::uint64_t base = peak_rss();
    gpt::GPT model = build(o, cfg, /*partitioned=*/true);
    const std::uint64_t grown = peak_rss() - base;
    EXPECT_LE(grown, host_budget) << "peak RSS grew by " << grown << " building a model of "
                                  << model_bytes << " bytes (units of " << unit_bytes << ")";
    Engine<gpt::GPT> engine(model, cfg);
    expect_on_nvme(engine.memory_report(), o);
  }
  (void)reset_peak_rss();
  const std::uint64_t base = peak_rss();
  gpt::GPT whole = build(o, cfg, /*partitioned=*/false);
  EXPECT_GE(peak_rss() - base, model_bytes * 9 / 10) << "the measurement sees a whole model";
}

// Injected I/O faults on the parameter store (reads in forward and backward,
// write-back in the step) and on the optimizer's (its reads and writes in
// the step): EIO, ENOSPC on writes, a bit flipped in what a read returns,
// and short transfers. Each failure is a zinf::Error naming the phase and
// the swap file, the parameters are as before the step, and retrying the
// micro-step continues exactly as a run without the fault; a flipped bit is
// a checksum error, never data; a failed checkpoint leaves nothing behind
// and the next one is whole. Short transfers are continued and change
// nothing.
struct FaultCase {
  std::string store;  // "param" or "optimizer"
  swap::FaultKind kind;
  std::string expect;  // in every error's message; empty: no error at all
};

std::string fault_case_name(const ::testing::TestParamInfo<FaultCase>& info) {
  const char* kinds[] = {"eio", "enospc", "short", "eintr", "eagain", "delay", "drop", "flip"};
  return info.param.store + "_" + kinds[static_cast<int>(info.param.kind)];
}

class EngineFaults : public ::testing::TestWithParam<FaultCase> {};

TEST_P(EngineFaults, NameThePhaseAndTheFileAndLeaveTheStateAsBeforeTheStep) {
  const FaultCase& c = GetParam();
  ScratchDir dir;
  const auto o = small_gpt();
  Homes s;
  s.param = "nvme";
  s.optim = "nvme";
  s.zero_extra = R"(, "stage3_max_reuse_distance": 0)";  // backward reads the units again
  const Config cfg = parse(config_json(s, dir.path().string()));
  constexpr int kSteps = 3;
  const Trace clean = train_engine(o, cfg, kSteps, false);

  std::set<std::string> phases;
  // Every third request of the first step, then more sparsely through the
  // next steps and the checkpoint (about 700 optimizer requests in all).
  for (std::uint64_t nth = 1; nth <= 1000; nth += nth < 200 ? 3 : 11) {
    EngineOptions eo;
    swap::FaultSpec fault;
    fault.kind = c.kind;
    fault.nth = nth;
    if (c.kind == swap::FaultKind::kEnospc) fault.only = swap::IoOp::kWrite;
    if (c.kind == swap::FaultKind::kFlip) fault.only = swap::IoOp::kRead;
    (c.store == "param" ? eo.param_fault : eo.optimizer_fault) = fault;
    std::optional<Engine<gpt::GPT>> engine;
    try {
      engine.emplace(build(o, cfg, false), cfg, eo);
    } catch (const Error& e) {
      phases.insert("construction");
      continue;
    }
    // Reading the parameters back goes through the faulty store too; a
    // fault there fails the read alone, so read again.
    auto snapshot = [&] {
      try {
        return parameters(*engine);
      } catch (const Error&) {
        phases.insert("consolidation");
        return parameters(*engine);
      }
    };
    std::uint64_t k = 0;
    while (engine->global_steps() < kSteps) {
      const auto before = snapshot();
      const std::uint64_t steps = engine->global_steps();
      std::string phase = "forward";
      try {
        auto [x, y] = micro_batch(o, k);
        auto loss = gpt::loss((*engine)(x), y);
        phase = "backward";
        engine->backward(loss);
        phase = "step";
        engine->step();
        ++k;
      } catch (const Error& e) {
        phases.insert(phase);
        const std::string what = e.what();
        ASSERT_FALSE(c.expect.empty()) << phase << ": " << what;
        EXPECT_NE(what.find(c.expect), std::string::npos) << phase << ": " << what;
        EXPECT_NE(what.find(phase), std::string::npos) << phase << ": " << what;
        if (phase == "step") {
          const char* part = c.store == "optimizer" ? "the optimizer state"
                                                    : "writing back the updated parameters";
          EXPECT_NE(what.find(part), std::string::npos) << phase << ": " << what;
        }
        EXPECT_NE(what.find(dir.path().string()), std::string::npos)
            << phase << ": names no swap file: " << what;
        EXPECT_EQ(engine->global_steps(), steps) << phase;
        const auto after = snapshot();
        for (const auto& [name, value] : before)
          ASSERT_TRUE(torch::equal(value, after.at(name))) << phase << " changed " << name;
        // A failed step keeps its gradients: step() again; otherwise the
        // micro-step is run again.
        if (phase == "step") {
          engine->step();
          ++k;
        }
      }
    }
    const auto last = snapshot();
    for (const auto& [name, value] : clean.last)
      ASSERT_TRUE(torch::equal(value, last.at(name))) << "fault " << nth << ": " << name;

    // The checkpoint streams the optimizer state through the faulty store: a
    // failed save names itself and the file, leaves no folder, and the next
    // save is whole (a fresh engine loads it to the same parameters).
    const auto ckpt = dir.path() / ("ckpt" + std::to_string(nth));
    try {
      engine->save_checkpoint(ckpt, "t");
    } catch (const Error& e) {
      phases.insert("save_checkpoint");
      const std::string what = e.what();
      ASSERT_FALSE(c.expect.empty()) << what;
      EXPECT_NE(what.find(c.expect), std::string::npos) << what;
      EXPECT_NE(what.find("save_checkpoint"), std::string::npos) << what;
      EXPECT_NE(what.find("reading the optimizer state"), std::string::npos) << what;
      EXPECT_FALSE(std::filesystem::exists(ckpt / "t")) << what;
      engine->save_checkpoint(ckpt, "t");
    }
    if (nth % 5 != 1) continue;  // loading every one is slow and proves the same
    Engine<gpt::GPT> fresh(build(o, cfg, false), cfg);
    fresh.load_checkpoint(ckpt, "t");
    const auto loaded = parameters(fresh);
    for (const auto& [name, value] : clean.last)
      ASSERT_TRUE(torch::equal(value, loaded.at(name))) << "checkpoint " << nth << ": " << name;
  }
  if (c.expect.empty()) return;
  if (c.store == "param" && c.kind != swap::FaultKind::kEnospc) {
    EXPECT_TRUE(phases.count("forward")) << "no fault landed in a forward";
    EXPECT_TRUE(phases.count("backward")) << "no fault landed in a backward";
  }
  if (c.store == "optimizer" || c.kind != swap::FaultKind::kFlip) {
    EXPECT_TRUE(phases.count("step")) << "no fault landed in a step";
  }
  if (c.store == "optimizer" && c.kind != swap::FaultKind::kEnospc) {
    EXPECT_TRUE(phases.count("save_checkpoint")) << "no fault landed in a checkpoint";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Stores, EngineFaults,
    ::testing::Values(FaultCase{"param", swap::FaultKind::kEio, "Input/output error (errno 5)"},
                      FaultCase{"param", swap::FaultKind::kEnospc, "No space left on device"},
                      FaultCase{"param", swap::FaultKind::kFlip, "checksum mismatch"},
                      FaultCase{"param", swap::FaultKind::kShort, ""},
                      FaultCase{"optimizer", swap::FaultKind::kEio, "Input/output error (errno 5)"},
                      FaultCase{"optimizer", swap::FaultKind::kEnospc, "No space left on device"},
                      FaultCase{"optimizer", swap::FaultKind::kFlip, "checksum mismatch"},
                      FaultCase{"optimizer", swap::FaultKind::kShort, ""}),
    fault_case_name);

// A read the device never answers in time is lost: its phase fails, the
// buffer the kernel may still fill is kept out of use (retired from the
// parameter pool; a stand-in takes the optimizer buffer's place), and the
// phase run again succeeds while the kernel still holds it, so training ends
// where a run without the fault does.
class EngineLostRequest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineLostRequest, FailsItsPhaseAndTheRetryUsesOtherBuffers) {
  const std::string store = GetParam();
  ScratchDir dir;
  const auto o = small_gpt();
  Homes s;
  s.param = "nvme";
  s.optim = "nvme";
  s.zinf_extra = R"(, "io_timeout": 1)";  // cancelled after 1 s, lost after 2 s
  const Config cfg = parse(config_json(s, dir.path().string()));
  constexpr int kSteps = 2;
  const Trace clean = train_engine(o, cfg, kSteps, false);

  EngineOptions eo;
  swap::FaultSpec fault;
  fault.kind = swap::FaultKind::kDelay;
  fault.only = swap::IoOp::kRead;
  fault.nth = store == "param" ? 8 : 3;    // the construction reads each unit's partition once
  fault.delay = std::chrono::seconds(30);  // returned long after the retry (never, here)
  (store == "param" ? eo.param_fault : eo.optimizer_fault) = fault;
  Engine<gpt::GPT> engine(build(o, cfg, false), cfg, eo);
  int failures = 0;
  std::uint64_t k = 0;
  const auto start = std::chrono::steady_clock::now();
  while (engine.global_steps() < kSteps) {
    std::string phase = "forward";
    try {
      auto [x, y] = micro_batch(o, k);
      auto loss = gpt::loss(engine(x), y);
      phase = "backward";
      engine.backward(loss);
      phase = "step";
      engine.step();
      ++k;
    } catch (const Error& e) {
      ++failures;
      ASSERT_EQ(failures, 1) << "the retry failed too: " << e.what();
      EXPECT_NE(std::string(e.what()).find("lost"), std::string::npos) << e.what();
      EXPECT_EQ(phase, store == "param" ? "forward" : "step") << e.what();
      if (phase == "step") {
        engine.step();
        ++k;
      }
    }
  }
  EXPECT_EQ(failures, 1) << "the lost request failed nothing";
  EXPECT_LT(std::chrono::steady_clock::now() - start, fault.delay)
      << "the run waited for the kernel instead of using other buffers";
  const auto last = parameters(engine);
  for (const auto& [name, value] : clean.last)
    ASSERT_TRUE(torch::equal(value, last.at(name))) << name;
}

INSTANTIATE_TEST_SUITE_P(Stores, EngineLostRequest, ::testing::Values("param", "optimizer"));

// Faults in the checkpoint's own writes (the state file, through IoQueue),
// in each of a save's writes in turn: EIO and ENOSPC fail the save naming it
// and the file, leave no folder and no `latest`, and the next save is whole;
// short writes are continued.
class CheckpointWriteFaults : public ::testing::TestWithParam<swap::FaultKind> {};

TEST_P(CheckpointWriteFaults, FailTheSaveAloneAndTheNextIsWhole) {
  const swap::FaultKind kind = GetParam();
  ScratchDir dir;
  const auto o = small_gpt();
  Homes s;
  s.optim = "nvme";
  const Config cfg = parse(config_json(s, dir.path().string()));
  const Trace clean = train_engine(o, cfg, 2, false);
  // The writes of a save: its state arrays' chunks (the last of each may be short).
  std::uint64_t writes = 0;
  {
    Engine<gpt::GPT> engine(build(o, cfg, false), cfg);
    engine.save_checkpoint(dir.path() / "whole", "t");
    const auto c = offload::read_checkpoint(dir.path() / "whole", "t");
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    const std::uint64_t stride = c->layout(0).region_stride();
    writes = c->num_states * ((stride + offload::kStateChunk - 1) / offload::kStateChunk);
  }
  ASSERT_GE(writes, 3u);
  int failed = 0;
  for (std::uint64_t nth = 1; nth <= writes; ++nth) {
    EngineOptions eo;
    swap::FaultSpec fault;
    fault.kind = kind;
    fault.nth = nth;
    eo.checkpoint_fault = fault;
    Engine<gpt::GPT> engine(build(o, cfg, false), cfg, eo);
    for (std::uint64_t k = 0; k < 2; ++k) micro_step(engine, o, k);
    const auto ckpt = dir.path() / ("ckpt" + std::to_string(nth));
    try {
      engine.save_checkpoint(ckpt, "t");
      EXPECT_EQ(kind, swap::FaultKind::kShort) << "fault " << nth << " did not fail the save";
    } catch (const Error& e) {
      ++failed;
      const std::string what = e.what();
      EXPECT_NE(kind, swap::FaultKind::kShort) << what;
      EXPECT_NE(what.find("save_checkpoint"), std::string::npos) << what;
      EXPECT_NE(what.find("rank0.state"), std::string::npos) << what;
      EXPECT_NE(what.find(kind == swap::FaultKind::kEio ? "Input/output error"
                                                        : "No space left on device"),
                std::string::npos)
          << what;
      EXPECT_FALSE(std::filesystem::exists(ckpt / "t")) << what;
      EXPECT_FALSE(std::filesystem::exists(ckpt / "latest")) << what;
      engine.save_checkpoint(ckpt, "t");  // the fault was the next save's only
    }
    Engine<gpt::GPT> fresh(build(o, cfg, false), cfg);
    fresh.load_checkpoint(ckpt, "t");
    const auto loaded = parameters(fresh);
    for (const auto& [name, value] : clean.last)
      ASSERT_TRUE(torch::equal(value, loaded.at(name))) << "fault " << nth << ": " << name;
  }
  if (kind != swap::FaultKind::kShort) {
    EXPECT_EQ(failed, static_cast<int>(writes)) << "a fault did not fail its save";
  }
}

std::string fault_kind_name(const ::testing::TestParamInfo<swap::FaultKind>& info) {
  return fault_case_name({FaultCase{"write", info.param, ""}, info.index});
}

INSTANTIATE_TEST_SUITE_P(Kinds, CheckpointWriteFaults,
                         ::testing::Values(swap::FaultKind::kEio, swap::FaultKind::kEnospc,
                                           swap::FaultKind::kShort),
                         fault_kind_name);

// A model that calls its unit's module directly, bypassing the holder.
struct BypassImpl : torch::nn::Module {
  explicit BypassImpl(const gpt::Options& o) {
    wte = register_module("wte", torch::nn::Embedding(o.vocab, o.hidden));
    block = register_module("block", zinf::Unit<gpt::Block>(o));
  }
  torch::Tensor forward(const torch::Tensor& idx) { return block->forward(wte(idx)); }
  torch::nn::Embedding wte{nullptr};
  zinf::Unit<gpt::Block> block{nullptr};
};
TORCH_MODULE(Bypass);

TEST(EngineTest, AUnitUsedOutsideItsCallIsAClearError) {
  Homes s;
  s.param = "cpu";
  const Config cfg = parse(config_json(s, "."));
  const auto o = small_gpt();
  Engine<Bypass> engine(Bypass(o), cfg);
  try {
    engine(torch::zeros({2, o.seq}, torch::kLong));
    FAIL() << "a released unit ran";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("inside its zinf::Unit call"), std::string::npos) << what;
    EXPECT_NE(what.find("'block'"), std::string::npos) << what;
  }
}

TEST(EngineTest, AUnitLargerThanTheDeviceIsAnErrorNamingIt) {
  Homes s;
  s.param = "cpu";
  s.budget = 64 << 10;
  const Config cfg = parse(config_json(s, "."));
  try {
    Engine<gpt::GPT> engine(gpt::GPT(small_gpt()), cfg);
    FAIL() << "a unit larger than the device was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("unit 'h0' needs 192.0 KiB"), std::string::npos) << what;
    EXPECT_NE(what.find("zinf.device_budget"), std::string::npos) << what;
  }
}

TEST(EngineTest, MoreLiveParametersThanTheDeviceHoldsIsAnErrorNamingTheKey) {
  Homes s;
  s.param = "cpu";
  s.budget = 4 << 20;
  const Config cfg = parse(config_json(s, "."));  // stage3_max_live_parameters: 1e9 (4 GB)
  try {
    Engine<gpt::GPT> engine(gpt::GPT(small_gpt()), cfg);
    FAIL() << "max_live of 4 GB accepted on a 4 MiB device";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("stage3_max_live_parameters = 1000000000"), std::string::npos) << what;
    EXPECT_NE(what.find("lower it to at most 1048576"), std::string::npos) << what;
  }
}

// fp16 on the emulated device: Debian's CPU LibTorch has no fp16 matmul, so
// these use a chain of elementwise affine units (y = x * w + b), which it
// computes in fp16.
struct AffineImpl : torch::nn::Module {
  explicit AffineImpl(std::int64_t d) {
    w = register_parameter("w", 1 + 0.1 * torch::randn({d}));
    b = register_parameter("b", 0.1 * torch::randn({d}));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x * w + b; }
  torch::Tensor w, b;
};
TORCH_MODULE(Affine);

struct ChainImpl : torch::nn::Module {
  explicit ChainImpl(std::int64_t d) {
    for (int i = 0; i < 3; ++i)
      layers.push_back(register_module("l" + std::to_string(i), zinf::Unit<Affine>(d)));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& l : layers) x = l(x);
    return x;
  }
  std::vector<zinf::Unit<Affine>> layers;
};
TORCH_MODULE(Chain);

constexpr std::int64_t kWidth = 4096;

std::string fp16_config(const std::string& fp16, const std::string& nvme) {
  return R"({
    "train_micro_batch_size_per_gpu": 4,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
    "fp16": )" +
         fp16 + R"(,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1000,
      "offload_param": {"device": "nvme", "nvme_path": ")" +
         nvme + R"("},
      "offload_optimizer": {"device": "cpu"}},
    "zinf": {"device": "cpu"}
  })";
}

// One step of the chain on batch k; the loss in fp32.
double chain_step(Engine<Chain>& engine, std::uint64_t k, torch::ScalarType dtype) {
  torch::manual_seed(500 + k);
  auto x = torch::randn({4, kWidth}), y = torch::randn({4, kWidth});
  auto loss = torch::mse_loss(engine(x.to(dtype)).to(torch::kFloat), y);
  engine.backward(loss);
  engine.step();
  return loss.item<double>();
}

Engine<Chain> chain_engine(const Config& cfg) {
  torch::manual_seed(9);
  return Engine<Chain>(zinf::partitioned(cfg, [] { return Chain(kWidth); }), cfg);
}

// An fp16 run tracks the fp32 run: fp16 keeps 11 significant bits (relative
// rounding 2^-11, about 5e-4, per parameter and per activation), three layers
// deep; the fp32 masters keep the updates exact, so the losses stay within
// 1e-2 relative of each other over the run.
TEST(EngineFp16Test, TracksTheFp32Run) {
  ScratchDir dir;
  const Config f32 = parse(fp16_config(R"({"enabled": false})", dir.path().string()));
  const Config f16 = parse(fp16_config(R"({"enabled": true})", dir.path().string()));
  Engine<Chain> a = chain_engine(f32);
  Engine<Chain> b = chain_engine(f16);
  for (std::uint64_t k = 0; k < 20; ++k) {
    const double la = chain_step(a, k, torch::kFloat), lb = chain_step(b, k, torch::kHalf);
    EXPECT_NEAR(lb, la, 1e-2 * la) << "step " << k;
    EXPECT_DOUBLE_EQ(b.last_step_report().loss_scale, 65536) << "2^initial_scale_power";
    EXPECT_FALSE(b.last_step_report().skipped);
    EXPECT_DOUBLE_EQ(a.last_step_report().loss_scale, 1);
  }
  for (const auto& p : b.consolidated_parameters())
    EXPECT_EQ(p.value().scalar_type(), torch::kHalf);
}

// A scale that overflows fp16 gradients: each such step is skipped with the
// parameters unchanged; with hysteresis 2 the first overflow keeps the scale
// and every later one halves it, until the gradients fit.
TEST(EngineFp16Test, AnOverflowSkipsTheStepAndLowersTheScale) {
  ScratchDir dir;
  const Config cfg =
      parse(fp16_config(R"({"enabled": true, "initial_scale_power": 40})", dir.path().string()));
  Engine<Chain> engine = chain_engine(cfg);
  std::vector<double> scales;
  std::uint64_t k = 0;
  while (engine.skipped_steps() == k && k < 40) {
    const auto before = parameters(engine);
    chain_step(engine, k++, torch::kHalf);
    scales.push_back(engine.last_step_report().loss_scale);
    if (!engine.last_step_report().skipped) break;
    for (const auto& [name, value] : parameters(engine))
      ASSERT_TRUE(torch::equal(value, before.at(name))) << "a skipped step changed " << name;
  }
  ASSERT_GE(scales.size(), 4u);
  EXPECT_DOUBLE_EQ(scales[0], std::ldexp(1.0, 40));
  EXPECT_DOUBLE_EQ(scales[1], std::ldexp(1.0, 40)) << "hysteresis 2: the first overflow keeps it";
  EXPECT_DOUBLE_EQ(scales[2], std::ldexp(1.0, 39));
  EXPECT_DOUBLE_EQ(scales[3], std::ldexp(1.0, 38));
  EXPECT_FALSE(engine.last_step_report().skipped) << "the scale came down to one that fits";
  EXPECT_EQ(engine.global_steps(), k) << "skipped steps count as steps, as in DeepSpeed";
  EXPECT_EQ(engine.skipped_steps(), k - 1);
}

TEST(EngineFp16Test, TheScaleDoublesAfterEachWindowOfCleanSteps) {
  ScratchDir dir;
  const Config cfg = parse(fp16_config(
      R"({"enabled": true, "initial_scale_power": 8, "loss_scale_window": 2, "hysteresis": 1})",
      dir.path().string()));
  Engine<Chain> engine = chain_engine(cfg);
  const double expected[] = {256, 256, 256, 512, 512, 1024};
  for (std::uint64_t k = 0; k < std::size(expected); ++k) {
    chain_step(engine, k, torch::kHalf);
    EXPECT_DOUBLE_EQ(engine.last_step_report().loss_scale, expected[k]) << "step " << k + 1;
    EXPECT_FALSE(engine.last_step_report().skipped);
  }
}

// zinf-plan's model: gpt::Options::shapes() lists what the model builds.
TEST(EngineTest, TheGptShapesAreTheModelsParameters) {
  auto o = small_gpt();
  for (bool tied : {false, true}) {
    o.tied = tied;
    gpt::GPT model(o);
    std::vector<std::pair<std::string, std::vector<std::int64_t>>> listed, built;
    const auto shapes = o.shapes();
    for (const auto& p : shapes.root) listed.emplace_back(p.name, p.shape);
    for (const auto& u : shapes.units)
      for (const auto& p : u.params) listed.emplace_back(u.name + "." + p.name, p.shape);
    for (const auto& p : model->named_parameters()) {
      const bool in_unit = p.key().rfind("h", 0) == 0 || p.key().rfind("head.", 0) == 0;
      if (!in_unit) built.emplace_back(p.key(), p.value().sizes().vec());
    }
    for (const auto& p : model->named_parameters()) {
      const bool in_unit = p.key().rfind("h", 0) == 0 || p.key().rfind("head.", 0) == 0;
      if (in_unit) built.emplace_back(p.key(), p.value().sizes().vec());
    }
    EXPECT_EQ(listed, built) << "tied " << tied;
    std::int64_t n = 0;
    for (const auto& p : model->parameters()) n += p.numel();
    EXPECT_EQ(o.parameters(), n);
  }
}

// The planner's bytes are the engine's MemoryReport and the bytes its steps
// move, exactly, for each home of the parameters and the optimizer state,
// mixed precision too.
TEST(EngineTest, ThePlanIsTheEnginesMemoryExactly) {
  ScratchDir dir;
  const auto o = small_gpt();
  const auto shapes = o.shapes();
  offload::ModelShape model;
  auto convert = [](const std::vector<gpt::Options::Param>& params) {
    std::vector<offload::ModelParam> out;
    for (const auto& p : params) out.push_back({p.name, p.shape, torch::kFloat});
    return out;
  };
  model.root = convert(shapes.root);
  for (const auto& u : shapes.units) model.units.push_back({u.name, convert(u.params)});
  struct Case {
    std::string param, optim, top_extra;
    std::uint64_t persistence;
  };
  for (const Case& c : {Case{"none", "cpu", "", 1000}, Case{"cpu", "cpu", "", 1000},
                        Case{"nvme", "cpu", "", 100000}, Case{"none", "nvme", "", 1000},
                        Case{"nvme", "nvme", "", 1000},
                        Case{"nvme", "nvme", R"(, "bf16": {"enabled": true})", 1000}}) {
    SCOPED_TRACE(c.param + " / " + c.optim + c.top_extra);
    Homes s;
    s.param = c.param;
    s.optim = c.optim;
    s.top_extra = c.top_extra;
    s.persistence = c.persistence;
    const Config cfg = parse(config_json(s, dir.path().string()));
    auto plan = offload::plan_memory(model, cfg, 1, 0);
    ASSERT_TRUE(plan.is_ok()) << plan.status().to_string();
    Engine<gpt::GPT> engine(build(o, cfg, true), cfg);
    micro_step(engine, o, 0);  // a step: both NVMe slots of the optimizer's state written
    micro_step(engine, o, 1);  // and one that replays the coordinator's trace
    const MemoryReport m = engine.memory_report();
    const StepReport& r = engine.last_step_report();
    EXPECT_EQ(plan->h2d_bytes, r.h2d_bytes);
    EXPECT_EQ(plan->param_read_bytes, r.param_read_bytes);
    EXPECT_EQ(plan->d2h_bytes, r.d2h_bytes);
    EXPECT_EQ(plan->optim_read_bytes, r.optim_read_bytes);
    EXPECT_EQ(plan->optim_write_bytes, r.optim_write_bytes);
    EXPECT_EQ(plan->param_write_bytes, r.param_write_bytes);
    EXPECT_EQ(plan->host_params, m.host_params);
    EXPECT_EQ(plan->host_param_buffers, m.host_param_buffers);
    EXPECT_EQ(plan->host_grads, m.host_grads);
    EXPECT_EQ(plan->host_grad_buffers, m.host_grad_buffers);
    EXPECT_EQ(plan->host_optimizer, m.host_optimizer);
    EXPECT_EQ(plan->nvme_params, m.nvme_params);
    EXPECT_EQ(plan->nvme_optimizer, m.nvme_optimizer);
    EXPECT_EQ(plan->device_resident, m.device_live);  // between steps only the resident remain
    EXPECT_EQ(plan->elements, static_cast<std::uint64_t>(o.parameters()));
  }
}

}  // namespace
}  // namespace zinf
