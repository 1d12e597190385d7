// One conformance suite for every Device: the host-emulated device always,
// CUDA where a GPU is visible (skipped with the reason otherwise).
#include "zinf/gpu/device.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "zinf/common/aligned.hpp"

namespace zinf::gpu {
namespace {

class DeviceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "cuda") {
      Status cuda = Device::cuda_available();
      if (!cuda.is_ok()) GTEST_SKIP() << "cuda: " << cuda.message();
    }
  }
  std::unique_ptr<Device> make(std::uint64_t budget) {
    DeviceOptions o;
    o.type = GetParam();
    o.budget = budget;
    auto d = Device::create(o);
    EXPECT_TRUE(d.is_ok()) << d.status().to_string();
    return d.is_ok() ? std::move(*d) : nullptr;
  }
};

TEST_P(DeviceTest, AllocationsPastTheBudgetFailNamingTheNumbers) {
  auto device = make(1 << 20);
  ASSERT_NE(device, nullptr);
  auto a = device->allocate(600 << 10, "unit 'a'");
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  EXPECT_EQ(device->memory().live, 600u << 10);
  auto b = device->allocate(600 << 10, "unit 'blocks.3'");
  ASSERT_FALSE(b.is_ok());
  const std::string msg = b.status().message();
  EXPECT_EQ(b.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(msg.find("600.0 KiB for unit 'blocks.3'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("budget is 1.0 MiB"), std::string::npos) << msg;
  EXPECT_NE(msg.find("600.0 KiB is live in 1 allocations"), std::string::npos) << msg;
  EXPECT_EQ(device->memory().live, 600u << 10);  // the failed request took nothing
  device->deallocate(*a, 600 << 10);
  auto c = device->allocate(600 << 10, "unit 'blocks.3'");
  ASSERT_TRUE(c.is_ok());
  device->deallocate(*c, 600 << 10);
  EXPECT_EQ(device->memory().peak, 600u << 10);
}

TEST_P(DeviceTest, ChargesShareTheBudget) {
  auto device = make(1 << 20);
  ASSERT_NE(device, nullptr);
  ASSERT_TRUE(device->charge(1 << 19, "activations").is_ok());
  EXPECT_FALSE(device->charge(1 << 20, "activations").is_ok());
  auto a = device->allocate(1 << 19, "parameters");
  ASSERT_TRUE(a.is_ok());
  EXPECT_EQ(device->memory().live, 1u << 20);
  EXPECT_EQ(device->memory().allocations, 2u);
  device->uncharge(1 << 19);
  device->deallocate(*a, 1 << 19);
  EXPECT_EQ(device->memory().live, 0u);
  device->reset_peak();
  EXPECT_EQ(device->memory().peak, 0u);
}

TEST_P(DeviceTest, CopiesRunInStreamOrderAndEventsOrderStreams) {
  auto device = make(0);
  ASSERT_NE(device, nullptr);
  auto h2d = device->create_stream("h2d");
  auto d2h = device->create_stream("d2h");
  ASSERT_TRUE(h2d.is_ok() && d2h.is_ok());
  const std::size_t n = 4 << 20;
  auto in = AlignedBuffer::allocate(n);
  auto out = AlignedBuffer::allocate(n);
  ASSERT_TRUE(device->pin(in->data(), n).is_ok());
  std::iota(in->as<std::uint8_t>(), in->as<std::uint8_t>() + n, std::uint8_t{0});
  std::memset(out->data(), 0, n);
  auto dev = device->allocate(n, "buffer");
  ASSERT_TRUE(dev.is_ok());
  // Two halves on h2d; d2h copies back after an event of h2d. Spans: h2d's only.
  (*h2d)->record_spans(true);
  ASSERT_TRUE((*h2d)->copy_to_device(*dev, in->data(), n / 2, "first half").is_ok());
  ASSERT_TRUE((*h2d)
                  ->copy_to_device(static_cast<std::byte*>(*dev) + n / 2, in->data() + n / 2, n / 2,
                                   "second half")
                  .is_ok());
  auto uploaded = (*h2d)->record();
  ASSERT_TRUE(uploaded.is_ok());
  ASSERT_TRUE((*d2h)->wait(*uploaded).is_ok());
  ASSERT_TRUE((*d2h)->copy_to_host(out->data(), *dev, n, "back").is_ok());
  auto downloaded = (*d2h)->record();
  ASSERT_TRUE(downloaded.is_ok());
  ASSERT_TRUE((*downloaded)->synchronize().is_ok());
  EXPECT_TRUE((*downloaded)->ready());
  EXPECT_TRUE((*uploaded)->ready());
  EXPECT_EQ(std::memcmp(in->data(), out->data(), n), 0);
  // The compute stream can wait for a copy too.
  ASSERT_TRUE(device->compute_stream().wait(*downloaded).is_ok());
  ASSERT_TRUE(device->compute_stream().synchronize().is_ok());
  // Each stream saw its copies as busy time.
  EXPECT_FALSE((*h2d)->take_busy().empty());
  EXPECT_FALSE((*d2h)->take_busy().empty());
  EXPECT_TRUE((*h2d)->take_busy().empty());
  const std::vector<Span> spans = (*h2d)->take_spans();
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].what, "first half");
  EXPECT_EQ(spans[1].what, "second half");
  EXPECT_EQ(spans[0].bytes + spans[1].bytes, n);
  EXPECT_LE(spans[0].when.end, spans[1].when.begin) << "a stream's copies run in order";
  EXPECT_TRUE((*d2h)->take_spans().empty()) << "spans are off until turned on";
  EXPECT_FALSE((*h2d)->wait(nullptr).is_ok());
  device->deallocate(*dev, n, *downloaded);
  device->unpin(in->data(), n);
}

// begin_span()/end_span() bracket the work enqueued in between (a unit's
// kernels): one span with its op, covering that work as the stream ran it,
// and no busy time of its own; nothing while spans are off.
TEST_P(DeviceTest, ABracketedSpanCoversTheWorkEnqueuedInside) {
  auto device = make(0);
  ASSERT_NE(device, nullptr);
  auto h2d = device->create_stream("h2d");
  ASSERT_TRUE(h2d.is_ok());
  const std::size_t n = 1 << 20;
  auto in = AlignedBuffer::allocate(n);
  ASSERT_TRUE(in.is_ok());
  std::memset(in->data(), 1, n);
  auto dev = device->allocate(n, "buffer");
  ASSERT_TRUE(dev.is_ok());
  for (Stream* stream : {h2d->get(), &device->compute_stream()}) {
    stream->begin_span("unit 'a'", "forward");  // spans off: nothing
    stream->end_span();
    stream->record_spans(true);
    stream->begin_span("unit 'a'", "forward");
    ASSERT_TRUE(stream->copy_to_device(*dev, in->data(), n, "inside").is_ok());
    stream->end_span();
    stream->end_span();  // none open: nothing
    ASSERT_TRUE(stream->synchronize().is_ok());
    const std::vector<Span> spans = stream->take_spans();
    ASSERT_EQ(spans.size(), 2u) << stream->name();
    EXPECT_EQ(spans[0].what, "inside");
    EXPECT_TRUE(spans[0].op.empty()) << "a copy has no op";
    EXPECT_EQ(spans[1].what, "unit 'a'");
    EXPECT_EQ(spans[1].op, "forward");
    EXPECT_EQ(spans[1].bytes, 0u);
    EXPECT_LE(spans[1].when.begin, spans[0].when.begin) << stream->name();
    EXPECT_LE(spans[0].when.end, spans[1].when.end) << stream->name();
    EXPECT_EQ(stream->take_busy().size(), 1u) << "the copy's busy time, not the span's";
    stream->record_spans(false);
  }
  device->deallocate(*dev, n);
}

TEST_P(DeviceTest, DescribesItself) {
  auto device = make(64 << 20);
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(to_string(device->type()), GetParam());
  EXPECT_NE(device->describe().find("64.0 MiB"), std::string::npos) << device->describe();
}

INSTANTIATE_TEST_SUITE_P(Devices, DeviceTest, ::testing::Values("cpu", "cuda"),
                         [](const auto& param_info) { return param_info.param; });

TEST(DeviceSelection, AutoFallsBackToTheEmulatedDeviceAndBadNamesAreErrors) {
  DeviceOptions o;
  auto d = Device::create(o);
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ((*d)->type(), Device::cuda_available().is_ok() ? DeviceType::kCuda : DeviceType::kCpu);
  o.type = "tpu";
  auto bad = Device::create(o);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("zinf.device"), std::string::npos);
  if (!Device::cuda_available().is_ok()) {
    o.type = "cuda";
    auto cuda = Device::create(o);
    ASSERT_FALSE(cuda.is_ok());
    EXPECT_NE(cuda.status().message().find("zinf.device \"cuda\""), std::string::npos);
  }
}

}  // namespace
}  // namespace zinf::gpu
