#ifndef FILES_H
#define FILES_H
#include <stddef.h>
/* Reads the file named by a request path under the document root into buf.
 * Returns its length, -1 when it does not exist, -2 when the path is refused. */
long read_document(const char *path, char *buf, size_t size);
#endif
