// The check programs' random inputs: SplitMix64 (as rng::SplitMix64 on the Rust side).
#pragma once

#include <stdint.h>

struct Rng {
    uint64_t state;
    uint64_t next() {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, 1).
    double unit() { return (double)(next() >> 11) / 9007199254740992.0; }
    // Uniform in [-1, 1).
    float uniform() { return (float)(unit() * 2.0 - 1.0); }
    // Roughly normal: the sum of four uniforms, centred and scaled to unit variance.
    float normal() {
        double s = 0;
        for (int i = 0; i < 4; i++) s += unit();
        return (float)((s - 2.0) * 1.7320508);
    }
};
