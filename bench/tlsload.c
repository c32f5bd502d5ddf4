/*
 * tlsload: a small epoll + OpenSSL load client for the stud benchmark suite.
 *
 * Modes
 *   -m hs    loop for -d seconds over -c concurrent slots: connect, TLS handshake,
 *            "GET PATH" with "Connection: close", read the response to EOF, close,
 *            start over.  Session caching is off, so every handshake is a full one
 *            (unless -r is given: then each slot offers the session it got last).
 *   -m idle  open -n connections (at most -c handshaking at a time); each does the
 *            handshake and one keep-alive request/response, then stays idle.  Prints
 *            a "ready" JSON line, holds the connections until stdin is closed or a
 *            line arrives on it (or -w seconds pass), then prints a "done" line.
 *            With -e, every connection still open then sends the request once more
 *            and must get the whole response again ("answered" in the done line).
 *   -m hello   (a flood) for -d seconds, -c connections that each send a ClientHello and
 *            then nothing; one the server closes is opened again.
 *   -m partial (a flood) as hello, but only the first bytes of a ClientHello are sent.
 *   -m garbage (a flood) for -d seconds over -c slots: connect, send bytes that are not
 *            TLS, wait for the server to close, start over.
 *
 * -B ADDR binds each connection to that source address first (an IPv4 address on lo:
 * each source address has its own ephemeral ports).
 *
 * -E FILE presents a client certificate (FILE: the certificate, then its chain; the key
 * too unless -K FILE names another file).  "cert_requested" counts the completed
 * connections on which the server asked for one.
 *
 * Output: one JSON object per line on stdout.
 * Build:  gcc -O2 -o tlsload tlsload.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { ST_FREE, ST_CONNECT, ST_HANDSHAKE, ST_WRITE, ST_READ, ST_IDLE, ST_HELD, ST_SHUT };
enum mode { M_HS, M_IDLE, M_HELLO, M_GARBAGE, M_PARTIAL };
static enum mode mode;

struct conn {
    int fd;
    enum state st;
    SSL *ssl;
    SSL_SESSION *sess; /* -r: the last session this slot received */
    double t_start;
    size_t req_off;
    size_t got;            /* response bytes received */
    long need;             /* idle mode: total response length once headers are parsed */
    char head[512];        /* first bytes of the response, for the status line/headers */
    size_t head_len;
    int cert_requested;    /* the server sent a CertificateRequest */
};

static struct {
    const char *mode, *addr, *path, *groups, *ciphers, *host, *cert, *key, *source;
    int port, conc, count, tls, resume, echo;
    double duration, hold, setup_timeout, conn_timeout;
} opt = {"hs", "127.0.0.1", "/", "X25519", NULL, "localhost", NULL, NULL, NULL, 0, 32, 100, 13,
         0, 0, 5.0, 600.0, 300.0, 10.0};

static struct {
    long completed, resumed, cert_requested, err_connect, err_handshake, err_io, err_status, err_timeout;
    long established, dropped, answered, opened, held, closed;
    double lat_sum;
} st;
static int checking; /* -e: the final round of requests on the held connections */

static char proto_seen[32] = "", cipher_seen[64] = "", kex_seen[32] = "", cert_seen[32] = "";
static SSL_CTX *ctx;
static int ep;
static struct conn *conns;
static char req[512];
static size_t req_len;
static int sess_idx;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess) {
    struct conn *c = SSL_get_ex_data(ssl, sess_idx);
    if (!c) return 0;
    if (c->sess) SSL_SESSION_free(c->sess);
    c->sess = sess; /* keep the reference */
    return 1;
}

/* OpenSSL calls a client's cert_cb only on a CertificateRequest: proof that the server asked,
 * which the client cannot see otherwise (with TLS 1.3 its handshake ends before the server
 * has verified anything). */
static int cert_cb(SSL *ssl, void *arg) {
    (void)arg;
    struct conn *c = SSL_get_ex_data(ssl, sess_idx);
    if (c) c->cert_requested = 1;
    return 1;
}

