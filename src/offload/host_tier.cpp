// The host tier: one fp32 array per state over all parameters.
#include <vector>

#include "offload/state_tier.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"

namespace zinf::offload {
namespace {

class HostTier final : public StateTier {
 public:
  explicit HostTier(const TierShape& shape) : shape_(shape) {}

  Status allocate(bool pin) {
    for (int i = 0; i < shape_.num_states; ++i) {
      auto buf = AlignedBuffer::allocate(shape_.elements * sizeof(float), kIoAlignment, pin);
      if (!buf.is_ok() && pin) {
        ZINF_LOG(kWarn) << "pin_memory: " << buf.status().message()
                        << "; using unpinned host memory";
        pin = false;
        buf = AlignedBuffer::allocate(shape_.elements * sizeof(float));
      }
      if (!buf.is_ok()) return buf.status();
      arrays_.push_back(std::move(*buf));
    }
    return Status::ok();
  }

  // Host memory is updated in place: the optimizer validates everything
  // before the first write, so there is nothing to roll back.
  Status update(const SubGroupFn& fn, StepStats& stats) override {
    Status s = read(fn);
    stats.sub_groups = shape_.sub_groups();
    return s;
  }

  Status read(const SubGroupFn& fn) override {
    for (std::uint64_t i = 0; i < shape_.sub_groups(); ++i) {
      SubGroup sg;
      sg.index = i;
      sg.begin = i * shape_.sub_group_size;
      sg.count = std::min(shape_.sub_group_size, shape_.elements - sg.begin);
      for (int k = 0; k < shape_.num_states; ++k) sg.state[k] = arrays_[k].as<float>() + sg.begin;
      ZINF_RETURN_IF_ERROR(fn(sg));
    }
    return Status::ok();
  }

  TierBytes bytes() const override {
    TierBytes b;
    for (const auto& a : arrays_) b.host += a.size();
    return b;
  }

 private:
  TierShape shape_;
  std::vector<AlignedBuffer> arrays_;
};

}  // namespace

Result<std::unique_ptr<StateTier>> make_host_tier(const TierShape& shape, bool pin,
                                                  const SubGroupFn& init) {
  auto tier = std::make_unique<HostTier>(shape);
  ZINF_RETURN_IF_ERROR(tier->allocate(pin));
  ZINF_RETURN_IF_ERROR(tier->read(init));
  return std::unique_ptr<StateTier>(std::move(tier));
}

}  // namespace zinf::offload
