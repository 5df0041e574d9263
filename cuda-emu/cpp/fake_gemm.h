// The column-major product shared by the fake cuBLAS and cuBLASLt libraries (fake_cublas.cpp,
// fake_cublaslt.cpp): f32 or bf16 operands and results, f32 compute (each dot product summed in
// f64 and rounded once, so bits can differ from cuBLAS's in the last place), every operand's
// extent checked against the fake driver's live allocations before anything is read.
#pragma once

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <string>
#include <vector>

extern "C" int redpack_fake_inside(uintptr_t p, size_t bytes);

typedef int cublasStatus_t;
typedef void* cublasHandle_t;

enum : int {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUDA_R_32F = 0,
    CUDA_R_16BF = 14,
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
    CUBLAS_COMPUTE_32F = 68,
};

namespace {

int element_bytes(int type) {
    return type == CUDA_R_32F ? 4 : type == CUDA_R_16BF ? 2 : 0;
}

float load(const void* base, int type, long long i) {
    if (type == CUDA_R_32F) return ((const float*)base)[i];
    uint32_t bits = (uint32_t)((const uint16_t*)base)[i] << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Round to nearest even, as the kernels' `f32_to_bf16`.
void store(void* base, int type, long long i, float v) {
    if (type == CUDA_R_32F) {
        ((float*)base)[i] = v;
        return;
    }
    uint32_t bits;
    memcpy(&bits, &v, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        ((uint16_t*)base)[i] = 0x7fff;
        return;
    }
    ((uint16_t*)base)[i] = (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

bool fail(const char* why) {
    fprintf(stderr, "fake cuBLAS: %s\n", why);
    return false;
}

// Whether an operand of `rows x cols` (as stored: before any transpose) with leading dimension
// `ld`, `batch` of them `stride` apart, lies inside one allocation.
bool operand_fits(const char* name, const void* p, int type, int rows, int cols, int ld,
                  long long stride, int batch) {
    if (ld < rows) return fail((std::string(name) + ": leading dimension below rows").c_str());
    long long last = (long long)(rows - 1) + (long long)(cols - 1) * ld +
                     (long long)(batch - 1) * stride;
    size_t bytes = (size_t)(last + 1) * (size_t)element_bytes(type);
    if (!redpack_fake_inside((uintptr_t)p, bytes))
        return fail((std::string(name) + ": reaches outside its device allocation").c_str());
    return true;
}

cublasStatus_t gemm(int transa, int transb, int m, int n, int k, const void* alpha_p,
                    const void* a, int atype, int lda, long long stride_a, const void* b,
                    int btype, int ldb, long long stride_b, const void* beta_p, void* c,
                    int ctype, int ldc, long long stride_c, int batch, int compute) {
    if (compute != CUBLAS_COMPUTE_32F || !element_bytes(atype) || !element_bytes(btype) ||
        !element_bytes(ctype)) {
        fail("only f32 compute over f32/bf16 data is emulated");
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (m < 0 || n < 0 || k < 0 || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    float alpha = *(const float*)alpha_p, beta = *(const float*)beta_p;
    bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
    // op(A) is m x k, op(B) is k x n, C is m x n.
    if ((k > 0 && !operand_fits("A", a, atype, ta ? k : m, ta ? m : k, lda, stride_a, batch)) ||
        (k > 0 && !operand_fits("B", b, btype, tb ? n : k, tb ? k : n, ldb, stride_b, batch)) ||
        !operand_fits("C", c, ctype, m, n, ldc, stride_c, batch))
        return CUBLAS_STATUS_INVALID_VALUE;
    // op(A) as m rows of k and op(B) as n columns of k, contiguous, so each dot product runs
    // over two contiguous arrays.
    std::vector<float> rows_a((size_t)m * k), cols_b((size_t)n * k);
    for (int e = 0; e < batch; e++) {
        long long oa = e * stride_a, ob = e * stride_b, oc = e * stride_c;
        for (int i = 0; i < m; i++)
            for (int l = 0; l < k; l++)
                rows_a[(size_t)i * k + l] =
                    load(a, atype, oa + (ta ? l + (long long)i * lda : i + (long long)l * lda));
        for (int j = 0; j < n; j++)
            for (int l = 0; l < k; l++)
                cols_b[(size_t)j * k + l] =
                    load(b, btype, ob + (tb ? j + (long long)l * ldb : l + (long long)j * ldb));
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                const float* x = &rows_a[(size_t)i * k];
                const float* y = &cols_b[(size_t)j * k];
                double acc = 0.0;
                for (int l = 0; l < k; l++) acc += (double)x[l] * (double)y[l];
                long long ic = oc + i + (long long)j * ldc;
                // beta = 0 never reads C (it may hold anything, NaN included), as cuBLAS.
                double out = (double)alpha * acc;
                if (beta != 0.0f) out += (double)beta * (double)load(c, ctype, ic);
                store(c, ctype, ic, (float)out);
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

