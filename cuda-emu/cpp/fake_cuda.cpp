// A CUDA driver library (`libcuda.so`) that runs the trainer's kernels on the CPU emulator
// (cuda_emu.h), so that the CUDA backend's own Rust code (cudarc, allocation, copies, launches
// and their arguments, the order of a whole training step) runs, unchanged, where no GPU is.
//
// The crate (src/lib.rs) builds it with the host's C++ compiler and loads it before cudarc looks
// for the driver: cudarc opens `libcuda.so` by name, and the dynamic loader hands back an already
// loaded library whose SONAME is that name. Only what cudarc and the backend call is here; a call
// to anything else fails in cudarc as a missing symbol, naming it.
//
// "Device" memory is host memory: a device pointer is the address of a host allocation, so a
// kernel's pointer arguments are used as they are. Work runs when it is issued (every stream is
// synchronous); launches take one lock, since the emulator runs one block at a time on the
// calling thread. Modules are the PTX images NVRTC compiled: a function is found when the image
// declares it as an `.entry` and this library has the kernel (every entry of every source,
// compiled in by the generated `fake_kernels.inc`).
//
// Memory the device hands out uninitialized (`cuMemAllocAsync`) is filled with 0xff bytes, which
// are NaN as f32 or bf16, so a kernel or product that reads a value nothing wrote shows it. A
// pointer a call is given must lie inside a live allocation, else the call fails and names it.
// Built with AddressSanitizer (the trainer's tests run whole steps so), a kernel's read or write
// past a device allocation is reported with its source line, as compute-sanitizer's memcheck
// reports it on a GPU.
#include "cuda_emu.h"
#include "fake_kernels.inc"

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

// The driver API's types, as cudarc declares them.
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUevent;
typedef void* CUmemoryPool;

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

namespace fake {

// Every live allocation: start address -> bytes. Copies and frees are checked against it.
struct Memory {
    std::mutex lock;
    std::map<uintptr_t, size_t> live;
    size_t used = 0, high = 0;
};

Memory& memory() {
    static Memory m;
    return m;
}

// The launch lock: the emulator's state (the current block, its shared memory) is global.
std::mutex& launch_lock() {
    static std::mutex m;
    return m;
}

void complain(const char* call, const std::string& what) {
    fprintf(stderr, "fake libcuda: %s: %s\n", call, what.c_str());
}

// Whether [p, p + bytes) lies inside one live allocation.
bool inside(uintptr_t p, size_t bytes) {
    Memory& m = memory();
    std::lock_guard<std::mutex> g(m.lock);
    auto it = m.live.upper_bound(p);
    if (it == m.live.begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second;
}

CUresult check(const char* call, uintptr_t p, size_t bytes) {
    if (bytes == 0 || inside(p, bytes)) return CUDA_SUCCESS;
    char line[160];
    snprintf(line, sizeof line, "%zu bytes at %#lx are not inside one device allocation", bytes,
             (unsigned long)p);
    complain(call, line);
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult allocate(CUdeviceptr* out, size_t bytes, bool poison) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    // 256-byte alignment, as cudaMalloc's, and exactly `bytes`: under AddressSanitizer an
    // access past the end is reported even where a GPU's rounding would hide it.
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes) != 0 || !p) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(p, poison ? 0xff : 0, bytes);
    Memory& m = memory();
    std::lock_guard<std::mutex> g(m.lock);
    m.live[(uintptr_t)p] = bytes;
    m.used += bytes;
    m.high = std::max(m.high, m.used);
    *out = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr ptr) {
    Memory& m = memory();
    std::lock_guard<std::mutex> g(m.lock);
    auto it = m.live.find((uintptr_t)ptr);
    if (it == m.live.end()) {
        complain("cuMemFree", "not the start of a live allocation");
        return CUDA_ERROR_INVALID_VALUE;
    }
    m.used -= it->second;
    m.live.erase(it);
    free((void*)(uintptr_t)ptr);
    return CUDA_SUCCESS;
}

// Kernel arguments arrive as the driver receives them: one pointer per parameter, to a value of
// the parameter's type. They are copied out first (cudarc's argument storage is the caller's).
template <class T>
T argument(void* p) {
    typename std::remove_cv<T>::type v;
    memcpy((void*)&v, p, sizeof(T));
    return v;
}

template <class... A, size_t... I>
void run(void (*kernel)(A...), dim3 grid, dim3 threads, size_t shared, void** args,
         std::index_sequence<I...>) {
    std::tuple<typename std::remove_cv<A>::type...> values{argument<A>(args[I])...};
    emu::launch(grid, threads, shared, [&] { std::apply(kernel, values); });
}

