// A CPU stand-in for the parts of CUDA the trainer's kernels use, so that their numerics can be
// checked on a machine without a GPU (the fake libcuda.so, fake_cuda.cpp, is built on it, and
// so are the trainer's kernel check programs). It is a model of the execution rules, not of the
// hardware's speed:
//
// - Blocks run one after another. The threads of a block are fibers (ucontext) on one OS thread,
//   switched only at barriers, so a block's shared memory (`__shared__` becomes `static`) is
//   simply global. Dynamic shared memory (`flash_smem`) is a heap buffer of exactly the size the
//   launch asks for, so that AddressSanitizer sees a read or write past it.
// - `__syncthreads()` waits for every thread of the block that has not returned; a warp-wide
//   operation (`__shfl_xor_sync`, `mma.sync`, `ldmatrix`) waits for its 32 lanes and fails
//   loudly if any lane has returned. A barrier that can never be passed is reported as a
//   deadlock instead of hanging.
// - The inline-PTX primitives of flash.cu are given here (flash.cu leaves them out under
//   REDPACK_CPU_EMULATION): `mma.sync.m16n8k16` with the fragment layouts of the PTX ISA
//   (products of bf16 values are exact in f32; the sum over k is taken in f64 and added to the
//   accumulator in f32, so bits can differ from a GPU's in the last place); `ldmatrix .x4` with
//   and without `.trans`; `cp.async` with its zero fill, landing only at the
//   `cp.async.wait_group` that covers it.
#pragma once

#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#define REDPACK_CPU_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
    return uint4{x, y, z, w};
}
inline uint2 make_uint2(unsigned x, unsigned y) {
    return uint2{x, y};
}
inline float2 make_float2(float x, float y) {
    return float2{x, y};
}
inline float4 make_float4(float x, float y, float z, float w) {
    return float4{x, y, z, w};
}

// Set by the scheduler before it switches to a thread.
static dim3 threadIdx, blockIdx, blockDim, gridDim;
// Dynamic shared memory (flash.cu's `extern __shared__` array): set by `emu::launch` for each
// launch to a buffer of the size it asks for.
[[maybe_unused]] static unsigned char* flash_smem = nullptr;

inline float __int_as_float(int x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
inline float __uint_as_float(unsigned x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
inline unsigned __float_as_uint(float x) {
    unsigned u;
    memcpy(&u, &x, 4);
    return u;
}
inline int __float_as_int(float x) {
    int u;
    memcpy(&u, &x, 4);
    return u;
}
inline float __fmul_rn(float a, float b) {
    return a * b;
}
inline float __fadd_rn(float a, float b) {
    return a + b;
}
template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b) {
    return a < b ? a : b;
}
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b) {
    return a < b ? b : a;
}
using std::fmax;
using std::sqrt;

namespace emu {

[[noreturn]] inline void fail(const char* what) {
    fprintf(stderr, "cuda_emu: %s (block %u,%u,%u thread %u)\n", what, blockIdx.x, blockIdx.y,
            blockIdx.z, threadIdx.x);
    exit(3);
}

// One 16-byte `cp.async` whose write to shared memory has not landed yet.
struct PendingCopy {
    void* dst;
    int bytes;
    unsigned char data[16];
};

struct Barrier {
    int arrived = 0;
    unsigned generation = 0;
};

// A thread's stack and where it stopped. On x86-64 a switch is `switch_stack` below: the
// callee-saved registers pushed on one stack and popped from the other (told to
// AddressSanitizer when it is on). Elsewhere `makecontext` starts a thread on its stack once,
// and after that `_setjmp`/`_longjmp` switch (no signal-mask system call per switch, unlike
// `swapcontext`).
struct Fiber {
    void* sp = nullptr;
    ucontext_t context;
    jmp_buf resume;
    char* stack = nullptr;
    bool started = false;
    bool done = false;
    // The barrier this thread waits at and its generation then: the scheduler does not resume
    // it until the generation moves on.
    const Barrier* waiting_on = nullptr;
    unsigned waiting_generation = 0;
    // This thread's `cp.async` copies: issued since the last commit, and committed groups, oldest
    // first. They land only when `cp.async.wait_group` says so.
    std::vector<PendingCopy> open;
    std::vector<std::vector<PendingCopy>> groups;
};

struct Block {
    std::vector<Fiber> fibers;
    void* scheduler_sp = nullptr;
    // The scheduler's stack, as AddressSanitizer's fiber interface reports it.
    const void* scheduler_stack = nullptr;
    size_t scheduler_stack_bytes = 0;
    ucontext_t scheduler;
    jmp_buf scheduler_resume;
    unsigned current = 0;
    unsigned live = 0;
    unsigned live_in_warp[32] = {};
    Barrier block_barrier;
    Barrier warp_barrier[32];
    // Whatever changes a barrier's state: a release or a thread's return.
    unsigned long progress = 0;
};

inline Block*& block() {
    static Block* b = nullptr;
    return b;
}

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer must be told of every switch between stacks (its fiber interface), and a
// thread stack set up afresh must lose the poisoned red zones of its last life's frames.
#define EMU_ASAN 1
extern "C" void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom,
                                               size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old,
                                                size_t* size_old);
