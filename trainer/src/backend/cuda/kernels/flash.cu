// Fused ("flash") attention for the bf16 mode: softmax(scale * Q Kᵀ + mask) V per (row, head)
// without ever storing the score matrix, forward and backward, on the tensor cores through
// `mma.sync.m16n8k16` (bf16 operands, f32 accumulation).
//
// Q, K, V and dO arrive as bf16 copies of the model's token streams (`tokens x heads·D`, rows
// packed one after another), and the outputs O, dQ, dK and dV are bf16 streams too (their
// readers, the products, the head norms and `flash_delta`, read bf16). `rows_desc` holds six
// ints per batch row as in softmax.cu (q_start, q_len, k_start, k_len, causal, bidirectional
// prefix), and `q_doc`/`k_doc` (both null, or both set) restrict a query to the keys of its own
// document. Scores, the softmax and every accumulator stay f32. A query that sees no key outputs
// zeros. A warp whose whole tile is visible (inside the row, below the causal diagonal or inside
// the bidirectional prefix, one document) skips the per-score test (`all_visible`); the results
// are the same bits either way. Tiles reach shared memory through `cp.async` (16 bytes per copy,
// rows past a row's end zero-filled), so a block keeps every load of a tile in flight at once.
//
// The softmax runs in base 2: `scale_log2 = scale · log2(e)`, and the log-sum-exp that the
// forward pass leaves for the backward (`lse`, `rows x heads x max_q`) is `log2 Σ 2^(x - max) +
// max` of the base-2 scores (+inf for a query that sees nothing, so its probabilities are 0).
//
// The backward pass is two kernels, each summing in a fixed order with no atomics, so the
// gradients are deterministic: `flash_backward_kv` (one block per key tile: dK and dV over the
// query tiles) and `flash_backward_q` (one block per query tile: dQ over the key tiles), both
// recomputing the probabilities from `lse`; `flash_delta` first forms `delta = rowsum(dO ⊙ O)`.
//
// Fragment layouts of m16n8k16 (lane = 4·g + t): A (16 x 16, row-major) registers hold the pairs
// (row g, k 2t..2t+1), (row g+8, k 2t), (row g, k 2t+8), (row g+8, k 2t+8); B (16 x 8) registers
// hold (k 2t..2t+1, col g) and (k 2t+8.., col g); C holds (row g, cols 2t, 2t+1) and (row g+8,
// cols 2t, 2t+1). The lower k of a pair sits in the lower 16 bits. Two adjacent C tiles of a
// score matrix are therefore exactly the A fragment of the next product.

#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * 32)
// Keys per tile in the forward pass (queries per forward / dQ block: 16 per warp).
#define FA_BK 64
// Keys per dK/dV block (16 per warp) and queries per tile there; keys per tile in the dQ pass.
#define FB_BK 64
#define FB_BQ 32
#define FQ_BK 32

#define POS_INF __int_as_float(0x7f800000)

struct RowDesc {
    int q_start, q_len, k_start, k_len, causal, prefix;
};

__device__ __forceinline__ RowDesc row_desc(const int* rows_desc, int r) {
    const int* d = rows_desc + r * 6;
    RowDesc out = {d[0], d[1], d[2], d[3], d[4], d[5]};
    return out;
}

// Whether query i sees key j (indices within the row; both known to be inside it).
__device__ __forceinline__ bool sees(const RowDesc& row, int i, int j, const u32* q_doc,
                                     const u32* k_doc) {
    if (row.causal && j > i && !(i < row.prefix && j < row.prefix)) return false;
    if (q_doc) return q_doc[row.q_start + i] == k_doc[row.k_start + j];
    return true;
}

// One past the last key any query in [i0, i1) can see: the causal bound, widened by the prefix.
__device__ __forceinline__ int key_end(const RowDesc& row, int i0, int i1) {
    if (!row.causal) return row.k_len;
    int end = min(i1, row.q_len);
    if (i0 < row.prefix) end = max(end, row.prefix);
    return min(end, row.k_len);
}

// The first query that can see any key in [j0, ...): causal rows skip queries before j0.
__device__ __forceinline__ int query_begin(const RowDesc& row, int j0) {
    if (!row.causal || j0 < row.prefix) return 0;
    return j0;
}

// The (tile, head, row) a block works on. Blocks start roughly in the order of their linear
// index, and in a causal row the tiles differ in work: a later query tile sees more keys. So
// the heaviest tile of every (row, head) is handed
// out first, then the next heaviest, and so on: long blocks start early and the last wave holds
// short ones. The grid still covers every (tile, head, row) once, each computed the same way
// whatever its place in the order; only the order in which they run changes. For the query-tile kernels (forward, dQ), where the last
// tile is the heaviest.
struct BlockWork {
    int tile, h, r;
};

__device__ __forceinline__ BlockWork last_tiles_first() {
    unsigned per_tile = gridDim.y * gridDim.z;
    unsigned lin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned rank = lin / per_tile, rest = lin % per_tile;
    BlockWork w = {(int)(gridDim.x - 1 - rank), (int)(rest % gridDim.y), (int)(rest / gridDim.y)};
    return w;
}

// Whether every query in [q0, q1) sees every key in [k0, k1) (non-empty ranges of row indices):
// both inside the row, no causal cut between them, and one document for all. Document indices
// never decrease along a row, so equal ends mean one document throughout. A tile for which this
// holds skips the per-score test (`Full<true>`), which would pass everywhere.
__device__ __forceinline__ bool all_visible(const RowDesc& row, int q0, int q1, int k0, int k1,
                                            const u32* q_doc, const u32* k_doc) {
    if (q1 > row.q_len || k1 > row.k_len) return false;
    if (row.causal && k1 - 1 > q0 && !(q1 <= row.prefix && k1 <= row.prefix)) return false;
    if (q_doc) {
        u32 d = q_doc[row.q_start + q0];
        return q_doc[row.q_start + q1 - 1] == d && k_doc[row.k_start + k0] == d &&
               k_doc[row.k_start + k1 - 1] == d;
    }
    return true;
}

// A compile-time flag for the two versions of a score loop: `Full<true>` for a tile whose
// scores are all visible (no test), `Full<false>` for one that tests each score.
template <bool B>
struct Full {
    static constexpr bool value = B;
};

// Whether query i sees key j, where `F::value` says the whole tile is visible.
template <typename F>
__device__ __forceinline__ bool visible(F, const RowDesc& row, int i, int j, const u32* q_doc,
                                        const u32* k_doc) {
    return F::value || (i < row.q_len && j < row.k_len && sees(row, i, j, q_doc, k_doc));
}

__device__ __forceinline__ u32 pack2_bits(bf16_bits lo, bf16_bits hi) {
    return (u32)lo | ((u32)hi << 16);
}

// The inline-PTX primitives, in one place: cuda-emu/cpp/cuda_emu.h gives its own versions (same
// names and contracts) so that the kernels' numerics can be checked on a CPU.
#ifndef REDPACK_CPU_EMULATION
// Two f32 values rounded to bf16 (nearest even) and packed, `lo` in the low half: one
// instruction for what `f32_to_bf16` does in about six per value (the same bits but for NaN
// payloads).
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 out;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(out) : "f"(hi), "f"(lo));
    return out;
}

