// OffloadOptimizer: the LibTorch surface over cpu_adam (the step) and a
// StateTier (where the fp32 state lives). See the header for the contract.
//
// Layout. Parameters are flattened in param-group order into one element
// space; sub-groups are consecutive ranges of it, visited in pieces, so a
// parameter may span pieces. A piece finds its segments (parameter, offset,
// length) by binary search over the parameters' offsets.
//
// Masters and parameters. A parameter always equals its master rounded to the
// parameter's dtype: that is what makes a failed NVMe step restorable exactly
// (the previous masters are intact on disk). A parameter changed outside the
// optimizer (torch::load into the model, a manual edit) is noticed through its
// version counter and its master is taken from it again at the next step.
#include "zinf/offload/offload_optimizer.hpp"

#include <torch/serialize/archive.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "offload/state_tier.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/cpu_adam/cpu_adam.hpp"

namespace zinf {

using offload::Piece;
using offload::Segment;
namespace ca = cpu_adam;

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::int64_t kFormatVersion = 1;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A gradient must be its parameter's shape, dtype and device (what
// autograd gives, and LibTorch's optimizers assume); one set by hand that
// is not would be read past its end or reinterpreted.
Status check_gradient(const torch::Tensor& param, const torch::Tensor& grad,
                      const std::string& name) {
  auto describe = [](const torch::Tensor& t) {
    std::string dims;
    for (auto d : t.sizes()) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    return std::string(c10::toString(t.scalar_type())) + "[" + dims + "] on " + t.device().str();
  };
  if (grad.sizes() == param.sizes() && grad.scalar_type() == param.scalar_type() &&
      grad.device() == param.device()) {
    return Status::ok();
  }
  return Status::invalid_argument(
      name + ": its gradient is " + describe(grad) + ", the parameter " + describe(param) +
      "; a gradient must match its parameter's shape, dtype and device");
}

Result<ca::Dtype> dtype_of(const torch::Tensor& t, const std::string& what) {
  switch (t.scalar_type()) {
    case torch::kFloat:
      return ca::Dtype::kF32;
    case torch::kHalf:
      return ca::Dtype::kF16;
    case torch::kBFloat16:
      return ca::Dtype::kBF16;
    default:
      return Status::invalid_argument(what + " has dtype " +
                                      std::string(c10::toString(t.scalar_type())) +
                                      "; zinf optimizers take float32, float16 or bfloat16");
  }
}

// AdamWOptions and AdamOptions have the same accessors; AdamW decouples the
// weight decay, Adam adds it to the gradient (L2).
template <typename Options>
ca::Hyper adam_hyper(const Options& o, bool adamw) {
  ca::Hyper h;
  h.algorithm = ca::Algorithm::kAdam;
  h.lr = static_cast<float>(o.lr());
  h.beta1 = static_cast<float>(std::get<0>(o.betas()));
  h.beta2 = static_cast<float>(std::get<1>(o.betas()));
  h.eps = static_cast<float>(o.eps());
  h.weight_decay = static_cast<float>(o.weight_decay());
  h.adamw_mode = adamw;
  return h;
}

}  // namespace

struct OffloadOptimizer::Impl {
  struct Param {
    torch::Tensor tensor;
    std::size_t group = 0;
    std::string name;  // "group g, parameter i", for messages
    std::uint64_t offset = 0;
    std::uint64_t numel = 0;
    ca::Dtype dtype = ca::Dtype::kF32;
    std::int64_t step = 0;
    std::int64_t version = 0;
  };

  Kind kind;
  OffloadOptions options;
  std::vector<Param> params;
  offload::TierShape shape;
  std::unique_ptr<ca::Executor> executor;
  std::unique_ptr<offload::StateTier> tier;
  bool last_skipped = false;
  std::uint64_t skipped = 0;
  double last_norm = 0;
  StepStats stats;

  const char* algorithm_name() const {
    switch (kind) {
      case Kind::kAdamW:
        return "AdamW";
      case Kind::kAdam:
        return "Adam";
      case Kind::kAdagrad:
        return "Adagrad";
      case Kind::kLion:
        return "Lion";
    }
    return "?";
  }

