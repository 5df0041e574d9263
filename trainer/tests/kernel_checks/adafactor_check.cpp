// The multi-tensor Adafactor of adafactor.cu, run on the CPU emulator (cuda_emu.h), against
// optim/adafactor.rs's rule written out here in plain loops: tensors of every kind (factored
// over several row segments, full matrices and vectors, one a chunk and a bit long), the
// gradients scaled to the mean, the global norm, clipping by a factor (steps 0 and 2 clip, step 1
// does not), update clipping, parameter scaling, with and without momentum. The layout is built
// as launch_adafactor.rs builds it (its unit tests check that layout's coverage). Parameters must
// match bit for bit (the emulator does not contract a * b + c into an FMA, nor does Rust), the
// norms to 1e-12. Exits non-zero on a failure.
#include "cuda_emu.h"

#include <functional>
#include <random>

// The kernels, after the emulator that stands in for CUDA.
#include "../../src/backend/cuda/kernels/common.cuh"
#include "../../src/backend/cuda/kernels/adafactor.cu"

struct Shape {
    bool factored;
    int rows, cols;
    long n() const { return (long)rows * cols; }
};
struct Cfg {
    bool clip;
    float clip_t;
    bool pscale;
    bool momentum;
    float beta1;
    float eps1 = 1e-30f, eps2 = 1e-3f;
};
static double rms(const std::vector<float>& x) {
    double s = 0;
    for (float v : x) s += (double)v * v;
    return std::sqrt(s / x.size());
}
static void run(size_t blocks, const std::function<void()>& kernel) {
    dim3 grid, threads;
    grid.x = (unsigned)blocks;
    threads.x = 256;
    emu::launch(grid, threads, 0, kernel);
}

