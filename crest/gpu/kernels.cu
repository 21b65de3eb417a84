// crest GPU kernels: decode the sparse crest encoding, and y = W x straight from it.
//
// This exact file is what CuPy compiles at run time (cupy.RawModule, NVRTC) and what the
// tests compile with nvcc: no includes, no host code, extern "C" entry points only.
//
// Sparse layout (docs/format.md): entry i is (gap_i, code_i), gap and code bit-packed
// LSB-first in index_bits / code_bits; chunk c holds entries [c*K, (c+1)*K) and starts at
// the absolute position bounds[c] (the chunk table's base); bounds[n_chunks] = numel.
// Chunk c writes exactly the region [bounds[c], bounds[c+1]): its entries lie in it and
// the regions tile [0, numel), so writing every region (zeros included) writes the whole
// output once, with no separate memset.
//
// One block per chunk. Each thread takes `per_thread` consecutive entries, sums their
// steps (gap + 1), and a block-wide exclusive scan of those sums gives every thread the
// position before its first entry: base + scan. No scan crosses a chunk.

typedef unsigned long long crest_u64;
typedef long long crest_i64;
typedef unsigned int crest_u32;

// 16 bytes moved by one store (our own type: nothing depends on NVRTC's vector headers)
struct __align__(16) crest_v4 {
    unsigned int x, y, z, w;
};

__device__ __forceinline__ crest_v4 crest_zero_v4() {
    crest_v4 v;
    v.x = 0u;
    v.y = 0u;
    v.z = 0u;
    v.w = 0u;
    return v;
}

#define CREST_SCRATCH_BYTES 256  // 32 x u64 of block-scan scratch at the start of dynamic smem
#define CREST_MAX_BATCH 16

// Value i (width w in 1..16) of an LSB-first bit stream read as 32-bit little-endian words.
__device__ __forceinline__ crest_u32 crest_read_bits(const crest_u32* __restrict__ words,
                                                     crest_u64 i, crest_u32 w) {
    const crest_u64 bit = i * (crest_u64)w;
    const crest_u64 word = bit >> 5;
    const crest_u32 sh = (crest_u32)(bit & 31ull);
    crest_u32 v = __ldg(words + word) >> sh;
    if (sh + w > 32u) {  // the value continues in the next word, which then exists
        v |= __ldg(words + word + 1) << (32u - sh);
    }
    return v & ((1u << w) - 1u);
}

// Exclusive block scan of one u64 per thread (blockDim.x a multiple of 32, <= 1024).
// scratch: 32 u64 in shared memory. Returns the exclusive prefix; ends with a barrier
// after which scratch is free again.
__device__ __forceinline__ crest_u64 crest_block_exclusive_scan(crest_u64 v, crest_u64* scratch) {
    const crest_u32 lane = threadIdx.x & 31u;
    const crest_u32 warp = threadIdx.x >> 5;
    const crest_u32 nwarps = blockDim.x >> 5;
    crest_u64 incl = v;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const crest_u64 t = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= (crest_u32)d) incl += t;
    }
    if (lane == 31u) scratch[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        crest_u64 s = (lane < nwarps) ? scratch[lane] : 0ull;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const crest_u64 t = __shfl_up_sync(0xffffffffu, s, d);
            if (lane >= (crest_u32)d) s += t;
        }
        scratch[lane] = s;  // inclusive prefix of warp totals
    }
    __syncthreads();
    const crest_u64 before = (warp > 0) ? scratch[warp - 1] : 0ull;
    __syncthreads();  // scratch may be reused by the caller
    return before + incl - v;
}

// This thread's entries [lo, hi) inside a chunk of `count` entries.
__device__ __forceinline__ void crest_thread_range(crest_i64 count, int per_thread,
                                                   crest_i64* lo, crest_i64* hi) {
    crest_i64 a = (crest_i64)threadIdx.x * per_thread;
    crest_i64 b = a + per_thread;
    if (a > count) a = count;
    if (b > count) b = count;
    *lo = a;
    *hi = b;
}

