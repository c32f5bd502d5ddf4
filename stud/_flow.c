/*
 * stud._flow: stud's connections in C: Conn (one whole connection) and the Poller it lives in,
 * which also accepts them.
 *
 * Profiles put a third of stud's own per-connection CPU in the relay's Python bytecode (one
 * SSL_read/recv and one send/SSL_write per event cost less than the interpreter around them),
 * and the rest in twenty small Python steps of a connection's life: Conn is that life in C.
 * relay.Relay (with relay.Flow) is the same in Python: the reference, and the fallback where
 * this module is not built.
 *
 * OpenSSL is reached through function pointers that stud.sslext takes from the libssl that
 * CPython's _ssl module uses (init()), and SSL* pointers that sslext checked: no OpenSSL
 * headers, never a second copy of the library. The GIL is held throughout (every call is
 * non-blocking).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include "_openssl.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUFSIZE 65536
#define RECORD 16384 /* the largest TLS record's plaintext */
#define PLAIN_ROUNDS 4 /* reads of a full buffer from the plain side per event, at most */
#define WHY 300

/* One per process: data is forwarded before the next read reuses it. */
static char buf[BUFSIZE];

static PyObject *s_closed, *s_context;

/* CPython's _ssl objects, as stud.sslext describes them: the SSL* and SSL_CTX* offsets. */
static PyObject *ssl_type, *ctx_type;
static Py_ssize_t ssl_offset, ctx_offset;

static int would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }

/* OpenSSL's first queued error as the stdlib names it: "TLS error: BAD_RECORD_MAC". */
static void ssl_reason(char *out) {
    unsigned long code = ERR_get_error_();
    ERR_clear_error_();
    if (!code) {
        snprintf(out, WHY, "TLS error: SSLError");
        return;
    }
    char text[256];
    ERR_error_string_n_(code, text, sizeof text);
    /* "error:0A000119:SSL routines::decryption failed or bad record mac" */
    const char *r = text;
    for (int i = 0; i < 4 && r; i++)
        if ((r = strchr(r, ':')))
            r++;
    if (!r || !*r)
        r = text;
    int k = snprintf(out, WHY, "TLS error: ");
    for (; *r && k < WHY - 1; r++)
        out[k++] = *r == ' ' ? '_' : (char)toupper((unsigned char)*r);
    out[k] = 0;
}

/* Why a TLS call failed, for the close log (matches relay.reason() on the stdlib's errors). */
static void tls_failure(int err, int saved_errno, char *why) {
    if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && !saved_errno))
        snprintf(why, WHY, "closed the connection");
    else if (err == SSL_ERROR_SYSCALL)
        snprintf(why, WHY, "%s", strerror(saved_errno));
    else
        ssl_reason(why);
    ERR_clear_error_();
}


/* ---- Poller: the connections' fds in one epoll set of our own ------------------------------
 *
 * uvloop's add_reader()/remove_reader() cost about 1.7 us each in Python-level bookkeeping,
 * and a connection changes its fd interest five times or more. The worker registers this
 * epoll fd with the loop once; dispatch() runs the ready Conns and listening sockets. Each
 * registration carries a generation, so an event still queued for a closed fd is never
 * delivered to a new socket that reuses the number. */

typedef struct {
    PyObject *conn;            /* the Conn this fd belongs to */
    uint32_t gen, mask;
    int listener;              /* a listening socket's (accepted in C): 1 + its index, else 0 */
} Slot;

/* A listening socket accepted in C, and where its handshakes start: its frontend's default
   context (NULL with --client) and that frontend's SNI choice (NULL: none to make). */
#define MAX_LISTENERS 64
typedef struct {
    int fd;
    PyObject *context, *sni;
    SSL_CTX *ctx;
} Listener;

typedef struct Conn Conn;
enum { K_HANDSHAKE, K_CONNECT, NKINDS }; /* Conn deadlines */

/* Handshake counts by name (OpenSSL's version and cipher names are static strings: the
   pointer is the key), each with its Python string, made once. */
#define MAX_NAMES 64
#define MAX_BOUNDS 32
typedef struct {
    const char *name;
    PyObject *str;
    long long n;
} Named;

typedef struct { /* as metrics.Histogram */
    double bounds[MAX_BOUNDS];
    int nbounds;
    long long counts[MAX_BOUNDS + 1];
    double sum;
} Hist;

typedef struct {
    long long accepted, bytes_up, bytes_down; /* (bytes: of the Conns closed in C) */
    long long handshakes, resumed;
    Named version[MAX_NAMES], cipher[MAX_NAMES];
    int nversion, ncipher;
    Hist handshake_seconds, connect_seconds;
} ConnStats;

typedef struct Poller {
    PyObject_HEAD
    int ep;
    int nslots;
    Slot *slots;
    PyObject *on_error; /* called with the exception when a callback raises */
    /* Conns with a deadline, one FIFO per kind: one timeout per kind keeps each in order. */
    Conn *head[NKINDS], *tail[NKINDS];
    double timeout[NKINDS];
    struct sockaddr_storage backend;
    socklen_t backend_len;
    int want_header; /* Conns ask the worker for a client-address header */
    int proxy;       /* --proxy-proxy: Conns read a PROXY header first, peeking this much */
    PyObject *client_wrap; /* --client: wraps the backend socket (TLS towards the backend) */
    ConnStats stats; /* the Conns' counts since the last take_stats() */
    /* serve(): accept Conns and account for their close in C. */
    PyObject *policy, *conns, *sock_type, *kwnames;
    PyObject *accept_stop; /* called with an errno (or 0: full) when accepting stops */
    PyObject *ahead;       /* ahead(open connections): whether to leave new ones to the others */
    PyObject *gate;        /* gate(conn, first record): may its handshake start now (the limiter) */
    Listener listeners[MAX_LISTENERS];
    int nlisteners;
    Py_ssize_t max_conns;
    int log_fd, log_level, notify; /* notify: the worker's closed() sees every close */
    long pid;
    time_t stamp_sec;
    char stamp[24];
} Poller;

static int conn_event(Conn *c, int fd, uint32_t ev);
static int poller_accept(Poller *self, Listener *l);

#define MAX_EVENTS 256

static int Poller_init(Poller *self, PyObject *args, PyObject *kwds) {
    PyObject *on_error;
    static char *kwlist[] = {"on_error", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Poller", kwlist, &on_error))
        return -1;
    if (self->ep >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Poller already initialised");
        return -1;
    }
    if ((self->ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_INCREF(on_error);
    Py_XSETREF(self->on_error, on_error);
    return 0;
}

static PyObject *Poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Poller *self = (Poller *)type->tp_alloc(type, 0);
    if (self)
        self->ep = -1;
    return (PyObject *)self;
}

static Slot *slot_of(Poller *self, int fd) {
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "negative file descriptor");
        return NULL;
    }
    if (fd >= self->nslots) {
        int n = self->nslots ? self->nslots : 1024;
        while (n <= fd)
            n *= 2;
        Slot *grown = PyMem_Realloc(self->slots, (size_t)n * sizeof(Slot));
        if (!grown) {
            PyErr_NoMemory();
            return NULL;
        }
        memset(grown + self->nslots, 0, (size_t)(n - self->nslots) * sizeof(Slot));
        self->slots = grown;
        self->nslots = n;
    }
    return &self->slots[fd];
}

/* Make mask (EPOLLIN, EPOLLOUT or both; 0: none) fd's epoll interest. */
static int poller_mask(Poller *self, Slot *s, int fd, uint32_t mask) {
    if (mask == s->mask)
        return 0;
    struct epoll_event ev = {.events = mask};
    int op = !s->mask ? EPOLL_CTL_ADD : !mask ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    uint32_t gen = op == EPOLL_CTL_ADD ? s->gen + 1 : s->gen;
    ev.data.u64 = ((uint64_t)gen << 32) | (uint32_t)fd;
    int r = epoll_ctl(self->ep, op, fd, &ev);
    if (r < 0 && op == EPOLL_CTL_ADD && errno == EEXIST)
        r = epoll_ctl(self->ep, EPOLL_CTL_MOD, fd, &ev); /* forgotten but not closed */
    if (r < 0 && !(op == EPOLL_CTL_DEL && (errno == ENOENT || errno == EBADF))) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    s->gen = gen;
    s->mask = mask;
    return 0;
}

/* Forget fd right before it is closed: closing removes it from the epoll set, so no system
   call is needed, and the new generation voids events already queued for it. */
static void poller_forget(Poller *self, int fd) {
    if (fd >= 0 && fd < self->nslots) {
        Slot *s = &self->slots[fd];
        s->gen++;
        s->mask = 0;
        s->listener = 0;
        Py_CLEAR(s->conn);
    }
}

/* A Conn's hook raised: hand an Exception to on_error and go on; let anything else through. */
static int report(Poller *self) {
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    PyObject *r = PyObject_CallOneArg(self->on_error, value ? value : Py_None);
    if (r)
        Py_DECREF(r);
    else
        PyErr_WriteUnraisable(self->on_error);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return 0;
}

/* Run the Conns and listening sockets whose fds are ready now (at most MAX_EVENTS; the epoll
   fd stays readable for the loop while more are). */
