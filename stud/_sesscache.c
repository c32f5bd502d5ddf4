/* stud._sesscache: the shared TLS session cache (-C NUM), so that a session ID issued by one
   worker resumes on any other, and its replication: to peer stud instances over UDP (-U/-P),
   and to a session store (--session-store), which a worker's Python writes: new sessions wait
   in a small per-process outbox, and an eventfd wakes the worker's loop for them.

   One anonymous MAP_SHARED mapping, made by the master before it forks, holds a hash table of
   session IDs and an LRU list of NUM slots, linked by index (not pointer), under a process-shared
   robust mutex: a worker that dies holding it cannot deadlock the others (stud's futex could);
   the next locker finds EOWNERDEAD and empties the cache, which may be half-updated.

   OpenSSL calls new_cb/get_cb/remove_cb on the handshake path, so they are C. The OpenSSL
   functions are those of the libssl CPython's _ssl uses; stud.sslext gives their addresses. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_openssl.h"
#include "_shm.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ID_MAX SSL_MAX_SSL_SESSION_ID_LENGTH
#define DATA_MAX 512 /* a DER session, as stud's shctx; bigger ones are not shared */
#define HMAC_LEN 20  /* HMAC-SHA1, as stud's update packets */
#define PACKET_MAX (ID_MAX + DATA_MAX + 4 + HMAC_LEN)
#define MAX_PEERS 15
/* this cache is the only one, and expires by itself */
#define CACHE_MODE                                                                             \
    (SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR | SSL_SESS_CACHE_NO_INTERNAL_LOOKUP | \
     SSL_SESS_CACHE_NO_INTERNAL_STORE)

typedef struct {
    int32_t prev, next; /* LRU order (head: most recent); the free list uses next */
    int32_t hnext;      /* hash chain */
    uint32_t hash;
    int64_t expires;    /* the session's time + timeout */
    uint16_t len;
    uint8_t idlen, id[ID_MAX], data[DATA_MAX];
} Slot;

typedef struct {
    pthread_mutex_t lock;
    uint32_t nslots, mask; /* mask + 1 hash buckets follow this header, then the slots */
    int32_t head, tail, free;
    uint32_t held;
    uint64_t stored, hits, misses, evicted, too_big, resets, received, rejected;
} Shm;

/* The cache in use (use()): inherited across fork, so a worker keeps the one it was forked
   with whatever the master uses later. */
static PyObject *current; /* the Cache object that owns the mapping */
static Shm *shm;          /* its header, or NULL */
static int32_t *buckets;
static Slot *slots;

/* Replication (-U/-P): the bound UDP socket, the HMAC key and where updates go. */
static int udp_fd = -1;
static unsigned char hmac_key[64];
static int hmac_key_len;
static struct sockaddr_storage peers[MAX_PEERS];
static socklen_t peer_lens[MAX_PEERS];
static int npeers;

/* The outbox for the session store (export()): this process's new sessions, in order. */
#define OUTBOX_MAX 64 /* a burst between two turns of the loop; more are dropped (counted) */
typedef struct {
    uint8_t idlen, id[ID_MAX];
    uint16_t len;
    uint8_t data[DATA_MAX];
    int64_t expires;
} Outgoing;
static Outgoing outbox[OUTBOX_MAX];
static int outbox_n, outbox_fd = -1;
static uint64_t outbox_dropped;

static uint32_t hash_id(const uint8_t *id, unsigned int len) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (unsigned int i = 0; i < len; i++)
        h = (h ^ id[i]) * 16777619u;
    return h;
}

static void reset(void) {
    for (uint32_t b = 0; b <= shm->mask; b++)
        buckets[b] = -1;
    for (uint32_t i = 0; i < shm->nslots; i++)
        slots[i].next = i + 1 < shm->nslots ? (int32_t)i + 1 : -1;
    shm->head = shm->tail = -1;
    shm->free = 0;
    shm->held = 0;
}