// Decode one chunk into T-typed bit patterns (T = unsigned integer of the itemsize).
// Staged path (region + 32 bytes <= stage_bytes): zero a shared-memory copy of the region,
// scatter the entries into it, then write the region to global memory once with 16-byte
// stores (element stores only for the unaligned head and tail). Otherwise the region was
// zero-filled by crest_fill_regions before this launch and the entries are scattered.
template <typename T>
__device__ __forceinline__ void crest_decode_chunk(
    const crest_u32* __restrict__ index_words, const crest_u32* __restrict__ code_words,
    const crest_i64* __restrict__ bounds, const T* __restrict__ codebook, T* __restrict__ out,
    crest_i64 n_entries, int chunk_entries, int index_bits, int code_bits, int per_thread,
    crest_i64 stage_bytes, unsigned char* smem) {
    crest_u64* scratch = reinterpret_cast<crest_u64*>(smem);
    unsigned char* stage = smem + CREST_SCRATCH_BYTES;
    const crest_i64 c = blockIdx.x;
    const crest_i64 first = c * (crest_i64)chunk_entries;
    crest_i64 count = n_entries - first;
    if (count > chunk_entries) count = chunk_entries;
    const crest_i64 base = bounds[c];
    const crest_i64 end = bounds[c + 1];
    const crest_i64 isz = (crest_i64)sizeof(T);
    const bool staged = (end - base) * isz + 32 <= stage_bytes;

    crest_i64 lo, hi;
    crest_thread_range(count, per_thread, &lo, &hi);
    crest_u64 steps = 0;
    for (crest_i64 j = lo; j < hi; ++j) {
        steps += (crest_u64)crest_read_bits(index_words, (crest_u64)(first + j), index_bits) + 1ull;
    }
    const crest_u64 before = crest_block_exclusive_scan(steps, scratch);

    // byte addresses of the region and of the 16-byte words around it
    const unsigned long long g0 = (unsigned long long)(out + base);
    const unsigned long long g1 = (unsigned long long)(out + end);
    const unsigned long long a0 = g0 & ~15ull;
    const unsigned long long head = g0 - a0;  // a multiple of sizeof(T)
    T* stage_t = reinterpret_cast<T*>(stage + head);
    if (staged) {
        crest_v4* s4 = reinterpret_cast<crest_v4*>(stage);
        const crest_i64 n4 = (crest_i64)((((g1 + 15ull) & ~15ull) - a0) >> 4);
        for (crest_i64 i = threadIdx.x; i < n4; i += blockDim.x) s4[i] = crest_zero_v4();
        __syncthreads();
    }

    crest_i64 pos = base + (crest_i64)before;  // prev before this thread's first entry
    for (crest_i64 j = lo; j < hi; ++j) {
        const crest_u64 e = (crest_u64)(first + j);
        pos += (crest_i64)crest_read_bits(index_words, e, index_bits);
        const crest_u32 code = crest_read_bits(code_words, e, code_bits);
        if (code != 0u && pos >= base && pos < end) {  // the guard never fails on parsed input
            const T v = codebook[code];
            if (staged) {
                stage_t[pos - base] = v;
            } else {
                out[pos] = v;
            }
        }
        pos += 1;
    }
    if (!staged) return;
    __syncthreads();

    // write the region once: 16-byte stores inside, element stores for head and tail
    const unsigned long long b0 = (g0 + 15ull) & ~15ull;
    const unsigned long long b1 = g1 & ~15ull;
    if (b0 < b1) {
        const crest_v4* src = reinterpret_cast<const crest_v4*>(stage + (b0 - a0));
        unsigned char* gout = reinterpret_cast<unsigned char*>(out);  // keeps the global space
        crest_v4* dst = reinterpret_cast<crest_v4*>(gout + (b0 - (unsigned long long)gout));
        const crest_i64 n4 = (crest_i64)((b1 - b0) >> 4);
        for (crest_i64 i = threadIdx.x; i < n4; i += blockDim.x) dst[i] = src[i];
        const crest_i64 nhead = (crest_i64)((b0 - g0) / (unsigned long long)isz);
        const crest_i64 ntail = (crest_i64)((g1 - b1) / (unsigned long long)isz);
        const crest_i64 tail0 = (crest_i64)((b1 - g0) / (unsigned long long)isz);
        for (crest_i64 i = threadIdx.x; i < nhead + ntail; i += blockDim.x) {
            const crest_i64 k = (i < nhead) ? i : tail0 + (i - nhead);
            out[base + k] = stage_t[k];
        }
    } else {
        for (crest_i64 k = threadIdx.x; k < end - base; k += blockDim.x) out[base + k] = stage_t[k];
    }
}

