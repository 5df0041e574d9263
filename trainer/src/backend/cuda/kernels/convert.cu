// bf16 storage <-> f32 compute, element-wise.

// Converts between the f32 compute type and bf16 storage, element-wise. f32 -> bf16 takes four
// values per thread (one 16-byte load, one 8-byte store) where the buffers are aligned for it.
extern "C" __global__ void f32_to_bf16_kernel(const float* x, bf16_bits* y, long n) {
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    bool aligned = ((unsigned long long)x & 15) == 0 && ((unsigned long long)y & 7) == 0;
    if (aligned && i + 3 < n) {
        float4 v = *(const float4*)(x + i);
        u32 lo = (u32)f32_to_bf16(v.x) | ((u32)f32_to_bf16(v.y) << 16);
        u32 hi = (u32)f32_to_bf16(v.z) | ((u32)f32_to_bf16(v.w) << 16);
        *(uint2*)(y + i) = make_uint2(lo, hi);
    } else {
        for (long j = i; j < n && j < i + 4; j++) y[j] = f32_to_bf16(x[j]);
    }
}

extern "C" __global__ void bf16_to_f32_kernel(const bf16_bits* x, float* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = bf16_to_f32(x[i]);
}
