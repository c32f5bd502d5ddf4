/* Memory shared by the master and the workers it forks: an anonymous MAP_SHARED mapping that
   starts with a process-shared robust mutex, so that a process dying with the lock held
   cannot block the others (its next locker gets EOWNERDEAD and decides what to repair). */
#ifndef STUD_SHM_H
#define STUD_SHM_H
#include <Python.h> /* (after PY_SSIZE_T_CLEAN, in the module) */
#include <errno.h>
#include <pthread.h>
#include <sys/mman.h>

/* size zeroed bytes, the first a pthread_mutex_t made ready; NULL with a Python error. */
static void *shm_map(size_t size) {
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError), NULL;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int r = pthread_mutex_init((pthread_mutex_t *)m, &a);
    pthread_mutexattr_destroy(&a);
    if (r) {
        munmap(m, size);
        errno = r;
        return PyErr_SetFromErrno(PyExc_OSError), NULL;
    }
    return m;
}

#endif
