#include "exit_stop.h"

#include <cstdlib>
#include <map>
#include <mutex>

namespace nccld {

namespace {

// Leaked so they outlive static destruction.
std::mutex& RegistryMutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}
std::map<const void*, std::function<void()>>& Registry() {
  static auto* live = new std::map<const void*, std::function<void()>>();
  return *live;
}

void StopAllAtExit() {
  std::map<const void*, std::function<void()>> live;
  {
    std::lock_guard<std::mutex> lock(RegistryMutex());
    live.swap(Registry());
  }
  for (auto& entry : live) entry.second();
}

}  // namespace

void StopAtExit(const void* key, std::function<void()> stop) {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(StopAllAtExit); });
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Registry()[key] = std::move(stop);
}

void ForgetAtExit(const void* key) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Registry().erase(key);
}

}  // namespace nccld
