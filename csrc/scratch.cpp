#include "scratch.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
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
std::atomic<size_t> g_limit{0};
std::atomic<size_t> g_peak{0};

size_t pooled_bytes_locked() {
  size_t total = 0;
  for (const auto& b : pool()) total += b.capacity;
  return total;
}

// Records the request and applies the testing limit; false if the request must fail.
bool admit(size_t bytes) {
  size_t peak = g_peak.load(std::memory_order_relaxed);
  while (bytes > peak && !g_peak.compare_exchange_weak(peak, bytes)) {
  }
  const size_t limit = g_limit.load(std::memory_order_relaxed);
  return limit == 0 || bytes <= limit;
}

void* aligned(size_t bytes) {
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  if (rounded < bytes) return nullptr;  // overflow
  return std::aligned_alloc(kAlign, rounded);
}

}  // namespace

ScratchAllocError::ScratchAllocError(const char* what, size_t bytes) {
  message_ = std::string(what) + ": could not allocate " + std::to_string(bytes) +
             " bytes of scratch memory";
  const size_t limit = g_limit.load(std::memory_order_relaxed);
  if (limit != 0 && bytes > limit)
    message_ += " (over the scratch limit of " + std::to_string(limit) + " bytes)";
}

const char* ScratchAllocError::what() const noexcept { return message_.c_str(); }

void throw_scratch_failure(const char* what, size_t bytes) { throw ScratchAllocError(what, bytes); }

void* scratch_alloc(size_t bytes) {
  if (!admit(bytes)) return nullptr;
  return aligned(bytes > 0 ? bytes : 1);
}

void scratch_free(void* p) { std::free(p); }

ScratchBlock::ScratchBlock(size_t bytes, const char* what) {
  if (bytes == 0) return;
  if (!admit(bytes)) throw ScratchAllocError(what, bytes);
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
  data_ = aligned(bytes);
  if (!data_) throw ScratchAllocError(what, bytes);
  capacity_ = (bytes + kAlign - 1) / kAlign * kAlign;
}

ScratchBlock::~ScratchBlock() {
  if (!data_) return;
  if (capacity_ > kMaxPooledBytes) {  // too big to keep: give it back now
    std::free(data_);
    return;
  }
  std::lock_guard<std::mutex> lock(pool_mutex());
  auto& p = pool();
  p.push_back({data_, capacity_});
  // Evict the smallest blocks first: large ones are the expensive ones to map again.
  while (p.size() > kMaxPooled || pooled_bytes_locked() > kMaxPooledBytes) {
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

size_t pooled_scratch_bytes() {
  std::lock_guard<std::mutex> lock(pool_mutex());
  return pooled_bytes_locked();
}

size_t scratch_peak_request() { return g_peak.load(); }
void reset_scratch_peak() { g_peak.store(0); }

void set_scratch_limit(size_t bytes) { g_limit.store(bytes); }
size_t scratch_limit() { return g_limit.load(); }

}  // namespace vsad