extern "C" void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
#endif

#if defined(__x86_64__)
#define EMU_SWITCH_STACK 1
// switch_stack(save, load): pushes the callee-saved registers, stores the stack pointer in
// *save, takes `load` as the stack pointer and pops the registers saved there; `ret` then
// continues wherever that stack last called switch_stack. A new thread's stack is prepared so
// that this `ret` lands in fiber_start, which calls r12(r13) (see `prepare`). Local symbols: each
// program includes this header in one translation unit.
extern "C" void emu_switch_stack(void** save, void* load);
extern "C" void emu_fiber_start();
__asm__(
    ".text\n"
    ".p2align 4\n"
    "emu_switch_stack:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    "emu_fiber_start:\n"
    "    movq %r13, %rdi\n"
    "    callq *%r12\n"
    "    ud2\n");
#endif

// Hands control from the current thread back to the scheduler.
inline void to_scheduler(Block* b, Fiber& f) {
#ifdef EMU_SWITCH_STACK
#ifdef EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, b->scheduler_stack, b->scheduler_stack_bytes);
#endif
    emu_switch_stack(&f.sp, b->scheduler_sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, &b->scheduler_stack, &b->scheduler_stack_bytes);
#endif
#else
    if (!_setjmp(f.resume)) _longjmp(b->scheduler_resume, 1);
#endif
}

inline void yield_waiting() {
    Block* b = block();
    to_scheduler(b, b->fibers[b->current]);
}

// Waits until `expected` threads have arrived (counting arrivals since the last release).
inline void wait(Barrier& barrier, unsigned expected) {
    Block* b = block();
    unsigned generation = barrier.generation;
    b->progress++;
    if ((unsigned)++barrier.arrived >= expected) {
        barrier.arrived = 0;
        barrier.generation++;
        b->progress++;
        return;
    }
    Fiber& f = b->fibers[b->current];
    f.waiting_on = &barrier;
    f.waiting_generation = generation;
    while (barrier.generation == generation) yield_waiting();
    f.waiting_on = nullptr;
}

inline void syncthreads() {
    wait(block()->block_barrier, block()->live);
}

inline void warp_sync() {
    Block* b = block();
    unsigned warp = threadIdx.x >> 5;
    if (b->live_in_warp[warp] != 32) fail("a warp-wide operation with lanes that have returned");
    wait(b->warp_barrier[warp], 32);
}

// Every lane publishes `N` words and gets the words of all 32 lanes of its warp.
template <int N>
struct Exchange {
    uint64_t lanes[32][N];
};

// One warp barrier per exchange: the slots alternate between two buffers by the barrier's
// generation (the same for every lane of one exchange), and a lane can write a buffer again only
// after the barrier that follows everyone's read of it.
// `publish` returns the warp's slots, valid until this lane's next warp barrier.
template <int N>
inline const uint64_t (*publish(const uint64_t (&mine)[N]))[N] {
    static uint64_t slots[2][32][32][N];
    unsigned warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned parity = block()->warp_barrier[warp].generation & 1;
    memcpy(slots[parity][warp][lane], mine, sizeof(mine));
    warp_sync();
    return slots[parity][warp];
}

template <int N>
inline void exchange(const uint64_t (&mine)[N], Exchange<N>& all) {
    memcpy(all.lanes, publish(mine), sizeof(all.lanes));
}

