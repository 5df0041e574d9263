// The fused attention kernels of flash.cu, run on the CPU emulator (cuda_emu.h) and checked
// against attention computed in f64 from the same bf16 inputs: every mask the model uses
// (causal over several tiles, bidirectional, a bidirectional prefix, a row shorter than a
// fragment, cross-attention with unequal lengths), with and without document resets, head
// dimensions 32, 64 and 128, every build. Launches are set up as launch_flash.rs sets them up.
// Besides the tolerances of tests/suite/cuda_attention.rs, the builds must give identical bits,
// as they do on a GPU. Prints one line per check; exits non-zero if any failed.
#include "cuda_emu.h"
#include "check_rng.h"

#include <string>

// The kernels, after the emulator that stands in for CUDA.
#include "../../src/backend/cuda/kernels/common.cuh"
#include "../../src/backend/cuda/kernels/flash.cu"

namespace {

struct Case {
    std::vector<RowDesc> rows;
    int q_tokens, k_tokens, max_q, max_k;
    // Document of each query and key token (empty: no documents).
    std::vector<u32> q_doc, k_doc;
};

struct Result {
    std::vector<float> out, lse, dq, dk, dv;
};

// Rows of every kind in one batch; `docs` adds document resets to every row.
Case make_case(bool docs) {
    Case c;
    int q = 0;
    // Self-attention rows: one token range for queries and keys.
    auto add = [&](int len, int causal, int prefix) {
        RowDesc r = {q, len, q, len, causal, prefix};
        c.rows.push_back(r);
        q += len;
    };
    add(150, 1, 0);   // causal, three forward key tiles
    add(100, 0, 0);   // bidirectional
    add(100, 1, 40);  // causal with a bidirectional prefix of 40
    add(5, 1, 0);     // shorter than a fragment
    // The cross row's keys come after every self row's tokens (their own stream in the model).
    int self_tokens = q;
    RowDesc cross = {q, 70, self_tokens, 90, 0, 0};  // cross-attention: 70 queries, 90 keys
    c.rows.push_back(cross);
    c.q_tokens = q + 70;
    c.k_tokens = self_tokens + 90;
    c.max_q = 150;
    c.max_k = 150;
    if (docs) {
        // Document ids never decrease along a row; a reset every 37 (queries) and 41 (cross keys)
        // tokens. Self rows share ids between queries and keys. The cross row's keys start at
        // document 1, so its first 37 queries see no key (zero output, +inf log-sum-exp) and
        // its last keys (document 3) no query (zero dK and dV).
        c.q_doc.assign(c.q_tokens, 0);
        c.k_doc.assign(c.k_tokens, 0);
        for (const RowDesc& r : c.rows) {
            for (int i = 0; i < r.q_len; i++) c.q_doc[r.q_start + i] = i / 37;
            bool self = r.k_start == r.q_start;
            for (int j = 0; j < r.k_len; j++) c.k_doc[r.k_start + j] = self ? j / 37 : j / 41 + 1;
        }
    }
    return c;
}

bool sees_ref(const Case& c, const RowDesc& r, int i, int j) {
    if (r.causal && j > i && !(i < r.prefix && j < r.prefix)) return false;
    if (!c.q_doc.empty()) return c.q_doc[r.q_start + i] == c.k_doc[r.k_start + j];
    return true;
}

std::vector<bf16_bits> random_bf16(Rng& rng, size_t n, float scale) {
    std::vector<bf16_bits> x(n);
    for (auto& v : x) v = f32_to_bf16(scale * rng.normal());
    return x;
}

float value(bf16_bits x) {
    return bf16_to_f32(x);
}

// `WIDE`: the forward pass is `flash_forward_wide` (4 warps of 32 queries), the backward the
// build's (WARPS, STAGES, LDM).
template <int D, int WARPS, int STAGES, bool LDM, bool WIDE = false>
Result run_kernels(const Case& c, int heads, const std::vector<bf16_bits>& q,
                   const std::vector<bf16_bits>& k, const std::vector<bf16_bits>& v,
                   const std::vector<bf16_bits>& d_out) {
    const int n_rows = (int)c.rows.size();
    std::vector<int> desc;
    for (const RowDesc& r : c.rows) {
        int d[6] = {r.q_start, r.q_len, r.k_start, r.k_len, r.causal, r.prefix};
        desc.insert(desc.end(), d, d + 6);
    }
    const u32* q_doc = c.q_doc.empty() ? nullptr : c.q_doc.data();
    const u32* k_doc = c.k_doc.empty() ? nullptr : c.k_doc.data();
    const float scale = 1.0f / sqrtf((float)D);
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)D);
    const float scale_log2_bwd = scale * 1.4426950408889634f;
    Result res;
    // Outputs start as NaN, so a value the kernels should write but do not cannot pass: the
    // model hands them buffers that are not zeroed first.
    const float nan = std::nanf("");
    res.lse.assign((size_t)n_rows * heads * c.max_q, nan);
    // O and the gradients are written in bf16 (NaN until written), then widened for the checks.
    std::vector<bf16_bits> out16((size_t)c.q_tokens * heads * D, f32_to_bf16(nan));
    std::vector<bf16_bits> dq16(out16.size(), f32_to_bf16(nan));
    std::vector<bf16_bits> dk16((size_t)c.k_tokens * heads * D, f32_to_bf16(nan));
    std::vector<bf16_bits> dv16(dk16.size(), f32_to_bf16(nan));
    const size_t tile_row = (size_t)(D + 8) * 2;
    auto grid = [&](int len, int per_block) {
        dim3 g;
        g.x = (unsigned)((len + per_block - 1) / per_block);
        g.y = (unsigned)heads;
        g.z = (unsigned)n_rows;
        return g;
    };
    dim3 threads;
    threads.x = WARPS * 32;
    // Dynamic shared memory as launch_flash.rs asks for it.
    if constexpr (WIDE) {
        emu::launch(grid(c.max_q, WARPS * 32), threads,
                    WARPS * 32 * tile_row + 2 * 2 * FA_BK * tile_row, [&] {
                        flash_forward_wide<D, WARPS>(q.data(), k.data(), v.data(), desc.data(),
                                                     q_doc, k_doc, out16.data(), res.lse.data(),
                                                     heads, c.max_q, scale_log2);
                    });
    } else {
        emu::launch(grid(c.max_q, WARPS * 16), threads, STAGES * 2 * FA_BK * tile_row, [&] {
            flash_forward<D, WARPS, STAGES, LDM>(q.data(), k.data(), v.data(), desc.data(), q_doc,
                                                 k_doc, out16.data(), res.lse.data(), heads,
                                                 c.max_q, scale_log2);
        });
    }
    std::vector<float> delta((size_t)n_rows * heads * c.max_q, nan);
    dim3 delta_grid, delta_threads;
    delta_grid.x = (unsigned)((n_rows * heads * c.max_q + 3) / 4);
    delta_threads.x = 128;
    emu::launch(delta_grid, delta_threads, 0, [&] {
        flash_delta(d_out.data(), out16.data(), desc.data(), delta.data(), n_rows, heads, D,
                    c.max_q);
    });
    dim3 kv_threads;
    kv_threads.x = 128;
    emu::launch(grid(c.max_k, FB_BK), kv_threads,
                FB_BK * tile_row + STAGES * 2 * FB_BQ * (tile_row + 4), [&] {
                    flash_backward_kv<D, STAGES, LDM>(q.data(), k.data(), v.data(), d_out.data(),
                                                      res.lse.data(), delta.data(), desc.data(),
                                                      q_doc, k_doc, dk16.data(), dv16.data(),
                                                      heads, c.max_q, scale, scale_log2_bwd);
                });
    emu::launch(grid(c.max_q, WARPS * 16), threads, STAGES * 2 * FQ_BK * tile_row, [&] {
        flash_backward_q<D, WARPS, STAGES, LDM>(
            q.data(), k.data(), v.data(), d_out.data(), res.lse.data(), delta.data(), desc.data(),
            q_doc, k_doc, dq16.data(), heads, c.max_q, scale, scale_log2_bwd);
    });
    auto widen = [](const std::vector<bf16_bits>& x) {
        std::vector<float> y(x.size());
        for (size_t i = 0; i < x.size(); i++) y[i] = bf16_to_f32(x[i]);
        return y;
    };
    res.out = widen(out16);
    res.dq = widen(dq16);
    res.dk = widen(dk16);
    res.dv = widen(dv16);
    return res;
}

