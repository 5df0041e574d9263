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
    if (mx == NEG_INF) {
        // Two empty summaries, or NaN sums behind them: keep the NaN.
        s += s2;
        return;
    }
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}

// Folds one logit into a thread's running (m, s), rescaling the sum when the maximum rises.
__device__ __forceinline__ void lse_push(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
    } else if (x != NEG_INF) {
        s += expf(x - m);
    }
}

// Merges the threads' summaries, the warps' by a fixed shuffle tree and the block's in warp
// order, and returns logZ to thread 0 (the other threads' results are partial). Thread 0 also
// writes the token's log Z, cross-entropy and z-loss.
__device__ __forceinline__ float lse_finish(float m, float s, const float* l, const u32* targets,
                                            float* log_z, float* ce, float* z, int t,
                                            float z_loss) {
    __shared__ float scratch_m[32], scratch_s[32];
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
        return lz;
    }
    return 0.0f;
}

// One pass over the token's logits (the two-pass max-then-sum read each chunk from memory twice,
// since a chunk is far larger than L2): each thread keeps a running (m, s) over the logits
// threadIdx.x, + blockDim.x, ... in that order; then the summaries merge in a fixed order.
extern "C" __global__ void cross_entropy_forward(const float* logits, const u32* targets,
                                                 float* log_z, float* ce, float* z, int tokens,
                                                 int vocab, float z_loss) {
    int t = blockIdx.x;
    if (t >= tokens) return;
    const float* l = logits + (long)t * vocab;
    float m = NEG_INF, s = 0.0f;
    // Unrolled so that several loads are in flight while the running sum waits on each.
#pragma unroll 8
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) lse_push(m, s, l[v]);
    lse_finish(m, s, l, targets, log_z, ce, z, t, z_loss);
}

// The gradient goes into its own buffer, f32 or (`_bf16`) bf16 for the mixed-precision products
// that are its only readers: the same values, rounded. The logits are left as they are. Each
// thread takes 4 consecutive logits (one 16-byte load where aligned, else one at a time).
__device__ __forceinline__ float ce_grad(float logit, float lz, float z_loss, bool target) {
    return expf(logit - lz) * (1.0f + 2.0f * z_loss * lz) - (target ? 1.0f : 0.0f);
}

template <typename Out>
__device__ __forceinline__ void cross_entropy_backward_at(const float* logits, Out* grad,
                                                          const u32* targets, const float* log_z,
                                                          int tokens, int vocab, float z_loss,
                                                          float grad_scale) {
    int t = blockIdx.y;
    int v0 = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (t >= tokens || v0 >= vocab) return;
    float lz = log_z[t];
    int target = (int)targets[t];
    long at = (long)t * vocab + v0;
    if (v0 + 4 <= vocab && aligned16(logits + at) &&
        ((unsigned long long)(grad + at) & (4 * sizeof(Out) - 1)) == 0) {
        float4 q = *reinterpret_cast<const float4*>(logits + at);
        float g[4] = {ce_grad(q.x, lz, z_loss, v0 == target) * grad_scale,
                      ce_grad(q.y, lz, z_loss, v0 + 1 == target) * grad_scale,
                      ce_grad(q.z, lz, z_loss, v0 + 2 == target) * grad_scale,
                      ce_grad(q.w, lz, z_loss, v0 + 3 == target) * grad_scale};
        store_pair(grad + at, g[0], g[1]);
        store_pair(grad + at + 2, g[2], g[3]);
        return;
    }
    for (int v = v0; v < vocab && v < v0 + 4; v++) {
        long a = (long)t * vocab + v;
        store_value(grad + a, ce_grad(logits[a], lz, z_loss, v == target) * grad_scale);
    }
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

// Forward and backward of a training step's chunk with one read of the logits instead of two:
// each thread holds its CE_PER_THREAD logits in registers (so `vocab <= blockDim.x ·
// CE_PER_THREAD`), folds them in `cross_entropy_forward`'s order, and once the block has log Z
// writes their gradients as `cross_entropy_backward` does. The same bits as those two kernels.
#define CE_PER_THREAD 64

template <typename Out>
__device__ __forceinline__ void cross_entropy_fused_at(const float* logits, const u32* targets,
                                                       float* log_z, float* ce, float* z,
                                                       Out* grad, int tokens, int vocab,
                                                       float z_loss, float grad_scale) {
    __shared__ float block_lz;
    int t = blockIdx.x;
    if (t >= tokens) return;
    const float* l = logits + (long)t * vocab;
    float x[CE_PER_THREAD];
#pragma unroll
    for (int i = 0; i < CE_PER_THREAD; i++) {
        int v = threadIdx.x + i * blockDim.x;
        x[i] = v < vocab ? l[v] : NEG_INF;  // -inf folds as nothing
    }
    float m = NEG_INF, s = 0.0f;
#pragma unroll
    for (int i = 0; i < CE_PER_THREAD; i++) lse_push(m, s, x[i]);
    float lz = lse_finish(m, s, l, targets, log_z, ce, z, t, z_loss);
    if (threadIdx.x == 0) block_lz = lz;
    __syncthreads();
    lz = block_lz;
    Out* gt = grad + (long)t * vocab;
    int target = (int)targets[t];
#pragma unroll
    for (int i = 0; i < CE_PER_THREAD; i++) {
        int v = threadIdx.x + i * blockDim.x;
        if (v < vocab) {
            float g = expf(x[i] - lz) * (1.0f + 2.0f * z_loss * lz) - (v == target ? 1.0f : 0.0f);
            store_value(gt + v, g * grad_scale);
        }
    }
}

extern "C" __global__ void cross_entropy_fused(const float* logits, const u32* targets,
                                               float* log_z, float* ce, float* z, float* grad,
                                               int tokens, int vocab, float z_loss,
                                               float grad_scale) {
    cross_entropy_fused_at(logits, targets, log_z, ce, z, grad, tokens, vocab, z_loss, grad_scale);
}

extern "C" __global__ void cross_entropy_fused_bf16(const float* logits, const u32* targets,
                                                    float* log_z, float* ce, float* z,
                                                    bf16_bits* grad, int tokens, int vocab,
                                                    float z_loss, float grad_scale) {
    cross_entropy_fused_at(logits, targets, log_z, ce, z, grad, tokens, vocab, z_loss, grad_scale);
}