// A thread's life: run the kernel for the current block, count itself out of the block (which
// may complete a barrier the others wait at), hand control back, and when resumed for the next
// block run the kernel again. So each thread is set up once per launch, not once per block.
template <class F>
struct Start {
    F* kernel;
    static void run(unsigned lo, unsigned hi) {
        Start* s = (Start*)(((uintptr_t)hi << 32) | lo);
        for (;;) {
            (*s->kernel)();
            Block* b = block();
            Fiber& f = b->fibers[b->current];
            f.open.clear();
            f.groups.clear();
            f.done = true;
            b->live--;
            b->live_in_warp[threadIdx.x >> 5]--;
            Barrier& bb = b->block_barrier;
            if (bb.arrived > 0 && (unsigned)bb.arrived >= b->live) {
                bb.arrived = 0;
                bb.generation++;
            }
            b->progress++;
            to_scheduler(b, f);
        }
    }
    static void run_at(uintptr_t ptr) {
#ifdef EMU_ASAN
        Block* b = block();
        __sanitizer_finish_switch_fiber(nullptr, &b->scheduler_stack, &b->scheduler_stack_bytes);
#endif
        run((unsigned)ptr, (unsigned)(ptr >> 32));
    }
};

// Each thread's stack. Kept for the process's life and handed to every launch (a launch's
// threads are set up afresh), so that a program of many small launches does not allocate and
// clear a stack per thread each time.
constexpr size_t kStackBytes = 256 * 1024;
inline char* thread_stack(unsigned t) {
    static std::vector<std::unique_ptr<char[]>> stacks;
    while (stacks.size() <= t) stacks.emplace_back(new char[kStackBytes]);
    return stacks[t].get();
}

// Sets thread `f` up to start `entry(ptr)` on its own stack (out of line, as `resume`).
__attribute__((noinline)) inline void prepare(Block& b, Fiber& f, void (*entry)(),
                                              void (*entry_at)(uintptr_t), uintptr_t ptr) {
#ifdef EMU_SWITCH_STACK
    // What switch_stack pops (r15, r14, r13 = ptr, r12 = entry_at, rbx, rbp), then its return
    // address; fiber_start's call then finds the stack 16-byte aligned, as the ABI requires.
    (void)b, (void)entry;
    // Each thread's stack starts at a different offset into its allocation: the allocations
    // are a power of two apart, and the threads' live frames would otherwise share cache sets.
#ifdef EMU_ASAN
    __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
    size_t t = (size_t)(&f - b.fibers.data());
    uintptr_t top = ((uintptr_t)f.stack + kStackBytes - (t * 1088) % (64 * 1024)) & ~(uintptr_t)15;
    uintptr_t* sp = (uintptr_t*)(top - 72);
    sp[0] = sp[1] = 0;
    sp[2] = ptr;
    sp[3] = (uintptr_t)entry_at;
    sp[4] = sp[5] = 0;
    sp[6] = (uintptr_t)&emu_fiber_start;
    f.sp = sp;
    return;
#endif
    (void)entry_at;
    f.started = false;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, entry, 2, (unsigned)ptr, (unsigned)(ptr >> 32));
}

