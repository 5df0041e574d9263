// Embedding lookup and its deterministic backward.
//
// Backward without atomics: the host links the tokens that share a vocabulary id into chains in
// token order (`first[k]` starts chain k, `next[t]` is the next token with t's id or -1). One
// thread per (chain, column) adds the chain's gradient rows into the embedding row it owns, in
// token order, which is the CPU reference's order: the result is bit-for-bit the CPU's.

extern "C" __global__ void embedding_forward(const float* embed, const u32* tokens, float* out,
                                             int n_tokens, int d) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tokens * d) return;
    long t = i / d;
    int c = (int)(i % d);
    out[i] = embed[(long)tokens[t] * d + c];
}

extern "C" __global__ void embedding_backward(const float* dx, const u32* tokens, const int* first,
                                              const int* next, int chains, int d,
                                              float* d_embed) {
    int chain = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (chain >= chains || c >= d) return;
    int t = first[chain];
    float* dst = d_embed + (long)tokens[t] * d + c;
    float acc = *dst;
    for (; t >= 0; t = next[t]) acc += dx[(long)t * d + c];
    *dst = acc;
}
