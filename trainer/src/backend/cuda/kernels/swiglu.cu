// SwiGLU: h = silu(gate) * up, and its backward. Element-wise, one thread per element.

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void swiglu_forward(const float* gate, const float* up, float* h, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    h[i] = g * sigmoid(g) * up[i];
}

extern "C" __global__ void swiglu_backward(const float* dh, const float* gate, const float* up,
                                           float* dgate, float* dup, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i], u = up[i], d = dh[i];
    float s = sigmoid(g);
    dup[i] = d * g * s;
    dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
}