static void record_params(SSL *ssl) {
    if (proto_seen[0]) return;
    snprintf(proto_seen, sizeof proto_seen, "%s", SSL_get_version(ssl));
    snprintf(cipher_seen, sizeof cipher_seen, "%s", SSL_get_cipher_name(ssl));
    EVP_PKEY *k = NULL;
    if (SSL_get_peer_tmp_key(ssl, &k) && k) {
        snprintf(kex_seen, sizeof kex_seen, "%s", OBJ_nid2sn(EVP_PKEY_id(k)));
        EVP_PKEY_free(k);
    }
    X509 *x = SSL_get1_peer_certificate(ssl);
    if (x) {
        EVP_PKEY *pk = X509_get0_pubkey(x);
        if (pk) snprintf(cert_seen, sizeof cert_seen, "%s-%d", OBJ_nid2sn(EVP_PKEY_id(pk)),
                         EVP_PKEY_bits(pk));
        X509_free(x);
    }
}

static void conn_close(struct conn *c) {
    if (c->ssl) {
        SSL_set_ex_data(c->ssl, sess_idx, NULL);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->st = ST_FREE;
}

static int conn_start(struct conn *c) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(opt.port)};
    inet_pton(AF_INET, opt.addr, &sa.sin_addr);
    memset(&c->req_off, 0, sizeof *c - offsetof(struct conn, req_off));
    c->t_start = now();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        st.err_connect++;
        c->st = ST_FREE;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.source) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        inet_pton(AF_INET, opt.source, &src.sin_addr);
        /* the port is chosen at connect(), per destination: 64k conns per source address */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
            st.err_connect++;
            conn_close(c);
            return -1;
        }
    }
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        st.err_connect++;
        conn_close(c);
        return -1;
    }
    c->st = ST_CONNECT;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static int status_ok(const struct conn *c) {
    return strncmp(c->head, "HTTP/1.", 7) == 0 && strncmp(c->head + 8, " 200", 4) == 0;
}

/* Parses the response head once "\r\n\r\n" is there; returns the total length or -1. */
static long response_length(struct conn *c) {
    c->head[c->head_len < sizeof c->head ? c->head_len : sizeof c->head - 1] = 0;
    char *end = strstr(c->head, "\r\n\r\n");
    if (!end) return -1;
    long clen = 0;
    for (char *p = c->head; p && p < end; p = strstr(p, "\r\n")) {
        if (*p == '\r') p += 2;
        if (strncasecmp(p, "content-length:", 15) == 0) clen = strtol(p + 15, NULL, 10);
    }
    return (end + 4 - c->head) + clen;
}