static int lock(void) {
    if (!shm) /* (a context attached in a process that has no cache in use) */
        return 0;
    int r = pthread_mutex_lock(&shm->lock);
    if (r == EOWNERDEAD) { /* its holder died mid-update: start over empty */
        reset();
        shm->resets++;
        pthread_mutex_consistent(&shm->lock);
        r = 0;
    }
    return r == 0;
}

static int32_t find(const uint8_t *id, unsigned int len, uint32_t h) {
    for (int32_t i = buckets[h & shm->mask]; i >= 0; i = slots[i].hnext)
        if (slots[i].hash == h && slots[i].idlen == len && !memcmp(slots[i].id, id, len))
            return i;
    return -1;
}

static void lru_unlink(int32_t i) {
    Slot *s = &slots[i];
    *(s->prev >= 0 ? &slots[s->prev].next : &shm->head) = s->next;
    *(s->next >= 0 ? &slots[s->next].prev : &shm->tail) = s->prev;
}

static void lru_push(int32_t i) {
    Slot *s = &slots[i];
    s->prev = -1;
    s->next = shm->head;
    *(shm->head >= 0 ? &slots[shm->head].prev : &shm->tail) = i;
    shm->head = i;
}

/* Out of the hash table and the LRU list, onto the free list. */
static void discard(int32_t i) {
    int32_t *link = &buckets[slots[i].hash & shm->mask];
    while (*link != i)
        link = &slots[*link].hnext;
    *link = slots[i].hnext;
    lru_unlink(i);
    slots[i].next = shm->free;
    shm->free = i;
    shm->held--;
}

static void store(const uint8_t *id, unsigned int idlen, const uint8_t *der, int len,
                  int64_t expires) {
    uint32_t h = hash_id(id, idlen);
    if (!lock())
        return;
    int32_t i = find(id, idlen, h);
    if (i >= 0)
        lru_unlink(i);
    else {
        if (shm->free < 0) { /* full: the least recently used goes */
            discard(shm->tail);
            shm->evicted++;
        }
        i = shm->free;
        shm->free = slots[i].next;
        shm->held++;
        slots[i].hash = h;
        slots[i].idlen = (uint8_t)idlen;
        memcpy(slots[i].id, id, idlen);
        slots[i].hnext = buckets[h & shm->mask];
        buckets[h & shm->mask] = i;
    }
    slots[i].expires = expires;
    slots[i].len = (uint16_t)len;
    memcpy(slots[i].data, der, (size_t)len);
    lru_push(i);
    shm->stored++;
    pthread_mutex_unlock(&shm->lock);
}

/* The DER session stored under id, copied to der; 0 if none (or expired: then dropped). */
static int fetch(const uint8_t *id, unsigned int idlen, uint8_t *der) {
    uint32_t h = hash_id(id, idlen);
    int len = 0;
    if (!lock())
        return 0;
    int32_t i = find(id, idlen, h);
    if (i >= 0 && slots[i].expires <= (int64_t)time(NULL)) {
        discard(i);
        i = -1;
    }
    if (i >= 0) {
        len = slots[i].len;
        memcpy(der, slots[i].data, (size_t)len);
        lru_unlink(i);
        lru_push(i);
        shm->hits++;
    } else
        shm->misses++;
    pthread_mutex_unlock(&shm->lock);
    return len;
}

static void drop(const uint8_t *id, unsigned int idlen) {
    uint32_t h = hash_id(id, idlen);
    if (!lock())
        return;
    int32_t i = find(id, idlen, h);
    if (i >= 0)
        discard(i);
    pthread_mutex_unlock(&shm->lock);
}

