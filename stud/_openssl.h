/* The OpenSSL ABI stud relies on, in one place: every constant and every function (with its
   prototype) that stud's C modules and stud.sslext use. No OpenSSL header is included
   anywhere: the functions are those of the libssl CPython's _ssl module already loaded, found
   by stud.sslext, which reads this very file (stud/opensslabi.py parses it) for its ctypes
   prototypes and constants, so C and Python cannot disagree.

   Only `#define NAME number` lines and the X(return type, name, (parameter types)) lists
   below are read by the parser: keep to that form (callback types through a typedef). */
#ifndef STUD_OPENSSL_H
#define STUD_OPENSSL_H
#include <Python.h> /* (after PY_SSIZE_T_CLEAN, in the module) */
#include <stddef.h>
#include <stdint.h>

/* The major version these values and prototypes were written for; sslext refuses another. */
#define STUD_OPENSSL_MAJOR 3

/* SSL_get_error() */
#define SSL_ERROR_SSL 1
#define SSL_ERROR_WANT_READ 2
#define SSL_ERROR_WANT_WRITE 3
#define SSL_ERROR_SYSCALL 5
#define SSL_ERROR_ZERO_RETURN 6

/* SSL_ctrl() / SSL_CTX_ctrl() / SSL_CTX_callback_ctrl() commands */
#define SSL_CTRL_MODE 33
#define SSL_CTRL_SET_READ_AHEAD 41
#define SSL_CTRL_SET_SESS_CACHE_MODE 44
#define SSL_CTRL_SET_TLSEXT_SERVERNAME_CB 53
#define SSL_CTRL_GET_TLSEXT_TICKET_KEYS 58
#define SSL_CTRL_SET_TLSEXT_TICKET_KEYS 59
#define SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB 63
#define SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP 71
#define SSL_CTRL_SET_GROUPS_LIST 92
#define SSL_CTRL_GET_TLSEXT_STATUS_REQ_TYPE 127

/* SSL_CTRL_MODE bits (the two _ssl sets on its own connections) */
#define SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER 0x2
#define SSL_MODE_AUTO_RETRY 0x4

/* SSL_CTRL_SET_SESS_CACHE_MODE bits */
#define SSL_SESS_CACHE_SERVER 0x2
#define SSL_SESS_CACHE_NO_AUTO_CLEAR 0x80
#define SSL_SESS_CACHE_NO_INTERNAL_LOOKUP 0x100
#define SSL_SESS_CACHE_NO_INTERNAL_STORE 0x200

/* SSL_get_shutdown() / SSL_set_shutdown() flags */
#define SSL_SENT_SHUTDOWN 1
#define SSL_RECEIVED_SHUTDOWN 2

/* Options (a uint64_t in OpenSSL 3) */
#define SSL_OP_NO_TICKET 0x4000

/* The servername and status (OCSP stapling) callbacks */
#define TLSEXT_NAMETYPE_host_name 0
#define TLSEXT_STATUSTYPE_ocsp 1 /* SSL_get_tlsext_status_type() when a client asks */
#define SSL_TLSEXT_ERR_OK 0
#define SSL_TLSEXT_ERR_ALERT_FATAL 2
#define SSL_TLSEXT_ERR_NOACK 3
#define SSL_AD_INTERNAL_ERROR 80

/* Ex data: index 0 of an SSL is its "app data", where _ssl keeps its _SSLSocket (and a
   Conn's own SSL* its Conn) */
#define SSL_APP_DATA_INDEX 0

#define TLS1_3_VERSION 0x0304
#define SSL_MAX_SSL_SESSION_ID_LENGTH 32
#define SSL_TICKET_KEYS_LENGTH 80 /* 16 name + 32 HMAC + 32 AES, for the ticket key ctrls */
#define OPENSSL_VERSION 0         /* OpenSSL_version()'s argument for the version text */
#define EVP_MAX_IV_LENGTH 16      /* the IV buffer a ticket key callback fills */