  ca::Hyper hyper(const torch::optim::OptimizerOptions& opts, std::int64_t step) const {
    ca::Hyper h;
    switch (kind) {
      case Kind::kAdamW:
        return adam_hyper(static_cast<const torch::optim::AdamWOptions&>(opts), true);
      case Kind::kAdam:
        return adam_hyper(static_cast<const torch::optim::AdamOptions&>(opts), false);
      case Kind::kAdagrad: {
        const auto& o = static_cast<const torch::optim::AdagradOptions&>(opts);
        h.algorithm = ca::Algorithm::kAdagrad;
        h.lr = static_cast<float>(o.lr() / (1.0 + static_cast<double>(step - 1) * o.lr_decay()));
        h.eps = static_cast<float>(o.eps());
        h.weight_decay = static_cast<float>(o.weight_decay());
        break;
      }
      case Kind::kLion: {
        const auto& o = static_cast<const LionOptions&>(opts);
        h.algorithm = ca::Algorithm::kLion;
        h.lr = static_cast<float>(o.lr());
        h.beta1 = static_cast<float>(std::get<0>(o.betas()));
        h.beta2 = static_cast<float>(std::get<1>(o.betas()));
        h.weight_decay = static_cast<float>(o.weight_decay());
        break;
      }
    }
    return h;
  }

  int num_states() const { return kind == Kind::kAdamW || kind == Kind::kAdam ? 3 : 2; }

  float initial_moment(const torch::optim::OptimizerOptions& opts) const {
    if (kind != Kind::kAdagrad) return 0.0f;
    return static_cast<float>(
        static_cast<const torch::optim::AdagradOptions&>(opts).initial_accumulator_value());
  }

  // The moment arrays of a piece, as cpu_adam names them.
  std::pair<float*, float*> moments(const Piece& piece) const {
    switch (kind) {
      case Kind::kAdagrad:
        return {nullptr, piece.state[1]};
      case Kind::kLion:
        return {piece.state[1], nullptr};
      default:
        return {piece.state[1], piece.state[2]};
    }
  }

  // The parameters' parts inside `piece`, in order.
  std::vector<offload::Segment> segments(const Piece& piece) const {
    return offload::segments(
        params.size(), piece, [&](std::size_t i) { return params[i].offset; },
        [&](std::size_t i) { return params[i].numel; });
  }
};

