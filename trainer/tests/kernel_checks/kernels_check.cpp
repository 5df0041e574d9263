// The element-wise and per-row kernels, run on the CPU emulator (cuda_emu.h), launched as
// launch.rs and launch_tokens.rs launch them:
// - norm.cu's fused attention-input kernels (per-head norm, RoPE and bf16 in one pass, and its
//   backward) against the separate kernels they replace (rmsnorm_forward, rope_apply,
//   f32_to_bf16_kernel; rope_apply inverse, rmsnorm_backward). Both compute the same products in
//   the same order and the emulator contracts nothing into an FMA, so the bits must be equal (on
//   a GPU the two may contract differently: tests/suite/cuda_kernels.rs allows one bf16 step
//   there). Head dims 64 and 128, with and without RoPE.
// - RMSNorm with a gain (forward, backward added into a gradient, the gain's two-pass gradient),
//   SwiGLU (forward, backward) and the cross-entropy with z-loss (forward, backward) against the
//   formulas in f64, to 1e-5 of each tensor's largest value; each `_bf16` build must equal its
//   f32 build rounded, bit for bit.
// Prints one line per check; exits non-zero if any failed.
#include "cuda_emu.h"
#include "check_rng.h"

#include <cstdint>
#include <string>

// The kernels, after the emulator that stands in for CUDA.
#include "../../src/backend/cuda/kernels/common.cuh"
#include "../../src/backend/cuda/kernels/convert.cu"
#include "../../src/backend/cuda/kernels/cross_entropy.cu"
#include "../../src/backend/cuda/kernels/norm.cu"
#include "../../src/backend/cuda/kernels/rope.cu"
#include "../../src/backend/cuda/kernels/swiglu.cu"

namespace {

int failures = 0;

dim3 blocks_of(size_t n) {
    dim3 g;
    g.x = (unsigned)std::max<size_t>(1, n);
    return g;
}

dim3 threads256() {
    dim3 t;
    t.x = 256;
    return t;
}

// As launch.rs: one warp per group, 8 groups per block.
dim3 group_grid(int groups) {
    return blocks_of((groups + 7) / 8);
}

std::vector<bf16_bits> to_bf16(const std::vector<float>& x) {
    std::vector<bf16_bits> y(x.size());
    long n = (long)x.size();
    emu::launch(blocks_of((x.size() / 4 + 255) / 256 + 1), threads256(), 0,
                [&] { f32_to_bf16_kernel(x.data(), y.data(), n); });
    return y;
}

template <typename T>
void same_bits(const std::string& name, const std::vector<T>& got, const std::vector<T>& want) {
    size_t differ = 0, first = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (memcmp(&got[i], &want[i], sizeof(T)) != 0 && differ++ == 0) first = i;
    }
    printf("%s %s: %zu of %zu values differ%s\n", differ ? "FAIL" : "ok  ", name.c_str(), differ,
           got.size(), differ ? (" (first at " + std::to_string(first) + ")").c_str() : "");
    if (differ) failures++;
}