// Attention in f64 from the bf16 inputs: O, lse (base 2), dQ, dK, dV.
Result reference(const Case& c, int heads, int D, const std::vector<bf16_bits>& q,
                 const std::vector<bf16_bits>& k, const std::vector<bf16_bits>& v,
                 const std::vector<bf16_bits>& d_out) {
    Result res;
    const int n_rows = (int)c.rows.size();
    res.out.assign((size_t)c.q_tokens * heads * D, 0.0f);
    res.lse.assign((size_t)n_rows * heads * c.max_q, 0.0f);
    res.dq.assign(res.out.size(), 0.0f);
    res.dk.assign((size_t)c.k_tokens * heads * D, 0.0f);
    res.dv.assign(res.dk.size(), 0.0f);
    std::vector<double> dk(res.dk.size(), 0.0), dv(res.dv.size(), 0.0);
    const double scale = 1.0 / std::sqrt((double)D);
    const long da = (long)heads * D;
    for (int ri = 0; ri < n_rows; ri++) {
        const RowDesc& r = c.rows[ri];
        for (int h = 0; h < heads; h++) {
            for (int i = 0; i < r.q_len; i++) {
                const long qi = (long)(r.q_start + i) * da + (long)h * D;
                std::vector<double> s(r.k_len, 0.0), p(r.k_len, 0.0);
                double m = -INFINITY;
                for (int j = 0; j < r.k_len; j++) {
                    if (!sees_ref(c, r, i, j)) continue;
                    const long kj = (long)(r.k_start + j) * da + (long)h * D;
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += (double)value(q[qi + d]) * value(k[kj + d]);
                    s[j] = dot * scale;
                    m = std::max(m, s[j]);
                }
                long line = ((long)ri * heads + h) * c.max_q + i;
                if (m == -INFINITY) {
                    res.lse[line] = INFINITY;
                    continue;
                }
                double sum = 0;
                for (int j = 0; j < r.k_len; j++)
                    if (sees_ref(c, r, i, j)) sum += (p[j] = std::exp(s[j] - m));
                for (int j = 0; j < r.k_len; j++) p[j] /= sum;
                res.lse[line] = (float)((std::log(sum) + m) / std::log(2.0));
                std::vector<double> o(D, 0.0), dp(r.k_len, 0.0);
                for (int j = 0; j < r.k_len; j++) {
                    if (p[j] == 0) continue;
                    const long kj = (long)(r.k_start + j) * da + (long)h * D;
                    for (int d = 0; d < D; d++) o[d] += p[j] * value(v[kj + d]);
                }
                double delta = 0;
                for (int d = 0; d < D; d++) {
                    res.out[qi + d] = (float)o[d];
                    delta += (double)value(d_out[qi + d]) * o[d];
                }
                for (int j = 0; j < r.k_len; j++) {
                    if (p[j] == 0) continue;
                    const long kj = (long)(r.k_start + j) * da + (long)h * D;
                    double dpj = 0;
                    for (int d = 0; d < D; d++)
                        dpj += (double)value(d_out[qi + d]) * value(v[kj + d]);
                    double ds = p[j] * (dpj - delta) * scale;
                    for (int d = 0; d < D; d++) {
                        res.dq[qi + d] += (float)(ds * value(k[kj + d]));
                        dk[kj + d] += ds * value(q[qi + d]);
                        dv[kj + d] += p[j] * value(d_out[qi + d]);
                    }
                }
            }
        }
    }
    for (size_t i = 0; i < dk.size(); i++) res.dk[i] = (float)dk[i], res.dv[i] = (float)dv[i];
    return res;
}

