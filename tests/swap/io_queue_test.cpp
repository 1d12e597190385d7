// The engine conformance suite: every test runs against each raw engine this
// machine has (io_uring, libaio, pread/pwrite), always through IoQueue, on an
// O_DIRECT file. The error-policy cases wrap the real engine in the fault
// injector, so the policy is proven for each engine, not for a mock.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>

#include "swap/swap_test_util.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::swap {
namespace {

using testing::ScratchDir;

constexpr std::uint64_t kFileSize = 32 << 20;

class IoQueueConformance : public ::testing::TestWithParam<IoBackend> {
 protected:
  void SetUp() override {
    Status probe = probe_backend(GetParam());
    if (!probe.is_ok())
      GTEST_SKIP() << to_string(GetParam()) << " unavailable: " << probe.to_string();
    path_ = dir_.path() / "data";
    auto file = open_direct(path_, O_RDWR | O_CREAT | O_EXCL, 0600, false);
    if (!file.is_ok()) GTEST_SKIP() << "no O_DIRECT here: " << file.status().to_string();
    file_ = std::move(*file);
    ASSERT_EQ(::ftruncate(file_.fd.get(), kFileSize), 0);
  }

  std::unique_ptr<IoQueue> make_queue(
      std::uint32_t depth, std::optional<FaultSpec> fault = std::nullopt,
      std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    IoEngineOptions options;
    options.queue_depth = depth;
    return make_queue(options, std::move(fault), timeout);
  }

  std::unique_ptr<IoQueue> make_queue(
      const IoEngineOptions& options, std::optional<FaultSpec> fault = std::nullopt,
      std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    auto engine = make_io_engine(GetParam(), options);
    EXPECT_TRUE(engine.is_ok()) << engine.status().to_string();
    std::unique_ptr<IoEngine> e = std::move(*engine);
    if (fault) e = make_fault_injecting_engine(std::move(e), *fault);
    auto index = e->add_file(file_.fd.get(), path_.string());
    EXPECT_TRUE(index.is_ok());
    file_index_ = *index;
    return std::make_unique<IoQueue>(std::move(e), IoQueueOptions{timeout});
  }

  // Submits every request (as slots free up) and returns each one's Status,
  // in request order.
  static std::vector<Status> run_all(IoQueue& q, std::vector<IoRequest> requests) {
    for (std::size_t i = 0; i < requests.size(); ++i) requests[i].user_data = i;
    std::vector<Status> results(requests.size());
    std::vector<IoResult> done(64);
    std::size_t submitted = 0;
    std::size_t finished = 0;
    while (finished < requests.size()) {
      if (submitted < requests.size()) {
        auto n = q.submit(std::span(requests).subspan(submitted));
        if (!n.is_ok()) {
          for (std::size_t i = submitted; i < requests.size(); ++i) results[i] = n.status();
          return results;
        }
        submitted += *n;
      }
      auto got = q.wait(done, 1);
      if (!got.is_ok()) {
        for (auto& r : results) {
          if (r.is_ok()) r = got.status();
        }
        return results;
      }
      for (std::size_t k = 0; k < *got; ++k) results[done[k].user_data] = done[k].status;
      finished += *got;
    }
    return results;
  }

  IoRequest request(IoOp op, std::uint64_t offset, void* buffer, std::uint32_t length) const {
    return {op, file_index_, offset, buffer, length, 0};
  }

  // The device holds the first request for `delay`, cancelled or not.
  static FaultSpec held_first(std::chrono::milliseconds delay) {
    FaultSpec spec;
    spec.kind = FaultKind::kDelay;
    spec.nth = 1;
    spec.delay = delay;
    return spec;
  }

  // Reads one block into `buffer` on a queue that holds it past its timeout
  // and its cancel: the result says lost.
  void lose_a_read(IoQueue& q, void* buffer, std::uint64_t user_data) const {
    IoRequest r = request(IoOp::kRead, 0, buffer, kIoAlignment);
    r.user_data = user_data;
    ASSERT_TRUE(q.submit({&r, 1}).is_ok());
    IoResult done;
    auto n = q.wait({&done, 1}, 1);
    ASSERT_TRUE(n.is_ok() && *n == 1) << n.status().to_string();
    EXPECT_EQ(done.user_data, user_data);
    EXPECT_TRUE(done.lost);
    EXPECT_NE(done.status.message().find("lost completion"), std::string::npos)
        << done.status.message();
  }