void check(int head_dim, bool rope) {
    const int tokens = 37, heads = 3, positions_in_table = 100, half = head_dim / 2;
    const int groups = tokens * heads, n = groups * head_dim;
    const float eps = 1e-6f;
    Rng rng{(uint64_t)head_dim * 2 + rope};
    std::vector<float> x(n), dy(n);
    // The fused kernels read the projection and the gradient in bf16 (as the product and the
    // attention's backward write them): the separate kernels get the same values widened to f32.
    for (auto& v : x) v = bf16_to_f32(f32_to_bf16(3.0f * rng.uniform()));
    for (auto& v : dy) v = bf16_to_f32(f32_to_bf16(rng.uniform()));
    const std::vector<bf16_bits> x16 = to_bf16(x), dy16 = to_bf16(dy);
    // RoPE tables as the host builds them: f64 angles, rounded to f32.
    std::vector<float> cos_t(positions_in_table * half), sin_t(positions_in_table * half);
    for (int p = 0; p < positions_in_table; p++) {
        for (int i = 0; i < half; i++) {
            double angle = p * std::pow(10000.0, -2.0 * i / head_dim);
            cos_t[p * half + i] = (float)std::cos(angle);
            sin_t[p * half + i] = (float)std::sin(angle);
        }
    }
    std::vector<u32> positions(tokens);
    for (auto& p : positions) p = (u32)(rng.next() % positions_in_table);
    const u32* pos = rope ? positions.data() : nullptr;
    const float* ct = rope ? cos_t.data() : nullptr;
    const float* st = rope ? sin_t.data() : nullptr;
    std::string tag = "head_dim " + std::to_string(head_dim) + (rope ? " rope" : " no rope");

    // Forward: fused against norm -> rope -> bf16.
    std::vector<bf16_bits> fused(n);
    std::vector<float> inv_fused(groups), inv(groups), y(n);
    emu::launch(group_grid(groups), threads256(), 0, [&] {
        switch (head_dim) {
            case 32:
                head_norm_rope_bf16_d32(x16.data(), fused.data(), inv_fused.data(), pos, ct, st,
                                        groups, heads, eps);
                break;
            case 64:
                head_norm_rope_bf16_d64(x16.data(), fused.data(), inv_fused.data(), pos, ct, st,
                                        groups, heads, eps);
                break;
            default:
                head_norm_rope_bf16_d128(x16.data(), fused.data(), inv_fused.data(), pos, ct, st,
                                         groups, heads, eps);
        }
    });
    emu::launch(group_grid(groups), threads256(), 0, [&] {
        rmsnorm_forward(x.data(), nullptr, y.data(), inv.data(), groups, head_dim, eps, nullptr);
    });
    if (rope) {
        long pairs = (long)groups * half;
        emu::launch(blocks_of((pairs + 255) / 256), threads256(), 0, [&] {
            rope_apply(y.data(), positions.data(), cos_t.data(), sin_t.data(), tokens, heads,
                       head_dim, 0);
        });
    }
    same_bits(tag + " forward", fused, to_bf16(y));
    size_t inv_differ = 0;
    for (int g = 0; g < groups; g++) inv_differ += memcmp(&inv[g], &inv_fused[g], 4) != 0;
    printf("%s %s forward inv: %zu differ\n", inv_differ ? "FAIL" : "ok  ", tag.c_str(),
           inv_differ);
    if (inv_differ) failures++;

    // Backward: fused against inverse rope -> rmsnorm backward into zeros -> bf16.
    std::vector<bf16_bits> dx_fused(n);
    emu::launch(group_grid(groups), threads256(), 0, [&] {
        switch (head_dim) {
            case 32:
                head_norm_rope_backward_bf16_d32(dy16.data(), x16.data(), inv.data(), pos, ct, st,
                                                 dx_fused.data(), groups, heads);
                break;
            case 64:
                head_norm_rope_backward_bf16_d64(dy16.data(), x16.data(), inv.data(), pos, ct, st,
                                                 dx_fused.data(), groups, heads);
                break;
            default:
                head_norm_rope_backward_bf16_d128(dy16.data(), x16.data(), inv.data(), pos, ct, st,
                                                  dx_fused.data(), groups, heads);
        }
    });
    std::vector<float> d = dy, dx(n, 0.0f);
    if (rope) {
        long pairs = (long)groups * half;
        emu::launch(blocks_of((pairs + 255) / 256), threads256(), 0, [&] {
            rope_apply(d.data(), positions.data(), cos_t.data(), sin_t.data(), tokens, heads,
                       head_dim, 1);
        });
    }
    emu::launch(group_grid(groups), threads256(), 0, [&] {
        rmsnorm_backward(d.data(), x.data(), inv.data(), nullptr, dx.data(), groups, head_dim,
                         nullptr);
    });
    same_bits(tag + " backward", dx_fused, to_bf16(dx));
}

// max |got - want| / max |want| within `tol`.
void close(const std::string& name, const std::vector<float>& got, const std::vector<double>& want,
           double tol) {
    double scale = 1e-30, worst = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    for (size_t i = 0; i < got.size(); i++) {
        double err = std::isnan(got[i]) ? INFINITY : std::fabs(got[i] - want[i]) / scale;
        worst = std::max(worst, err);
    }
    bool ok = worst <= tol;
    printf("%s %s: worst %.2e, tolerance %.0e\n", ok ? "ok  " : "FAIL", name.c_str(), worst, tol);
    if (!ok) failures++;
}

