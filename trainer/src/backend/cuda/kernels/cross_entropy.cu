// Cross-entropy with z-loss over one chunk of logits (`tokens x vocab`, the chunk the matmul just
// wrote); one block per token. Per token: logZ = logsumexp(logits), ce = logZ - logit[target],
// z = z_loss * logZ^2. No probability matrix is kept: the backward pass writes the chunk's
// d(ce + z)/d(raw logits) = (softmax * (1 + 2 z_loss logZ) - onehot) * grad_scale,
// where grad_scale is the logit scale (d_model^-0.5) that the matmul applied. The backward grid
// puts tokens on y, so a chunk holds at most 65535 tokens.

// (m, s) summarizes values x as their maximum m and s = Σ exp(x - m); `lse_merge` folds
// (m2, s2) into (m, s). An empty summary is (-inf, 0).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    float mx = fmaxf(m, m2);
    if (mx == NEG_INF) return;
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}

// One pass over the token's logits (the two-pass max-then-sum read each chunk from memory twice,
// since a chunk is far larger than L2): each thread keeps a running (m, s), rescaling its sum when
// its maximum rises; then the warps' and the block's summaries merge in a fixed order.
extern "C" __global__ void cross_entropy_forward(const float* logits, const u32* targets,
                                                 float* log_z, float* ce, float* z, int tokens,
                                                 int vocab, float z_loss) {
    __shared__ float scratch_m[32], scratch_s[32];
    int t = blockIdx.x;
    if (t >= tokens) return;
    const float* l = logits + (long)t * vocab;
    float m = NEG_INF, s = 0.0f;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        float x = l[v];
        if (x > m) {
            s = s * expf(m - x) + 1.0f;
            m = x;
        } else if (x != NEG_INF) {
            s += expf(x - m);
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        lse_merge(m, s, m2, s2);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        scratch_m[warp] = m;
        scratch_s[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        m = scratch_m[0];
        s = scratch_s[0];
        int warps = blockDim.x >> 5;
        for (int w = 1; w < warps; w++) lse_merge(m, s, scratch_m[w], scratch_s[w]);
        float lz = m + logf(s);
        log_z[t] = lz;
        ce[t] = lz - l[targets[t]];
        z[t] = z_loss * lz * lz;
    }
}

// The gradient goes into its own buffer, f32 or (`_bf16`) bf16 for the mixed-precision products
// that are its only readers: the same values, rounded. The logits are left as they are.
template <typename Out>
__device__ __forceinline__ void cross_entropy_backward_at(const float* logits, Out* grad,
                                                          const u32* targets, const float* log_z,
                                                          int tokens, int vocab, float z_loss,
                                                          float grad_scale) {
    int t = blockIdx.y;
    int v = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens || v >= vocab) return;
    float lz = log_z[t];
    long at = (long)t * vocab + v;
    float g = expf(logits[at] - lz) * (1.0f + 2.0f * z_loss * lz) -
              (v == (int)targets[t] ? 1.0f : 0.0f);
    store_value(grad + at, g * grad_scale);
}

extern "C" __global__ void cross_entropy_backward(const float* logits, float* grad,
                                                  const u32* targets, const float* log_z,
                                                  int tokens, int vocab, float z_loss,
                                                  float grad_scale) {
    cross_entropy_backward_at(logits, grad, targets, log_z, tokens, vocab, z_loss, grad_scale);
}

extern "C" __global__ void cross_entropy_backward_bf16(const float* logits, bf16_bits* grad,
                                                       const u32* targets, const float* log_z,
                                                       int tokens, int vocab, float z_loss,
                                                       float grad_scale) {
    cross_entropy_backward_at(logits, grad, targets, log_z, tokens, vocab, z_loss, grad_scale);
}
