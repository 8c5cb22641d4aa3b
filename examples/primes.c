/*
 * primes.c - Plasm example: CPU-bound prime counting by trial division.
 * Usage: primes [N]   (default N = 100000)
 * Prints "primes below N: COUNT". An invalid N prints an error to stderr and exits 2.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static int is_prime(unsigned long n) {
    if (n < 2) return 0;
    if (n % 2 == 0) return n == 2;
    for (unsigned long d = 3; d * d <= n; d += 2)
        if (n % d == 0) return 0;
    return 1;
}

int main(int argc, char **argv) {
    unsigned long n = 100000;

    if (argc > 1) {
        char *end;
        errno = 0;
        long v = strtol(argv[1], &end, 10);
        if (errno != 0 || end == argv[1] || *end != '\0' || v < 0) {
            fprintf(stderr, "primes: invalid N '%s' (expected a non-negative integer)\n", argv[1]);
            return 2;
        }
        n = (unsigned long)v;
    }

    unsigned long count = 0;
    for (unsigned long i = 2; i < n; i++)
        count += is_prime(i);

    printf("primes below %lu: %lu\n", n, count);
    return 0;
}