/* Drives one connection as far as it goes; returns 1 when it finished (ok or failed). */
static int conn_step(struct conn *c, int is_hs) {
    for (;;) {
        switch (c->st) {
        case ST_CONNECT: {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == EINPROGRESS || err == EALREADY) return 0;
            if (err) {
                st.err_connect++;
                conn_close(c);
                return 1;
            }
            st.opened++;
            if (mode == M_GARBAGE) {
                static const char junk[] = "\x16\x03\x01\xff\xffNOT TLS AT ALL\r\n\r\n";
                if (send(c->fd, junk, sizeof junk - 1, MSG_NOSIGNAL) < 0) st.err_io++;
                c->st = ST_SHUT;
                break;
            }
            if (mode == M_PARTIAL) {
                /* a handshake record of 512 bytes announced, a ClientHello begun, 11 sent */
                static const char start[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
                if (send(c->fd, start, sizeof start - 1, MSG_NOSIGNAL) < 0) st.err_io++;
                c->st = ST_HELD;
                st.held++;
                break;
            }
            c->ssl = SSL_new(ctx);
            SSL_set_ex_data(c->ssl, sess_idx, c);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_tlsext_host_name(c->ssl, opt.host);
            if (opt.resume && c->sess) SSL_set_session(c->ssl, c->sess);
            c->st = ST_HANDSHAKE;
            break;
        }
        case ST_HANDSHAKE: {
            int r = SSL_connect(c->ssl);
            if (r != 1) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ && mode == M_HELLO) { /* the hello is out */
                    c->st = ST_HELD;
                    st.held++;
                    return 0;
                }
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
                if (e == SSL_ERROR_SYSCALL && errno == ECONNREFUSED) st.err_connect++;
                else st.err_handshake++;
                ERR_clear_error();
                conn_close(c);
                return 1;
            }
            record_params(c->ssl);
            if (SSL_session_reused(c->ssl)) st.resumed++;
            c->st = ST_WRITE;
            break;
        }
        case ST_WRITE: {
            int r = SSL_write(c->ssl, req + c->req_off, (int)(req_len - c->req_off));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
                st.err_io++;
                ERR_clear_error();
                conn_close(c);
                return 1;
            }
            c->req_off += r;
            if (c->req_off == req_len) {
                c->st = ST_READ;
                c->need = -1;
            }
            break;
        }
        case ST_READ: {
            char buf[16384];
            int r = SSL_read(c->ssl, buf, sizeof buf);
            if (r > 0) {
                if (c->head_len < sizeof c->head - 1) {
                    size_t n = sizeof c->head - 1 - c->head_len;
                    if ((size_t)r < n) n = r;
                    memcpy(c->head + c->head_len, buf, n);
                    c->head_len += n;
                }
                c->got += r;
                if (!is_hs) {
                    if (c->need < 0) c->need = response_length(c);
                    if (c->need >= 0 && (long)c->got >= c->need) {
                        if (!status_ok(c)) {
                            st.err_status++;
                            conn_close(c);
                            return 1;
                        }
                        c->st = ST_IDLE;
                        if (checking) st.answered++;
                        else st.established++;
                        return 1;
                    }
                }
                break;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
            ERR_clear_error();
            /* EOF (with or without close_notify) */
            if (is_hs && c->got > 0) {
                if (status_ok(c)) {
                    /* a clean end: keeps the session resumable (SSL_free would spoil it) */
                    SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
                    st.completed++;
                    st.cert_requested += c->cert_requested;
                    st.lat_sum += now() - c->t_start;
                } else {
                    st.err_status++;
                }
            } else {
                st.err_io++;
            }
            conn_close(c);
            return 1;
        }
        case ST_IDLE: {
            /* Anything on an idle connection: drain it; EOF/error means it was dropped. */
            char buf[4096];
            int r = SSL_read(c->ssl, buf, sizeof buf);
            if (r > 0) break;
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
            ERR_clear_error();
            st.dropped++;
            st.established--;
            conn_close(c);
            return 0;
        }
        case ST_HELD:
        case ST_SHUT: {
            /* a flood's connection: whatever the server says, until it closes */
            char buf[4096];
            ssize_t r = recv(c->fd, buf, sizeof buf, 0);
            if (r > 0) break;
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
            st.held -= c->st == ST_HELD;
            st.closed++;
            conn_close(c);
            return 1;
        }
        case ST_FREE:
            return 0;
        }
    }
}

/* -e: every held connection asks again and must get the whole response; returns the time
 * it took (at most opt.conn_timeout * 6). */
static double final_check(int nslots) {
    double t0 = now(), deadline = t0 + opt.conn_timeout * 6;
    long pending = 0;
    checking = 1;
    for (int i = 0; i < nslots; i++) {
        struct conn *c = &conns[i];
        if (c->st != ST_IDLE) continue;
        memset(&c->req_off, 0, offsetof(struct conn, cert_requested) - offsetof(struct conn, req_off));
        c->st = ST_WRITE;
        pending++;
        if (conn_step(c, 0)) pending--;
    }
    struct epoll_event evs[512];
    while (pending > 0 && now() < deadline) {
        int n = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c || c->st == ST_FREE || c->st == ST_IDLE) continue;
            if (conn_step(c, 0)) pending--;
        }
    }
    return now() - t0;
}

static void print_params(void) {
    printf("\"proto\":\"%s\",\"cipher\":\"%s\",\"kex\":\"%s\",\"cert\":\"%s\"", proto_seen,
           cipher_seen, kex_seen, cert_seen);
}