/* OSSL_PARAM: its layout and type codes are part of OpenSSL 3's ABI (openssl/core.h) */
#define OSSL_PARAM_UTF8_STRING 4
#define OSSL_PARAM_OCTET_STRING 5
#define OSSL_PARAM_UNMODIFIED 0xFFFFFFFFFFFFFFFF
#define ENGINE_METHOD_ALL 0xFFFF

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_session_st SSL_SESSION;
typedef struct ssl_cipher_st SSL_CIPHER;
typedef struct evp_md_st EVP_MD;
typedef struct engine_st ENGINE;
typedef struct x509_st X509;
typedef struct evp_cipher_st EVP_CIPHER;
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_mac_ctx_st EVP_MAC_CTX;
typedef struct ossl_param_st {
    const char *key;
    unsigned int data_type;
    void *data;
    size_t data_size;
    size_t return_size;
} OSSL_PARAM;
typedef struct x509_crl_st X509_CRL;
typedef struct x509_store_st X509_STORE;
typedef struct X509_VERIFY_PARAM_st X509_VERIFY_PARAM;
typedef struct x509_store_ctx_st X509_STORE_CTX;
typedef int (*new_session_cb)(SSL *, SSL_SESSION *);
typedef SSL_SESSION *(*get_session_cb)(SSL *, const unsigned char *, int, int *);
typedef void (*remove_session_cb)(SSL_CTX *, SSL_SESSION *);
typedef void (*generic_cb)(void);
typedef int (*status_cb)(SSL *, void *); /* sslext's, set through SSL_CTX_callback_ctrl */
typedef int (*verify_cb)(int, X509_STORE_CTX *); /* always NULL: OpenSSL's own verdict */
typedef int (*ticket_key_cb)(SSL *, unsigned char *, unsigned char *, EVP_CIPHER_CTX *,
                             EVP_MAC_CTX *, int);

