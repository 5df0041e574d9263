// RMSNorm, forward and backward, one warp per group of `width` values.
//
// `gain` may be null: that is the parameter-free per-head norm (Q/K/V/output norms), where a
// token's row is `heads` groups of `head_dim`. With a gain, a group is a whole row of
// `d_model`. `inv[g] = 1 / sqrt(mean(x^2) + eps)` is kept for the backward pass, which recomputes
// `xhat = x * inv` rather than storing it.

#define NORM_WARPS 8

// Every kernel here visits a group's values in one fixed order, so that kernels that must agree
// bit for bit (the fused attention-input kernels and the separate norm and RoPE kernels they
// replace) sum in the same order: lane l takes the pairs l, l + 32, ... (values 2p and 2p + 1,
// read and written through `load_pair` / `store_pair`), then, for an odd width, lane
// (width / 2) % 32 takes the last value alone (`odd_lane`).
__device__ __forceinline__ bool odd_lane(int width, int lane) {
    return (width & 1) && lane == ((width >> 1) & 31);
}

// `1 / sqrt(mean(x^2) + eps)` of one group `xs` of `width` values, summed by one warp in the
// order above, kept in `inv` by lane 0.
template <typename T>
__device__ __forceinline__ float group_inv_rms(const T* xs, int width, float eps, int lane,
                                               float* inv) {
    float sq = 0.0f;
    for (int p = lane; p < width >> 1; p += 32) {
        float a, b;
        load_pair(xs + 2 * p, a, b);
        sq += a * a;
        sq += b * b;
    }
    if (odd_lane(width, lane)) {
        float v = load_value(xs + width - 1);
        sq += v * v;
    }
    float r = 1.0f / sqrtf(warp_sum(sq) / (float)width + eps);
    if (lane == 0) *inv = r;
    return r;
}

// Built twice: f32 outputs, and (`_bf16`) outputs rounded to bf16 for a mixed-precision step,
// where products are their only readers; the f32 values before rounding are the same. `keep`
// (may be null) receives a copy of `x`: a residual block keeps its input for the backward pass,
// and copying it here spares a separate pass that reads the stream again.
template <typename Out>
__device__ __forceinline__ void rmsnorm_forward_at(const float* x, const float* gain, Out* y,
                                                   float* inv, int groups, int width, float eps,
                                                   float* keep) {
    int g = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (g >= groups) return;
    const float* xs = x + (long)g * width;
    float r = group_inv_rms(xs, width, eps, lane, inv + g);
    Out* ys = y + (long)g * width;
    float* ks = keep ? keep + (long)g * width : nullptr;
    for (int p = lane; p < width >> 1; p += 32) {
        int i = 2 * p;
        float a, b;
        load_pair(xs + i, a, b);
        if (ks) store_pair(ks + i, a, b);
        float ya = a * r, yb = b * r;
        if (gain) {
            float ga, gb;
            load_pair(gain + i, ga, gb);
            ya = ya * ga;
            yb = yb * gb;
        }
        store_pair(ys + i, ya, yb);
    }
    if (odd_lane(width, lane)) {
        int i = width - 1;
        float v = xs[i];
        if (ks) ks[i] = v;
        float xhat = v * r;
        store_value(ys + i, gain ? xhat * gain[i] : xhat);
    }
}

extern "C" __global__ void rmsnorm_forward(const float* x, const float* gain, float* y, float* inv,
                                           int groups, int width, float eps, float* keep) {
    rmsnorm_forward_at(x, gain, y, inv, groups, width, eps, keep);
}

extern "C" __global__ void rmsnorm_forward_bf16(const float* x, const float* gain, bf16_bits* y,
                                                float* inv, int groups, int width, float eps,
                                                float* keep) {
    rmsnorm_forward_at(x, gain, y, inv, groups, width, eps, keep);
}

