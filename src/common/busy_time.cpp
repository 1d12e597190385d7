#include "zinf/common/busy_time.hpp"

#include <algorithm>
#include <utility>

namespace zinf {

std::vector<Interval> merged(std::vector<Interval> intervals) {
  std::sort(intervals.begin(), intervals.end(),
            [](const Interval& a, const Interval& b) { return a.begin < b.begin; });
  std::vector<Interval> out;
  for (const Interval& i : intervals) {
    if (i.end <= i.begin) continue;
    if (!out.empty() && i.begin <= out.back().end) {
      out.back().end = std::max(out.back().end, i.end);
      continue;
    }
    out.push_back(i);
  }
  return out;
}

double union_seconds(std::vector<Interval> intervals) {
  double total = 0;
  for (const Interval& i : merged(std::move(intervals))) total += i.seconds();
  return total;
}

std::vector<Interval> subtract(const std::vector<Interval>& periods,
                               const std::vector<Interval>& holes) {
  const std::vector<Interval> gaps = merged(holes);
  std::vector<Interval> out;
  for (Interval p : merged(periods)) {
    for (const Interval& h : gaps) {
      if (h.end <= p.begin || h.begin >= p.end) continue;
      if (h.begin > p.begin) out.push_back({p.begin, h.begin});
      p.begin = std::max(p.begin, h.end);
      if (p.begin >= p.end) break;
    }
    if (p.begin < p.end) out.push_back(p);
  }
  return out;
}

std::vector<Interval> clip(const std::vector<Interval>& intervals, SteadyClock::time_point from,
                           SteadyClock::time_point to) {
  std::vector<Interval> out;
  for (const Interval& i : intervals) {
    const Interval c{std::max(i.begin, from), std::min(i.end, to)};
    if (c.begin < c.end) out.push_back(c);
  }
  return out;
}

void BusyLog::begin() {
  std::lock_guard lock(mutex_);
  if (open_++ == 0) open_since_ = SteadyClock::now();
}

void BusyLog::end() {
  std::lock_guard lock(mutex_);
  if (open_ == 0) return;
  if (--open_ == 0) done_.push_back({open_since_, SteadyClock::now()});
}

void BusyLog::add(Interval interval) {
  std::lock_guard lock(mutex_);
  done_.push_back(interval);
}

std::vector<Interval> BusyLog::take() {
  std::lock_guard lock(mutex_);
  std::vector<Interval> out = std::move(done_);
  done_.clear();
  if (open_ > 0) {
    const auto now = SteadyClock::now();
    out.push_back({open_since_, now});
    open_since_ = now;
  }
  return out;
}

void SpanLog::add(Span span) {
  std::lock_guard lock(mutex_);
  spans_.push_back(std::move(span));
}

std::vector<Span> SpanLog::take() {
  std::lock_guard lock(mutex_);
  return std::exchange(spans_, {});
}

}  // namespace zinf
