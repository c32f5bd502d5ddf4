/*
 * stud._flow: the relay's data pump (stud.relay.PyFlow) and its fd poller, in C.
 *
 * Profiles put a third of stud's own per-connection CPU in Flow's Python bytecode: one
 * SSL_read/recv and one send/SSL_write per event cost less than the interpreter around them.
 * This is the same state machine, line for line (relay.py's PyFlow is the reference and the
 * fallback); everything that is not moving bytes (fd interest, errors, the connect, the end)
 * stays in Python and is called back through the Relay.
 *
 * OpenSSL is reached through function pointers that stud.sslext takes from the libssl that
 * CPython's _ssl module uses (init()), and SSL* pointers that sslext checked: no OpenSSL
 * headers, never a second copy of the library. The GIL is held throughout (every call is
 * non-blocking).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct ssl_st SSL;
static int (*SSL_read_)(SSL *, void *, int);
static int (*SSL_write_)(SSL *, const void *, int);
static int (*SSL_get_error_)(const SSL *, int);
static int (*SSL_shutdown_)(SSL *);
static int (*SSL_do_handshake_)(SSL *);
static void *(*SSL_get_SSL_CTX_)(const SSL *);
static const char *(*SSL_get_servername_)(const SSL *, int);
static void (*SSL_set_shutdown_)(SSL *, int);
static unsigned long (*ERR_get_error_)(void);
static void (*ERR_clear_error_)(void);
static void (*ERR_error_string_n_)(unsigned long, char *, size_t);

enum { E_SSL = 1, E_WANT_READ = 2, E_WANT_WRITE = 3, E_SYSCALL = 5, E_ZERO_RETURN = 6 };
#define BUFSIZE 65536
#define RECORD 16384 /* the largest TLS record's plaintext */
#define WHY 300

/* One per process: data is forwarded before the next read reuses it. */
static char buf[BUFSIZE];

static PyObject *s_want_read, *s_want_write, *s_established, *s_end_failed, *s_backend_ready,
    *s_flow_done, *s_connecting, *s_closed, *s_active, *s_read_wants_write, *s_readable,
    *s_writable, *s_inflow, *s_outflow, *s_fd, *s_ssl, *s_back, *s_context;

/* CPython's _ssl objects, as stud.sslext describes them: the SSL* and SSL_CTX* offsets. */
static PyObject *ssl_type, *ctx_type;
static Py_ssize_t ssl_offset, ctx_offset;

typedef struct {
    PyObject_HEAD
    PyObject *relay, *src, *dst;
    PyObject *pending; /* bytes not yet written to dst (src is paused meanwhile), or NULL */
    Py_ssize_t pending_off;
    long long nbytes;  /* delivered to dst */
    int src_fd, dst_fd;
    SSL *src_ssl, *dst_ssl; /* NULL: plain TCP */
    char eof, done, src_is_back, dst_is_back, connecting;
} Flow;

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
    if (err == E_ZERO_RETURN || (err == E_SYSCALL && !saved_errno))
        snprintf(why, WHY, "closed the connection");
    else if (err == E_SYSCALL)
        snprintf(why, WHY, "%s", strerror(saved_errno));
    else
        ssl_reason(why);
    ERR_clear_error_();
}

