// Masked softmax over attention scores, forward and backward; one warp per query line.
//
// Scores are `rows x heads x max_q x max_k` (padded per row of the batch); row r's real block is
// its own `q_len x k_len`. `rows_desc` holds six ints per row, the CPU reference's `AttnRow`:
// q_start, q_len, k_start, k_len, causal, bidirectional_prefix. Query i sees key j unless
// `causal && j > i` and not both inside the bidirectional prefix; with document ids (`q_doc`,
// `k_doc` indexed by q_start + i and k_start + j, both may be null) only keys of its own document.
// Masked and padded entries get probability 0; a query that sees no key gets all zeros.

#define ROW_FIELDS 6

__device__ __forceinline__ bool key_allowed(const int* row, int i, int j, const u32* q_doc,
                                            const u32* k_doc) {
    int causal = row[4], prefix = row[5];
    if (causal && j > i && !(i < prefix && j < prefix)) return false;
    if (q_doc) return q_doc[row[0] + i] == k_doc[row[2] + j];
    return true;
}

// P = softmax(scale * S + mask) along keys.
extern "C" __global__ void masked_softmax_forward(const float* scores, float* probs,
                                                  const int* rows_desc, const u32* q_doc,
                                                  const u32* k_doc, int n_rows, int heads,
                                                  int max_q, int max_k, float scale) {
    long line = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (line >= (long)n_rows * heads * max_q) return;
    int i = (int)(line % max_q);
    const int* row = rows_desc + (line / max_q / heads) * ROW_FIELDS;
    const float* s = scores + line * max_k;
    float* p = probs + line * max_k;
    bool live = i < row[1];
    float max = NEG_INF;
    int nan = 0;
    for (int j = lane; j < max_k; j += 32) {
        if (live && j < row[3] && key_allowed(row, i, j, q_doc, k_doc)) {
            float x = scale * s[j];
            nan |= x != x;
            max = fmaxf(max, x);
        }
    }
    max = warp_max(max);
    // fmaxf drops NaN: a row with a NaN score is NaN (a row of NaN scores is not a masked row).
    for (int offset = 16; offset > 0; offset >>= 1) nan |= __shfl_xor_sync(0xffffffffu, nan, offset);
    if (nan) max = QNAN;
    float sum = 0.0f;
    for (int j = lane; j < max_k; j += 32) {
        bool on = max != NEG_INF && live && j < row[3] && key_allowed(row, i, j, q_doc, k_doc);
        float e = on ? expf(scale * s[j] - max) : 0.0f;
        p[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = lane; j < max_k; j += 32) p[j] *= inv;
}

// dS = scale * P * (dP - sum_j P * dP): the gradient w.r.t. the unscaled scores.
extern "C" __global__ void masked_softmax_backward(const float* probs, const float* dprobs,
                                                   float* dscores, int lines, int max_k,
                                                   float scale) {
    long line = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (line >= lines) return;
    const float* p = probs + line * max_k;
    const float* dp = dprobs + line * max_k;
    float dot = 0.0f;
    for (int j = lane; j < max_k; j += 32) dot += p[j] * dp[j];
    dot = warp_sum(dot);
    float* ds = dscores + line * max_k;
    for (int j = lane; j < max_k; j += 32) ds[j] = p[j] * (dp[j] - dot) * scale;
}