int failures = 0;

// max |got - want| / max |want| over the values, as tests/suite/cuda_support's assert_close.
void check(const std::string& name, const std::vector<float>& got, const std::vector<float>& want,
           double tol) {
    double scale = 1e-30, worst = 0;
    size_t at = 0;
    for (float w : want)
        if (std::isfinite(w)) scale = std::max(scale, (double)std::fabs(w));
    for (size_t i = 0; i < got.size(); i++) {
        double err;
        if (std::isinf(want[i]) || std::isinf(got[i])) {
            err = got[i] == want[i] ? 0.0 : INFINITY;
        } else if (std::isnan(got[i]) != std::isnan(want[i])) {
            err = INFINITY;
        } else {
            err = std::fabs((double)got[i] - want[i]) / scale;
        }
        if (err > worst) worst = err, at = i;
    }
    bool ok = worst <= tol;
    printf("%s %s: worst %.2e at %zu (got %g, want %g), tolerance %.0e\n", ok ? "ok  " : "FAIL",
           name.c_str(), worst, at, got.empty() ? 0.0 : got[at], want.empty() ? 0.0 : want[at],
           tol);
    if (!ok) failures++;
}

void same_bits(const std::string& name, const std::vector<float>& a, const std::vector<float>& b) {
    size_t differ = 0;
    for (size_t i = 0; i < a.size(); i++) differ += memcmp(&a[i], &b[i], 4) != 0;
    printf("%s %s: %zu values differ between the builds\n", differ ? "FAIL" : "ok  ", name.c_str(),
           differ);
    if (differ) failures++;
}

