// Drop-in LibTorch optimizers whose fp32 master weights and moments live off
// the device (host memory or NVMe) and whose step runs on the CPU
// (ZeRO-Offload):
//
//   zinf::OffloadAdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3),
//                          zinf::OffloadOptions().device("nvme").nvme_path("/mnt/nvme"));
//   loss.backward(); opt.step(); opt.zero_grad();
//
// Parameters may be fp32, fp16 or bf16, on the CPU or a CUDA device. Each step:
// gradients come to host memory; one read pass gives the global L2 norm and
// whether every value is finite (if not, the step is skipped and nothing
// changes); the CPU kernel updates the fp32 master and moments with the
// unscale/clip factor fused in and writes the parameter in its own dtype.
//
// NVMe mode: states are cut into sub-groups of sub_group_size elements and
// streamed in pieces through a pinned pool (buffer_count buffers of one
// piece's state array; host memory is the pool's size, at most half of what
// cpu mode holds, whatever sub_group_size is); a step is a pipeline (read
// piece i+1 and write i-1 while computing i). Each piece has two slots on
// NVMe; a step reads the current one and writes the other, and the
// optimizer switches to the new slots only once every write succeeded. An
// I/O error therefore leaves the previous state intact: step() restores the
// parameters from it and throws zinf::Error.
//
// Thread safety: as LibTorch's optimizers, one thread at a time.
// Param groups: all groups are known at construction; add_param_group()
// afterwards is not supported (step() throws).
#pragma once

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "zinf/common/busy_time.hpp"
#include "zinf/offload/offload_options.hpp"

namespace zinf {

// Lion (Chen et al. 2023), in LibTorch's options style.
struct LionOptions : public torch::optim::OptimizerCloneableOptions<LionOptions> {
  explicit LionOptions(double lr = 1e-4) : lr_(lr) {}
  TORCH_ARG(double, lr) = 1e-4;
  typedef std::tuple<double, double> betas_t;
  TORCH_ARG(betas_t, betas) = std::make_tuple(0.9, 0.99);
  TORCH_ARG(double, weight_decay) = 0.0;

 public:  // TORCH_ARG leaves the struct in a private section
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

// What the last step did, for measuring overlap: the busy time of each stage
// and the wall time of the whole step.
struct StepStats {
  double wall_s = 0;
  double gather_s = 0;   // gradients to host + norm pass
  double compute_s = 0;  // CPU kernel
  double read_s = 0;     // waiting for NVMe reads (not hidden by compute)
  double write_s = 0;    // waiting for NVMe writes (not hidden by compute)
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
  std::uint64_t sub_groups = 0;
  std::vector<Interval> compute_periods;  // when the CPU kernel ran (compute_s is their sum)
};

// Bytes each tier holds for the optimizer, and how the host bytes are held.
struct TierBytes {
  std::uint64_t host = 0;      // master/moments in host memory, or the swap buffers
  std::uint64_t nvme = 0;      // live bytes in the swap files
  bool host_pinned = false;    // the host bytes are page-locked
  bool fixed_buffers = false;  // nvme: io_uring moves them as registered buffers
};

class OffloadOptimizer : public torch::optim::Optimizer {
 public:
  ~OffloadOptimizer() override;

  torch::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  bool last_step_skipped() const;
  std::uint64_t skipped_steps() const;
  double last_grad_norm() const;
  const StepStats& last_step_stats() const;
  TierBytes tier_bytes() const;
  const OffloadOptions& offload_options() const;

  struct Impl;

 protected:
  enum class Kind { kAdamW, kAdam, kAdagrad, kLion };
  OffloadOptimizer(std::vector<torch::optim::OptimizerParamGroup> groups,
                   std::unique_ptr<torch::optim::OptimizerOptions> defaults, OffloadOptions offload,
                   Kind kind);

 private:
  std::unique_ptr<Impl> impl_;
};

class OffloadAdamW : public OffloadOptimizer {
 public:
  explicit OffloadAdamW(std::vector<torch::Tensor> params, torch::optim::AdamWOptions defaults = {},
                        OffloadOptions offload = {});
  explicit OffloadAdamW(std::vector<torch::optim::OptimizerParamGroup> groups,
                        torch::optim::AdamWOptions defaults = {}, OffloadOptions offload = {});
};

// Adam with L2 weight decay (LibTorch's torch::optim::Adam semantics).
class OffloadAdam : public OffloadOptimizer {
 public:
  explicit OffloadAdam(std::vector<torch::Tensor> params, torch::optim::AdamOptions defaults = {},
                       OffloadOptions offload = {});
  explicit OffloadAdam(std::vector<torch::optim::OptimizerParamGroup> groups,
                       torch::optim::AdamOptions defaults = {}, OffloadOptions offload = {});
};

class OffloadAdagrad : public OffloadOptimizer {
 public:
  explicit OffloadAdagrad(std::vector<torch::Tensor> params,
                          torch::optim::AdagradOptions defaults = {}, OffloadOptions offload = {});
  explicit OffloadAdagrad(std::vector<torch::optim::OptimizerParamGroup> groups,
                          torch::optim::AdagradOptions defaults = {}, OffloadOptions offload = {});
};

class OffloadLion : public OffloadOptimizer {
 public:
  explicit OffloadLion(std::vector<torch::Tensor> params, LionOptions defaults = LionOptions(),
                       OffloadOptions offload = {});
  explicit OffloadLion(std::vector<torch::optim::OptimizerParamGroup> groups,
                       LionOptions defaults = LionOptions(), OffloadOptions offload = {});
};

}  // namespace zinf