// The per-head norm of the fused attention's inputs in one pass: each group (one head of one
// token) of the bf16 projection `x` normalized without a gain, then, with `positions`, rotated
// as `rope_apply` rotates it (rope.cu: element i pairs with i + head_dim/2, at the token's
// position), and written as bf16, the copy the attention kernels read; `inv` as in
// `rmsnorm_forward`. The f32 values before rounding are those of `rmsnorm_forward` then
// `rope_apply` on `x` widened to f32. `head_dim` is a multiple of 4 (the launcher checks), so
// both halves of a head split into pairs.
extern "C" __global__ void head_norm_rope_bf16(const bf16_bits* x, bf16_bits* y, float* inv,
                                               const u32* positions, const float* cos_table,
                                               const float* sin_table, int groups, int heads,
                                               int head_dim, float eps) {
    int g = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (g >= groups) return;
    const bf16_bits* xs = x + (long)g * head_dim;
    float r = group_inv_rms(xs, head_dim, eps, lane, inv + g);
    bf16_bits* ys = y + (long)g * head_dim;
    if (!positions) {
        for (int p = lane; p < head_dim >> 1; p += 32) {
            float a, b;
            load_pair(xs + 2 * p, a, b);
            store_pair(ys + 2 * p, a * r, b * r);
        }
        return;
    }
    int half = head_dim / 2;
    long pos = positions[g / heads];
    const float* cs = cos_table + pos * half;
    const float* sn = sin_table + pos * half;
    for (int q = lane; q < half >> 1; q += 32) {
        int i = 2 * q;
        float c0, c1, s0, s1, a0, a1, b0, b1;
        load_pair(cs + i, c0, c1);
        load_pair(sn + i, s0, s1);
        load_pair(xs + i, a0, a1);
        load_pair(xs + i + half, b0, b1);
        a0 = a0 * r;
        a1 = a1 * r;
        b0 = b0 * r;
        b1 = b1 * r;
        store_pair(ys + i, a0 * c0 - b0 * s0, a1 * c1 - b1 * s1);
        store_pair(ys + i + half, b0 * c0 + a0 * s0, b1 * c1 + a1 * s1);
    }
}

// Elements i and i + 1 (i even, both in the same half) of a head of `d`, rotated backwards as
// `rope_apply` with `inverse` rotates them (the same products in the same order), at position
// `pos`; `d` itself without a rotation.
template <typename T>
__device__ __forceinline__ void unrotated_pair(const T* d, int i, int half,
                                               const float* cos_table, const float* sin_table,
                                               long pos, bool rotate, float& u0, float& u1) {
    if (!rotate) {
        load_pair(d + i, u0, u1);
        return;
    }
    int k = i < half ? i : i - half;
    float c0, c1, s0, s1, a0, a1, b0, b1;
    load_pair(cos_table + pos * half + k, c0, c1);
    load_pair(sin_table + pos * half + k, s0, s1);
    s0 = -s0;
    s1 = -s1;
    load_pair(d + k, a0, a1);
    load_pair(d + k + half, b0, b1);
    if (i < half) {
        u0 = a0 * c0 - b0 * s0;
        u1 = a1 * c1 - b1 * s1;
    } else {
        u0 = b0 * c0 + a0 * s0;
        u1 = b1 * c1 + a1 * s1;
    }
}

// The backward of `head_norm_rope_bf16`: from the gradient `dy` w.r.t. its (rotated) outputs
// (bf16, as the attention's backward writes it), the gradient w.r.t. its (bf16) input `x`,
// written as bf16 for the projection's products, its only readers. Per element the same
// arithmetic, in the same order, as `rope_apply` (inverse) then `rmsnorm_backward` (no gain)
// into zeros, on `dy` and `x` widened to f32.
extern "C" __global__ void head_norm_rope_backward_bf16(const bf16_bits* dy, const bf16_bits* x,
                                                        const float* inv, const u32* positions,
                                                        const float* cos_table,
                                                        const float* sin_table, bf16_bits* dx,
                                                        int groups, int heads, int head_dim) {
    int g = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (g >= groups) return;
    long base = (long)g * head_dim;
    const bf16_bits* d = dy + base;
    float r = inv[g];
    int half = head_dim / 2;
    bool rotate = positions != 0;
    long pos = rotate ? (long)positions[g / heads] : 0;
    float dot = 0.0f;
    for (int p = lane; p < half; p += 32) {
        int i = 2 * p;
        float u0, u1, x0, x1;
        unrotated_pair(d, i, half, cos_table, sin_table, pos, rotate, u0, u1);
        load_pair(x + base + i, x0, x1);
        dot += u0 * x0 * r;
        dot += u1 * x1 * r;
    }
    dot = warp_sum(dot) / (float)head_dim;
    for (int p = lane; p < half; p += 32) {
        int i = 2 * p;
        float u0, u1, x0, x1;
        unrotated_pair(d, i, half, cos_table, sin_table, pos, rotate, u0, u1);
        load_pair(x + base + i, x0, x1);
        store_pair(dx + base + i, r * (u0 - x0 * r * dot), r * (u1 - x1 * r * dot));
    }
}

