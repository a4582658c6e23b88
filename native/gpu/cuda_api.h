#pragma once
// Our own minimal declarations of the CUDA driver API (64-bit Linux ABI of cuda.h, CUDA 12/13).
// We never include cuda.h: the addon must build and load on hosts with no toolkit and no driver,
// so libcuda.so.1 is opened with dlopen at run time (see CudaLib).
#include <cstddef>
#include <string>

namespace nccld {
namespace cu {

// CUresult is a C enum; every value fits in int, so it is passed and returned as a 32-bit int.
using Result = int;
constexpr Result kSuccess = 0;            // CUDA_SUCCESS
constexpr Result kErrorNotReady = 600;    // CUDA_ERROR_NOT_READY (cuEventQuery: still running)

using Device = int;                       // CUdevice (CUdevice_v1)
using DevicePtr = unsigned long long;     // CUdeviceptr (CUdeviceptr_v2)
struct CtxSt;
struct StreamSt;
struct EventSt;
using Context = CtxSt*;                   // CUcontext
using Stream = StreamSt*;                 // CUstream; also NCCL's cudaStream_t
using Event = EventSt*;                   // CUevent

constexpr std::size_t kIpcHandleSize = 64;                 // CU_IPC_HANDLE_SIZE
struct IpcMemHandle { char reserved[kIpcHandleSize]; };  // CUipcMemHandle (passed by value)
struct IpcEventHandle { char reserved[kIpcHandleSize]; }; // CUipcEventHandle (passed by value)
static_assert(sizeof(IpcMemHandle) == 64 && alignof(IpcMemHandle) == 1, "CUipcMemHandle ABI");

constexpr unsigned kIpcMemLazyEnablePeerAccess = 0x1;      // CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
constexpr unsigned kStreamNonBlocking = 0x1;               // CU_STREAM_NON_BLOCKING
constexpr unsigned kEventDisableTiming = 0x2;              // CU_EVENT_DISABLE_TIMING
constexpr unsigned kEventInterprocess = 0x4;               // CU_EVENT_INTERPROCESS
constexpr int kPointerAttributeDeviceOrdinal = 9;          // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL

// Entry points, resolved by their exported (versioned) symbol names, noted on the right.
struct Api {
  Result (*GetErrorName)(Result, const char**);                      // cuGetErrorName
  Result (*GetErrorString)(Result, const char**);                    // cuGetErrorString
  Result (*Init)(unsigned int);                                      // cuInit
  Result (*DriverGetVersion)(int*);                                  // cuDriverGetVersion
  Result (*DeviceGet)(Device*, int);                                 // cuDeviceGet
  Result (*DeviceGetCount)(int*);                                    // cuDeviceGetCount
  Result (*DeviceGetName)(char*, int, Device);                       // cuDeviceGetName
  Result (*DeviceGetPCIBusId)(char*, int, Device);                   // cuDeviceGetPCIBusId
  Result (*DeviceGetUuid)(unsigned char (*)[16], Device);            // cuDeviceGetUuid_v2 (CUuuid: 16 bytes)
  Result (*DeviceTotalMem)(std::size_t*, Device);                    // cuDeviceTotalMem_v2
  Result (*DevicePrimaryCtxRetain)(Context*, Device);                // cuDevicePrimaryCtxRetain
  Result (*DevicePrimaryCtxRelease)(Device);                         // cuDevicePrimaryCtxRelease_v2
  Result (*CtxSetCurrent)(Context);                                  // cuCtxSetCurrent
  Result (*CtxPushCurrent)(Context);                                 // cuCtxPushCurrent_v2
  Result (*CtxPopCurrent)(Context*);                                 // cuCtxPopCurrent_v2
  Result (*CtxSynchronize)();                                        // cuCtxSynchronize
  Result (*StreamCreate)(Stream*, unsigned int);                     // cuStreamCreate
  Result (*StreamDestroy)(Stream);                                   // cuStreamDestroy_v2
  Result (*EventCreate)(Event*, unsigned int);                       // cuEventCreate
  Result (*EventDestroy)(Event);                                     // cuEventDestroy_v2
  Result (*EventRecord)(Event, Stream);                              // cuEventRecord
  Result (*EventQuery)(Event);                                       // cuEventQuery
  Result (*MemAlloc)(DevicePtr*, std::size_t);                       // cuMemAlloc_v2
  Result (*MemFree)(DevicePtr);                                      // cuMemFree_v2
  Result (*MemcpyHtoD)(DevicePtr, const void*, std::size_t);         // cuMemcpyHtoD_v2
  Result (*MemcpyDtoH)(void*, DevicePtr, std::size_t);               // cuMemcpyDtoH_v2
  Result (*MemGetAddressRange)(DevicePtr*, std::size_t*, DevicePtr); // cuMemGetAddressRange_v2
  Result (*PointerGetAttribute)(void*, int, DevicePtr);              // cuPointerGetAttribute
  Result (*IpcGetMemHandle)(IpcMemHandle*, DevicePtr);               // cuIpcGetMemHandle
  Result (*IpcOpenMemHandle)(DevicePtr*, IpcMemHandle, unsigned int); // cuIpcOpenMemHandle_v2
  Result (*IpcCloseMemHandle)(DevicePtr);                            // cuIpcCloseMemHandle
  Result (*IpcGetEventHandle)(IpcEventHandle*, Event);               // cuIpcGetEventHandle
  Result (*IpcOpenEventHandle)(Event*, IpcEventHandle);              // cuIpcOpenEventHandle
  Result (*StreamWaitEvent)(Stream, Event, unsigned int);            // cuStreamWaitEvent
};

}  // namespace cu
}  // namespace nccld
