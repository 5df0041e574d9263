// SwiGLU: h = silu(gate) * up, and its backward. Element-wise, one thread per element. Each is
// built twice: f32 outputs, and (`_bf16`) outputs rounded to bf16 for a mixed-precision step,
// where products are their only readers; the f32 values before rounding are the same.

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename Out>
__device__ __forceinline__ void swiglu_forward_at(const float* gate, const float* up, Out* h,
                                                  long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    store_value(h + i, g * sigmoid(g) * up[i]);
}

template <typename Out>
__device__ __forceinline__ void swiglu_backward_at(const float* dh, const float* gate,
                                                   const float* up, Out* dgate, Out* dup,
                                                   long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i], u = up[i], d = dh[i];
    float s = sigmoid(g);
    store_value(dup + i, d * g * s);
    store_value(dgate + i, d * u * s * (1.0f + g * (1.0f - s)));
}

extern "C" __global__ void swiglu_forward(const float* gate, const float* up, float* h, long n) {
    swiglu_forward_at(gate, up, h, n);
}

extern "C" __global__ void swiglu_forward_bf16(const float* gate, const float* up, bf16_bits* h,
                                               long n) {
    swiglu_forward_at(gate, up, h, n);
}

extern "C" __global__ void swiglu_backward(const float* dh, const float* gate, const float* up,
                                           float* dgate, float* dup, long n) {
    swiglu_backward_at(dh, gate, up, dgate, dup, n);
}

extern "C" __global__ void swiglu_backward_bf16(const float* dh, const float* gate,
                                                const float* up, bf16_bits* dgate,
                                                bf16_bits* dup, long n) {
    swiglu_backward_at(dh, gate, up, dgate, dup, n);
}
