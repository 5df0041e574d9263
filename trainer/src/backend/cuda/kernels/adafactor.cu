// Adafactor over every parameter tensor at once, as trainer/src/optim/adafactor.rs does it
// (T5X's rule). Each pass is one launch over the work of all tensors, found through a table of
// `MtTensor` built on the host (launch_adafactor.rs), so an update costs a handful of launches
// whatever the number of tensors. Sums go through f64 as on the CPU, each over a fixed
// partition (chunks of MT_CHUNK values, segments of MT_SEGMENT rows) added in a fixed order, so
// an update is deterministic. One step:
//   mt_grad_sq_partial, mt_sum_chunks      g *= scale; per-tensor sum of g^2 (the host takes
//                                          the global norm and the clipping factor from it)
//   mt_moments                             full v, v_row, and v_col partial sums per segment
//   mt_factor_sums                         v_col from its segments; per-tensor sum of v_row
//   mt_y_sq_partial, mt_sum_chunks         per-tensor sums of y^2 and p^2
//   mt_apply, mt_sum_chunks                clipping, parameter scale, momentum, p -= u; sum of u^2
// The clipping factor of the gradient multiplies g where it is read (`__fmul_rn`, the rounding
// of a stored `g * factor`); y is computed again in mt_apply rather than stored.

#define MT_CHUNK 4096
#define MT_SEGMENT 512
#define MT_FULL 0u
#define MT_ROW 1u
#define MT_COL 2u

// One tensor; the layout of `DeviceTensor::words` in launch_adafactor.rs.
struct MtTensor {
    float* param;
    float* grad;
    float* v;         // full second moment, or null
    float* v_row;     // factored second moment (rows), or null
    float* v_col;     // factored second moment (cols), or null
    float* momentum;  // or null
    long n;
    int rows, cols;   // factored: the matrix; full: n x 1
    int first_chunk, chunks;
    long col_base;    // factored: where its segments x cols partial sums start
    int segments, pad;
};

__device__ __forceinline__ const MtTensor& chunk_range(const MtTensor* ts, const int* chunk_tensor,
                                                       int* tensor, long* begin, long* end) {
    int c = blockIdx.x;
    *tensor = chunk_tensor[c];
    const MtTensor& t = ts[*tensor];
    *begin = (long)(c - t.first_chunk) * MT_CHUNK;
    *end = min(*begin + (long)MT_CHUNK, t.n);
    return t;
}

// y of value `i` (gradient value `g`): g / sqrt(v), or g / sqrt(v_row / mean(v_row)) / sqrt(v_col).
__device__ __forceinline__ float mt_y(const MtTensor& t, long i, float g, double v_row_sum) {
    if (t.v_row) {
        unsigned r = (unsigned)i / (unsigned)t.cols;
        unsigned c = (unsigned)i - r * (unsigned)t.cols;
        float row_mean = (float)(v_row_sum / t.rows);
        float row_factor = 1.0f / sqrtf(t.v_row[r] / row_mean);
        return g * row_factor * (1.0f / sqrtf(t.v_col[c]));
    }
    return g / sqrtf(t.v[i]);
}

// One block per chunk: g *= scale (stored unless scale is 1), partial[chunk] = sum of g^2.
extern "C" __global__ void mt_grad_sq_partial(const MtTensor* ts, const int* chunk_tensor,
                                              float scale, double* partial) {
    __shared__ double scratch[32];
    int ti;
    long begin, end;
    const MtTensor& t = chunk_range(ts, chunk_tensor, &ti, &begin, &end);
    double acc = 0.0;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        float g = t.grad[i];
        if (scale != 1.0f) {
            g = g * scale;
            t.grad[i] = g;
        }
        acc += (double)g * (double)g;
    }
    acc = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block per tensor: out_a[t] = sum of its chunks' partial_a, in chunk order of a fixed
// tree; the same for b when `partial_b` is not null.
extern "C" __global__ void mt_sum_chunks(const MtTensor* ts, const double* partial_a,
                                         double* out_a, const double* partial_b, double* out_b) {
    __shared__ double scratch[32];
    const MtTensor& t = ts[blockIdx.x];
    double a = 0.0, b = 0.0;
    for (int i = threadIdx.x; i < t.chunks; i += blockDim.x) {
        a += partial_a[t.first_chunk + i];
        if (partial_b) b += partial_b[t.first_chunk + i];
    }
    a = block_sum_f64(a, scratch);
    if (partial_b) b = block_sum_f64(b, scratch);
    if (threadIdx.x == 0) {
        out_a[blockIdx.x] = a;
        if (partial_b) out_b[blockIdx.x] = b;
    }
}

