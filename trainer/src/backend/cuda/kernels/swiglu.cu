// SwiGLU: h = silu(gate) * up, and its backward. Element-wise, one thread per element. Each is
// built twice: all f32, and (`_bf16`) all bf16 for a mixed-precision step, where gate, up and
// dh come straight from products that write bf16 and products are the outputs' only readers.
// Arithmetic is f32 in both.

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__device__ __forceinline__ void swiglu_forward_at(const T* gate, const T* up, T* h, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = load_value(gate + i);
    store_value(h + i, g * sigmoid(g) * load_value(up + i));
}

template <typename T>
__device__ __forceinline__ void swiglu_backward_at(const T* dh, const T* gate, const T* up,
                                                   T* dgate, T* dup, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = load_value(gate + i), u = load_value(up + i), d = load_value(dh + i);
    float s = sigmoid(g);
    store_value(dup + i, d * g * s);
    store_value(dgate + i, d * u * s * (1.0f + g * (1.0f - s)));
}

extern "C" __global__ void swiglu_forward(const float* gate, const float* up, float* h, long n) {
    swiglu_forward_at(gate, up, h, n);
}

extern "C" __global__ void swiglu_forward_bf16(const bf16_bits* gate, const bf16_bits* up,
                                               bf16_bits* h, long n) {
    swiglu_forward_at(gate, up, h, n);
}

extern "C" __global__ void swiglu_backward(const float* dh, const float* gate, const float* up,
                                           float* dgate, float* dup, long n) {
    swiglu_backward_at(dh, gate, up, dgate, dup, n);
}

extern "C" __global__ void swiglu_backward_bf16(const bf16_bits* dh, const bf16_bits* gate,
                                                const bf16_bits* up, bf16_bits* dgate,
                                                bf16_bits* dup, long n) {
    swiglu_backward_at(dh, gate, up, dgate, dup, n);
}