  // Writes `blocks` blocks of `block` bytes with a pattern, reads them back
  // through the same queue, and checks the bytes.
  void round_trip(IoQueue& q, std::uint32_t block, std::size_t blocks, std::uint64_t seed) {
    auto out = AlignedBuffer::allocate(block * blocks);
    auto in = AlignedBuffer::allocate(block * blocks);
    ASSERT_TRUE(out.is_ok() && in.is_ok());
    testing::fill_pattern(out->data(), out->size(), seed);
    std::memset(in->data(), 0, in->size());
    std::vector<IoRequest> writes, reads;
    for (std::size_t i = 0; i < blocks; ++i) {
      writes.push_back(request(IoOp::kWrite, i * block, out->data() + i * block, block));
      reads.push_back(request(IoOp::kRead, i * block, in->data() + i * block, block));
    }
    for (const Status& s : run_all(q, writes)) ASSERT_TRUE(s.is_ok()) << s.to_string();
    for (const Status& s : run_all(q, reads)) ASSERT_TRUE(s.is_ok()) << s.to_string();
    ASSERT_EQ(std::memcmp(out->data(), in->data(), out->size()), 0);
  }

  ScratchDir dir_;
  std::filesystem::path path_;
  OpenedFile file_;
  int file_index_ = -1;
};

TEST_P(IoQueueConformance, RoundTripsAtRandomSizesAndOffsets) {
  auto q = make_queue(16);
  std::mt19937_64 rng(42);
  auto buf = AlignedBuffer::allocate(1 << 20);
  auto back = AlignedBuffer::allocate(1 << 20);
  ASSERT_TRUE(buf.is_ok() && back.is_ok());
  for (int i = 0; i < 40; ++i) {
    const std::uint32_t len = static_cast<std::uint32_t>((1 + rng() % 256) * kIoAlignment);
    const std::uint64_t off = (rng() % ((kFileSize - len) / kIoAlignment)) * kIoAlignment;
    testing::fill_pattern(buf->data(), len, rng());
    ASSERT_TRUE(run_all(*q, {request(IoOp::kWrite, off, buf->data(), len)})[0].is_ok());
    ASSERT_TRUE(run_all(*q, {request(IoOp::kRead, off, back->data(), len)})[0].is_ok());
    ASSERT_EQ(std::memcmp(buf->data(), back->data(), len), 0)
        << "offset " << off << " length " << len;
  }
}

TEST_P(IoQueueConformance, ManyRequestsInFlightBeyondQueueDepth) {
  auto q = make_queue(8);
  round_trip(*q, 64 << 10, 256, 7);  // 256 requests through 8 slots
  EXPECT_EQ(q->pending(), 0u);
}

// zinf.sqpoll: io_uring's kernel submission thread frees submission entries
// on its own schedule, and a fresh ring's thread may not have run yet when
// the first full queue of requests arrives (the wake poll holds an entry
// too). The other engines take the option and ignore it.
TEST_P(IoQueueConformance, SubmissionPollingKeepsTheQueueFull) {
  IoEngineOptions options;
  options.queue_depth = 8;
  options.sqpoll = true;
  for (int fresh = 0; fresh < 20; ++fresh) {
    auto q = make_queue(options);
    round_trip(*q, 64 << 10, 16, fresh);
    EXPECT_EQ(q->pending(), 0u);
  }
}

TEST_P(IoQueueConformance, FixedBuffersRoundTrip) {
  auto q = make_queue(16);
  auto region = AlignedBuffer::allocate(8 << 20);
  ASSERT_TRUE(region.is_ok());
  std::span<std::byte> regions[] = {region->bytes()};
  const Status registered = q->engine().register_buffers(regions);
  ASSERT_TRUE(registered.is_ok()) << registered.to_string();
  // io_uring must really take the fixed-buffer path; the others have none.
  EXPECT_EQ(q->engine().fixed_buffers(), GetParam() == IoBackend::kIoUring);
  testing::fill_pattern(region->data(), 4 << 20, 3);
  std::vector<IoRequest> writes, reads;
  for (int i = 0; i < 4; ++i) {
    writes.push_back(request(IoOp::kWrite, i << 20, region->data() + (i << 20), 1 << 20));
    reads.push_back(request(IoOp::kRead, i << 20, region->data() + (4 << 20) + (i << 20), 1 << 20));
  }
  for (const Status& s : run_all(*q, writes)) ASSERT_TRUE(s.is_ok()) << s.to_string();
  for (const Status& s : run_all(*q, reads)) ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(std::memcmp(region->data(), region->data() + (4 << 20), 4 << 20), 0);
}

TEST_P(IoQueueConformance, MisalignedDirectIoIsAnErrorNotACrash) {
  auto q = make_queue(4);
  auto buf = AlignedBuffer::allocate(2 * kIoAlignment);
  ASSERT_TRUE(buf.is_ok());
  // Allocated blocks: ext4 zero-fills a read of a hole without checking alignment.
  ASSERT_TRUE(run_all(*q, {request(IoOp::kWrite, 0, buf->data(), 2 * kIoAlignment)})[0].is_ok());
  std::vector<IoRequest> bad = {request(IoOp::kWrite, 0, buf->data() + 1, kIoAlignment),
                                request(IoOp::kWrite, 100, buf->data(), kIoAlignment),
                                request(IoOp::kRead, 0, buf->data() + 8, kIoAlignment)};
  for (const Status& s : run_all(*q, bad)) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find(path_.string()), std::string::npos) << s.message();
  }
}

