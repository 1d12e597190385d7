#include "options.hpp"

#include <sys/statvfs.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <map>

namespace zinf::swapbench {
namespace {

Status flag_error(std::string_view flag, const std::string& what) {
  return Status::invalid_argument(std::string(flag) + ": " + what);
}

Result<std::uint64_t> parse_count(std::string_view flag, std::string_view text) {
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v == 0) {
    return flag_error(flag, "expected a positive integer, got '" + std::string(text) + "'");
  }
  return v;
}

template <typename T, typename Parse>
Result<std::vector<T>> parse_list(std::string_view flag, std::string_view text, Parse&& parse) {
  std::vector<T> out;
  while (!text.empty()) {
    const auto comma = text.find(',');
    auto item = parse(text.substr(0, comma));
    if (!item.is_ok()) return flag_error(flag, item.status().message());
    out.push_back(static_cast<T>(*item));
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
  }
  if (out.empty()) return flag_error(flag, "expected a comma-separated list");
  return out;
}

Status check_block_size(std::string_view flag, std::uint64_t bs) {
  if (bs % 4096 != 0 || bs > (1ull << 30)) {
    return flag_error(flag,
                      "must be a multiple of 4096 up to 1G (O_DIRECT), got " + std::to_string(bs));
  }
  return Status::ok();
}

}  // namespace

Result<std::uint64_t> parse_size(std::string_view text) {
  if (text.empty()) return Status::invalid_argument("expected a size such as 4096, 128K, 1M or 2G");
  std::uint64_t multiplier = 1;
  switch (text.back()) {
    case 'K':
    case 'k':
      multiplier = 1ull << 10;
      break;
    case 'M':
    case 'm':
      multiplier = 1ull << 20;
      break;
    case 'G':
    case 'g':
      multiplier = 1ull << 30;
      break;
    case 'T':
    case 't':
      multiplier = 1ull << 40;
      break;
    default:
      break;
  }
  std::string_view digits = multiplier == 1 ? text : text.substr(0, text.size() - 1);
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || end != digits.data() + digits.size() || v == 0 ||
      v > UINT64_MAX / multiplier) {
    return Status::invalid_argument("expected a positive size such as 4096, 128K, 1M or 2G, got '" +
                                    std::string(text) + "'");
  }
  return v * multiplier;
}

namespace {

// The flags' texts, parsed into Options after CLI11 has split the command
// line, so that every value error names its flag in zinf's words.
struct Texts {
  std::vector<std::string> paths;
  std::string size, block_size, queue_depth, threads, loops, backend, op;
  std::string sweep_block_sizes, sweep_queue_depths;
};

void describe(CLI::App& app, Options& o, Texts& t) {
  app.description(
      "Measures NVMe throughput through zinf's own I/O stack (SwapStore, O_DIRECT).\n"
      "With no flags: a short run in a temporary directory under the current one.");
  app.add_option("--path", t.paths, "swap directory (repeat to stripe over several)")
      ->type_name("DIR");
  struct Valued {
    const char* flag;
    std::string* text;
    const char* type;
    const char* help;
  };
  const Valued valued[] = {
      {"--size", &t.size, "N", "bytes written and read per loop (K/M/G suffixes; default 256M)"},
      {"--block-size", &t.block_size, "N", "bytes per request and extent (default 1M)"},
      {"--queue-depth", &t.queue_depth, "N", "requests in flight per thread (default 32)"},
      {"--threads", &t.threads, "N", "I/O threads, aio.intra_op_parallelism (default 1)"},
      {"--backend", &t.backend, "B", "io_uring, libaio, psync or all (default: all available)"},
      {"--op", &t.op, "O",
       "read, write, both, mixed (reads and writes at once, half the data each) or copy (the "
       "same, the writes into another file on their own queue) (default both)"},
      {"--loops", &t.loops, "N", "repetitions (default 1)"},
      {"--sweep-block-sizes", &t.sweep_block_sizes, "L",
       "comma-separated sizes (default 128K,256K,1M,4M)"},
      {"--sweep-queue-depths", &t.sweep_queue_depths, "L",
       "comma-separated depths (default 1,4,8,16,32,64)"},
      {"--csv", &o.csv, "FILE", "sweep output (default swapbench-sweep.csv)"},
      {"--svg", &o.svg, "FILE", "sweep output (default swapbench-sweep.svg)"},
      {"--emit-config", &o.emit_config, "FILE", "with --tune: write that block as a config file"},
  };
  for (const Valued& v : valued) app.add_option(v.flag, *v.text, v.help)->type_name(v.type);
  struct Switch {
    const char* flag;
    bool* value;
    const char* help;
  };
  const Switch switches[] = {
      {"--checksum", &o.checksum, "CRC32C on every extent; verified reads leave the CPU caches"},
      {"--sqpoll", &o.sqpoll, "io_uring kernel submission polling (zinf.sqpoll)"},
      {"--verify", &o.verify, "check the data read back"},
      {"--json", &o.json, "one JSON object on stdout"},
      {"--sweep", &o.sweep, "block sizes x queue depths x backends; writes --csv and --svg"},
      {"--tune", &o.tune, "sweep, then print the best read/write and the DeepSpeed \"aio\" block"},
  };
  for (const Switch& w : switches) app.add_flag(w.flag, *w.value, w.help);
}

Status apply(const Texts& t, Options& o) {
  auto size_into = [](std::string_view flag, const std::string& text,
                      std::uint64_t& out) -> Status {
    if (text.empty()) return Status::ok();
    auto s = parse_size(text);
    if (!s.is_ok()) return flag_error(flag, s.status().message());
    out = *s;
    return Status::ok();
  };
  auto count_into = [](std::string_view flag, const std::string& text,
                       std::uint32_t& out) -> Status {
    if (text.empty()) return Status::ok();
    ZINF_ASSIGN_OR_RETURN(std::uint64_t n, parse_count(flag, text));
    if (n > 65536) return flag_error(flag, "at most 65536, got " + text);
    out = static_cast<std::uint32_t>(n);
    return Status::ok();
  };
  o.paths.assign(t.paths.begin(), t.paths.end());
  ZINF_RETURN_IF_ERROR(size_into("--size", t.size, o.size));
  ZINF_RETURN_IF_ERROR(size_into("--block-size", t.block_size, o.block_size));
  ZINF_RETURN_IF_ERROR(count_into("--queue-depth", t.queue_depth, o.queue_depth));
  ZINF_RETURN_IF_ERROR(count_into("--threads", t.threads, o.threads));
  ZINF_RETURN_IF_ERROR(count_into("--loops", t.loops, o.loops));
  if (!t.backend.empty() && t.backend != "all") {
    auto b = parse_io_backend(t.backend);
    if (!b.is_ok() || *b == IoBackend::kAuto) {
      return flag_error("--backend",
                        "expected io_uring, libaio, psync or all, got '" + t.backend + "'");
    }
    o.backends = {*b};
  }
  if (!t.op.empty()) {
    const std::map<std::string, std::vector<Op>> ops = {{"read", {Op::kRead}},
                                                        {"write", {Op::kWrite}},
                                                        {"both", {Op::kWrite, Op::kRead}},
                                                        {"mixed", {Op::kMixed}},
                                                        {"copy", {Op::kCopy}}};
    auto it = ops.find(t.op);
    if (it == ops.end())
      return flag_error("--op", "expected read, write, both, mixed or copy, got '" + t.op + "'");
    o.ops = it->second;
  }
  if (!t.sweep_block_sizes.empty()) {
    ZINF_ASSIGN_OR_RETURN(
        o.sweep_block_sizes,
        parse_list<std::uint64_t>("--sweep-block-sizes", t.sweep_block_sizes, parse_size));
  }
  if (!t.sweep_queue_depths.empty()) {
    ZINF_ASSIGN_OR_RETURN(o.sweep_queue_depths,
                          parse_list<std::uint32_t>(
                              "--sweep-queue-depths", t.sweep_queue_depths,
                              [](std::string_view v) { return parse_count("queue depth", v); }));
  }
  return Status::ok();
}

}  // namespace

