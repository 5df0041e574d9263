// A cuBLASLt library (`libcublasLt.so`) for the fake driver (fake_cuda.cpp): what lt.rs calls
// (handles, matmul descriptors with their transposes, matrix layouts with batch count and
// stride, preferences, the heuristic, and the product), on host memory (fake_gemm.h).
//
// A layout describes a matrix as stored (column-major: rows, columns, leading dimension), before
// the descriptor's transpose, as cuBLASLt's do. The product checks that the four layouts fit
// together (op(A) is m x k, op(B) is k x n, C and D are m x n, the same batch count) and fails
// otherwise, naming the mismatch: this is what a wrong layout in lt.rs would run into.
#include "fake_gemm.h"

namespace {

struct Desc {
    int compute, scale;
    int transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
};

struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch = 1;
    int64_t stride = 0;
};

int handle_token, preference_token;

bool layouts_fail(const char* why) {
    fprintf(stderr, "fake cuBLASLt: %s\n", why);
    return true;
}

// Whether the layouts do not fit together; (m, n, k) when they do.
bool mismatch(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dd,
              uint64_t* m, uint64_t* n, uint64_t* k) {
    bool ta = d.transa == CUBLAS_OP_T, tb = d.transb == CUBLAS_OP_T;
    uint64_t am = ta ? a.cols : a.rows, ak = ta ? a.rows : a.cols;
    uint64_t bk = tb ? b.cols : b.rows, bn = tb ? b.rows : b.cols;
    if (ak != bk) return layouts_fail("op(A)'s columns are not op(B)'s rows");
    if (am != c.rows || bn != c.cols)
        return layouts_fail("C is not op(A)'s rows x op(B)'s columns");
    if (c.rows != dd.rows || c.cols != dd.cols || c.ld != dd.ld || c.type != dd.type)
        return layouts_fail("D's layout is not C's");
    if (a.batch != c.batch || b.batch != c.batch || dd.batch != c.batch)
        return layouts_fail("batch counts differ");
    *m = am, *n = bn, *k = ak;
    return false;
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(void** handle) {
    *handle = &handle_token;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(void*) {
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(void** desc, int compute, int scale) {
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    *desc = new Desc{compute, scale};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(void* desc) {
    delete (Desc*)desc;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(void* desc, int attribute, const void* value,
                                              size_t bytes) {
    Desc* d = (Desc*)desc;
    if ((attribute == 3 || attribute == 4) && bytes == sizeof(int32_t)) {  // TRANSA, TRANSB
        int32_t op;
        memcpy(&op, value, sizeof op);
        if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
        (attribute == 3 ? d->transa : d->transb) = op;
        return CUBLAS_STATUS_SUCCESS;
    }
    fprintf(stderr, "fake cuBLASLt: matmul attribute %d (%zu bytes) is not emulated\n", attribute,
            bytes);
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

cublasStatus_t cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    if (!element_bytes(type)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (ld < (int64_t)rows) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new Layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(void* layout) {
    delete (Layout*)layout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(void* layout, int attribute, const void* value,
                                                size_t bytes) {
    Layout* l = (Layout*)layout;
    if (attribute == 5 && bytes == sizeof(int32_t)) {  // BATCH_COUNT
        memcpy(&l->batch, value, bytes);
        return l->batch >= 1 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
    }
    if (attribute == 6 && bytes == sizeof(int64_t)) {  // STRIDED_BATCH_OFFSET
        memcpy(&l->stride, value, bytes);
        return CUBLAS_STATUS_SUCCESS;
    }
    fprintf(stderr, "fake cuBLASLt: layout attribute %d (%zu bytes) is not emulated\n", attribute,
            bytes);
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(void** preference) {
    *preference = &preference_token;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(void*) {
    return CUBLAS_STATUS_SUCCESS;
}

// The workspace limit and alignments are accepted (the emulated product needs neither).
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(void*, int, const void*, size_t) {
    return CUBLAS_STATUS_SUCCESS;
}

struct HeuristicResult {
    uint64_t algo[8];
    size_t workspace;
    int state;
    float waves;
    int reserved[4];
};

// One "algorithm" for layouts that fit together, none (count 0) otherwise.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(void*, void* desc, void* a, void* b, void* c,
                                              void* d, void*, int requested,
                                              HeuristicResult* results, int* count) {
    uint64_t m, n, k;
    *count = 0;
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    if (mismatch(*(Desc*)desc, *(Layout*)a, *(Layout*)b, *(Layout*)c, *(Layout*)d, &m, &n, &k))
        return CUBLAS_STATUS_SUCCESS;
    memset(&results[0], 0, sizeof results[0]);
    results[0].algo[0] = 0x5eed;
    results[0].waves = 1.0f;
    *count = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(void*, void* desc, const void* alpha, const void* a, void* al,
                              const void* b, void* bl, const void* beta, const void* c, void* cl,
                              void* d, void* dl, const void* algo, void*, size_t, void*) {
    const Desc& dd = *(Desc*)desc;
    const Layout &la = *(Layout*)al, &lb = *(Layout*)bl, &lc = *(Layout*)cl, &ld = *(Layout*)dl;
    uint64_t m, n, k;
    if (!algo || ((const uint64_t*)algo)[0] != 0x5eed) {
        fprintf(stderr, "fake cuBLASLt: an algorithm the heuristic did not return\n");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (mismatch(dd, la, lb, lc, ld, &m, &n, &k)) return CUBLAS_STATUS_INVALID_VALUE;
    if (c != d) {
        fprintf(stderr, "fake cuBLASLt: only C = D (in place) is emulated\n");
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return gemm(dd.transa, dd.transb, (int)m, (int)n, (int)k, alpha, a, la.type, (int)la.ld,
                la.stride, b, lb.type, (int)lb.ld, lb.stride, beta, d, lc.type, (int)lc.ld,
                lc.stride, lc.batch, dd.compute);
}

}  // extern "C"
