// Rotary position embedding with the half-split pairing: element i of a head pairs with element
// i + head_dim/2. `cos` and `sin` are the host-built tables (`positions x head_dim/2`, computed in
// f64 like the CPU reference); `positions[t]` is token t's position. `inverse` rotates backwards,
// which is the backward pass (the rotation is orthogonal). In place; one thread per pair.

extern "C" __global__ void rope_apply(float* x, const u32* positions, const float* cos_table,
                                      const float* sin_table, int tokens, int heads, int head_dim,
                                      int inverse) {
    int half = head_dim / 2;
    long pair = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= (long)tokens * heads * half) return;
    int i = (int)(pair % half);
    long head = pair / half;
    long token = head / heads;
    long pos = positions[token];
    float c = cos_table[pos * half + i];
    float s = sin_table[pos * half + i];
    if (inverse) s = -s;
    float* h = x + head * head_dim;
    float x1 = h[i], x2 = h[i + half];
    h[i] = x1 * c - x2 * s;
    h[i + half] = x2 * c + x1 * s;
}
