// SwapStore against every engine this machine has: round trips (striped and
// not), versioned overwrites, space reuse, concurrency, checksums, faults,
// and what it may and may not touch on disk.
#include "zinf/swap/swap_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "swap/swap_test_util.hpp"
#include "zinf/common/aligned.hpp"

namespace zinf::swap {
namespace {

using testing::ScratchDir;

class SwapStoreTest : public ::testing::TestWithParam<IoBackend> {
 protected:
  void SetUp() override {
    Status probe = probe_backend(GetParam());
    if (!probe.is_ok())
      GTEST_SKIP() << to_string(GetParam()) << " unavailable: " << probe.to_string();
  }

  SwapStoreOptions options(int paths = 1) {
    SwapStoreOptions o;
    for (int i = 0; i < paths; ++i) {
      auto p = dir_.path() / ("nvme" + std::to_string(i));
      std::filesystem::create_directories(p);
      o.paths.push_back(p);
    }
    o.backend = GetParam();
    o.aio.block_size = 128 << 10;
    o.aio.queue_depth = 8;
    o.aio.intra_op_parallelism = 2;
    return o;
  }

  // One path, one lane, and a fault on the nth write request.
  SwapStoreOptions with_write_fault(FaultKind kind, std::uint64_t nth) {
    SwapStoreOptions o = options(1);
    o.aio.intra_op_parallelism = 1;
    FaultSpec fault;
    fault.kind = kind;
    fault.only = IoOp::kWrite;
    fault.nth = nth;
    o.fault = fault;
    return o;
  }

  // The third write request held by the device for `held`, lost after 400 ms.
  SwapStoreOptions with_lost_write(std::chrono::milliseconds held) {
    SwapStoreOptions o = with_write_fault(FaultKind::kDelay, 3);
    o.fault->delay = held;
    o.completion_timeout = std::chrono::milliseconds(200);
    return o;
  }

  std::unique_ptr<SwapStore> open(SwapStoreOptions o) {
    auto store = SwapStore::open(std::move(o));
    EXPECT_TRUE(store.is_ok()) << store.status().to_string();
    return store.is_ok() ? std::move(*store) : nullptr;
  }

  static AlignedBuffer pattern(std::size_t size, std::uint64_t seed) {
    auto b = AlignedBuffer::allocate(size);
    testing::fill_pattern(b->data(), size, seed);
    return std::move(*b);
  }

  static Status put(SwapStore& s, const std::string& key, const AlignedBuffer& b,
                    std::size_t size) {
    auto t = s.write(key, {b.data(), size});
    return t.is_ok() ? s.wait(*t) : t.status();
  }

  static Status get(SwapStore& s, const std::string& key, AlignedBuffer& b, std::size_t size) {
    auto t = s.read(key, {b.data(), size});
    return t.is_ok() ? s.wait(*t) : t.status();
  }

  // Writes old_value to "x", then fails to overwrite it with new_value (an
  // I/O error whose message has `why`), and reads old_value back.
  static void overwrite_fails(SwapStore& s, const AlignedBuffer& old_value,
                              const AlignedBuffer& new_value, const std::string& why) {
    const std::size_t size = old_value.size();
    ASSERT_TRUE(put(s, "x", old_value, size).is_ok());
    Status st = put(s, "x", new_value, size);
    EXPECT_EQ(st.code(), StatusCode::kIoError) << st.to_string();
    EXPECT_NE(st.message().find(why), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("key 'x'"), std::string::npos) << st.message();
    auto in = AlignedBuffer::allocate(size);
    ASSERT_TRUE(get(s, "x", *in, size).is_ok());
    EXPECT_EQ(std::memcmp(in->data(), old_value.data(), size), 0);
  }