// 2^x on the special-function unit, flushing subnormal results to zero: `exp2f` adds a range
// test and two multiplies per value to keep those results, which no probability here needs.
// 2^-inf is 0.
__device__ __forceinline__ float ex2(float x) {
    float out;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(out) : "f"(x));
    return out;
}

// c += a · b on the tensor cores.
__device__ __forceinline__ void mma16816(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ u32 shared_address(const void* p) {
    u32 out;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(out) : "l"(p));
    return out;
}

// Starts copying 16 bytes from global memory to shared address `dst` (`shared_address`), of
// which `src_bytes` are read and the rest zero-filled.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

// The same for 4 bytes (cache at all levels: .cg takes only 16).
__device__ __forceinline__ void cp_async4(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Every kernel's tiles live in dynamic shared memory: STAGES buffers, so that with two the next
// tile's copies run while the current one is computed on.
extern __shared__ __align__(16) unsigned char flash_smem[];

// Four 8x8 matrices of b16 from shared address `addr` (one row address per lane), as they are
// or transposed.
__device__ __forceinline__ void ldsm_x4(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void ldsm_x4_trans(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
#endif

// The bf16 pair (d, d+1) of token `start + i` (zeros past `len`), as one 32-bit word.
__device__ __forceinline__ u32 load_pair(const bf16_bits* x, int start, int i, int len, long da,
                                         int col) {
    if (i >= len) return 0u;
    return *(const u32*)(x + (long)(start + i) * da + col);
}

// Starts copying rows [i0, i0 + N) of one head of a bf16 stream into shared memory (`stride`
// elements per row), spread over the block's THREADS threads; rows past `len` are zero-filled.
// `cp_commit` closes a group of such copies and `cp_wait<n>` waits until at most n of this
// thread's groups are still in flight; a __syncthreads() after it makes the tile visible.
template <int D, int N, int THREADS>
__device__ __forceinline__ void stage_rows(bf16_bits* dst, int stride, const bf16_bits* x,
                                           int start, int i0, int len, long da, int head_col) {
    constexpr int CHUNKS = D / 8;  // 16-byte pieces per row
    static_assert(THREADS % CHUNKS == 0, "a pass copies whole rows");
    constexpr int ROWS = THREADS / CHUNKS;  // rows per pass: thread t copies chunk t % CHUNKS
    constexpr int PASSES = (N + ROWS - 1) / ROWS;
    const int r = threadIdx.x / CHUNKS, c = (threadIdx.x % CHUNKS) * 8;
    // One source pointer and one shared address per thread, stepped by constants: computing
    // each copy's addresses from scratch took ptxas about ten instructions and two registers a
    // copy. Rows past `len` copy nothing, from the stream row's first token.
    const bf16_bits* first = x + (long)start * da + head_col + c;
    const bf16_bits* src = first + (long)(i0 + r) * da;
    const u32 to = shared_address(dst) + 2u * (u32)(r * stride + c);
#pragma unroll
    for (int pass = 0; pass < PASSES; pass++) {
        if (N % ROWS == 0 || pass * ROWS + r < N) {
            bool in = i0 + pass * ROWS + r < len;
            cp_async16(to + 2u * (u32)(pass * ROWS * stride), in ? src + pass * ROWS * da : first,
                       in ? 16 : 0);
        }
    }
}

// Every kernel walks its tiles the same way: `load(t)` starts tile t's copies into buffer
// t % STAGES. With one buffer, tile t is copied, then waited for. With two, tile 0 is started
// before the loop and each step starts tile t + 1 (its buffer was last read before the previous
// step's trailing barrier) and waits for tile t alone. A __syncthreads() must follow.
template <int STAGES, typename Load>
__device__ __forceinline__ void await_tile(int tile, int tiles, Load& load) {
    if (STAGES == 1) {
        load(tile);
        cp_wait<0>();
    } else if (tile + 1 < tiles) {
        load(tile + 1);
        cp_wait<1>();
    } else {
        cp_wait<0>();
    }
}

// Fragments through `ldmatrix` (four 8x8 matrices per instruction, one row address per lane),
// for tiles stored row-major in shared memory with `stride` elements per row:
// - `ldsm_b_nk`: the B fragments of n-tiles n0 and n0 + 8 at k-step k0 from a [n][k] tile
//   (b[0..1] and b[2..3]);
// - `ldsm_b_kn`: the same from a [k][n] tile, transposed on the way (`.trans`);
// - `ldsm_a`: the A fragment of rows m0..m0+16 at k-step k0 from a [m][k] tile.
//
// Each address is the tile's shared address plus the lane's row and column, plus the fragment's
// place (n0, k0, m0: constants once the loops are unrolled), added in 32 bits: ptxas folds the
// constant into the instruction's offset. Offsets into a generic pointer cost three
// instructions per `ldmatrix` (64-bit add, then the move to a 32-bit address).
__device__ __forceinline__ u32 tile_address(const bf16_bits* tile, int stride, int lane_row,
                                            int lane_col, int row, int col) {
    return shared_address(tile) + 2u * (u32)(lane_row * stride + lane_col) +
           2u * (u32)(row * stride + col);
}

__device__ __forceinline__ void ldsm_b_nk(u32* b, const bf16_bits* tile, int stride, int n0, int k0,
                                          int lane) {
    ldsm_x4(b, tile_address(tile, stride, (lane >> 4) * 8 + (lane & 7), ((lane >> 3) & 1) * 8, n0,
                            k0));
}

__device__ __forceinline__ void ldsm_b_kn(u32* b, const bf16_bits* tile, int stride, int k0, int n0,
                                          int lane) {
    ldsm_x4_trans(b, tile_address(tile, stride, ((lane >> 3) & 1) * 8 + (lane & 7),
                                  (lane >> 4) * 8, k0, n0));
}

__device__ __forceinline__ void ldsm_a(u32* a, const bf16_bits* tile, int stride, int m0, int k0,
                                       int lane) {
    ldsm_x4(a, tile_address(tile, stride, ((lane >> 3) & 1) * 8 + (lane & 7), (lane >> 4) * 8, m0,
                            k0));
}

// Two bf16 values of rows (k, k+1) in one column of a row-major shared tile, as a B pair.
__device__ __forceinline__ u32 column_pair(const bf16_bits* tile, int stride, int k, int col) {
    return pack2_bits(tile[k * stride + col], tile[(k + 1) * stride + col]);
}

// The three kernels' per-score steps, each in two versions (`Full<true>`: the warp's whole tile
// is visible, so no score is tested). Lane (g, t) holds, per n-tile nt, the scores of query
// rows a and b (elements 0-1 and 2-3) at columns nt·8 + 2t and nt·8 + 2t + 1.

// Forward: masks and scales the scores `s` (16 queries x NT·8 keys from j0), and raises the
// row maxima `xa`, `xb`. `__fmul_rn` keeps the scaling from fusing with the later subtraction,
// so both versions round alike.
template <typename F, int NT>
__device__ __forceinline__ void scale_scores(F full, float (&s)[NT][4], const RowDesc& row, int qa,
                                             int qb, int j0, int t, float scale_log2,
                                             const u32* q_doc, const u32* k_doc, float& xa,
                                             float& xb) {
    #pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        #pragma unroll
        for (int e = 0; e < 4; e++) {
            int i = e < 2 ? qa : qb;
            int j = j0 + nt * 8 + 2 * t + (e & 1);
            float x = visible(full, row, i, j, q_doc, k_doc) ? __fmul_rn(s[nt][e], scale_log2)
                                                              : NEG_INF;
            s[nt][e] = x;
            if (e < 2) xa = fmaxf(xa, x);
            else xb = fmaxf(xb, x);
        }
    }
}

// dK/dV: the probabilities Pᵀ (keys a and b x NT·8 queries from i0) from the scores in `p`
// and the queries' log-sum-exps `lse_s` (indexed from i0).
template <typename F, int NT>
__device__ __forceinline__ void key_probabilities(F full, float (&p)[NT][4], const RowDesc& row,
                                                  int ka, int kb, int i0, int t,
                                                  const float* lse_s, float scale_log2,
                                                  const u32* q_doc, const u32* k_doc) {
    #pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        #pragma unroll
        for (int e = 0; e < 4; e++) {
            int j = e < 2 ? ka : kb;
            int ii = nt * 8 + 2 * t + (e & 1);
            int i = i0 + ii;
            // A query that sees no key has an lse of +inf: 2^-inf = 0.
            bool on = visible(full, row, i, j, q_doc, k_doc);
            p[nt][e] = on ? ex2(p[nt][e] * scale_log2 - lse_s[ii]) : 0.0f;
        }
    }
}

// dQ: dS = P ⊙ (dP - delta) · scale into `p` (queries a and b x NT·8 keys from j0), from the
// scores in `p`, `dp` and the two queries' log-sum-exps `ls` and deltas `dls`.
template <typename F, int NT>
__device__ __forceinline__ void score_grads(F full, float (&p)[NT][4], const float (&dp)[NT][4],
                                            const RowDesc& row, int qa, int qb, int j0, int t,
                                            const float (&ls)[2], const float (&dls)[2],
                                            float scale, float scale_log2, const u32* q_doc,
                                            const u32* k_doc) {
    #pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        #pragma unroll
        for (int e = 0; e < 4; e++) {
            int i = e < 2 ? qa : qb;
            int j = j0 + nt * 8 + 2 * t + (e & 1);
            bool on = visible(full, row, i, j, q_doc, k_doc);
            float pr = on ? ex2(p[nt][e] * scale_log2 - ls[e >> 1]) : 0.0f;  // 0 at lse +inf
            p[nt][e] = pr * (dp[nt][e] - dls[e >> 1]) * scale;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward: one block per (64 queries, head, row); each warp owns 16 queries and walks the key
// tiles with the online softmax.

template <int D, int WARPS, int STAGES, bool LDM>
__device__ void flash_forward(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v,
                              const int* rows_desc, const u32* q_doc, const u32* k_doc,
                              bf16_bits* out, float* lse, int heads, int max_q,
                              float scale_log2) {
    constexpr int KS = D / 16;     // k-steps over the head dimension
    constexpr int DT = D / 8;      // n-tiles over the head dimension
    constexpr int NT = FA_BK / 8;  // n-tiles over a key tile
    constexpr int KST = D + 8;     // shared row stride of K and V (bf16), padded against conflicts
    constexpr int THREADS = WARPS * 32, BQ = WARPS * 16, TILE = FA_BK * KST;
    bf16_bits* smem = (bf16_bits*)flash_smem;  // STAGES x (K tile, V tile)

    const BlockWork work = last_tiles_first();
    const int r = work.r, h = work.h;
    const RowDesc row = row_desc(rows_desc, r);
    const int i0 = work.tile * BQ;
    if (i0 >= row.q_len) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const long da = (long)heads * D;
    const int hc = h * D;
    const int qa = i0 + warp * 16 + g, qb = qa + 8;  // this thread's two query rows

    u32 qf[KS][4];
    #pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        int c = hc + kk * 16 + 2 * t;
        qf[kk][0] = load_pair(q, row.q_start, qa, row.q_len, da, c);
        qf[kk][1] = load_pair(q, row.q_start, qb, row.q_len, da, c);
        qf[kk][2] = load_pair(q, row.q_start, qa, row.q_len, da, c + 8);
        qf[kk][3] = load_pair(q, row.q_start, qb, row.q_len, da, c + 8);
    }
    float o[DT][4];
    #pragma unroll
    for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float ma = NEG_INF, mb = NEG_INF, la = 0.0f, lb = 0.0f;

    const int k_end = key_end(row, i0, i0 + BQ);
    const int tiles = (k_end + FA_BK - 1) / FA_BK;
    auto load = [&](int tile) {
        bf16_bits* dst = smem + (tile % STAGES) * 2 * TILE;
        int j = tile * FA_BK;
        stage_rows<D, FA_BK, THREADS>(dst, KST, k, row.k_start, j, row.k_len, da, hc);
        stage_rows<D, FA_BK, THREADS>(dst + TILE, KST, v, row.k_start, j, row.k_len, da, hc);
        cp_commit();
    };
    if (STAGES > 1 && tiles > 0) load(0);  // the pipeline's first tile
    for (int tile = 0; tile < tiles; tile++) {
        const int j0 = tile * FA_BK;
        await_tile<STAGES>(tile, tiles, load);
        __syncthreads();
        const bf16_bits* ks = smem + (tile % STAGES) * 2 * TILE;
        const bf16_bits* vs = ks + TILE;

        float s[NT][4];
        #pragma unroll
        for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        if constexpr (LDM) {
            #pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                #pragma unroll
                for (int kk = 0; kk < KS; kk++) {
                    u32 b[4];
                    ldsm_b_nk(b, ks, KST, nt * 8, kk * 16, lane);
                    mma16816(s[nt], qf[kk], b);
                    mma16816(s[nt + 1], qf[kk], b + 2);
                }
            }
        } else {
            #pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const bf16_bits* kr = ks + (nt * 8 + g) * KST + 2 * t;
                #pragma unroll
                for (int kk = 0; kk < KS; kk++) {
                    u32 b[2] = {*(const u32*)(kr + kk * 16), *(const u32*)(kr + kk * 16 + 8)};
                    mma16816(s[nt], qf[kk], b);
                }
            }
        }
        // Mask and scale, then the online softmax per query row (a row's 64 scores are spread
        // over the 4 lanes of its group).
        float xa = NEG_INF, xb = NEG_INF;
        const int wq = i0 + warp * 16;  // the warp's first query
        if (all_visible(row, wq, wq + 16, j0, j0 + FA_BK, q_doc, k_doc)) {
            scale_scores(Full<true>(), s, row, qa, qb, j0, t, scale_log2, q_doc, k_doc, xa, xb);
        } else {
            scale_scores(Full<false>(), s, row, qa, qb, j0, t, scale_log2, q_doc, k_doc, xa, xb);
        }
        xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 1));
        xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 2));
        xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 1));
        xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 2));
        float na = fmaxf(ma, xa), nb = fmaxf(mb, xb);
        // Rescaling of what was summed so far; nothing was (all zeros) while the max is -inf.
        float ra = na == NEG_INF ? 1.0f : ex2(ma - na);
        float rb = nb == NEG_INF ? 1.0f : ex2(mb - nb);
        // A masked score is -inf and 2^(-inf - base) = 0, given a finite base: a row with no
        // visible score yet takes 0.
        float ba = na == NEG_INF ? 0.0f : na, bb = nb == NEG_INF ? 0.0f : nb;
        float sa = 0.0f, sb = 0.0f;
        #pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = ex2(s[nt][e] - (e < 2 ? ba : bb));
                s[nt][e] = p;
                if (e < 2) sa += p;
                else sb += p;
            }
        }
        sa += __shfl_xor_sync(0xffffffffu, sa, 1);
        sa += __shfl_xor_sync(0xffffffffu, sa, 2);
        sb += __shfl_xor_sync(0xffffffffu, sb, 1);
        sb += __shfl_xor_sync(0xffffffffu, sb, 2);
        la = la * ra + sa;
        lb = lb * rb + sb;
        ma = na;
        mb = nb;
        #pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            o[dt][0] *= ra;
            o[dt][1] *= ra;
            o[dt][2] *= rb;
            o[dt][3] *= rb;
        }
        // O += P V: P's C tiles (2kk, 2kk+1) are the A fragment of k-step kk over the keys.
        #pragma unroll
        for (int kk = 0; kk < FA_BK / 16; kk++) {
            u32 pa[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                         pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            if constexpr (LDM) {
                #pragma unroll
                for (int dt = 0; dt < DT; dt += 2) {
                    u32 b[4];
                    ldsm_b_kn(b, vs, KST, kk * 16, dt * 8, lane);
                    mma16816(o[dt], pa, b);
                    mma16816(o[dt + 1], pa, b + 2);
                }
            } else {
                int key = kk * 16 + 2 * t;
                #pragma unroll
                for (int dt = 0; dt < DT; dt++) {
                    int col = dt * 8 + g;
                    u32 b[2] = {column_pair(vs, KST, key, col), column_pair(vs, KST, key + 8, col)};
                    mma16816(o[dt], pa, b);
                }
            }
        }
        __syncthreads();  // every warp is done with this buffer before it is refilled
    }

    float ia = la > 0.0f ? 1.0f / la : 0.0f, ib = lb > 0.0f ? 1.0f / lb : 0.0f;
    #pragma unroll
    for (int dt = 0; dt < DT; dt++) {
        int c = hc + dt * 8 + 2 * t;
        if (qa < row.q_len) {
            *(u32*)(out + (long)(row.q_start + qa) * da + c) = pack2(o[dt][0] * ia, o[dt][1] * ia);
        }
        if (qb < row.q_len) {
            *(u32*)(out + (long)(row.q_start + qb) * da + c) = pack2(o[dt][2] * ib, o[dt][3] * ib);
        }
    }
    if (t == 0) {
        float* l = lse + ((long)r * heads + h) * max_q;
        if (qa < row.q_len) l[qa] = la > 0.0f ? ma + log2f(la) : POS_INF;
        if (qb < row.q_len) l[qb] = lb > 0.0f ? mb + log2f(lb) : POS_INF;
    }
}