TEST_P(IoQueueConformance, ReadPastEndOfFileIsUnexpectedEof) {
  auto q = make_queue(4);
  auto buf = AlignedBuffer::allocate(kIoAlignment);
  ASSERT_TRUE(buf.is_ok());
  Status s = run_all(*q, {request(IoOp::kRead, kFileSize, buf->data(), kIoAlignment)})[0];
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.to_string();
  EXPECT_NE(s.message().find("unexpected end of file"), std::string::npos);
}

TEST_P(IoQueueConformance, EintrAndEagainAreRetriedTransparently) {
  for (FaultKind kind : {FaultKind::kEintr, FaultKind::kEagain}) {
    FaultSpec spec;
    spec.kind = kind;
    spec.rate = 0.3;
    auto q = make_queue(8, spec);
    round_trip(*q, 64 << 10, 64, 11);
  }
}

TEST_P(IoQueueConformance, ShortTransfersContinueWhereTheyStopped) {
  FaultSpec spec;
  spec.kind = FaultKind::kShort;
  spec.rate = 0.5;
  auto q = make_queue(8, spec);
  round_trip(*q, 256 << 10, 32, 13);
}

TEST_P(IoQueueConformance, DelayedCompletionsStillComplete) {
  FaultSpec spec;
  spec.kind = FaultKind::kDelay;
  spec.rate = 1.0;
  spec.delay = std::chrono::microseconds(500);
  auto q = make_queue(8, spec);
  round_trip(*q, 64 << 10, 16, 17);
}

TEST_P(IoQueueConformance, EioSurfacesWithPathOffsetAndErrno) {
  FaultSpec spec;
  spec.kind = FaultKind::kEio;
  spec.nth = 3;
  auto q = make_queue(8, spec);
  auto buf = AlignedBuffer::allocate(8 * kIoAlignment);
  ASSERT_TRUE(buf.is_ok());
  std::vector<IoRequest> writes;
  for (int i = 0; i < 8; ++i)
    writes.push_back(
        request(IoOp::kWrite, i * kIoAlignment, buf->data() + i * kIoAlignment, kIoAlignment));
  auto results = run_all(*q, writes);
  int failures = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (results[i].is_ok()) continue;
    ++failures;
    EXPECT_EQ(i, 2u);
    EXPECT_EQ(results[i].code(), StatusCode::kIoError);
    EXPECT_EQ(results[i].sys_errno(), EIO);
    EXPECT_NE(results[i].message().find(path_.string()), std::string::npos);
    EXPECT_NE(results[i].message().find("offset 8192"), std::string::npos) << results[i].message();
  }
  EXPECT_EQ(failures, 1);
}