OffloadOptimizer::OffloadOptimizer(std::vector<torch::optim::OptimizerParamGroup> groups,
                                   std::unique_ptr<torch::optim::OptimizerOptions> defaults,
                                   OffloadOptions offload, Kind kind)
    : torch::optim::Optimizer(std::move(groups), std::move(defaults)),
      impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.kind = kind;
  m.options = std::move(offload);
  if (m.options.device() != "cpu" && m.options.device() != "nvme") {
    throw Error(Status::invalid_argument(
        "offload_optimizer.device (OffloadOptions::device) must be \"cpu\" or "
        "\"nvme\", got \"" +
        m.options.device() + "\""));
  }
  if (m.options.sub_group_size() == 0) {
    throw Error(Status::invalid_argument(
        "zero_optimization.sub_group_size (OffloadOptions::sub_group_size) must be >= 1"));
  }
  std::uint64_t total = 0;
  for (std::size_t g = 0; g < param_groups().size(); ++g) {
    const auto& group = param_groups()[g];
    if ((kind == Kind::kAdamW &&
         static_cast<const torch::optim::AdamWOptions&>(group.options()).amsgrad()) ||
        (kind == Kind::kAdam &&
         static_cast<const torch::optim::AdamOptions&>(group.options()).amsgrad())) {
      throw Error(Status::unimplemented("param group " + std::to_string(g) +
                                        ": amsgrad is not supported by zinf"));
    }
    for (std::size_t i = 0; i < group.params().size(); ++i) {
      Impl::Param p;
      p.tensor = group.params()[i];
      p.group = g;
      p.name = "param group " + std::to_string(g) + ", parameter " + std::to_string(i);
      auto dtype = dtype_of(p.tensor, p.name);
      throw_if_error(dtype.status());
      if (!p.tensor.is_contiguous())
        throw Error(Status::invalid_argument(p.name + " is not contiguous"));
      p.dtype = *dtype;
      p.numel = static_cast<std::uint64_t>(p.tensor.numel());
      p.offset = total;
      p.version = p.tensor._version();
      total += p.numel;
      m.params.push_back(std::move(p));
    }
  }
  m.shape.groups = offload::TierShape::even_groups(total, m.options.sub_group_size());
  m.shape.num_states = m.num_states();
  auto executor = ca::Executor::create(m.options.threads());
  throw_if_error(executor.status());
  m.executor = std::move(*executor);

  // The initial state: masters from the parameters, moments from the options.
  auto init = [&](Piece& piece) -> Status {
    for (int s = 1; s < m.shape.num_states; ++s) std::fill_n(piece.state[s], piece.count, 0.0f);
    for (const Segment& seg : m.segments(piece)) {
      const auto& p = m.params[seg.item];
      const torch::Tensor flat = p.tensor.detach().reshape({-1}).narrow(
          0, static_cast<std::int64_t>(seg.item_offset), static_cast<std::int64_t>(seg.length));
      torch::Tensor master =
          torch::from_blob(piece.state[0] + seg.piece_offset,
                           {static_cast<std::int64_t>(seg.length)}, torch::kFloat);
      master.copy_(flat);
      const float moment = m.initial_moment(param_groups()[p.group].options());
      if (moment != 0.0f) std::fill_n(piece.state[1] + seg.piece_offset, seg.length, moment);
    }
    return Status::ok();
  };
  torch::NoGradGuard no_grad;
  auto tier = m.options.device() == "nvme"
                  ? offload::make_nvme_tier(m.shape, m.options, m.algorithm_name(), init)
                  : offload::make_host_tier(m.shape, m.options.pin_memory(), init);
  throw_if_error(tier.status());
  m.tier = std::move(*tier);
}

OffloadOptimizer::~OffloadOptimizer() = default;

