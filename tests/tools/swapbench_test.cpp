// swapbench: flag parsing and reports in-process, then the real binary end to
// end (tiny sizes) for --json, --verify, --tune --emit-config and the default.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "options.hpp"
#include "report.hpp"
#include "run_shell.hpp"
#include "zinf/common/config.hpp"

namespace zinf::swapbench {
namespace {

Result<Options> parse(std::vector<const char*> args) {
  args.insert(args.begin(), "swapbench");
  return parse_options(static_cast<int>(args.size()), args.data());
}

void expect_flag_error(std::vector<const char*> args, const std::string& needle) {
  auto o = parse(args);
  ASSERT_FALSE(o.is_ok()) << needle;
  EXPECT_NE(o.status().message().find(needle), std::string::npos) << o.status().message();
}

TEST(SwapbenchOptionsTest, Sizes) {
  EXPECT_EQ(*parse_size("4096"), 4096u);
  EXPECT_EQ(*parse_size("128K"), 128u << 10);
  EXPECT_EQ(*parse_size("1m"), 1u << 20);
  EXPECT_EQ(*parse_size("2G"), 2ull << 30);
  for (const char* bad : {"", "0", "-1", "1.5G", "12Q", "K"})
    EXPECT_FALSE(parse_size(bad).is_ok()) << bad;
}

TEST(SwapbenchOptionsTest, ParsesEveryFlag) {
  auto o = parse({"--path",    "/a",
                  "--path=/b", "--size",
                  "64M",       "--block-size",
                  "128K",      "--queue-depth",
                  "8",         "--threads",
                  "2",         "--backend",
                  "libaio",    "--op",
                  "both",      "--loops",
                  "3",         "--checksum",
                  "--sqpoll",  "--verify",
                  "--json",    "--sweep-block-sizes",
                  "128K,1M",   "--sweep-queue-depths",
                  "1,8"});
  ASSERT_TRUE(o.is_ok()) << o.status().to_string();
  EXPECT_EQ(o->paths.size(), 2u);
  EXPECT_EQ(o->size, 64u << 20);
  EXPECT_EQ(o->block_size, 128u << 10);
  EXPECT_EQ(o->queue_depth, 8u);
  EXPECT_EQ(o->threads, 2u);
  EXPECT_EQ(o->backends, std::vector<IoBackend>{IoBackend::kLibAio});
  EXPECT_EQ(o->ops, (std::vector<Op>{Op::kWrite, Op::kRead}));
  EXPECT_EQ(o->loops, 3u);
  EXPECT_TRUE(o->checksum && o->sqpoll && o->verify && o->json);
  EXPECT_EQ(o->sweep_block_sizes, (std::vector<std::uint64_t>{128u << 10, 1u << 20}));
  EXPECT_EQ(o->sweep_queue_depths, (std::vector<std::uint32_t>{1, 8}));
}

TEST(SwapbenchOptionsTest, OpPicksOneDirectionOrBoth) {
  EXPECT_EQ(parse({"--op", "write"})->ops, std::vector<Op>{Op::kWrite});
  EXPECT_EQ(parse({"--op", "read"})->ops, std::vector<Op>{Op::kRead});
  EXPECT_EQ(parse({"--op", "mixed"})->ops, std::vector<Op>{Op::kMixed});
  EXPECT_EQ(parse({"--op", "copy"})->ops, std::vector<Op>{Op::kCopy});
}

TEST(SwapbenchOptionsTest, BadFlagsNameTheFlag) {
  expect_flag_error({"--bogus"}, "not expected: --bogus");
  expect_flag_error({"--size"}, "--size: 1 required N missing");
  expect_flag_error({"--size", "lots"}, "--size: expected a positive size");
  expect_flag_error({"--queue-depth", "0"}, "--queue-depth: expected a positive integer");
  expect_flag_error({"--threads", "x"}, "--threads");
  expect_flag_error({"--block-size", "1000"}, "--block-size: must be a multiple of 4096");
  expect_flag_error({"--backend", "spdk"}, "--backend: expected io_uring, libaio, psync or all");
  expect_flag_error({"--op", "trim"}, "--op: expected read, write, both, mixed or copy");
  expect_flag_error({"--op", "mixed", "--tune"}, "--op: mixed is measured alone");
  expect_flag_error({"--op", "copy", "--sweep"}, "--op: copy is measured alone");
  expect_flag_error({"--op", "copy", "--queue-depth", "1"}, "--op: copy needs a queue depth of 2");
  expect_flag_error({"--size", "4K", "--block-size", "1M"},
                    "--size: must be at least the block size");
  expect_flag_error({"--emit-config", "x.json"}, "--emit-config: needs --tune");
  expect_flag_error({"--json", "--sweep"}, "--json: cannot be combined");
  expect_flag_error({"--verify", "--op", "read"}, "--verify: needs --op both");
  expect_flag_error({"--checksum=maybe"}, "--checksum");
}

TEST(SwapbenchOptionsTest, PathsAreCheckedBeforeAnythingIsWritten) {
  EXPECT_NE(check_paths({"/nonexistent-zinf"}, 1 << 20)
                .message()
                .find("/nonexistent-zinf: not an existing"),
            std::string::npos);
  Status full = check_paths({"."}, 1ull << 60);
  EXPECT_EQ(full.code(), StatusCode::kNoSpace);
  EXPECT_NE(full.message().find("MiB free"), std::string::npos);
  EXPECT_TRUE(check_paths({"."}, 1 << 20).is_ok());
}

RunResult sample(Op op, std::uint32_t qd, double gbps) {
  RunResult r;
  r.op = op;
  r.backend = "io_uring";
  r.block_size = 1 << 20;
  r.queue_depth = qd;
  r.threads = 1;
  r.bytes = 1 << 30;
  r.seconds = 1;
  r.gbps = gbps;
  return r;
}

TEST(SwapbenchReportTest, SvgHasAxesAndOnePolylinePerSeries) {
  std::vector<RunResult> rs = {sample(Op::kWrite, 1, 0.5), sample(Op::kWrite, 8, 1.5),
                               sample(Op::kRead, 1, 0.7), sample(Op::kRead, 8, 2.1)};
  const std::string svg = to_svg(rs, "a <b> & c");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  std::size_t polylines = 0;
  for (std::size_t p = svg.find("<polyline"); p != std::string::npos;
       p = svg.find("<polyline", p + 1))
    ++polylines;
  EXPECT_EQ(polylines, 2u);
  EXPECT_NE(svg.find("queue depth"), std::string::npos);
  EXPECT_NE(svg.find("a &lt;b&gt; &amp; c"), std::string::npos);
  const std::string csv = to_csv(rs);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);
}

// Runs the real binary with `args` in `cwd`; returns (exit code, stdout).
std::pair<int, std::string> run_swapbench(const std::string& args, const std::string& cwd) {
  const auto job = zinf::test::run_shell("(cd '" + cwd + "' && ZINF_LOG=warn '" + SWAPBENCH_PATH +
                                         "' " + args + " 2>/dev/null)");
  return {job.status, job.output};
}

class SwapbenchBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::current_path() / "swapbench-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(SwapbenchBinaryTest, JsonHasOneObjectWithEveryField) {
  auto [rc, out] = run_swapbench(
      "--path . --size 8M --block-size 1M --queue-depth 4 --backend psync --json", dir_);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(out);
  ASSERT_EQ(j["results"].size(), 2u);
  for (const auto& r : j["results"]) {
    for (const char* key :
         {"op", "backend", "block_size", "queue_depth", "threads", "bytes", "seconds", "gbps",
          "p50_us", "p99_us", "checksum", "sqpoll", "iops", "cpu_s_per_gb"}) {
      EXPECT_TRUE(r.contains(key)) << key;
    }
    EXPECT_EQ(r["bytes"], 8u << 20);
    EXPECT_GT(r["gbps"].get<double>(), 0.0);
  }
  EXPECT_EQ(j["results"][0]["op"], "write");
  EXPECT_EQ(j["results"][1]["op"], "read");
}