/* stud's update packet: id (zero-padded to 32) | DER | time (uint32, big-endian) | HMAC-SHA1. */
static void replicate(const uint8_t *id, unsigned int idlen, const uint8_t *der, int len,
                      long created) {
    uint8_t pkt[PACKET_MAX];
    unsigned int mdlen = 0;
    memset(pkt, 0, ID_MAX);
    memcpy(pkt, id, idlen);
    memcpy(pkt + ID_MAX, der, (size_t)len);
    uint32_t t = htonl((uint32_t)created);
    memcpy(pkt + ID_MAX + len, &t, 4);
    size_t n = ID_MAX + (size_t)len + 4;
    if (!HMAC_(EVP_sha1_(), hmac_key, hmac_key_len, pkt, n, pkt + n, &mdlen) ||
        mdlen != HMAC_LEN)
        return;
    for (int p = 0; p < npeers; p++) /* best effort, as stud: a lost update costs a handshake */
        (void)sendto(udp_fd, pkt, n + HMAC_LEN, MSG_DONTWAIT, (struct sockaddr *)&peers[p],
                     peer_lens[p]);
}

static void export(const uint8_t *id, unsigned int idlen, const uint8_t *der, int len,
                   int64_t expires) {
    if (outbox_n == OUTBOX_MAX) {
        outbox_dropped++;
        return;
    }
    Outgoing *o = &outbox[outbox_n++];
    o->idlen = (uint8_t)idlen;
    memcpy(o->id, id, idlen);
    o->len = (uint16_t)len;
    memcpy(o->data, der, (size_t)len);
    o->expires = expires;
    uint64_t one = 1;
    (void)!write(outbox_fd, &one, sizeof one); /* (the loop reads it; full it cannot be) */
}

static int new_cb(SSL *ssl, SSL_SESSION *sess) {
    if (!shm)
        return 0;
    /* TLS 1.3 with tickets: the ticket is the whole session, there is no ID to look up. */
    if (SSL_version_(ssl) == TLS1_3_VERSION && !(SSL_get_options_(ssl) & SSL_OP_NO_TICKET))
        return 0;
    unsigned int idlen;
    const uint8_t *id = SSL_SESSION_get_id_(sess, &idlen);
    int len = i2d_SSL_SESSION_(sess, NULL);
    if (!idlen || idlen > ID_MAX || len <= 0)
        return 0;
    if (len > DATA_MAX) {
        __atomic_fetch_add(&shm->too_big, 1, __ATOMIC_RELAXED);
        return 0;
    }
    uint8_t der[DATA_MAX], *p = der;
    if (i2d_SSL_SESSION_(sess, &p) != len)
        return 0;
    long created = SSL_SESSION_get_time_(sess);
    int64_t expires = (int64_t)created + SSL_SESSION_get_timeout_(sess);
    store(id, idlen, der, len, expires);
    if (npeers)
        replicate(id, idlen, der, len, created);
    if (outbox_fd >= 0)
        export(id, idlen, der, len, expires);
    return 0; /* (0: OpenSSL keeps no extra reference for us) */
}

static SSL_SESSION *get_cb(SSL *ssl, const unsigned char *id, int idlen, int *copy) {
    uint8_t der[DATA_MAX];
    *copy = 0; /* the session d2i makes is OpenSSL's to free */
    if (idlen <= 0 || idlen > ID_MAX)
        return NULL;
    int len = fetch(id, (unsigned int)idlen, der);
    const unsigned char *p = der;
    return len ? d2i_SSL_SESSION_(NULL, &p, len) : NULL;
}

static void remove_cb(SSL_CTX *ctx, SSL_SESSION *sess) {
    unsigned int idlen;
    const uint8_t *id = SSL_SESSION_get_id_(sess, &idlen);
    if (idlen && idlen <= ID_MAX)
        drop(id, idlen);
}

/* -- Python API ------------------------------------------------------------------------------ */

