#include "options.hpp"

#include <sys/statvfs.h>
#include <unistd.h>

#include <charconv>
#include <functional>
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

Result<Options> parse_options(int argc, const char* const* argv) {
  Options o;
  using Handler = std::function<Status(std::string_view)>;
  auto size_into = [](std::string_view flag, std::uint64_t& out) {
    return [flag, &out](std::string_view v) -> Status {
      auto s = parse_size(v);
      if (!s.is_ok()) return flag_error(flag, s.status().message());
      out = *s;
      return Status::ok();
    };
  };
  auto count_into = [](std::string_view flag, std::uint32_t& out) {
    return [flag, &out](std::string_view v) -> Status {
      ZINF_ASSIGN_OR_RETURN(std::uint64_t n, parse_count(flag, v));
      if (n > 65536) return flag_error(flag, "at most 65536, got " + std::string(v));
      out = static_cast<std::uint32_t>(n);
      return Status::ok();
    };
  };
  const std::map<std::string_view, Handler> with_value = {
      {"--path",
       [&](std::string_view v) {
         o.paths.emplace_back(v);
         return Status::ok();
       }},
      {"--size", size_into("--size", o.size)},
      {"--block-size", size_into("--block-size", o.block_size)},
      {"--queue-depth", count_into("--queue-depth", o.queue_depth)},
      {"--threads", count_into("--threads", o.threads)},
      {"--loops", count_into("--loops", o.loops)},
      {"--backend",
       [&](std::string_view v) -> Status {
         if (v == "all") return Status::ok();
         auto b = parse_io_backend(v);
         if (!b.is_ok() || *b == IoBackend::kAuto) {
           return flag_error("--backend", "expected io_uring, libaio, psync or all, got '" +
                                              std::string(v) + "'");
         }
         o.backends = {*b};
         return Status::ok();
       }},
      {"--op",
       [&](std::string_view v) -> Status {
         if (v == "read") {
           o.ops = {Op::kRead};
         } else if (v == "write") {
           o.ops = {Op::kWrite};
         } else if (v == "both") {
           o.ops = {Op::kWrite, Op::kRead};
         } else if (v == "mixed") {
           o.ops = {Op::kMixed};
         } else {
           return flag_error("--op",
                             "expected read, write, both or mixed, got '" + std::string(v) + "'");
         }
         return Status::ok();
       }},
      {"--emit-config",
       [&](std::string_view v) {
         o.emit_config = v;
         return Status::ok();
       }},
      {"--csv",
       [&](std::string_view v) {
         o.csv = v;
         return Status::ok();
       }},
      {"--svg",
       [&](std::string_view v) {
         o.svg = v;
         return Status::ok();
       }},
      {"--sweep-block-sizes",
       [&](std::string_view v) -> Status {
         ZINF_ASSIGN_OR_RETURN(o.sweep_block_sizes,
                               parse_list<std::uint64_t>("--sweep-block-sizes", v, parse_size));
         return Status::ok();
       }},
      {"--sweep-queue-depths",
       [&](std::string_view v) -> Status {
         ZINF_ASSIGN_OR_RETURN(
             o.sweep_queue_depths,
             parse_list<std::uint32_t>("--sweep-queue-depths", v, [](std::string_view s) {
               return parse_count("queue depth", s);
             }));
         return Status::ok();
       }},
  };
  const std::map<std::string_view, bool*> switches = {
      {"--checksum", &o.checksum}, {"--verify", &o.verify}, {"--json", &o.json},
      {"--sweep", &o.sweep},       {"--tune", &o.tune},     {"--help", &o.help},
      {"--sqpoll", &o.sqpoll},
  };
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    bool has_value = false;
    if (const auto eq = arg.find('='); eq != std::string_view::npos && arg.starts_with("--")) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    if (auto s = switches.find(arg); s != switches.end()) {
      if (has_value) return flag_error(arg, "takes no value");
      *s->second = true;
      continue;
    }
    auto h = with_value.find(arg);
    if (h == with_value.end())
      return Status::invalid_argument("unknown flag '" + std::string(arg) + "'");
    if (!has_value) {
      if (i + 1 >= argc) return flag_error(arg, "needs a value");
      value = argv[++i];
    }
    ZINF_RETURN_IF_ERROR(h->second(value));
  }
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
  if ((o.sweep || o.tune) && o.ops.front() == Op::kMixed)
    return flag_error("--op", "mixed is measured alone, not in a --sweep or --tune");
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
  return R"(usage: swapbench [flags]
Measures NVMe throughput through zinf's own I/O stack (SwapStore, O_DIRECT).
With no flags: a short run in a temporary directory under the current one.

  --path DIR            swap directory (repeat to stripe over several)
  --size N              bytes written and read per loop (K/M/G suffixes; default 256M)
  --block-size N        bytes per request and extent (default 1M)
  --queue-depth N       requests in flight per thread (default 32)
  --threads N           I/O threads, aio.intra_op_parallelism (default 1)
  --backend B           io_uring, libaio, psync or all (default: all available)
  --op O                read, write, both, or mixed: reads and writes at once,
                        half the data each (default both)
  --loops N             repetitions (default 1)
  --checksum            CRC32C on every extent; verified reads leave the CPU caches
  --sqpoll              io_uring kernel submission polling (zinf.sqpoll)
  --verify              check the data read back
  --json                one JSON object on stdout
  --sweep               block sizes x queue depths x backends; writes --csv and --svg
  --sweep-block-sizes L comma-separated sizes (default 128K,256K,1M,4M)
  --sweep-queue-depths L comma-separated depths (default 1,4,8,16,32,64)
  --csv FILE, --svg FILE  sweep outputs (default swapbench-sweep.csv/.svg)
  --tune                sweep, then print the best read/write and the DeepSpeed "aio" block
  --emit-config FILE    with --tune: write that block as a config file
)";
}

}  // namespace zinf::swapbench
