// Error construction shared by the native modules. Every error we hand to JS carries a
// string `code`: an errno name ('ENOENT') for failed system calls, or NCCLD_ERR_* for our own.
#pragma once

#include <napi.h>

#include <string>

namespace nccld {

constexpr const char* kErrInvalidArg = "NCCLD_ERR_INVALID_ARG";
constexpr const char* kErrBufferClosed = "NCCLD_ERR_BUFFER_CLOSED";
constexpr const char* kErrBufferTooSmall = "NCCLD_ERR_BUFFER_TOO_SMALL";
constexpr const char* kErrBadAlignment = "NCCLD_ERR_BAD_ALIGNMENT";

// `what` names the failed call, e.g. shm_open("/x"); the message becomes
// `what: strerror(err)` and code the errno name. The error also gets `syscall` and `errno`.
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what, const char* syscall);

// An Error (or TypeError when `type_error`) with the given code. Not thrown yet.
Napi::Error CodedError(Napi::Env env, const char* code, const std::string& message, bool type_error = false);

// Shorthands for the `throw; return` pattern (C++ exceptions are disabled).
void ThrowErrno(Napi::Env env, int err, const std::string& what, const char* syscall);
void ThrowCoded(Napi::Env env, const char* code, const std::string& message, bool type_error = false);

// "name" -> "\"name\"" for messages; names are short, so no escaping beyond quotes.
std::string Quoted(const std::string& s);

}  // namespace nccld