// ---------------------------------------------------------------------------------------------
// Forward, wide: as `flash_forward` (pipelined, `ldmatrix`), but each warp owns 32 queries (two
// groups of 16, m = 0 and 1), so each K and V fragment read from shared memory feeds two
// products instead of one, and a warp has twice the independent products in flight. Q stays in
// shared memory (the block's BQ rows, staged once with the first key tile) and its fragments are
// read at each k-step, since Q fragments for 32 rows would not fit in registers beside the
// accumulators. Its key tiles are `flash_forward`'s (FA_BK), so every score and output is summed
// in the same order: the same bits. The softmax step and the output writes repeat
// `flash_forward`'s instead of sharing inline functions with it: shared, they change ptxas's
// register allocation of the default build, which then spills 16 bytes at head dim 128.

template <int D, int WARPS>
__device__ void flash_forward_wide(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v,
                                   const int* rows_desc, const u32* q_doc, const u32* k_doc,
                                   bf16_bits* out, float* lse, int heads, int max_q,
                                   float scale_log2) {
    constexpr int STAGES = 2, BK = FA_BK;
    constexpr int KS = D / 16, DT = D / 8, NT = BK / 8, KST = D + 8;
    constexpr int THREADS = WARPS * 32, BQ = WARPS * 32, TILE = BK * KST;
    bf16_bits* qs = (bf16_bits*)flash_smem;  // BQ query rows, then STAGES x (K tile, V tile)
    bf16_bits* smem = qs + BQ * KST;

    const BlockWork work = last_tiles_first();
    const int r = work.r, h = work.h;
    const RowDesc row = row_desc(rows_desc, r);
    const int i0 = work.tile * BQ;
    if (i0 >= row.q_len) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const long da = (long)heads * D;
    const int hc = h * D;
    int qa[2], qb[2];  // this thread's query rows in each group
    #pragma unroll
    for (int m = 0; m < 2; m++) {
        qa[m] = i0 + warp * 32 + m * 16 + g;
        qb[m] = qa[m] + 8;
    }

    float o[2][DT][4];
    #pragma unroll
    for (int m = 0; m < 2; m++) {
        #pragma unroll
        for (int dt = 0; dt < DT; dt++) o[m][dt][0] = o[m][dt][1] = o[m][dt][2] = o[m][dt][3] = 0.0f;
    }
    float ma[2] = {NEG_INF, NEG_INF}, mb[2] = {NEG_INF, NEG_INF};
    float la[2] = {0.0f, 0.0f}, lb[2] = {0.0f, 0.0f};

    const int k_end = key_end(row, i0, i0 + BQ);
    const int tiles = (k_end + BK - 1) / BK;
    auto load = [&](int tile) {
        bf16_bits* dst = smem + (tile % STAGES) * 2 * TILE;
        int j = tile * BK;
        stage_rows<D, BK, THREADS>(dst, KST, k, row.k_start, j, row.k_len, da, hc);
        stage_rows<D, BK, THREADS>(dst + TILE, KST, v, row.k_start, j, row.k_len, da, hc);
        cp_commit();
    };
    if (tiles > 0) {
        // Q with the first tile: the first wait covers both.
        stage_rows<D, BQ, THREADS>(qs, KST, q, row.q_start, i0, row.q_len, da, hc);
        load(0);
    }
    for (int tile = 0; tile < tiles; tile++) {
        const int j0 = tile * BK;
        await_tile<STAGES>(tile, tiles, load);
        __syncthreads();
        const bf16_bits* ks = smem + (tile % STAGES) * 2 * TILE;
        const bf16_bits* vs = ks + TILE;

        float s[2][NT][4];
        #pragma unroll
        for (int m = 0; m < 2; m++) {
            #pragma unroll
            for (int nt = 0; nt < NT; nt++) s[m][nt][0] = s[m][nt][1] = s[m][nt][2] = s[m][nt][3] = 0.0f;
        }
        #pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            u32 a[2][4];
            ldsm_a(a[0], qs, KST, warp * 32, kk * 16, lane);
            ldsm_a(a[1], qs, KST, warp * 32 + 16, kk * 16, lane);
            #pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                u32 b[4];
                ldsm_b_nk(b, ks, KST, nt * 8, kk * 16, lane);
                #pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816(s[m][nt], a[m], b);
                    mma16816(s[m][nt + 1], a[m], b + 2);
                }
            }
        }
        #pragma unroll
        for (int m = 0; m < 2; m++) {
            // Mask, scale and the online softmax of group m, as in `flash_forward`.
            float xa = NEG_INF, xb = NEG_INF;
            const int wq = i0 + warp * 32 + m * 16;
            if (all_visible(row, wq, wq + 16, j0, j0 + BK, q_doc, k_doc)) {
                scale_scores(Full<true>(), s[m], row, qa[m], qb[m], j0, t, scale_log2, q_doc,
                             k_doc, xa, xb);
            } else {
                scale_scores(Full<false>(), s[m], row, qa[m], qb[m], j0, t, scale_log2, q_doc,
                             k_doc, xa, xb);
            }
            xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 1));
            xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 2));
            xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 1));
            xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 2));
            float na = fmaxf(ma[m], xa), nb = fmaxf(mb[m], xb);
            float ra = na == NEG_INF ? 1.0f : ex2(ma[m] - na);
            float rb = nb == NEG_INF ? 1.0f : ex2(mb[m] - nb);
            float ba = na == NEG_INF ? 0.0f : na, bb = nb == NEG_INF ? 0.0f : nb;
            float sa = 0.0f, sb = 0.0f;
            #pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    float p = ex2(s[m][nt][e] - (e < 2 ? ba : bb));
                    s[m][nt][e] = p;
                    if (e < 2) sa += p;
                    else sb += p;
                }
            }
            sa += __shfl_xor_sync(0xffffffffu, sa, 1);
            sa += __shfl_xor_sync(0xffffffffu, sa, 2);
            sb += __shfl_xor_sync(0xffffffffu, sb, 1);
            sb += __shfl_xor_sync(0xffffffffu, sb, 2);
            la[m] = la[m] * ra + sa;
            lb[m] = lb[m] * rb + sb;
            ma[m] = na;
            mb[m] = nb;
            #pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                o[m][dt][0] *= ra;
                o[m][dt][1] *= ra;
                o[m][dt][2] *= rb;
                o[m][dt][3] *= rb;
            }
        }
        // O += P V for both groups from each V fragment.
        #pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            u32 pa[2][4];
            #pragma unroll
            for (int m = 0; m < 2; m++) {
                pa[m][0] = pack2(s[m][2 * kk][0], s[m][2 * kk][1]);
                pa[m][1] = pack2(s[m][2 * kk][2], s[m][2 * kk][3]);
                pa[m][2] = pack2(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]);
                pa[m][3] = pack2(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3]);
            }
            #pragma unroll
            for (int dt = 0; dt < DT; dt += 2) {
                u32 b[4];
                ldsm_b_kn(b, vs, KST, kk * 16, dt * 8, lane);
                #pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816(o[m][dt], pa[m], b);
                    mma16816(o[m][dt + 1], pa[m], b + 2);
                }
            }
        }
        __syncthreads();  // every warp is done with this buffer before it is refilled
    }

    #pragma unroll
    for (int m = 0; m < 2; m++) {
        float ia = la[m] > 0.0f ? 1.0f / la[m] : 0.0f, ib = lb[m] > 0.0f ? 1.0f / lb[m] : 0.0f;
        #pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            int c = hc + dt * 8 + 2 * t;
            if (qa[m] < row.q_len) {
                *(u32*)(out + (long)(row.q_start + qa[m]) * da + c) =
                    pack2(o[m][dt][0] * ia, o[m][dt][1] * ia);
            }
            if (qb[m] < row.q_len) {
                *(u32*)(out + (long)(row.q_start + qb[m]) * da + c) =
                    pack2(o[m][dt][2] * ib, o[m][dt][3] * ib);
            }
        }
        if (t == 0) {
            float* l = lse + ((long)r * heads + h) * max_q;
            if (qa[m] < row.q_len) l[qa[m]] = la[m] > 0.0f ? ma[m] + log2f(la[m]) : POS_INF;
            if (qb[m] < row.q_len) l[qb[m]] = lb[m] > 0.0f ? mb[m] + log2f(lb[m]) : POS_INF;
        }
    }
}

