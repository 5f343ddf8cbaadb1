/* What crosses between lock_park.bpf.c (free-threaded builds) and the agent.
 *
 * Rust mirror: agent/src/probes/layout/lock_park.rs.
 */
#ifndef GILSCOPE_LOCK_PARK_H
#define GILSCOPE_LOCK_PARK_H

#include "gilscope.h"

/* Free-threaded builds: PyMutex contention through the parking-lot slow path
 * (_PyParkingLot_Park, uprobes; key: tid). */
struct lock_waits {
	__u32 tgid;
	__u32 _pad;
	__u64 park_ns;        /* entry to return of _PyParkingLot_Park, lock waits */
	__u64 parks;
	__u64 event_ns;       /* parks called from PyEvent_WaitTimed (join, thread start): not contention */
	__u64 events;
	__u64 park_hist[GILSCOPE_HIST_SLOTS];
};

/* Park time per lock address, to rank hot locks. */
struct lock_key {
	__u32 tgid;
	__u32 _pad;
	__u64 address;        /* the PyMutex (or other parking-lot word) waited on */
};

struct lock_val {
	__u64 park_ns;
	__u64 parks;
};

#endif
