// Status and Result<T>: the error model of every zinf layer below the LibTorch
// surface. A Status is cheap when ok (no allocation) and carries, when not ok,
// a code, the errno that caused it (0 if none), whether retrying the same
// operation may succeed, and a message that names what failed (key, path,
// offset). Exceptions are used only at the LibTorch surface (zinf::Error).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace zinf {

enum class StatusCode : std::uint8_t {
  kOk = 0,
  kInvalidArgument,     // the caller passed something wrong (a config value, a length)
  kNotFound,            // a key, file or path does not exist
  kAlreadyExists,       // something that must be new is not
  kOutOfRange,          // read past the end, unexpected EOF
  kFailedPrecondition,  // the system is not in a state that allows the call
  kResourceExhausted,   // memory, buffers, queue slots
  kNoSpace,             // ENOSPC / EDQUOT on a swap path
  kIoError,             // EIO and other device errors
  kDataLoss,            // a checksum mismatch: the bytes on disk are not what was written
  kUnavailable,         // a feature (io_uring, O_DIRECT, an ISA) is not available here
  kUnimplemented,
  kCancelled,
  kInternal,  // a bug in zinf
};

std::string_view to_string(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message, int sys_errno = 0, bool retryable = false)
      : code_(code), errno_(sys_errno), retryable_(retryable), message_(std::move(message)) {}

  static Status ok() { return {}; }
  static Status invalid_argument(std::string msg) {
    return {StatusCode::kInvalidArgument, std::move(msg)};
  }
  static Status not_found(std::string msg) { return {StatusCode::kNotFound, std::move(msg)}; }
  static Status out_of_range(std::string msg) { return {StatusCode::kOutOfRange, std::move(msg)}; }
  static Status failed_precondition(std::string msg) {
    return {StatusCode::kFailedPrecondition, std::move(msg)};
  }
  static Status resource_exhausted(std::string msg) {
    return {StatusCode::kResourceExhausted, std::move(msg)};
  }
  static Status data_loss(std::string msg) { return {StatusCode::kDataLoss, std::move(msg)}; }
  static Status unavailable(std::string msg) { return {StatusCode::kUnavailable, std::move(msg)}; }
  static Status unimplemented(std::string msg) {
    return {StatusCode::kUnimplemented, std::move(msg)};
  }
  static Status cancelled(std::string msg) { return {StatusCode::kCancelled, std::move(msg)}; }
  static Status internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }

  // The one place a system errno becomes a Status: ENOSPC/EDQUOT -> kNoSpace,
  // ENOENT -> kNotFound, EINTR/EAGAIN -> retryable, EINVAL -> kInvalidArgument,
  // everything else -> kIoError. The message gets strerror appended.
  static Status from_errno(int err, std::string_view what);

  bool is_ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  int sys_errno() const { return errno_; }
  bool retryable() const { return retryable_; }
  const std::string& message() const { return message_; }

  // "io error: read /nvme/x at offset 4096: Input/output error (errno 5)"
  std::string to_string() const;

  // Prepends "context: " to the message; keeps code, errno and retryable.
  Status with_context(std::string_view context) const&;
  Status with_context(std::string_view context) &&;

 private:
  StatusCode code_ = StatusCode::kOk;
  int errno_ = 0;
  bool retryable_ = false;
  std::string message_;
};

// The exception thrown at the LibTorch surface; what() is Status::to_string().
class Error : public std::runtime_error {
 public:
  explicit Error(Status status);
  const Status& status() const { return status_; }

 private:
  Status status_;
};

// Throws zinf::Error if `status` is not ok. For the LibTorch surface only.
void throw_if_error(const Status& status);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<1>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::in_place_index<0>, std::move(status)) {  // NOLINT
    if (std::get<0>(v_).is_ok()) {
      v_.template emplace<0>(StatusCode::kInternal, "Result constructed from an ok Status");
    }
  }

  bool is_ok() const { return v_.index() == 1; }
  const Status& status() const& {
    static const Status kOkStatus;
    return is_ok() ? kOkStatus : std::get<0>(v_);
  }
  Status status() && { return is_ok() ? Status() : std::move(std::get<0>(v_)); }

  T& value() & { return std::get<1>(v_); }
  const T& value() const& { return std::get<1>(v_); }
  T&& value() && { return std::get<1>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace zinf

#define ZINF_CONCAT_INNER_(a, b) a##b
#define ZINF_CONCAT_(a, b) ZINF_CONCAT_INNER_(a, b)

// Returns the Status of `expr` from the enclosing function if it is not ok.
#define ZINF_RETURN_IF_ERROR(expr)                  \
  do {                                              \
    ::zinf::Status zinf_status_ = (expr);           \
    if (!zinf_status_.is_ok()) return zinf_status_; \
  } while (0)

// ZINF_ASSIGN_OR_RETURN(auto x, f()): declares x from a Result, or returns its Status.
#define ZINF_ASSIGN_OR_RETURN(lhs, expr) \
  ZINF_ASSIGN_OR_RETURN_IMPL_(ZINF_CONCAT_(zinf_result_, __LINE__), lhs, expr)
#define ZINF_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.is_ok()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()
