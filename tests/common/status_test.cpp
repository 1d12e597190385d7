#include "zinf/common/status.hpp"

#include <gtest/gtest.h>

#include <cerrno>

namespace zinf {
namespace {

TEST(StatusTest, DefaultIsOkAndCheap) {
  Status s;
  EXPECT_TRUE(s.is_ok());
  EXPECT_EQ(s.to_string(), "ok");
  EXPECT_EQ(s.sys_errno(), 0);
}

TEST(StatusTest, FromErrnoMapsCodesAndRetryable) {
  EXPECT_EQ(Status::from_errno(ENOSPC, "write /x").code(), StatusCode::kNoSpace);
  EXPECT_EQ(Status::from_errno(EDQUOT, "write /x").code(), StatusCode::kNoSpace);
  EXPECT_EQ(Status::from_errno(EIO, "read /x").code(), StatusCode::kIoError);
  EXPECT_EQ(Status::from_errno(ENOENT, "open /x").code(), StatusCode::kNotFound);
  EXPECT_TRUE(Status::from_errno(EINTR, "read").retryable());
  EXPECT_TRUE(Status::from_errno(EAGAIN, "read").retryable());
  EXPECT_FALSE(Status::from_errno(EIO, "read").retryable());
  Status s = Status::from_errno(EIO, "read /nvme/f at offset 4096");
  EXPECT_EQ(s.sys_errno(), EIO);
  EXPECT_NE(s.to_string().find("read /nvme/f at offset 4096"), std::string::npos);
  EXPECT_NE(s.to_string().find("errno 5"), std::string::npos);
}

TEST(StatusTest, WithContextKeepsCodeAndErrno) {
  Status s = Status::from_errno(EIO, "read").with_context("key 'opt/0'");
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_EQ(s.sys_errno(), EIO);
  EXPECT_EQ(s.message().rfind("key 'opt/0': read", 0), 0u);
  EXPECT_TRUE(Status().with_context("ignored").is_ok());
}

Result<int> half(int v) {
  if (v % 2 != 0) return Status::invalid_argument("odd: " + std::to_string(v));
  return v / 2;
}

Status quarter(int v, int& out) {
  ZINF_ASSIGN_OR_RETURN(int h, half(v));
  ZINF_ASSIGN_OR_RETURN(out, half(h));
  return Status::ok();
}

TEST(ResultTest, ValueAndErrorPropagate) {
  int out = 0;
  EXPECT_TRUE(quarter(8, out).is_ok());
  EXPECT_EQ(out, 2);
  Status s = quarter(6, out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "odd: 3");
}

TEST(ResultTest, OkStatusIsNotAValue) {
  Result<int> r{Status::ok()};
  EXPECT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ErrorTest, ThrowIfErrorCarriesStatus) {
  EXPECT_NO_THROW(throw_if_error(Status::ok()));
  try {
    throw_if_error(Status::data_loss("crc mismatch in key 'a'"));
    FAIL() << "expected an exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), StatusCode::kDataLoss);
    EXPECT_STREQ(e.what(), "data loss: crc mismatch in key 'a'");
  }
}

}  // namespace
}  // namespace zinf
