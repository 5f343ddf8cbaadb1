/* Small helpers every BPF program uses (the GIL wait probes' own are in
 * gil_shared.bpf.h). */
#ifndef GILSCOPE_BITS_BPF_H
#define GILSCOPE_BITS_BPF_H

#include <bpf/bpf_helpers.h>
#include "gilscope.h"  /* GILSCOPE_HIST_SLOTS */

/* Index of the highest set bit: log2 bucket of a duration in ns. */
static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r = 0;
#pragma unroll
	for (int shift = 32; shift > 0; shift >>= 1) {
		if (v >> shift) {
			v >>= shift;
			r += shift;
		}
	}
	return r < GILSCOPE_HIST_SLOTS ? r : GILSCOPE_HIST_SLOTS - 1;
}

/* Look up key, inserting a zeroed value first when absent. */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *zero)
{
	void *val = bpf_map_lookup_elem(map, key);
	if (val)
		return val;
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

#endif
