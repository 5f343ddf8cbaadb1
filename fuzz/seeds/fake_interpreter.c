/* A tiny stand-in for libpython, built by seed.sh into the committed ELF seeds
 * of the elf_inspect target: it carries every symbol gilscope looks for
 * (_PyRuntime with a 3.13-style debug-offsets block, Py_Version, take_gil
 * waiting through pthread_cond_timedwait's PLT stub, drop_gil, the parking lot)
 * so the fuzzer starts from inputs that reach the deep paths in a few KiB. */
#include <pthread.h>
#include <time.h>

#ifndef HEX
#define HEX 0x030d00f0
#endif
#define W(i) (0x10ULL * (i))

struct runtime {
    char cookie[8];
    unsigned long long words[81];
};
struct runtime _PyRuntime = {
    "xdebugpy",
    {HEX, 0, W(3), W(4), W(5), W(6), W(7), W(8), W(9), W(10), W(11), W(12), W(13), W(14),
     W(15), W(16), W(17), W(18), W(19), W(20), W(21), W(22), W(23), W(24), W(25), W(26),
     W(27), W(28), W(29), W(30), W(31), W(32), W(33), W(34), W(35), W(36), W(37), W(38),
     W(39), W(40), W(41), W(42), W(43), W(44), W(45), W(46), W(47), W(48), W(49), W(50),
     W(51), W(52), W(53), W(54), W(55), W(56), W(57), W(58), W(59), W(60), W(61), W(62),
     W(63), W(64), W(65), W(66), W(67), W(68), W(69), W(70), W(71), W(72), W(73), W(74),
     W(75), W(76), W(77), W(78), W(79), W(80), W(81)}};
const unsigned long Py_Version = HEX;
const char *py_version_literal = "3.13.0";

static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int locked;

__attribute__((noinline)) static void take_gil(void) {
    struct timespec ts = {0, 5000000};
    pthread_mutex_lock(&mutex);
    while (locked) pthread_cond_timedwait(&cond, &mutex, &ts);
    locked = 1;
    pthread_mutex_unlock(&mutex);
}

__attribute__((noinline)) static void drop_gil(void) {
    pthread_mutex_lock(&mutex);
    locked = 0;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&mutex);
}

static volatile int restored;

/* Not a tail call: the finder takes function starts from direct calls. */
void PyEval_RestoreThread(void *t) { (void)t; take_gil(); restored++; }
void *PyEval_SaveThread(void) { drop_gil(); return 0; }

int _PySemaphore_Wait(void *s, long timeout) {
    /* Untimed: in CPython only take_gil waits through pthread_cond_timedwait. */
    (void)s; (void)timeout;
    pthread_mutex_lock(&mutex);
    int r = pthread_cond_wait(&cond, &mutex);
    pthread_mutex_unlock(&mutex);
    return r;
}

__attribute__((noinline)) int _PyParkingLot_Park(void *addr, void *expected, long size, long timeout) {
    (void)addr; (void)expected; (void)size;
    return _PySemaphore_Wait(addr, timeout);
}

int _PyMutex_LockTimed(void *m, long timeout) { return _PyParkingLot_Park(m, 0, 1, timeout); }
int PyEvent_WaitTimed(void *e, long timeout) { return _PyParkingLot_Park(e, 0, 1, timeout); }
