/* Shared by stud's compiled modules: OpenSSL function pointers from the {name: address} dict
   that stud.sslext builds (the libssl CPython's _ssl uses; the modules link no OpenSSL). */
#ifndef STUD_ADDRESSES_H
#define STUD_ADDRESSES_H
#include <Python.h>

typedef struct {
    const char *name;
    void **slot;
} Wanted;

/* All or nothing: 0, or -1 with a Python error and no slot changed. */
static int load_addresses(PyObject *fns, const Wanted *want, size_t n) {
    void *got[64];
    if (n > sizeof got / sizeof got[0]) {
        PyErr_SetString(PyExc_ValueError, "too many functions");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *v = PyMapping_GetItemString(fns, want[i].name);
        if (!v)
            return -1;
        got[i] = PyLong_AsVoidPtr(v);
        Py_DECREF(v);
        if (!got[i]) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "no address for %s", want[i].name);
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++)
        *want[i].slot = got[i];
    return 0;
}

#endif