#define FLASH_FORWARD_WIDE(D, WARPS, NAME)                                                             \
    extern "C" __global__ void NAME(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v,   \
                                    const int* rows_desc, const u32* q_doc, const u32* k_doc,     \
                                    bf16_bits* out, float* lse, int heads, int max_q,             \
                                    float scale_log2) {                                           \
        flash_forward_wide<D, WARPS>(q, k, v, rows_desc, q_doc, k_doc, out, lse, heads, max_q,       \
                                     scale_log2);                                                 \
    }

// At head dim 128 it uses all 255 registers and ptxas (sm_90) spills 56 bytes: the softmax's
// running sums, about a dozen local loads and stores per tile beside some 1,100 instructions.
FLASH_FORWARD_WIDE(32, 4, flash_forward_d32_wide)
FLASH_FORWARD_WIDE(64, 4, flash_forward_d64_wide)
FLASH_FORWARD_WIDE(128, 4, flash_forward_d128_wide)

// ---------------------------------------------------------------------------------------------
// delta[r, h, i] = Σ_d dO[i, d] · O[i, d] over the bf16 copies, summed in f32; one warp per
// (row, head, query); 0 past q_len.

extern "C" __global__ void flash_delta(const bf16_bits* d_out, const bf16_bits* out,
                                       const int* rows_desc, float* delta, int n_rows, int heads,
                                       int head_dim, int max_q) {
    long line = (long)blockIdx.x * FA_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (line >= (long)n_rows * heads * max_q) return;
    int i = (int)(line % max_q);
    int h = (int)((line / max_q) % heads);
    int r = (int)(line / max_q / heads);
    RowDesc row = row_desc(rows_desc, r);
    float acc = 0.0f;
    if (i < row.q_len) {
        long base = (long)(row.q_start + i) * heads * head_dim + (long)h * head_dim;
        for (int c = lane; c < head_dim; c += 32) {
            acc += bf16_to_f32(d_out[base + c]) * bf16_to_f32(out[base + c]);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) delta[line] = acc;
}

// ---------------------------------------------------------------------------------------------
// dK, dV: one block per (64 keys, head, row); each warp owns 16 keys and walks the query tiles
// that can see them: Sᵀ = K Qᵀ, Pᵀ from lse, dV += Pᵀ dO, dPᵀ = V dOᵀ, dSᵀ = Pᵀ ⊙ (dPᵀ - delta)
// · scale, dK += dSᵀ Q.

template <int D, int STAGES, bool LDM>
__device__ void flash_backward_kv(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v,
                                  const bf16_bits* d_out, const float* lse, const float* delta,
                                  const int* rows_desc, const u32* q_doc, const u32* k_doc,
                                  bf16_bits* dk, bf16_bits* dv, int heads, int max_q,
                                  float scale, float scale_log2) {
    constexpr int KS = D / 16;
    constexpr int DT = D / 8;
    constexpr int NT = FB_BQ / 8;  // n-tiles over a query tile
    constexpr int ST = D + 8;
    constexpr int THREADS = FA_THREADS, TILE = FB_BQ * ST;
    // The block's V tile, then STAGES x (Q tile, dO tile), then STAGES x (the tile's
    // log-sum-exps, its deltas): each tile's lines come with its rows, by the same pipeline.
    bf16_bits* vsh = (bf16_bits*)flash_smem;
    bf16_bits* stages = vsh + FB_BK * ST;
    float* lines = (float*)(stages + STAGES * 2 * TILE);

    // Key tiles in index order: in a causal row the first ones, seen by the most queries, are
    // the heaviest, so each (row, head) already starts with them.
    const int r = blockIdx.z, h = blockIdx.y;
    const RowDesc row = row_desc(rows_desc, r);
    const int j0 = blockIdx.x * FB_BK;
    if (j0 >= row.k_len) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const long da = (long)heads * D;
    const int hc = h * D;
    const int ka = j0 + warp * 16 + g, kb = ka + 8;  // this thread's two key rows
    const int wk = warp * 16;                       // the warp's first key within the tile

    u32 kf[KS][4];
    #pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        int c = hc + kk * 16 + 2 * t;
        kf[kk][0] = load_pair(k, row.k_start, ka, row.k_len, da, c);
        kf[kk][1] = load_pair(k, row.k_start, kb, row.k_len, da, c);
        kf[kk][2] = load_pair(k, row.k_start, ka, row.k_len, da, c + 8);
        kf[kk][3] = load_pair(k, row.k_start, kb, row.k_len, da, c + 8);
    }
    stage_rows<D, FB_BK, THREADS>(vsh, ST, v, row.k_start, j0, row.k_len, da, hc);
    cp_commit();
    float dkacc[DT][4], dvacc[DT][4];
    #pragma unroll
    for (int dt = 0; dt < DT; dt++) {
        #pragma unroll
        for (int e = 0; e < 4; e++) dkacc[dt][e] = dvacc[dt][e] = 0.0f;
    }
    const float* lse_r = lse + ((long)r * heads + h) * max_q;
    const float* delta_r = delta + ((long)r * heads + h) * max_q;

    const int q_begin = (query_begin(row, j0) / FB_BQ) * FB_BQ;
    const int tiles = row.q_len > q_begin ? (row.q_len - q_begin + FB_BQ - 1) / FB_BQ : 0;
    auto load = [&](int tile) {
        bf16_bits* dst = stages + (tile % STAGES) * 2 * TILE;
        int i = q_begin + tile * FB_BQ;
        stage_rows<D, FB_BQ, THREADS>(dst, ST, q, row.q_start, i, row.q_len, da, hc);
        stage_rows<D, FB_BQ, THREADS>(dst + TILE, ST, d_out, row.q_start, i, row.q_len, da, hc);
        // Lines past q_len read as 0: such a query is never visible, so its lse is never used,
        // and its delta and dO rows are 0.
        if (threadIdx.x < 2 * FB_BQ) {
            int ii = threadIdx.x % FB_BQ;
            bool in = i + ii < row.q_len;
            const float* src = threadIdx.x < FB_BQ ? lse_r : delta_r;
            float* to = lines + ((tile % STAGES) * 2 + threadIdx.x / FB_BQ) * FB_BQ + ii;
            cp_async4(shared_address(to), src + (in ? i + ii : 0), in ? 4 : 0);
        }
        cp_commit();
    };
    if (STAGES > 1 && tiles > 0) load(0);  // the pipeline's first tile
    for (int tile = 0; tile < tiles; tile++) {
        const int i0 = q_begin + tile * FB_BQ;
        await_tile<STAGES>(tile, tiles, load);
        __syncthreads();
        const bf16_bits* qs = stages + (tile % STAGES) * 2 * TILE;
        const bf16_bits* dos = qs + TILE;
        const float* lse_s = lines + (tile % STAGES) * 2 * FB_BQ;
        const float* delta_s = lse_s + FB_BQ;

        // Sᵀ (16 keys x FB_BQ queries) and from it Pᵀ.
        float p[NT][4];
        #pragma unroll
        for (int nt = 0; nt < NT; nt++) p[nt][0] = p[nt][1] = p[nt][2] = p[nt][3] = 0.0f;
        if constexpr (LDM) {
            #pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                #pragma unroll
                for (int kk = 0; kk < KS; kk++) {
                    u32 b[4];
                    ldsm_b_nk(b, qs, ST, nt * 8, kk * 16, lane);
                    mma16816(p[nt], kf[kk], b);
                    mma16816(p[nt + 1], kf[kk], b + 2);
                }
            }
        } else {
            #pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const bf16_bits* qr = qs + (nt * 8 + g) * ST + 2 * t;
                #pragma unroll
                for (int kk = 0; kk < KS; kk++) {
                    u32 b[2] = {*(const u32*)(qr + kk * 16), *(const u32*)(qr + kk * 16 + 8)};
                    mma16816(p[nt], kf[kk], b);
                }
            }
        }
        if (all_visible(row, i0, i0 + FB_BQ, j0 + wk, j0 + wk + 16, q_doc, k_doc)) {
            key_probabilities(Full<true>(), p, row, ka, kb, i0, t, lse_s, scale_log2, q_doc, k_doc);
        } else {
            key_probabilities(Full<false>(), p, row, ka, kb, i0, t, lse_s, scale_log2, q_doc,
                              k_doc);
        }
        // dV += Pᵀ dO (k over the tile's queries).
        #pragma unroll
        for (int kk = 0; kk < FB_BQ / 16; kk++) {
            u32 pa[4] = {pack2(p[2 * kk][0], p[2 * kk][1]), pack2(p[2 * kk][2], p[2 * kk][3]),
                         pack2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                         pack2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
            if constexpr (LDM) {
                #pragma unroll
                for (int dt = 0; dt < DT; dt += 2) {
                    u32 b[4];
                    ldsm_b_kn(b, dos, ST, kk * 16, dt * 8, lane);
                    mma16816(dvacc[dt], pa, b);
                    mma16816(dvacc[dt + 1], pa, b + 2);
                }
            } else {
                int qi = kk * 16 + 2 * t;
                #pragma unroll
                for (int dt = 0; dt < DT; dt++) {
                    int col = dt * 8 + g;
                    u32 b[2] = {column_pair(dos, ST, qi, col), column_pair(dos, ST, qi + 8, col)};
                    mma16816(dvacc[dt], pa, b);
                }
            }
        }
        // dPᵀ = V dOᵀ (k over the head dimension; V's A fragments from shared memory).
        float dp[NT][4];
        #pragma unroll
        for (int nt = 0; nt < NT; nt++) dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            if constexpr (LDM) {
                u32 a[4];
                ldsm_a(a, vsh, ST, wk, kk * 16, lane);
                #pragma unroll
                for (int nt = 0; nt < NT; nt += 2) {
                    u32 b[4];
                    ldsm_b_nk(b, dos, ST, nt * 8, kk * 16, lane);
                    mma16816(dp[nt], a, b);
                    mma16816(dp[nt + 1], a, b + 2);
                }
            } else {
                const bf16_bits* va = vsh + (wk + g) * ST + kk * 16 + 2 * t;
                u32 a[4] = {*(const u32*)va, *(const u32*)(va + 8 * ST), *(const u32*)(va + 8),
                            *(const u32*)(va + 8 * ST + 8)};
                #pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const bf16_bits* dr = dos + (nt * 8 + g) * ST + kk * 16 + 2 * t;
                    u32 b[2] = {*(const u32*)dr, *(const u32*)(dr + 8)};
                    mma16816(dp[nt], a, b);
                }
            }
        }
        // dSᵀ = Pᵀ ⊙ (dPᵀ - delta) · scale, into p.
        #pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int ii = nt * 8 + 2 * t + (e & 1);
                p[nt][e] = p[nt][e] * (dp[nt][e] - delta_s[ii]) * scale;
            }
        }
        // dK += dSᵀ Q (k over the tile's queries).
        #pragma unroll
        for (int kk = 0; kk < FB_BQ / 16; kk++) {
            u32 sa[4] = {pack2(p[2 * kk][0], p[2 * kk][1]), pack2(p[2 * kk][2], p[2 * kk][3]),
                         pack2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                         pack2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
            if constexpr (LDM) {
                #pragma unroll
                for (int dt = 0; dt < DT; dt += 2) {
                    u32 b[4];
                    ldsm_b_kn(b, qs, ST, kk * 16, dt * 8, lane);
                    mma16816(dkacc[dt], sa, b);
                    mma16816(dkacc[dt + 1], sa, b + 2);
                }
            } else {
                int qi = kk * 16 + 2 * t;
                #pragma unroll
                for (int dt = 0; dt < DT; dt++) {
                    int col = dt * 8 + g;
                    u32 b[2] = {column_pair(qs, ST, qi, col), column_pair(qs, ST, qi + 8, col)};
                    mma16816(dkacc[dt], sa, b);
                }
            }
        }
        __syncthreads();  // every warp is done with this buffer (and its lines) before a refill
    }

    cp_wait<0>();  // the V tile's copies, when no query tile needed them

