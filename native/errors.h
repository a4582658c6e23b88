// Error construction shared by the native modules. Every error we hand to JS carries a
// string `code`: an errno name ('ENOENT') for failed system calls, or NCCLD_ERR_* for our own.
#pragma once

#include <napi.h>

#include <string>

// kErrInvalidArg, kErrBufferClosed...: generated at build time from shared/errors.ts.
#include "error_codes.h"

namespace nccld {

// The errno name of `err` ('ECONNRESET'), as Node reports it in `code`; "EUNKNOWN" if unknown.
const char* ErrnoName(int err);

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