TEST_F(SwapbenchBinaryTest, MixedAndCopyReadAndWriteTheSizeOnce) {
  for (const std::string op : {"mixed", "copy"}) {
    auto [rc, out] =
        run_swapbench("--path . --size 8M --block-size 1M --queue-depth 4 --backend psync --op " +
                          op + " --checksum --json",
                      dir_);
    ASSERT_EQ(rc, 0) << out;
    auto j = nlohmann::json::parse(out);
    ASSERT_EQ(j["results"].size(), 1u) << op;
    EXPECT_EQ(j["results"][0]["op"], op);
    EXPECT_EQ(j["results"][0]["bytes"], 8u << 20) << op;
  }
}

TEST_F(SwapbenchBinaryTest, VerifyAndChecksumPassOnEveryBackend) {
  auto [rc, out] = run_swapbench(
      "--path . --size 8M --block-size 256K --queue-depth 8 --verify --checksum", dir_);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("data verified"), std::string::npos) << out;
}

TEST_F(SwapbenchBinaryTest, TuneEmitsAConfigZinfReads) {
  auto [rc, out] = run_swapbench(
      "--path . --size 4M --tune --backend psync --sweep-block-sizes 128K,1M --sweep-queue-depths "
      "1,4 "
      "--emit-config tuned.json --csv s.csv --svg s.svg",
      dir_);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("best read"), std::string::npos);
  EXPECT_NE(out.find("best write"), std::string::npos);
  auto cfg = Config::from_file(dir_ / "tuned.json");
  ASSERT_TRUE(cfg.is_ok()) << cfg.status().to_string();
  EXPECT_TRUE(cfg->aio.block_size == (128u << 10) || cfg->aio.block_size == (1u << 20));
  EXPECT_TRUE(cfg->aio.queue_depth == 1 || cfg->aio.queue_depth == 4);
  EXPECT_EQ(cfg->zinf.io_backend, IoBackend::kPsync);
  std::ifstream csv(dir_ / "s.csv");
  std::string header;
  std::getline(csv, header);
  EXPECT_EQ(header.rfind("op,backend,block_size,queue_depth", 0), 0u);
  EXPECT_TRUE(std::filesystem::exists(dir_ / "s.svg"));
}

TEST_F(SwapbenchBinaryTest, DefaultRunLeavesNothingBehind) {
  auto [rc, out] = run_swapbench("", dir_);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("256 MiB per op"), std::string::npos) << out;
  EXPECT_NE(out.find("GB/s"), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::is_empty(dir_));
}

TEST_F(SwapbenchBinaryTest, UsageErrorsExitTwoAndWriteNothing) {
  EXPECT_EQ(run_swapbench("--queue-depth nope", dir_).first, 2);
  EXPECT_EQ(run_swapbench("--path ./missing", dir_).first, 2);
  EXPECT_EQ(run_swapbench("--path . --size 1000T", dir_).first, 2);
  EXPECT_TRUE(std::filesystem::is_empty(dir_));
}

}  // namespace
}  // namespace zinf::swapbench