std::vector<float> random_values(Rng& rng, size_t n, float scale) {
    std::vector<float> x(n);
    for (auto& v : x) v = scale * rng.normal();
    return x;
}

dim3 elementwise(size_t n) {
    return blocks_of((n + 255) / 256);
}

void check_rmsnorm(int width) {
    // Rows of a width that is not a multiple of 32 (and an odd one, whose last value a lane
    // takes alone); 150 rows, so the gain gradient has three chunks of GAIN_CHUNK.
    const int rows = 150;
    const float eps = 1e-6f;
    Rng rng{7};
    auto x = random_values(rng, (size_t)rows * width, 2.0f);
    auto gain = random_values(rng, width, 1.0f);
    auto dy = random_values(rng, (size_t)rows * width, 1.0f);
    auto dx0 = random_values(rng, (size_t)rows * width, 1.0f);
    auto dgain0 = random_values(rng, width, 1.0f);
    std::vector<double> y_ref(x.size()), dx_ref(x.size()), dgain_ref(width);
    for (int c = 0; c < width; c++) dgain_ref[c] = dgain0[c];
    for (int r = 0; r < rows; r++) {
        double sq = 0;
        for (int c = 0; c < width; c++) sq += (double)x[r * width + c] * x[r * width + c];
        double inv = 1.0 / std::sqrt(sq / width + eps), dot = 0;
        for (int c = 0; c < width; c++) {
            double xhat = x[r * width + c] * inv;
            y_ref[r * width + c] = xhat * gain[c];
            dot += (double)dy[r * width + c] * gain[c] * xhat;
            dgain_ref[c] += dy[r * width + c] * xhat;
        }
        dot /= width;
        for (int c = 0; c < width; c++) {
            double xhat = x[r * width + c] * inv;
            dx_ref[r * width + c] =
                dx0[r * width + c] + inv * (dy[r * width + c] * gain[c] - xhat * dot);
        }
    }
    std::vector<float> y(x.size()), inv(rows), inv2(rows), kept(x.size(), std::nanf(""));
    std::vector<bf16_bits> y16(x.size());
    emu::launch(group_grid(rows), threads256(), 0, [&] {
        rmsnorm_forward(x.data(), gain.data(), y.data(), inv.data(), rows, width, eps, nullptr);
    });
    // The bf16 build, keeping a copy of its input (as a residual block's forward does).
    emu::launch(group_grid(rows), threads256(), 0, [&] {
        rmsnorm_forward_bf16(x.data(), gain.data(), y16.data(), inv2.data(), rows, width, eps,
                             kept.data());
    });
    close("rmsnorm forward", y, y_ref, 1e-5);
    same_bits("rmsnorm forward bf16", y16, to_bf16(y));
    same_bits("rmsnorm forward's kept input", kept, x);
    std::vector<float> dx = dx0, dgain = dgain0;
    std::vector<bf16_bits> dx16(dx.size());
    emu::launch(group_grid(rows), threads256(), 0, [&] {
        rmsnorm_backward(dy.data(), x.data(), inv.data(), gain.data(), dx.data(), rows, width,
                         dx16.data());
    });
    close("rmsnorm backward (added into dx)", dx, dx_ref, 1e-5);
    same_bits("rmsnorm backward's bf16 copy of dx", dx16, to_bf16(dx));
    const int chunks = (rows + GAIN_CHUNK - 1) / GAIN_CHUNK;
    std::vector<float> partial((size_t)chunks * width);
    dim3 partial_grid = blocks_of((width + 255) / 256);
    partial_grid.y = (unsigned)chunks;
    emu::launch(partial_grid, threads256(), 0, [&] {
        rmsnorm_gain_partial(dy.data(), x.data(), inv.data(), partial.data(), rows, width);
    });
    emu::launch(elementwise(width), threads256(), 0,
                [&] { rmsnorm_gain_final(partial.data(), dgain.data(), chunks, width); });
    close("rmsnorm gain gradient (added)", dgain, dgain_ref, 1e-5);
}