// Runs thread `f` until it waits at a barrier or returns. Kept out of line so that no local of
// the scheduler's loops lives in the frame that `_setjmp` saves.
__attribute__((noinline)) inline void resume(Block& b, Fiber& f) {
#ifdef EMU_SWITCH_STACK
#ifdef EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, f.stack, kStackBytes);
#endif
    emu_switch_stack(&b.scheduler_sp, f.sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
    return;
#endif
    if (!_setjmp(b.scheduler_resume)) {
        if (f.started) _longjmp(f.resume, 1);
        f.started = true;
        swapcontext(&b.scheduler, &f.context);
    }
}

// Runs `kernel()` (a closure that calls the kernel with its arguments) over the grid, with
// `shared_bytes` of dynamic shared memory.
template <class F>
inline void launch(dim3 grid, dim3 threads, size_t shared_bytes, F kernel) {
    if (threads.y != 1 || threads.z != 1 || threads.x % 32 != 0 || threads.x > 1024) {
        fail("only 1-D blocks of whole warps are emulated");
    }
    gridDim = grid;
    blockDim = threads;
    std::vector<unsigned char> dynamic_shared(shared_bytes);
    flash_smem = dynamic_shared.data();
    Block b;
    block() = &b;
    b.fibers.resize(threads.x);
    for (unsigned t = 0; t < threads.x; t++) b.fibers[t].stack = thread_stack(t);
    Start<F> start{&kernel};
    uintptr_t ptr = (uintptr_t)&start;
    for (auto& f : b.fibers) prepare(b, f, (void (*)())Start<F>::run, Start<F>::run_at, ptr);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx.x = x, blockIdx.y = y, blockIdx.z = z;
                b.live = threads.x;
                for (unsigned w = 0; w < 32; w++) {
                    b.live_in_warp[w] = w < threads.x / 32 ? 32 : 0;
                    b.warp_barrier[w] = Barrier();
                }
                b.block_barrier = Barrier();
                for (auto& f : b.fibers) f.done = false;
                // Round robin until every thread has returned. A thread gives the scheduler back
                // control only at a barrier it must wait at, or by returning; a whole round with
                // no arrival, release or return means no barrier can ever open.
                while (b.live > 0) {
                    unsigned long before = b.progress;
                    for (unsigned t = 0; t < threads.x; t++) {
                        Fiber& f = b.fibers[t];
                        if (f.done) continue;
                        if (f.waiting_on && f.waiting_on->generation == f.waiting_generation)
                            continue;
                        b.current = t;
                        threadIdx.x = t;
                        resume(b, f);
                    }
                    if (b.progress == before && b.live > 0) {
                        fail("deadlock: every live thread waits at a barrier that cannot open");
                    }
                }
            }
    block() = nullptr;
    flash_smem = nullptr;
}

inline float bf16_value(uint32_t bits16) {
    return __uint_as_float(bits16 << 16);
}

}  // namespace emu

inline void __syncthreads() {
    emu::syncthreads();
}

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int offset) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t mine[1] = {0};
    memcpy(mine, &v, sizeof(T));
    const uint64_t(*lanes)[1] = emu::publish(mine);
    T out;
    memcpy(&out, &lanes[(threadIdx.x & 31) ^ offset][0], sizeof(T));
    return out;
}

// flash.cu's primitives (its REDPACK_CPU_EMULATION branch names these).

// c += a · b, mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32.
inline void mma16816(float* c, const uint32_t* a, const uint32_t* b) {
    uint64_t mine[3] = {(uint64_t)a[0] | (uint64_t)a[1] << 32,
                        (uint64_t)a[2] | (uint64_t)a[3] << 32,
                        (uint64_t)b[0] | (uint64_t)b[1] << 32};
    emu::Exchange<3> all;
    emu::exchange(mine, all);
    // Element (m, k) of A is in lane 4 (m % 8) + (k % 8) / 2, register (m >= 8) + 2 (k >= 8),
    // half k % 2; element (k, n) of B in lane 4 n + (k % 8) / 2, register k >= 8, half k % 2.
    auto word = [&](int lane, int reg) -> uint32_t {
        uint64_t w = all.lanes[lane][reg / 2];
        return (uint32_t)(reg % 2 ? w >> 32 : w);
    };
    auto a_at = [&](int m, int k) {
        uint32_t w = word(4 * (m % 8) + (k % 8) / 2, (m >= 8) + 2 * (k >= 8));
        return emu::bf16_value((w >> (16 * (k % 2))) & 0xffff);
    };
    auto b_at = [&](int k, int n) {
        uint32_t w = word(4 * n + (k % 8) / 2, 4 + (k >= 8));
        return emu::bf16_value((w >> (16 * (k % 2))) & 0xffff);
    };
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int e = 0; e < 4; e++) {
        double acc = 0.0;
        for (int k = 0; k < 16; k++) acc += (double)a_at(rows[e], k) * (double)b_at(k, cols[e]);
        c[e] = (float)((double)c[e] + acc);
    }
}

// cvt.rn.bf16x2.f32 d, hi, lo: each value rounded to the nearest bf16 (ties to even), `lo` in
// the low half; a NaN becomes the canonical 0x7fff.
inline uint32_t pack2(float lo, float hi) {
    auto round = [](float x) -> uint32_t {
        uint32_t bits = __float_as_uint(x);
        if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
        return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    };
    return round(lo) | round(hi) << 16;
}

