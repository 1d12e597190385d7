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
#include <sys/resource.h>
#include <torch/torch.h>

#include <fstream>
#include <string>

#include "gpt/model.hpp"
#include "swap/swap_test_util.hpp"
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
  std::string extra;                 // more zero_optimization keys, with a leading comma
};

std::string config_json(const Homes& s, const std::string& nvme) {
  std::string json = R"({
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 1,
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
                     s.optim + R"(", "nvme_path": ")" + nvme + R"("})" + s.extra + R"(
    },
    "zinf": {"device": "cpu"}
  })";
  return json;
}

Config parse(const std::string& json) {
  auto c = Config::from_string(json);
  if (!c.is_ok()) throw Error(c.status());
  return *c;
}

// Plain LibTorch: the model and torch::optim::AdamW; the loss of each step
// and the parameters after the first.
struct Trace {
  std::vector<double> losses;
  std::map<std::string, torch::Tensor> after_first;
};

Trace train_reference(const gpt::Options& o, int steps) {
  torch::manual_seed(7);
  gpt::GPT model(o);
  torch::optim::AdamW opt(
      model->parameters(),
      torch::optim::AdamWOptions(1e-3).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.01));
  gpt::Batches data(synthetic_text(), 4, o.seq, 1);
  Trace t;
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = data.get(s);
    opt.zero_grad();
    auto loss = gpt::loss(model(x), y);
    loss.backward();
    opt.step();
    t.losses.push_back(loss.item<double>());
    if (s == 0) {
      for (const auto& p : model->named_parameters()) t.after_first[p.key()] = p.value().clone();
    }
  }
  return t;
}

Trace train_engine(const gpt::Options& o, const Config& cfg, int steps, bool partitioned) {
  torch::manual_seed(7);
  gpt::GPT model = partitioned ? zinf::partitioned(cfg, [&] { return gpt::GPT(o); }) : gpt::GPT(o);
  Engine<gpt::GPT> engine(model, cfg);
  gpt::Batches data(synthetic_text(), 4, o.seq, 1);
  Trace t;
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = data.get(s);
    auto loss = gpt::loss(engine(x.to(engine.device())), y.to(engine.device()));
    engine.backward(loss);
    engine.step();
    t.losses.push_back(loss.item<double>());
    if (s == 0) {
      for (const auto& p : engine.consolidated_parameters()) t.after_first[p.key()] = p.value();
    }
  }
  return t;
}

void expect_params_close(const Trace& a, const Trace& ref) {
  ASSERT_EQ(a.after_first.size(), ref.after_first.size());
  for (const auto& [name, r] : ref.after_first) {
    auto it = a.after_first.find(name);
    ASSERT_NE(it, a.after_first.end()) << name;
    auto x = it->second.to(torch::kDouble), y = r.to(torch::kDouble);
    ASSERT_EQ(x.sizes(), y.sizes()) << name;
    auto excess = ((x - y).abs() - (1e-6 * y.abs() + 1e-9)).max().item<double>();
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

INSTANTIATE_TEST_SUITE_P(AllHomes, EngineEquivalence,
                         ::testing::Combine(::testing::Values("none", "cpu", "nvme"),
                                            ::testing::Values("cpu", "nvme")),
                         [](const auto& info) {
                           return "param_" + std::get<0>(info.param) + "_optim_" +
                                  std::get<1>(info.param);
                         });

}  // namespace
}  // namespace zinf
