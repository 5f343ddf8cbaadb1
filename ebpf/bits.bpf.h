/* Small helpers shared by the BPF programs. */
#ifndef GILSCOPE_BITS_BPF_H
#define GILSCOPE_BITS_BPF_H

#include <bpf/bpf_helpers.h>
#include "gilscope.h"

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

/* x86-64 syscall numbers of the sleeps told apart (arch/x86/entry/syscalls/syscall_64.tbl). */
#define NR_READ 0
#define NR_POLL 7
#define NR_PREAD64 17
#define NR_READV 19
#define NR_SELECT 23
#define NR_NANOSLEEP 35
#define NR_ACCEPT 43
#define NR_RECVFROM 45
#define NR_RECVMSG 47
#define NR_FUTEX 202
#define NR_CLOCK_NANOSLEEP 230
#define NR_EPOLL_WAIT 232
#define NR_PSELECT6 270
#define NR_PPOLL 271
#define NR_EPOLL_PWAIT 281
#define NR_ACCEPT4 288
#define NR_EPOLL_PWAIT2 441

/* enum wait_kind of a sleep in syscall nr (not futex: that one is classified by address). */
static __always_inline __u32 block_kind(long nr)
{
	switch (nr) {
	case NR_EPOLL_WAIT: case NR_EPOLL_PWAIT: case NR_EPOLL_PWAIT2:
	case NR_POLL: case NR_PPOLL: case NR_SELECT: case NR_PSELECT6:
		return BLOCK_POLL;
	case NR_READ: case NR_READV: case NR_PREAD64:
	case NR_RECVFROM: case NR_RECVMSG: case NR_ACCEPT: case NR_ACCEPT4:
		return BLOCK_READ;
	case NR_NANOSLEEP: case NR_CLOCK_NANOSLEEP:
		return BLOCK_SLEEP;
	}
	return BLOCK_OTHER;
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

/* Counts one failed insert in slot `slot` (enum map_full_slot) of the u64
 * array `full`. Called on failure branches only: the hot path pays nothing. */
static __always_inline void count_full(void *full, __u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(full, &slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* lookup_or_init that counts in slot `slot` of `full` when the insert failed
 * (the map is full): the found-entry path is the same single lookup. */
static __always_inline void *lookup_or_count(void *map, const void *key, const void *zero,
					     void *full, __u32 slot)
{
	void *val = lookup_or_init(map, key, zero);
	if (!val)
		count_full(full, slot);
	return val;
}

/* Remembers a GIL holder of a take wait once, in the first free slot of
 * `holders` (GILSCOPE_EPISODE_HOLDERS long; 0 = free). */
static __always_inline void note_holder(__u64 *holders, __u64 holder)
{
	if (!holder)
		return;
#pragma unroll
	for (int i = 0; i < GILSCOPE_EPISODE_HOLDERS; i++) {
		if (holders[i] == holder)
			return;
		if (!holders[i]) {
			holders[i] = holder;
			return;
		}
	}
}

/* The part of a merged take wait an episode record carries. */
struct episode_wait {
	__u64 start_ns;
	__u64 gil_addr;
	const __u64 *holders;  /* GILSCOPE_EPISODE_HOLDERS long */
	__u32 slices;
	__u32 retake;
};

/* A long take wait ended at `end`: one record for user space in `ringbuf`; a full
 * buffer is counted in slot 0 of the `lost` array instead. */
static __always_inline void emit_episode_to(void *ringbuf, void *lost, __u32 tgid, __u32 tid,
					    const struct episode_wait *w, __u64 end)
{
	struct gil_episode *e = bpf_ringbuf_reserve(ringbuf, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(lost, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
		return;
	}
	e->tgid = tgid;
	e->tid = tid;
	e->start_ns = w->start_ns;
	e->end_ns = end;
	e->gil_addr = w->gil_addr;
#pragma unroll
	for (int i = 0; i < GILSCOPE_EPISODE_HOLDERS; i++)
		e->holders[i] = w->holders[i];
	e->slices = w->slices;
	e->retake = w->retake;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

#endif