static PyObject *Poller_dispatch(Poller *self, PyObject *unused) {
    struct epoll_event evs[MAX_EVENTS];
    if (self->ep < 0)
        Py_RETURN_NONE;
    int n = epoll_wait(self->ep, evs, MAX_EVENTS, 0);
    if (n < 0) {
        if (errno == EINTR)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (int i = 0; i < n; i++) {
        int fd = (int)(uint32_t)evs[i].data.u64;
        uint32_t gen = (uint32_t)(evs[i].data.u64 >> 32), ev = evs[i].events;
        Slot *s = fd < self->nslots && self->slots[fd].gen == gen ? &self->slots[fd] : NULL;
        if (s && s->listener) {
            if (poller_accept(self, &self->listeners[s->listener - 1]) < 0)
                return NULL;
            continue;
        }
        PyObject *conn = s ? s->conn : NULL;
        if (conn) {
            Py_INCREF(conn);
            int r = conn_event((Conn *)conn, fd, ev);
            Py_DECREF(conn);
            if (r < 0 && report(self) < 0)
                return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *Poller_fileno(Poller *self, PyObject *unused) {
    return PyLong_FromLong(self->ep);
}

static int Poller_clear(Poller *self) {
    for (int i = 0; i < self->nslots; i++) {
        Py_CLEAR(self->slots[i].conn);
    }
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->policy);
    Py_CLEAR(self->accept_stop);
    Py_CLEAR(self->ahead);
    Py_CLEAR(self->gate);
    Py_CLEAR(self->conns);
    Py_CLEAR(self->sock_type);
    for (int i = 0; i < self->nlisteners; i++) {
        Py_CLEAR(self->listeners[i].context);
        Py_CLEAR(self->listeners[i].sni);
    }
    Py_CLEAR(self->kwnames);
    Py_CLEAR(self->client_wrap);
    for (int i = 0; i < MAX_NAMES; i++) {
        Py_CLEAR(self->stats.version[i].str);
        Py_CLEAR(self->stats.cipher[i].str);
    }
    return 0;
}

static PyObject *Poller_close(Poller *self, PyObject *unused) {
    for (int i = 0; i < self->nslots; i++) {
        self->slots[i].mask = 0;
        self->slots[i].listener = 0;
        self->slots[i].gen++;
        Py_CLEAR(self->slots[i].conn);
    }
    if (self->ep >= 0) {
        close(self->ep);
        self->ep = -1;
    }
    Py_RETURN_NONE;
}

static int Poller_traverse(Poller *self, visitproc visit, void *arg) {
    for (int i = 0; i < self->nslots; i++) {
        Py_VISIT(self->slots[i].conn);
    }
    Py_VISIT(self->on_error);
    Py_VISIT(self->policy);
    Py_VISIT(self->accept_stop);
    Py_VISIT(self->ahead);
    Py_VISIT(self->gate);
    Py_VISIT(self->conns);
    Py_VISIT(self->sock_type);
    for (int i = 0; i < self->nlisteners; i++) {
        Py_VISIT(self->listeners[i].context);
        Py_VISIT(self->listeners[i].sni);
    }
    Py_VISIT(self->client_wrap);
    return 0;
}

static void Poller_dealloc(Poller *self) {
    PyObject_GC_UnTrack(self);
    Poller_clear(self); /* (also drops the name strings) */
    if (self->ep >= 0)
        close(self->ep);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Poller_configure(Poller *self, PyObject *args, PyObject *kwds);
static PyObject *Poller_expired(Poller *self, PyObject *arg);
static PyObject *Poller_take_stats(Poller *self, PyObject *unused);
static PyObject *Poller_serve(Poller *self, PyObject *args);
static PyObject *Poller_listen(Poller *self, PyObject *args);
static PyObject *Poller_set_backend(Poller *self, PyObject *args);

static PyMethodDef Poller_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))Poller_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(backend family, sockaddr, handshake timeout, connect timeout, header?, "
     "handshake buckets, connect buckets, *, proxy=0, sock_type=None, client_wrap=None)"},
    {"expired", (PyCFunction)Poller_expired, METH_O,
     "expired(now): [(conn, kind)] past their deadline, disarmed"},
    {"take_stats", (PyCFunction)Poller_take_stats, METH_NOARGS,
     "the Conns' counts since the last call"},
    {"serve", (PyCFunction)Poller_serve, METH_VARARGS,
     "serve(policy, conns, max_conns, log_fd, log_level, accept_stop, ahead=None, gate=None): "
     "accept in C"},
    {"set_backend", (PyCFunction)Poller_set_backend, METH_VARARGS,
     "set_backend(family, sockaddr): where Conns connect from now on"},
    {"listen", (PyCFunction)Poller_listen, METH_VARARGS,
     "listen(fd, context, sni, on=True): accept on fd in C, or no more"},
    {"dispatch", (PyCFunction)Poller_dispatch, METH_NOARGS, "run the callbacks of ready fds"},
    {"fileno", (PyCFunction)Poller_fileno, METH_NOARGS, "the epoll fd, for the event loop"},
    {"close", (PyCFunction)Poller_close, METH_NOARGS, "close the epoll fd"},
    {NULL},
};

static PyMemberDef Poller_members[] = {
    {"notify", T_INT, offsetof(Poller, notify), 0,
     "closes go to the policy's closed() (while the worker drains or does not accept)"},
    {NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stud._flow.Poller",
    .tp_doc = "Poller(on_error): Conns and listening sockets in an epoll set of their own.",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Poller_new,
    .tp_init = (initproc)Poller_init,
    .tp_dealloc = (destructor)Poller_dealloc,
    .tp_free = PyObject_GC_Del,
    .tp_traverse = (traverseproc)Poller_traverse,
    .tp_clear = (inquiry)Poller_clear,
    .tp_methods = Poller_methods,
    .tp_members = Poller_members,
};

/* init({"SSL_read": address, ...}, (ssl type, SSL* offset, context type, SSL_CTX* offset)):
   the OpenSSL functions and CPython's _ssl layout, from stud.sslext. */
static PyObject *flow_init(PyObject *mod, PyObject *args) {
    PyObject *fns, *st, *ct;
    Py_ssize_t so, co;
    if (!PyArg_ParseTuple(args, "O(OnOn):init", &fns, &st, &so, &ct, &co))
        return NULL;
    if (!PyType_Check(st) || !PyType_Check(ct) || so <= 0 || co <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad _ssl layout");
        return NULL;
    }
    if (openssl_bind(fns) < 0)
        return NULL;
    Py_INCREF(st);
    Py_XSETREF(ssl_type, st);
    Py_INCREF(ct);
    Py_XSETREF(ctx_type, ct);
    ssl_offset = so;
    ctx_offset = co;
    Py_RETURN_NONE;
}

/* The SSL* of a raw _ssl._SSLSocket, checked against the SSL_CTX* of the context _ssl says it
   has (as stud.sslext.ssl_pointer does); NULL: error set. */
static SSL *ssl_of(PyObject *obj) {
    if (!ssl_type || (PyObject *)Py_TYPE(obj) != ssl_type) {
        PyErr_SetString(PyExc_TypeError, "expected _ssl._SSLSocket (after init())");
        return NULL;
    }
    SSL *p = *(SSL **)((char *)obj + ssl_offset);
    PyObject *ctx = PyObject_GetAttr(obj, s_context);
    if (!ctx)
        return NULL;
    int ok = PyObject_TypeCheck(ctx, (PyTypeObject *)ctx_type) && p &&
             SSL_get_SSL_CTX_(p) == *(SSL_CTX **)((char *)ctx + ctx_offset);
    Py_DECREF(ctx);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError,
                        "stud._flow: SSL* pointer check failed (CPython layout changed?)");
        return NULL;
    }
    return p;
}

/* The SSL_CTX* of an ssl.SSLContext; NULL: error set. */
static SSL_CTX *ctx_of(PyObject *context) {
    if (!ctx_type || !PyObject_TypeCheck(context, (PyTypeObject *)ctx_type)) {
        PyErr_SetString(PyExc_TypeError, "expected ssl.SSLContext (after init())");
        return NULL;
    }
    SSL_CTX *ctx = *(SSL_CTX **)((char *)context + ctx_offset);
    if (!ctx)
        PyErr_SetString(PyExc_RuntimeError, "SSLContext without an SSL_CTX");
    return ctx;
}

/* ---- Conn: one whole connection in C ---------------------------------------------------------
 *
 * Every connection is a Conn: the PROXY header (--proxy-proxy), the handshake, the backend
 * connect (before the handshake with --client, where TLS is on the backend's side), both
 * directions and the end run here, dispatched by the Poller, with no Python frame in
 * between; their counters are kept here too (take_stats()). Python is called for a
 * client-address header (client_header), to parse a PROXY header (proxy_header), on
 * failures (handshake_failed, backend_failed) and, when the Poller does not account for it
 * (closed_in_c()), at the end (closed): the hooks of the Conn's policy (relay.Hooks). Each
 * direction follows relay.Flow's state machine; relay.Relay is the same life in Python,
 * for where this module is not built. */

enum { FRONT, BACK };
/* ST_PROXY: reading the client's PROXY header (--proxy-proxy); ST_CONNECT: connecting before
   the handshake towards the backend (--client); ST_HELLO: the client's first TLS record is
   not all there yet (OpenSSL has not seen it); ST_HELD: the gate keeps it (delayed: resume(),
   or refused: closed), unwatched. */
enum { ST_HANDSHAKE, ST_PROXY, ST_CONNECT, ST_RELAY, ST_CLOSED, ST_HELLO, ST_HELD }; /* (new: 0) */
enum { L_ERROR, L_INFO, L_CONN, L_DEBUG }; /* stud.log's levels (a close is never L_INFO) */
static const char *const kind_names[NKINDS] = {"handshake", "backend connect"};
static const char *const side_names[2] = {"client", "backend"};

typedef struct {
    char *pending; /* bytes not yet written to the other side (reading pauses meanwhile) */
    Py_ssize_t plen, poff;
    long long nbytes; /* delivered to the other side */
    char eof, done;
} Dir;

struct Conn {
    PyObject_HEAD
    Poller *poller;
    PyObject *policy, *sock, *tls, *peer, *local, *tls_info, *weakrefs; /* policy: relay.Hooks */
    PyObject *back_sock; /* --client: the backend's socket object (tls wraps it) */
    PyObject *pbuf;      /* --proxy-proxy: the client's PROXY header, as read so far */
    SSL *ssl;
    PyObject *context; /* own_ssl: the SSLContext whose SSL_CTX ssl uses */
    PyObject *sni;     /* own_ssl: its listener's SNI choice, if there is one to make */
    char own_ssl;      /* ssl made here (no _SSLSocket, no socket object): freed at the close */
    int tls_side;      /* FRONT, or BACK with --client */
    int fd[2];         /* FRONT: the client (TLS), BACK: the backend (TCP); -1: none */
    uint32_t mask[2];  /* epoll interest */
    char state, connecting, reread;
    char gated;        /* its ClientHello went through the Poller's gate */
    char watched;      /* its close goes to the policy's closed() (see closed_in_c()) */
    int lowat;         /* ST_HELLO: the receive low-water mark set (0: the default) */
    int kind;          /* armed deadline, or -1 */
    double started, active, connect_started, deadline;
    Conn *prev, *next; /* in poller->head[kind] */
    Dir dir[2];        /* dir[s]: read from side s, written to side 1 - s */
};

static PyObject *s_handshake_failed, *s_backend_failed, *s_client_header,
    *s_close, *s_fileno, *s_proxy_header;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock */
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void disarm(Conn *c) {
    if (c->kind < 0)
        return;
    Poller *p = c->poller;
    *(c->prev ? &c->prev->next : &p->head[c->kind]) = c->next;
    *(c->next ? &c->next->prev : &p->tail[c->kind]) = c->prev;
    c->prev = c->next = NULL;
    c->kind = -1;
}

