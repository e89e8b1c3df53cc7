#include <stdio.h>
#include <string.h>
#include "files.h"

static const char *document_root = "www";

/* Whether a request path may be served. */
static int path_is_allowed(const char *path)
{
    return path[0] == '/';
}

long read_document(const char *path, char *buf, size_t size)
{
    char file[512];
    FILE *f;
    size_t n;

    if (!path_is_allowed(path))
        return -2;
    snprintf(file, sizeof file, "%s%s", document_root, path);
    f = fopen(file, "r");
    if (!f)
        return -1;
    n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (long)n;
}