torch::Tensor OffloadOptimizer::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode enable(true);
    loss = closure();
  }
  Impl& m = *impl_;
  const auto t_start = Clock::now();
  m.stats = {};
  std::size_t count = 0;
  for (const auto& g : param_groups()) count += g.params().size();
  if (count != m.params.size()) {
    throw Error(
        Status::failed_precondition("zinf optimizers take all their parameters at construction; "
                                    "add_param_group afterwards is not supported"));
  }

  // 1. Gradients in host memory, and one pass for the global norm.
  std::vector<torch::Tensor> grads(m.params.size());
  std::vector<ca::Dtype> grad_dtypes(m.params.size());
  double sq_norm = 0;
  bool finite = true;
  for (std::size_t i = 0; i < m.params.size(); ++i) {
    const torch::Tensor& g = m.params[i].tensor.grad();
    if (!g.defined()) continue;
    if (g.is_sparse())
      throw Error(
          Status::invalid_argument(m.params[i].name + ": sparse gradients are not supported"));
    throw_if_error(check_gradient(m.params[i].tensor, g, m.params[i].name));
    grads[i] = g.device().is_cpu() ? g.contiguous() : g.to(torch::kCPU).contiguous();
    auto dtype = dtype_of(grads[i], m.params[i].name + "'s gradient");
    throw_if_error(dtype.status());
    grad_dtypes[i] = *dtype;
    auto stats = m.executor->grad_stats(grads[i].data_ptr(), *dtype, m.params[i].numel);
    throw_if_error(stats.status());
    sq_norm += stats->sq_norm;
    finite = finite && stats->finite;
  }
  m.stats.gather_s = since(t_start);
  m.last_norm = std::sqrt(sq_norm);
  m.last_skipped = !finite;
  if (!finite) {
    ++m.skipped;
    ZINF_LOG(kWarn) << m.algorithm_name() << ": a gradient is inf or nan; step skipped ("
                    << m.skipped << " skipped so far)";
    m.stats.wall_s = since(t_start);
    return loss;
  }
  const double max_norm = m.options.max_grad_norm();
  const float clip = max_norm > 0 && m.last_norm > max_norm
                         ? static_cast<float>(max_norm / (m.last_norm + 1e-6))
                         : 1.0f;

  // 2. Validate every group's hyper-parameters before anything is written.
  for (std::size_t i = 0; i < m.params.size(); ++i) {
    if (!grads[i].defined()) continue;
    ca::Buffers none;
    none.param_dtype = m.params[i].dtype;
    Status s = m.executor->step(
        m.hyper(param_groups()[m.params[i].group].options(), m.params[i].step + 1), 1, none, clip);
    if (!s.is_ok()) throw Error(s.with_context(m.params[i].name));
  }

  // 3. The update, sub-group by sub-group. A CPU parameter is written where it
  // lies; a device parameter through a host staging tensor.
  auto write_param = [&](std::size_t i, const Segment& seg,
                         const std::function<Status(void*)>& produce) -> Status {
    Impl::Param& p = m.params[i];
    const auto begin = static_cast<std::int64_t>(seg.item_offset);
    const auto len = static_cast<std::int64_t>(seg.length);
    if (p.tensor.device().is_cpu()) {
      auto* base = static_cast<std::byte*>(p.tensor.data_ptr());
      return produce(base + seg.item_offset * ca::size_of(p.dtype));
    }
    torch::Tensor staging =
        torch::empty({len}, torch::TensorOptions().dtype(p.tensor.dtype()).pinned_memory(true));
    ZINF_RETURN_IF_ERROR(produce(staging.data_ptr()));
    p.tensor.detach().view({-1}).narrow(0, begin, len).copy_(staging);
    return Status::ok();
  };
  auto update = [&](Piece& piece) -> Status {
    for (const Segment& seg : m.segments(piece)) {
      Impl::Param& p = m.params[seg.item];
      float* master = piece.state[0] + seg.piece_offset;
      if (p.tensor._version() !=
          p.version) {  // changed outside the optimizer: take it as the master
        torch::from_blob(master, {static_cast<std::int64_t>(seg.length)}, torch::kFloat)
            .copy_(p.tensor.detach().reshape({-1}).narrow(
                0, static_cast<std::int64_t>(seg.item_offset),
                static_cast<std::int64_t>(seg.length)));
      }
      if (!grads[seg.item].defined()) continue;
      auto [exp_avg, exp_avg_sq] = m.moments(piece);
      ca::Buffers b;
      b.params = master;
      b.param_dtype = ca::Dtype::kF32;
      b.grads = static_cast<const std::byte*>(grads[seg.item].data_ptr()) +
                seg.item_offset * ca::size_of(grad_dtypes[seg.item]);
      b.grad_dtype = grad_dtypes[seg.item];
      b.exp_avg = exp_avg == nullptr ? nullptr : exp_avg + seg.piece_offset;
      b.exp_avg_sq = exp_avg_sq == nullptr ? nullptr : exp_avg_sq + seg.piece_offset;
      b.state_dtype = ca::Dtype::kF32;
      b.copy_dtype = p.dtype;
      b.count = seg.length;
      const ca::Hyper h = m.hyper(param_groups()[p.group].options(), p.step + 1);
      ZINF_RETURN_IF_ERROR(write_param(seg.item, seg, [&](void* out) {
        b.copy_out = out;
        return m.executor->step(h, p.step + 1, b, clip);
      }));
    }
    return Status::ok();
  };
  Status s = m.tier->update(update, m.stats);
  if (!s.is_ok()) {
    // The stored state is the previous one: put every parameter back to it.
    Status restored = m.tier->read([&](Piece& piece) -> Status {
      for (const Segment& seg : m.segments(piece)) {
        ZINF_RETURN_IF_ERROR(write_param(seg.item, seg, [&](void* out) {
          return m.executor->convert(piece.state[0] + seg.piece_offset, out,
                                     m.params[seg.item].dtype, seg.length);
        }));
      }
      return Status::ok();
    });
    for (auto& p : m.params) p.version = p.tensor._version();
    if (!restored.is_ok()) {
      throw Error(s.with_context(std::string(m.algorithm_name()) +
                                 " step failed, and restoring the parameters failed "
                                 "too (" +
                                 restored.to_string() + ")"));
    }
    throw Error(s.with_context(
        std::string(m.algorithm_name()) +
        (m.tier->atomic() ? " step failed; parameters and state are as before"
                          : " step failed partway; the cpu tier updates in place, so the "
                            "sub-groups before the failure hold this step, and the parameters "
                            "were rewritten to match them")));
  }
  for (std::size_t i = 0; i < m.params.size(); ++i) {
    if (grads[i].defined()) ++m.params[i].step;
    m.params[i].version = m.params[i].tensor._version();
  }
  m.stats.wall_s = since(t_start);
  return loss;
}

