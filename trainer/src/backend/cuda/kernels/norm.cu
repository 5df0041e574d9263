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
#pragma unroll 4
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
    float r = inv_rms(warp_sum(sq) / (float)width, eps);
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
#pragma unroll 4
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

// The fused attention's input kernels below take HEADS_PER_WARP heads per warp and issue every
// load of all of them before the first reduction: a head is only 64 to 256 bytes, and a warp
// with one keeps too few bytes in flight to come near memory bandwidth. They are built per head
// dim (the fused attention's: 32, 64, 128), so each lane's pairs are known at compile time, and
// they visit a head's values in the order above: pair p = lane + 32k sits in slot k.
#define HEADS_PER_WARP 4

// Two consecutive bf16 values, as stored (one 4-byte load where aligned, else two).
__device__ __forceinline__ u32 load_bits_pair(const bf16_bits* p) {
    if (((unsigned long long)p & 3ull) == 0) return *reinterpret_cast<const u32*>(p);
    return (u32)p[0] | ((u32)p[1] << 16);
}

__device__ __forceinline__ void unpack_pair(u32 w, float& a, float& b) {
    a = bf16_to_f32((bf16_bits)(w & 0xffffu));
    b = bf16_to_f32((bf16_bits)(w >> 16));
}

// The pair that RoPE rotates with slot k's pair (element i pairs with i + HD/2, so pair p with
// p ± HD/4): another slot of the same lane when HD/4 >= 32, else the same slot of lane
// `lane ^ HD/4`. Every lane of the warp calls it (it may shuffle).
template <int HD, int SLOTS>
__device__ __forceinline__ u32 rope_partner(const u32 (&w)[SLOTS], int k) {
    const int Q = HD / 4;
    if (Q >= 32) return w[(k + Q / 32) % SLOTS];
    return __shfl_xor_sync(0xffffffffu, w[k], Q);
}

// Loads the raw pairs of heads g0 .. g0 + HEADS_PER_WARP - 1 of `src` (zeros past `groups` and
// in the slots past a head's pairs), every load issued before any is used.
template <int HD, int SLOTS>
__device__ __forceinline__ void load_heads(const bf16_bits* src, long g0, int groups, int lane,
                                           u32 (&w)[HEADS_PER_WARP][SLOTS]) {
#pragma unroll
    for (int j = 0; j < HEADS_PER_WARP; j++) {
#pragma unroll
        for (int k = 0; k < SLOTS; k++) {
            int p = lane + 32 * k;
            bool here = p < HD / 2 && g0 + j < groups;
            w[j][k] = here ? load_bits_pair(src + (g0 + j) * HD + 2 * p) : 0u;
        }
    }
}

// The per-head norm of the fused attention's inputs in one pass: each group (one head of one
// token) of the bf16 projection `x` normalized without a gain, then, with `positions`, rotated
// as `rope_apply` rotates it (rope.cu: element i pairs with i + head_dim/2, at the token's
// position), and written as bf16, the copy the attention kernels read; `inv` as in
// `rmsnorm_forward`. The f32 values before rounding are those of `rmsnorm_forward` then
// `rope_apply` on `x` widened to f32: the same sums in the same order, the same products.
template <int HD>
__device__ __forceinline__ void head_norm_rope_at(const bf16_bits* x, bf16_bits* y, float* inv,
                                                  const u32* positions, const float* cos_table,
                                                  const float* sin_table, int groups, int heads,
                                                  float eps) {
    const int P = HD / 2, SLOTS = (P + 31) / 32, Q = HD / 4, HALF = HD / 2;
    int lane = threadIdx.x & 31;
    long g0 = ((long)blockIdx.x * NORM_WARPS + (threadIdx.x >> 5)) * HEADS_PER_WARP;
    if (g0 >= groups) return;
    u32 w[HEADS_PER_WARP][SLOTS];
    load_heads<HD, SLOTS>(x, g0, groups, lane, w);
    float r[HEADS_PER_WARP];
#pragma unroll
    for (int j = 0; j < HEADS_PER_WARP; j++) {
        float sq = 0.0f;
#pragma unroll
        for (int k = 0; k < SLOTS; k++) {
            if (lane + 32 * k < P) {
                float a, b;
                unpack_pair(w[j][k], a, b);
                sq += a * a;
                sq += b * b;
            }
        }
        r[j] = sq;
    }
#pragma unroll
    for (int j = 0; j < HEADS_PER_WARP; j++) {
        r[j] = inv_rms(warp_sum(r[j]) / (float)HD, eps);
        if (lane == 0 && g0 + j < groups) inv[g0 + j] = r[j];
    }
#pragma unroll
    for (int j = 0; j < HEADS_PER_WARP; j++) {
        long g = g0 + j;
        if (g >= groups) break;  // the same for the whole warp
        bf16_bits* ys = y + g * HD;
        long pos = positions ? (long)positions[g / heads] : 0;
#pragma unroll
        for (int k = 0; k < SLOTS; k++) {
            int p = lane + 32 * k;
            u32 other = positions ? rope_partner<HD, SLOTS>(w[j], k) : 0u;
            if (p >= P) continue;
            float a, b;
            unpack_pair(w[j][k], a, b);
            a = a * r[j];
            b = b * r[j];
            if (!positions) {
                store_pair(ys + 2 * p, a, b);
                continue;
            }
            float pa, pb, c0, c1, s0, s1;
            unpack_pair(other, pa, pb);
            pa = pa * r[j];
            pb = pb * r[j];
            int m = p < Q ? 2 * p : 2 * p - HALF;  // the index into the tables
            load_pair(cos_table + pos * HALF + m, c0, c1);
            load_pair(sin_table + pos * HALF + m, s0, s1);
            if (p < Q) {
                // x1 = own, x2 = partner: x1 * c - x2 * s
                store_pair(ys + 2 * p, a * c0 - pa * s0, b * c1 - pb * s1);
            } else {
                // x2 = own, x1 = partner: x2 * c + x1 * s
                store_pair(ys + 2 * p, a * c0 + pa * s0, b * c1 + pb * s1);
            }
        }
    }
}