void check_swiglu() {
    // Not a multiple of a 16-byte vector, so the last values take the one-at-a-time path.
    const long n = 5003;
    Rng rng{8};
    auto gate = random_values(rng, n, 3.0f), up = random_values(rng, n, 1.0f);
    auto dh = random_values(rng, n, 1.0f);
    std::vector<double> h_ref(n), dgate_ref(n), dup_ref(n);
    for (long i = 0; i < n; i++) {
        double g = gate[i], s = 1.0 / (1.0 + std::exp(-g));
        h_ref[i] = g * s * up[i];
        dup_ref[i] = dh[i] * g * s;
        dgate_ref[i] = dh[i] * up[i] * s * (1.0 + g * (1.0 - s));
    }
    std::vector<float> h(n), dgate(n), dup(n);
    emu::launch(elementwise(n), threads256(), 0,
                [&] { swiglu_forward(gate.data(), up.data(), h.data(), n); });
    emu::launch(elementwise(n), threads256(), 0, [&] {
        swiglu_backward(dh.data(), gate.data(), up.data(), dgate.data(), dup.data(), n);
    });
    close("swiglu forward", h, h_ref, 1e-5);
    close("swiglu backward dgate", dgate, dgate_ref, 1e-5);
    close("swiglu backward dup", dup, dup_ref, 1e-5);
    // The bf16 builds read bf16 (as the products write it) and write bf16: the f32 builds'
    // results on the rounded inputs, rounded, bit for bit.
    auto gate16 = to_bf16(gate), up16 = to_bf16(up), dh16 = to_bf16(dh);
    std::vector<float> gate_r(n), up_r(n), dh_r(n);
    for (long i = 0; i < n; i++) {
        gate_r[i] = bf16_to_f32(gate16[i]);
        up_r[i] = bf16_to_f32(up16[i]);
        dh_r[i] = bf16_to_f32(dh16[i]);
    }
    std::vector<float> hr(n), dgater(n), dupr(n);
    emu::launch(elementwise(n), threads256(), 0,
                [&] { swiglu_forward(gate_r.data(), up_r.data(), hr.data(), n); });
    emu::launch(elementwise(n), threads256(), 0, [&] {
        swiglu_backward(dh_r.data(), gate_r.data(), up_r.data(), dgater.data(), dupr.data(), n);
    });
    // Aligned arrays (16-byte accesses, and the tail one at a time), then arrays that start one
    // value past a 16-byte boundary (every value one at a time): the same bits.
    for (long shift : {0L, 1L}) {
        const long m = n - shift;
        std::vector<bf16_bits> h16(n), dgate16(n), dup16(n);
        emu::launch(elementwise(m), threads256(), 0, [&] {
            swiglu_forward_bf16(gate16.data() + shift, up16.data() + shift, h16.data() + shift, m);
        });
        emu::launch(elementwise(m), threads256(), 0, [&] {
            swiglu_backward_bf16(dh16.data() + shift, gate16.data() + shift, up16.data() + shift,
                                 dgate16.data() + shift, dup16.data() + shift, m);
        });
        auto tail = [&](std::vector<bf16_bits> v) {
            return std::vector<bf16_bits>(v.begin() + shift, v.end());
        };
        auto want = [&](const std::vector<float>& v) { return tail(to_bf16(v)); };
        same_bits("swiglu forward bf16", tail(h16), want(hr));
        same_bits("swiglu backward dgate bf16", tail(dgate16), want(dgater));
        same_bits("swiglu backward dup bf16", tail(dup16), want(dupr));
    }
}