TEST_P(IoQueueConformance, EnospcIsNoSpace) {
  FaultSpec spec;
  spec.kind = FaultKind::kEnospc;
  spec.nth = 1;
  spec.only = IoOp::kWrite;
  auto q = make_queue(4, spec);
  auto buf = AlignedBuffer::allocate(kIoAlignment);
  ASSERT_TRUE(buf.is_ok());
  Status s = run_all(*q, {request(IoOp::kWrite, 0, buf->data(), kIoAlignment)})[0];
  EXPECT_EQ(s.code(), StatusCode::kNoSpace) << s.to_string();
  EXPECT_FALSE(s.retryable());
}

TEST_P(IoQueueConformance, RetriesAreBounded) {
  FaultSpec spec;
  spec.kind = FaultKind::kEagain;
  spec.rate = 1.0;
  auto q = make_queue(4, spec);
  auto buf = AlignedBuffer::allocate(kIoAlignment);
  ASSERT_TRUE(buf.is_ok());
  Status s = run_all(*q, {request(IoOp::kRead, 0, buf->data(), kIoAlignment)})[0];
  EXPECT_FALSE(s.is_ok());
  EXPECT_FALSE(s.retryable());
  EXPECT_NE(s.message().find("after 16 retries"), std::string::npos) << s.message();
}

TEST_P(IoQueueConformance, MissingCompletionIsCancelledAndTheQueueGoesOn) {
  FaultSpec spec;
  spec.kind = FaultKind::kDrop;
  spec.nth = 1;
  auto q = make_queue(4, spec, std::chrono::milliseconds(200));
  auto buf = AlignedBuffer::allocate(kIoAlignment);
  ASSERT_TRUE(buf.is_ok());
  Status s = run_all(*q, {request(IoOp::kRead, 0, buf->data(), kIoAlignment)})[0];
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.to_string();
  EXPECT_NE(s.message().find("then cancelled"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(path_.string()), std::string::npos) << s.message();
  EXPECT_FALSE(s.retryable());
  EXPECT_TRUE(run_all(*q, {request(IoOp::kRead, 0, buf->data(), kIoAlignment)})[0].is_ok());
  EXPECT_TRUE(q->status().is_ok());
}

// A request the device holds (cancel does not bring it back) is reported
// lost, keeps its slot while the queue goes on with the others, and is
// returned once its completion comes.
// A queue that closes while the kernel still has a lost request keeps its
// buffer from the allocator; a buffer whose request came back is not kept.
TEST_P(IoQueueConformance, ClosingWithALostRequestKeepsItsBuffer) {
  auto q =
      make_queue(2, held_first(std::chrono::milliseconds(3000)), std::chrono::milliseconds(200));
  auto stuck = AlignedBuffer::allocate(kIoAlignment);
  auto other = AlignedBuffer::allocate(kIoAlignment);
  ASSERT_TRUE(stuck.is_ok() && other.is_ok());
  ASSERT_NO_FATAL_FAILURE(lose_a_read(*q, stuck->data(), 1));
  EXPECT_TRUE(run_all(*q, {request(IoOp::kRead, 0, other->data(), kIoAlignment)})[0].is_ok());
  EXPECT_FALSE(lost_io_holds(stuck->bytes())) << "kept before the queue closed";
  q.reset();  // waits one more timeout: the device still holds the read
  EXPECT_TRUE(lost_io_holds(stuck->bytes()));
  EXPECT_FALSE(lost_io_holds(other->bytes()));
}

TEST_P(IoQueueConformance, RequestStuckPastCancelIsLostThenReturned) {
  auto q =
      make_queue(2, held_first(std::chrono::milliseconds(1500)), std::chrono::milliseconds(200));
  auto stuck = AlignedBuffer::allocate(kIoAlignment);
  auto other = AlignedBuffer::allocate(kIoAlignment);
  ASSERT_TRUE(stuck.is_ok() && other.is_ok());
  ASSERT_NO_FATAL_FAILURE(lose_a_read(*q, stuck->data(), 7));
  EXPECT_EQ(q->free_slots(), 1u);  // the lost request keeps its slot

  IoRequest next = request(IoOp::kRead, 0, other->data(), kIoAlignment);
  next.user_data = 8;
  ASSERT_TRUE(q->submit({&next, 1}).is_ok());
  IoResult done;
  bool next_done = false;
  bool returned = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!(next_done && returned) && std::chrono::steady_clock::now() < deadline) {
    auto n = q->wait({&done, 1}, 1);
    ASSERT_TRUE(n.is_ok()) << n.status().to_string();
    if (*n == 0) continue;
    EXPECT_FALSE(done.lost);
    EXPECT_TRUE(done.status.is_ok()) << done.status.to_string();
    (done.user_data == 8 ? next_done : returned) = true;
  }
  EXPECT_TRUE(next_done);
  EXPECT_TRUE(returned);
  EXPECT_EQ(q->free_slots(), 2u);
}

