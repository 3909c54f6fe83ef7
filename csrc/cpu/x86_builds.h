// The x86-64 builds of the CPU kernels' vector code: functions compiled for AVX-512 or AVX2
// with GCC's per-function targets, picked at run time (shift_isa()); other compilers and
// CPUs get the portable code only.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TRANSLUTION_EXT_X86_BUILDS 1
#define TRANSLUTION_EXT_AVX512 __attribute__((target("arch=x86-64-v4")))
#define TRANSLUTION_EXT_AVX2 __attribute__((target("arch=x86-64-v3")))
#else
#define TRANSLUTION_EXT_X86_BUILDS 0
#endif
