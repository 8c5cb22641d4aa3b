/*
 * hello.c - Plasm example: read all of stdin and write it to stdout
 * reversed byte-wise ("Hello, World" -> "dlroW ,olleH").
 * Build: scripts/build-examples.sh   Run: plasm submit examples/build/hello.wasm --stdin 'Hello, World'
 */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fputs("hello: out of memory\n", stderr);
        return 1;
    }

    size_t n;
    while ((n = fread(buf + len, 1, cap - len, stdin)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                fputs("hello: out of memory\n", stderr);
                return 1;
            }
            buf = grown;
        }
    }

    for (size_t i = 0; i < len / 2; i++) {
        char tmp = buf[i];
        buf[i] = buf[len - 1 - i];
        buf[len - 1 - i] = tmp;
    }
    fwrite(buf, 1, len, stdout);
    free(buf);
    return 0;
}
