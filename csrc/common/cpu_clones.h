// ZFAST_CPU_CLONES: compile a CPU row function for AVX-512 (x86-64-v4), AVX2 and baseline x86-64, picked at load
// time (GCC's target_clones), so the wheel stays portable while each clone gets its own vectorisation. Nothing
// elsewhere (clang, other architectures).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ZFAST_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define ZFAST_CPU_CLONES
#endif