// The archive holds, per parameter, its fp32 master and moments as flat
// tensors and its step, plus each group's hyper-parameters: independent of
// where the state lived, so cpu and nvme checkpoints load into either.
void OffloadOptimizer::save(torch::serialize::OutputArchive& archive) const {
  torch::NoGradGuard no_grad;
  const Impl& m = *impl_;
  archive.write("zinf/format", c10::IValue(kFormatVersion));
  archive.write("zinf/algorithm", c10::IValue(std::string(m.algorithm_name())));
  archive.write("zinf/params", c10::IValue(static_cast<std::int64_t>(m.params.size())));
  std::vector<std::vector<torch::Tensor>> states(m.params.size());
  for (std::size_t i = 0; i < m.params.size(); ++i) {
    for (int s = 0; s < m.shape.num_states; ++s) {
      states[i].push_back(
          torch::empty({static_cast<std::int64_t>(m.params[i].numel)}, torch::kFloat));
    }
  }
  throw_if_error(m.tier->read([&](Piece& piece) -> Status {
    for (const Segment& seg : m.segments(piece)) {
      for (int s = 0; s < m.shape.num_states; ++s) {
        std::copy_n(piece.state[s] + seg.piece_offset, seg.length,
                    states[seg.item][s].data_ptr<float>() + seg.item_offset);
      }
    }
    return Status::ok();
  }));
  for (std::size_t i = 0; i < m.params.size(); ++i) {
    const std::string prefix = "zinf/param/" + std::to_string(i) + "/";
    archive.write(prefix + "step", c10::IValue(m.params[i].step));
    for (int s = 0; s < m.shape.num_states; ++s)
      archive.write(prefix + "state" + std::to_string(s), states[i][s]);
  }
  for (std::size_t g = 0; g < param_groups().size(); ++g) {
    torch::serialize::OutputArchive options(std::make_shared<torch::jit::CompilationUnit>());
    param_groups()[g].options().serialize(options);
    archive.write("zinf/group/" + std::to_string(g), options);
  }
}