Result<Options> parse_options(int argc, const char* const* argv) {
  Options o;
  Texts t;
  CLI::App app{"swapbench", "swapbench"};
  describe(app, o, t);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    o.help = true;
    return o;
  } catch (const CLI::ParseError& e) {
    return Status::invalid_argument(e.what());
  }
  ZINF_RETURN_IF_ERROR(apply(t, o));
  ZINF_RETURN_IF_ERROR(check_block_size("--block-size", o.block_size));
  for (std::uint64_t bs : o.sweep_block_sizes)
    ZINF_RETURN_IF_ERROR(check_block_size("--sweep-block-sizes", bs));
  if (o.size < o.block_size) {
    return flag_error("--size",
                      "must be at least the block size (" + std::to_string(o.block_size) + ")");
  }
  if (!o.emit_config.empty() && !o.tune) return flag_error("--emit-config", "needs --tune");
  if (o.json && (o.sweep || o.tune))
    return flag_error("--json", "cannot be combined with --sweep or --tune");
  if ((o.sweep || o.tune) && (o.ops.front() == Op::kMixed || o.ops.front() == Op::kCopy))
    return flag_error("--op", std::string(o.ops.front() == Op::kMixed ? "mixed" : "copy") +
                                  " is measured alone, not in a --sweep or --tune");
  if (o.ops.front() == Op::kCopy && o.queue_depth * o.threads < 2)
    return flag_error("--op", "copy needs a queue depth of 2 or more (half of it each way)");
  if (o.verify && o.ops.size() != 2)
    return flag_error("--verify", "needs --op both (it reads back what it wrote)");
  return o;
}

Status check_paths(const std::vector<std::filesystem::path>& paths, std::uint64_t bytes) {
  const std::uint64_t share = bytes / paths.size();
  for (const auto& p : paths) {
    std::error_code ec;
    if (!std::filesystem::is_directory(p, ec)) {
      return Status::invalid_argument("--path " + p.string() + ": not an existing directory");
    }
    if (::access(p.c_str(), W_OK | X_OK) != 0) {
      return Status::from_errno(errno, "--path " + p.string() + ": not writable");
    }
    struct statvfs fs {};
    if (::statvfs(p.c_str(), &fs) != 0) return Status::from_errno(errno, "--path " + p.string());
    const std::uint64_t free_bytes = static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize;
    // The store grows its file in 256 MiB steps and writes new versions before
    // freeing old ones: keep that much margin.
    const std::uint64_t need = share + (512ull << 20);
    if (free_bytes < need) {
      return Status(StatusCode::kNoSpace,
                    "--path " + p.string() + ": " + std::to_string(free_bytes >> 20) +
                        " MiB free, the run needs " + std::to_string(need >> 20) + " MiB");
    }
  }
  return Status::ok();
}

std::string usage() {
  Options o;
  Texts t;
  CLI::App app{"swapbench", "swapbench"};
  describe(app, o, t);
  return app.help();
}

}  // namespace zinf::swapbench
