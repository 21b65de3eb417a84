// Runs CUDA kernels on the CPU: every CUDA thread of a block is a fiber (its own stack and
// context) on one OS thread, and the kernels' barriers really suspend it until the other
// threads arrive.
//
// What it provides, for the subset of CUDA that crest/gpu/kernels.cu uses:
//   - threadIdx, blockIdx, blockDim, gridDim;
//   - __syncthreads: a barrier of the block's threads;
//   - __shfl_sync / __shfl_up_sync / __shfl_down_sync / __all_sync / __any_sync: a
//     barrier of the warp's 32 threads around an exchange slot; a mask other than the full
//     warp aborts (the kernels only use converged, full-warp exchanges);
//   - atomicAdd on float, __ldg (a plain load);
//   - dynamic shared memory: a heap buffer of exactly the launch's size, filled with
//     garbage (0xA5) for every block, so AddressSanitizer reports any access past it and
//     nothing can rely on it being zero. Static __shared__ arrays become per-declaration
//     storage (block_static) that each block finds refilled with garbage.
//
// Ordering: blocks run one at a time in a shuffled order, and at every barrier the
// released threads (the last one to arrive included) resume in a shuffled order, each
// running alone until its next barrier. A missing barrier therefore shows up as a wrong
// result for most seeds; threads that wait at a barrier others never reach are reported
// as a deadlock instead of hanging.
//
// Launch limits are checked as a CUDA device would: 1-D blocks of a multiple of 32 and at
// most 1024 threads, grid.y and grid.z <= 65535, dynamic shared memory <= 227 KiB (the
// opt-in maximum of an H100). The kernel source is included after a textual rewrite of its
// __shared__ declarations (tests/gpu/_emulator.py).
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CREST_EMU_ASAN 1
#endif

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace crest_emu {

constexpr std::size_t kMaxDynamicSmem = 227 * 1024;
constexpr std::size_t kStackBytes = 256 * 1024;

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "crest_emu: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

struct Fiber {
    ucontext_t ctx{};
    void* stack = nullptr;
    unsigned tid = 0;
    bool done = false;
    void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping while switched out
};

struct Barrier {
    unsigned expected = 0;
    unsigned arrived = 0;
    std::vector<Fiber*> waiters;
};

struct Warp {
    Barrier bar;
    unsigned long long slot[32];
};

struct Scheduler {
    ucontext_t main{};
    const void* main_bottom = nullptr;
    std::size_t main_size = 0;
    std::vector<Fiber> fibers;
    std::vector<Fiber*> runnable;
    Fiber* current = nullptr;
    std::mt19937 rng;
    const std::function<void()>* body = nullptr;
    Barrier block_bar;
    std::vector<Warp> warps;
    unsigned char* smem = nullptr;
    unsigned long long block_generation = 0;  // counts blocks run, for block_static
};

inline Scheduler sched;

// Switch from the running fiber back to the scheduler (finishing: never to return).
inline void to_scheduler(bool finishing) {
    Fiber* f = sched.current;
#ifdef CREST_EMU_ASAN
    __sanitizer_start_switch_fiber(finishing ? nullptr : &f->fake_stack, sched.main_bottom, sched.main_size);
#endif
    swapcontext(&f->ctx, &sched.main);
#ifdef CREST_EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &sched.main_bottom, &sched.main_size);
#endif
    (void)finishing;
}

inline void fiber_entry() {
#ifdef CREST_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched.main_bottom, &sched.main_size);
#endif
    (*sched.body)();
    sched.current->done = true;
    to_scheduler(true);
    fail("a finished fiber was resumed");
}

inline void resume(Fiber* f) {
    sched.current = f;
    threadIdx = dim3{f->tid, 0, 0};
    void* main_fake = nullptr;
#ifdef CREST_EMU_ASAN
    __sanitizer_start_switch_fiber(&main_fake, f->stack, kStackBytes);
#endif
    swapcontext(&sched.main, &f->ctx);
#ifdef CREST_EMU_ASAN
    __sanitizer_finish_switch_fiber(main_fake, nullptr, nullptr);
#endif
    (void)main_fake;
    sched.current = nullptr;
}

// Arrive at `b` and wait for the others; then resume in a shuffled order with them.
inline void barrier_wait(Barrier& b) {
    Fiber* self = sched.current;
    b.waiters.push_back(self);
    if (++b.arrived == b.expected) {
        std::shuffle(b.waiters.begin(), b.waiters.end(), sched.rng);
        sched.runnable.insert(sched.runnable.end(), b.waiters.begin(), b.waiters.end());
        b.waiters.clear();
        b.arrived = 0;
    }
    to_scheduler(false);
}

// A static __shared__ array: one per declaration (Id), refilled with garbage by the first
// thread of each block to reach the declaration (every thread passes it before any use).
template <typename A, int Id>
A& block_static() {
    static A storage;
    static unsigned long long generation = ~0ull;
    if (generation != sched.block_generation) {
        std::memset(&storage, 0xA5, sizeof(A));
        generation = sched.block_generation;
    }
    return storage;
}

inline unsigned lane() { return threadIdx.x & 31u; }
inline Warp& warp() { return sched.warps[threadIdx.x >> 5]; }
inline unsigned char* dynamic_smem() { return sched.smem; }

template <typename T>
T exchange(unsigned mask, T v, unsigned src_lane) {
    static_assert(sizeof(T) <= 8, "warp exchange of more than 8 bytes");
    if (mask != 0xffffffffu) fail("warp intrinsic with a partial mask");
    Warp& w = warp();
    unsigned long long raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    w.slot[lane()] = raw;
    barrier_wait(w.bar);
    raw = w.slot[src_lane & 31u];
    barrier_wait(w.bar);  // nobody overwrites a slot before every lane has read
    T out;
    std::memcpy(&out, &raw, sizeof(T));
    return out;
}

inline int vote(unsigned mask, int pred, bool all) {
    if (mask != 0xffffffffu) fail("warp vote with a partial mask");
    Warp& w = warp();
    w.slot[lane()] = pred != 0;
    barrier_wait(w.bar);
    int n = 0;
    for (unsigned i = 0; i < 32; ++i) n += static_cast<int>(w.slot[i]);
    barrier_wait(w.bar);
    return all ? n == 32 : n > 0;
}

// Run `body` once per thread of every block of the grid.
inline void launch(dim3 grid, dim3 block, std::size_t smem_bytes, const std::function<void()>& body, unsigned seed) {
    const unsigned n = block.x * block.y * block.z;
    if (block.y != 1 || block.z != 1) fail("only 1-D blocks are emulated");
    if (n == 0 || n > 1024 || n % 32 != 0) fail("block size must be a multiple of 32, at most 1024");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("empty grid");
    if (grid.y > 65535 || grid.z > 65535) fail("grid.y and grid.z must be <= 65535");
    if (smem_bytes > kMaxDynamicSmem) fail("dynamic shared memory above the device's 227 KiB");
    gridDim = grid;
    blockDim = block;
    sched.rng.seed(seed);
    sched.body = &body;
    if (sched.fibers.size() < n) sched.fibers.resize(n);
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = sched.fibers[t];
        if (f.stack == nullptr) {
            f.stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (f.stack == MAP_FAILED) fail("cannot map a fiber stack");
        }
    }
    std::vector<dim3> order;
    order.reserve(static_cast<std::size_t>(grid.x) * grid.y * grid.z);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) order.push_back(dim3{x, y, z});
    std::shuffle(order.begin(), order.end(), sched.rng);
    for (const dim3& b : order) {
        blockIdx = b;
        ++sched.block_generation;
        sched.block_bar = Barrier{n, 0, {}};
        sched.warps.assign(n / 32, Warp{});
        for (Warp& w : sched.warps) w.bar.expected = 32;
        void* smem = nullptr;
        if (smem_bytes) {
            if (posix_memalign(&smem, 16, smem_bytes) != 0) fail("out of host memory for shared memory");
            std::memset(smem, 0xA5, smem_bytes);
        }
        sched.smem = static_cast<unsigned char*>(smem);
        sched.runnable.clear();
        for (unsigned t = 0; t < n; ++t) {
            Fiber& f = sched.fibers[t];
            f.tid = t;
            f.done = false;
            f.fake_stack = nullptr;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack;
            f.ctx.uc_stack.ss_size = kStackBytes;
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_entry, 0);
#ifdef CREST_EMU_ASAN
            // ASan's swapcontext interceptor clears the shadow of the target's uc_stack on
            // every switch, which would erase the redzones around a suspended thread's
            // locals: makecontext is done with uc_stack, so hide it from the interceptor,
            // and start every block from a clean stack (no stale frames of the last one).
            __asan_unpoison_memory_region(f.stack, kStackBytes);
            f.ctx.uc_stack = stack_t{};
#endif
            sched.runnable.push_back(&f);
        }
        std::shuffle(sched.runnable.begin(), sched.runnable.end(), sched.rng);
        unsigned finished = 0;
        while (finished < n) {
            if (sched.runnable.empty()) fail("deadlock: threads wait at a barrier that others never reach");
            std::vector<Fiber*> batch;
            batch.swap(sched.runnable);
            for (Fiber* f : batch) {
                resume(f);
                if (f->done) ++finished;
            }
        }
        std::free(smem);
        sched.smem = nullptr;
    }
}

}  // namespace crest_emu

#define __global__
#define __device__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { crest_emu::barrier_wait(crest_emu::sched.block_bar); }

template <typename T>
T __ldg(const T* p) {
    return *p;
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int = 32) {
    return crest_emu::exchange(mask, v, static_cast<unsigned>(src));
}

template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned d, int = 32) {
    const unsigned l = crest_emu::lane();
    return crest_emu::exchange(mask, v, l >= d ? l - d : l);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned d, int = 32) {
    const unsigned l = crest_emu::lane();
    return crest_emu::exchange(mask, v, l + d < 32u ? l + d : l);
}

inline int __all_sync(unsigned mask, int pred) { return crest_emu::vote(mask, pred, true); }
inline int __any_sync(unsigned mask, int pred) { return crest_emu::vote(mask, pred, false); }

inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
