// bf16 storage <-> f32 compute, element-wise.

// Converts between the f32 compute type and bf16 storage, element-wise.
extern "C" __global__ void f32_to_bf16_kernel(const float* x, bf16_bits* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f32_to_bf16(x[i]);
}

extern "C" __global__ void bf16_to_f32_kernel(const bf16_bits* x, float* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = bf16_to_f32(x[i]);
}
