// SwiGLU: h = silu(gate) * up, and its backward. Element-wise, 16 bytes of each array per
// thread. Each is built twice: all f32, and (`_bf16`) all bf16 for a mixed-precision step, where
// gate, up and dh come straight from products that write bf16 and products are the outputs'
// only readers. Arithmetic is f32 in both.

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Each thread takes `Lanes<T>::n` consecutive elements (16 bytes of each array) through vector
// accesses, or one at a time at the end of the arrays or where an array is not 16-byte
// aligned; per element the arithmetic is the same either way.
template <typename T>
__device__ __forceinline__ void swiglu_forward_at(const T* gate, const T* up, T* h, long n) {
    const int V = Lanes<T>::n;
    long i0 = ((long)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i0 >= n) return;
    if (i0 + V <= n && aligned16(gate) && aligned16(up) && aligned16(h)) {
        float g[V], u[V];
        load16(gate + i0, g);
        load16(up + i0, u);
#pragma unroll
        for (int k = 0; k < V; k++) g[k] = g[k] * sigmoid(g[k]) * u[k];
        store16(h + i0, g);
        return;
    }
    for (long i = i0; i < n && i < i0 + V; i++) {
        float g = load_value(gate + i);
        store_value(h + i, g * sigmoid(g) * load_value(up + i));
    }
}

template <typename T>
__device__ __forceinline__ void swiglu_backward_at(const T* dh, const T* gate, const T* up,
                                                   T* dgate, T* dup, long n) {
    const int V = Lanes<T>::n;
    long i0 = ((long)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i0 >= n) return;
    if (i0 + V <= n && aligned16(dh) && aligned16(gate) && aligned16(up) && aligned16(dgate) &&
        aligned16(dup)) {
        float g[V], u[V], d[V], du[V];
        load16(gate + i0, g);
        load16(up + i0, u);
        load16(dh + i0, d);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float s = sigmoid(g[k]);
            du[k] = d[k] * g[k] * s;
            g[k] = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
        }
        store16(dup + i0, du);
        store16(dgate + i0, g);
        return;
    }
    for (long i = i0; i < n && i < i0 + V; i++) {
        float g = load_value(gate + i), u = load_value(up + i), d = load_value(dh + i);
        float s = sigmoid(g);
        store_value(dup + i, d * g * s);
        store_value(dgate + i, d * u * s * (1.0f + g * (1.0f - s)));
    }
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