// dx += r * (dxhat - xhat * mean(dxhat * xhat)), with dxhat = dy * gain (or dy without a gain).
// `copy` (may be null) receives the updated dx rounded to bf16: a residual block's input norm
// writes the stream gradient that the next block's products read in bf16, so the rounding pass
// that would read it again is not needed.
__device__ __forceinline__ void dxhat_pair(const float* dy, const float* gain, long base, int i,
                                           float& a, float& b) {
    load_pair(dy + base + i, a, b);
    if (gain) {
        float ga, gb;
        load_pair(gain + i, ga, gb);
        a = a * ga;
        b = b * gb;
    }
}

extern "C" __global__ void rmsnorm_backward(const float* dy, const float* x, const float* inv,
                                            const float* gain, float* dx, int groups, int width,
                                            bf16_bits* copy) {
    int g = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (g >= groups) return;
    long base = (long)g * width;
    float r = inv[g];
    float dot = 0.0f;
    for (int p = lane; p < width >> 1; p += 32) {
        int i = 2 * p;
        float da, db, xa, xb;
        dxhat_pair(dy, gain, base, i, da, db);
        load_pair(x + base + i, xa, xb);
        dot += da * xa * r;
        dot += db * xb * r;
    }
    int last = width - 1;
    if (odd_lane(width, lane)) {
        float dxhat = gain ? dy[base + last] * gain[last] : dy[base + last];
        dot += dxhat * x[base + last] * r;
    }
    dot = warp_sum(dot) / (float)width;
    for (int p = lane; p < width >> 1; p += 32) {
        int i = 2 * p;
        float da, db, xa, xb, va, vb;
        dxhat_pair(dy, gain, base, i, da, db);
        load_pair(x + base + i, xa, xb);
        load_pair(dx + base + i, va, vb);
        va = va + r * (da - xa * r * dot);
        vb = vb + r * (db - xb * r * dot);
        store_pair(dx + base + i, va, vb);
        if (copy) store_pair(copy + base + i, va, vb);
    }
    if (odd_lane(width, lane)) {
        float dxhat = gain ? dy[base + last] * gain[last] : dy[base + last];
        float v = dx[base + last] + r * (dxhat - x[base + last] * r * dot);
        dx[base + last] = v;
        if (copy) copy[base + last] = f32_to_bf16(v);
    }
}

// dgain[c] += sum over rows of dy[row, c] * xhat[row, c], in two deterministic passes: the
// partial sum of each chunk of GAIN_CHUNK rows in row order, one thread per (column, chunk),
// then the chunks' sums in chunk order, one thread per column. The order depends on the shape
// alone, never on the launch; it differs from the CPU reference's single running sum by rounding.

#define GAIN_CHUNK 64

extern "C" __global__ void rmsnorm_gain_partial(const float* dy, const float* x, const float* inv,
                                                float* partial, int rows, int width) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= width) return;
    int chunks = (rows + GAIN_CHUNK - 1) / GAIN_CHUNK;
    for (int chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
        int end = min(rows, (chunk + 1) * GAIN_CHUNK);
        float acc = 0.0f;
        for (int row = chunk * GAIN_CHUNK; row < end; row++) {
            long at = (long)row * width + c;
            acc += dy[at] * (x[at] * inv[row]);
        }
        partial[(long)chunk * width + c] = acc;
    }
}

extern "C" __global__ void rmsnorm_gain_final(const float* partial, float* dgain, int chunks,
                                              int width) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= width) return;
    float acc = 0.0f;
    for (int chunk = 0; chunk < chunks; chunk++) acc += partial[(long)chunk * width + c];
    dgain[c] += acc;
}