TEST_P(IoQueueConformance, QueueWithEverySlotLostRefusesWork) {
  auto q =
      make_queue(1, held_first(std::chrono::milliseconds(800)), std::chrono::milliseconds(100));
  auto buf = AlignedBuffer::allocate(kIoAlignment);
  ASSERT_TRUE(buf.is_ok());
  ASSERT_NO_FATAL_FAILURE(lose_a_read(*q, buf->data(), 1));
  IoRequest r = request(IoOp::kRead, 0, buf->data(), kIoAlignment);
  auto again = q->submit({&r, 1});
  ASSERT_FALSE(again.is_ok());
  EXPECT_NE(again.status().message().find("every slot"), std::string::npos)
      << again.status().message();
}

INSTANTIATE_TEST_SUITE_P(Engines, IoQueueConformance, ::testing::ValuesIn(testing::all_backends()),
                         testing::backend_name);

// A real ENOSPC, from a file system that is really full: a 1 MiB tmpfs (no
// loop device). tmpfs takes O_DIRECT on Linux >= 6.6; older kernels use the
// buffered fallback, which is what a user on such a path would get too.
class RealEnospc : public ::testing::TestWithParam<IoBackend> {};

TEST_P(RealEnospc, FullFileSystemIsNoSpaceNamingThePath) {
  if (!probe_backend(GetParam()).is_ok()) GTEST_SKIP() << to_string(GetParam()) << " unavailable";
  ScratchDir dir;
  if (::mount("zinf-test", dir.path().c_str(), "tmpfs", 0, "size=1m,mode=0700") != 0) {
    GTEST_SKIP() << "cannot mount a tiny tmpfs here (" << std::strerror(errno) << ")";
  }
  struct Unmount {
    const char* p;
    ~Unmount() { ::umount2(p, MNT_DETACH); }
  } unmount{dir.path().c_str()};
  const auto path = dir.path() / "full";
  auto file = open_direct(path, O_RDWR | O_CREAT | O_EXCL, 0600, true);
  ASSERT_TRUE(file.is_ok()) << file.status().to_string();
  IoEngineOptions options;
  options.queue_depth = 4;
  auto engine = make_io_engine(GetParam(), options);
  ASSERT_TRUE(engine.is_ok());
  auto index = (*engine)->add_file(file->fd.get(), path.string());
  ASSERT_TRUE(index.is_ok());
  IoQueue q(std::move(*engine));
  auto buf = AlignedBuffer::allocate(256 << 10);
  ASSERT_TRUE(buf.is_ok());
  Status last;
  for (std::uint64_t off = 0; off < (4 << 20) && last.is_ok(); off += buf->size()) {
    IoRequest r{IoOp::kWrite, *index, off, buf->data(), static_cast<std::uint32_t>(buf->size()), 0};
    ASSERT_TRUE(q.submit({&r, 1}).is_ok());
    IoResult done;
    auto n = q.wait({&done, 1}, 1);
    ASSERT_TRUE(n.is_ok());
    last = done.status;
  }
  EXPECT_EQ(last.code(), StatusCode::kNoSpace) << last.to_string();
  EXPECT_NE(last.message().find(path.string()), std::string::npos) << last.message();
}

INSTANTIATE_TEST_SUITE_P(Engines, RealEnospc, ::testing::ValuesIn(testing::all_backends()),
                         testing::backend_name);

}  // namespace
}  // namespace zinf::swap