static void arm(Conn *c, int kind) {
    Poller *p = c->poller;
    disarm(c);
    c->deadline = now() + p->timeout[kind];
    c->kind = kind;
    c->prev = p->tail[kind];
    *(c->prev ? &c->prev->next : &p->head[kind]) = c;
    p->tail[kind] = c;
}

/* Turn epoll interest bit on or off for one side (nothing once closed). */
static int conn_want(Conn *c, int side, uint32_t bit, int on) {
    uint32_t m = on ? c->mask[side] | bit : c->mask[side] & ~bit;
    if (c->state == ST_CLOSED || m == c->mask[side])
        return 0;
    Slot *s = slot_of(c->poller, c->fd[side]);
    if (!s || poller_mask(c->poller, s, c->fd[side], m) < 0)
        return -1;
    if (s->conn != (PyObject *)c)
        Py_XSETREF(s->conn, Py_NewRef((PyObject *)c));
    c->mask[side] = m;
    return 0;
}

static int conn_close(Conn *c, const char *why, int level);
static int conn_handshake(Conn *c);
static int conn_relay(Conn *c);

static int hook(Conn *c, PyObject *name, const char *arg) {
    PyObject *a = PyUnicode_DecodeUTF8(arg, strlen(arg), "replace");
    PyObject *r = a ? PyObject_CallMethodObjArgs(c->policy, name, (PyObject *)c, a, NULL) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* A side failed: "client Connection reset by peer", or a backend that never connected. */
static int end_failed(Conn *c, int side, const char *why) {
    if (side == BACK && c->connecting)
        return hook(c, s_backend_failed, why);
    char line[WHY + 16];
    snprintf(line, sizeof line, "%s %s", side_names[side], why);
    return conn_close(c, line, L_CONN);
}

static void observe(Hist *h, double value) {
    int b = 0;
    while (b < h->nbounds && h->bounds[b] < value) /* as bisect_left */
        b++;
    h->counts[b]++;
    h->sum += value;
}

static void established(Conn *c) {
    observe(&c->poller->stats.connect_seconds, now() - c->connect_started);
    c->connecting = 0;
    disarm(c);
}

/* While connecting: is the backend there yet? 1 yes, 0 not yet or failed (then closed). */
static int backend_ready(Conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd[BACK], SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        return hook(c, s_backend_failed, strerror(err)) < 0 ? -1 : 0;
    struct sockaddr_storage sa;
    len = sizeof sa;
    if (getpeername(c->fd[BACK], (struct sockaddr *)&sa, &len) < 0)
        return 0;
    established(c);
    return 1;
}

/* Bytes of data written to the other side (0: would block); -1 if that side failed (the
   Conn is closed); -2 on a Python error. */
static Py_ssize_t dir_send(Conn *c, int s, const char *data, Py_ssize_t len) {
    int dst = 1 - s;
    Py_ssize_t sent;
    char why[WHY];
    if (dst != c->tls_side) {
        ssize_t r = send(c->fd[dst], data, (size_t)len, MSG_NOSIGNAL);
        if (r < 0) {
            if (would_block(errno))
                return 0;
            snprintf(why, WHY, "%s", strerror(errno));
            return end_failed(c, dst, why) < 0 ? -2 : -1;
        }
        sent = r;
        if (dst == BACK && c->connecting)
            established(c);
    } else {
        errno = 0;
        int r = SSL_write_(c->ssl, data, (int)len);
        if (r <= 0) {
            int saved = errno, err = SSL_get_error_(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
                return 0;
            tls_failure(err, saved, why);
            return end_failed(c, dst, why) < 0 ? -2 : -1;
        }
        sent = r;
    }
    c->dir[s].nbytes += sent;
    return sent;
}

/* Write data; keep what did not fit and pause reading side s. 1: all written, 0: not, -1:
   error. */
static int dir_write(Conn *c, int s, const char *data, Py_ssize_t len) {
    Py_ssize_t sent = dir_send(c, s, data, len);
    if (sent == -2)
        return -1;
    if (sent == len)
        return 1;
    if (sent >= 0) {
        Dir *d = &c->dir[s];
        /* Copy: the shared buffer is reused by the next read, anywhere in this process. */
        if (!(d->pending = PyMem_Malloc((size_t)(len - sent)))) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(d->pending, data + sent, (size_t)(len - sent));
        d->plen = len - sent;
        d->poff = 0;
        if (conn_want(c, s, EPOLLIN, 0) < 0 || conn_want(c, 1 - s, EPOLLOUT, 1) < 0)
            return -1;
    }
    return 0;
}

/* Pass side s's EOF on once everything before it was written. */
static int dir_finish(Conn *c, int s) {
    Dir *d = &c->dir[s];
    int dst = 1 - s;
    char why[WHY];
    if (d->pending || d->done)
        return 0;
    if (dst == BACK && c->connecting) {
        int ready = backend_ready(c);
        if (ready <= 0) /* a FIN now would abort the connect: pass it on once connected */
            return ready < 0 ? -1 : conn_want(c, BACK, EPOLLOUT, 1);
    }
    if (dst == c->tls_side) {
        /* Our close_notify, once; the peer's is still read (a TLS half-close). */
        ERR_clear_error_();
        errno = 0;
        int r = SSL_shutdown_(c->ssl);
        if (r < 0) {
            int saved = errno, err = SSL_get_error_(c->ssl, r);
            if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
                ERR_clear_error_();
                return conn_want(c, dst, EPOLLOUT, 1);
            }
            tls_failure(err, saved, why);
            return end_failed(c, dst, why);
        }
    } else if (!c->dir[dst].done && shutdown(c->fd[dst], SHUT_WR) < 0) {
        /* (Once that side is done too, the close right after sends the FIN.) */
        if (would_block(errno))
            return conn_want(c, dst, EPOLLOUT, 1);
        snprintf(why, WHY, "%s", strerror(errno));
        return end_failed(c, dst, why);
    }
    d->done = 1;
    if (conn_want(c, dst, EPOLLOUT, 0) < 0)
        return -1;
    return c->dir[1 - s].done ? conn_close(c, "closed", L_CONN) : 0;
}

/* The Conn's TLS, reading ahead: OpenSSL reads all it can per read() (a TLS 1.2 RSA handshake,
   request and close take 5 socket reads instead of 12); dir_readable() then looks for the
   records it buffered. */
static void conn_set_ssl(Conn *c, SSL *ssl, int side) {
    c->ssl = ssl;
    c->tls_side = side;
    SSL_ctrl_(ssl, SSL_CTRL_SET_READ_AHEAD, 1, NULL);
}

/* SSL_read again at the TLS side's next EPOLLOUT (at once, unless the peer does not read):
   it wanted to write, or read-ahead left records in OpenSSL's buffer that epoll cannot see. */
static int reread_on_out(Conn *c) {
    c->reread = 1;
    return conn_want(c, c->tls_side, EPOLLOUT, 1);
}

/* Side s is readable: move what is there to the other side. corked: whether this pass corked
   the TLS side (dir_readable() uncorks it). */
static int dir_pass(Conn *c, int s, int *corked) {
    Dir *d = &c->dir[s];
    int rounds = 0;
again:;
    Py_ssize_t n = 0;
    int fail = 0, full = 0;
    char why[WHY];
    if (s != c->tls_side) {
        ssize_t r = recv(c->fd[s], buf, BUFSIZE, 0);
        if (r > 0)
            n = r;
        else if (r == 0)
            d->eof = 1;
        else if (!would_block(errno)) {
            fail = 1;
            snprintf(why, WHY, "%s", strerror(errno));
        }
    } else {
        /* As relay.Flow: whole records, and at least a record's room per read. A short record
           usually means the socket is drained, unless read-ahead brought more. */
        while (!(full = n > BUFSIZE - RECORD)) {
            errno = 0;
            int k = SSL_read_(c->ssl, buf + n, (int)(BUFSIZE - n));
            if (k > 0) {
                n += k;
                if (k < RECORD && !SSL_has_pending_(c->ssl))
                    break;
                continue;
            }
            int saved = errno, err = SSL_get_error_(c->ssl, k);
            if (err == SSL_ERROR_WANT_READ)
                break;
            if (err == SSL_ERROR_WANT_WRITE) {
                if (reread_on_out(c) < 0)
                    return -1;
                break;
            }
            if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && !saved)) {
                ERR_clear_error_(); /* a close_notify after ours, or a ragged EOF */
                d->eof = 1;
                break;
            }
            tls_failure(err, saved, why);
            fail = 1;
            break;
        }
    }
    if (fail) {
        if (n && dir_write(c, s, buf, n) < 0)
            return -1;
        return c->state == ST_CLOSED ? 0 : end_failed(c, s, why);
    }
    if (s == BACK && c->connecting)
        established(c);
    if (n) {
        c->active = now();
        /* Several records to write: one TLS write each, sent as few full segments (corked). */
        if (s != c->tls_side && n > RECORD && !*corked)
            *corked = setsockopt(c->fd[c->tls_side], IPPROTO_TCP, TCP_CORK, &(int){1},
                                 sizeof(int)) == 0;
        int w = dir_write(c, s, buf, n);
        if (w <= 0)
            return w; /* the other side is full: reading resumes in dir_writable() */
        /* A full buffer from the plain side: likely more behind it (bulk), read at once. */
        if (s != c->tls_side && n == BUFSIZE && ++rounds < PLAIN_ROUNDS)
            goto again;
    }
    /* At EOF: finish first, so that when that ends the Conn its fds simply close (closing
       takes them out of the epoll set: no system call). */
    if (d->eof && (dir_finish(c, s) < 0 || conn_want(c, s, EPOLLIN, 0) < 0))
        return -1;
    /* Read-ahead records left in OpenSSL's buffer by a full pass: epoll cannot see them. Read
       them now, or after a few passes (other connections wait meanwhile) on the next event. */
    if (full && c->state != ST_CLOSED && s == c->tls_side && SSL_has_pending_(c->ssl)) {
        if (++rounds < 4)
            goto again;
        return reread_on_out(c);
    }
    return 0;
}

static int dir_readable(Conn *c, int s) {
    int corked = 0;
    int r = dir_pass(c, s, &corked);
    if (corked && c->fd[c->tls_side] >= 0)
        setsockopt(c->fd[c->tls_side], IPPROTO_TCP, TCP_CORK, &(int){0}, sizeof(int));
    return r;
}

