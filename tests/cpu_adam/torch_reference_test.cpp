// cpu_adam against LibTorch's own optimizers on the same data: 100 steps of
// fresh random gradients (no model, so no feedback between the two), fp32.
//
// Bound: |ours - torch| <= 1e-6 * max(|torch|, rms(torch)), element-wise.
// Both sides round every operation to fp32 and differ only in which ones are
// fused, so each step adds up to ~1 ulp of difference and 100 steps walk to
// ~10 ulp of the parameters' scale (1 ulp at 1.0 is 1.2e-7): measured 7.2e-7
// at rms 0.95. An element that passes near zero keeps that absolute error,
// which no two differently-rounding fp32 implementations could hold to 1e-6
// of the element itself; hence the tensor's rms as the floor.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "zinf/cpu_adam/cpu_adam.hpp"

namespace zinf::cpu_adam {
namespace {

constexpr std::int64_t kN = 100003;
constexpr int kSteps = 100;

void expect_close(const torch::Tensor& ours, const torch::Tensor& ref, const char* what) {
  auto x = ours.to(torch::kDouble), y = ref.to(torch::kDouble);
  const double rms = y.pow(2).mean().sqrt().item<double>();
  auto excess = (x - y).abs() - 1e-6 * y.abs().clamp_min(rms);
  EXPECT_LE(excess.max().item<double>(), 0.0)
      << what << ": max abs difference " << (x - y).abs().max().item<double>() << " at rms " << rms;
}

// Runs `make_optimizer`'s LibTorch optimizer and cpu_adam side by side.
template <typename MakeTorch>
void compare(const Hyper& h, MakeTorch&& make_torch, float initial_v = 0.0f) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    SCOPED_TRACE(std::string(to_string(isa)));
    torch::manual_seed(3);
    auto ref_param = torch::randn({kN}).requires_grad_();
    auto ref_opt = make_torch(ref_param);
    auto p = ref_param.detach().clone();
    auto m = torch::zeros({kN}), v = torch::full({kN}, initial_v);
    auto exec = Executor::create(2, isa);
    ASSERT_TRUE(exec.is_ok());
    for (int s = 1; s <= kSteps; ++s) {
      auto g = torch::randn({kN});
      ref_param.mutable_grad() = g;
      ref_opt->step();
      Buffers b{p.data_ptr(), Dtype::kF32, g.data_ptr(), Dtype::kF32, m.data_ptr(),
                v.data_ptr(), Dtype::kF32, nullptr,      Dtype::kF16, static_cast<std::size_t>(kN)};
      Hyper step_h = h;
      if (h.algorithm == Algorithm::kAdagrad)
        step_h.lr = h.lr / (1.0f + static_cast<float>(s - 1) * 1e-3f);
      ASSERT_TRUE((*exec)->step(step_h, s, b).is_ok());
    }
    expect_close(p, ref_param.detach(), "parameters");
  }
}

TEST(TorchReferenceTest, AdamW) {
  Hyper h;
  h.lr = 1e-2f;
  h.beta1 = 0.9f;
  h.beta2 = 0.99f;
  h.weight_decay = 0.1f;
  h.adamw_mode = true;
  compare(h, [](torch::Tensor& p) {
    return std::make_unique<torch::optim::AdamW>(
        std::vector<torch::Tensor>{p},
        torch::optim::AdamWOptions(1e-2).betas({0.9, 0.99}).weight_decay(0.1));
  });
}

TEST(TorchReferenceTest, AdamWithL2) {
  Hyper h;
  h.lr = 1e-2f;
  h.weight_decay = 0.05f;
  h.adamw_mode = false;
  compare(h, [](torch::Tensor& p) {
    return std::make_unique<torch::optim::Adam>(std::vector<torch::Tensor>{p},
                                                torch::optim::AdamOptions(1e-2).weight_decay(0.05));
  });
}

TEST(TorchReferenceTest, Adagrad) {
  Hyper h;
  h.algorithm = Algorithm::kAdagrad;
  h.lr = 1e-2f;
  h.eps = 1e-10f;
  h.weight_decay = 0.01f;
  compare(
      h,
      [](torch::Tensor& p) {
        return std::make_unique<torch::optim::Adagrad>(std::vector<torch::Tensor>{p},
                                                       torch::optim::AdagradOptions(1e-2)
                                                           .lr_decay(1e-3)
                                                           .weight_decay(0.01)
                                                           .initial_accumulator_value(0.1));
      },
      0.1f);
}

}  // namespace
}  // namespace zinf::cpu_adam