template <int D>
void run_dim(Rng& rng, bool docs, int heads) {
    Case c = make_case(docs);
    auto q = random_bf16(rng, (size_t)c.q_tokens * heads * D, 1.0f);
    auto k = random_bf16(rng, (size_t)c.k_tokens * heads * D, 1.0f);
    auto v = random_bf16(rng, (size_t)c.k_tokens * heads * D, 1.0f);
    auto d_out = random_bf16(rng, (size_t)c.q_tokens * heads * D, 1.0f);
    Result want = reference(c, heads, D, q, k, v, d_out);
    // The builds of flash.cu's entry points: (warps, stages, ldmatrix) as FLASH_ENTRIES.
    std::vector<std::pair<std::string, Result>> builds;
    builds.emplace_back("basic", run_kernels<D, 4, 1, false>(c, heads, q, k, v, d_out));
    builds.emplace_back("pipelined", run_kernels<D, 8, 2, true>(c, heads, q, k, v, d_out));
    builds.emplace_back("pipelined_w4", run_kernels<D, 4, 2, true>(c, heads, q, k, v, d_out));
    builds.emplace_back("wide", run_kernels<D, 4, 2, true, true>(c, heads, q, k, v, d_out));
    std::string tag = "d" + std::to_string(D) + (docs ? " documents" : "");
    for (auto& [name, got] : builds) {
        // The log-sum-exp is written for each row's queries only (the backward reads no more).
        for (size_t ri = 0; ri < c.rows.size(); ri++) {
            for (int h = 0; h < heads; h++) {
                for (int i = c.rows[ri].q_len; i < c.max_q; i++) {
                    got.lse[(ri * heads + h) * c.max_q + i] = 0.0f;
                }
            }
        }
        std::string build = tag + " " + name;
        check(build + " out", got.out, want.out, 1e-2);
        check(build + " lse", got.lse, want.lse, 1e-4);
        check(build + " dq", got.dq, want.dq, 2e-2);
        check(build + " dk", got.dk, want.dk, 2e-2);
        check(build + " dv", got.dv, want.dv, 2e-2);
    }
    // Every build sums in the same order: the same bits as the basic one.
    const Result& basic = builds[0].second;
    for (size_t b = 1; b < builds.size(); b++) {
        const Result& other = builds[b].second;
        std::string pair = tag + " " + builds[b].first + " vs basic";
        same_bits(pair + " out", other.out, basic.out);
        same_bits(pair + " lse", other.lse, basic.lse);
        same_bits(pair + " dq", other.dq, basic.dq);
        same_bits(pair + " dk", other.dk, basic.dk);
        same_bits(pair + " dv", other.dv, basic.dv);
    }
}

}  // namespace

// With `quick`, only head dim 128 with documents, one head (the AddressSanitizer build runs
// that).
int main(int argc, char** argv) {
    Rng rng{42};
    bool quick = argc > 1 && std::string(argv[1]) == "quick";
    if (quick) {
        run_dim<128>(rng, true, 1);
    } else {
        for (bool docs : {false, true}) {
            run_dim<32>(rng, docs, 2);
            run_dim<64>(rng, docs, 2);
            run_dim<128>(rng, docs, 2);
        }
    }
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all flash checks passed\n");
    return 0;
}
