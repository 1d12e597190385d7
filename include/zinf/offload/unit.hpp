// Units: the parts of a model whose parameters the engine gathers onto the
// device just before they run and releases right after (ZeRO stage 3).
//
// Marking a unit is one line: the member's type becomes zinf::Unit<...> of
// its LibTorch module holder. Nothing else in the model changes.
//
//   struct GPTImpl : torch::nn::Module {
//     GPTImpl(const Options& o) {
//       for (int i = 0; i < o.layers; ++i)
//         blocks.push_back(register_module("h" + std::to_string(i), zinf::Unit<Block>(o)));
//     }
//     torch::Tensor forward(torch::Tensor x) {
//       for (auto& b : blocks) x = b(x);   // gathers, runs, releases
//       ...
//     }
//     std::vector<zinf::Unit<Block>> blocks;
//   };
//
// C++ has no module hooks, so the unit's call is the hook: Unit::operator()
// gathers the parameters (waiting for a prefetch in flight, starting the next
// ones), runs the module's forward, registers the gradient hooks and wraps
// the outputs so that backward re-gathers the unit before its gradients are
// computed, and releases it (unless it is used again soon). Outside an
// Engine, or before one is built, a Unit is the plain module. With
// zinf.checkpoint_units the forward keeps only the unit's inputs, and
// backward, once the unit is gathered again, recomputes the forward (with
// the random-number state it first ran with) and back-propagates through it.
//
// Contracts:
//  - Call the unit through its holder (`blocks[i](x)`); `blocks[i]->forward(x)`
//    bypasses the gather and, under an Engine, fails on released parameters
//    (the engine's error names the released units).
//  - A unit's forward returns a Tensor, a std::vector<Tensor> or a std::tuple
//    of Tensors; a checkpointed one takes only Tensors and returns floating
//    point tensors. Units do not nest. A parameter belongs to one unit: weights
//    shared between units (a tied LM head) belong in their common parent.
//  - Inside a PartitionScope (DeepSpeed's zero.Init) a unit's parameters are
//    moved to their home tier (offload_param.device) as soon as the unit is
//    constructed, so building a model holds about one unit in host memory at a
//    time. Initialise parameters in the module's constructor: after it, they
//    are released.
//
// Thread safety: a model under an Engine runs on one thread at a time.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "zinf/common/config.hpp"

namespace zinf {

namespace detail {

// Records `module` as a unit and, inside a PartitionScope, partitions it.
void enroll_unit(const std::shared_ptr<torch::nn::Module>& module);

template <typename T>
inline constexpr bool kAlwaysFalse = false;

// A forward's outputs as a list of tensors, and back.
template <typename Out>
struct Outputs {
  static_assert(kAlwaysFalse<Out>,
                "a forward run by zinf returns Tensor, std::vector<Tensor> or a tuple of Tensors");
};
template <>
struct Outputs<torch::Tensor> {
  static std::vector<torch::Tensor> flatten(torch::Tensor t) { return {std::move(t)}; }
  static torch::Tensor unflatten(std::vector<torch::Tensor> v) { return std::move(v[0]); }
};
template <>
struct Outputs<std::vector<torch::Tensor>> {
  static std::vector<torch::Tensor> flatten(std::vector<torch::Tensor> v) { return v; }
  static std::vector<torch::Tensor> unflatten(std::vector<torch::Tensor> v) { return v; }
};
template <typename... T>
struct Outputs<std::tuple<T...>> {
  static_assert((std::is_same_v<T, torch::Tensor> && ...),
                "a forward run by zinf returns Tensor, std::vector<Tensor> or a tuple of Tensors");
  static std::vector<torch::Tensor> flatten(std::tuple<T...> t) {
    return std::apply([](auto&... x) { return std::vector<torch::Tensor>{std::move(x)...}; }, t);
  }
  static std::tuple<T...> unflatten(std::vector<torch::Tensor> v) {
    return unflatten(v, std::index_sequence_for<T...>{});
  }
  template <std::size_t... I>
  static std::tuple<T...> unflatten(std::vector<torch::Tensor>& v, std::index_sequence<I...>) {
    return std::tuple<T...>{std::move(v[I])...};
  }
};

// A unit's forward over its tensor arguments, as flat lists.
using FlatForward = std::function<std::vector<torch::Tensor>(std::vector<torch::Tensor>)>;

// One call of a unit: gathers in the constructor if an engine owns the unit;
// finish() hands the outputs to the engine; destroyed without finish() (an
// exception in forward), it releases the unit.
class UnitCall {
 public:
  explicit UnitCall(torch::nn::Module& module);
  ~UnitCall();
  UnitCall(const UnitCall&) = delete;
  UnitCall& operator=(const UnitCall&) = delete;