// The backward of `head_norm_rope_bf16`: from the gradient `dy` w.r.t. its (rotated) outputs
// (bf16, as the attention's backward writes it), the gradient w.r.t. its (bf16) input `x`,
// written as bf16 for the projection's products, its only readers. Per element the same
// arithmetic, in the same order, as `rope_apply` (inverse) then `rmsnorm_backward` (no gain)
// into zeros, on `dy` and `x` widened to f32.
template <int HD>
__device__ __forceinline__ void head_norm_rope_backward_at(const bf16_bits* dy,
                                                           const bf16_bits* x, const float* inv,
                                                           const u32* positions,
                                                           const float* cos_table,
                                                           const float* sin_table, bf16_bits* dx,
                                                           int groups, int heads) {
    const int P = HD / 2, SLOTS = (P + 31) / 32, Q = HD / 4, HALF = HD / 2;
    int lane = threadIdx.x & 31;
    long g0 = ((long)blockIdx.x * NORM_WARPS + (threadIdx.x >> 5)) * HEADS_PER_WARP;
    if (g0 >= groups) return;
    u32 dw[HEADS_PER_WARP][SLOTS], xw[HEADS_PER_WARP][SLOTS];
    load_heads<HD, SLOTS>(dy, g0, groups, lane, dw);
    load_heads<HD, SLOTS>(x, g0, groups, lane, xw);
    // dxhat: dy rotated backwards (as `rope_apply` with `inverse`), or dy itself.
    float u[HEADS_PER_WARP][SLOTS][2], r[HEADS_PER_WARP], dot[HEADS_PER_WARP];
#pragma unroll
    for (int j = 0; j < HEADS_PER_WARP; j++) {
        long g = g0 + j;
        bool live = g < groups;  // the same for the whole warp
        r[j] = live ? inv[g] : 0.0f;
        long pos = positions && live ? (long)positions[g / heads] : 0;
        dot[j] = 0.0f;
#pragma unroll
        for (int k = 0; k < SLOTS; k++) {
            int p = lane + 32 * k;
            u32 other = positions ? rope_partner<HD, SLOTS>(dw[j], k) : 0u;
            float a, b;
            unpack_pair(dw[j][k], a, b);
            if (positions && live && p < P) {
                float pa, pb, c0, c1, s0, s1;
                unpack_pair(other, pa, pb);
                int m = p < Q ? 2 * p : 2 * p - HALF;
                load_pair(cos_table + pos * HALF + m, c0, c1);
                load_pair(sin_table + pos * HALF + m, s0, s1);
                s0 = -s0;
                s1 = -s1;
                if (p < Q) {
                    // x1 = own, x2 = partner: x1 * c - x2 * s
                    a = a * c0 - pa * s0;
                    b = b * c1 - pb * s1;
                } else {
                    // x2 = own, x1 = partner: x2 * c + x1 * s
                    a = a * c0 + pa * s0;
                    b = b * c1 + pb * s1;
                }
            }
            u[j][k][0] = a;
            u[j][k][1] = b;
            if (p < P) {
                float x0, x1;
                unpack_pair(xw[j][k], x0, x1);
                dot[j] += a * x0 * r[j];
                dot[j] += b * x1 * r[j];
            }
        }
    }
#pragma unroll
    for (int j = 0; j < HEADS_PER_WARP; j++) dot[j] = warp_sum(dot[j]) / (float)HD;
#pragma unroll
    for (int j = 0; j < HEADS_PER_WARP; j++) {
        long g = g0 + j;
        if (g >= groups) break;
#pragma unroll
        for (int k = 0; k < SLOTS; k++) {
            int p = lane + 32 * k;
            if (p >= P) continue;
            float x0, x1;
            unpack_pair(xw[j][k], x0, x1);
            store_pair(dx + g * HD + 2 * p, r[j] * (u[j][k][0] - x0 * r[j] * dot[j]),
                       r[j] * (u[j][k][1] - x1 * r[j] * dot[j]));
        }
    }
}

// The entry points of head dim HD, named in full where they are defined.
#define HEAD_NORM_ENTRIES(HD, FORWARD, BACKWARD)                                                  \
    extern "C" __global__ void FORWARD(const bf16_bits* x, bf16_bits* y, float* inv,               \
                                       const u32* positions, const float* cos_table,              \
                                       const float* sin_table, int groups, int heads, float eps) { \
        head_norm_rope_at<HD>(x, y, inv, positions, cos_table, sin_table, groups, heads, eps);    \
    }                                                                                             \
    extern "C" __global__ void BACKWARD(const bf16_bits* dy, const bf16_bits* x, const float* inv, \
                                        const u32* positions, const float* cos_table,             \
                                        const float* sin_table, bf16_bits* dx, int groups,        \
                                        int heads) {                                              \
        head_norm_rope_backward_at<HD>(dy, x, inv, positions, cos_table, sin_table, dx, groups,   \
                                       heads);                                                    \
    }

HEAD_NORM_ENTRIES(32, head_norm_rope_bf16_d32, head_norm_rope_backward_bf16_d32)
HEAD_NORM_ENTRIES(64, head_norm_rope_bf16_d64, head_norm_rope_backward_bf16_d64)
HEAD_NORM_ENTRIES(128, head_norm_rope_bf16_d128, head_norm_rope_backward_bf16_d128)

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
#pragma unroll 4
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
#pragma unroll 4
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
