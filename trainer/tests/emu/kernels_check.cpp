// The fused attention-input kernels of norm.cu (session 4: per-head norm, RoPE and bf16 in one
// pass, and its backward), run on the CPU emulator (cuda_emu.h), against the separate kernels
// they replace (rmsnorm_forward, rope_apply, f32_to_bf16_kernel; rope_apply inverse,
// rmsnorm_backward), which the GPU tests check against the CPU reference. Both compute the same
// products in the same order; the emulator contracts nothing into an FMA, so the bits must be
// equal (on a GPU the two may contract differently: tests/cuda_kernels.rs allows one bf16 step
// there). Head dims 64 and 128, with and without RoPE. Launches as launch.rs sets them up.
// Prints one line per check; exits non-zero if any failed.
#include "cuda_emu.h"
#include "check_rng.h"

#include <cstdint>
#include <string>

// The kernels, after the emulator that stands in for CUDA.
#include "../../src/backend/cuda/kernels/common.cuh"
#include "../../src/backend/cuda/kernels/convert.cu"
#include "../../src/backend/cuda/kernels/norm.cu"
#include "../../src/backend/cuda/kernels/rope.cu"

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

void same_bits(const std::string& name, const std::vector<bf16_bits>& got,
               const std::vector<bf16_bits>& want) {
    size_t differ = 0, first = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (got[i] != want[i] && differ++ == 0) first = i;
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
    for (auto& v : x) v = 3.0f * rng.uniform();
    for (auto& v : dy) v = rng.uniform();
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
        head_norm_rope_bf16(x.data(), fused.data(), inv_fused.data(), pos, ct, st, groups, heads,
                            head_dim, eps);
    });
    emu::launch(group_grid(groups), threads256(), 0, [&] {
        rmsnorm_forward(x.data(), nullptr, y.data(), inv.data(), groups, head_dim, eps);
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
        head_norm_rope_backward_bf16(dy.data(), x.data(), inv.data(), pos, ct, st, dx_fused.data(),
                                     groups, heads, head_dim);
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
        rmsnorm_backward(d.data(), x.data(), inv.data(), nullptr, dx.data(), groups, head_dim);
    });
    same_bits(tag + " backward", dx_fused, to_bf16(dx));
}

}  // namespace

int main() {
    for (int head_dim : {64, 128}) {
        for (bool rope : {false, true}) check(head_dim, rope);
    }
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all kernel checks passed\n");
    return 0;
}
