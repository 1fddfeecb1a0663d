// x86 intrinsics for the *_avx2 / *_avx512* / *_avxvnni kernel files.
//
// Normally this is <immintrin.h>. The native test driver can instead compile the same
// kernel source against SIMDe (TINYLM_SIMDE), which implements AVX-512 and VNNI
// intrinsics with AVX2 code: that checks a kernel's logic on a CPU that cannot execute
// the real instructions. Kernel files include this header, never <immintrin.h> directly.
#pragma once

#if defined(TINYLM_SIMDE)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
// SIMDe has no AVX-VNNI names; the VEX-encoded ops compute what the AVX512-VL ones do.
#define _mm256_dpbusd_avx_epi32 _mm256_dpbusd_epi32
#define _mm256_dpbusds_avx_epi32 _mm256_dpbusds_epi32
#define _mm256_dpwssd_avx_epi32 _mm256_dpwssd_epi32
#define _mm256_dpwssds_avx_epi32 _mm256_dpwssds_epi32
#else
#include <immintrin.h>
#endif