static PyObject *mod_init(PyObject *mod, PyObject *fns) {
    if (openssl_bind(fns) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* A mapping of its own, unmapped when the object goes (the processes forked while it was in
   use keep their copy of the mapping). */
typedef struct {
    PyObject_HEAD
    void *map;
    size_t size, slots_at;
} Cache;

/* Cache(nslots): a new, empty cache, shared with the processes forked while it is in use. */
static PyObject *Cache_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    long n;
    if (!PyArg_ParseTuple(args, "l:Cache", &n))
        return NULL;
    if (n < 1 || n > (1L << 24)) {
        PyErr_Format(PyExc_ValueError, "shared cache size %ld: want 1 to %ld", n, 1L << 24);
        return NULL;
    }
    uint32_t nb = 1;
    while (nb < (uint32_t)n)
        nb <<= 1;
    size_t size = sizeof(Shm) + nb * sizeof(int32_t);
    size = (size + 15) & ~(size_t)15;
    size_t slots_at = size;
    size += (size_t)n * sizeof(Slot);
    void *m = shm_map(size);
    Cache *c = m ? (Cache *)type->tp_alloc(type, 0) : NULL;
    if (!c) {
        if (m)
            munmap(m, size);
        return NULL;
    }
    c->map = m;
    c->size = size;
    c->slots_at = slots_at;
    ((Shm *)m)->nslots = (uint32_t)n;
    ((Shm *)m)->mask = nb - 1;
    return (PyObject *)c;
}

static void Cache_dealloc(Cache *c) {
    munmap(c->map, c->size);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stud._sesscache.Cache",
    .tp_basicsize = sizeof(Cache),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Cache_new,
    .tp_dealloc = (destructor)Cache_dealloc,
    .tp_doc = "Cache(nslots): an empty shared session cache; use() puts it in service",
};

/* use(cache): the cache this process and the ones it forks from now on store in, emptied. */
static PyObject *mod_use(PyObject *mod, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &CacheType)) {
        PyErr_SetString(PyExc_TypeError, "use() takes a Cache");
        return NULL;
    }
    Cache *c = (Cache *)arg;
    shm = c->map;
    buckets = (int32_t *)(shm + 1);
    slots = (Slot *)((char *)c->map + c->slots_at);
    reset();
    Py_XSETREF(current, Py_NewRef(arg));
    Py_RETURN_NONE;
}

/* attach(SSL_CTX address): its server sessions go to (and come from) this cache only. */
static PyObject *mod_attach(PyObject *mod, PyObject *arg) {
    SSL_CTX *ctx = PyLong_AsVoidPtr(arg);
    if (!ctx)
        return PyErr_Occurred() ? NULL : (PyErr_SetString(PyExc_ValueError, "NULL SSL_CTX"), NULL);
    if (!SSL_CTX_sess_set_new_cb_) {
        PyErr_SetString(PyExc_RuntimeError, "init() first");
        return NULL;
    }
    SSL_CTX_ctrl_(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, CACHE_MODE, NULL);
    SSL_CTX_sess_set_new_cb_(ctx, new_cb);
    SSL_CTX_sess_set_get_cb_(ctx, get_cb);
    SSL_CTX_sess_set_remove_cb_(ctx, remove_cb);
    Py_RETURN_NONE;
}

static int sockaddr_of(PyObject *t, struct sockaddr_storage *ss, socklen_t *len) {
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope = 0;
    if (!PyArg_ParseTuple(t, "si|II", &host, &port, &flowinfo, &scope))
        return -1;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        *len = sizeof *in;
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        in6->sin6_flowinfo = htonl(flowinfo);
        in6->sin6_scope_id = scope;
        *len = sizeof *in6;
    } else {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
        return -1;
    }
    return 0;
}

/* replicate(fd, key, [(host, port[, flowinfo, scope]), ...]): send each new session to these
   peers from the bound UDP socket fd, signed with key; receive() checks the same key.
   fd -1: no replication. */
static PyObject *mod_replicate(PyObject *mod, PyObject *args) {
    int fd;
    Py_buffer key;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "iy*O!:replicate", &fd, &key, &PyList_Type, &list))
        return NULL;
    if (fd < 0) { /* off */
        PyBuffer_Release(&key);
        udp_fd = -1;
        npeers = 0;
        Py_RETURN_NONE;
    }
    int ok = key.len > 0 && key.len <= (Py_ssize_t)sizeof hmac_key &&
             PyList_GET_SIZE(list) <= MAX_PEERS;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "key of 1 to 64 bytes, at most 15 peers");
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(list); i++)
        ok = sockaddr_of(PyList_GET_ITEM(list, i), &peers[i], &peer_lens[i]) == 0;
    if (ok) {
        memcpy(hmac_key, key.buf, (size_t)key.len);
        hmac_key_len = (int)key.len;
        npeers = (int)PyList_GET_SIZE(list);
        udp_fd = fd;
    }
    PyBuffer_Release(&key);
    return ok ? Py_NewRef(Py_None) : NULL;
}

