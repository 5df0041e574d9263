// Cross-entropy with z-loss over one chunk of logits (`tokens x vocab`, the chunk the matmul just
// wrote); one block per token. Per token: logZ = logsumexp(logits), ce = logZ - logit[target],
// z = z_loss * logZ^2. No probability matrix is kept: the backward pass writes the chunk's
// d(ce + z)/d(raw logits) = (softmax * (1 + 2 z_loss logZ) - onehot) * grad_scale,
// where grad_scale is the logit scale (d_model^-0.5) that the matmul applied. The backward grid
// puts tokens on y, so a chunk holds at most 65535 tokens.

extern "C" __global__ void cross_entropy_forward(const float* logits, const u32* targets,
                                                 float* log_z, float* ce, float* z, int tokens,
                                                 int vocab, float z_loss) {
    __shared__ float scratch[32];
    int t = blockIdx.x;
    if (t >= tokens) return;
    const float* l = logits + (long)t * vocab;
    float max = NEG_INF;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) max = fmaxf(max, l[v]);
    max = block_max(max, scratch);
    float sum = 0.0f;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) sum += expf(l[v] - max);
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) {
        float lz = max + logf(sum);
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