/* The side that dir[s] writes to is writable: flush, then resume reading side s. */
static int dir_writable(Conn *c, int s) {
    Dir *d = &c->dir[s];
    if (d->pending) {
        Py_ssize_t len = d->plen - d->poff;
        Py_ssize_t sent = dir_send(c, s, d->pending + d->poff, len);
        if (sent < 0)
            return sent == -2 ? -1 : 0;
        if (sent < len) {
            d->poff += sent;
            return 0;
        }
        PyMem_Free(d->pending);
        d->pending = NULL;
    }
    if (d->eof && !d->done)
        return dir_finish(c, s);
    /* (A re-read waits while reading that side is paused: no EPOLLOUT for it meanwhile, or a
       level-triggered epoll would spin until the reader drains.) */
    int reread = 1 - s == c->tls_side && c->reread && !c->dir[1 - s].pending;
    if (conn_want(c, 1 - s, EPOLLOUT, reread) < 0)
        return -1;
    if (d->eof)
        return 0;
    if (conn_want(c, s, EPOLLIN, 1) < 0)
        return -1;
    /* Reading paused after a pass that read ahead: what it left is read now (see above), as is
       a re-read that came while reading was paused (conn_event()). */
    if (s != c->tls_side || !(c->reread || SSL_has_pending_(c->ssl)))
        return 0;
    c->reread = 0;
    return dir_readable(c, s);
}

/* The backend connect (after the handshake; before it with --client). */
static int conn_connect(Conn *c) {
    Poller *p = c->poller;
    char why[WHY];
    int fd = socket(p->backend.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, WHY, "backend socket: %s", strerror(errno));
        return conn_close(c, why, L_ERROR);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd[BACK] = fd;
    c->connecting = 1;
    c->connect_started = now();
    if (connect(fd, (struct sockaddr *)&p->backend, p->backend_len) < 0 && errno != EINPROGRESS)
        return hook(c, s_backend_failed, strerror(errno));
    if (p->client_wrap) { /* TLS towards the backend: its handshake once connected */
        c->state = ST_CONNECT;
        arm(c, K_CONNECT);
        return conn_want(c, BACK, EPOLLOUT, 1);
    }
    return conn_relay(c);
}

/* Relay at once. Until the backend connection is up the kernel answers EAGAIN to our writes
   (so the first bytes wait, as with a slow backend), and a failed connect shows as an error
   on the first read or write. */
static int conn_relay(Conn *c) {
    PyObject *header = NULL;
    int r = -1;
    c->state = ST_RELAY;
    if (c->poller->want_header) {
        header = PyObject_CallMethodOneArg(c->policy, s_client_header, (PyObject *)c);
        if (!header)
            return -1;
        if (!PyBytes_Check(header)) {
            Py_DECREF(header);
            PyErr_SetString(PyExc_TypeError, "client_header() must return bytes");
            return -1;
        }
        if (c->state == ST_CLOSED) {
            Py_DECREF(header);
            return 0;
        }
    }
    if (conn_want(c, BACK, EPOLLIN, 1) < 0) /* a backend may speak first */
        goto out;
    if (header && PyBytes_GET_SIZE(header)) {
        /* The header is ours, not the client's: not counted. */
        c->dir[FRONT].nbytes = -PyBytes_GET_SIZE(header);
        if (dir_write(c, FRONT, PyBytes_AS_STRING(header), PyBytes_GET_SIZE(header)) < 0)
            goto out;
    }
    if (c->state != ST_CLOSED && !c->dir[FRONT].pending && conn_want(c, FRONT, EPOLLIN, 1) < 0)
        goto out;
    if (c->state != ST_CLOSED && c->connecting)
        arm(c, K_CONNECT);
    /* A TLS client's first bytes usually came with its Finished (TLS 1.3, resumptions): read
       them now rather than after another trip through the event loop. */
    r = c->state != ST_CLOSED && c->tls_side == FRONT && (c->mask[FRONT] & EPOLLIN)
            ? dir_readable(c, FRONT) : 0;
out:
    Py_XDECREF(header);
    return r;
}

/* --client: the backend connect completed (or failed): TLS towards it. */
static int conn_connected(Conn *c) {
    Poller *p = c->poller;
    if (c->connecting) {
        int ready = backend_ready(c);
        if (ready <= 0)
            return ready;
    }
    if (conn_want(c, BACK, EPOLLOUT, 0) < 0)
        return -1;
    c->back_sock = PyObject_CallFunction(p->sock_type, "iiii", p->backend.ss_family,
                                         SOCK_STREAM | SOCK_NONBLOCK, 0, c->fd[BACK]);
    if (!c->back_sock)
        return -1;
    PyObject *args[] = {c->back_sock, Py_False, Py_None, (PyObject *)c};
    PyObject *tls = PyObject_Vectorcall(p->client_wrap, args, 3, p->kwnames);
    if (!tls) {
        if (!PyErr_ExceptionMatches(PyExc_OSError))
            return -1;
        PyErr_Clear(); /* (SSL_new failed: out of memory) */
        return conn_close(c, "backend TLS setup failed", L_ERROR);
    }
    SSL *ssl = ssl_of(tls);
    if (ssl) {
        conn_set_ssl(c, ssl, BACK);
        c->tls = Py_NewRef(tls);
        c->state = ST_HANDSHAKE;
        arm(c, K_HANDSHAKE);
    }
    Py_DECREF(tls);
    return ssl ? conn_handshake(c) : -1;
}

/* --proxy-proxy: read the client's PROXY header (in clear), never a byte of the TLS after it.
   The policy's proxy_header() parses it (see there). */
static int conn_proxy(Conn *c) {
    char why[WHY];
    int fd = c->fd[FRONT];
    ssize_t n = recv(fd, buf, (size_t)c->poller->proxy, MSG_PEEK);
    if (n < 0 && would_block(errno))
        return conn_want(c, FRONT, EPOLLIN, 1);
    if (n <= 0) {
        if (n == 0)
            return conn_close(c, "client closed before sending a PROXY header", L_CONN);
        snprintf(why, WHY, "client %s before PROXY header", strerror(errno));
        return conn_close(c, why, L_CONN);
    }
    PyObject *peek = PyBytes_FromStringAndSize(buf, n);
    PyObject *r = peek ? PyObject_CallMethodObjArgs(c->policy, s_proxy_header, (PyObject *)c,
                                                    peek, NULL)
                       : NULL;
    Py_XDECREF(peek);
    if (!r)
        return -1;
    Py_ssize_t take;
    int complete;
    int ok = r == Py_None || PyArg_ParseTuple(r, "np:proxy_header", &take, &complete);
    Py_DECREF(r);
    if (!ok || r == Py_None || c->state == ST_CLOSED) /* (None: the header was bad, closed) */
        return ok ? 0 : -1;
    if (take <= 0 || take > n) {
        PyErr_SetString(PyExc_ValueError, "proxy_header(): bad length");
        return -1;
    }
    if (recv(fd, buf, (size_t)take, 0) != take) /* what was peeked is there */
        return conn_close(c, "client PROXY header read failed", L_CONN);
    PyObject *part = PyBytes_FromStringAndSize(buf, take);
    if (!part)
        return -1;
    if (c->pbuf)
        PyBytes_ConcatAndDel(&c->pbuf, part);
    else
        c->pbuf = part;
    if (!c->pbuf)
        return -1;
    if (!complete)
        return conn_want(c, FRONT, EPOLLIN, 1);
    c->state = ST_HANDSHAKE;
    return conn_handshake(c);
}

/* A client that sends part of its ClientHello and stops must cost its socket and its Conn, not
   a handshake's buffers and state (tens of KiB in OpenSSL): the handshake starts once the
   first record is all there. Until then the kernel wakes the Conn only when it is (the
   socket's receive low-water mark), so a trickle costs no wake-ups; the handshake timeout
   runs meanwhile. A first record that is not a TLS handshake goes to OpenSSL at once (which
   refuses it as it always did), as does an end of stream or an error. */
#define TLS_HEADER 5
/* An SSL* straight from the context, as _ssl's _wrap_socket() would make it but without its
   socket and _SSLSocket objects (side by side with hitch: 1.5% of a connection's CPU). 1: made,
   0: the Conn is closed (no memory), -1: a Python error. */
static int conn_own_ssl(Conn *c) {
    SSL_CTX *ctx = ctx_of(c->context);
    if (!ctx)
        return -1;
    SSL *ssl = SSL_new_(ctx);
    if (!ssl || !SSL_set_fd_(ssl, c->fd[FRONT])) {
        if (ssl)
            SSL_free_(ssl);
        ERR_clear_error_();
        return conn_close(c, "client TLS setup failed", L_DEBUG);
    }
    SSL_set_ex_data_(ssl, SSL_APP_DATA_INDEX, c); /* (for servername_cb) */
    SSL_ctrl_(ssl, SSL_CTRL_MODE, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY, NULL);
    SSL_set_accept_state_(ssl);
    conn_set_ssl(c, ssl, FRONT);
    return 1;
}

#define TLS_HANDSHAKE_RECORD 0x16
#define TLS_MAX_PLAINTEXT 16384 /* a ClientHello record is plaintext */

/* Whether the client closed or reset (woken short of the receive low-water mark for that, not
   for memory pressure). */
static int peer_gone(int fd) {
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ti.tcpi_state != TCP_ESTABLISHED;
}

/* The Poller's gate, for the first n bytes in buf: 1: go on; 0: held (ST_HELD: the gate
   resumes or closes it later), or closed; -1: a Python error. */
static int conn_gate(Conn *c, Py_ssize_t n) {
    c->gated = 1;
    PyObject *first = PyBytes_FromStringAndSize(buf, n);
    PyObject *r = first ? PyObject_CallFunctionObjArgs(c->poller->gate, (PyObject *)c, first, NULL)
                        : NULL;
    Py_XDECREF(first);
    int go = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (go != 0 || c->state == ST_CLOSED)
        return go;
    c->state = ST_HELD;
    return conn_want(c, FRONT, EPOLLIN, 0);
}

static int conn_hello(Conn *c) {
    int fd = c->fd[FRONT];
    ssize_t n = recv(fd, buf, TLS_HEADER + TLS_MAX_PLAINTEXT, MSG_PEEK);
    if (n < 0 && would_block(errno)) { /* (accepted before its first byte: a SYN flood's cookies) */
        c->state = ST_HELLO;
        return conn_want(c, FRONT, EPOLLIN, 1);
    }
    int need = 0;
    if (n > 0 && (unsigned char)buf[0] == TLS_HANDSHAKE_RECORD)
        need = n < TLS_HEADER ? TLS_HEADER
                              : TLS_HEADER + ((unsigned char)buf[3] << 8 | (unsigned char)buf[4]);
    /* Level-triggered: without the mark, the bytes already there would wake it again and
       again; where it cannot be set, no wait, as before. Woken short of the mark, the client
       closed (or failed): OpenSSL sees that at once too. */
    if (need > n && need <= TLS_HEADER + TLS_MAX_PLAINTEXT && c->lowat != need &&
        setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &need, sizeof need) == 0) {
        c->lowat = need;
        c->state = ST_HELLO;
        return conn_want(c, FRONT, EPOLLIN, 1);
    }
    int gone = c->lowat && need > n && peer_gone(fd); /* (short of the mark: not pressure) */
    if (c->lowat) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
        c->lowat = 0;
    }
    /* What the client sent goes to the gate, once: a whole first record, or bytes that are
       no TLS record (garbage costs an accept and a failed handshake: it is judged too); not
       a client gone before its record was whole (OpenSSL fails that at once). */
    if (c->poller->gate && !c->gated && n > 0 && !gone) {
        int go = conn_gate(c, n);
        if (go <= 0)
            return go;
    }
    c->state = ST_HANDSHAKE;
    if (!c->ssl) {
        int made = conn_own_ssl(c);
        if (made <= 0)
            return made;
    }
    return conn_handshake(c);
}