  // Whether the engine checkpoints this call (zinf.checkpoint_units).
  bool checkpointed() const;
  // Runs `forward` without keeping its activations; backward recomputes it.
  std::vector<torch::Tensor> checkpoint(FlatForward forward, std::vector<torch::Tensor> inputs);
  // Throws if checkpointed: a forward with arguments other than tensors
  // cannot be replayed from saved tensors.
  void refuse_checkpoint() const;

  template <typename Out>
  Out finish(Out out) {
    return Outputs<Out>::unflatten(hand_over(Outputs<Out>::flatten(std::move(out))));
  }

 private:
  std::vector<torch::Tensor> hand_over(std::vector<torch::Tensor> out);

  void* unit_ = nullptr;  // the engine's record of the unit, or null
  bool finished_ = false;
};

}  // namespace detail

template <typename Holder>
class Unit : public Holder {
 public:
  using Impl = typename Holder::ContainedType;

  Unit() : Holder() { detail::enroll_unit(this->ptr()); }
  Unit(std::nullptr_t) : Holder(nullptr) {}  // NOLINT: implicit, as ModuleHolder's
  Unit(std::shared_ptr<Impl> module) : Holder(std::move(module)) {  // NOLINT: implicit
    detail::enroll_unit(this->ptr());
  }
  template <typename Head, typename... Tail,
            typename =
                std::enable_if_t<sizeof...(Tail) != 0 ||
                                 !std::is_convertible_v<std::decay_t<Head>, std::shared_ptr<Impl>>>>
  explicit Unit(Head&& head, Tail&&... tail)
      : Holder(std::forward<Head>(head), std::forward<Tail>(tail)...) {
    detail::enroll_unit(this->ptr());
  }

  template <typename... Args>
  auto operator()(Args&&... args) {
    detail::UnitCall call(*this->get());
    using Out = std::decay_t<decltype(this->get()->forward(std::forward<Args>(args)...))>;
    if constexpr ((std::is_same_v<std::decay_t<Args>, torch::Tensor> && ...)) {
      if (call.checkpointed()) {
        Impl* impl = this->get();
        auto forward = [impl](std::vector<torch::Tensor> in) {
          return detail::Outputs<Out>::flatten(
              forward_of(impl, in, std::index_sequence_for<Args...>{}));
        };
        return call.finish(detail::Outputs<Out>::unflatten(
            call.checkpoint(forward, {std::forward<Args>(args)...})));
      }
    } else {
      call.refuse_checkpoint();
    }
    return call.finish(this->get()->forward(std::forward<Args>(args)...));
  }

 private:
  template <std::size_t... I>
  static auto forward_of(Impl* impl, std::vector<torch::Tensor>& in, std::index_sequence<I...>) {
    return impl->forward(in[I]...);
  }
};

namespace detail {
struct PartitionScopeState;
}

// DeepSpeed's zero.Init: while a scope is alive on this thread, every Unit
// constructed is partitioned at once to offload_param's home (pinned host
// memory for "cpu", the swap files under offload_param.nvme_path for
// "nvme"). With offload_param "none" the scope does nothing (the engine
// places parameters on the device). The Engine later built from the model
// takes the partitions over; the scope may end before that.
class PartitionScope {
 public:
  explicit PartitionScope(const Config& config);
  ~PartitionScope();
  PartitionScope(const PartitionScope&) = delete;
  PartitionScope& operator=(const PartitionScope&) = delete;

 private:
  std::unique_ptr<detail::PartitionScopeState> state_;
  detail::PartitionScopeState* previous_ = nullptr;
};

// Builds a model inside a PartitionScope: `GPT model = zinf::partitioned(cfg, [] { return GPT(o);
// });`
template <typename Fn>
auto partitioned(const Config& config, Fn&& build) {
  PartitionScope scope(config);
  return std::forward<Fn>(build)();
}

}  // namespace zinf