int main() {
    std::vector<Shape> shapes = {{true, 1100, 136}, {false, 7, 1},    {true, 300, 200},
                                 {false, 2000, 1},  {false, 4097, 1}, {true, 128, 1030}};
    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0, 1);
    for (int variant = 0; variant < 2; variant++) {
        Cfg cfg{true, 1.0f, true, variant == 1, 0.9f};
        int T = shapes.size();
        std::vector<std::vector<float>> p(T), pr(T), g(T), v(T), vr(T), vc(T), m(T), vref(T),
            vrref(T), vcref(T), mref(T);
        for (int t = 0; t < T; t++) {
            long n = shapes[t].n();
            p[t].resize(n);
            for (auto& x : p[t]) x = 0.05f * nd(rng);
            pr[t] = p[t];
            g[t].resize(n);
            v[t].assign(n, 0);
            vref[t] = v[t];
            vr[t].assign(shapes[t].rows, 0);
            vrref[t] = vr[t];
            vc[t].assign(shapes[t].cols, 0);
            vcref[t] = vc[t];
            m[t].assign(n, 0);
            mref[t] = m[t];
        }
        // Layout.
        std::vector<int> chunk_tensor;
        std::vector<unsigned> items, cols_items, row_items, full_items;
        std::vector<MtTensor> table(T);
        long col_partials = 0;
        for (int t = 0; t < T; t++) {
            long n = shapes[t].n();
            int chunks = (n + MT_CHUNK - 1) / MT_CHUNK;
            MtTensor& e = table[t];
            e.n = n;
            e.rows = shapes[t].rows;
            e.cols = shapes[t].cols;
            e.first_chunk = chunk_tensor.size();
            e.chunks = chunks;
            for (int c = 0; c < chunks; c++) chunk_tensor.push_back(t);
            if (shapes[t].factored) {
                int seg = (e.rows + MT_SEGMENT - 1) / MT_SEGMENT, cb = (e.cols + 255) / 256;
                e.col_base = col_partials;
                e.segments = seg;
                col_partials += (long)seg * e.cols;
                for (int i = 0; i < seg * cb; i++) {
                    cols_items.push_back(t | MT_COL << 24);
                    cols_items.push_back(i);
                }
                for (int r = 0; r < e.rows; r++) {
                    row_items.push_back(t | MT_ROW << 24);
                    row_items.push_back(r);
                }
            } else {
                e.col_base = 0;
                e.segments = 0;
                for (int c = 0; c < chunks; c++) {
                    full_items.push_back(t | MT_FULL << 24);
                    full_items.push_back(c);
                }
            }
        }
        for (auto* l : {&cols_items, &row_items, &full_items})
            items.insert(items.end(), l->begin(), l->end());
        int chunks = chunk_tensor.size();
        std::vector<double> pa(chunks), pb(chunks), colp(col_partials + 1), vrs(T), ysq(T), psq(T),
            gsq(T), usq(T);
        for (int t = 0; t < T; t++) {
            MtTensor& e = table[t];
            e.param = p[t].data();
            e.grad = g[t].data();
            e.v = shapes[t].factored ? nullptr : v[t].data();
            e.v_row = shapes[t].factored ? vr[t].data() : nullptr;
            e.v_col = shapes[t].factored ? vc[t].data() : nullptr;
            e.momentum = cfg.momentum ? m[t].data() : nullptr;
        }
        float tokens = 1000.0f, lr = 1e-2f;
        double worst = 0, worst_norm = 0;
        for (int step = 0; step < 3; step++) {
            double max_norm = step == 1 ? 100.0 : 1.0;
            for (int t = 0; t < T; t++) {
                for (auto& x : g[t]) x = 5.0f * nd(rng);
                table[t].grad = g[t].data();
            }
            // Reference.
            std::vector<std::vector<float>> gr = g;
            double sq = 0;
            for (auto& x : gr) {
                double s = 0;
                for (auto& y : x) {
                    y *= 1.0f / tokens;
                    s += (double)y * y;
                }
                sq += s;
            }
            double norm = std::sqrt(sq);
            float factor = norm > max_norm ? (float)(max_norm / norm) : 1.0f;
            if (norm > max_norm)
                for (auto& x : gr)
                    for (auto& y : x) y *= factor;
            float beta2 = 1.0f - std::pow((float)(step + 1), -0.8f);
            double ref_usq = 0;
            for (int t = 0; t < T; t++) {
                long n = shapes[t].n();
                std::vector<float> y(n);
                auto& gg = gr[t];
                if (!shapes[t].factored) {
                    for (long i = 0; i < n; i++) {
                        vref[t][i] = beta2 * vref[t][i] + (1 - beta2) * (gg[i] * gg[i] + cfg.eps1);
                        y[i] = gg[i] / std::sqrt(vref[t][i]);
                    }
                } else {
                    int R = shapes[t].rows, C = shapes[t].cols;
                    std::vector<double> cs(C, 0);
                    for (int i = 0; i < R; i++) {
                        double rsum = 0;
                        for (int j = 0; j < C; j++) {
                            double s2 =
                                (double)(gg[(long)i * C + j] * gg[(long)i * C + j] + cfg.eps1);
                            rsum += s2;
                            cs[j] += s2;
                        }
                        vrref[t][i] = beta2 * vrref[t][i] + (1 - beta2) * (float)(rsum / C);
                    }
                    for (int j = 0; j < C; j++)
                        vcref[t][j] = beta2 * vcref[t][j] + (1 - beta2) * (float)(cs[j] / R);
                    double s = 0;
                    for (float x : vrref[t]) s += x;
                    float rm = (float)(s / R);
                    for (int i = 0; i < R; i++) {
                        float rf = 1.0f / std::sqrt(vrref[t][i] / rm);
                        for (int j = 0; j < C; j++)
                            y[(long)i * C + j] =
                                gg[(long)i * C + j] * rf * (1.0f / std::sqrt(vcref[t][j]));
                    }
                }
                float denom = (float)std::max(rms(y) / cfg.clip_t, 1.0);
                if (denom > 1)
                    for (auto& x : y) x /= denom;
                float scale = lr * std::max((float)rms(pr[t]), cfg.eps2);
                for (long i = 0; i < n; i++) {
                    float u = scale * y[i];
                    if (cfg.momentum) {
                        u = cfg.beta1 * mref[t][i] + (1 - cfg.beta1) * u;
                        mref[t][i] = u;
                    }
                    pr[t][i] -= u;
                    ref_usq += (double)u * u;
                }
            }
            // Device path.
            run(chunks, [&] {
                mt_grad_sq_partial((const MtTensor*)table.data(), (const int*)chunk_tensor.data(),
                                   1.0f / tokens, pa.data());
            });
            run(T, [&] {
                mt_sum_chunks((const MtTensor*)table.data(), (const double*)pa.data(), gsq.data(),
                              (const double*)nullptr, (double*)nullptr);
            });
            double dsq = 0;
            for (double x : gsq) dsq += x;
            double dnorm = std::sqrt(dsq);
            float dfactor = dnorm > max_norm ? (float)(max_norm / dnorm) : 1.0f;
            run(items.size() / 2, [&] {
                mt_moments((const MtTensor*)table.data(), (const unsigned*)items.data(),
                           colp.data(), dfactor, beta2, cfg.eps1);
            });
            run(T, [&] {
                mt_factor_sums((const MtTensor*)table.data(), (const double*)colp.data(),
                               vrs.data(), beta2);
            });
            run(chunks, [&] {
                mt_y_sq_partial((const MtTensor*)table.data(), (const int*)chunk_tensor.data(),
                                (const double*)vrs.data(), dfactor, pa.data(), pb.data());
            });
            run(T, [&] {
                mt_sum_chunks((const MtTensor*)table.data(), (const double*)pa.data(), ysq.data(),
                              (const double*)pb.data(), psq.data());
            });
            run(chunks, [&] {
                mt_apply((const MtTensor*)table.data(), (const int*)chunk_tensor.data(),
                         (const double*)vrs.data(), (const double*)ysq.data(),
                         (const double*)psq.data(), dfactor, lr, cfg.clip_t, cfg.eps2, 1, cfg.beta1,
                         pa.data());
            });
            run(T, [&] {
                mt_sum_chunks((const MtTensor*)table.data(), (const double*)pa.data(), usq.data(),
                              (const double*)nullptr, (double*)nullptr);
            });
            double dusq = 0;
            for (double x : usq) dusq += x;
            if (std::abs(dnorm - norm) > 1e-12 * norm || dfactor != factor) {
                printf("FAIL: gradient norm %.17g vs %.17g\n", dnorm, norm);
                return 1;
            }
            printf(
                "variant %d step %d: norm %.12g vs %.12g (factor %g), update norm %.12g vs %.12g\n",
                variant, step, dnorm, norm, factor, std::sqrt(dusq), std::sqrt(ref_usq));
            worst_norm = std::max(
                worst_norm, std::abs(std::sqrt(dusq) - std::sqrt(ref_usq)) / std::sqrt(ref_usq));
            for (int t = 0; t < T; t++) {
                double umax = 0, err = 0;
                for (long i = 0; i < shapes[t].n(); i++) {
                    umax = std::max(umax, (double)std::abs(pr[t][i]));
                    err = std::max(err, (double)std::abs(pr[t][i] - p[t][i]));
                }
                for (long i = 0; i < shapes[t].n(); i++)
                    if (g[t][i] != gr[t][i] / factor && factor == 1.0f) {
                        printf("grad mismatch\n");
                        return 1;
                    }
                worst = std::max(worst, err / umax);
                double vmax = 0, verr = 0;
                if (shapes[t].factored) {
                    for (int i = 0; i < shapes[t].rows; i++) {
                        vmax = std::max(vmax, (double)vrref[t][i]);
                        verr = std::max(verr, (double)std::abs(vr[t][i] - vrref[t][i]));
                    }
                    for (int j = 0; j < shapes[t].cols; j++) {
                        verr = std::max(verr, (double)std::abs(vc[t][j] - vcref[t][j]));
                    }
                } else
                    for (long i = 0; i < shapes[t].n(); i++) {
                        vmax = std::max(vmax, (double)vref[t][i]);
                        verr = std::max(verr, (double)std::abs(v[t][i] - vref[t][i]));
                    }
                if (verr / vmax > 1e-6) {
                    printf("tensor %d moment err %g\n", t, verr / vmax);
                    return 1;
                }
            }
        }
        printf("variant %d: worst parameter difference %.3g (relative), worst update-norm %.3g\n",
               variant, worst, worst_norm);
        if (worst != 0.0 || worst_norm > 1e-12) {
            printf("FAIL\n");
            return 1;
        }
    }
}
