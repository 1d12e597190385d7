// The checkpoint state file's streams: what goes in comes out at the
// layout's offsets, padded to 4 KiB per state array (version 3) or not
// (version 2); checksums cover the data only; I/O errors name the file and
// stick; a file of the wrong size is refused before anything is read.
#include "offload/state_file.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <vector>

#include "swap/crc32c.hpp"
#include "swap/swap_test_util.hpp"

namespace zinf::offload {
namespace {

using swap::testing::ScratchDir;
namespace fs = std::filesystem;

// More than two chunks per state array, and not a multiple of a block.
constexpr std::uint64_t kElements = 2 * kStateChunk / sizeof(float) + 777;
constexpr int kStates = 3;

float value(int k, std::uint64_t e) { return static_cast<float>(k * 1e7 + e); }

// Writes every state in pieces of `piece` elements, the states of a piece
// one after another, as a walk over the optimizer state does.
Status write_all(StateFile& file, std::uint64_t piece, std::uint64_t elements = kElements) {
  std::vector<float> data(piece);
  for (std::uint64_t at = 0; at < elements; at += piece) {
    const std::uint64_t n = std::min(piece, elements - at);
    for (int k = 0; k < kStates; ++k) {
      for (std::uint64_t i = 0; i < n; ++i) data[i] = value(k, at + i);
      ZINF_RETURN_IF_ERROR(file.write(k, data.data(), n));
    }
  }
  return file.finish();
}

std::vector<char> contents(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::uint32_t data_crc(int k, std::uint64_t elements = kElements) {
  std::vector<float> data(elements);
  for (std::uint64_t e = 0; e < elements; ++e) data[e] = value(k, e);
  return swap::crc32c({reinterpret_cast<const std::byte*>(data.data()), elements * 4});
}

class StateFileBackends : public ::testing::TestWithParam<IoBackend> {};

TEST_P(StateFileBackends, WritesEachStateAtItsPaddedOffsetAndReadsItBackInOtherPieces) {
  ScratchDir dir;
  const fs::path path = dir.path() / "rank0.state";
  const StateLayout layout{kElements, kStates, 3};
  const StateIo io{GetParam(), {}};
  ASSERT_EQ(layout.region_stride() % 4096, 0u);
  ASSERT_GT(layout.region_stride(), layout.data_bytes());
  {
    auto file = StateFile::create(path, layout, io);
    ASSERT_TRUE(file.is_ok()) << file.status().to_string();
    ASSERT_TRUE(write_all(**file, 100'003).is_ok());
    for (int k = 0; k < kStates; ++k) EXPECT_EQ((*file)->crc32c(k), data_crc(k)) << k;
  }
  const std::vector<char> bytes = contents(path);
  ASSERT_EQ(bytes.size(), layout.file_bytes());
  for (int k = 0; k < kStates; ++k) {
    const char* region = bytes.data() + k * layout.region_stride();
    for (std::uint64_t e : {std::uint64_t{0}, kElements / 2, kElements - 1}) {
      float f;
      std::memcpy(&f, region + e * 4, 4);
      EXPECT_EQ(f, value(k, e)) << "state " << k << " element " << e;
    }
    for (std::uint64_t b = layout.data_bytes(); b < layout.region_stride(); ++b)
      ASSERT_EQ(region[b], 0) << "padding of state " << k;
  }

  auto file = StateFile::open(path, layout, io);
  ASSERT_TRUE(file.is_ok()) << file.status().to_string();
  std::vector<float> got(kElements);
  for (std::uint64_t at = 0, piece = 4097; at < kElements; at += piece) {
    const std::uint64_t n = std::min(piece, kElements - at);
    for (int k = 0; k < kStates; ++k) {
      if (k == 1) {
        ASSERT_TRUE((*file)->read(k, nullptr, n).is_ok());  // checksummed only
        continue;
      }
      ASSERT_TRUE((*file)->read(k, got.data() + at, n).is_ok());
      for (std::uint64_t i = 0; i < n; ++i) ASSERT_EQ(got[at + i], value(k, at + i));
    }
  }
  for (int k = 0; k < kStates; ++k) EXPECT_EQ((*file)->crc32c(k), data_crc(k)) << k;
  EXPECT_TRUE((*file)->direct());
  const Status past = (*file)->read(0, got.data(), 1);
  EXPECT_FALSE(past.is_ok());
  EXPECT_NE(past.message().find("past its end"), std::string::npos) << past.to_string();
}

// Many chunks per state, more than the file keeps in flight: read back a
// whole state at a time (the host tier's walk: one state's chunks all
// reading ahead while the others' sit full) and a little of each at a time
// (the NVMe tier's: reads wait their turn for a place).
TEST_P(StateFileBackends, ReadsBackInEitherWalkWithMoreChunksThanPlaces) {
  constexpr std::uint64_t kMany = 12 * kStateChunk / sizeof(float) + 333;
  ScratchDir dir;
  const fs::path path = dir.path() / "rank0.state";
  const StateLayout layout{kMany, kStates, 3};
  const StateIo io{GetParam(), {}};
  {
    auto file = StateFile::create(path, layout, io);
    ASSERT_TRUE(file.is_ok()) << file.status().to_string();
    ASSERT_TRUE(write_all(**file, 1'000'003, kMany).is_ok());
  }
  std::vector<float> got(kMany);
  for (std::uint64_t piece : {kMany, std::uint64_t{300'007}}) {
    auto file = StateFile::open(path, layout, io);
    ASSERT_TRUE(file.is_ok()) << file.status().to_string();
    for (std::uint64_t at = 0; at < kMany; at += piece) {
      const std::uint64_t n = std::min(piece, kMany - at);
      for (int k = 0; k < kStates; ++k) {
        ASSERT_TRUE((*file)->read(k, got.data(), n).is_ok()) << "piece " << piece;
        for (std::uint64_t i = 0; i < n; ++i)
          ASSERT_EQ(got[i], value(k, at + i)) << "piece " << piece << " state " << k;
      }
    }
    for (int k = 0; k < kStates; ++k) EXPECT_EQ((*file)->crc32c(k), data_crc(k, kMany)) << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Engines, StateFileBackends,
                         ::testing::ValuesIn(swap::testing::all_backends()),
                         swap::testing::backend_name);

TEST(StateFile, ReadsVersionTwoFilesUnpadded) {
  ScratchDir dir;
  const fs::path path = dir.path() / "rank0.state";
  const StateLayout layout{kElements, kStates, 2};
  EXPECT_EQ(layout.file_bytes(), kStates * kElements * 4);
  {
    std::ofstream out(path, std::ios::binary);
    for (int k = 0; k < kStates; ++k)
      for (std::uint64_t e = 0; e < kElements; ++e) {
        const float f = value(k, e);
        out.write(reinterpret_cast<const char*>(&f), 4);
      }
  }
  auto file = StateFile::open(path, layout, {});
  ASSERT_TRUE(file.is_ok()) << file.status().to_string();
  std::vector<float> got(kElements);
  for (int k = 0; k < kStates; ++k) {
    ASSERT_TRUE((*file)->read(k, got.data(), kElements).is_ok());
    EXPECT_EQ(got.back(), value(k, kElements - 1));
    EXPECT_EQ((*file)->crc32c(k), data_crc(k));
  }
}

TEST(StateFile, RefusesAFileOfTheWrongSizeAndAnExistingOne) {
  ScratchDir dir;
  const fs::path path = dir.path() / "rank0.state";
  const StateLayout layout{kElements, kStates, 3};
  {
    auto file = StateFile::create(path, layout, {});
    ASSERT_TRUE(file.is_ok() && write_all(**file, kElements).is_ok());
  }
  const auto again = StateFile::create(path, layout, {});
  EXPECT_FALSE(again.is_ok());
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(layout.file_bytes() - 4096)), 0);
  const auto opened = StateFile::open(path, layout, {});
  ASSERT_FALSE(opened.is_ok());
  EXPECT_EQ(opened.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(opened.status().message().find(path.string()), std::string::npos);
  EXPECT_NE(opened.status().message().find("bytes, not " + std::to_string(layout.file_bytes())),
            std::string::npos)
      << opened.status().to_string();
}

TEST(StateFile, AnIoErrorNamesTheFileAndSticks) {
  for (const auto op : {swap::IoOp::kWrite, swap::IoOp::kRead}) {
    ScratchDir dir;
    const fs::path path = dir.path() / "rank0.state";
    const StateLayout layout{kElements, kStates, 3};
    swap::FaultSpec fault;
    fault.kind = swap::FaultKind::kEio;
    fault.nth = 3;
    fault.only = op;
    const StateIo faulty{IoBackend::kAuto, fault};
    auto file = StateFile::create(path, layout, op == swap::IoOp::kWrite ? faulty : StateIo{});
    ASSERT_TRUE(file.is_ok());
    const Status written = write_all(**file, 50'000);
    if (op == swap::IoOp::kWrite) {
      ASSERT_FALSE(written.is_ok());
      EXPECT_EQ(written.code(), StatusCode::kIoError);
      EXPECT_NE(written.message().find(path.string()), std::string::npos) << written.to_string();
      EXPECT_EQ((*file)->finish().to_string(), written.to_string());
      continue;
    }
    ASSERT_TRUE(written.is_ok());
    auto reader = StateFile::open(path, layout, faulty);
    ASSERT_TRUE(reader.is_ok());
    Status s;
    for (int k = 0; k < kStates && s.is_ok(); ++k) s = (*reader)->read(k, nullptr, kElements);
    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find(path.string()), std::string::npos) << s.to_string();
    EXPECT_EQ((*reader)->read(0, nullptr, 1).to_string(), s.to_string());
  }
}

}  // namespace
}  // namespace zinf::offload
