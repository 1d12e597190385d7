// zinf-launch: starts the ranks of a one-machine job (DeepSpeed's `deepspeed`
// launcher, torchrun --standalone).
//
//   zinf-launch -n N [--master-addr A] [--master-port P] program [args...]
//
// Each rank is `program args...` with RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (the port is a free one
// unless given). Every line a rank writes, to stdout or stderr, comes out
// prefixed with "[rank<R>]: ". When a rank fails (a non-zero exit or a
// signal) the others get SIGTERM, then SIGKILL after a grace period, and
// zinf-launch exits non-zero naming the rank and how it ended. SIGINT and
// SIGTERM to zinf-launch stop every rank the same way. A rank whose launcher
// dies gets SIGKILL (no orphans).
//
// The programs read that environment through zinf (a rendezvous over a
// c10d TCPStore), so they run unchanged under torchrun, or under mpirun
// (OMPI_COMM_WORLD_*, with MASTER_ADDR/MASTER_PORT exported).
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

volatile sig_atomic_t g_stop_signal = 0;
void on_signal(int sig) { g_stop_signal = sig; }

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

struct Rank {
  pid_t pid = -1;
  int out = -1;         // the read end of its stdout+stderr pipe
  std::string pending;  // a partial line
  bool exited = false;
  int status = 0;
};

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

void emit(int rank, const std::string& line) {
  std::string out = "[rank" + std::to_string(rank) + "]: " + line + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

// Reads what is there; whole lines go out prefixed. False at end of file.
bool drain(int index, Rank& r) {
  char buf[65536];
  const ssize_t n = read(r.out, buf, sizeof(buf));
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
  if (n <= 0) {
    if (!r.pending.empty()) emit(index, r.pending);
    r.pending.clear();
    close(r.out);
    r.out = -1;
    return false;
  }
  r.pending.append(buf, static_cast<std::size_t>(n));
  std::size_t start = 0;
  for (std::size_t nl; (nl = r.pending.find('\n', start)) != std::string::npos; start = nl + 1)
    emit(index, r.pending.substr(start, nl - start));
  r.pending.erase(0, start);
  return true;
}

pid_t spawn(int rank, int world, const std::string& addr, int port,
            const std::vector<std::string>& command, int& out) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  const pid_t launcher = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != launcher) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    setenv("RANK", std::to_string(rank).c_str(), 1);
    setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
    setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
    setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
    setenv("MASTER_ADDR", addr.c_str(), 1);
    setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    std::vector<char*> argv;
    for (const auto& a : command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    std::fprintf(stderr, "zinf-launch: cannot run %s: %s\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  out = fds[0];
  return pid;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zinf-launch: start N local ranks of a zinf program (like torchrun --standalone)"};
  int n = 1;
  std::string addr = "127.0.0.1";
  int port = 0;
  double grace_s = 5;
  std::vector<std::string> command;
  app.add_option("-n,--nproc", n, "ranks to start")->required()->check(CLI::Range(1, 1024));
  app.add_option("--master-addr", addr, "the rendezvous address (MASTER_ADDR)");
  app.add_option("--master-port", port, "the rendezvous port (MASTER_PORT; default: a free one)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--grace", grace_s, "seconds between SIGTERM and SIGKILL when stopping ranks")
      ->check(CLI::NonNegativeNumber);
  app.add_option("command", command, "the program and its arguments")->required();
  app.positionals_at_end();
  app.prefix_command();
  try {
    app.parse(argc, argv);
    for (const auto& extra : app.remaining()) command.push_back(extra);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (port == 0) port = free_port();
  if (port <= 0) {
    std::fprintf(stderr, "zinf-launch: no free port for the rendezvous: %s\n",
                 std::strerror(errno));
    return 1;
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<Rank> ranks(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) {
    ranks[r].pid = spawn(r, n, addr, port, command, ranks[r].out);
    if (ranks[r].pid < 0) {
      std::fprintf(stderr, "zinf-launch: cannot start rank %d: %s\n", r, std::strerror(errno));
      for (int k = 0; k < r; ++k) kill(ranks[k].pid, SIGKILL);
      return 1;
    }
  }

  int failed = -1;  // the first rank that failed
  bool stopping = false;
  auto stop_deadline = std::chrono::steady_clock::now();
  std::optional<std::chrono::steady_clock::time_point> exited_at;
  auto stop_all = [&](int sig) {
    for (Rank& r : ranks) {
      if (!r.exited) kill(r.pid, sig);
    }
  };
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<int> which;
    for (int r = 0; r < n; ++r) {
      if (ranks[r].out >= 0) {
        fds.push_back({ranks[r].out, POLLIN, 0});
        which.push_back(r);
      }
    }
    if (!fds.empty()) {
      if (poll(fds.data(), fds.size(), 100) > 0) {
        for (std::size_t i = 0; i < fds.size(); ++i) {
          if (fds[i].revents != 0) drain(which[i], ranks[which[i]]);
        }
      }
    } else {
      usleep(100 * 1000);
    }
    int status = 0;
    for (pid_t pid; (pid = waitpid(-1, &status, WNOHANG)) > 0;) {
      for (int r = 0; r < n; ++r) {
        if (ranks[r].pid != pid) continue;
        ranks[r].exited = true;
        ranks[r].status = status;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && failed < 0 && !stopping) {
          failed = r;
          std::fprintf(stderr, "zinf-launch: rank %d (pid %d) %s; stopping the other ranks\n", r,
                       pid, describe(status).c_str());
        }
      }
    }
    const bool all_exited =
        std::all_of(ranks.begin(), ranks.end(), [](const Rank& r) { return r.exited; });
    if (all_exited) {
      // What the ranks wrote last; a pipe a rank's own child keeps open is left after 1 s.
      if (!exited_at) exited_at = std::chrono::steady_clock::now();
      if (fds.empty() || std::chrono::steady_clock::now() - *exited_at > std::chrono::seconds(1))
        break;
      continue;
    }
    if (!stopping && (failed >= 0 || g_stop_signal != 0)) {
      if (g_stop_signal != 0) {
        std::fprintf(stderr, "zinf-launch: %s; stopping every rank\n", strsignal(g_stop_signal));
      }
      stopping = true;
      stop_all(SIGTERM);
      stop_deadline = std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(static_cast<long>(grace_s * 1000));
    } else if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
      stop_all(SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
  }
  if (g_stop_signal != 0) return 128 + g_stop_signal;
  if (failed >= 0) {
    std::fprintf(stderr, "zinf-launch: failed: rank %d %s\n", failed,
                 describe(ranks[failed].status).c_str());
    return 1;
  }
  return 0;
}