void check_cross_entropy() {
    // A vocabulary that is not a multiple of the block, nor of the gradient kernel's 4 logits
    // per thread (so rows start on and off 16-byte boundaries); logits of a realistic spread.
    const int tokens = 9, vocab = 1002;
    const float z_loss = 1e-4f, grad_scale = 0.03125f;
    Rng rng{9};
    auto logits = random_values(rng, (size_t)tokens * vocab, 4.0f);
    // Rows whose maximum comes last, first, or is shared by every logit, for the one-pass
    // log-sum-exp's rescaling.
    logits[(size_t)1 * vocab - 1] = 60.0f;
    logits[(size_t)1 * vocab] = 60.0f;
    for (int v = 0; v < vocab; v++) logits[(size_t)2 * vocab + v] = -3.5f;
    std::vector<u32> targets(tokens);
    for (auto& t : targets) t = (u32)(rng.next() % vocab);
    std::vector<double> lz_ref(tokens), ce_ref(tokens), z_ref(tokens), grad_ref(logits.size());
    for (int t = 0; t < tokens; t++) {
        const float* l = logits.data() + (size_t)t * vocab;
        double m = -INFINITY, sum = 0;
        for (int v = 0; v < vocab; v++) m = std::max(m, (double)l[v]);
        for (int v = 0; v < vocab; v++) sum += std::exp(l[v] - m);
        double lz = m + std::log(sum);
        lz_ref[t] = lz;
        ce_ref[t] = lz - l[targets[t]];
        z_ref[t] = z_loss * lz * lz;
        for (int v = 0; v < vocab; v++) {
            double g = std::exp(l[v] - lz) * (1.0 + 2.0 * z_loss * lz) - (v == (int)targets[t]);
            grad_ref[(size_t)t * vocab + v] = g * grad_scale;
        }
    }
    std::vector<float> lz(tokens), ce(tokens), z(tokens), grad(logits.size());
    std::vector<bf16_bits> grad16(logits.size());
    dim3 forward_grid = blocks_of(tokens), forward_threads;
    forward_threads.x = 512;
    emu::launch(forward_grid, forward_threads, 0, [&] {
        cross_entropy_forward(logits.data(), targets.data(), lz.data(), ce.data(), z.data(), tokens,
                              vocab, z_loss);
    });
    dim3 backward_grid = blocks_of((vocab + 255) / 256);
    backward_grid.y = tokens;
    emu::launch(backward_grid, threads256(), 0, [&] {
        cross_entropy_backward(logits.data(), grad.data(), targets.data(), lz.data(), tokens, vocab,
                               z_loss, grad_scale);
    });
    emu::launch(backward_grid, threads256(), 0, [&] {
        cross_entropy_backward_bf16(logits.data(), grad16.data(), targets.data(), lz.data(), tokens,
                                    vocab, z_loss, grad_scale);
    });
    close("cross-entropy log Z", lz, lz_ref, 1e-6);
    close("cross-entropy loss", ce, ce_ref, 1e-5);
    close("cross-entropy z-loss", z, z_ref, 1e-5);
    close("cross-entropy gradient", grad, grad_ref, 1e-5);
    same_bits("cross-entropy gradient bf16", grad16, to_bf16(grad));

    // The fused kernel (a training step's chunk): both kernels' results, bit for bit, from one
    // read of the logits, f32 and bf16, the same 512 threads per token.
    std::vector<float> lz_f(tokens), ce_f(tokens), z_f(tokens), grad_f(logits.size());
    emu::launch(forward_grid, forward_threads, 0, [&] {
        cross_entropy_fused(logits.data(), targets.data(), lz_f.data(), ce_f.data(), z_f.data(),
                            grad_f.data(), tokens, vocab, z_loss, grad_scale);
    });
    std::vector<bf16_bits> grad16_f(logits.size());
    std::vector<float> lz_b(tokens), ce_b(tokens), z_b(tokens);
    emu::launch(forward_grid, forward_threads, 0, [&] {
        cross_entropy_fused_bf16(logits.data(), targets.data(), lz_b.data(), ce_b.data(),
                                 z_b.data(), grad16_f.data(), tokens, vocab, z_loss, grad_scale);
    });
    same_bits("cross-entropy fused log Z", lz_f, lz);
    same_bits("cross-entropy fused loss", ce_f, ce);
    same_bits("cross-entropy fused z-loss", z_f, z);
    same_bits("cross-entropy fused gradient", grad_f, grad);
    same_bits("cross-entropy fused log Z (bf16 build)", lz_b, lz);
    same_bits("cross-entropy fused gradient bf16", grad16_f, grad16);
}

}  // namespace

int main() {
    for (int head_dim : {32, 64, 128}) {
        for (bool rope : {false, true}) check(head_dim, rope);
    }
    check_rmsnorm(200);
    check_rmsnorm(201);
    check_swiglu();
    check_cross_entropy();
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all kernel checks passed\n");
    return 0;
}