/* libssl: X(return type, name, (parameter types)) */
#define STUD_OPENSSL_LIBSSL(X)                                                                  \
    X(int, SSL_read, (SSL *, void *, int))                                                      \
    X(int, SSL_has_pending, (const SSL *))                                                      \
    X(int, SSL_write, (SSL *, const void *, int))                                               \
    X(int, SSL_get_error, (const SSL *, int))                                                   \
    X(int, SSL_shutdown, (SSL *))                                                               \
    X(int, SSL_get_shutdown, (const SSL *))                                                     \
    X(void, SSL_set_shutdown, (SSL *, int))                                                     \
    X(int, SSL_do_handshake, (SSL *))                                                           \
    X(SSL_CTX *, SSL_get_SSL_CTX, (const SSL *))                                                \
    X(const char *, SSL_get_servername, (const SSL *, int))                                     \
    X(const char *, SSL_get_version, (const SSL *))                                             \
    X(int, SSL_version, (const SSL *))                                                          \
    X(const SSL_CIPHER *, SSL_get_current_cipher, (const SSL *))                                \
    X(const char *, SSL_CIPHER_get_name, (const SSL_CIPHER *))                                  \
    X(void, SSL_get0_alpn_selected, (const SSL *, const unsigned char **, unsigned int *))      \
    X(int, SSL_session_reused, (const SSL *))                                                   \
    X(uint64_t, SSL_get_options, (const SSL *))                                                 \
    X(SSL *, SSL_new, (SSL_CTX *))                                                              \
    X(void, SSL_free, (SSL *))                                                                  \
    X(int, SSL_set_fd, (SSL *, int))                                                            \
    X(void, SSL_set_accept_state, (SSL *))                                                      \
    X(long, SSL_ctrl, (SSL *, int, long, void *))                                               \
    X(SSL_CTX *, SSL_set_SSL_CTX, (SSL *, SSL_CTX *))                                           \
    X(int, SSL_set_ex_data, (SSL *, int, void *))                                               \
    X(void *, SSL_get_ex_data, (const SSL *, int))                                              \
    X(uint64_t, SSL_CTX_get_options, (const SSL_CTX *))                                         \
    X(long, SSL_CTX_ctrl, (SSL_CTX *, int, long, void *))                                       \
    X(long, SSL_CTX_callback_ctrl, (SSL_CTX *, int, generic_cb))                                \
    X(int, SSL_CTX_set_ciphersuites, (SSL_CTX *, const char *))                                 \
    X(void, SSL_CTX_sess_set_new_cb, (SSL_CTX *, new_session_cb))                               \
    X(void, SSL_CTX_sess_set_get_cb, (SSL_CTX *, get_session_cb))                               \
    X(void, SSL_CTX_sess_set_remove_cb, (SSL_CTX *, remove_session_cb))                         \
    X(int, i2d_SSL_SESSION, (const SSL_SESSION *, unsigned char **))                            \
    X(SSL_SESSION *, d2i_SSL_SESSION, (SSL_SESSION **, const unsigned char **, long))           \
    X(const unsigned char *, SSL_SESSION_get_id, (const SSL_SESSION *, unsigned int *))         \
    X(long, SSL_SESSION_get_time, (const SSL_SESSION *))                                        \
    X(long, SSL_SESSION_get_timeout, (const SSL_SESSION *))                                     \
    X(void, SSL_SESSION_free, (SSL_SESSION *))                                                  \
    X(X509 *, SSL_get_certificate, (const SSL *))                                              \
    X(int, SSL_CTX_add_client_CA, (SSL_CTX *, X509 *))                                          \
    X(void, SSL_CTX_set_cert_store, (SSL_CTX *, X509_STORE *))                                  \
    X(void, SSL_CTX_set_verify_depth, (SSL_CTX *, int))                                         \
    X(int, SSL_CTX_set_session_id_context, (SSL_CTX *, const unsigned char *, unsigned int))    \
    X(int, SSL_CTX_get_verify_mode, (const SSL_CTX *))                                          \
    X(X509_VERIFY_PARAM *, SSL_CTX_get0_param, (SSL_CTX *))                                     \
    X(X509 *, SSL_get0_peer_certificate, (const SSL *))                                         \
    X(long, SSL_get_verify_result, (const SSL *))                                               \
    X(void, SSL_set_verify, (SSL *, int, verify_cb))                                            \
    X(X509_VERIFY_PARAM *, SSL_get0_param, (SSL *))                                             \
    X(SSL_SESSION *, SSL_get_session, (const SSL *))                                            \
    X(const unsigned char *, SSL_SESSION_get0_id_context, (const SSL_SESSION *, unsigned int *)) \
    X(int, SSL_CTX_set_tlsext_ticket_key_evp_cb, (SSL_CTX *, ticket_key_cb))                    \
    X(long, SSL_CTX_set_timeout, (SSL_CTX *, long))