static int call2(PyObject *obj, PyObject *name, PyObject *a, PyObject *b) {
    PyObject *r = PyObject_CallMethodObjArgs(obj, name, a, b, NULL);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int call0(PyObject *obj, PyObject *name) {
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* relay.want_read(end, getattr(owner, method) or None), and the same for want_write. */
static int want(Flow *self, PyObject *which, PyObject *end, PyObject *owner, PyObject *method) {
    if (!owner)
        return call2(self->relay, which, end, Py_None);
    PyObject *cb = PyObject_GetAttr(owner, method);
    if (!cb)
        return -1;
    int r = call2(self->relay, which, end, cb);
    Py_DECREF(cb);
    return r;
}

static int failed(Flow *self, PyObject *end, const char *why) {
    PyObject *s = PyUnicode_DecodeUTF8(why, strlen(why), "replace");
    if (!s)
        return -1;
    int r = call2(self->relay, s_end_failed, end, s);
    Py_DECREF(s);
    return r;
}

static int attr_true(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

/* relay.connecting, read only until it is seen cleared (it never comes back). */
static int still_connecting(Flow *self) {
    if (!self->connecting)
        return 0;
    int t = attr_true(self->relay, s_connecting);
    if (t == 0)
        self->connecting = 0;
    return t;
}

/* Bytes written to dst (0: would block); -1 if dst failed (the relay is closed); -2 on a
   Python error. */
static Py_ssize_t flow_send(Flow *self, const char *data, Py_ssize_t len) {
    Py_ssize_t sent;
    char why[WHY];
    if (!self->dst_ssl) {
        ssize_t r = send(self->dst_fd, data, (size_t)len, MSG_NOSIGNAL);
        if (r < 0) {
            if (would_block(errno))
                return 0;
            snprintf(why, WHY, "%s", strerror(errno));
            return failed(self, self->dst, why) < 0 ? -2 : -1;
        }
        sent = r;
    } else {
        errno = 0;
        int r = SSL_write_(self->dst_ssl, data, (int)len);
        if (r <= 0) {
            int saved = errno, err = SSL_get_error_(self->dst_ssl, r);
            if (err == E_WANT_READ || err == E_WANT_WRITE)
                return 0;
            tls_failure(err, saved, why);
            return failed(self, self->dst, why) < 0 ? -2 : -1;
        }
        sent = r;
    }
    if (self->dst_is_back) {
        int c = still_connecting(self);
        if (c < 0 || (c && call0(self->relay, s_established) < 0))
            return -2;
    }
    self->nbytes += sent;
    return sent;
}

/* Write data to dst; keep what did not fit and pause src. 1: all written, 0: not, -1: error. */
static int flow_write(Flow *self, const char *data, Py_ssize_t len) {
    Py_ssize_t sent = flow_send(self, data, len);
    if (sent == -2)
        return -1;
    if (sent == len)
        return 1;
    if (sent >= 0) {
        /* Copy: the shared buffer is reused by the next read, anywhere in this process. */
        Py_XSETREF(self->pending, PyBytes_FromStringAndSize(data + sent, len - sent));
        self->pending_off = 0;
        if (!self->pending || want(self, s_want_read, self->src, NULL, NULL) < 0 ||
            want(self, s_want_write, self->dst, self->dst, s_writable) < 0)
            return -1;
    }
    return 0;
}

/* Pass EOF on once everything before it was written. */
static int flow_finish(Flow *self) {
    char why[WHY];
    if (self->pending || self->done)
        return 0;
    if (self->dst_is_back) {
        int c = still_connecting(self);
        if (c < 0)
            return -1;
        if (c) {
            PyObject *r = PyObject_CallMethodNoArgs(self->relay, s_backend_ready);
            if (!r)
                return -1;
            int ready = PyObject_IsTrue(r);
            Py_DECREF(r);
            if (ready < 0)
                return -1;
            if (!ready) {
                /* A FIN now would abort the connect: pass it on once the backend is there. */
                int closed = attr_true(self->relay, s_closed);
                if (closed < 0)
                    return -1;
                return closed ? 0 : want(self, s_want_write, self->dst, self->dst, s_writable);
            }
        }
    }
    if (self->dst_ssl) {
        /* Our close_notify, once; the peer's is still read (a TLS half-close). */
        ERR_clear_error_();
        errno = 0;
        int r = SSL_shutdown_(self->dst_ssl);
        if (r < 0) {
            int saved = errno, err = SSL_get_error_(self->dst_ssl, r);
            if (err == E_WANT_WRITE || err == E_WANT_READ) {
                ERR_clear_error_();
                return want(self, s_want_write, self->dst, self->dst, s_writable);
            }
            if (err == E_SYSCALL && saved)
                snprintf(why, WHY, "%s", strerror(saved));
            else
                ssl_reason(why);
            ERR_clear_error_();
            return failed(self, self->dst, why);
        }
    } else if (shutdown(self->dst_fd, SHUT_WR) < 0) {
        if (would_block(errno))
            return want(self, s_want_write, self->dst, self->dst, s_writable);
        snprintf(why, WHY, "%s", strerror(errno));
        return failed(self, self->dst, why);
    }
    self->done = 1;
    if (want(self, s_want_write, self->dst, NULL, NULL) < 0)
        return -1;
    return call0(self->relay, s_flow_done);
}

static PyObject *Flow_readable(Flow *self, PyObject *unused) {
    Py_ssize_t n = 0;
    int fail = 0;
    char why[WHY];
    if (!self->src_ssl) {
        ssize_t r = recv(self->src_fd, buf, BUFSIZE, 0);
        if (r > 0)
            n = r;
        else if (r == 0)
            self->eof = 1;
        else if (!would_block(errno)) {
            fail = 1;
            snprintf(why, WHY, "%s", strerror(errno));
        }
    } else {
        /* One record per SSL_read. Go on only after a full record (bulk data): a short one
           was all there was. Each read asks for at least a full record, so OpenSSL never
           keeps decrypted bytes back that no fd event would announce. */
        while (n <= BUFSIZE - RECORD) {
            errno = 0;
            int k = SSL_read_(self->src_ssl, buf + n, (int)(BUFSIZE - n));
            if (k > 0) {
                n += k;
                if (k < RECORD)
                    break;
                continue;
            }
            int saved = errno, err = SSL_get_error_(self->src_ssl, k);
            if (err == E_WANT_READ)
                break;
            if (err == E_WANT_WRITE) {
                if (PyObject_SetAttr(self->src, s_read_wants_write, Py_True) < 0 ||
                    want(self, s_want_write, self->src, self->src, s_writable) < 0)
                    return NULL;
                break;
            }
            if (err == E_ZERO_RETURN || (err == E_SYSCALL && !saved)) {
                /* A close_notify after ours, or a ragged EOF. */
                ERR_clear_error_();
                self->eof = 1;
                break;
            }
            tls_failure(err, saved, why);
            fail = 1;
            break;
        }
    }
    if (fail) {
        if (n && flow_write(self, buf, n) < 0)
            return NULL;
        if (failed(self, self->src, why) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (self->src_is_back) {
        int c = still_connecting(self);
        if (c < 0 || (c && call0(self->relay, s_established) < 0))
            return NULL;
    }
    if (n) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock */
        PyObject *now = PyFloat_FromDouble((double)ts.tv_sec + ts.tv_nsec * 1e-9);
        int r = now ? PyObject_SetAttr(self->relay, s_active, now) : -1;
        Py_XDECREF(now);
        if (r < 0)
            return NULL;
        int w = flow_write(self, buf, n);
        if (w < 0)
            return NULL;
        if (w == 0)
            Py_RETURN_NONE; /* dst is full: reading resumes in writable() */
    }
    if (self->eof) {
        if (want(self, s_want_read, self->src, NULL, NULL) < 0 || flow_finish(self) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Flow_writable(Flow *self, PyObject *unused) {
    if (self->pending) {
        Py_ssize_t len = PyBytes_GET_SIZE(self->pending) - self->pending_off;
        Py_ssize_t sent =
            flow_send(self, PyBytes_AS_STRING(self->pending) + self->pending_off, len);
        if (sent == -2)
            return NULL;
        if (sent == -1)
            Py_RETURN_NONE;
        if (sent < len) {
            self->pending_off += sent;
            Py_RETURN_NONE;
        }
        Py_CLEAR(self->pending);
    }
    if (self->eof) {
        if (flow_finish(self) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    int closed = attr_true(self->relay, s_closed);
    if (closed < 0)
        return NULL;
    if (!closed && (want(self, s_want_write, self->dst, NULL, NULL) < 0 ||
                    want(self, s_want_read, self->src, (PyObject *)self, s_readable) < 0))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Flow_write(Flow *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int w = flow_write(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (w < 0)
        return NULL;
    return PyBool_FromLong(w);
}

static PyObject *Flow_finish(Flow *self, PyObject *unused) {
    if (flow_finish(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int fd_of(PyObject *end, int *fd, SSL **ssl) {
    PyObject *v = PyObject_GetAttr(end, s_fd);
    if (!v)
        return -1;
    *fd = (int)PyLong_AsLong(v);
    Py_DECREF(v);
    if (*fd == -1 && PyErr_Occurred())
        return -1;
    if (!(v = PyObject_GetAttr(end, s_ssl)))
        return -1;
    *ssl = v == Py_None ? NULL : (SSL *)PyLong_AsVoidPtr(v);
    Py_DECREF(v);
    return PyErr_Occurred() ? -1 : 0;
}

static int Flow_init(Flow *self, PyObject *args, PyObject *kwds) {
    PyObject *relay, *src, *dst;
    static char *kwlist[] = {"relay", "src", "dst", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Flow", kwlist, &relay, &src, &dst))
        return -1;
    if (!SSL_read_) {
        PyErr_SetString(PyExc_RuntimeError, "stud._flow.init() was not called");
        return -1;
    }
    Py_INCREF(relay);
    Py_INCREF(src);
    Py_INCREF(dst);
    Py_XSETREF(self->relay, relay);
    Py_XSETREF(self->src, src);
    Py_XSETREF(self->dst, dst);
    if (fd_of(src, &self->src_fd, &self->src_ssl) < 0 ||
        fd_of(dst, &self->dst_fd, &self->dst_ssl) < 0)
        return -1;
    PyObject *back = PyObject_GetAttr(relay, s_back);
    if (!back)
        return -1;
    self->src_is_back = src == back;
    self->dst_is_back = dst == back;
    Py_DECREF(back);
    int c = attr_true(relay, s_connecting);
    if (c < 0)
        return -1;
    self->connecting = (char)c;
    if (PyObject_SetAttr(src, s_inflow, (PyObject *)self) < 0 ||
        PyObject_SetAttr(dst, s_outflow, (PyObject *)self) < 0)
        return -1;
    return 0;
}

static int Flow_traverse(Flow *self, visitproc visit, void *arg) {
    Py_VISIT(self->relay);
    Py_VISIT(self->src);
    Py_VISIT(self->dst);
    return 0;
}

static int Flow_clear(Flow *self) {
    Py_CLEAR(self->relay);
    Py_CLEAR(self->src);
    Py_CLEAR(self->dst);
    Py_CLEAR(self->pending);
    return 0;
}

static void Flow_dealloc(Flow *self) {
    PyObject_GC_UnTrack(self);
    Flow_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Flow_get_pending(Flow *self, void *closure) {
    if (!self->pending)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->pending) + self->pending_off,
                                     PyBytes_GET_SIZE(self->pending) - self->pending_off);
}

static PyObject *Flow_get_flag(Flow *self, void *closure) {
    return PyBool_FromLong(closure ? self->done : self->eof);
}

static PyObject *Flow_get_nbytes(Flow *self, void *closure) {
    return PyLong_FromLongLong(self->nbytes);
}

static int Flow_set_nbytes(Flow *self, PyObject *v, void *closure) {
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete nbytes");
        return -1;
    }
    long long n = PyLong_AsLongLong(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    self->nbytes = n;
    return 0;
}

static PyObject *Flow_get_obj(Flow *self, void *closure) {
    PyObject *o = *(PyObject **)((char *)self + (size_t)closure);
    return Py_NewRef(o ? o : Py_None);
}

static PyGetSetDef Flow_getset[] = {
    {"relay", (getter)Flow_get_obj, NULL, NULL, (void *)offsetof(Flow, relay)},
    {"src", (getter)Flow_get_obj, NULL, NULL, (void *)offsetof(Flow, src)},
    {"dst", (getter)Flow_get_obj, NULL, NULL, (void *)offsetof(Flow, dst)},
    {"pending", (getter)Flow_get_pending, NULL, "bytes not yet written to dst, or None", NULL},
    {"eof", (getter)Flow_get_flag, NULL, "src has ended", NULL},
    {"done", (getter)Flow_get_flag, NULL, "EOF was passed on to dst", (void *)1},
    {"nbytes", (getter)Flow_get_nbytes, (setter)Flow_set_nbytes, "bytes delivered to dst",
     NULL},
    {NULL},
};

static PyMethodDef Flow_methods[] = {
    {"readable", (PyCFunction)Flow_readable, METH_NOARGS, "src is readable: move what is there"},
    {"writable", (PyCFunction)Flow_writable, METH_NOARGS, "dst is writable: flush, resume src"},
    {"write", (PyCFunction)Flow_write, METH_O, "write data to dst; True if all of it went"},
    {"finish", (PyCFunction)Flow_finish, METH_NOARGS, "pass EOF on once all is written"},
    {NULL},
};

static PyTypeObject FlowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stud._flow.Flow",
    .tp_doc = "Bytes one way, src -> dst, with back-pressure and EOF propagation.",
    .tp_basicsize = sizeof(Flow),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Flow_init,
    .tp_dealloc = (destructor)Flow_dealloc,
    .tp_free = PyObject_GC_Del,
    .tp_traverse = (traverseproc)Flow_traverse,
    .tp_clear = (inquiry)Flow_clear,
    .tp_methods = Flow_methods,
    .tp_getset = Flow_getset,
};

/* ---- Poller: the connections' fds in one epoll set of our own ------------------------------
 *
 * uvloop's add_reader()/remove_reader() cost about 1.7 us each in Python-level bookkeeping,
 * and a relay changes its fd interest five times or more per connection. The worker registers
 * this epoll fd with the loop once; dispatch() runs the ready callbacks. Each registration
 * carries a generation, so an event still queued for a closed fd is never delivered to a new
 * socket that reuses the number. */

typedef struct {
    PyObject *reader, *writer;
    uint32_t gen, mask;
} Slot;

typedef struct {
    PyObject_HEAD
    int ep;
    int nslots;
    Slot *slots;
    PyObject *on_error; /* called with the exception when a callback raises */
} Poller;

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

/* Set fd's reader (EPOLLIN) or writer (EPOLLOUT) callback; None removes it. */
static PyObject *poller_set(Poller *self, PyObject *const *args, Py_ssize_t nargs, int out) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (fd, callback or None)");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    PyObject *cb = args[1] == Py_None ? NULL : args[1];
    if (self->ep < 0) {
        PyErr_SetString(PyExc_ValueError, "Poller is closed");
        return NULL;
    }
    Slot *s = slot_of(self, fd);
    if (!s)
        return NULL;
    uint32_t bit = out ? EPOLLOUT : EPOLLIN;
    uint32_t mask = cb ? (s->mask | bit) : (s->mask & ~bit);
    if (mask != s->mask) {
        struct epoll_event ev = {.events = mask};
        int op = !s->mask ? EPOLL_CTL_ADD : !mask ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
        uint32_t gen = op == EPOLL_CTL_ADD ? s->gen + 1 : s->gen;
        ev.data.u64 = ((uint64_t)gen << 32) | (uint32_t)fd;
        int r = epoll_ctl(self->ep, op, fd, &ev);
        if (r < 0 && op == EPOLL_CTL_ADD && errno == EEXIST)
            r = epoll_ctl(self->ep, EPOLL_CTL_MOD, fd, &ev); /* forgotten but not closed */
        if (r < 0 && !(op == EPOLL_CTL_DEL && (errno == ENOENT || errno == EBADF)))
            return PyErr_SetFromErrno(PyExc_OSError);
        s->gen = gen;
        s->mask = mask;
    }
    Py_XINCREF(cb);
    if (out)
        Py_XSETREF(s->writer, cb);
    else
        Py_XSETREF(s->reader, cb);
    Py_RETURN_NONE;
}

static PyObject *Poller_set_reader(Poller *self, PyObject *const *args, Py_ssize_t nargs) {
    return poller_set(self, args, nargs, 0);
}

static PyObject *Poller_set_writer(Poller *self, PyObject *const *args, Py_ssize_t nargs) {
    return poller_set(self, args, nargs, 1);
}

/* Drop fd's callbacks right before it is closed: closing removes it from the epoll set, so no
   system call is needed, and the new generation voids events already queued for it. */
static PyObject *Poller_forget(Poller *self, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd >= 0 && fd < self->nslots) {
        Slot *s = &self->slots[fd];
        s->gen++;
        s->mask = 0;
        Py_CLEAR(s->reader);
        Py_CLEAR(s->writer);
    }
    Py_RETURN_NONE;
}

/* A callback raised: hand an Exception to on_error and go on; let anything else through. */
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

/* Run the callbacks of the fds that are ready now (at most MAX_EVENTS; the epoll fd stays
   readable for the loop while more are). Errors and hang-ups go to both callbacks. */
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
        for (int out = 0; out < 2; out++) {
            /* Looked up again each time: a callback may close fds or grow the table. */
            if (fd >= self->nslots || self->slots[fd].gen != gen)
                break;
            PyObject *cb = out ? self->slots[fd].writer : self->slots[fd].reader;
            if (!cb || !(ev & ((out ? EPOLLOUT : EPOLLIN) | EPOLLERR | EPOLLHUP)))
                continue;
            Py_INCREF(cb);
            PyObject *r = PyObject_CallNoArgs(cb);
            Py_DECREF(cb);
            if (r)
                Py_DECREF(r);
            else if (report(self) < 0)
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
        Py_CLEAR(self->slots[i].reader);
        Py_CLEAR(self->slots[i].writer);
    }
    Py_CLEAR(self->on_error);
    return 0;
}

static PyObject *Poller_close(Poller *self, PyObject *unused) {
    for (int i = 0; i < self->nslots; i++) {
        self->slots[i].mask = 0;
        self->slots[i].gen++;
        Py_CLEAR(self->slots[i].reader);
        Py_CLEAR(self->slots[i].writer);
    }
    if (self->ep >= 0) {
        close(self->ep);
        self->ep = -1;
    }
    Py_RETURN_NONE;
}

static int Poller_traverse(Poller *self, visitproc visit, void *arg) {
    for (int i = 0; i < self->nslots; i++) {
        Py_VISIT(self->slots[i].reader);
        Py_VISIT(self->slots[i].writer);
    }
    Py_VISIT(self->on_error);
    return 0;
}

static void Poller_dealloc(Poller *self) {
    PyObject_GC_UnTrack(self);
    Poller_clear(self);
    if (self->ep >= 0)
        close(self->ep);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Poller_methods[] = {
    {"set_reader", (PyCFunction)(void (*)(void))Poller_set_reader, METH_FASTCALL,
     "set_reader(fd, callback or None)"},
    {"set_writer", (PyCFunction)(void (*)(void))Poller_set_writer, METH_FASTCALL,
     "set_writer(fd, callback or None)"},
    {"forget", (PyCFunction)Poller_forget, METH_O, "drop fd's callbacks; call right before close"},
    {"dispatch", (PyCFunction)Poller_dispatch, METH_NOARGS, "run the callbacks of ready fds"},
    {"fileno", (PyCFunction)Poller_fileno, METH_NOARGS, "the epoll fd, for the event loop"},
    {"close", (PyCFunction)Poller_close, METH_NOARGS, "close the epoll fd"},
    {NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stud._flow.Poller",
    .tp_doc = "Poller(on_error): fd callbacks in an epoll set of their own.",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Poller_new,
    .tp_init = (initproc)Poller_init,
    .tp_dealloc = (destructor)Poller_dealloc,
    .tp_free = PyObject_GC_Del,
    .tp_traverse = (traverseproc)Poller_traverse,
    .tp_clear = (inquiry)Poller_clear,
    .tp_methods = Poller_methods,
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
    static const struct {
        const char *name;
        void **slot;
    } want_fns[] = {
        {"SSL_read", (void **)&SSL_read_},
        {"SSL_write", (void **)&SSL_write_},
        {"SSL_get_error", (void **)&SSL_get_error_},
        {"SSL_shutdown", (void **)&SSL_shutdown_},
        {"ERR_get_error", (void **)&ERR_get_error_},
        {"ERR_clear_error", (void **)&ERR_clear_error_},
        {"ERR_error_string_n", (void **)&ERR_error_string_n_},
        {"SSL_do_handshake", (void **)&SSL_do_handshake_},
        {"SSL_get_SSL_CTX", (void **)&SSL_get_SSL_CTX_},
        {"SSL_get_servername", (void **)&SSL_get_servername_},
        {"SSL_set_shutdown", (void **)&SSL_set_shutdown_},
    };
    void *got[sizeof want_fns / sizeof want_fns[0]];
    for (size_t i = 0; i < sizeof want_fns / sizeof want_fns[0]; i++) {
        PyObject *v = PyMapping_GetItemString(fns, want_fns[i].name);
        if (!v)
            return NULL;
        got[i] = PyLong_AsVoidPtr(v);
        Py_DECREF(v);
        if (!got[i]) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "no address for %s", want_fns[i].name);
            return NULL;
        }
    }
    for (size_t i = 0; i < sizeof want_fns / sizeof want_fns[0]; i++)
        *want_fns[i].slot = got[i];
    Py_INCREF(st);
    Py_XSETREF(ssl_type, st);
    Py_INCREF(ct);
    Py_XSETREF(ctx_type, ct);
    ssl_offset = so;
    ctx_offset = co;
    Py_RETURN_NONE;
}

/* ssl_pointer(obj): the SSL* of a raw _ssl._SSLSocket, checked against the SSL_CTX* of the
   context _ssl says it has (as stud.sslext.ssl_pointer does, without ctypes' cost). */
static PyObject *flow_ssl_pointer(PyObject *mod, PyObject *obj) {
    if (!ssl_type || (PyObject *)Py_TYPE(obj) != ssl_type) {
        PyErr_SetString(PyExc_TypeError, "expected _ssl._SSLSocket (after init())");
        return NULL;
    }
    SSL *p = *(SSL **)((char *)obj + ssl_offset);
    PyObject *ctx = PyObject_GetAttr(obj, s_context);
    if (!ctx)
        return NULL;
    int ok = PyObject_TypeCheck(ctx, (PyTypeObject *)ctx_type) && p &&
             SSL_get_SSL_CTX_(p) == *(void **)((char *)ctx + ctx_offset);
    Py_DECREF(ctx);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError,
                        "stud._flow: SSL* pointer check failed (CPython layout changed?)");
        return NULL;
    }
    return PyLong_FromVoidPtr(p);
}

static SSL *ssl_arg(PyObject *arg) {
    SSL *p = PyLong_AsVoidPtr(arg);
    if (!p && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "NULL SSL*");
    return p;
}

/* handshake(ssl): one SSL_do_handshake() step without the stdlib's exception per
   would-block: 1 done, 2 wants to read, 3 wants to write; failed: -errno for a socket error,
   4 for an EOF, 0 for a TLS error (left queued, so that the _SSLSocket's own do_handshake()
   raises it as the stdlib names it). */
static PyObject *flow_handshake(PyObject *mod, PyObject *arg) {
    SSL *p = ssl_arg(arg);
    if (!p)
        return NULL;
    errno = 0;
    int r = SSL_do_handshake_(p);
    if (r == 1)
        return PyLong_FromLong(1);
    int saved = errno, err = SSL_get_error_(p, r);
    if (err == E_WANT_READ || err == E_WANT_WRITE)
        return PyLong_FromLong(err);
    if (err != E_SYSCALL)
        return PyLong_FromLong(0);
    ERR_clear_error_();
    return PyLong_FromLong(saved ? -saved : 4);
}

/* keep_session(ssl): as stud.sslext.keep_session: mark it shut down both ways before it is
   freed, so that a reset connection does not drop its session from the cache. */
static PyObject *flow_keep_session(PyObject *mod, PyObject *arg) {
    SSL *p = ssl_arg(arg);
    if (!p)
        return NULL;
    SSL_set_shutdown_(p, 1 | 2); /* SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN */
    Py_RETURN_NONE;
}

/* servername(ssl): the SNI host name the client sent (bytes), or None. */
static PyObject *flow_servername(PyObject *mod, PyObject *arg) {
    SSL *p = ssl_arg(arg);
    if (!p)
        return NULL;
    const char *name = SSL_get_servername_(p, 0 /* TLSEXT_NAMETYPE_host_name */);
    if (!name)
        Py_RETURN_NONE;
    return PyBytes_FromString(name);
}

static PyMethodDef module_methods[] = {
    {"init", flow_init, METH_VARARGS, "init(functions, layout): from stud.sslext"},
    {"ssl_pointer", flow_ssl_pointer, METH_O, "the checked SSL* of an _ssl._SSLSocket"},
    {"servername", flow_servername, METH_O, "the SNI name the client sent, or None"},
    {"keep_session", flow_keep_session, METH_O, "keep the session cached when freed"},
    {"handshake", flow_handshake, METH_O, "one handshake step: 1 done, 2/3 want read/write, else failed"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stud._flow", "The relay's data pump and fd poller in C.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__flow(void) {
    static const struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&s_want_read, "want_read"},     {&s_want_write, "want_write"},
        {&s_established, "established"}, {&s_end_failed, "end_failed"},
        {&s_backend_ready, "backend_ready"}, {&s_flow_done, "flow_done"},
        {&s_connecting, "connecting"},   {&s_closed, "closed"},
        {&s_active, "active"},           {&s_read_wants_write, "read_wants_write"},
        {&s_readable, "readable"},       {&s_writable, "writable"},
        {&s_inflow, "inflow"},           {&s_outflow, "outflow"},
        {&s_fd, "fd"},                   {&s_ssl, "ssl"},
        {&s_back, "back"},               {&s_context, "context"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!(*names[i].slot = PyUnicode_InternFromString(names[i].name)))
            return NULL;
    if (PyType_Ready(&FlowType) < 0 || PyType_Ready(&PollerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Flow", (PyObject *)&FlowType) < 0 ||
        PyModule_AddObjectRef(m, "Poller", (PyObject *)&PollerType) < 0 ||
        PyModule_AddIntConstant(m, "BUFSIZE", BUFSIZE) < 0 ||
        PyModule_AddIntConstant(m, "RECORD", RECORD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
