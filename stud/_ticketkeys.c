/* stud._ticketkeys: OpenSSL's session-ticket key callback, so that tickets are sealed with
   the keys stud chooses (key files, a seed, or its own rotation), the same in every worker of
   every generation at the same moment, and counted per key.

   One anonymous MAP_SHARED mapping, made by the master before it forks (init()), holds the
   ring (the keys in use, one of them encrypting) and the counters, under a process-shared
   robust mutex. The master replaces the ring (set()) and each worker sees the change at its
   next handshake: no message to pass, no worker left behind. Only the master writes keys,
   and it writes them whole under the lock, so a worker that dies holding it (it only copies
   a key and counts) leaves nothing half done: the next locker just makes the lock usable. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_openssl.h"
#include "_shm.h"
#include <stdint.h>
#include <string.h>

#define NAME_LEN 16
#define KEY_MAX 32    /* AES-256 and its HMAC key; 16 for AES-128 */
#define RING_MAX 16   /* stud.ticketkeys.MAX_KEYS */
#define COUNTED_MAX 64 /* keys counted: those in the ring and those that left it lately */
#define TICKET_OK 1    /* the callback's answers (SSL_CTX_set_tlsext_ticket_key_cb(3)) */
#define TICKET_RENEW 2
#define TICKET_NONE 0
#define TICKET_ERROR -1

enum { ISSUED, DECRYPTED_CURRENT, DECRYPTED_OLDER, DECRYPTED_NEWER, RENEWED, NEVENTS };
static const char *const EVENTS[NEVENTS] = {"issued", "decrypted_current", "decrypted_older",
                                            "decrypted_newer", "renewed"};

typedef struct {
    uint8_t name[NAME_LEN], aes[KEY_MAX], hmac[KEY_MAX];
    uint8_t len; /* of aes and of hmac: 16 or 32 */
    int32_t counted; /* its entry in Shm.counted */
} Key;

typedef struct {
    uint8_t name[NAME_LEN];
    uint64_t last_in; /* the ring version it was last part of: the oldest entry is reused */
    uint64_t n[NEVENTS];
} Counted;

typedef struct {
    pthread_mutex_t lock;
    uint32_t nkeys, encrypt; /* ring[encrypt] seals new tickets; older keys follow it */
    uint64_t version;
    uint64_t unknown; /* tickets under a name not in the ring */
    uint32_t ncounted;
    Key ring[RING_MAX];
    Counted counted[COUNTED_MAX];
} Shm;

static Shm *shm; /* inherited across fork: one ring for the master and all its workers */
/* The ciphers, fetched once: a legacy EVP_aes_*() object makes every EVP_*Init_ex fetch its
   implementation again from the provider store, on each ticket. */
static const EVP_CIPHER *aes128, *aes256;

static int lock(void) {
    int r = pthread_mutex_lock(&shm->lock);
    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(&shm->lock);
        r = 0;
    }
    return r == 0;
}

static void unlock(void) { pthread_mutex_unlock(&shm->lock); }

static int find(const uint8_t *name) {
    for (uint32_t i = 0; i < shm->nkeys; i++)
        if (!memcmp(shm->ring[i].name, name, NAME_LEN))
            return (int)i;
    return -1;
}

/* Under the lock: copy the key that seals (enc) or opens a ticket named ``name``, counting
   the event. -1: none (no ring, or a name not in it). Otherwise its position in the ring. */
static int take(const uint8_t *name, int enc, Key *out) {
    int i = enc ? (shm->nkeys ? (int)shm->encrypt : -1) : find(name);
    if (i < 0) {
        shm->unknown += !enc;
        return -1;
    }
    *out = shm->ring[i];
    uint64_t *n = shm->counted[out->counted].n;
    if (enc)
        n[ISSUED]++;
    else if (i == (int)shm->encrypt)
        n[DECRYPTED_CURRENT]++;
    else if (i > (int)shm->encrypt) {
        n[DECRYPTED_OLDER]++;
        n[RENEWED]++;
    } else
        n[DECRYPTED_NEWER]++;
    return i;
}

static int set_mac_key(EVP_MAC_CTX *hctx, Key *k) {
    static char digest[] = "SHA256", key_param[] = "key", digest_param[] = "digest";
    OSSL_PARAM params[] = {
        {key_param, OSSL_PARAM_OCTET_STRING, k->hmac, k->len, OSSL_PARAM_UNMODIFIED},
        {digest_param, OSSL_PARAM_UTF8_STRING, digest, sizeof digest - 1, OSSL_PARAM_UNMODIFIED},
        {NULL, 0, NULL, 0, 0},
    };
    return EVP_MAC_CTX_set_params_(hctx, params);
}

