// zinf-report: train_gpt's --json as a picture (SVG or PNG, by gnuplot):
// the loss per step above, the wall time of each step stacked by stage
// below (compute, stall waiting for parameters, the optimizer step, the
// checkpoint), so where a step's time went reads at a glance.
#include <sys/wait.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "zinf/common/status.hpp"

namespace {

using json = nlohmann::json;

// The gnuplot terminal for the output's extension.
zinf::Result<std::string> terminal_for(const std::string& out) {
  auto ends_with = [&](const char* ext) {
    const std::string e(ext);
    return out.size() > e.size() && out.compare(out.size() - e.size(), e.size(), e) == 0;
  };
  if (ends_with(".svg")) return std::string("svg size 960,720 dynamic font 'sans,11'");
  if (ends_with(".png")) return std::string("png size 960,720");
  return zinf::Status::invalid_argument("--output " + out + ": expected a .svg or .png file");
}

// One row per step: step, loss, then the stage times stacked (each column
// the sum of those before it and its own: bars drawn tallest first stack).
zinf::Result<std::string> rows(const json& run, const std::string& path) {
  if (!run.contains("steps") || !run["steps"].is_array() || run["steps"].empty())
    return zinf::Status::invalid_argument(path + ": no steps[] (is it train_gpt's --json?)");
  std::ostringstream data;
  for (const json& s : run["steps"]) {
    auto number = [&](const char* key) { return s.contains(key) ? s[key].get<double>() : 0.0; };
    if (!s.contains("step") || !s.contains("loss") || !s.contains("wall_s"))
      return zinf::Status::invalid_argument(path + ": a step without step, loss or wall_s");
    const double stall = number("stall_s");
    const double compute = number("fwd_bwd_s") - stall;
    const double step = number("step_s");
    const double checkpoint = number("checkpoint_s");
    data << s["step"].get<std::uint64_t>() << ' ' << number("loss") << ' ' << compute << ' '
         << compute + stall << ' ' << compute + stall + step << ' '
         << compute + stall + step + checkpoint << '\n';
  }
  return data.str();
}

std::string script(const json& run, const std::string& data, const std::string& terminal,
                   const std::string& out) {
  std::ostringstream title;
  title << "train_gpt";
  if (run.contains("model_params")) {
    char params[32];
    std::snprintf(params, sizeof params, "%.1fM", run["model_params"].get<double>() / 1e6);
    title << ", " << params << " parameters";
  }
  if (run.contains("world_size")) title << ", " << run["world_size"].get<int>() << " rank(s)";
  if (run.contains("tokens_per_s"))
    title << ", " << static_cast<long>(run["tokens_per_s"].get<double>()) << " tokens/s";
  std::ostringstream s;
  s << "$run << EOD\n"
    << data << "EOD\n"
    << "set terminal " << terminal << "\n"
    << "set output '" << out << "'\n"
    << "set multiplot layout 2,1 title \"" << title.str() << "\" noenhanced\n"
    << "set grid\nset key outside right\nset xlabel 'step'\n"
    << "set xrange [" << run["steps"].front()["step"].get<double>() - 0.5 << ":"
    << run["steps"].back()["step"].get<double>() + 0.5 << "]\n"
    << "set ylabel 'loss'\n"
    << "plot $run using 1:2 with linespoints pointsize 0.5 title 'loss'\n"
    << "set ylabel 'seconds'\nset yrange [0:*]\nset style fill solid 0.8 noborder\n"
    << "set boxwidth 0.8 relative\n"
    << "plot $run using 1:6 with boxes title 'checkpoint', "
    << "'' using 1:5 with boxes title 'optimizer step', "
    << "'' using 1:4 with boxes title 'stall (parameters)', "
    << "'' using 1:3 with boxes title 'compute'\n"
    << "unset multiplot\n";
  return s.str();
}

zinf::Status report(const std::string& in, const std::string& out) {
  std::ifstream file(in);
  if (!file) return zinf::Status::not_found(in + ": cannot be read");
  json run;
  try {
    run = json::parse(file);
  } catch (const json::exception& e) {
    return zinf::Status::invalid_argument(in + ": not JSON (" + e.what() + ")");
  }
  ZINF_ASSIGN_OR_RETURN(std::string terminal, terminal_for(out));
  zinf::Result<std::string> data = zinf::Status::ok();
  try {
    data = rows(run, in);
  } catch (const json::exception& e) {
    return zinf::Status::invalid_argument(in + ": a step's value is not a number (" + e.what() +
                                          ")");
  }
  if (!data.is_ok()) return data.status();
  FILE* gnuplot = ::popen("gnuplot 2>&1", "w");
  if (gnuplot == nullptr) return zinf::Status::from_errno(errno, "cannot start gnuplot");
  const std::string text = script(run, *data, terminal, out);
  std::fwrite(text.data(), 1, text.size(), gnuplot);
  const int status = ::pclose(gnuplot);
  if (!WIFEXITED(status) || WEXITSTATUS(status) == 127)
    return zinf::Status::unavailable("zinf-report needs gnuplot (Debian: gnuplot-nox)");
  if (WEXITSTATUS(status) != 0)
    return zinf::Status::internal("gnuplot failed writing " + out + " (its message is above)");
  return zinf::Status::ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "zinf-report: train_gpt's --json as a picture: the loss per step, and each step's wall "
      "time stacked by stage (by gnuplot)"};
  std::string in, out;
  app.add_option("run", in, "train_gpt --json output")->required()->type_name("RUN.json");
  app.add_option("-o,--output", out, "the picture, .svg or .png (default: RUN.svg)")
      ->type_name("FILE");
  CLI11_PARSE(app, argc, argv);
  if (out.empty()) {
    const auto dot = in.rfind(".json");
    out = (dot != std::string::npos && dot + 5 == in.size() ? in.substr(0, dot) : in) + ".svg";
  }
  const zinf::Status s = report(in, out);
  if (!s.is_ok()) {
    std::fprintf(stderr, "zinf-report: %s\n", s.message().c_str());
    return 1;
  }
  std::printf("zinf-report: wrote %s\n", out.c_str());
  return 0;
}
