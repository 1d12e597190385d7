// swapbench's outputs: the terminal table, the --json object, the sweep CSV
// and the sweep plot (SVG, written directly: no plotting dependency).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "runner.hpp"

namespace zinf::swapbench {

void print_table(std::ostream& out, const std::vector<RunResult>& results);
std::string to_json(const std::vector<RunResult>& results, const std::vector<std::string>& paths);
std::string to_csv(const std::vector<RunResult>& results);
// GB/s against queue depth (log2 axis), one line per (op, backend, block size).
std::string to_svg(const std::vector<RunResult>& results, const std::string& title);

}  // namespace zinf::swapbench