// A kernel of this library: its name, and how to launch it with the driver's argument array.
struct Kernel {
    const char* name;
    void (*launch)(dim3, dim3, size_t, void**);
};

template <class... A>
void launch_with(void (*kernel)(A...), dim3 g, dim3 t, size_t s, void** a) {
    run(kernel, g, t, s, a, std::index_sequence_for<A...>{});
}

#define FAKE_ENTRY(NAME) \
    Kernel{#NAME, [](dim3 g, dim3 t, size_t s, void** a) { launch_with(&NAME, g, t, s, a); }},

const Kernel KERNELS[] = {REDPACK_FAKE_ENTRIES(FAKE_ENTRY)};

const Kernel* find_kernel(const char* name) {
    for (const Kernel& k : KERNELS)
        if (strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

struct Module {
    std::string image;
};

struct Function {
    const Kernel* kernel;
    int max_dynamic_shared = 48 * 1024;
};

struct Event {
    std::chrono::steady_clock::time_point at;
    bool recorded = false;
};

int context_token, pool_token;

}  // namespace fake

using namespace fake;

extern "C" {

// For fake_cublas.cpp: whether [p, p + bytes) lies inside one live allocation.
int redpack_fake_inside(uintptr_t p, size_t bytes) {
    return bytes == 0 || inside(p, bytes);
}

CUresult cuInit(unsigned) {
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* version) {
    *version = 13000;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char** text) {
    static const char* const names[] = {"fake libcuda: invalid value", "fake libcuda: error"};
    *text = error == CUDA_ERROR_INVALID_VALUE ? names[0] : names[1];
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char** text) {
    return cuGetErrorString(error, text);
}

CUresult cuDeviceGetCount(int* count) {
    *count = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_VALUE;
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "CPU emulation of CUDA (redpack fake libcuda)");
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = (size_t)16 << 30;
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    *total = (size_t)16 << 30;
    *free_bytes = *total - std::min(*total, memory().used);
    return CUDA_SUCCESS;
}

// An H100's figures, where the backend or cudarc asks.
CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *value = 1024; break;           // max threads per block
        case 8: *value = 48 * 1024; break;      // shared memory per block
        case 16: *value = 132; break;           // multiprocessors
        case 75: *value = 9; break;             // compute capability major
        case 76: *value = 0; break;             // minor
        case 97: *value = 227 * 1024; break;    // opt-in shared memory per block
        case 115: *value = 1; break;            // memory pools supported
        default:
            complain("cuDeviceGetAttribute", "attribute " + std::to_string(attribute));
            return CUDA_ERROR_NOT_SUPPORTED;
    }
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice) {
    *context = &context_token;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) {
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext) {
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* context) {
    *context = &context_token;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize() {
    return CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream* stream, unsigned) {
    *stream = nullptr;
    return CUDA_SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream) {
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream) {
    return CUDA_SUCCESS;
}

CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) {
    return CUDA_SUCCESS;
}

CUresult cuMemAllocAsync(CUdeviceptr* ptr, size_t bytes, CUstream) {
    return allocate(ptr, bytes, true);
}

CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) {
    return allocate(ptr, bytes, true);
}

CUresult cuMemFreeAsync(CUdeviceptr ptr, CUstream) {
    return release(ptr);
}

CUresult cuMemFree_v2(CUdeviceptr ptr) {
    return release(ptr);
}

CUresult cuMemHostAlloc(void** ptr, size_t bytes, unsigned) {
    *ptr = aligned_alloc(256, (bytes + 255) / 256 * 256);
    return *ptr ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuMemAllocHost_v2(void** ptr, size_t bytes) {
    return cuMemHostAlloc(ptr, bytes, 0);
}

CUresult cuMemFreeHost(void* ptr) {
    free(ptr);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream) {
    CUresult r = check("cuMemcpyHtoD", (uintptr_t)dst, bytes);
    if (r == CUDA_SUCCESS && bytes) memcpy((void*)(uintptr_t)dst, src, bytes);
    return r;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    return cuMemcpyHtoDAsync_v2(dst, src, bytes, nullptr);
}

CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream) {
    CUresult r = check("cuMemcpyDtoH", (uintptr_t)src, bytes);
    if (r == CUDA_SUCCESS && bytes) memcpy(dst, (const void*)(uintptr_t)src, bytes);
    return r;
}

CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    return cuMemcpyDtoHAsync_v2(dst, src, bytes, nullptr);
}

CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream) {
    CUresult r = check("cuMemcpyDtoD (source)", (uintptr_t)src, bytes);
    if (r == CUDA_SUCCESS) r = check("cuMemcpyDtoD (destination)", (uintptr_t)dst, bytes);
    if (r == CUDA_SUCCESS && bytes)
        memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, bytes);
    return r;
}

CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    return cuMemcpyDtoDAsync_v2(dst, src, bytes, nullptr);
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream) {
    CUresult r = check("cuMemsetD8", (uintptr_t)dst, n);
    if (r == CUDA_SUCCESS && n) memset((void*)(uintptr_t)dst, value, n);
    return r;
}

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n) {
    return cuMemsetD8Async(dst, value, n, nullptr);
}

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned value, size_t n, CUstream) {
    CUresult r = check("cuMemsetD32", (uintptr_t)dst, n * 4);
    if (r == CUDA_SUCCESS)
        for (size_t i = 0; i < n; i++) memcpy((char*)(uintptr_t)dst + 4 * i, &value, 4);
    return r;
}

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice) {
    *pool = &pool_token;
    return CUDA_SUCCESS;
}

// The release threshold (4) is accepted and ignored; the high-water mark (8) is tracked.
CUresult cuMemPoolSetAttribute(CUmemoryPool, int attribute, void* value) {
    if (attribute == 4) return CUDA_SUCCESS;
    if (attribute == 8) {
        Memory& m = memory();
        std::lock_guard<std::mutex> g(m.lock);
        m.high = m.used;
        (void)value;
        return CUDA_SUCCESS;
    }
    complain("cuMemPoolSetAttribute", "attribute " + std::to_string(attribute));
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuMemPoolGetAttribute(CUmemoryPool, int attribute, void* value) {
    Memory& m = memory();
    std::lock_guard<std::mutex> g(m.lock);
    uint64_t v;
    switch (attribute) {
        case 7: v = m.used; break;   // used memory now
        case 8: v = m.high; break;   // its high-water mark
        default:
            complain("cuMemPoolGetAttribute", "attribute " + std::to_string(attribute));
            return CUDA_ERROR_NOT_SUPPORTED;
    }
    memcpy(value, &v, 8);
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    *module = new Module{std::string((const char*)image)};
    return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule module) {
    delete (Module*)module;
    return CUDA_SUCCESS;
}

// `name` must be an `.entry` of the module's PTX and a kernel of this library.
CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
    const std::string& ptx = ((Module*)module)->image;
    std::string entry = std::string(".entry ") + name + "(";
    if (ptx.find(entry) == std::string::npos) {
        complain("cuModuleGetFunction", std::string("the PTX has no entry ") + name);
        return CUDA_ERROR_NOT_FOUND;
    }
    const Kernel* kernel = find_kernel(name);
    if (!kernel) {
        complain("cuModuleGetFunction", std::string("no emulated kernel ") + name);
        return CUDA_ERROR_NOT_FOUND;
    }
    // Functions live as long as the process (a module may be unloaded and loaded again).
    *function = new Function{kernel};
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction function, int attribute, int value) {
    if (attribute == 8) {  // max dynamic shared memory
        if (value > 227 * 1024) return CUDA_ERROR_INVALID_VALUE;
        ((Function*)function)->max_dynamic_shared = value;
        return CUDA_SUCCESS;
    }
    complain("cuFuncSetAttribute", "attribute " + std::to_string(attribute));
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuLaunchKernel(CUfunction function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUstream, void** params,
                        void** extra) {
    Function* f = (Function*)function;
    if (extra != nullptr || params == nullptr) {
        complain("cuLaunchKernel", "arguments must come as kernelParams");
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((int)shared > f->max_dynamic_shared) {
        complain("cuLaunchKernel", std::string(f->kernel->name) + " asks for " +
                                       std::to_string(shared) +
                                       " bytes of dynamic shared memory without opting in");
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) {
        complain("cuLaunchKernel", std::string(f->kernel->name) + ": grid out of range");
        return CUDA_ERROR_INVALID_VALUE;
    }
    dim3 grid, threads;
    grid.x = gx, grid.y = gy, grid.z = gz;
    threads.x = bx, threads.y = by, threads.z = bz;
    std::lock_guard<std::mutex> g(launch_lock());
    f->kernel->launch(grid, threads, shared, params);
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent* event, unsigned) {
    *event = new Event();
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent event) {
    delete (Event*)event;
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent event, CUstream) {
    Event* e = (Event*)event;
    e->at = std::chrono::steady_clock::now();
    e->recorded = true;
    return CUDA_SUCCESS;
}

CUresult cuEventSynchronize(CUevent) {
    return CUDA_SUCCESS;
}

CUresult cuEventQuery(CUevent) {
    return CUDA_SUCCESS;
}

CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    Event *a = (Event*)start, *b = (Event*)end;
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return CUDA_SUCCESS;
}

CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) {
    return cuEventElapsedTime(ms, start, end);
}

}  // extern "C"
