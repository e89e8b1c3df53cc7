/* A tiny multi-threaded file server for the hotsplice demo: one request line per
 * connection, "GET <path>", answered with the file under www/. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "files.h"

static int listener;

static void answer(int fd)
{
    char request[512], body[4096], reply[4200];
    ssize_t n = read(fd, request, sizeof request - 1);
    long len;

    if (n <= 0)
        return;
    request[n] = '\0';
    request[strcspn(request, "\r\n")] = '\0';
    if (strncmp(request, "GET ", 4) != 0) {
        dprintf(fd, "400 bad request\n");
        return;
    }
    len = read_document(request + 4, body, sizeof body);
    if (len == -2)
        snprintf(reply, sizeof reply, "403 forbidden\n");
    else if (len < 0)
        snprintf(reply, sizeof reply, "404 not found\n");
    else
        snprintf(reply, sizeof reply, "200 ok\n%s", body);
    if (write(fd, reply, strlen(reply)) < 0)
        perror("write");
}

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0)
            continue;
        answer(fd);
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int one = 1;
    pthread_t t;

    addr.sin_port = htons(argc > 1 ? atoi(argv[1]) : 18080);
    listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 64)) {
        perror("bind");
        return 1;
    }
    for (int i = 0; i < 4; i++)
        pthread_create(&t, NULL, worker, NULL);
    printf("serving www/ on 127.0.0.1:%d with 4 threads\n", ntohs(addr.sin_port));
    fflush(stdout);
    pause();
    return 0;
}