/* The counter of name in table t (added, with its string, the first time). */
static Named *named(Named *t, int *n, const char *name) {
    for (int i = 0; i < *n; i++)
        if (t[i].name == name)
            return &t[i];
    for (int i = 0; i < *n; i++) /* the same text at another address (never seen so far) */
        if (!strcmp(t[i].name, name))
            return &t[i];
    if (*n == MAX_NAMES)
        return &t[MAX_NAMES - 1]; /* more names than TLS has: counted with the last one */
    PyObject *str = PyUnicode_DecodeUTF8(name, strlen(name), "replace");
    if (!str)
        return NULL;
    t[*n] = (Named){name, str, 0};
    return &t[(*n)++];
}

/* As the policy's handshaken() for a relay.Relay: conn.tls_info (version, cipher, SNI name, ALPN
   protocol, resumed) as the ssl module gives them, and the handshake counters. */
static int handshaken(Conn *c) {
    ConnStats *h = &c->poller->stats;
    const char *version = SSL_get_version_(c->ssl);
    const SSL_CIPHER *cipher = SSL_get_current_cipher_(c->ssl);
    Named *v = named(h->version, &h->nversion, version ? version : "");
    Named *ci = named(h->cipher, &h->ncipher, cipher ? SSL_CIPHER_get_name_(cipher) : "");
    if (!v || !ci)
        return -1;
    /* The SNI name as ssl has it: an ASCII A-label, else nothing. */
    const char *name = SSL_get_servername_(c->ssl, TLSEXT_NAMETYPE_host_name);
    size_t len = name ? strlen(name) : 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)name[i] >= 0x80)
            len = 0;
    const unsigned char *alpn = NULL;
    unsigned int alen = 0;
    SSL_get0_alpn_selected_(c->ssl, &alpn, &alen);
    PyObject *sni = len ? PyUnicode_DecodeASCII(name, (Py_ssize_t)len, NULL) : Py_NewRef(Py_None);
    PyObject *proto = alen ? PyUnicode_DecodeUTF8((const char *)alpn, alen, "replace")
                           : Py_NewRef(Py_None);
    int resumed = SSL_session_reused_(c->ssl) == 1;
    PyObject *info = sni && proto ? PyTuple_Pack(5, v->str, ci->str, sni, proto,
                                                 resumed ? Py_True : Py_False)
                                  : NULL;
    Py_XDECREF(sni);
    Py_XDECREF(proto);
    if (!info)
        return -1;
    Py_XSETREF(c->tls_info, info);
    h->handshakes++;
    h->resumed += resumed;
    v->n++;
    ci->n++;
    observe(&h->handshake_seconds, now() - c->started);
    return 0;
}

static int conn_handshake(Conn *c) {
    errno = 0;
    int r = SSL_do_handshake_(c->ssl);
    if (r != 1) {
        int saved = errno, err = SSL_get_error_(c->ssl, r);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            return conn_want(c, c->tls_side, err == SSL_ERROR_WANT_READ ? EPOLLOUT : EPOLLIN, 0) < 0
                       ? -1
                       : conn_want(c, c->tls_side, err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT, 1);
        /* As relay's handshake(): -errno, 4 for an EOF, 5 for a close_notify or (with
           OP_IGNORE_UNEXPECTED_EOF) a FIN, 0 for a TLS error left queued. */
        int state = err == SSL_ERROR_ZERO_RETURN ? 5 : err != SSL_ERROR_SYSCALL ? 0 : saved ? -saved : 4;
        if (err == SSL_ERROR_SYSCALL)
            ERR_clear_error_();
        PyObject *st = PyLong_FromLong(state);
        PyObject *res =
            st ? PyObject_CallMethodObjArgs(c->policy, s_handshake_failed, (PyObject *)c, st, NULL)
               : NULL;
        Py_XDECREF(st);
        Py_XDECREF(res);
        return res ? 0 : -1;
    }
    disarm(c);
    if (conn_want(c, c->tls_side, EPOLLOUT, 0) < 0 || handshaken(c) < 0)
        return -1;
    return c->tls_side == FRONT ? conn_connect(c) : conn_relay(c);
}

/* A Python error (a bug) in a Conn's hooks: close it rather than leave it hanging, and keep
   the error for the Poller's on_error. Returns -1. */
static int conn_failed(Conn *c) {
    if (c->state != ST_CLOSED) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        if (conn_close(c, "internal error", L_ERROR) < 0)
            PyErr_WriteUnraisable((PyObject *)c);
        PyErr_Restore(t, v, tb);
    }
    return -1;
}

/* One fd event; a Python error is the caller's to report (after conn_failed()). */
static int conn_event(Conn *c, int fd, uint32_t ev) {
    int side = fd == c->fd[FRONT] ? FRONT : BACK, r = 0;
    int in = (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && (c->mask[side] & EPOLLIN);
    int out = (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && (c->mask[side] & EPOLLOUT);
    if (c->state == ST_PROXY) {
        if (in)
            r = conn_proxy(c);
    } else if (c->state == ST_HELLO) {
        if (in)
            r = conn_hello(c);
    } else if (c->state == ST_CONNECT) {
        if (in || out)
            r = conn_connected(c);
    } else if (c->state == ST_HANDSHAKE) {
        if (in || out)
            r = conn_handshake(c);
    } else {
        if (in)
            r = dir_readable(c, side);
        if (!r && out && c->state != ST_CLOSED) {
            /* Not while reading that side is paused (the read just above may have filled the
               other side): a second read would replace its pending bytes, lost, and leaked
               (found by tests/sanitize.sh). dir_writable() re-reads when reading resumes. */
            if (side == c->tls_side && c->reread && !c->dir[side].pending) {
                c->reread = 0;
                r = dir_readable(c, side);
            }
            if (!r && c->state != ST_CLOSED)
                r = dir_writable(c, 1 - side);
        }
    }
    return r < 0 ? conn_failed(c) : 0;
}

/* The policy's closed() in C, for the Conns of a serving Poller while the worker does not watch
   closes: the open set, the byte counts and the connection log line (the same line as
   log.line(); see ConnPolicy.closed()). 1: done; 0: the policy's closed() must (a value the line
   cannot show as ASCII, or the worker watches); -1: a Python error. */
static int quote(char *out, size_t size, const char *s);

static int closed_in_c(Conn *c, const char *why, int level, long long up, long long down) {
    Poller *p = c->poller;
    if (!p->conns || p->notify || c->watched)
        return 0;
    char line[2048];
    int n = 0;
    if (p->log_level >= level) {
        const char *version = "-", *cipher = "-", *alpn = "-";
        char sni[1024] = "-", reason[1024], client[128];
        int resumed = 0;
        PyObject *info = c->tls_info;
        if (info) {
            PyObject *v = PyTuple_GET_ITEM(info, 0), *ci = PyTuple_GET_ITEM(info, 1),
                     *name = PyTuple_GET_ITEM(info, 2), *proto = PyTuple_GET_ITEM(info, 3);
            version = PyUnicode_GET_LENGTH(v) ? PyUnicode_AsUTF8(v) : "-";
            cipher = PyUnicode_GET_LENGTH(ci) ? PyUnicode_AsUTF8(ci) : "-";
            if (proto != Py_None && !PyUnicode_IS_ASCII(proto))
                return 0;
            if (name != Py_None && !quote(sni, sizeof sni, PyUnicode_AsUTF8(name)))
                return 0;
            alpn = proto != Py_None ? PyUnicode_AsUTF8(proto) : "-";
            resumed = PyTuple_GET_ITEM(info, 4) == Py_True;
        }
        const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(c->peer, 0));
        long port = PyLong_AsLong(PyTuple_GET_ITEM(c->peer, 1));
        if (!version || !cipher || !alpn || !host || PyErr_Occurred())
            return -1;
        snprintf(client, sizeof client, strchr(host, ':') ? "[%s]:%ld" : "%s:%ld", host, port);
        if (!quote(reason, sizeof reason, why))
            return 0;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        if (ts.tv_sec != p->stamp_sec) { /* one strftime per second, as log.Log */
            struct tm tm;
            p->stamp_sec = ts.tv_sec;
            strftime(p->stamp, sizeof p->stamp, "%Y-%m-%dT%H:%M:%S", gmtime_r(&ts.tv_sec, &tm));
        }
        n = snprintf(line, sizeof line,
                     "%s.%03ldZ [%ld] op=\"connection closed\" client=%s sni=%s tls=%s "
                     "cipher=%s alpn=%s resumed=%d up=%lld down=%lld duration=%.3f reason=%s\n",
                     p->stamp, ts.tv_nsec / 1000000, p->pid, client, sni, version, cipher, alpn,
                     resumed, up, down, now() - c->started, reason);
        if (n <= 0 || n >= (int)sizeof line)
            return 0;
    }
    if (PySet_Discard(p->conns, (PyObject *)c) < 0)
        return -1;
    p->stats.bytes_up += up;
    p->stats.bytes_down += down;
    if (n && write(p->log_fd, line, (size_t)n) < 0)
        errno = 0; /* a closed terminal must not take the daemon down */
    return 1;
}

/* log.quoted() for an ASCII string: as it is, or in quotes with \\, \" and \xNN escapes.
   0 if s holds other bytes (or does not fit). */
static int quote(char *out, size_t size, const char *s) {
    int plain = *s != 0;
    for (const unsigned char *u = (const unsigned char *)s; *u; u++) {
        if (*u >= 0x80)
            return 0;
        if (*u < 0x20 || *u == 0x7f || *u == ' ' || *u == '"' || *u == '\\')
            plain = 0;
    }
    size_t n = 0;
    if (plain) {
        n = strlen(s);
        if (n >= size)
            return 0;
        memcpy(out, s, n + 1);
        return 1;
    }
    out[n++] = '"';
    for (const unsigned char *u = (const unsigned char *)s; *u; u++) {
        if (n + 6 >= size)
            return 0;
        if (*u == '"' || *u == '\\') {
            out[n++] = '\\';
            out[n++] = (char)*u;
        } else if (*u < 0x20 || *u == 0x7f)
            n += (size_t)snprintf(out + n, size - n, "\\x%02x", *u);
        else
            out[n++] = (char)*u;
    }
    out[n++] = '"';
    out[n] = 0;
    return 1;
}

static int conn_close(Conn *c, const char *why, int level) {
    if (c->state == ST_CLOSED)
        return 0;
    c->state = ST_CLOSED;
    disarm(c);
    Py_INCREF(c); /* forgetting the fds drops the poller's references */
    for (int side = 0; side < 2; side++)
        if (c->fd[side] >= 0)
            poller_forget(c->poller, c->fd[side]);
    if (c->ssl)
        SSL_set_shutdown_(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN); /* see keep_session() */
    PyObject *r = Py_NewRef(Py_None);
    if (c->back_sock) /* (it owns the fd) */
        Py_SETREF(r, PyObject_CallMethodNoArgs(c->back_sock, s_close));
    else if (c->fd[BACK] >= 0)
        close(c->fd[BACK]);
    c->fd[BACK] = -1;
    if (r && c->sock)
        Py_SETREF(r, PyObject_CallMethodNoArgs(c->sock, s_close));
    else if (c->fd[FRONT] >= 0 && !c->sock)
        close(c->fd[FRONT]);
    c->fd[FRONT] = -1;
    long long up = c->dir[FRONT].nbytes, down = c->dir[BACK].nbytes;
    for (int s = 0; s < 2; s++) {
        PyMem_Free(c->dir[s].pending);
        c->dir[s].pending = NULL;
    }
    up = up > 0 ? up : 0;
    down = down > 0 ? down : 0;
    int done = r ? closed_in_c(c, why, level, up, down) : -1;
    Py_XDECREF(r);
    r = NULL;
    if (done == 0) { /* the policy's closed() */
        PyObject *args = Py_BuildValue("(OsiLL)", c, why, level, up, down);
        PyObject *m = args ? PyObject_GetAttr(c->policy, s_closed) : NULL;
        r = m ? PyObject_Call(m, args, NULL) : NULL;
        Py_XDECREF(m);
        Py_XDECREF(args);
        Py_XDECREF(r);
    }
    if (c->own_ssl)
        SSL_free_(c->ssl);
    c->ssl = NULL;
    Py_CLEAR(c->tls); /* frees the SSL* now */
    Py_DECREF(c);
    return done > 0 || r ? 0 : -1;
}

static void conn_setup(Conn *c, Poller *poller, PyObject *policy, PyObject *sock, PyObject *peer,
                       PyObject *local, int fd) {
    c->fd[FRONT] = fd;
    c->poller = (Poller *)Py_NewRef(poller);
    c->policy = Py_NewRef(policy);
    c->sock = Py_XNewRef(sock); /* NULL: c owns fd */
    c->peer = Py_NewRef(peer);
    c->local = Py_NewRef(local);
    c->started = c->active = now();
}

static int Conn_init(Conn *c, PyObject *args, PyObject *kwds) {
    PyObject *poller, *policy, *sock, *peer, *local;
    static char *kwlist[] = {"poller", "policy", "sock", "peer", "local", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOOO:Conn", kwlist, &PollerType, &poller,
                                     &policy, &sock, &peer, &local))
        return -1;
    if (c->poller) {
        PyErr_SetString(PyExc_RuntimeError, "Conn already initialised");
        return -1;
    }
    if (!SSL_read_ || !((Poller *)poller)->backend_len) {
        PyErr_SetString(PyExc_RuntimeError, "init() and Poller.configure() come first");
        return -1;
    }
    PyObject *fd = PyObject_CallMethodNoArgs(sock, s_fileno);
    if (!fd)
        return -1;
    int front = (int)PyLong_AsLong(fd);
    Py_DECREF(fd);
    if (front < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "closed socket");
        return -1;
    }
    conn_setup(c, (Poller *)poller, policy, sock, peer, local, front);
    return 0;
}

