// What `fn` writes to stderr (fd 2, where zinf's log goes), captured
// through a temporary file.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace zinf::test {

template <typename Fn>
std::string stderr_of(Fn&& fn) {
  std::fflush(stderr);
  const int saved = ::dup(STDERR_FILENO);
  char name[] = "/tmp/zinf-stderr-XXXXXX";
  const int fd = ::mkstemp(name);
  ::dup2(fd, STDERR_FILENO);
  fn();
  std::fflush(stderr);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ::close(fd);
  std::ifstream in(name);
  std::stringstream text;
  text << in.rdbuf();
  std::remove(name);
  return text.str();
}

}  // namespace zinf::test
