#include "scratch.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

namespace vsad {
namespace {

struct Block {
  void* data;
  size_t capacity;
};

std::mutex& pool_mutex() {
  static std::mutex m;
  return m;
}
std::vector<Block>& pool() {
  static std::vector<Block> p;
  return p;
}
constexpr size_t kAlign = 64;
constexpr size_t kMaxPooled = 4;

}  // namespace

ScratchBlock::ScratchBlock(size_t bytes) {
  if (bytes == 0) return;
  {
    std::lock_guard<std::mutex> lock(pool_mutex());
    auto& p = pool();
    // Best fit among pooled blocks that are large enough.
    int best = -1;
    for (size_t i = 0; i < p.size(); ++i)
      if (p[i].capacity >= bytes && (best < 0 || p[i].capacity < p[best].capacity)) best = int(i);
    if (best >= 0) {
      data_ = p[best].data;
      capacity_ = p[best].capacity;
      p.erase(p.begin() + best);
      return;
    }
  }
  size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  data_ = std::aligned_alloc(kAlign, rounded);
  if (!data_) throw std::bad_alloc();
  capacity_ = rounded;
}

ScratchBlock::~ScratchBlock() {
  if (!data_) return;
  std::lock_guard<std::mutex> lock(pool_mutex());
  auto& p = pool();
  p.push_back({data_, capacity_});
  if (p.size() > kMaxPooled) {
    // Evict the smallest block: large ones are the expensive ones to map again.
    size_t smallest = 0;
    for (size_t i = 1; i < p.size(); ++i)
      if (p[i].capacity < p[smallest].capacity) smallest = i;
    std::free(p[smallest].data);
    p.erase(p.begin() + smallest);
  }
}

void release_scratch() {
  std::lock_guard<std::mutex> lock(pool_mutex());
  for (auto& b : pool()) std::free(b.data);
  pool().clear();
}

}  // namespace vsad
