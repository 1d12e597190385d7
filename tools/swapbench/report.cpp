#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "storage_json.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::swapbench {
namespace {

std::string human_size(std::uint64_t b) {
  if (b % (1ull << 30) == 0) return std::to_string(b >> 30) + "G";
  if (b % (1ull << 20) == 0) return std::to_string(b >> 20) + "M";
  if (b % (1ull << 10) == 0) return std::to_string(b >> 10) + "K";
  return std::to_string(b);
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

// The title holds a user's path: escape what XML reserves.
std::string xml_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

void print_table(std::ostream& out, const std::vector<RunResult>& results) {
  char line[256];
  std::snprintf(line, sizeof(line), "%-6s %-9s %6s %5s %4s %9s %10s %10s %10s %9s %5s\n", "op",
                "backend", "block", "qd", "thr", "GB/s", "IOPS", "p50 us", "p99 us", "CPU s/GB",
                "crc");
  out << line;
  for (const RunResult& r : results) {
    std::snprintf(line, sizeof(line),
                  "%-6s %-9s %6s %5u %4u %9.3f %10.0f %10.1f %10.1f %9.3f %5s\n",
                  std::string(to_string(r.op)).c_str(), r.backend.c_str(),
                  human_size(r.block_size).c_str(), r.queue_depth, r.threads, r.gbps, r.iops,
                  r.p50_us, r.p99_us, r.cpu_s_per_gb, r.checksum ? "on" : "off");
    out << line;
  }
}

std::string to_json(const std::vector<RunResult>& results, const std::vector<std::string>& paths) {
  nlohmann::json rows = nlohmann::json::array();
  for (const RunResult& r : results) {
    rows.push_back({{"op", to_string(r.op)},
                    {"backend", r.backend},
                    {"block_size", r.block_size},
                    {"queue_depth", r.queue_depth},
                    {"threads", r.threads},
                    {"bytes", r.bytes},
                    {"seconds", r.seconds},
                    {"gbps", r.gbps},
                    {"iops", r.iops},
                    {"p50_us", r.p50_us},
                    {"p99_us", r.p99_us},
                    {"cpu_s_per_gb", r.cpu_s_per_gb},
                    {"checksum", r.checksum},
                    {"sqpoll", r.sqpoll}});
  }
  // What each path is stored on, so that a figure says what it measured.
  nlohmann::json storage = nlohmann::json::array();
  for (const auto& p : paths) {
    const swap::StorageInfo s = swap::describe_storage(p);
    storage.push_back(tools::storage_json(p, s));
  }
  return nlohmann::json{{"tool", "swapbench"},
                        {"version", "0.1.0"},
                        {"paths", paths},
                        {"storage", storage},
                        {"results", rows}}
      .dump(2);
}

std::string to_csv(const std::vector<RunResult>& results) {
  std::ostringstream out;
  out << "op,backend,block_size,queue_depth,threads,bytes,seconds,gbps,iops,p50_us,p99_us,cpu_s_"
         "per_gb,checksum,sqpoll\n";
  for (const RunResult& r : results) {
    out << to_string(r.op) << ',' << r.backend << ',' << r.block_size << ',' << r.queue_depth << ','
        << r.threads << ',' << r.bytes << ',' << fixed(r.seconds, 6) << ',' << fixed(r.gbps, 4)
        << ',' << fixed(r.iops, 1) << ',' << fixed(r.p50_us, 1) << ',' << fixed(r.p99_us, 1) << ','
        << fixed(r.cpu_s_per_gb, 4) << ',' << (r.checksum ? 1 : 0) << ',' << (r.sqpoll ? 1 : 0)
        << '\n';
  }
  return out.str();
}

std::string to_svg(const std::vector<RunResult>& results, const std::string& title) {
  constexpr double kW = 900, kH = 540, kLeft = 70, kRight = 260, kTop = 50, kBottom = 60;
  const double plot_w = kW - kLeft - kRight, plot_h = kH - kTop - kBottom;
  std::map<std::string, std::vector<std::pair<double, double>>> series;  // name -> (log2 qd, GB/s)
  double max_gbps = 0.1, min_x = 1e9, max_x = -1e9;
  for (const RunResult& r : results) {
    const std::string name =
        std::string(to_string(r.op)) + " " + r.backend + " " + human_size(r.block_size);
    const double x = std::log2(static_cast<double>(r.queue_depth));
    series[name].emplace_back(x, r.gbps);
    max_gbps = std::max(max_gbps, r.gbps);
    min_x = std::min(min_x, x);
    max_x = std::max(max_x, x);
  }
  if (max_x <= min_x) max_x = min_x + 1;
  // A round top for the y axis: 1, 2 or 5 times a power of ten.
  const double magnitude = std::pow(10.0, std::floor(std::log10(max_gbps)));
  double top = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * magnitude >= max_gbps) {
      top = m * magnitude;
      break;
    }
  }
  auto px = [&](double x) { return kLeft + (x - min_x) / (max_x - min_x) * plot_w; };
  auto py = [&](double y) { return kTop + plot_h - y / top * plot_h; };
  static const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kW << "\" height=\"" << kH
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << kW / 2 - kRight / 2 << "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">"
    << xml_escape(title) << "</text>\n";
  for (int i = 0; i <= 5; ++i) {
    const double y = top * i / 5;
    s << "<line x1=\"" << kLeft << "\" x2=\"" << kLeft + plot_w << "\" y1=\"" << py(y) << "\" y2=\""
      << py(y) << "\" stroke=\"#ddd\"/>\n<text x=\"" << kLeft - 8 << "\" y=\"" << py(y) + 4
      << "\" text-anchor=\"end\">" << fixed(y, top < 1 ? 2 : 1) << "</text>\n";
  }
  for (double x = std::ceil(min_x); x <= max_x; x += 1) {
    s << "<line x1=\"" << px(x) << "\" x2=\"" << px(x) << "\" y1=\"" << kTop + plot_h << "\" y2=\""
      << kTop + plot_h + 5 << "\" stroke=\"black\"/>\n<text x=\"" << px(x) << "\" y=\""
      << kTop + plot_h + 20 << "\" text-anchor=\"middle\">"
      << static_cast<long>(std::lround(std::exp2(x))) << "</text>\n";
  }
  s << "<line x1=\"" << kLeft << "\" x2=\"" << kLeft << "\" y1=\"" << kTop << "\" y2=\""
    << kTop + plot_h << "\" stroke=\"black\"/>\n<line x1=\"" << kLeft << "\" x2=\""
    << kLeft + plot_w << "\" y1=\"" << kTop + plot_h << "\" y2=\"" << kTop + plot_h
    << "\" stroke=\"black\"/>\n<text x=\"" << kLeft + plot_w / 2 << "\" y=\"" << kH - 15
    << "\" text-anchor=\"middle\">queue depth</text>\n<text x=\"18\" y=\"" << kTop + plot_h / 2
    << "\" text-anchor=\"middle\" transform=\"rotate(-90 18 " << kTop + plot_h / 2
    << ")\">GB/s</text>\n";
  int i = 0;
  for (auto& [name, points] : series) {
    std::sort(points.begin(), points.end());
    const char* color = kColors[i % 10];
    const bool dashed = name.rfind("read", 0) == 0;
    s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\""
      << (dashed ? " stroke-dasharray=\"6 3\"" : "") << " points=\"";
    for (auto [x, y] : points) s << px(x) << ',' << py(y) << ' ';
    s << "\"/>\n";
    for (auto [x, y] : points)
      s << "<circle cx=\"" << px(x) << "\" cy=\"" << py(y) << "\" r=\"3\" fill=\"" << color
        << "\"/>\n";
    const double ly = kTop + 10 + 18 * i;
    s << "<line x1=\"" << kW - kRight + 20 << "\" x2=\"" << kW - kRight + 45 << "\" y1=\"" << ly
      << "\" y2=\"" << ly << "\" stroke=\"" << color << "\" stroke-width=\"2\""
      << (dashed ? " stroke-dasharray=\"6 3\"" : "") << "/>\n<text x=\"" << kW - kRight + 52
      << "\" y=\"" << ly + 4 << "\">" << name << "</text>\n";
    ++i;
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace zinf::swapbench
