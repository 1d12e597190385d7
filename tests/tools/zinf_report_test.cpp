// zinf-report: a train_gpt --json becomes an SVG or a PNG; bad input is an
// error naming the file.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "run_shell.hpp"

namespace {

zinf::test::Job run(const std::string& args) {
  return zinf::test::run_shell(std::string(ZINF_REPORT_PATH) + " " + args);
}

std::string path(const std::string& name) { return std::string(ZINF_TEST_TMP) + "/" + name; }

std::string read(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class ZinfReportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "gnuplot is not installed (scripts/install-deps.sh installs gnuplot-nox)";
    std::ofstream(path("run.json")) << R"({"model_params": 2500000, "world_size": 2,
      "tokens_per_s": 1234.5, "steps": [
      {"step": 1, "loss": 5.5, "wall_s": 0.4, "fwd_bwd_s": 0.3, "stall_s": 0.1, "step_s": 0.1},
      {"step": 2, "loss": 5.1, "wall_s": 0.3, "fwd_bwd_s": 0.2, "stall_s": 0.0, "step_s": 0.1},
      {"step": 3, "loss": 4.8, "wall_s": 0.9, "fwd_bwd_s": 0.2, "stall_s": 0.0, "step_s": 0.1,
       "checkpoint_s": 0.6}]})";
  }
};

TEST_F(ZinfReportTest, WritesAnSvgNextToTheRunAndAPngWhenAsked) {
  std::remove(path("run.svg").c_str());
  zinf::test::Job r = run(path("run.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string svg = read(path("run.svg"));
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("2.5M parameters, 2 rank(s), 1234 tokens/s"), std::string::npos);
  for (const char* series : {"loss", "checkpoint", "optimizer step", "stall (parameters)"})
    EXPECT_NE(svg.find(series), std::string::npos) << series;
  r = run(path("run.json") + " -o " + path("run.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(read(path("run.png")).substr(0, 4), "\x89PNG");
}

TEST_F(ZinfReportTest, BadInputIsAnErrorNamingTheFile) {
  zinf::test::Job r = run(path("missing.json"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("missing.json: cannot be read"), std::string::npos) << r.output;
  std::ofstream(path("empty.json")) << R"({"steps": []})";
  r = run(path("empty.json"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("empty.json: no steps[]"), std::string::npos) << r.output;
  std::ofstream(path("text.json")) << "not json";
  r = run(path("text.json"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("text.json: not JSON"), std::string::npos) << r.output;
  r = run(path("run.json") + " -o " + path("run.pdf"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("expected a .svg or .png"), std::string::npos) << r.output;
}

}  // namespace
