// Shared helpers, prepended to every kernel source before NVRTC compiles it (NVRTC has no CUDA
// headers at hand, so nothing here includes one).
//
// bf16 is stored as a 16-bit integer (the top half of an f32); all arithmetic is f32.

typedef unsigned short bf16_bits;
typedef unsigned int u32;

// -inf without math.h.
#define NEG_INF __int_as_float(0xff800000)
// A quiet NaN.
#define QNAN __int_as_float(0x7fc00000)

// `1 / sqrt(mean_sq + eps)`, except that a mean square that overflowed f32 gives NaN: 0 would turn
// an exploded activation into a zero output that looks healthy (the CPU's `inv_rms`).
__device__ __forceinline__ float inv_rms(float mean_sq, float eps) {
    return mean_sq == -NEG_INF ? QNAN : 1.0f / sqrtf(mean_sq + eps);
}

// f32 -> bf16 with round-to-nearest-even; NaN stays a (quiet) NaN.
__device__ __forceinline__ bf16_bits f32_to_bf16(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (bf16_bits)((bits >> 16) | 0x0040u);
    }
    u32 rounding = 0x7fffu + ((bits >> 16) & 1u);
    return (bf16_bits)((bits + rounding) >> 16);
}

__device__ __forceinline__ float bf16_to_f32(bf16_bits x) {
    return __uint_as_float(((u32)x) << 16);
}

// Stores an f32 result as it is, or rounded to bf16 exactly as `f32_to_bf16` rounds, for the
// kernels built in both output types (an f32 activation, or the bf16 copy that only products
// read).
__device__ __forceinline__ void store_value(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_value(bf16_bits* p, float v) { *p = f32_to_bf16(v); }

// Reads a value of either storage type as f32.
__device__ __forceinline__ float load_value(const float* p) { return *p; }
__device__ __forceinline__ float load_value(const bf16_bits* p) { return bf16_to_f32(*p); }

// 16-byte accesses of either storage type, for the element-wise kernels: `Lanes<T>::n` values
// (4 f32 or 8 bf16) per access, each widened to or rounded from f32 exactly as `load_value` and
// `store_value` do one value. The address must be 16-byte aligned (`aligned16`).
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
    static const int n = 4;
};
template <>
struct Lanes<bf16_bits> {
    static const int n = 8;
};

__device__ __forceinline__ bool aligned16(const void* p) {
    return ((unsigned long long)p & 15ull) == 0;
}

__device__ __forceinline__ void load16(const float* p, float* v) {
    float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
}

__device__ __forceinline__ void load16(const bf16_bits* p, float* v) {
    uint4 q = *reinterpret_cast<const uint4*>(p);
    u32 w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        v[2 * k] = bf16_to_f32((bf16_bits)(w[k] & 0xffffu));
        v[2 * k + 1] = bf16_to_f32((bf16_bits)(w[k] >> 16));
    }
}

__device__ __forceinline__ void store16(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ void store16(bf16_bits* p, const float* v) {
    u32 w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        w[k] = (u32)f32_to_bf16(v[2 * k]) | ((u32)f32_to_bf16(v[2 * k + 1]) << 16);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

// Two consecutive values as f32, or stored from f32 (as `load_value` and `store_value` do each):
// one 8-byte (f32) or 4-byte (bf16) access where the address is aligned for it, else two.
__device__ __forceinline__ void load_pair(const float* p, float& a, float& b) {
    if (((unsigned long long)p & 7ull) == 0) {
        float2 q = *reinterpret_cast<const float2*>(p);
        a = q.x;
        b = q.y;
    } else {
        a = p[0];
        b = p[1];
    }
}

__device__ __forceinline__ void load_pair(const bf16_bits* p, float& a, float& b) {
    if (((unsigned long long)p & 3ull) == 0) {
        u32 w = *reinterpret_cast<const u32*>(p);
        a = bf16_to_f32((bf16_bits)(w & 0xffffu));
        b = bf16_to_f32((bf16_bits)(w >> 16));
    } else {
        a = bf16_to_f32(p[0]);
        b = bf16_to_f32(p[1]);
    }
}

__device__ __forceinline__ void store_pair(float* p, float a, float b) {
    if (((unsigned long long)p & 7ull) == 0) {
        *reinterpret_cast<float2*>(p) = make_float2(a, b);
    } else {
        p[0] = a;
        p[1] = b;
    }
}

__device__ __forceinline__ void store_pair(bf16_bits* p, float a, float b) {
    if (((unsigned long long)p & 3ull) == 0) {
        *reinterpret_cast<u32*>(p) = (u32)f32_to_bf16(a) | ((u32)f32_to_bf16(b) << 16);
    } else {
        p[0] = f32_to_bf16(a);
        p[1] = f32_to_bf16(b);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `scratch` holds 32 values in shared memory. The order is fixed, so it is deterministic.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum_f64(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0;
    return warp_sum_f64(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}