/* One update packet from a peer into the cache; 0 if it is not a good one. */
static int accept_update(const uint8_t *pkt, ssize_t n) {
    uint8_t md[HMAC_LEN];
    unsigned int mdlen = 0;
    if (n < ID_MAX + 1 + 4 + HMAC_LEN || n > PACKET_MAX)
        return 0;
    size_t body = (size_t)n - HMAC_LEN;
    if (!HMAC_(EVP_sha1_(), hmac_key, hmac_key_len, pkt, body, md, &mdlen) ||
        mdlen != HMAC_LEN || CRYPTO_memcmp_(md, pkt + body, HMAC_LEN))
        return 0;
    int len = (int)body - ID_MAX - 4;
    const unsigned char *p = pkt + ID_MAX;
    SSL_SESSION *sess = d2i_SSL_SESSION_(NULL, &p, len);
    if (!sess)
        return 0;
    unsigned int idlen;
    const uint8_t *id = SSL_SESSION_get_id_(sess, &idlen);
    long timeout = SSL_SESSION_get_timeout_(sess);
    uint32_t t;
    memcpy(&t, pkt + body - 4, 4);
    int64_t created = ntohl(t), now = time(NULL);
    /* As stud: only an update from within the session's lifetime, and the ID in the packet
       must be the session's (a replayed packet can only refresh what it already says). */
    int good = idlen && idlen <= ID_MAX && !memcmp(pkt, id, idlen) &&
               (created > now ? created - now : now - created) < timeout;
    if (good)
        store(id, idlen, pkt + ID_MAX, len, now + timeout);
    SSL_SESSION_free_(sess);
    return good;
}

/* receive(): read every waiting update packet (the master calls it when the socket is
   readable); returns (accepted, rejected). */
static PyObject *mod_receive(PyObject *mod, PyObject *unused) {
    if (!shm || udp_fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "use() and replicate() first");
        return NULL;
    }
    long good = 0, bad = 0;
    for (int i = 0; i < 1024; i++) { /* bounded: the master has other work */
        uint8_t pkt[PACKET_MAX + 1];
        ssize_t n = recv(udp_fd, pkt, sizeof pkt, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (accept_update(pkt, n))
            good++;
        else
            bad++;
    }
    __atomic_fetch_add(&shm->received, (uint64_t)good, __ATOMIC_RELAXED);
    __atomic_fetch_add(&shm->rejected, (uint64_t)bad, __ATOMIC_RELAXED);
    return Py_BuildValue("(ll)", good, bad);
}

/* export(eventfd or -1): from now on this process's new sessions wait in the outbox, and each
   one adds 1 to the eventfd. */
static PyObject *mod_export(PyObject *mod, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    outbox_fd = fd < 0 || fd > INT32_MAX ? -1 : (int)fd;
    outbox_n = 0;
    Py_RETURN_NONE;
}

/* exported(): ([(id, der, expires), ...], dropped): the outbox, emptied. */
static PyObject *mod_exported(PyObject *mod, PyObject *unused) {
    PyObject *list = PyList_New(outbox_n);
    for (int i = 0; list && i < outbox_n; i++) {
        Outgoing *o = &outbox[i];
        PyObject *t = Py_BuildValue("(y#y#L)", o->id, (Py_ssize_t)o->idlen, o->data,
                                    (Py_ssize_t)o->len, (long long)o->expires);
        if (!t)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, t);
    }
    if (!list)
        return NULL;
    PyObject *r = Py_BuildValue("(NK)", list, (unsigned long long)outbox_dropped);
    outbox_n = 0;
    outbox_dropped = 0;
    return r;
}

/* add(id, der): a session from the session store into the cache, if it parses, is the one
   asked for and is still live; whether it was stored. */
