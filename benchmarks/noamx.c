/* LD_PRELOAD shim for benchmarks/cpu_extract_bench.py --emulate: refuses the Linux AMX permission
   request (arch_prctl ARCH_REQ_XCOMP_PERM), so that oneDNN, ONNX Runtime and PyTorch run their
   non-AMX kernels on an AMX CPU. NOAMX_LOG=1 reports each refusal on stderr. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <stdlib.h>
/* Refuse ARCH_REQ_XCOMP_PERM (0x1023): libraries then see no AMX permission and use their non-AMX kernels. */
long syscall(long number, ...) {
    va_list ap; va_start(ap, number);
    long a[6]; for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_arch_prctl && a[0] == 0x1023) { if (getenv("NOAMX_LOG")) fprintf(stderr, "noamx: refused ARCH_REQ_XCOMP_PERM\n"); errno = EPERM; return -1; }
    static long (*real)(long, ...) = 0;
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
