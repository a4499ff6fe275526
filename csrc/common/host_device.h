// Function qualifiers of the maths shared by the CPU loops and the CUDA kernels ("one maths, two launchers").
//   ZFAST_HD               callable from host and device code; a plain inline function on the host.
//   ZFAST_HD_ALWAYS_INLINE the same, but always inlined on the host by GCC/Clang: for maths that the CPU's
//                          AVX-512 loops instantiate on vector types, which must be inlined into them (a call
//                          would pass the vectors by the baseline ABI).
// One definition for every header, so that a translation unit including several of them (bindings.cpp) sees
// the same macros.
#pragma once

#if defined(__CUDACC__)
#define ZFAST_HD __host__ __device__ __forceinline__
#define ZFAST_HD_ALWAYS_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define ZFAST_HD inline
#define ZFAST_HD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ZFAST_HD inline
#define ZFAST_HD_ALWAYS_INLINE inline
#endif
