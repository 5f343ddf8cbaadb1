/* What crosses between gil_precise.bpf.c (--precise) and the agent.
 *
 * Rust mirror: agent/src/probes/layout/gil_precise.rs.
 */
#ifndef GILSCOPE_GIL_PRECISE_H
#define GILSCOPE_GIL_PRECISE_H

#include "gilscope.h"

/* Exact take_gil/drop_gil timing from uprobes (--precise; key: tid). */
struct precise_gil {
	__u32 tgid;
	__u32 _pad;
	__u64 take_calls;     /* every take_gil, including the uncontended ones */
	__u64 take_ns;        /* entry to return of take_gil */
	__u64 hold_ns;        /* take_gil return to the next drop_gil entry */
	__u64 holds;
	__u64 take_hist[GILSCOPE_HIST_SLOTS];
};

#endif
