// Runs a command line through the shell, for tests of the tools and of
// multi-process jobs.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace zinf::test {

struct Job {
  int status = -1;     // the exit status; 128 + the signal that ended it
  std::string output;  // everything it printed, stdout and stderr
};

inline Job run_shell(const std::string& command) {
  Job job;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return job;
  char buf[4096];
  for (std::size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) job.output.append(buf, n);
  const int w = pclose(p);
  job.status = WIFEXITED(w) ? WEXITSTATUS(w) : 128 + WTERMSIG(w);
  return job;
}

}  // namespace zinf::test
