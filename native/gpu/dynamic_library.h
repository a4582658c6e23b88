// dlopen/dlsym helpers shared by CudaLib and NcclLib.
#pragma once
#include <string>

namespace nccld {

// dlopens the library named by the environment variable `env_var` (when set and non-empty)
// or else `default_name`, RTLD_NOW | RTLD_LOCAL. Returns the handle, or nullptr with *why set
// to the dlerror text. *path receives the name actually tried (for messages).
void* OpenLibrary(const char* env_var, const char* default_name, std::string* path, std::string* why);

// dlsym as an untyped pointer; nullptr with *why = "missing symbol NAME: dlerror text".
void* ResolveSymbol(void* lib, const char* name, std::string* why);

// dlsym into a typed slot, so the API tables can be filled with one && chain.
template <typename Fn>
bool Resolve(void* lib, const char* name, Fn* slot, std::string* why) {
  void* sym = ResolveSymbol(lib, name, why);
  if (sym == nullptr) return false;
  *slot = reinterpret_cast<Fn>(sym);
  return true;
}

}  // namespace nccld