// One block per work item (`items`: two words each, tensor | kind << 24, then an index):
//   MT_FULL  chunk `index` of a full moment: v = beta2 v + (1 - beta2)(g^2 + eps1);
//   MT_ROW   row `index`: v_row = beta2 v_row + (1 - beta2) mean_j (g^2 + eps1);
//   MT_COL   columns [256 (index % col blocks), ...) over the rows of segment
//            index / col blocks: col_partial[col_base + segment * cols + j] = sum (g^2 + eps1).
extern "C" __global__ void mt_moments(const MtTensor* ts, const unsigned* items,
                                      double* col_partial, float factor, float beta2,
                                      float eps1) {
    __shared__ double scratch[32];
    unsigned head = items[2 * blockIdx.x], index = items[2 * blockIdx.x + 1];
    const MtTensor& t = ts[head & 0xffffffu];
    unsigned kind = head >> 24;
    if (kind == MT_FULL) {
        long begin = (long)index * MT_CHUNK, end = min(begin + (long)MT_CHUNK, t.n);
        for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
            float g = __fmul_rn(t.grad[i], factor);
            t.v[i] = beta2 * t.v[i] + (1.0f - beta2) * (g * g + eps1);
        }
    } else if (kind == MT_ROW) {
        const float* row = t.grad + (long)index * t.cols;
        double acc = 0.0;
        for (int j = threadIdx.x; j < t.cols; j += blockDim.x) {
            float x = __fmul_rn(row[j], factor);
            acc += (double)(x * x + eps1);
        }
        acc = block_sum_f64(acc, scratch);
        if (threadIdx.x == 0) {
            t.v_row[index] = beta2 * t.v_row[index] + (1.0f - beta2) * (float)(acc / t.cols);
        }
    } else {
        unsigned col_blocks = ((unsigned)t.cols + blockDim.x - 1) / blockDim.x;
        unsigned segment = index / col_blocks;
        int j = (int)((index % col_blocks) * blockDim.x + threadIdx.x);
        if (j >= t.cols) return;
        int first = (int)segment * MT_SEGMENT, last = min(first + MT_SEGMENT, t.rows);
        double acc = 0.0;
        for (int i = first; i < last; i++) {
            float x = __fmul_rn(t.grad[(long)i * t.cols + j], factor);
            acc += (double)(x * x + eps1);
        }
        col_partial[t.col_base + (long)segment * t.cols + j] = acc;
    }
}

// One block per tensor; factored ones only: v_col = beta2 v_col + (1 - beta2) mean_i (...) from
// the segments in order, and v_row_sum[t] = sum of the new v_row.
extern "C" __global__ void mt_factor_sums(const MtTensor* ts, const double* col_partial,
                                          double* v_row_sum, float beta2) {
    __shared__ double scratch[32];
    const MtTensor& t = ts[blockIdx.x];
    if (!t.v_row) return;
    for (int j = threadIdx.x; j < t.cols; j += blockDim.x) {
        double acc = 0.0;
        for (int s = 0; s < t.segments; s++) acc += col_partial[t.col_base + (long)s * t.cols + j];
        t.v_col[j] = beta2 * t.v_col[j] + (1.0f - beta2) * (float)(acc / t.rows);
    }
    double sum = 0.0;
    for (int i = threadIdx.x; i < t.rows; i += blockDim.x) sum += (double)t.v_row[i];
    sum = block_sum_f64(sum, scratch);
    if (threadIdx.x == 0) v_row_sum[blockIdx.x] = sum;
}

// One block per chunk: y_partial[chunk] = sum of y^2, p_partial[chunk] = sum of p^2.
extern "C" __global__ void mt_y_sq_partial(const MtTensor* ts, const int* chunk_tensor,
                                           const double* v_row_sum, float factor,
                                           double* y_partial, double* p_partial) {
    __shared__ double scratch[32];
    int ti;
    long begin, end;
    const MtTensor& t = chunk_range(ts, chunk_tensor, &ti, &begin, &end);
    double vrs = t.v_row ? v_row_sum[ti] : 0.0;
    double ys = 0.0, ps = 0.0;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        double y = (double)mt_y(t, i, __fmul_rn(t.grad[i], factor), vrs);
        double p = (double)t.param[i];
        ys += y * y;
        ps += p * p;
    }
    ys = block_sum_f64(ys, scratch);
    ps = block_sum_f64(ps, scratch);
    if (threadIdx.x == 0) {
        y_partial[blockIdx.x] = ys;
        p_partial[blockIdx.x] = ps;
    }
}

// One block per chunk: update clipping (`clip_threshold <= 0`: off), parameter scaling
// (`param_scale == 0`: lr alone), momentum where the tensor has it, p -= u, and
// u_partial[chunk] = sum of u^2.
extern "C" __global__ void mt_apply(const MtTensor* ts, const int* chunk_tensor,
                                    const double* v_row_sum, const double* y_sq,
                                    const double* p_sq, float factor, float lr,
                                    float clip_threshold, float eps2, int param_scale,
                                    float beta1, double* u_partial) {
    __shared__ double scratch[32];
    int ti;
    long begin, end;
    const MtTensor& t = chunk_range(ts, chunk_tensor, &ti, &begin, &end);
    double vrs = t.v_row ? v_row_sum[ti] : 0.0;
    float denom = 1.0f;
    if (clip_threshold > 0.0f) {
        double q = sqrt(y_sq[ti] / (double)t.n) / (double)clip_threshold;
        denom = q != q ? (float)q : (float)fmax(q, 1.0);
    }
    // NaN stays NaN (fmax/fmaxf would return the other operand), as in the CPU's Adafactor.
    float p_rms = (float)sqrt(p_sq[ti] / (double)t.n);
    float scale = param_scale ? lr * (p_rms != p_rms ? p_rms : fmaxf(p_rms, eps2)) : lr;
    double acc = 0.0;
    for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        float y = mt_y(t, i, __fmul_rn(t.grad[i], factor), vrs);
        if (denom > 1.0f) y /= denom;
        float u = scale * y;
        if (t.momentum) {
            u = beta1 * t.momentum[i] + (1.0f - beta1) * u;
            t.momentum[i] = u;
        }
        t.param[i] -= u;
        acc += (double)u * (double)u;
    }
    acc = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) u_partial[blockIdx.x] = acc;
}
