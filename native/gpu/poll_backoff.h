#pragma once
#include <algorithm>
#include <chrono>
#include <thread>

namespace nccld {

// How a thread waits for the GPU or NCCL: the first polls only yield, so short operations finish
// with microsecond latency; then it sleeps 10 µs, doubling up to 200 µs, so a long or stuck one
// costs little CPU (~5k cheap wake-ups/s at worst).
constexpr unsigned kYieldPolls = 64;
constexpr unsigned kMaxPollSleepUs = 200;

inline std::chrono::microseconds PollDelay(unsigned attempt) {
  if (attempt < kYieldPolls) return std::chrono::microseconds(0);
  unsigned shift = std::min(attempt - kYieldPolls, 5u);
  return std::chrono::microseconds(std::min(10u << shift, kMaxPollSleepUs));
}

inline void PollPause(unsigned attempt) {
  std::chrono::microseconds d = PollDelay(attempt);
  if (d.count() == 0) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(d);
  }
}

}  // namespace nccld