/* libcrypto */
#define STUD_OPENSSL_LIBCRYPTO(X)                                                               \
    X(unsigned long, ERR_get_error, (void))                                                     \
    X(void, ERR_clear_error, (void))                                                            \
    X(void, ERR_error_string_n, (unsigned long, char *, size_t))                                \
    X(const char *, OpenSSL_version, (int))                                                     \
    X(unsigned char *, HMAC,                                                                    \
      (const EVP_MD *, const void *, int, const unsigned char *, size_t, unsigned char *,       \
       unsigned int *))                                                                         \
    X(const EVP_MD *, EVP_sha1, (void))                                                         \
    X(int, CRYPTO_memcmp, (const void *, const void *, size_t))                                 \
    X(void *, CRYPTO_malloc, (size_t, const char *, int))                                       \
    X(void, CRYPTO_free, (void *, const char *, int))                                           \
    X(int, i2d_X509, (const X509 *, unsigned char **))                                          \
    X(X509 *, d2i_X509, (X509 **, const unsigned char **, long))                                \
    X(void, X509_free, (X509 *))                                                                \
    X(X509_CRL *, d2i_X509_CRL, (X509_CRL **, const unsigned char **, long))                    \
    X(void, X509_CRL_free, (X509_CRL *))                                                        \
    X(X509_STORE *, X509_STORE_new, (void))                                                     \
    X(void, X509_STORE_free, (X509_STORE *))                                                    \
    X(int, X509_STORE_add_cert, (X509_STORE *, X509 *))                                         \
    X(int, X509_STORE_add_crl, (X509_STORE *, X509_CRL *))                                      \
    X(int, X509_VERIFY_PARAM_set1, (X509_VERIFY_PARAM *, const X509_VERIFY_PARAM *))            \
    X(const char *, X509_verify_cert_error_string, (long))                                      \
    X(EVP_CIPHER *, EVP_CIPHER_fetch, (OSSL_LIB_CTX *, const char *, const char *))             \
    X(const EVP_CIPHER *, EVP_aes_128_cbc, (void))                                              \
    X(const EVP_CIPHER *, EVP_aes_256_cbc, (void))                                              \
    X(int, EVP_EncryptInit_ex,                                                                  \
      (EVP_CIPHER_CTX *, const EVP_CIPHER *, ENGINE *, const unsigned char *,                   \
       const unsigned char *))                                                                  \
    X(int, EVP_DecryptInit_ex,                                                                  \
      (EVP_CIPHER_CTX *, const EVP_CIPHER *, ENGINE *, const unsigned char *,                   \
       const unsigned char *))                                                                  \
    X(int, EVP_MAC_CTX_set_params, (EVP_MAC_CTX *, const OSSL_PARAM *))                         \
    X(int, RAND_bytes, (unsigned char *, int))

/* libcrypto, only where OpenSSL was built with engines (-e/--ssl-engine); Python only */
#define STUD_OPENSSL_ENGINE(X)                                                                  \
    X(ENGINE *, ENGINE_by_id, (const char *))                                                   \
    X(int, ENGINE_init, (ENGINE *))                                                             \
    X(int, ENGINE_set_default, (ENGINE *, unsigned int))                                        \
    X(int, ENGINE_finish, (ENGINE *))                                                           \
    X(int, ENGINE_free, (ENGINE *))                                                             \
    X(int, ENGINE_register_all_complete, (void))

/* For a C module: a pointer `NAME_` for each function, and openssl_bind(), which fills them
   all from stud.sslext.addresses() (all or nothing). */
#define STUD_DECLARE(ret, name, params) static ret(*name##_) params __attribute__((unused));
STUD_OPENSSL_LIBSSL(STUD_DECLARE)
STUD_OPENSSL_LIBCRYPTO(STUD_DECLARE)
#undef STUD_DECLARE

#define STUD_WANT(ret, name, params) {#name, (void **)&name##_},
static const struct {
    const char *name;
    void **slot;
} openssl_wanted[] = {STUD_OPENSSL_LIBSSL(STUD_WANT) STUD_OPENSSL_LIBCRYPTO(STUD_WANT)};
#undef STUD_WANT
#define OPENSSL_NWANTED (sizeof openssl_wanted / sizeof openssl_wanted[0])

/* openssl_bind({"SSL_read": address, ...}): every pointer above, all or nothing: 0, or -1
   with a Python error and no pointer changed. */
static int openssl_bind(PyObject *fns) {
    void *got[OPENSSL_NWANTED];
    for (size_t i = 0; i < OPENSSL_NWANTED; i++) {
        PyObject *v = PyMapping_GetItemString(fns, openssl_wanted[i].name);
        if (!v)
            return -1;
        got[i] = PyLong_AsVoidPtr(v);
        Py_DECREF(v);
        if (!got[i]) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "no address for %s", openssl_wanted[i].name);
            return -1;
        }
    }
    for (size_t i = 0; i < OPENSSL_NWANTED; i++)
        *openssl_wanted[i].slot = got[i];
    return 0;
}

#endif
