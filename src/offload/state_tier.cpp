#include "offload/state_tier.hpp"

#include <c10/util/Exception.h>

#include <algorithm>
#include <new>
#include <numeric>

namespace zinf::offload {

Status call_piece_fn(const PieceFn& fn, Piece& piece) noexcept {
  try {
    return fn(piece);
  } catch (const Error& e) {
    return e.status();
  } catch (const c10::Error& e) {
    return Status::internal(std::string("LibTorch: ") + e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    return Status::resource_exhausted("out of host memory during the optimizer's update");
  } catch (const std::exception& e) {
    return Status::internal(e.what());
  }
}

std::vector<std::uint64_t> TierShape::even_groups(std::uint64_t elements,
                                                  std::uint64_t group_size) {
  std::vector<std::uint64_t> groups;
  for (std::uint64_t begin = 0; begin < elements; begin += group_size)
    groups.push_back(std::min(group_size, elements - begin));
  return groups;
}

std::uint64_t TierShape::elements() const {
  return std::accumulate(groups.begin(), groups.end(), std::uint64_t{0});
}

std::vector<Piece> TierShape::pieces() const {
  std::vector<Piece> out;
  std::uint64_t begin = 0;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const std::uint64_t step = chunk == 0 ? groups[g] : chunk;
    for (std::uint64_t done = 0; done < groups[g]; done += step) {
      Piece p;
      p.index = out.size();
      p.group = g;
      p.begin = begin + done;
      p.count = std::min(step, groups[g] - done);
      p.ends_group = done + p.count == groups[g];
      out.push_back(p);
    }
    begin += groups[g];
  }
  return out;
}

}  // namespace zinf::offload
