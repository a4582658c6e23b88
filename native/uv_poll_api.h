// The few libuv calls UnixConnection needs, declared by hand: cmake-js builds against
// node-api-headers, which carry no uv.h. Node exports libuv's symbols, and libuv keeps its
// ABI stable across 1.x; nothing here depends on a struct layout: handles are opaque, sized
// by uv_handle_size(), their user data reached through uv_handle_{get,set}_data (libuv 1.19).
#pragma once

#include <cstddef>

struct uv_loop_s;  // as node_api.h declares it
typedef struct uv_loop_s uv_loop_t;
typedef struct uv_handle_s uv_handle_t;
typedef struct uv_poll_s uv_poll_t;

extern "C" {
typedef void (*uv_poll_cb)(uv_poll_t* handle, int status, int events);
typedef void (*uv_close_cb)(uv_handle_t* handle);

// `type` is a uv_handle_type; an enum travels as an int in the C ABI.
size_t uv_handle_size(int type);
void* uv_handle_get_data(const uv_handle_t* handle);
void uv_handle_set_data(uv_handle_t* handle, void* data);
void uv_close(uv_handle_t* handle, uv_close_cb close_cb);
int uv_is_closing(const uv_handle_t* handle);
int uv_poll_init(uv_loop_t* loop, uv_poll_t* handle, int fd);
int uv_poll_start(uv_poll_t* handle, int events, uv_poll_cb cb);
int uv_poll_stop(uv_poll_t* handle);
}

namespace nccld {
namespace uv {

// Values from uv.h (uv_handle_type, enum uv_poll_event): fixed by libuv's ABI.
constexpr int kPollHandle = 8;  // UV_POLL
constexpr int kReadable = 1;    // UV_READABLE
constexpr int kWritable = 2;    // UV_WRITABLE
constexpr int kDisconnect = 4;  // UV_DISCONNECT

inline uv_handle_t* AsHandle(uv_poll_t* poll) { return reinterpret_cast<uv_handle_t*>(poll); }

}  // namespace uv
}  // namespace nccld
