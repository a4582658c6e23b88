#include "dynamic_library.h"

#include <dlfcn.h>

#include <cstdlib>

namespace nccld {

void* OpenLibrary(const char* env_var, const char* default_name, std::string* path, std::string* why) {
  const char* p = std::getenv(env_var);
  if (p == nullptr || *p == '\0') p = default_name;
  *path = p;
  void* lib = dlopen(p, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = dlerror();
    *why = err ? err : p;
  }
  return lib;
}

void* ResolveSymbol(void* lib, const char* name, std::string* why) {
  dlerror();  // clear any stale error so the one we read is dlsym's
  void* sym = dlsym(lib, name);
  if (sym == nullptr) {
    const char* err = dlerror();
    *why = std::string("missing symbol ") + name + (err ? std::string(": ") + err : "");
  }
  return sym;
}

}  // namespace nccld