#define CREST_DECODE_KERNEL(NAME, T)                                                              \
    extern "C" __global__ void NAME(                                                             \
        const crest_u32* __restrict__ index_words, const crest_u32* __restrict__ code_words,     \
        const crest_i64* __restrict__ bounds, const T* __restrict__ codebook, T* __restrict__ out, \
        crest_i64 n_entries, int chunk_entries, int index_bits, int code_bits, int per_thread,   \
        crest_i64 stage_bytes) {                                                                  \
        extern __shared__ __align__(16) unsigned char crest_smem[];                              \
        crest_decode_chunk<T>(index_words, code_words, bounds, codebook, out, n_entries,          \
                              chunk_entries, index_bits, code_bits, per_thread, stage_bytes,     \
                              crest_smem);                                                        \
    }

CREST_DECODE_KERNEL(crest_decode_u8, unsigned char)
CREST_DECODE_KERNEL(crest_decode_u16, unsigned short)
CREST_DECODE_KERNEL(crest_decode_u32, unsigned int)
CREST_DECODE_KERNEL(crest_decode_u64, unsigned long long)

// Zero the element ranges [starts[r], ends[r]) of `out` (elements of `itemsize` bytes):
// the regions too large to stage. blockIdx.y walks the regions, the x dimension strides
// over a region with 16-byte stores; bytes before the first and after the last 16-byte
// boundary are stored one by one.
extern "C" __global__ void crest_fill_regions(unsigned char* __restrict__ out,
                                              const crest_i64* __restrict__ starts,
                                              const crest_i64* __restrict__ ends,
                                              int n_regions, int itemsize) {
    const crest_i64 tid = (crest_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const crest_i64 stride = (crest_i64)gridDim.x * blockDim.x;
    for (int r = blockIdx.y; r < n_regions; r += gridDim.y) {
        const unsigned long long g0 = (unsigned long long)(out + starts[r] * itemsize);
        const unsigned long long g1 = (unsigned long long)(out + ends[r] * itemsize);
        unsigned long long b0 = (g0 + 15ull) & ~15ull;
        unsigned long long b1 = g1 & ~15ull;
        if (b0 >= b1) {
            b0 = g1;
            b1 = g1;
        }
        const crest_i64 nhead = (crest_i64)(b0 - g0);
        const crest_i64 ntail = (crest_i64)(g1 - b1);
        for (crest_i64 i = tid; i < nhead + ntail; i += stride) {
            const unsigned long long a = (i < nhead) ? g0 + i : b1 + (i - nhead);
            out[a - (unsigned long long)out] = 0;
        }
        crest_v4* dst = reinterpret_cast<crest_v4*>(out + (b0 - (unsigned long long)out));
        const crest_i64 n4 = (crest_i64)((b1 - b0) >> 4);
        for (crest_i64 i = tid; i < n4; i += stride) dst[i] = crest_zero_v4();
    }
}

// Whether row `row` lies in y. Validated input never leaves it; the check (once per row a
// thread flushes, not per entry) keeps a corrupt chunk table or gap stream from writing
// past y.
__device__ __forceinline__ bool crest_row_inside(crest_i64 row, crest_i64 rows) {
    return row >= 0 && row < rows;
}

// y[row, 0:batch] += acc[0:batch] (atomicAdd), for a row inside y only.
__device__ __forceinline__ void crest_add_row(float* __restrict__ y, crest_i64 row, crest_i64 rows, int batch,
                                              const float* acc) {
    if (!crest_row_inside(row, rows)) return;
#pragma unroll
    for (int b = 0; b < CREST_MAX_BATCH; ++b) {
        if (b < batch) atomicAdd(y + row * batch + b, acc[b]);
    }
}

// y[out_features, batch] += W x for W = the sparse tensor viewed as [out_features,
// in_features] (row-major positions), x[in_features, batch] (C order), float32, y zeroed
// before the launch. Codebook values are float32. Each thread accumulates its entries;
// when a whole warp's entries lie in one row the warp reduces first and lane 0 adds once,
// otherwise each thread adds once per row it touches (atomicAdd). Rows outside
// [0, out_features) are never written.
extern "C" __global__ void crest_spmv_f32(
    const crest_u32* __restrict__ index_words, const crest_u32* __restrict__ code_words,
    const crest_i64* __restrict__ bounds, const float* __restrict__ codebook,
    const float* __restrict__ x, float* __restrict__ y, crest_i64 n_entries, int chunk_entries,
    int index_bits, int code_bits, int per_thread, crest_i64 out_features, crest_i64 in_features,
    int batch) {
    __shared__ crest_u64 scratch[32];
    const crest_i64 c = blockIdx.x;
    const crest_i64 first = c * (crest_i64)chunk_entries;
    crest_i64 count = n_entries - first;
    if (count > chunk_entries) count = chunk_entries;
    const crest_i64 base = bounds[c];

    crest_i64 lo, hi;
    crest_thread_range(count, per_thread, &lo, &hi);
    crest_u64 steps = 0;
    for (crest_i64 j = lo; j < hi; ++j) {
        steps += (crest_u64)crest_read_bits(index_words, (crest_u64)(first + j), index_bits) + 1ull;
    }
    const crest_u64 before = crest_block_exclusive_scan(steps, scratch);

    const crest_i64 start = base + (crest_i64)before;  // prev before this thread's first entry
    if (start < 0) hi = lo;  // only a corrupt base: no column of x would be in range
    const bool have = lo < hi;
    const crest_i64 last = start + (crest_i64)steps - 1;  // position of its last entry
    crest_i64 row = start / in_features;
    crest_i64 col = start - row * in_features;
    const crest_i64 row0 = __shfl_sync(0xffffffffu, row, 0);
    const bool one_row = !have || (row == row0 && last / in_features == row0);
    const bool warp_one_row = __all_sync(0xffffffffu, one_row);

    float acc[CREST_MAX_BATCH];
#pragma unroll
    for (int b = 0; b < CREST_MAX_BATCH; ++b) acc[b] = 0.0f;
    bool dirty = false;
    for (crest_i64 j = lo; j < hi; ++j) {
        const crest_u64 e = (crest_u64)(first + j);
        col += (crest_i64)crest_read_bits(index_words, e, index_bits);
        if (col >= in_features) {
            const crest_i64 jump = col / in_features;
            if (dirty && !warp_one_row) {
                crest_add_row(y, row, out_features, batch, acc);
#pragma unroll
                for (int b = 0; b < CREST_MAX_BATCH; ++b) acc[b] = 0.0f;
                dirty = false;
            }
            row += jump;
            col -= jump * in_features;
        }
        const crest_u32 code = crest_read_bits(code_words, e, code_bits);
        if (code != 0u) {
            const float w = codebook[code];
            const float* xr = x + col * batch;
#pragma unroll
            for (int b = 0; b < CREST_MAX_BATCH; ++b) {
                if (b < batch) acc[b] += w * __ldg(xr + b);
            }
            dirty = true;
        }
        col += 1;
    }
    if (warp_one_row) {
        if (__any_sync(0xffffffffu, dirty)) {
            const bool adds = (threadIdx.x & 31u) == 0u && crest_row_inside(row0, out_features);
#pragma unroll
            for (int b = 0; b < CREST_MAX_BATCH; ++b) {
                if (b < batch) {
                    float v = acc[b];
#pragma unroll
                    for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
                    if (adds) atomicAdd(y + row0 * batch + b, v);
                }
            }
        }
    } else if (dirty) {
        crest_add_row(y, row, out_features, batch, acc);
    }
}