static PyObject *Conn_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Conn *c = (Conn *)type->tp_alloc(type, 0);
    if (c) {
        c->fd[FRONT] = c->fd[BACK] = -1;
        c->kind = -1;
    }
    return (PyObject *)c;
}

/* The handshake begins on ssl (of tls, the _SSLSocket wrapping c's socket with owner=c, or
   made by serve_fd() with tls NULL), after the PROXY header with --proxy-proxy; ssl is NULL
   with --client (the connect begins). As for fd events, a Python error goes to on_error: -1
   only if that raised. */
static int conn_begin(Conn *c, PyObject *tls, SSL *ssl) {
    int r;
    arm(c, K_HANDSHAKE); /* (the PROXY header's time included) */
    if (!ssl && !c->own_ssl) /* --client: the backend first */
        r = conn_connect(c);
    else if (!ssl)
        r = conn_hello(c);
    else {
        conn_set_ssl(c, ssl, FRONT);
        c->tls = Py_XNewRef(tls);
        if (c->poller->proxy) {
            c->state = ST_PROXY;
            r = conn_proxy(c);
        } else
            r = conn_hello(c);
    }
    return r < 0 ? (conn_failed(c), report(c->poller)) : 0;
}

/* start(tls): the _SSLSocket wrapping sock (owner=this Conn), or None with --client. */
static PyObject *Conn_start(Conn *c, PyObject *tls) {
    if (!c->poller || c->tls || c->state != ST_HANDSHAKE) {
        PyErr_SetString(PyExc_RuntimeError, "Conn.start() once, after init");
        return NULL;
    }
    if ((tls == Py_None) != (c->poller->client_wrap != NULL)) {
        PyErr_SetString(PyExc_ValueError, "start(None) for --client, else start(tls)");
        return NULL;
    }
    SSL *ssl = tls == Py_None ? NULL : ssl_of(tls);
    if (tls != Py_None && !ssl)
        return NULL;
    return conn_begin(c, tls == Py_None ? NULL : tls, ssl) < 0 ? NULL : Py_NewRef(Py_None);
}