static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc) {
    Key k;
    if (!shm || !lock())
        return TICKET_NONE;
    int i = take(name, enc, &k);
    int older = i > (int)shm->encrypt;
    unlock();
    if (i < 0)
        return TICKET_NONE;
    const EVP_CIPHER *cipher = k.len == KEY_MAX ? aes256 : aes128;
    int ok;
    if (enc) {
        memcpy(name, k.name, NAME_LEN);
        ok = RAND_bytes_(iv, EVP_MAX_IV_LENGTH) == 1 &&
             EVP_EncryptInit_ex_(cctx, cipher, NULL, k.aes, iv) == 1;
    } else
        ok = EVP_DecryptInit_ex_(cctx, cipher, NULL, k.aes, iv) == 1;
    ok = ok && set_mac_key(hctx, &k) == 1;
    explicit_bzero(&k, sizeof k);
    if (!ok)
        return TICKET_ERROR;
    /* Renewed: under an older key (it is retiring), and always in TLS 1.3, where OpenSSL
       sends no new ticket after a resumption unless asked, and clients use each ticket once. */
    return enc || !(older || SSL_version_(ssl) == TLS1_3_VERSION) ? TICKET_OK : TICKET_RENEW;
}

/* The entry that counts for ``name``: its own, a free one, or the one out of the ring longest. */
static int32_t counted_for(const uint8_t *name) {
    int32_t oldest = -1;
    for (uint32_t c = 0; c < shm->ncounted; c++) {
        if (!memcmp(shm->counted[c].name, name, NAME_LEN))
            return (int32_t)c;
        if (oldest < 0 || shm->counted[c].last_in < shm->counted[oldest].last_in)
            oldest = (int32_t)c;
    }
    int32_t c = shm->ncounted < COUNTED_MAX ? (int32_t)shm->ncounted++ : oldest;
    memset(&shm->counted[c], 0, sizeof shm->counted[c]);
    memcpy(shm->counted[c].name, name, NAME_LEN);
    return c;
}

static void install(Key *keys, uint32_t n, uint32_t encrypt) {
    shm->version++;
    explicit_bzero(shm->ring, sizeof shm->ring);
    for (uint32_t i = 0; i < n; i++) {
        keys[i].counted = counted_for(keys[i].name);
        shm->counted[keys[i].counted].last_in = shm->version;
        shm->ring[i] = keys[i];
    }
    shm->nkeys = n;
    shm->encrypt = encrypt;
}

static PyObject *mod_init(PyObject *mod, PyObject *fns) {
    if (openssl_bind(fns) < 0)
        return NULL;
    if (shm)
        Py_RETURN_NONE;
    aes128 = EVP_CIPHER_fetch_(NULL, "AES-128-CBC", NULL);
    aes256 = EVP_CIPHER_fetch_(NULL, "AES-256-CBC", NULL);
    if (!aes128) /* (a provider set-up without them: the legacy objects still work) */
        aes128 = EVP_aes_128_cbc_();
    if (!aes256)
        aes256 = EVP_aes_256_cbc_();
    void *m = shm_map(sizeof(Shm));
    if (!m)
        return NULL;
    shm = m;
    Py_RETURN_NONE;
}

/* attach(SSL_CTX address): its tickets are sealed and opened with the ring's keys. */
static PyObject *mod_attach(PyObject *mod, PyObject *arg) {
    SSL_CTX *ctx = PyLong_AsVoidPtr(arg);
    if (!ctx)
        return PyErr_Occurred() ? NULL : (PyErr_SetString(PyExc_ValueError, "NULL SSL_CTX"), NULL);
    if (!shm) {
        PyErr_SetString(PyExc_RuntimeError, "init() first");
        return NULL;
    }
    if (SSL_CTX_set_tlsext_ticket_key_evp_cb_(ctx, ticket_cb) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "SSL_CTX_set_tlsext_ticket_key_evp_cb failed");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* One key of set()'s list: name + AES + HMAC, 48 or 80 bytes. */
static int key_of(PyObject *item, Key *k) {
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(item, &buf, &len) < 0)
        return -1;
    if (len != NAME_LEN + 2 * 16 && len != NAME_LEN + 2 * KEY_MAX) {
        PyErr_Format(PyExc_ValueError, "a ticket key is 48 or 80 bytes, not %zd", len);
        return -1;
    }
    k->len = (uint8_t)((len - NAME_LEN) / 2);
    memcpy(k->name, buf, NAME_LEN);
    memcpy(k->aes, buf + NAME_LEN, k->len);
    memcpy(k->hmac, buf + NAME_LEN + k->len, k->len);
    return 0;
}