  ScratchDir dir_;
};

TEST_P(SwapStoreTest, RoundTripsOfManySizesStripedAndNot) {
  for (int paths : {1, 2, 3}) {
    auto store = open(options(paths));
    ASSERT_NE(store, nullptr);
    std::mt19937_64 rng(paths);
    for (std::size_t size :
         {std::size_t{1}, std::size_t{4095}, std::size_t{4096}, std::size_t{100000},
          std::size_t{128 << 10}, std::size_t{(1 << 20) + 7}, std::size_t{3 << 20}}) {
      const std::string key = "k" + std::to_string(size);
      AlignedBuffer out = pattern(size, rng());
      auto in = AlignedBuffer::allocate(size);
      ASSERT_TRUE(put(*store, key, out, size).is_ok());
      ASSERT_TRUE(get(*store, key, *in, size).is_ok());
      ASSERT_EQ(std::memcmp(out.data(), in->data(), size), 0)
          << paths << " paths, " << size << " bytes";
      EXPECT_EQ(*store->size_of(key), size);
    }
    if (paths > 1) {
      std::set<std::filesystem::path> files;
      auto where = store->locate("k3145728");
      ASSERT_TRUE(where.is_ok());
      for (const auto& loc : *where) files.insert(loc.file);
      EXPECT_EQ(files.size(), static_cast<std::size_t>(paths))
          << "a large value is striped over every path";
    }
  }
}

TEST_P(SwapStoreTest, EvictingVerifiedReadsKeepsTheirData) {
  auto o = options(2);
  o.evict_verified_reads = true;
  auto store = open(o);
  ASSERT_NE(store, nullptr);
  for (std::size_t size :
       {std::size_t{1}, std::size_t{4095}, std::size_t{100000}, std::size_t{(1 << 20) + 7}}) {
    const std::string key = "k" + std::to_string(size);
    AlignedBuffer out = pattern(size, size);
    auto in = AlignedBuffer::allocate(size);
    ASSERT_TRUE(put(*store, key, out, size).is_ok());
    ASSERT_TRUE(get(*store, key, *in, size).is_ok());
    ASSERT_EQ(std::memcmp(out.data(), in->data(), size), 0) << size << " bytes";
  }
}

// With reap_in_background a read finishes without its caller: its bytes are
// counted (which happens when its last chunk is reaped) before anyone waits.
// The read is 3 MiB of 128 KiB chunks over 2 lanes of depth 8: more chunks
// than fit in flight at once.
TEST_P(SwapStoreTest, ReapingInTheBackgroundFinishesReadsNobodyWaitsFor) {
  auto o = options(1);
  o.reap_in_background = true;
  auto store = open(o);
  ASSERT_NE(store, nullptr);
  const std::size_t size = 3 << 20;
  AlignedBuffer out = pattern(size, 5);
  auto in = AlignedBuffer::allocate(size);
  ASSERT_TRUE(put(*store, "a", out, size).is_ok());
  const std::uint64_t before = store->stats().bytes_read;
  auto ticket = store->read("a", {in->data(), size});
  ASSERT_TRUE(ticket.is_ok());
  const auto deadline = SteadyClock::now() + std::chrono::seconds(60);
  while (store->stats().bytes_read - before < size && SteadyClock::now() < deadline)
    std::this_thread::yield();
  EXPECT_EQ(store->stats().bytes_read - before, size) << "the read did not finish by itself";
  ASSERT_TRUE(store->wait(*ticket).is_ok());
  EXPECT_EQ(std::memcmp(out.data(), in->data(), size), 0);
}

TEST_P(SwapStoreTest, BusyIntervalsCoverEachOperationAndNothingElse) {
  auto store = open(options(1));
  ASSERT_NE(store, nullptr);
  const std::size_t size = 1 << 20;
  AlignedBuffer out = pattern(size, 1);
  auto in = AlignedBuffer::allocate(size);
  const auto before = SteadyClock::now();
  ASSERT_TRUE(put(*store, "a", out, size).is_ok());
  const auto between = SteadyClock::now();
  ASSERT_TRUE(get(*store, "a", *in, size).is_ok());
  const auto after = SteadyClock::now();
  SwapBusy busy = store->take_busy();
  ASSERT_EQ(busy.writes.size(), 1u);
  ASSERT_EQ(busy.reads.size(), 1u);
  EXPECT_GE(busy.writes[0].begin, before);
  EXPECT_LE(busy.writes[0].end, between);
  EXPECT_GE(busy.reads[0].begin, between);
  EXPECT_LE(busy.reads[0].end, after);
  busy = store->take_busy();
  EXPECT_TRUE(busy.reads.empty() && busy.writes.empty());
}

TEST_P(SwapStoreTest, RegisteredBuffersAreReportedAsTheyAre) {
  auto store = open(options(1));
  ASSERT_NE(store, nullptr);
  EXPECT_FALSE(store->stats().fixed_buffers);
  auto region = AlignedBuffer::allocate(1 << 20);
  std::span<std::byte> regions[] = {region->bytes()};
  const Status s = store->register_buffers(regions);
  ASSERT_TRUE(s.is_ok()) << s.to_string();  // root, or a memlock limit above 1 MiB
  EXPECT_EQ(store->stats().fixed_buffers, GetParam() == IoBackend::kIoUring);
}

TEST_P(SwapStoreTest, OverwriteKeepsTheLastValueAndReusesSpace) {
  auto store = open(options(1));
  ASSERT_NE(store, nullptr);
  const std::size_t size = 1 << 20;
  auto in = AlignedBuffer::allocate(size);
  for (int i = 0; i < 100; ++i) {
    AlignedBuffer v = pattern(size, static_cast<std::uint64_t>(i));
    ASSERT_TRUE(put(*store, "w", v, size).is_ok());
    ASSERT_TRUE(get(*store, "w", *in, size).is_ok());
    ASSERT_EQ(std::memcmp(v.data(), in->data(), size), 0);
  }
  const SwapStats s = store->stats();
  EXPECT_EQ(s.live_bytes, size);
  EXPECT_LE(s.file_bytes, 512u << 20) << "the file must not grow with overwrites";
  ASSERT_TRUE(store->remove("w").is_ok());
  EXPECT_FALSE(store->contains("w"));
  EXPECT_EQ(store->stats().live_bytes, 0u);
  EXPECT_EQ(store->read("w", {in->data(), size}).status().code(), StatusCode::kNotFound);
}

TEST_P(SwapStoreTest, ManyOperationsInFlightFromSeveralThreads) {
  auto store = open(options(2));
  ASSERT_NE(store, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::size_t size = 300000;
      std::vector<AlignedBuffer> outs;
      std::vector<SwapTicket> tickets;
      for (int i = 0; i < 16; ++i) {
        outs.push_back(pattern(size, static_cast<std::uint64_t>(t * 100 + i)));
        auto ticket = store->write("t" + std::to_string(t) + "/" + std::to_string(i),
                                   {outs.back().data(), size});
        if (!ticket.is_ok()) ++failures;
        tickets.push_back(*ticket);
      }
      for (auto& tk : tickets) {
        if (!store->wait(tk).is_ok()) ++failures;
      }
      auto in = AlignedBuffer::allocate(size);
      for (int i = 0; i < 16; ++i) {
        if (!get(*store, "t" + std::to_string(t) + "/" + std::to_string(i), *in, size).is_ok() ||
            std::memcmp(in->data(), outs[static_cast<std::size_t>(i)].data(), size) != 0) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store->keys().size(), 64u);
}

TEST_P(SwapStoreTest, FlippedByteOnDiskIsDataLossNamingKeyAndFile) {
  for (bool checksum : {true, false}) {
    auto o = options(1);
    o.checksum = checksum;
    auto store = open(o);
    ASSERT_NE(store, nullptr);
    const std::size_t size = 200000;
    AlignedBuffer v = pattern(size, 1);
    ASSERT_TRUE(put(*store, "victim", v, size).is_ok());
    auto loc = store->locate("victim");
    ASSERT_TRUE(loc.is_ok());
    const ExtentLocation& where = (*loc)[1];
    {
      int fd = ::open(where.file.c_str(), O_RDWR);
      ASSERT_GE(fd, 0);
      unsigned char byte = 0;
      ASSERT_EQ(::pread(fd, &byte, 1, static_cast<off_t>(where.offset + 10)), 1);
      byte ^= 0x40;
      ASSERT_EQ(::pwrite(fd, &byte, 1, static_cast<off_t>(where.offset + 10)), 1);
      ::fsync(fd);
      ::close(fd);
    }
    auto in = AlignedBuffer::allocate(size);
    Status s = get(*store, "victim", *in, size);
    if (checksum) {
      EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
      EXPECT_NE(s.message().find("'victim'"), std::string::npos) << s.message();
      EXPECT_NE(s.message().find(where.file.string()), std::string::npos) << s.message();
    } else {
      EXPECT_TRUE(s.is_ok()) << "checksum off: the corruption goes unnoticed, by request";
    }
  }
}

TEST_P(SwapStoreTest, FailedWriteKeepsThePreviousValue) {
  // The first value is 2 chunks; the third write request fails.
  auto store = open(with_write_fault(FaultKind::kEio, 3));
  ASSERT_NE(store, nullptr);
  const std::size_t size = 256 << 10;
  AlignedBuffer old_value = pattern(size, 1), new_value = pattern(size, 2);
  ASSERT_NO_FATAL_FAILURE(overwrite_fails(*store, old_value, new_value, "Input/output error"));
  auto in = AlignedBuffer::allocate(size);
  ASSERT_TRUE(put(*store, "x", new_value, size).is_ok()) << "the fault has cleared";
  ASSERT_TRUE(get(*store, "x", *in, size).is_ok());
  EXPECT_EQ(std::memcmp(in->data(), new_value.data(), size), 0);
}

// A write request the device holds past its cancel is lost: the write fails
// and the previous value stays, its buffer is refused until the kernel
// returns the request, and the store goes on meanwhile.
TEST_P(SwapStoreTest, LostWriteQuarantinesItsBufferUntilTheKernelReturnsIt) {
  auto store = open(with_lost_write(std::chrono::milliseconds(1500)));
  ASSERT_NE(store, nullptr);
  const std::size_t size = 256 << 10;
  AlignedBuffer old_value = pattern(size, 1), new_value = pattern(size, 2);
  ASSERT_NO_FATAL_FAILURE(overwrite_fails(*store, old_value, new_value, "lost completion"));
  EXPECT_EQ(store->stats().quarantined_bytes, 128u << 10);
  // The third request is the new value's first chunk (the first value took two).
  EXPECT_TRUE(store->holds({new_value.data() + (128 << 10) - 1, 1}));
  EXPECT_FALSE(store->holds({new_value.data() + (128 << 10), 128 << 10}));
  EXPECT_FALSE(store->holds({old_value.data(), size}));

  Status reuse = put(*store, "y", new_value, size);
  EXPECT_EQ(reuse.code(), StatusCode::kFailedPrecondition) << reuse.to_string();
  EXPECT_NE(reuse.message().find("kernel may still use"), std::string::npos) << reuse.message();
  auto in = AlignedBuffer::allocate(size);

  // Each read drives the lane, which reaps the late completion once it comes.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (store->stats().quarantined_bytes > 0 && std::chrono::steady_clock::now() < deadline) {
    ASSERT_TRUE(get(*store, "x", *in, size).is_ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(store->stats().quarantined_bytes, 0u);
  EXPECT_FALSE(store->holds({new_value.data(), size}));
  ASSERT_TRUE(put(*store, "x", new_value, size).is_ok());
  ASSERT_TRUE(get(*store, "x", *in, size).is_ok());
  EXPECT_EQ(std::memcmp(in->data(), new_value.data(), size), 0);
  EXPECT_EQ(store->stats().live_bytes, size) << "the lost write's extents were freed";
}

// A store closed while the kernel still has a lost request keeps that
// buffer from the allocator, and only that one.
TEST_P(SwapStoreTest, ClosingWithALostRequestKeepsItsBufferFromTheAllocator) {
  auto store = open(with_lost_write(std::chrono::milliseconds(3000)));
  ASSERT_NE(store, nullptr);
  const std::size_t size = 256 << 10;
  AlignedBuffer old_value = pattern(size, 1), new_value = pattern(size, 2);
  ASSERT_NO_FATAL_FAILURE(overwrite_fails(*store, old_value, new_value, "lost completion"));
  const std::span<const std::byte> lost{new_value.data(), 128 << 10};
  EXPECT_FALSE(lost_io_holds(lost)) << "the store itself quarantines it while open";
  store.reset();
  EXPECT_TRUE(lost_io_holds(lost));
  EXPECT_FALSE(lost_io_holds({new_value.data() + (128 << 10), 128 << 10}));
  EXPECT_FALSE(lost_io_holds(old_value.bytes()));
}

TEST_P(SwapStoreTest, NoSpaceOnTheDeviceIsNoSpaceNamingTheKey) {
  auto store = open(with_write_fault(FaultKind::kEnospc, 1));
  ASSERT_NE(store, nullptr);
  AlignedBuffer v = pattern(8192, 4);
  Status s = put(*store, "full", v, 8192);
  EXPECT_EQ(s.code(), StatusCode::kNoSpace) << s.to_string();
  EXPECT_NE(s.message().find("key 'full'"), std::string::npos) << s.message();
  EXPECT_FALSE(store->contains("full")) << "a failed first write stores nothing";
  EXPECT_EQ(store->stats().live_bytes, 0u);
}

TEST_P(SwapStoreTest, ReadStartedBeforeOverwritesGetsTheOldValue) {
  auto o = options(1);
  o.aio.intra_op_parallelism = 1;
  auto store = open(o);
  ASSERT_NE(store, nullptr);
  const std::size_t size = 300000;
  AlignedBuffer old_value = pattern(size, 5), v1 = pattern(size, 6), v2 = pattern(size, 7);
  ASSERT_TRUE(put(*store, "r", old_value, size).is_ok());
  const auto old_where = store->locate("r");
  ASSERT_TRUE(old_where.is_ok());
  auto in = AlignedBuffer::allocate(size);
  auto reading = store->read("r", {in->data(), size});
  ASSERT_TRUE(reading.is_ok());
  // Both overwrites finish while the read is not yet waited for: the extents
  // it reads stay reserved until then, so first fit cannot hand them to v2.
  ASSERT_TRUE(put(*store, "r", v1, size).is_ok());
  ASSERT_TRUE(put(*store, "r", v2, size).is_ok());
  const auto new_where = store->locate("r");
  ASSERT_TRUE(new_where.is_ok());
  for (const auto& a : *old_where) {
    for (const auto& b : *new_where) {
      EXPECT_TRUE(a.offset + a.length <= b.offset || b.offset + b.length <= a.offset)
          << "v2 at " << b.offset << " overlaps the value being read at " << a.offset;
    }
  }
  ASSERT_TRUE(store->wait(*reading).is_ok());
  EXPECT_EQ(std::memcmp(in->data(), old_value.data(), size), 0);
  ASSERT_TRUE(get(*store, "r", *in, size).is_ok());
  EXPECT_EQ(std::memcmp(in->data(), v2.data(), size), 0);
}

TEST_P(SwapStoreTest, ATicketIsWaitedForOnce) {
  auto store = open(options(1));
  ASSERT_NE(store, nullptr);
  AlignedBuffer v = pattern(4096, 8);
  auto t = store->write("once", {v.data(), 4096});
  ASSERT_TRUE(t.is_ok());
  ASSERT_TRUE(store->wait(*t).is_ok());
  Status again = store->wait(*t);
  EXPECT_EQ(again.code(), StatusCode::kInvalidArgument) << again.to_string();
}

// Values from 1 to 40 chunks, more of them in flight than the queue depth:
// whichever finishes first is retired, each exactly once.
TEST_P(SwapStoreTest, WaitAnyRetiresEachOperationOnceInAnyOrder) {
  auto store = open(options(2));
  ASSERT_NE(store, nullptr);
  constexpr std::size_t kValues = 24;
  auto size_of = [](std::size_t i) {
    return (i % 5 == 0 ? 40 : 1 + i % 3) * (128 << 10) - 512 * i;
  };
  std::vector<AlignedBuffer> values, reads;
  std::vector<SwapTicket> tickets;
  std::vector<std::size_t> owner;  // tickets[k] is value owner[k]
  for (std::size_t i = 0; i < kValues; ++i) {
    values.push_back(pattern(size_of(i), i));
    auto t = store->write("v" + std::to_string(i), {values.back().data(), size_of(i)});
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    tickets.push_back(*t);
    owner.push_back(i);
  }
  auto retire_all = [&] {
    std::vector<int> seen(kValues, 0);
    while (!tickets.empty()) {
      auto done = store->wait_any(tickets);
      ASSERT_TRUE(done.is_ok()) << done.status().to_string();
      ASSERT_LT(done->index, tickets.size());
      EXPECT_TRUE(done->status.is_ok()) << done->status.to_string();
      ++seen[owner[done->index]];
      tickets.erase(tickets.begin() + static_cast<std::ptrdiff_t>(done->index));
      owner.erase(owner.begin() + static_cast<std::ptrdiff_t>(done->index));
    }
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), static_cast<std::ptrdiff_t>(kValues));
  };
  retire_all();
  for (std::size_t i = 0; i < kValues; ++i) {
    auto buffer = AlignedBuffer::allocate(align_up(size_of(i), kIoAlignment));
    reads.push_back(std::move(*buffer));
    auto t = store->read("v" + std::to_string(i), {reads.back().data(), size_of(i)});
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    tickets.push_back(*t);
    owner.push_back(i);
  }
  retire_all();
  for (std::size_t i = 0; i < kValues; ++i)
    EXPECT_EQ(std::memcmp(reads[i].data(), values[i].data(), size_of(i)), 0) << "value " << i;
}

TEST_P(SwapStoreTest, WaitAnyGivesEachOperationItsOwnStatus) {
  auto store = open(with_write_fault(FaultKind::kEio, 2));
  ASSERT_NE(store, nullptr);
  AlignedBuffer v = pattern(3 * 4096, 5);
  std::vector<SwapTicket> tickets;
  for (int i = 0; i < 3; ++i) {
    auto t = store->write("w" + std::to_string(i), {v.data() + i * 4096, 4096});
    ASSERT_TRUE(t.is_ok());
    tickets.push_back(*t);
  }
  const SwapTicket first = tickets.front();
  int failed = 0;
  while (!tickets.empty()) {
    auto done = store->wait_any(tickets);
    ASSERT_TRUE(done.is_ok()) << done.status().to_string();
    if (!done->status.is_ok()) {
      ++failed;
      EXPECT_EQ(done->status.code(), StatusCode::kIoError);
      EXPECT_NE(done->status.message().find("key 'w1'"), std::string::npos)
          << done->status.message();
    }
    tickets.erase(tickets.begin() + static_cast<std::ptrdiff_t>(done->index));
  }
  EXPECT_EQ(failed, 1);
  EXPECT_FALSE(store->contains("w1"));
  EXPECT_TRUE(store->contains("w0") && store->contains("w2"));
  auto used = store->wait_any({&first, 1});
  EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument) << used.status().to_string();
  EXPECT_EQ(store->wait_any({}).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(SwapStoreTest, UnwritablePathIsAnErrorNamingIt) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes to any directory";
  auto o = options(1);
  std::filesystem::permissions(
      o.paths[0], std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  auto store = SwapStore::open(o);
  std::filesystem::permissions(o.paths[0], std::filesystem::perms::owner_all);
  ASSERT_FALSE(store.is_ok());
  EXPECT_NE(store.status().message().find(o.paths[0].string()), std::string::npos)
      << store.status().message();
  EXPECT_NE(store.status().message().find("not writable"), std::string::npos);
}

TEST_P(SwapStoreTest, FilesArePrivateAndRemovedLeavingOthersUntouched) {
  auto o = options(1);
  const auto root = o.paths[0];
  std::ofstream(root / "sentinel") << "keep me";
  std::filesystem::path file;
  {
    auto store = open(o);
    ASSERT_NE(store, nullptr);
    AlignedBuffer v = pattern(4096, 3);
    ASSERT_TRUE(put(*store, "a", v, 4096).is_ok());
    auto where = store->locate("a");
    ASSERT_TRUE(where.is_ok());
    file = where->front().file;
    struct stat st {};
    ASSERT_EQ(::stat(file.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ASSERT_EQ(::stat(file.parent_path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    EXPECT_EQ(file.parent_path().parent_path(), root);
  }
  EXPECT_FALSE(std::filesystem::exists(file));
  EXPECT_FALSE(std::filesystem::exists(file.parent_path()));
  std::ifstream in(root / "sentinel");
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "keep me");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(root), {}), 1);
}

std::set<std::string> swap_dirs(const std::filesystem::path& root) {
  std::set<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("zinf-swap-", 0) == 0) out.insert(name);
  }
  return out;
}

// A process killed with its store open leaves the store's directory; the
// next store opened on the path removes it, and nothing else: not a live
// store's directory, not one holding a file that is not zinf's, not one
// without a lock file (an older zinf's, whose owner cannot be known).
// (The child is forked before this process opens a store: a fork while
// store threads run could inherit a lock one of them holds.)
TEST_P(SwapStoreTest, DirectoriesOfDeadProcessesAreRemovedAndNothingElse) {
  auto o = options(1);
  const auto root = o.paths[0];
  const pid_t child = ::fork();
  if (child == 0) {  // opens a store, writes, and dies without cleaning up
    auto store = SwapStore::open(o);
    AlignedBuffer v = pattern(1 << 20, 5);
    if (!store.is_ok() || !put(**store, "a", v, 1 << 20).is_ok()) ::_exit(3);
    ::kill(::getpid(), SIGKILL);
    ::_exit(4);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
  ASSERT_EQ(swap_dirs(root).size(), 1u) << "the killed store left its directory";
  std::filesystem::create_directories(root / "zinf-swap-notes1");
  std::ofstream(root / "zinf-swap-notes1" / "lock");
  std::ofstream(root / "zinf-swap-notes1" / "notes.txt") << "mine";
  std::filesystem::create_directories(root / "zinf-swap-legacy");
  std::ofstream(root / "zinf-swap-legacy" / "swap") << "old";
  std::ofstream(root / "sentinel") << "keep me";
  const std::set<std::string> others = {"zinf-swap-legacy", "zinf-swap-notes1"};
  auto live = open(o);
  ASSERT_NE(live, nullptr);
  auto with_live = swap_dirs(root);
  ASSERT_EQ(with_live.size(), 3u) << "the dead store's directory is gone, the live one's is new";
  for (const auto& name : others) EXPECT_EQ(with_live.count(name), 1u) << name;
  {
    auto next = open(o);
    ASSERT_NE(next, nullptr);
    EXPECT_EQ(swap_dirs(root).size(), 4u) << "the live store's directory stays";
  }
  EXPECT_EQ(swap_dirs(root), with_live);
  EXPECT_TRUE(std::filesystem::exists(root / "zinf-swap-notes1" / "notes.txt"));
  EXPECT_TRUE(std::filesystem::exists(root / "zinf-swap-legacy" / "swap"));
  EXPECT_TRUE(std::filesystem::exists(root / "sentinel"));
  AlignedBuffer v = pattern(4096, 1);
  EXPECT_TRUE(put(*live, "still", v, 4096).is_ok()) << "the live store kept its files";
}

TEST_P(SwapStoreTest, BadPathsAndBuffersAreClearErrors) {
  SwapStoreOptions o = options(1);
  o.paths = {dir_.path() / "missing"};
  auto missing = SwapStore::open(o);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("missing"), std::string::npos);
  std::ofstream(dir_.path() / "plainfile") << "x";
  o.paths = {dir_.path() / "plainfile"};
  auto not_dir = SwapStore::open(o);
  ASSERT_FALSE(not_dir.is_ok());
  EXPECT_NE(not_dir.status().message().find("not a directory"), std::string::npos);

  auto store = open(options(1));
  ASSERT_NE(store, nullptr);
  auto buf = AlignedBuffer::allocate(8192);
  EXPECT_EQ(store->write("", {buf->data(), 10}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->write("u", {buf->data() + 1, 10}).status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(put(*store, "k", *buf, 100).is_ok());
  EXPECT_EQ(store->read("k", {buf->data(), 99}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->wait(SwapTicket{12345}).code(), StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Engines, SwapStoreTest, ::testing::ValuesIn(testing::all_backends()),
                         testing::backend_name);

}  // namespace
}  // namespace zinf::swap
