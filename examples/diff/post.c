/* A tiny request handler with a bounds bug: the post-patch source of the example. */
#include <stdio.h>
#include <string.h>

struct request {
    int id;
    char path[32];
};

static int requests_served;

static int path_is_safe(const char *path)
{
    return strstr(path, "..") == NULL;
}

int handle(struct request *r, const char *path)
{
    if (strlen(path) >= sizeof(r->path))
        return -1; /* the fix: refuse paths that do not fit */
    strcpy(r->path, path);
    if (!path_is_safe(r->path))
        return -1;
    requests_served++;
    return r->id;
}

int served(void)
{
    return requests_served;
}