/* resume(): a Conn its gate held goes on to its handshake (nothing once closed). */
static PyObject *Conn_resume(Conn *c, PyObject *unused) {
    if (c->state != ST_HELD)
        Py_RETURN_NONE;
    c->state = ST_HELLO;
    if (conn_hello(c) < 0 && (conn_failed(c), report(c->poller)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Conn_close(Conn *c, PyObject *args) {
    const char *why;
    int level = L_CONN;
    if (!PyArg_ParseTuple(args, "s|i:close", &why, &level))
        return NULL;
    if (conn_close(c, why, level) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Conn_backend_ready(Conn *c, PyObject *unused) {
    if (c->state == ST_CLOSED || !c->connecting)
        return PyBool_FromLong(c->state != ST_CLOSED && c->fd[BACK] >= 0);
    int r = backend_ready(c);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static int Conn_traverse(Conn *c, visitproc visit, void *arg) {
    Py_VISIT(c->poller);
    Py_VISIT(c->policy);
    Py_VISIT(c->sock);
    Py_VISIT(c->tls);
    Py_VISIT(c->context);
    Py_VISIT(c->sni);
    Py_VISIT(c->peer);
    Py_VISIT(c->local);
    Py_VISIT(c->tls_info);
    Py_VISIT(c->back_sock);
    return 0;
}

static int Conn_clear(Conn *c) {
    Py_CLEAR(c->policy);
    Py_CLEAR(c->tls);
    Py_CLEAR(c->context);
    Py_CLEAR(c->sni);
    Py_CLEAR(c->sock);
    Py_CLEAR(c->peer);
    Py_CLEAR(c->local);
    Py_CLEAR(c->tls_info);
    Py_CLEAR(c->back_sock);
    Py_CLEAR(c->pbuf);
    return 0;
}

static void Conn_dealloc(Conn *c) {
    PyObject_GC_UnTrack(c);
    if (c->weakrefs)
        PyObject_ClearWeakRefs((PyObject *)c);
    if (c->poller)
        disarm(c);
    if (c->fd[BACK] >= 0 && !c->back_sock)
        close(c->fd[BACK]);
    if (c->fd[FRONT] >= 0 && !c->sock)
        close(c->fd[FRONT]);
    if (c->own_ssl && c->ssl)
        SSL_free_(c->ssl);
    for (int s = 0; s < 2; s++)
        PyMem_Free(c->dir[s].pending);
    Conn_clear(c);
    Py_CLEAR(c->poller);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *Conn_get_double(Conn *c, void *off) {
    return PyFloat_FromDouble(*(double *)((char *)c + (size_t)off));
}

static PyObject *Conn_get_flag(Conn *c, void *which) {
    switch ((intptr_t)which) {
    case 0:
        return PyBool_FromLong(c->state == ST_CLOSED);
    case 1:
        return PyBool_FromLong(c->state != ST_CLOSED && c->connecting);
    default:
        return PyBool_FromLong(c->state == ST_RELAY && c->fd[BACK] >= 0);
    }
}

static PyObject *Conn_get_context(Conn *c, void *unused) {
    if (c->own_ssl && c->context)
        return Py_NewRef(c->context);
    if (!c->tls) {
        PyErr_SetString(PyExc_AttributeError, "no TLS yet");
        return NULL;
    }
    return PyObject_GetAttr(c->tls, s_context);
}

static SSL_CTX *ctx_of(PyObject *context);

/* The SNI callback switches certificates through the _SSLSocket's owner, this Conn (or, for
   an SSL* of its own, here: as _ssl's context setter does). */
static int Conn_set_context(Conn *c, PyObject *v, void *unused) {
    if (c->own_ssl && c->ssl && v) {
        SSL_CTX *ctx = ctx_of(v);
        if (!ctx)
            return -1;
        SSL_set_SSL_CTX_(c->ssl, ctx);
        Py_XSETREF(c->context, Py_NewRef(v));
        return 0;
    }
    if (!c->tls || !v) {
        PyErr_SetString(PyExc_AttributeError, "no TLS yet");
        return -1;
    }
    return PyObject_SetAttr(c->tls, s_context, v);
}

/* The address of the client side's SSL* (0 before the handshake starts, or with --client),
   for stud.sslext's functions, as relay.End.ssl. */
static PyObject *Conn_get_ssl(Conn *c, void *unused) {
    return PyLong_FromVoidPtr(c->tls_side == FRONT && c->state != ST_CLOSED ? (void *)c->ssl : NULL);
}

static PyObject *Conn_get_fd(Conn *c, void *unused) {
    return PyLong_FromLong(c->state != ST_CLOSED ? c->fd[FRONT] : -1);
}

static PyObject *Conn_get_pbuf(Conn *c, void *unused) {
    return c->pbuf ? Py_NewRef(c->pbuf) : PyBytes_FromStringAndSize(NULL, 0);
}

static PyGetSetDef Conn_getset[] = {
    {"pbuf", (getter)Conn_get_pbuf, NULL, "--proxy-proxy: the client's PROXY header so far", NULL},
    {"started", (getter)Conn_get_double, NULL, "monotonic time of the accept",
     (void *)offsetof(Conn, started)},
    {"active", (getter)Conn_get_double, NULL, "monotonic time data last moved",
     (void *)offsetof(Conn, active)},
    {"closed", (getter)Conn_get_flag, NULL, NULL, (void *)0},
    {"connecting", (getter)Conn_get_flag, NULL, "the backend connect is pending", (void *)1},
    {"relaying", (getter)Conn_get_flag, NULL, "past the handshake and connected", (void *)2},
    {"context", (getter)Conn_get_context, (setter)Conn_set_context, "the TLS context", NULL},
    {"ssl", (getter)Conn_get_ssl, NULL, "the client side's SSL* (an address; 0: none)", NULL},
    {"fd", (getter)Conn_get_fd, NULL, "the client's socket (-1 once closed)", NULL},
    {NULL},
};

static PyMemberDef Conn_members[] = {
    {"peer", T_OBJECT, offsetof(Conn, peer), READONLY, NULL},
    {"local", T_OBJECT, offsetof(Conn, local), READONLY, NULL},
    {"watched", T_BOOL, offsetof(Conn, watched), 0,
     "its close goes to the policy's closed() even where the Poller accounts for closes"},
    {"tls", T_OBJECT, offsetof(Conn, tls), READONLY,
     "the _ssl._SSLSocket (None where the Conn made its SSL* itself)"},
    {"tls_info", T_OBJECT, offsetof(Conn, tls_info), READONLY,
     "(version, cipher, SNI name, ALPN protocol, resumed) once the handshake is done"},
    {NULL},
};

static PyMethodDef Conn_methods[] = {
    {"start", (PyCFunction)Conn_start, METH_O,
     "start(tls): begin (the PROXY header, then) the handshake; start(None): --client"},
    {"close", (PyCFunction)Conn_close, METH_VARARGS, "close(why, level=CONN)"},
    {"resume", (PyCFunction)Conn_resume, METH_NOARGS, "resume(): held by the gate, it goes on"},
    {"backend_ready", (PyCFunction)Conn_backend_ready, METH_NOARGS,
     "is the backend connected? (a failed connect closes the Conn)"},
    {NULL},
};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stud._flow.Conn",
    .tp_doc = "Conn(poller, policy, sock, peer, local): one client connection, all in C.",
    .tp_basicsize = sizeof(Conn),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Conn_new,
    .tp_init = (initproc)Conn_init,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_free = PyObject_GC_Del,
    .tp_traverse = (traverseproc)Conn_traverse,
    .tp_clear = (inquiry)Conn_clear,
    .tp_weaklistoffset = offsetof(Conn, weakrefs),
    .tp_methods = Conn_methods,
    .tp_members = Conn_members,
    .tp_getset = Conn_getset,
};


/* -- The default path's accept loop (Poller.serve(), listen()) ------------------------------ */

#define ACCEPT_BATCH 64 /* as the worker's: enough to empty a burst, bounded for fairness */
#define ACCEPT_AHEAD -1 /* accept_stop()'s argument for a worker over its share */

/* A socket address as the socket module gives it: (host, port[, flowinfo, scope_id]). */
static PyObject *sockaddr_tuple(const struct sockaddr_storage *ss) {
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(in->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, ntohs(in6->sin6_port),
                             (unsigned int)ntohl(in6->sin6_flowinfo),
                             (unsigned int)in6->sin6_scope_id);
    }
    PyErr_Format(PyExc_ValueError, "address family %d", ss->ss_family);
    return NULL;
}

/* What Worker._serve() does, for an accepted fd: a Conn (in the worker's open set) begins its handshake.
   -1: a Python error, for on_error. */
static int serve_fd(Poller *p, int fd, Listener *l, const struct sockaddr_storage *ss) {
    PyObject *peer = sockaddr_tuple(ss), *local = NULL;
    Conn *c = NULL;
    int r = -1, owned = 1;
    if (!peer)
        goto done;
    if (p->want_header) { /* the header names the local address too */
        struct sockaddr_storage name;
        socklen_t len = sizeof name;
        if (getsockname(fd, (struct sockaddr *)&name, &len) < 0) {
            r = 0; /* the client is gone already */
            goto done;
        }
        local = sockaddr_tuple(&name);
    } else
        local = PyTuple_New(0);
    if (!local)
        goto done;
    if (!(c = (Conn *)Conn_new(&ConnType, NULL, NULL)))
        goto done;
    conn_setup(c, p, p->policy, NULL, peer, local, fd);
    owned = 0; /* c closes it (no socket object: c has the fd) */
    if (PySet_Add(p->conns, (PyObject *)c) < 0)
        goto done;
    if (p->client_wrap) { /* --client: in clear from the client */
        r = conn_begin(c, NULL, NULL);
        goto done;
    }
    /* Its SSL* is made once its ClientHello is there (conn_own_ssl()). */
    c->own_ssl = 1;
    c->context = Py_NewRef(l->context);
    c->sni = Py_XNewRef(l->sni);
    r = conn_begin(c, NULL, NULL);
done:
    if (r < 0 && c && c->state != ST_CLOSED)
        conn_failed(c);
    if (owned)
        close(fd);
    Py_XDECREF(peer);
    Py_XDECREF(local);
    Py_XDECREF(c);
    return r;
}

/* The SNI callback of a listener's context, for the SSL*s made above (_ssl's own would look
   for an _SSLSocket): the Python sni(conn, name, context) as _ssl calls it, where one is given
   (several certificates, or sni-nomatch-abort; it may set conn.context), else accept the name
   (so that TLS 1.2 sessions keep it). A name that is not ASCII is one no certificate has (they
   carry A-labels): the default certificate, or the abort (as hitch; _ssl fails the handshake
   with internal_error instead). */
static int servername_cb(SSL *ssl, int *alert, void *unused) {
    Conn *c = SSL_get_ex_data_(ssl, SSL_APP_DATA_INDEX);
    const char *name = SSL_get_servername_(ssl, TLSEXT_NAMETYPE_host_name);
    if (!c || Py_TYPE(c) != &ConnType || !c->sni || !name)
        return SSL_TLSEXT_ERR_OK;
    PyObject *str = PyUnicode_DecodeLatin1(name, (Py_ssize_t)strlen(name), NULL);
    PyObject *r = str ? PyObject_CallFunctionObjArgs(c->sni, (PyObject *)c, str, c->context, NULL)
                      : NULL;
    Py_XDECREF(str);
    int ret = SSL_TLSEXT_ERR_OK;
    if (!r || (r != Py_None && !PyLong_Check(r))) {
        report(c->poller);
        PyErr_Clear();
        *alert = SSL_AD_INTERNAL_ERROR;
        ret = SSL_TLSEXT_ERR_ALERT_FATAL;
    } else if (r != Py_None) {
        *alert = (int)PyLong_AsLong(r);
        ret = SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    Py_XDECREF(r);
    return ret;
}

/* The worker stops accepting: out of file descriptors (err), at max-connections (0), or over
   its share (ACCEPT_AHEAD). */
static int stop_accepting(Poller *p, int err) {
    PyObject *r = PyObject_CallFunction(p->accept_stop, "i", err);
    Py_XDECREF(r);
    return r ? 0 : report(p);
}

/* Whether this worker holds more than its share (stud.balance): then it leaves new
   connections to the others for a moment (accept_stop(ACCEPT_AHEAD)). -1: a Python error. */
static int poller_ahead(Poller *p) {
    if (!p->ahead)
        return 0;
    PyObject *r = PyObject_CallFunction(p->ahead, "n", PySet_GET_SIZE(p->conns));
    int ahead = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    return ahead;
}

/* Readable listening socket l: what Worker._accept() does, in C. -1 only if on_error raised. */
static int poller_accept(Poller *p, Listener *l) {
    int ahead = poller_ahead(p);
    if (ahead)
        return ahead < 0 ? report(p) : stop_accepting(p, ACCEPT_AHEAD);
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
                return stop_accepting(p, e);
            return 0; /* none left; ECONNABORTED and friends concern one client only */
        }
        p->stats.accepted++;
        if (serve_fd(p, fd, l, &ss) < 0 && report(p) < 0)
            return -1;
        if (p->max_conns && PySet_GET_SIZE(p->conns) >= p->max_conns)
            return stop_accepting(p, 0); /* never fail open: the kernel queues the rest */
    }
    return 0;
}

/* serve(policy, conns, max_conns, log_fd, log_level, accept_stop): from now on the listen()ed
   sockets are accepted in C, each connection a Conn of policy in the set conns; closes are
   accounted here (closed_in_c()) unless notify is set; accept_stop(errno) when accepting stops
   (0: at max_conns). */
static PyObject *Poller_serve(Poller *self, PyObject *args) {
    PyObject *policy, *conns, *accept_stop, *ahead = Py_None, *gate = Py_None;
    Py_ssize_t max_conns;
    int log_fd, log_level;
    if (!PyArg_ParseTuple(args, "OO!niiO|OO:serve", &policy, &PySet_Type, &conns, &max_conns,
                          &log_fd, &log_level, &accept_stop, &ahead, &gate))
        return NULL;
    if (!self->backend_len) {
        PyErr_SetString(PyExc_RuntimeError, "configure() comes first");
        return NULL;
    }
    if (!PyCallable_Check(accept_stop)) {
        PyErr_SetString(PyExc_TypeError, "accept_stop must be callable");
        return NULL;
    }
    Py_XSETREF(self->policy, Py_NewRef(policy));
    Py_XSETREF(self->conns, Py_NewRef(conns));
    Py_XSETREF(self->accept_stop, Py_NewRef(accept_stop));
    Py_XSETREF(self->ahead, ahead == Py_None ? NULL : Py_NewRef(ahead));
    Py_XSETREF(self->gate, gate == Py_None ? NULL : Py_NewRef(gate));
    self->max_conns = max_conns;
    self->log_fd = log_fd;
    self->log_level = log_level;
    self->pid = (long)getpid();
    Py_RETURN_NONE;
}

/* The listener of fd (added if new); NULL: too many (error set). */
static Listener *listener_of(Poller *self, int fd) {
    for (int i = 0; i < self->nlisteners; i++)
        if (self->listeners[i].fd == fd)
            return &self->listeners[i];
    if (self->nlisteners == MAX_LISTENERS) {
        PyErr_SetString(PyExc_ValueError, "too many listening sockets");
        return NULL;
    }
    Listener *l = &self->listeners[self->nlisteners++];
    *l = (Listener){.fd = fd};
    return l;
}

/* listen(fd, context, sni): accept on fd in C (after serve()), each handshake starting on
   context (None with --client), whose SNI callback becomes servername_cb(), calling sni (None:
   no choice to make); listen(fd, None, None, False): no more. */
static PyObject *Poller_listen(Poller *self, PyObject *args) {
    int fd, on = 1;
    PyObject *context, *sni;
    if (!PyArg_ParseTuple(args, "iOO|p:listen", &fd, &context, &sni, &on))
        return NULL;
    if (on && !self->conns) {
        PyErr_SetString(PyExc_RuntimeError, "serve() comes first");
        return NULL;
    }
    if (on && (context == Py_None) != (self->client_wrap != NULL)) {
        PyErr_SetString(PyExc_ValueError, "context None for --client (only)");
        return NULL;
    }
    SSL_CTX *ctx = on && context != Py_None ? ctx_of(context) : NULL;
    if (on && context != Py_None && !ctx)
        return NULL;
    Slot *s = slot_of(self, fd);
    Listener *l = on ? listener_of(self, fd) : NULL;
    if (!s || (on && !l) || poller_mask(self, s, fd, on ? EPOLLIN : 0) < 0)
        return NULL;
    s->listener = on ? (int)(l - self->listeners) + 1 : 0;
    if (!on)
        Py_RETURN_NONE;
    if (ctx)
        SSL_CTX_callback_ctrl_(ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, (generic_cb)servername_cb);
    Py_XSETREF(l->context, context == Py_None ? NULL : Py_NewRef(context));
    Py_XSETREF(l->sni, sni == Py_None ? NULL : Py_NewRef(sni));
    l->ctx = ctx;
    Py_RETURN_NONE;
}

/* Set a histogram's upper bounds (ascending) from a Python sequence. */
static int set_bounds(Hist *h, PyObject *bounds) {
    PyObject *seq = PySequence_Fast(bounds, "buckets must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_BOUNDS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many buckets");
        return -1;
    }
    Hist fresh = {.nbounds = (int)n};
    for (Py_ssize_t i = 0; i < n; i++)
        fresh.bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    if (PyErr_Occurred())
        return -1;
    *h = fresh;
    return 0;
}

/* The backend address from a family and a sockaddr as getaddrinfo() gives it for AF_INET or
   AF_INET6 (numeric), or a UNIX socket's path for AF_UNIX; -1: error set. */
static int set_backend(Poller *self, int family, PyObject *sa) {
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope = 0;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        if (!PyArg_ParseTuple(sa, "si", &host, &port))
            return -1;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            goto bad;
        len = sizeof *in;
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        if (!PyArg_ParseTuple(sa, "si|II", &host, &port, &flowinfo, &scope))
            return -1;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        in6->sin6_flowinfo = htonl(flowinfo);
        in6->sin6_scope_id = scope;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            goto bad;
        len = sizeof *in6;
    } else if (family == AF_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        Py_ssize_t n;
        const char *path = PyUnicode_Check(sa) ? PyUnicode_AsUTF8AndSize(sa, &n) : NULL;
        if (!path || n <= 0 || (size_t)n >= sizeof un->sun_path || strlen(path) != (size_t)n)
            goto bad;
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, (size_t)n + 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
    } else
        goto bad;
    self->backend = ss;
    self->backend_len = len;
    return 0;
bad:
    PyErr_Clear();
    PyErr_SetString(PyExc_ValueError,
                    "backend: a numeric IPv4 or IPv6 address, or a UNIX socket's path");
    return -1;
}

/* configure(backend_family, backend_sockaddr, handshake_timeout, connect_timeout, header,
   handshake_buckets, connect_buckets, *, proxy=0, sock_type=None, client_wrap=None): what
   Conns need; sockaddr as getaddrinfo() gives it for AF_INET or AF_INET6; the duration
   histograms' upper bounds (metrics.*_BUCKETS); proxy: --proxy-proxy's peek size; with
   --client, sock_type makes the backend's socket object and client_wrap wraps it. */
static PyObject *Poller_configure(Poller *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"", "", "", "", "", "", "", "proxy", "sock_type", "client_wrap",
                             NULL};
    int family, header, proxy = 0;
    PyObject *sa, *hs_buckets, *ct_buckets, *sock_type = Py_None, *client_wrap = Py_None;
    double hs, ct;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOddpOO|$iOO:configure", kwlist, &family, &sa,
                                     &hs, &ct, &header, &hs_buckets, &ct_buckets, &proxy,
                                     &sock_type, &client_wrap))
        return NULL;
    if (client_wrap != Py_None && sock_type == Py_None) {
        PyErr_SetString(PyExc_ValueError, "client_wrap needs sock_type");
        return NULL;
    }
    if (proxy < 0 || proxy > BUFSIZE) {
        PyErr_SetString(PyExc_ValueError, "proxy: a peek size up to BUFSIZE");
        return NULL;
    }
    if (set_bounds(&self->stats.handshake_seconds, hs_buckets) < 0 ||
        set_bounds(&self->stats.connect_seconds, ct_buckets) < 0)
        return NULL;
    if (set_backend(self, family, sa) < 0)
        return NULL;
    self->timeout[K_HANDSHAKE] = hs;
    self->timeout[K_CONNECT] = ct;
    if (!self->kwnames && !(self->kwnames = Py_BuildValue("(s)", "owner")))
        return NULL;
    self->want_header = header;
    self->proxy = proxy;
    Py_XSETREF(self->sock_type, sock_type == Py_None ? NULL : Py_NewRef(sock_type));
    Py_XSETREF(self->client_wrap, client_wrap == Py_None ? NULL : Py_NewRef(client_wrap));
    Py_RETURN_NONE;
}

