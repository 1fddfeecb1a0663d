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
#else
#include <immintrin.h>
#endif
