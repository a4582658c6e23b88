#pragma once
#include <functional>

namespace nccld {

// Threads that poll CUDA or NCCL are stopped by an exit handler: process.exit() runs exit()
// without Node's environment cleanup, and a thread still calling into libcuda while libcuda's
// own exit handlers run could crash the exiting process. Register after cuInit and NCCL are
// loaded, so ours runs before theirs; forget before the owner goes away. Any thread.
void StopAtExit(const void* key, std::function<void()> stop);
void ForgetAtExit(const void* key);

}  // namespace nccld
