// The residual stream's element-wise steps: adding a branch into the stream, and dropout on a
// branch's output with the CPU reference's mask (rng.rs, ops.rs `Dropout`): element (token, c)
// is dropped when unit(counter_hash(seed, [site, row, position, c])) < p, else scaled by
// keep_scale = 1 / (1 - p) (computed on the host in f32, as the CPU does). The same call on the
// output gradient is the backward pass.

typedef unsigned long long u64;

// SplitMix64's finalizer, as `rng::mix64`.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ u64 hash_step(u64 h, u64 c) {
    return mix64(h ^ (c * 0x9e3779b97f4a7c15ull));
}

// x += y, element-wise.
extern "C" __global__ void add_inplace(float* x, const float* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// x (`tokens x width`) *= mask / (1 - p); `rows[t]` and `positions[t]` are token t's batch row
// and RoPE position.
extern "C" __global__ void dropout_apply(float* x, const u32* rows, const u32* positions,
                                         int tokens, int width, float p, float keep_scale,
                                         u64 seed, u64 site) {
    long at = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= (long)tokens * width) return;
    long t = at / width;
    u64 c = (u64)(at % width);
    u64 h = mix64(seed ^ 0x6a09e667f3bcc909ull);
    h = hash_step(h, site);
    h = hash_step(h, (u64)rows[t]);
    h = hash_step(h, (u64)positions[t]);
    h = hash_step(h, c);
    float u = (float)(h >> 40) * (1.0f / 16777216.0f);
    x[at] = u < p ? 0.0f : x[at] * keep_scale;
}