/* set_backend(family, sockaddr): where Conns connect from now on (-R: its name resolved
   again), as configure() takes it. */
static PyObject *Poller_set_backend(Poller *self, PyObject *args) {
    int family;
    PyObject *sa;
    if (!PyArg_ParseTuple(args, "iO:set_backend", &family, &sa) || set_backend(self, family, sa) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* [bucket counts...] of a histogram, or NULL. */
static PyObject *hist_counts(Hist *h) {
    PyObject *counts = PyList_New(h->nbounds + 1);
    for (int b = 0; counts && b <= h->nbounds; b++) {
        PyObject *n = PyLong_FromLongLong(h->counts[b]);
        if (!n)
            Py_CLEAR(counts);
        else
            PyList_SET_ITEM(counts, b, n);
    }
    return counts;
}

static void hist_reset(Hist *h) {
    memset(h->counts, 0, sizeof h->counts);
    h->sum = 0;
}

/* take_stats(): (handshakes, resumed, {version: n}, {cipher: n}, (handshake bucket counts,
   sum of seconds), (connect bucket counts, sum)) since the last call, for the policy's Stats. */
static PyObject *Poller_take_stats(Poller *self, PyObject *unused) {
    ConnStats *h = &self->stats;
    PyObject *versions = PyDict_New(), *ciphers = PyDict_New();
    PyObject *hs = hist_counts(&h->handshake_seconds), *ct = hist_counts(&h->connect_seconds);
    for (int i = 0; versions && ciphers && i < h->nversion + h->ncipher; i++) {
        Named *x = i < h->nversion ? &h->version[i] : &h->cipher[i - h->nversion];
        PyObject *n = x->n ? PyLong_FromLongLong(x->n) : NULL;
        if (n && PyDict_SetItem(i < h->nversion ? versions : ciphers, x->str, n) < 0)
            Py_CLEAR(versions);
        Py_XDECREF(n);
    }
    PyObject *r = versions && ciphers && hs && ct
                      ? Py_BuildValue("(LLOO(Od)(Od)(LLL))", h->handshakes, h->resumed, versions,
                                      ciphers, hs, h->handshake_seconds.sum, ct,
                                      h->connect_seconds.sum, h->accepted, h->bytes_up,
                                      h->bytes_down)
                      : NULL;
    Py_XDECREF(versions);
    Py_XDECREF(ciphers);
    Py_XDECREF(hs);
    Py_XDECREF(ct);
    if (r) {
        h->handshakes = h->resumed = h->accepted = h->bytes_up = h->bytes_down = 0;
        hist_reset(&h->handshake_seconds);
        hist_reset(&h->connect_seconds);
        for (int i = 0; i < h->nversion; i++)
            h->version[i].n = 0;
        for (int i = 0; i < h->ncipher; i++)
            h->cipher[i].n = 0;
    }
    return r;
}

/* expired(now): [(conn, kind), ...] whose deadline passed, disarmed (the worker closes them). */
static PyObject *Poller_expired(Poller *self, PyObject *arg) {
    double t = PyFloat_AsDouble(arg);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    for (int k = 0; out && k < NKINDS; k++)
        while (self->head[k] && self->head[k]->deadline <= t) {
            Conn *c = self->head[k];
            disarm(c);
            PyObject *item = Py_BuildValue("(Os)", c, kind_names[k]);
            if (!item || PyList_Append(out, item) < 0)
                Py_CLEAR(out);
            Py_XDECREF(item);
            if (!out)
                break;
        }
    return out;
}

static PyMethodDef module_methods[] = {
    {"init", flow_init, METH_VARARGS, "init(functions, layout): from stud.sslext"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stud._flow", "stud's connections in C: Conn and its Poller.",
    -1, module_methods,
};

PyMODINIT_FUNC PyInit__flow(void) {
    static const struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&s_closed, "closed"},           {&s_context, "context"},
        {&s_handshake_failed, "handshake_failed"},
        {&s_backend_failed, "backend_failed"}, {&s_client_header, "client_header"},
        {&s_close, "close"},             {&s_fileno, "fileno"},
        {&s_proxy_header, "proxy_header"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!(*names[i].slot = PyUnicode_InternFromString(names[i].name)))
            return NULL;
    if (PyType_Ready(&PollerType) < 0 || PyType_Ready(&ConnType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Poller", (PyObject *)&PollerType) < 0 ||
        PyModule_AddObjectRef(m, "Conn", (PyObject *)&ConnType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
