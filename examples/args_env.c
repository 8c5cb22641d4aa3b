/*
 * args_env.c - Plasm example: print argv and the environment.
 * Prints "argv[i]=..." per argument and "env NAME=VALUE" per environment
 * variable. If PLASM_EXIT is set, exits with atoi(PLASM_EXIT), else 0.
 */
#include <stdio.h>
#include <stdlib.h>

extern char **environ;

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);

    for (char **e = environ; e && *e; e++)
        printf("env %s\n", *e);

    const char *code = getenv("PLASM_EXIT");
    return code ? atoi(code) : 0;
}
