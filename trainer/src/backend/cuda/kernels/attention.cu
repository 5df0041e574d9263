// Moving one head-interleaved token stream (`tokens x heads*head_dim`, the rows of a batch packed
// one after another) to and from the padded per-(row, head) layout the batched matrix products
// use (`rows x heads x max_len x head_dim`). `rows_desc` holds six ints per row as in softmax.cu;
// `keys` selects the key fields (k_start, k_len) instead of the query fields (q_start, q_len).
// One thread per padded element.

#define PACK_FIELDS 6

// dst[r, h, i, c] = src[start_r + i, h * head_dim + c] for i < len_r, else 0.
extern "C" __global__ void attn_pack(const float* src, float* dst, const int* rows_desc, int n_rows,
                                     int heads, int head_dim, int max_len, int keys) {
    long at = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= (long)n_rows * heads * max_len * head_dim) return;
    int c = (int)(at % head_dim);
    long rest = at / head_dim;
    int i = (int)(rest % max_len);
    rest /= max_len;
    int h = (int)(rest % heads);
    int r = (int)(rest / heads);
    const int* row = rows_desc + (long)r * PACK_FIELDS;
    int start = keys ? row[2] : row[0];
    int len = keys ? row[3] : row[1];
    dst[at] = i < len ? src[((long)(start + i) * heads + h) * head_dim + c] : 0.0f;
}

// The inverse: dst[start_r + i, h * head_dim + c] = src[r, h, i, c] for i < len_r. Padding is
// dropped; stream tokens outside every row are left as they are.
extern "C" __global__ void attn_unpack(const float* src, float* dst, const int* rows_desc,
                                       int n_rows, int heads, int head_dim, int max_len,
                                       int keys) {
    long at = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= (long)n_rows * heads * max_len * head_dim) return;
    int c = (int)(at % head_dim);
    long rest = at / head_dim;
    int i = (int)(rest % max_len);
    rest /= max_len;
    int h = (int)(rest % heads);
    int r = (int)(rest / heads);
    const int* row = rows_desc + (long)r * PACK_FIELDS;
    int start = keys ? row[2] : row[0];
    int len = keys ? row[3] : row[1];
    if (i < len) dst[((long)(start + i) * heads + h) * head_dim + c] = src[at];
}