#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
        int c = hc + dt * 8 + 2 * t;
        if (ka < row.k_len) {
            long at = (long)(row.k_start + ka) * da + c;
            *(u32*)(dk + at) = pack2(dkacc[dt][0], dkacc[dt][1]);
            *(u32*)(dv + at) = pack2(dvacc[dt][0], dvacc[dt][1]);
        }
        if (kb < row.k_len) {
            long at = (long)(row.k_start + kb) * da + c;
            *(u32*)(dk + at) = pack2(dkacc[dt][2], dkacc[dt][3]);
            *(u32*)(dv + at) = pack2(dvacc[dt][2], dvacc[dt][3]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dQ: one block per (64 queries, head, row); each warp owns 16 queries and walks the key tiles:
// S = Q Kᵀ, P from lse, dP = dO Vᵀ, dS = P ⊙ (dP - delta) · scale, dQ += dS K.

template <int D, int WARPS, int STAGES, bool LDM>
__device__ void flash_backward_q(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v,
                                 const bf16_bits* d_out, const float* lse, const float* delta,
                                 const int* rows_desc, const u32* q_doc, const u32* k_doc,
                                 bf16_bits* dq, int heads, int max_q, float scale,
                                 float scale_log2) {
    constexpr int KS = D / 16;
    constexpr int DT = D / 8;
    constexpr int NT = FQ_BK / 8;
    constexpr int ST = D + 8;
    constexpr int THREADS = WARPS * 32, BQ = WARPS * 16, TILE = FQ_BK * ST;
    bf16_bits* smem = (bf16_bits*)flash_smem;  // STAGES x (K tile, V tile)

    const BlockWork work = last_tiles_first();
    const int r = work.r, h = work.h;
    const RowDesc row = row_desc(rows_desc, r);
    const int i0 = work.tile * BQ;
    if (i0 >= row.q_len) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const long da = (long)heads * D;
    const int hc = h * D;
    const int qa = i0 + warp * 16 + g, qb = qa + 8;

    u32 qf[KS][4], df[KS][4];
    #pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        int c = hc + kk * 16 + 2 * t;
        qf[kk][0] = load_pair(q, row.q_start, qa, row.q_len, da, c);
        qf[kk][1] = load_pair(q, row.q_start, qb, row.q_len, da, c);
        qf[kk][2] = load_pair(q, row.q_start, qa, row.q_len, da, c + 8);
        qf[kk][3] = load_pair(q, row.q_start, qb, row.q_len, da, c + 8);
        df[kk][0] = load_pair(d_out, row.q_start, qa, row.q_len, da, c);
        df[kk][1] = load_pair(d_out, row.q_start, qb, row.q_len, da, c);
        df[kk][2] = load_pair(d_out, row.q_start, qa, row.q_len, da, c + 8);
        df[kk][3] = load_pair(d_out, row.q_start, qb, row.q_len, da, c + 8);
    }
    const long line = ((long)r * heads + h) * max_q;
    const float la = qa < row.q_len ? lse[line + qa] : POS_INF;
    const float lb = qb < row.q_len ? lse[line + qb] : POS_INF;
    const float dla = qa < row.q_len ? delta[line + qa] : 0.0f;
    const float dlb = qb < row.q_len ? delta[line + qb] : 0.0f;
    float dqacc[DT][4];
    #pragma unroll
    for (int dt = 0; dt < DT; dt++) dqacc[dt][0] = dqacc[dt][1] = dqacc[dt][2] = dqacc[dt][3] = 0.0f;

    const int k_end = key_end(row, i0, i0 + BQ);
    const int tiles = (k_end + FQ_BK - 1) / FQ_BK;
    auto load = [&](int tile) {
        bf16_bits* dst = smem + (tile % STAGES) * 2 * TILE;
        int j = tile * FQ_BK;
        stage_rows<D, FQ_BK, THREADS>(dst, ST, k, row.k_start, j, row.k_len, da, hc);
        stage_rows<D, FQ_BK, THREADS>(dst + TILE, ST, v, row.k_start, j, row.k_len, da, hc);
        cp_commit();
    };
    if (STAGES > 1 && tiles > 0) load(0);  // the pipeline's first tile
    for (int tile = 0; tile < tiles; tile++) {
        const int j0 = tile * FQ_BK;
        await_tile<STAGES>(tile, tiles, load);
        __syncthreads();
        const bf16_bits* ks = smem + (tile % STAGES) * 2 * TILE;
        const bf16_bits* vsh = ks + TILE;

        float p[NT][4], dp[NT][4];
        #pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) p[nt][e] = dp[nt][e] = 0.0f;
        }
        if constexpr (LDM) {
            #pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                #pragma unroll
                for (int kk = 0; kk < KS; kk++) {
                    u32 b[4], c[4];
                    ldsm_b_nk(b, ks, ST, nt * 8, kk * 16, lane);
                    mma16816(p[nt], qf[kk], b);
                    mma16816(p[nt + 1], qf[kk], b + 2);
                    ldsm_b_nk(c, vsh, ST, nt * 8, kk * 16, lane);
                    mma16816(dp[nt], df[kk], c);
                    mma16816(dp[nt + 1], df[kk], c + 2);
                }
            }
        } else {
            #pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const bf16_bits* kr = ks + (nt * 8 + g) * ST + 2 * t;
                const bf16_bits* vr = vsh + (nt * 8 + g) * ST + 2 * t;
                #pragma unroll
                for (int kk = 0; kk < KS; kk++) {
                    u32 b[2] = {*(const u32*)(kr + kk * 16), *(const u32*)(kr + kk * 16 + 8)};
                    mma16816(p[nt], qf[kk], b);
                    u32 c[2] = {*(const u32*)(vr + kk * 16), *(const u32*)(vr + kk * 16 + 8)};
                    mma16816(dp[nt], df[kk], c);
                }
            }
        }
        const int wq = i0 + warp * 16;  // the warp's first query
        const float ls[2] = {la, lb}, dls[2] = {dla, dlb};
        if (all_visible(row, wq, wq + 16, j0, j0 + FQ_BK, q_doc, k_doc)) {
            score_grads(Full<true>(), p, dp, row, qa, qb, j0, t, ls, dls, scale, scale_log2, q_doc,
                        k_doc);
        } else {
            score_grads(Full<false>(), p, dp, row, qa, qb, j0, t, ls, dls, scale, scale_log2, q_doc,
                        k_doc);
        }
        // dQ += dS K (k over the tile's keys).
        #pragma unroll
        for (int kk = 0; kk < FQ_BK / 16; kk++) {
            u32 sa[4] = {pack2(p[2 * kk][0], p[2 * kk][1]), pack2(p[2 * kk][2], p[2 * kk][3]),
                         pack2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                         pack2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
            if constexpr (LDM) {
                #pragma unroll
                for (int dt = 0; dt < DT; dt += 2) {
                    u32 b[4];
                    ldsm_b_kn(b, ks, ST, kk * 16, dt * 8, lane);
                    mma16816(dqacc[dt], sa, b);
                    mma16816(dqacc[dt + 1], sa, b + 2);
                }
            } else {
                int key = kk * 16 + 2 * t;
                #pragma unroll
                for (int dt = 0; dt < DT; dt++) {
                    int col = dt * 8 + g;
                    u32 b[2] = {column_pair(ks, ST, key, col), column_pair(ks, ST, key + 8, col)};
                    mma16816(dqacc[dt], sa, b);
                }
            }
        }
        __syncthreads();
    }

    #pragma unroll

    for (int dt = 0; dt < DT; dt++) {
        int c = hc + dt * 8 + 2 * t;
        if (qa < row.q_len) {
            *(u32*)(dq + (long)(row.q_start + qa) * da + c) = pack2(dqacc[dt][0], dqacc[dt][1]);
        }
        if (qb < row.q_len) {
            *(u32*)(dq + (long)(row.q_start + qb) * da + c) = pack2(dqacc[dt][2], dqacc[dt][3]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points, per supported head dimension, in three variants: the basic one (4 warps, 64
// queries per forward / dQ block, one tile buffer: each tile is copied, then computed on); the
// pipelined one (8 warps, 128 queries per forward / dQ block, so each K/V tile read serves
// twice the queries; two tile buffers, so the next tile's copies overlap the current tile's
// math; fragments through `ldmatrix`); and `pipelined_w4`, the pipelined one with 4 warps and 64
// queries per block, so that two blocks fit an SM at head dim 128 (2 x 128 threads x 256
// registers is the register file) and run out of step with each other: one block's softmax can
// overlap the other's products, where the 8 warps of one block all pass the same barriers. All
// sum in the same order, so they give the same bits.

// One build's three entry points; the names are spelled out at each use so that a search finds
// them (and the compile test checks each one is in the PTX).
#define FLASH_ENTRIES(D, WARPS, STAGES, LDM, FORWARD, BACKWARD_KV, BACKWARD_Q)                    \
    extern "C" __global__ void FORWARD(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, \
                                       const int* rows_desc, const u32* q_doc, const u32* k_doc,   \
                                       bf16_bits* out, float* lse, int heads, int max_q,           \
                                       float scale_log2) {                                          \
        flash_forward<D, WARPS, STAGES, LDM>(q, k, v, rows_desc, q_doc, k_doc, out, lse, heads,   \
                                             max_q, scale_log2);                                    \
    }                                                                                               \
    extern "C" __global__ void BACKWARD_KV(                                                         \
        const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, const bf16_bits* d_out,        \
        const float* lse, const float* delta, const int* rows_desc, const u32* q_doc,              \
        const u32* k_doc, bf16_bits* dk, bf16_bits* dv, int heads, int max_q, float scale,         \
        float scale_log2) {                                                                         \
        flash_backward_kv<D, STAGES, LDM>(q, k, v, d_out, lse, delta, rows_desc, q_doc, k_doc, dk, \
                                          dv, heads, max_q, scale, scale_log2);                     \
    }                                                                                               \
    extern "C" __global__ void BACKWARD_Q(                                                          \
        const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, const bf16_bits* d_out,        \
        const float* lse, const float* delta, const int* rows_desc, const u32* q_doc,              \
        const u32* k_doc, bf16_bits* dq, int heads, int max_q, float scale, float scale_log2) {    \
        flash_backward_q<D, WARPS, STAGES, LDM>(q, k, v, d_out, lse, delta, rows_desc, q_doc,     \
                                                k_doc, dq, heads, max_q, scale, scale_log2);        \
    }

FLASH_ENTRIES(32, 4, 1, false, flash_forward_d32, flash_backward_kv_d32,
              flash_backward_q_d32)
FLASH_ENTRIES(32, 8, 2, true, flash_forward_d32_pipelined, flash_backward_kv_d32_pipelined,
              flash_backward_q_d32_pipelined)
FLASH_ENTRIES(32, 4, 2, true, flash_forward_d32_pipelined_w4, flash_backward_kv_d32_pipelined_w4,
              flash_backward_q_d32_pipelined_w4)
FLASH_ENTRIES(64, 4, 1, false, flash_forward_d64, flash_backward_kv_d64,
              flash_backward_q_d64)
FLASH_ENTRIES(64, 8, 2, true, flash_forward_d64_pipelined, flash_backward_kv_d64_pipelined,
              flash_backward_q_d64_pipelined)
FLASH_ENTRIES(64, 4, 2, true, flash_forward_d64_pipelined_w4, flash_backward_kv_d64_pipelined_w4,
              flash_backward_q_d64_pipelined_w4)
FLASH_ENTRIES(128, 4, 1, false, flash_forward_d128, flash_backward_kv_d128,
              flash_backward_q_d128)
FLASH_ENTRIES(128, 8, 2, true, flash_forward_d128_pipelined, flash_backward_kv_d128_pipelined,
              flash_backward_q_d128_pipelined)
FLASH_ENTRIES(128, 4, 2, true, flash_forward_d128_pipelined_w4,
              flash_backward_kv_d128_pipelined_w4, flash_backward_q_d128_pipelined_w4)