/* set([name+aes+hmac, ...], encrypt): the ring from now on, in every process. */
static PyObject *mod_set(PyObject *mod, PyObject *args) {
    PyObject *list;
    unsigned int encrypt;
    if (!PyArg_ParseTuple(args, "O!I:set", &PyList_Type, &list, &encrypt))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (!shm || n < 1 || n > RING_MAX || encrypt >= (unsigned int)n) {
        PyErr_Format(PyExc_ValueError, "set(): init() first; 1 to %d keys, one encrypting",
                     RING_MAX);
        return NULL;
    }
    Key keys[RING_MAX];
    int bad = 0;
    for (Py_ssize_t i = 0; i < n && !bad; i++)
        bad = key_of(PyList_GET_ITEM(list, i), &keys[i]) < 0;
    if (!bad && lock()) {
        install(keys, (uint32_t)n, encrypt);
        unlock();
    } else if (!bad)
        bad = (PyErr_SetString(PyExc_OSError, "cannot lock the ticket keys"), 1);
    explicit_bzero(keys, sizeof keys);
    if (bad)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *counted_dict(void) {
    PyObject *d = PyDict_New();
    for (uint32_t c = 0; d && c < shm->ncounted; c++) {
        Counted *e = &shm->counted[c];
        PyObject *events = PyDict_New(), *name = PyBytes_FromStringAndSize((char *)e->name, NAME_LEN);
        for (int ev = 0; events && name && ev < NEVENTS; ev++) {
            PyObject *v = PyLong_FromUnsignedLongLong(e->n[ev]);
            if (!v || PyDict_SetItemString(events, EVENTS[ev], v) < 0)
                Py_CLEAR(events);
            Py_XDECREF(v);
        }
        if (!events || !name || PyDict_SetItem(d, name, events) < 0)
            Py_CLEAR(d);
        Py_XDECREF(events);
        Py_XDECREF(name);
    }
    return d;
}

/* stats(): {"unknown": n, "ring": [name, ...], "encrypt": i, "keys": {name: {event: n}}} */
static PyObject *mod_stats(PyObject *mod, PyObject *unused) {
    if (!shm)
        Py_RETURN_NONE;
    if (!lock())
        return PyErr_SetString(PyExc_OSError, "cannot lock the ticket keys"), NULL;
    PyObject *ring = PyList_New(shm->nkeys), *keys = counted_dict(), *r = NULL;
    for (uint32_t i = 0; ring && i < shm->nkeys; i++) {
        PyObject *name = PyBytes_FromStringAndSize((char *)shm->ring[i].name, NAME_LEN);
        if (!name)
            Py_CLEAR(ring);
        else
            PyList_SET_ITEM(ring, i, name);
    }
    if (ring && keys)
        r = Py_BuildValue("{sKsOsIsO}", "unknown", (unsigned long long)shm->unknown, "ring",
                          ring, "encrypt", shm->encrypt, "keys", keys);
    unlock();
    Py_XDECREF(ring);
    Py_XDECREF(keys);
    return r;
}

/* keys(): ([name+aes+hmac, ...], encrypt): the ring itself, for what else it seals (the
   session store's records): secret, as a private key. */
static PyObject *mod_keys(PyObject *mod, PyObject *unused) {
    if (!shm || !lock())
        return Py_BuildValue("([]I)", 0u);
    PyObject *list = PyList_New(shm->nkeys);
    for (uint32_t i = 0; list && i < shm->nkeys; i++) {
        uint8_t buf[NAME_LEN + 2 * KEY_MAX];
        Key *k = &shm->ring[i];
        memcpy(buf, k->name, NAME_LEN);
        memcpy(buf + NAME_LEN, k->aes, k->len);
        memcpy(buf + NAME_LEN + k->len, k->hmac, k->len);
        PyObject *b = PyBytes_FromStringAndSize((char *)buf, NAME_LEN + 2 * k->len);
        explicit_bzero(buf, sizeof buf);
        if (!b)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, b);
    }
    unsigned int encrypt = shm->encrypt;
    unlock();
    return list ? Py_BuildValue("(NI)", list, encrypt) : NULL;
}

static PyMethodDef methods[] = {
    {"init", mod_init, METH_O, "init({name: address}): the OpenSSL functions; the shared ring"},
    {"attach", mod_attach, METH_O, "attach(SSL_CTX address): tickets with the ring's keys"},
    {"set", mod_set, METH_VARARGS, "set(keys, encrypt): the ring, in every process"},
    {"stats", mod_stats, METH_NOARGS, "stats(): the ring's names and the counters per key"},
    {"keys", mod_keys, METH_NOARGS, "keys(): the ring's keys and the encrypting one's index"},
    {NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "stud._ticketkeys",
                                    "The session-ticket keys every worker uses.", -1, methods};

PyMODINIT_FUNC PyInit__ticketkeys(void) { return PyModule_Create(&moddef); }
