// A cuBLAS library (`libcublas.so`) for the fake driver (fake_cuda.cpp): the two products the
// backend calls, `cublasGemmEx` and `cublasGemmStridedBatchedEx`, in cuBLAS's column-major
// terms, on host memory (fake_gemm.h).
#include "fake_gemm.h"

namespace {
int handle_token;
}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
    *handle = &handle_token;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t) {
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t, void*) {
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t, int transa, int transb, int m, int n, int k,
                            const void* alpha, const void* a, int atype, int lda, const void* b,
                            int btype, int ldb, const void* beta, void* c, int ctype, int ldc,
                            int compute, int) {
    return gemm(transa, transb, m, n, k, alpha, a, atype, lda, 0, b, btype, ldb, 0, beta, c,
                ctype, ldc, 0, 1, compute);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, int transa, int transb, int m, int n,
                                          int k, const void* alpha, const void* a, int atype,
                                          int lda, long long stride_a, const void* b, int btype,
                                          int ldb, long long stride_b, const void* beta, void* c,
                                          int ctype, int ldc, long long stride_c, int batch,
                                          int compute, int) {
    return gemm(transa, transb, m, n, k, alpha, a, atype, lda, stride_a, b, btype, ldb, stride_b,
                beta, c, ctype, ldc, stride_c, batch, compute);
}

}  // extern "C"
