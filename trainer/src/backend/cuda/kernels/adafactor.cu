// Adafactor, as trainer/src/optim/adafactor.rs does it (T5X's rule). Sums and means go through
// f64 as on the CPU; the launcher runs the reductions with a fixed grid, so they are
// deterministic. One update of a parameter:
//   full:      adafactor_full_moment                  -> y
//   factored:  adafactor_row_moment, adafactor_col_moment, reduce (sum of v_row),
//              adafactor_factored_y                   -> y
//   then:      reduce (sum of y^2), reduce (sum of p^2), adafactor_apply

// partial[block] = sum over a grid-stride slice of x (or of x^2 with `square`).
extern "C" __global__ void reduce_sum_partial(const float* x, long n, int square, double* partial) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        double v = (double)x[i];
        acc += square ? v * v : v;
    }
    acc = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// out[at] = sum of `count` partials; one block.
extern "C" __global__ void reduce_sum_final(const double* partial, int count, double* out, int at) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    acc = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) out[at] = acc;
}

// v = beta2 v + (1 - beta2)(g^2 + eps1); y = g / sqrt(v).
extern "C" __global__ void adafactor_full_moment(float* v, const float* g, float* y, long n,
                                                 float beta2, float eps1) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float vi = beta2 * v[i] + (1.0f - beta2) * (gi * gi + eps1);
    v[i] = vi;
    y[i] = gi / sqrtf(vi);
}

// v_row[i] = beta2 v_row[i] + (1 - beta2) mean_j (g[i, j]^2 + eps1); one block per row.
extern "C" __global__ void adafactor_row_moment(const float* g, float* v_row, int rows, int cols,
                                                float beta2, float eps1) {
    __shared__ double scratch[32];
    int i = blockIdx.x;
    if (i >= rows) return;
    double acc = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float x = g[(long)i * cols + j];
        acc += (double)(x * x + eps1);
    }
    acc = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) v_row[i] = beta2 * v_row[i] + (1.0f - beta2) * (float)(acc / cols);
}

// v_col[j] = beta2 v_col[j] + (1 - beta2) mean_i (g[i, j]^2 + eps1); one thread per column,
// summing rows in order.
extern "C" __global__ void adafactor_col_moment(const float* g, float* v_col, int rows, int cols,
                                                float beta2, float eps1) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double acc = 0.0;
    for (int i = 0; i < rows; i++) {
        float x = g[(long)i * cols + j];
        acc += (double)(x * x + eps1);
    }
    v_col[j] = beta2 * v_col[j] + (1.0f - beta2) * (float)(acc / rows);
}

// y[i, j] = g[i, j] / sqrt(v_row[i] / mean(v_row)) / sqrt(v_col[j]); `v_row_sum` from reduce.
extern "C" __global__ void adafactor_factored_y(const float* g, const float* v_row,
                                                const float* v_col, const double* v_row_sum,
                                                float* y, int rows, int cols) {
    long at = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= (long)rows * cols) return;
    int i = (int)(at / cols), j = (int)(at % cols);
    float row_mean = (float)(v_row_sum[0] / rows);
    float row_factor = 1.0f / sqrtf(v_row[i] / row_mean);
    y[at] = g[at] * row_factor * (1.0f / sqrtf(v_col[j]));
}

// Update clipping, parameter scaling, optional momentum (null `momentum` = none), p -= u; `y`
// becomes u (for the update norm). `clip_threshold <= 0` switches clipping off; `param_scale == 0`
// scales by lr alone.
extern "C" __global__ void adafactor_apply(float* param, float* y, float* momentum, long n,
                                           const double* y_sq_sum, const double* p_sq_sum,
                                           float lr, float clip_threshold, float eps2,
                                           int param_scale, float beta1) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float denom = 1.0f;
    if (clip_threshold > 0.0f) {
        denom = (float)fmax(sqrt(y_sq_sum[0] / (double)n) / (double)clip_threshold, 1.0);
    }
    float scale = param_scale ? lr * fmaxf((float)sqrt(p_sq_sum[0] / (double)n), eps2) : lr;
    float yi = y[i];
    if (denom > 1.0f) yi /= denom;
    float u = scale * yi;
    if (momentum) {
        u = beta1 * momentum[i] + (1.0f - beta1) * u;
        momentum[i] = u;
    }
    param[i] -= u;
    y[i] = u;
}
