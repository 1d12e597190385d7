// The drop-in optimizers against LibTorch's own, and their offload-specific
// contracts: nvme == cpu bit for bit, exact save/load across modes, atomic
// steps under injected I/O faults, skipped non-finite steps.
//
// Tolerance against LibTorch (fp32): 1e-5 relative with a 1e-7 absolute floor
// for values near zero, after 200 steps. The two implementations round
// differently (fused multiply-adds, 1/sqrt(bc2) as a product), a few ulp per
// step, and the differences feed back through the gradients.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "swap/swap_test_util.hpp"
#include "zinf/zinf.hpp"

namespace zinf {
namespace {

using swap::testing::ScratchDir;

struct Mlp : torch::nn::Module {
  Mlp() {
    fc1 = register_module("fc1", torch::nn::Linear(16, 32));
    fc2 = register_module("fc2", torch::nn::Linear(32, 8));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

std::shared_ptr<Mlp> make_mlp(torch::Dtype dtype = torch::kFloat,
                              torch::Device device = torch::kCPU) {
  torch::manual_seed(0);
  auto m = std::make_shared<Mlp>();
  m->to(device, dtype);
  return m;
}

// One training step on fixed data (the same for every model, drawn on the CPU
// and moved to the model's device).
void train_step(Mlp& model, torch::optim::Optimizer& opt, int step) {
  torch::manual_seed(1000 + step);
  const torch::Tensor& w = model.fc1->weight;
  auto x = torch::randn({64, 16}).to(w.device(), w.scalar_type());
  auto y = torch::randn({64, 8}).to(w.device(), w.scalar_type());
  opt.zero_grad();
  auto loss = torch::mse_loss(model.forward(x).to(torch::kFloat), y.to(torch::kFloat));
  loss.backward();
  opt.step();
}

// Steps [first, last) of train_step on two models side by side.
void train_both(Mlp& a, torch::optim::Optimizer& opt_a, Mlp& b, torch::optim::Optimizer& opt_b,
                int first, int last) {
  for (int s = first; s < last; ++s) {
    train_step(a, opt_a, s);
    train_step(b, opt_b, s);
  }
}

void expect_close(const Mlp& a, const Mlp& b, double rel, double abs_floor) {
  auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    auto x = pa[i].to(torch::kDouble), y = pb[i].to(torch::kDouble);
    auto err = (x - y).abs() - (rel * y.abs() + abs_floor);
    EXPECT_LE(err.max().item<double>(), 0.0)
        << "parameter " << i << ": max abs diff " << (x - y).abs().max().item<double>();
  }
}

void expect_equal(const Mlp& a, const Mlp& b) {
  auto pa = a.parameters(), pb = b.parameters();
  for (std::size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(torch::equal(pa[i], pb[i])) << "parameter " << i;
}

class OffloadTest : public ::testing::TestWithParam<std::string> {
 protected:
  OffloadOptions offload(std::uint64_t sub_group = 300) {
    OffloadOptions o;
    o.device(GetParam()).nvme_path(dir_.path().string()).sub_group_size(sub_group).threads(2);
    o.queue_depth(8).block_size(64 << 10);
    return o;
  }
  ScratchDir dir_;
};

TEST_P(OffloadTest, AdamWMatchesLibTorchOver200Steps) {
  auto ref = make_mlp(), ours = make_mlp();
  auto opts = torch::optim::AdamWOptions(1e-3).weight_decay(0.05).betas({0.9, 0.98});
  torch::optim::AdamW torch_opt(ref->parameters(), opts);
  OffloadAdamW zinf_opt(ours->parameters(), opts, offload());
  train_both(*ref, torch_opt, *ours, zinf_opt, 0, 200);
  expect_close(*ours, *ref, 1e-5, 1e-7);
}

TEST_P(OffloadTest, AdamWithL2MatchesLibTorch) {
  auto ref = make_mlp(), ours = make_mlp();
  auto opts = torch::optim::AdamOptions(1e-2).weight_decay(0.01);
  torch::optim::Adam torch_opt(ref->parameters(), opts);
  OffloadAdam zinf_opt(ours->parameters(), opts, offload());
  train_both(*ref, torch_opt, *ours, zinf_opt, 0, 200);
  expect_close(*ours, *ref, 1e-5, 1e-7);
}

TEST_P(OffloadTest, AdagradMatchesLibTorch) {
  auto ref = make_mlp(), ours = make_mlp();
  auto opts = torch::optim::AdagradOptions(5e-2)
                  .weight_decay(0.01)
                  .lr_decay(1e-3)
                  .initial_accumulator_value(0.1);
  torch::optim::Adagrad torch_opt(ref->parameters(), opts);
  OffloadAdagrad zinf_opt(ours->parameters(), opts, offload());
  train_both(*ref, torch_opt, *ours, zinf_opt, 0, 200);
  expect_close(*ours, *ref, 1e-5, 1e-7);
}

TEST_P(OffloadTest, ParamGroupsLrChangesAndUndefinedGradsAsLibTorch) {
  auto ref = make_mlp(), ours = make_mlp();
  auto groups = [](Mlp& m) {
    std::vector<torch::optim::OptimizerParamGroup> g;
    g.emplace_back(m.fc1->parameters());
    g.emplace_back(m.fc2->parameters(), std::make_unique<torch::optim::AdamWOptions>(3e-3));
    return g;
  };
  torch::optim::AdamW torch_opt(groups(*ref), torch::optim::AdamWOptions(1e-2));
  OffloadAdamW zinf_opt(groups(*ours), torch::optim::AdamWOptions(1e-2), offload());
  for (int s = 0; s < 60; ++s) {
    if (s == 30) {
      for (auto* opt : {static_cast<torch::optim::Optimizer*>(&torch_opt),
                        static_cast<torch::optim::Optimizer*>(&zinf_opt)}) {
        opt->param_groups()[0].options().set_lr(2e-3);
      }
    }
    train_step(*ref, torch_opt, s);
    train_step(*ours, zinf_opt, s);
    if (s % 7 == 0) {  // a step in which fc2's bias gets no gradient at all
      for (Mlp* m : {ref.get(), ours.get()}) m->fc2->bias.mutable_grad() = torch::Tensor();
    }
  }
  expect_close(*ours, *ref, 1e-5, 1e-7);
}

TEST_P(OffloadTest, ClippingMatchesClipGradNormThenAdamW) {
  auto ref = make_mlp(), ours = make_mlp();
  auto opts = torch::optim::AdamWOptions(1e-2);
  torch::optim::AdamW torch_opt(ref->parameters(), opts);
  OffloadAdamW zinf_opt(ours->parameters(), opts, offload().max_grad_norm(0.05));
  for (int s = 0; s < 50; ++s) {
    torch::manual_seed(1000 + s);
    auto x = torch::randn({64, 16}), y = torch::randn({64, 8});
    for (auto [m, o] : {std::pair<Mlp*, torch::optim::Optimizer*>{ref.get(), &torch_opt},
                        {ours.get(), &zinf_opt}}) {
      o->zero_grad();
      torch::mse_loss(m->forward(x), y).backward();
      if (o == &torch_opt) torch::nn::utils::clip_grad_norm_(m->parameters(), 0.05);
      o->step();
    }
    EXPECT_GT(zinf_opt.last_grad_norm(), 0.05);
  }
  expect_close(*ours, *ref, 1e-5, 1e-7);
}

TEST_P(OffloadTest, NonFiniteGradientSkipsTheStepAndChangesNothing) {
  auto model = make_mlp();
  OffloadAdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2), offload());
  train_step(*model, opt, 0);
  auto before = make_mlp();
  for (std::size_t i = 0; i < model->parameters().size(); ++i) {
    before->parameters()[i].detach().copy_(model->parameters()[i]);
  }
  opt.zero_grad();
  torch::mse_loss(model->forward(torch::randn({4, 16})), torch::randn({4, 8})).backward();
  model->fc1->weight.mutable_grad()[0][0] = std::numeric_limits<float>::infinity();
  opt.step();
  EXPECT_TRUE(opt.last_step_skipped());
  EXPECT_EQ(opt.skipped_steps(), 1u);
  expect_equal(*model, *before);
  // The skipped step did not count: continuing matches a run that never saw it.
  auto clean = make_mlp();
  OffloadAdamW clean_opt(clean->parameters(), torch::optim::AdamWOptions(1e-2), offload());
  train_step(*clean, clean_opt, 0);
  train_step(*model, opt, 1);
  train_step(*clean, clean_opt, 1);
  EXPECT_FALSE(opt.last_step_skipped());
  expect_equal(*model, *clean);
}

// Low-precision parameters (LibTorch 1.13 has no fp16 matmul on the CPU, so
// the gradients are drawn directly): each step must equal an fp32 AdamW run
// on the fp32 master, rounded to the parameter's dtype.
TEST_P(OffloadTest, Fp16AndBf16ParamsFollowAnFp32MasterReference) {
  for (torch::Dtype dtype : {torch::kHalf, torch::kBFloat16}) {
    torch::manual_seed(5);
    std::vector<torch::Tensor> low = {torch::randn({37, 11}).to(dtype).requires_grad_(),
                                      torch::randn({501}).to(dtype).requires_grad_()};
    std::vector<torch::Tensor> master;
    for (const auto& p : low) master.push_back(p.detach().to(torch::kFloat).requires_grad_());
    auto opts = torch::optim::AdamWOptions(1e-2).weight_decay(0.01);
    OffloadAdamW opt(low, opts, offload());
    torch::optim::AdamW ref(master, opts);
    for (int s = 0; s < 20; ++s) {
      for (std::size_t i = 0; i < low.size(); ++i) {
        auto g = torch::randn(low[i].sizes()).to(dtype);
        low[i].mutable_grad() = g;
        master[i].mutable_grad() = g.to(torch::kFloat);
      }
      opt.step();
      ref.step();
      for (std::size_t i = 0; i < low.size(); ++i) {
        auto expected = master[i].detach().to(dtype).to(torch::kFloat);
        auto got = low[i].detach().to(torch::kFloat);
        // One rounding to the low precision of nearly the same fp32 value: at
        // most one ulp apart (2^-10 fp16, 2^-7 bf16, relative).
        const double ulp = dtype == torch::kHalf ? 1.0 / 1024 : 1.0 / 128;
        auto err = (got - expected).abs() - (ulp * expected.abs() + 1e-7);
        ASSERT_LE(err.max().item<double>(), 0.0)
            << c10::toString(dtype) << " step " << s << " parameter " << i;
      }
    }
  }
}

TEST_P(OffloadTest, SaveLoadContinueIsExactAcrossModes) {
  for (std::string other : {"cpu", "nvme"}) {
    auto straight = make_mlp();
    OffloadAdamW straight_opt(straight->parameters(), torch::optim::AdamWOptions(1e-2), offload());
    for (int s = 0; s < 20; ++s) train_step(*straight, straight_opt, s);

    auto first = make_mlp();
    OffloadAdamW first_opt(first->parameters(), torch::optim::AdamWOptions(1e-2), offload());
    for (int s = 0; s < 10; ++s) train_step(*first, first_opt, s);
    std::stringstream model_bytes, opt_bytes;
    torch::save(first->parameters(), model_bytes);
    torch::save(first_opt, opt_bytes);

    auto second = make_mlp();
    std::vector<torch::Tensor> params;
    torch::load(params, model_bytes);
    for (std::size_t i = 0; i < params.size(); ++i)
      second->parameters()[i].detach().copy_(params[i]);
    OffloadAdamW second_opt(second->parameters(), torch::optim::AdamWOptions(1e-2),
                            offload().device(other));
    torch::load(second_opt, opt_bytes);
    for (int s = 10; s < 20; ++s) train_step(*second, second_opt, s);
    expect_equal(*second, *straight);
  }
}

TEST_P(OffloadTest, LoadRejectsAMismatchedCheckpoint) {
  auto model = make_mlp();
  OffloadAdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2), offload());
  std::stringstream bytes;
  torch::save(opt, bytes);
  OffloadAdamW fewer(model->fc1->parameters(), torch::optim::AdamWOptions(1e-2), offload());
  try {
    torch::load(fewer, bytes);
    FAIL() << "loaded a checkpoint with the wrong number of parameters";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint has 4 parameters"), std::string::npos)
        << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, OffloadTest, ::testing::Values("cpu", "nvme"));

bool have_cuda() { return torch::cuda::is_available(); }
constexpr const char* kNoCuda = "no CUDA device, or LibTorch built without CUDA";

// Parameters on a CUDA device reach the same CPU kernel through host copies:
// given the same gradients they end bit-identical to the same parameters on
// the CPU, in every dtype.
class CudaOffloadTest : public OffloadTest {
 protected:
  void SetUp() override {
    if (!have_cuda()) GTEST_SKIP() << kNoCuda;
  }
};

TEST_P(CudaOffloadTest, SameResultAsCpuParametersInEveryDtype) {
  for (torch::Dtype dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    auto host = make_mlp(dtype), device = make_mlp(dtype, torch::kCUDA);
    auto opts = torch::optim::AdamWOptions(1e-2).weight_decay(0.01);
    OffloadAdamW host_opt(host->parameters(), opts, offload(100));
    OffloadAdamW device_opt(device->parameters(), opts, offload(100));
    for (int s = 0; s < 20; ++s) {
      torch::manual_seed(s);
      for (std::size_t i = 0; i < host->parameters().size(); ++i) {
        auto g = torch::randn(host->parameters()[i].sizes()).to(dtype);
        host->parameters()[i].mutable_grad() = g;
        device->parameters()[i].mutable_grad() = g.to(torch::kCUDA);
      }
      host_opt.step();
      device_opt.step();
    }
    for (std::size_t i = 0; i < host->parameters().size(); ++i) {
      EXPECT_TRUE(device->parameters()[i].is_cuda());
      EXPECT_TRUE(torch::equal(host->parameters()[i], device->parameters()[i].cpu()))
          << c10::toString(dtype) << " parameter " << i;
    }
  }
}

TEST_P(CudaOffloadTest, TrainsOnTheGpuLikeLibTorchAdamW) {
  auto ref = make_mlp(torch::kFloat, torch::kCUDA), ours = make_mlp(torch::kFloat, torch::kCUDA);
  auto opts = torch::optim::AdamWOptions(1e-3).weight_decay(0.05);
  torch::optim::AdamW torch_opt(ref->parameters(), opts);
  OffloadAdamW zinf_opt(ours->parameters(), opts, offload());
  train_both(*ref, torch_opt, *ours, zinf_opt, 0, 200);
  expect_close(*ours, *ref, 1e-5, 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Devices, CudaOffloadTest, ::testing::Values("cpu", "nvme"));

class NvmeOffloadTest : public ::testing::Test {
 protected:
  OffloadOptions options(std::uint64_t sub_group = 300) {
    return OffloadOptions()
        .device("nvme")
        .nvme_path(dir_.path().string())
        .sub_group_size(sub_group)
        .threads(2)
        .queue_depth(8)
        .block_size(64 << 10)
        .intra_op_parallelism(1);
  }
  ScratchDir dir_;
};

TEST_F(NvmeOffloadTest, BitIdenticalToCpuModeAcrossSubGroups) {
  auto cpu = make_mlp(), nvme = make_mlp();
  OffloadAdamW cpu_opt(cpu->parameters(), torch::optim::AdamWOptions(1e-2),
                       options(100).device("cpu"));
  OffloadAdamW nvme_opt(nvme->parameters(), torch::optim::AdamWOptions(1e-2),
                        options(100).buffer_count(9));
  train_both(*cpu, cpu_opt, *nvme, nvme_opt, 0, 30);
  expect_equal(*cpu, *nvme);
  EXPECT_EQ(nvme_opt.last_step_stats().sub_groups, 9u);            // 808 elements / 100
  EXPECT_EQ(nvme_opt.last_step_stats().bytes_written, 808u * 12);  // master, exp_avg, exp_avg_sq
  EXPECT_EQ(nvme_opt.last_step_stats().bytes_read, 808u * 12);
  EXPECT_GT(nvme_opt.tier_bytes().nvme, 0u);
}

// NVMe mode streams the state through its pool: whatever the sub-group
// size, it holds less host memory than cpu mode (which holds all of it) and
// no more than DeepSpeed's default buffer_count (4 buffers of a sub-group)
// would, and still trains to the same values.
TEST_F(NvmeOffloadTest, HoldsLessHostMemoryThanCpuModeAtAnySubGroupSize) {
  torch::manual_seed(3);
  const std::int64_t n = 4 << 20;
  auto make = [&] { return torch::randn({n}).requires_grad_(true); };
  auto cpu_param = make();
  OffloadAdamW cpu_opt({cpu_param}, torch::optim::AdamWOptions(1e-3), options().device("cpu"));
  const std::uint64_t cpu_host = cpu_opt.tier_bytes().host;
  EXPECT_EQ(cpu_host, 3u * n * 4);
  for (std::uint64_t sub_group :
       {std::uint64_t{1000000000}, std::uint64_t{1000000}, std::uint64_t{300000}}) {
    torch::manual_seed(3);
    auto nvme_param = make();
    OffloadAdamW nvme_opt({nvme_param}, torch::optim::AdamWOptions(1e-3),
                          options(sub_group).block_size(1 << 20));
    const TierBytes b = nvme_opt.tier_bytes();
    EXPECT_LE(b.host, cpu_host / 2) << "sub_group_size " << sub_group;
    EXPECT_LE(b.host, 4 * std::min<std::uint64_t>(sub_group, n) * 4)
        << "sub_group_size " << sub_group;
    EXPECT_GE(b.nvme, 3u * n * 4) << "sub_group_size " << sub_group;  // + page padding
    nvme_param.mutable_grad() = torch::ones({n});
    nvme_opt.step();
    EXPECT_EQ(nvme_opt.last_step_stats().bytes_read, 3u * n * 4);
  }
}

// A run with an I/O fault in its 3rd step must end exactly like a run
// without it: the failed step changes nothing, and the retry succeeds.
void expect_fault_is_atomic(const OffloadOptions& faulty, const OffloadOptions& clean,
                            StatusCode code, torch::Device device = torch::kCPU) {
  auto a = make_mlp(torch::kFloat, device), b = make_mlp(torch::kFloat, device);
  OffloadAdamW opt_a(a->parameters(), torch::optim::AdamWOptions(1e-2), faulty);
  OffloadAdamW opt_b(b->parameters(), torch::optim::AdamWOptions(1e-2), clean);
  train_both(*a, opt_a, *b, opt_b, 0, 2);
  auto snapshot = make_mlp(torch::kFloat, device);
  for (std::size_t i = 0; i < a->parameters().size(); ++i)
    snapshot->parameters()[i].detach().copy_(a->parameters()[i]);
  try {
    train_step(*a, opt_a, 2);
    FAIL() << "the injected fault did not surface";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find("zinf-swap-"), std::string::npos)
        << "names the file: " << e.what();
  }
  expect_equal(*a, *snapshot);
  train_both(*a, opt_a, *b, opt_b, 2, 5);
  expect_equal(*a, *b);
}

// One EIO on the nth read or write. 808 elements in sub-groups of 300: 3
// sub-groups x 3 states, one request each; initialisation writes 9, each
// step reads 9 and writes 9.
swap::FaultSpec one_eio(swap::IoOp op, std::uint64_t nth) {
  swap::FaultSpec f;
  f.kind = swap::FaultKind::kEio;
  f.only = op;
  f.nth = nth;
  f.max_faults = 1;
  return f;
}
constexpr std::uint64_t kFifthWriteOfThirdStep = 9 + 9 + 9 + 5;

TEST_F(NvmeOffloadTest, WriteErrorMidStepIsAtomic) {
  expect_fault_is_atomic(options().fault(one_eio(swap::IoOp::kWrite, kFifthWriteOfThirdStep)),
                         options(), StatusCode::kIoError);
}

// The restore after a fault writes the previous values back to the device.
TEST_F(NvmeOffloadTest, WriteErrorMidStepIsAtomicForCudaParameters) {
  if (!have_cuda()) GTEST_SKIP() << kNoCuda;
  expect_fault_is_atomic(options().fault(one_eio(swap::IoOp::kWrite, kFifthWriteOfThirdStep)),
                         options(), StatusCode::kIoError, torch::kCUDA);
}

TEST_F(NvmeOffloadTest, ReadErrorMidStepIsAtomic) {
  const std::uint64_t fourth_read_of_third_step = 9 + 9 + 4;
  expect_fault_is_atomic(options().fault(one_eio(swap::IoOp::kRead, fourth_read_of_third_step)),
                         options(), StatusCode::kIoError);
}

TEST_F(NvmeOffloadTest, ShortTransfersAreInvisible) {
  swap::FaultSpec f;
  f.kind = swap::FaultKind::kShort;
  f.rate = 0.5;
  auto a = make_mlp(), b = make_mlp();
  OffloadAdamW opt_a(a->parameters(), torch::optim::AdamWOptions(1e-2), options(3000).fault(f));
  OffloadAdamW opt_b(b->parameters(), torch::optim::AdamWOptions(1e-2),
                     options(3000).device("cpu"));
  train_both(*a, opt_a, *b, opt_b, 0, 5);
  expect_equal(*a, *b);
}

TEST_F(NvmeOffloadTest, CorruptedSwapFileIsDataLossAndChangesNothing) {
  auto model = make_mlp();
  OffloadAdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2), options());
  train_step(*model, opt, 0);
  auto snapshot = make_mlp();
  for (std::size_t i = 0; i < model->parameters().size(); ++i) {
    snapshot->parameters()[i].detach().copy_(model->parameters()[i]);
  }
  // Flip one byte of every swap extent on disk (the current slot is among them).
  std::filesystem::path file;
  for (auto& d : std::filesystem::recursive_directory_iterator(dir_.path())) {
    if (d.is_regular_file()) file = d.path();
  }
  ASSERT_FALSE(file.empty());
  const int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  std::vector<unsigned char> original(std::filesystem::file_size(file));
  ASSERT_EQ(::pread(fd, original.data(), original.size(), 0),
            static_cast<ssize_t>(original.size()));
  auto corrupted = original;
  for (std::size_t off = 100; off < corrupted.size(); off += 4096) corrupted[off] ^= 0x10;
  ASSERT_EQ(::pwrite(fd, corrupted.data(), corrupted.size(), 0),
            static_cast<ssize_t>(corrupted.size()));
  try {
    train_step(*model, opt, 1);
    FAIL() << "corruption went unnoticed";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), StatusCode::kDataLoss) << e.what();
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
  }
  expect_equal(*model, *snapshot);
  // The disk is repaired (the fault clears): the next step works.
  ASSERT_EQ(::pwrite(fd, original.data(), original.size(), 0),
            static_cast<ssize_t>(original.size()));
  ::close(fd);
  train_step(*model, opt, 1);
  EXPECT_FALSE(opt.last_step_skipped());
}