static void usage(void) {
    fprintf(stderr,
            "usage: tlsload -p PORT [-m hs|idle|hello|partial|garbage] [-a ADDR] [-c CONC] [-d SECS] [-n COUNT]\n"
            "               [-t 12|13] [-g GROUPS] [-C CIPHERS] [-P PATH] [-w HOLD] [-r]\n"
            "               [-E CERT_CHAIN_FILE [-K KEY_FILE]] [-B SOURCE_ADDR] [-e]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int ch;
    while ((ch = getopt(argc, argv, "m:a:p:c:d:n:t:g:C:P:w:S:rE:K:B:e")) != -1) {
        switch (ch) {
        case 'm': opt.mode = optarg; break;
        case 'a': opt.addr = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.conc = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'n': opt.count = atoi(optarg); break;
        case 't': opt.tls = atoi(optarg); break;
        case 'g': opt.groups = optarg; break;
        case 'C': opt.ciphers = optarg; break;
        case 'P': opt.path = optarg; break;
        case 'w': opt.hold = atof(optarg); break;
        case 'S': opt.setup_timeout = atof(optarg); break;
        case 'r': opt.resume = 1; break;
        case 'E': opt.cert = optarg; break;
        case 'K': opt.key = optarg; break;
        case 'B': opt.source = optarg; break;
        case 'e': opt.echo = 1; break;
        default: usage();
        }
    }
    static const char *const modes[] = {"hs", "idle", "hello", "garbage", "partial"};
    mode = (enum mode)-1;
    for (int i = 0; i < 5; i++)
        if (strcmp(opt.mode, modes[i]) == 0) mode = (enum mode)i;
    /* the floods loop over their slots as hs does */
    int is_hs = mode != M_IDLE;
    if (!opt.port || opt.conc < 1 || mode == (enum mode)-1) usage();
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    int ver = opt.tls == 12 ? TLS1_2_VERSION : TLS1_3_VERSION;
    SSL_CTX_set_min_proto_version(ctx, ver);
    SSL_CTX_set_max_proto_version(ctx, ver);
    if (opt.ciphers && !SSL_CTX_set_cipher_list(ctx, opt.ciphers)) {
        fprintf(stderr, "bad cipher list\n");
        return 2;
    }
    if (!SSL_CTX_set1_groups_list(ctx, opt.groups)) {
        fprintf(stderr, "bad groups list\n");
        return 2;
    }
    if (opt.cert) {
        const char *key = opt.key ? opt.key : opt.cert;
        if (SSL_CTX_use_certificate_chain_file(ctx, opt.cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            fprintf(stderr, "cannot use client certificate %s / key %s\n", opt.cert, key);
            ERR_print_errors_fp(stderr);
            return 2;
        }
    }
    SSL_CTX_set_cert_cb(ctx, cert_cb, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    sess_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (opt.resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
                                                SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    }
    req_len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", opt.path,
                       opt.host, is_hs ? "Connection: close\r\n" : "");

    ep = epoll_create1(EPOLL_CLOEXEC);
    int nslots = is_hs ? opt.conc : opt.count;
    conns = calloc(nslots, sizeof *conns);
    for (int i = 0; i < nslots; i++) conns[i].fd = -1;
    struct epoll_event evs[512];
    double t0 = now();

    if (is_hs) {
        double deadline = t0 + opt.duration;
        for (int i = 0; i < nslots; i++) conn_start(&conns[i]);
        double last_sweep = t0;
        for (;;) {
            double t = now();
            if (t >= deadline) break;
            int ms = (int)((deadline - t) * 1000) + 1;
            int n = epoll_wait(ep, evs, 512, ms < 100 ? ms : 100);
            for (int i = 0; i < n; i++) {
                struct conn *c = evs[i].data.ptr;
                if (c->st == ST_FREE) continue;
                if (conn_step(c, 1) && now() < deadline) conn_start(c);
            }
            t = now();
            if (t - last_sweep > 0.2) { /* time out stuck connections, refill free slots */
                last_sweep = t;
                for (int i = 0; i < nslots; i++) {
                    struct conn *c = &conns[i];
                    if (c->st != ST_FREE && c->st != ST_HELD && t - c->t_start > opt.conn_timeout) {
                        st.err_timeout++;
                        conn_close(c);
                    }
                    if (c->st == ST_FREE && t < deadline) conn_start(c);
                }
            }
        }
        double el = now() - t0;
        if (mode != M_HS) {
            printf("{\"mode\":\"%s\",\"opened\":%ld,\"held\":%ld,\"closed\":%ld,"
                   "\"duration\":%.4f,\"err_connect\":%ld,\"err_io\":%ld,\"err_timeout\":%ld}\n",
                   opt.mode, st.opened, st.held, st.closed, el, st.err_connect, st.err_io,
                   st.err_timeout);
            return 0;
        }
        printf("{\"mode\":\"hs\",\"completed\":%ld,\"resumed\":%ld,\"cert_requested\":%ld,"
               "\"duration\":%.4f,\"rate\":%.2f,\"mean_ms\":%.3f,\"errors\":%ld,\"err_connect\":%ld,"
               "\"err_handshake\":%ld,\"err_io\":%ld,\"err_status\":%ld,\"err_timeout\":%ld,",
               st.completed, st.resumed, st.cert_requested, el, st.completed / el,
               st.completed ? 1000 * st.lat_sum / st.completed : 0.0,
               st.err_connect + st.err_handshake + st.err_io + st.err_status + st.err_timeout,
               st.err_connect, st.err_handshake, st.err_io, st.err_status, st.err_timeout);
        print_params();
        printf("}\n");
        return 0;
    }

    /* idle mode: ramp up with at most opt.conc connections in progress */
    int next = 0, inflight = 0;
    double setup_deadline = t0 + opt.setup_timeout, last_sweep = t0;
    while (next < nslots || inflight > 0) {
        while (inflight < opt.conc && next < nslots) {
            if (conn_start(&conns[next++]) == 0) inflight++;
        }
        int n = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            enum state before = c->st;
            if (before == ST_FREE) continue;
            int done = conn_step(c, 0);
            if (before != ST_IDLE && done) inflight--;
        }
        double t = now();
        if (t > setup_deadline) break;
        if (t - last_sweep > 0.5) {
            last_sweep = t;
            for (int i = 0; i < next; i++) {
                struct conn *c = &conns[i];
                if (c->st != ST_FREE && c->st != ST_IDLE && t - c->t_start > opt.conn_timeout) {
                    st.err_timeout++;
                    conn_close(c);
                    inflight--;
                }
            }
        }
    }
    double setup = now() - t0;
    long errors = st.err_connect + st.err_handshake + st.err_io + st.err_status + st.err_timeout;
    printf("{\"event\":\"ready\",\"requested\":%d,\"established\":%ld,\"errors\":%ld,"
           "\"err_connect\":%ld,\"err_handshake\":%ld,\"err_io\":%ld,\"err_status\":%ld,"
           "\"err_timeout\":%ld,\"unfinished\":%d,\"setup_s\":%.3f,",
           nslots, st.established, errors, st.err_connect, st.err_handshake, st.err_io,
           st.err_status, st.err_timeout, inflight + (nslots - next), setup);
    print_params();
    printf("}\n");
    fflush(stdout);

    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    double hold_deadline = now() + opt.hold;
    int quit = 0;
    while (!quit && now() < hold_deadline) {
        int n = epoll_wait(ep, evs, 512, 200);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                quit = 1;
                continue;
            }
            if (c->st != ST_FREE) conn_step(c, 0);
        }
    }
    double held = now() - t0 - setup;
    long open_at_check = st.established;
    double check_s = opt.echo ? final_check(nslots) : 0.0;
    printf("{\"event\":\"done\",\"established\":%ld,\"dropped\":%ld,\"held_s\":%.3f,"
           "\"checked\":%ld,\"answered\":%ld,\"check_s\":%.3f}\n",
           st.established, st.dropped, held, opt.echo ? open_at_check : 0L, st.answered,
           check_s);
    fflush(stdout);
    return 0;
}