void OffloadOptimizer::load(torch::serialize::InputArchive& archive) {
  torch::NoGradGuard no_grad;
  Impl& m = *impl_;
  c10::IValue v;
  if (!archive.try_read("zinf/format", v)) {
    throw Error(Status::invalid_argument("not a zinf optimizer checkpoint (no zinf/format)"));
  }
  if (v.toInt() != kFormatVersion) {
    throw Error(Status::invalid_argument("zinf optimizer checkpoint format " +
                                         std::to_string(v.toInt()) + " (this build reads " +
                                         std::to_string(kFormatVersion) + ")"));
  }
  archive.read("zinf/algorithm", v);
  if (v.toStringRef() != m.algorithm_name()) {
    throw Error(Status::invalid_argument("checkpoint is for " + v.toStringRef() +
                                         ", this optimizer is " + m.algorithm_name()));
  }
  archive.read("zinf/params", v);
  if (v.toInt() != static_cast<std::int64_t>(m.params.size())) {
    throw Error(Status::invalid_argument("checkpoint has " + std::to_string(v.toInt()) +
                                         " parameters, this optimizer " +
                                         std::to_string(m.params.size())));
  }
  // Read and check everything before any state changes.
  std::vector<std::vector<torch::Tensor>> states(m.params.size());
  std::vector<std::int64_t> steps(m.params.size());
  for (std::size_t i = 0; i < m.params.size(); ++i) {
    const std::string prefix = "zinf/param/" + std::to_string(i) + "/";
    archive.read(prefix + "step", v);
    steps[i] = v.toInt();
    for (int s = 0; s < m.shape.num_states; ++s) {
      torch::Tensor t;
      archive.read(prefix + "state" + std::to_string(s), t);
      if (t.scalar_type() != torch::kFloat ||
          static_cast<std::uint64_t>(t.numel()) != m.params[i].numel) {
        throw Error(Status::invalid_argument(
            "checkpoint " + m.params[i].name + " state " + std::to_string(s) + " has " +
            std::to_string(t.numel()) + " " + std::string(c10::toString(t.scalar_type())) +
            " elements, expected " + std::to_string(m.params[i].numel) + " float"));
      }
      states[i].push_back(t.contiguous());
    }
  }
  StepStats ignored;
  throw_if_error(m.tier->update(
      [&](Piece& piece) -> Status {
        for (const Segment& seg : m.segments(piece)) {
          for (int s = 0; s < m.shape.num_states; ++s) {
            std::copy_n(states[seg.item][s].data_ptr<float>() + seg.item_offset, seg.length,
                        piece.state[s] + seg.piece_offset);
          }
        }
        return Status::ok();
      },
      ignored));
  for (std::size_t g = 0; g < param_groups().size(); ++g) {
    torch::serialize::InputArchive options;
    if (archive.try_read("zinf/group/" + std::to_string(g), options))
      param_groups()[g].options().serialize(options);
  }
  for (std::size_t i = 0; i < m.params.size(); ++i) {
    m.params[i].step = steps[i];
    m.params[i].version = m.params[i].tensor._version();
  }
}

bool OffloadOptimizer::last_step_skipped() const { return impl_->last_skipped; }
std::uint64_t OffloadOptimizer::skipped_steps() const { return impl_->skipped; }
double OffloadOptimizer::last_grad_norm() const { return impl_->last_norm; }
const StepStats& OffloadOptimizer::last_step_stats() const { return impl_->stats; }
TierBytes OffloadOptimizer::tier_bytes() const { return impl_->tier->bytes(); }
const OffloadOptions& OffloadOptimizer::offload_options() const { return impl_->options; }

namespace {

std::vector<torch::optim::OptimizerParamGroup> one_group(std::vector<torch::Tensor> params) {
  return {torch::optim::OptimizerParamGroup(std::move(params))};
}

}  // namespace

#define ZINF_OFFLOAD_CONSTRUCTORS(Class, Options, kind)                                     \
  Class::Class(std::vector<torch::Tensor> params, Options defaults, OffloadOptions offload) \
      : OffloadOptimizer(one_group(std::move(params)), std::make_unique<Options>(defaults), \
                         std::move(offload), kind) {}                                       \
  Class::Class(std::vector<torch::optim::OptimizerParamGroup> groups, Options defaults,     \
               OffloadOptions offload)                                                      \
      : OffloadOptimizer(std::move(groups), std::make_unique<Options>(defaults),            \
                         std::move(offload), kind) {}

ZINF_OFFLOAD_CONSTRUCTORS(OffloadAdamW, torch::optim::AdamWOptions, Kind::kAdamW)
ZINF_OFFLOAD_CONSTRUCTORS(OffloadAdam, torch::optim::AdamOptions, Kind::kAdam)
ZINF_OFFLOAD_CONSTRUCTORS(OffloadAdagrad, torch::optim::AdagradOptions, Kind::kAdagrad)
ZINF_OFFLOAD_CONSTRUCTORS(OffloadLion, LionOptions, Kind::kLion)

#undef ZINF_OFFLOAD_CONSTRUCTORS

}  // namespace zinf