// ex2.approx.ftz.f32: 2^x with a subnormal input taken as 0 and a subnormal result flushed to
// 0. The hardware's approximation differs from exp2f by an ulp or two, well within what the
// checks allow.
inline float ex2(float x) {
    if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.0f;
    float y = exp2f(x);
    return std::fpclassify(y) == FP_SUBNORMAL ? 0.0f : y;
}

// Shared addresses are offsets into the launch's dynamic shared memory, the only shared memory
// that `cp.async` writes and `ldmatrix` reads.
inline uint32_t shared_address(const void* p) {
    return (uint32_t)((const unsigned char*)p - flash_smem);
}
inline const unsigned short* shared_pointer(uint32_t addr) {
    if (addr % 16 != 0) emu::fail("ldmatrix row address not 16-byte aligned");
    return (const unsigned short*)(flash_smem + addr);
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lane l gives the address of row l % 8 of
// matrix l / 8; register j receives matrix j's elements (row l / 4, cols 2 (l % 4) + {0, 1}), or
// with `.trans` (rows 2 (l % 4) + {0, 1}, col l / 4).
inline void ldmatrix_x4(uint32_t* r, const unsigned short* p, bool trans) {
    uint64_t mine[1] = {(uint64_t)(uintptr_t)p};
    emu::Exchange<1> all;
    emu::exchange(mine, all);
    int lane = threadIdx.x & 31;
    for (int j = 0; j < 4; j++) {
        unsigned short lo, hi;
        if (!trans) {
            const unsigned short* row =
                (const unsigned short*)(uintptr_t)all.lanes[8 * j + lane / 4][0];
            lo = row[2 * (lane % 4)];
            hi = row[2 * (lane % 4) + 1];
        } else {
            const unsigned short* r0 =
                (const unsigned short*)(uintptr_t)all.lanes[8 * j + 2 * (lane % 4)][0];
            const unsigned short* r1 =
                (const unsigned short*)(uintptr_t)all.lanes[8 * j + 2 * (lane % 4) + 1][0];
            lo = r0[lane / 4];
            hi = r1[lane / 4];
        }
        r[j] = (uint32_t)lo | (uint32_t)hi << 16;
    }
}
inline void ldsm_x4(uint32_t* r, uint32_t addr) {
    ldmatrix_x4(r, shared_pointer(addr), false);
}
inline void ldsm_x4_trans(uint32_t* r, uint32_t addr) {
    ldmatrix_x4(r, shared_pointer(addr), true);
}

// cp.async of `bytes` (16: .cg, 4: .ca), `src_bytes` of them read and the rest zero-filled.
// The source is read when the copy is issued (nothing writes it meanwhile); the write to shared
// memory lands only at the `cp_wait` that covers its group, so a read of a tile before its wait
// sees the tile's old contents, as it may on a GPU.
inline void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes) {
    if (src_bytes < 0 || src_bytes > bytes) emu::fail("cp.async reads more than it copies");
    if (dst % bytes != 0 || (uintptr_t)src % bytes != 0) emu::fail("misaligned cp.async");
    emu::PendingCopy copy;
    copy.dst = flash_smem + dst;
    copy.bytes = bytes;
    memset(copy.data, 0, sizeof copy.data);
    memcpy(copy.data, src, src_bytes);
    emu::Block* b = emu::block();
    b->fibers[b->current].open.push_back(copy);
}
inline void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    cp_async(dst, src, 16, src_bytes);
}
inline void cp_async4(uint32_t dst, const void* src, int src_bytes) {
    cp_async(dst, src, 4, src_bytes);
}
inline void cp_commit() {
    emu::Block* b = emu::block();
    emu::Fiber& f = b->fibers[b->current];
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}
// cp.async.wait_group N: every committed group but the N most recent lands.
template <int N>
inline void cp_wait() {
    emu::Block* b = emu::block();
    emu::Fiber& f = b->fibers[b->current];
    while (f.groups.size() > (size_t)N) {
        for (const emu::PendingCopy& c : f.groups.front()) memcpy(c.dst, c.data, c.bytes);
        f.groups.erase(f.groups.begin());
    }
}