TEST_F(NvmeOffloadTest, ConstructionErrorsNameTheKey) {
  auto model = make_mlp();
  auto expect_error = [&](const OffloadOptions& o, const torch::optim::AdamWOptions& a,
                          const std::string& needle) {
    try {
      OffloadAdamW opt(model->parameters(), a, o);
      FAIL() << "accepted: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(options().buffer_count(3), {}, "offload_optimizer.buffer_count");
  expect_error(options().buffer_count(3), {}, "takes 4 buffers");
  expect_error(options().nvme_path(""), {}, "nvme_path");
  expect_error(options().device("disk"), {}, "offload_optimizer.device");
  expect_error(options(), torch::optim::AdamWOptions().amsgrad(true), "amsgrad");
  OffloadLion lion(model->parameters(), LionOptions(),
                   options().buffer_count(3));  // Lion keeps 2 states: 3 is enough
}

// A gradient set by hand that does not match its parameter is refused by
// name before anything changes (it would be read past its end).
TEST_F(NvmeOffloadTest, AGradientThatDoesNotMatchItsParameterIsAnError) {
  for (const char* device : {"cpu", "nvme"}) {
    auto p = torch::randn({10}).requires_grad_();
    const auto before = p.detach().clone();
    OffloadAdamW opt({p}, torch::optim::AdamWOptions(1e-2), options().device(device));
    for (const auto& [grad, needle] :
         {std::pair{torch::ones({5}), "its gradient is Float[5] on cpu, the parameter Float[10]"},
          std::pair{torch::ones({2, 5}), "its gradient is Float[2, 5]"},
          std::pair{torch::ones({10}, torch::kDouble), "its gradient is Double[10]"}}) {
      p.mutable_grad() = grad;
      try {
        opt.step();
        ADD_FAILURE() << device << ": accepted " << needle;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
      EXPECT_TRUE(torch::equal(p.detach(), before)) << device;
    }
    p.mutable_grad() = torch::ones({10});
    opt.step();  // and a matching one still steps
    EXPECT_FALSE(torch::equal(p.detach(), before)) << device;
  }
}

TEST_F(NvmeOffloadTest, OptionsFromADeepSpeedConfig) {
  const auto path = dir_.path() / "ds.json";
  std::ofstream(path) << R"({"gradient_clipping": 1.5,
    "zero_optimization": {"stage": 2, "sub_group_size": 1e6,
      "offload_optimizer": {"device": "nvme", "nvme_path": ")"
                      << dir_.path().string() << R"(", "buffer_count": 8}},
    "aio": {"block_size": 262144, "queue_depth": 16}})";
  OffloadOptions o = OffloadOptions::from_json_file(path.string());
  EXPECT_EQ(o.device(), "nvme");
  EXPECT_EQ(o.buffer_count(), 8u);
  EXPECT_EQ(o.sub_group_size(), 1000000u);
  EXPECT_EQ(o.max_grad_norm(), 1.5);
  EXPECT_EQ(o.queue_depth(), 16u);
  std::ofstream(path) << R"({"aio": {"queue_dpth": 16}})";
  try {
    OffloadOptions::from_json_file(path.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("aio.queue_dpth: unknown key"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace zinf