static PyObject *mod_add(PyObject *mod, PyObject *args) {
    const uint8_t *want, *der;
    Py_ssize_t wantlen, len;
    if (!PyArg_ParseTuple(args, "y#y#:add", &want, &wantlen, &der, &len))
        return NULL;
    if (!shm || len <= 0 || len > DATA_MAX)
        Py_RETURN_FALSE;
    const unsigned char *p = der;
    SSL_SESSION *sess = d2i_SSL_SESSION_(NULL, &p, (long)len);
    if (!sess)
        Py_RETURN_FALSE;
    unsigned int idlen;
    const uint8_t *id = SSL_SESSION_get_id_(sess, &idlen);
    int64_t expires = (int64_t)SSL_SESSION_get_time_(sess) + SSL_SESSION_get_timeout_(sess);
    int good = idlen && idlen == (size_t)wantlen && !memcmp(id, want, idlen) &&
               expires > (int64_t)time(NULL);
    if (good)
        store(id, idlen, der, (int)len, expires);
    SSL_SESSION_free_(sess);
    return PyBool_FromLong(good);
}

/* has(id): whether a live session is cached under id (not counted as a hit or a miss). */
static PyObject *mod_has(PyObject *mod, PyObject *arg) {
    char *id;
    Py_ssize_t idlen;
    if (PyBytes_AsStringAndSize(arg, &id, &idlen) < 0)
        return NULL;
    if (!shm || idlen <= 0 || idlen > ID_MAX || !lock())
        Py_RETURN_FALSE;
    int32_t i = find((uint8_t *)id, (unsigned int)idlen, hash_id((uint8_t *)id, (unsigned)idlen));
    int live = i >= 0 && slots[i].expires > (int64_t)time(NULL);
    pthread_mutex_unlock(&shm->lock);
    return PyBool_FromLong(live);
}

/* stats(): the cache's counters (shared by all workers) and how many sessions it holds. */
static PyObject *mod_stats(PyObject *mod, PyObject *unused) {
    if (!shm)
        Py_RETURN_NONE;
    if (!lock()) {
        PyErr_SetString(PyExc_OSError, "cannot lock the session cache");
        return NULL;
    }
    PyObject *r = Py_BuildValue(
        "{sIsIsKsKsKsKsKsKsKsK}", "size", shm->nslots, "sessions", shm->held, "stored",
        shm->stored, "hits", shm->hits, "misses", shm->misses, "evicted", shm->evicted,
        "too_big", shm->too_big, "resets", shm->resets, "received", shm->received, "rejected",
        shm->rejected);
    pthread_mutex_unlock(&shm->lock);
    return r;
}

static PyMethodDef methods[] = {
    {"init", mod_init, METH_O, "init({name: address}): the OpenSSL functions, from stud.sslext"},
    {"use", mod_use, METH_O, "use(cache): store sessions in this Cache from now on"},
    {"attach", mod_attach, METH_O, "attach(SSL_CTX address): use the cache for its sessions"},
    {"replicate", mod_replicate, METH_VARARGS, "replicate(fd, key, peers): UDP updates"},
    {"receive", mod_receive, METH_NOARGS, "receive(): peers' updates into the cache"},
    {"stats", mod_stats, METH_NOARGS, "stats(): counters, or None without a cache"},
    {"export", mod_export, METH_O, "export(eventfd): new sessions to the outbox"},
    {"exported", mod_exported, METH_NOARGS, "exported(): ([(id, der, expires)], dropped)"},
    {"add", mod_add, METH_VARARGS, "add(id, der): a checked session from elsewhere"},
    {"has", mod_has, METH_O, "has(id): whether a live session is cached under id"},
    {NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "stud._sesscache",
                                    "The shared TLS session cache (-C) and its replication.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__sesscache(void) {
    if (PyType_Ready(&CacheType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m && PyModule_AddObjectRef(m, "Cache", (PyObject *)&CacheType) < 0)
        Py_CLEAR(m);
    return m;
}
