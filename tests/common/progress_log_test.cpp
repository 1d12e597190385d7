// ProgressLog: a line per interval with what is done of the total, none for
// an operation shorter than the interval.
#include "common/progress_log.hpp"

#include <gtest/gtest.h>

#include "stderr_of.hpp"
#include "zinf/common/logging.hpp"

namespace zinf {
namespace {

TEST(ProgressLog, SaysWhatIsDoneOfTheTotalEachInterval) {
  const LogLevel level = log_level();
  set_log_level(LogLevel::kInfo);
  const std::string every = test::stderr_of([] {
    ProgressLog progress("save_checkpoint ck/t", 4096, std::chrono::milliseconds(0));
    progress.add(1024);
    progress.add(3072);
  });
  const std::string never = test::stderr_of([] {
    ProgressLog progress("save_checkpoint ck/t", 4096, std::chrono::hours(1));
    progress.add(4096);
  });
  set_log_level(level);
  EXPECT_NE(every.find("save_checkpoint ck/t: 1.0 KiB of 4.0 KiB (25%)"), std::string::npos)
      << every;
  EXPECT_NE(every.find("save_checkpoint ck/t: 4.0 KiB of 4.0 KiB (100%)"), std::string::npos)
      << every;
  EXPECT_NE(every.find("s left"), std::string::npos) << every;
  EXPECT_EQ(never, "");
}

}  // namespace
}  // namespace zinf
