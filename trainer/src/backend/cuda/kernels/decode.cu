// Attention of new tokens against a key/value cache (incremental decoding), f32.
//
// The caches hold, per decoded row, `capacity` slots of `heads * head_dim` values (keys already
// normalized and rotated, values normalized): row r's slot j at (r * capacity + j) * da. Token t
// reads row `token_row[t]` and sees its first `token_keys[t]` slots (a prefix: causal attention
// over the cache, or every slot of a bidirectional prompt, or the whole encoder output for
// cross-attention). One warp per (token, head): each lane folds the keys j = lane, lane + 32, ...
// into an online softmax (running max, sum and weighted values), then the lanes merge in a fixed
// order, so the result is deterministic.

#define DECODE_MAX_HEAD_DIM 128

extern "C" __global__ void decode_attention(const float* q, const float* k_cache,
                                            const float* v_cache, const u32* token_row,
                                            const u32* token_keys, float* out, int tokens,
                                            int heads, int head_dim, int capacity, float scale) {
    long warp = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= (long)tokens * heads) return;
    int t = (int)(warp / heads);
    int h = (int)(warp % heads);
    long da = (long)heads * head_dim;
    const float* qh = q + t * da + (long)h * head_dim;
    long base = (long)token_row[t] * capacity * da + (long)h * head_dim;
    const float* kb = k_cache + base;
    const float* vb = v_cache + base;
    int n = (int)token_keys[t];
    float m = NEG_INF, l = 0.0f;
    float acc[DECODE_MAX_HEAD_DIM];
    for (int d = 0; d < head_dim; d++) acc[d] = 0.0f;
    for (int j = lane; j < n; j += 32) {
        const float* kj = kb + j * da;
        const float* vj = vb + j * da;
        float s = 0.0f;
        for (int d = 0; d < head_dim; d++) s += qh[d] * kj[d];
        s *= scale;
        float m_new = fmaxf(m, s);
        float keep = m == NEG_INF ? 0.0f : expf(m - m_new);
        float p = expf(s - m_new);
        l = l * keep + p;
        for (int d = 0; d < head_dim; d++) acc[d] = acc[d] * keep + p * vj[d];
        m = m_new;
    }
    float m_all = warp_max(m);
    float c = m == NEG_INF ? 0.0f : expf(m - m_all);
    float l_all = warp_sum(l * c);
    float inv = 1.0f / l_all;
    float* o = out + t * da + (long)h * head_dim;
    for (int d = 0; d < head_dim; d++) {
        float v = warp_sum(acc[d] * c);
        if (lane == 0) o[d] = v * inv;
    }
}

// Copies `tokens` rows of `width` values from `src` into the cache: token t goes to slot
// `token_slot[t]` (row * capacity + index) of `cache`.
extern "C" __global__ void decode_cache_append(const float* src, float* cache,
                                               const u32* token_slot, int tokens, int width) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)tokens * width) return;
    long t = i / width;
    cache[(long)token_slot[t] * width + i % width] = src[i];
}
