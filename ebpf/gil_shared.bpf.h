/* Helpers the two GIL wait probes share (gil_wait.bpf.c, gil_condwait.bpf.c):
 * map-full counting, episode holders and episode records. */
#ifndef GILSCOPE_GIL_SHARED_BPF_H
#define GILSCOPE_GIL_SHARED_BPF_H

#include "bits.bpf.h"
#include "gil_shared.h"

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

/* Admits one more of what process `tgid` has a share of (a per-thread map's
 * entries, episode records): `made` (a u32 per tgid, written only here)
 * counts what the process was given, and `limit` is its share, which only the
 * agent writes and raises (struct gil_target / condwait_target: thread_limit,
 * episode_limit). The counter to give back if the insert then fails; NULL
 * when the process is over its share. */
static __always_inline __u32 *admit_one(void *made, __u32 tgid, __u32 limit)
{
	__u32 none = 0;
	__u32 *n = lookup_or_init(made, &tgid, &none);
	if (!n || *n >= limit)
		return 0;
	__sync_fetch_and_add(n, 1);
	return n;
}

/* The counters of thread `tid` of process `tgid` in the per-thread map `map`,
 * whose values begin with `__u32 tgid`; created from `zero`. NULL, counted in
 * slot FULL_THREAD_WAITS of `full`, when the map is full or the process holds
 * its share of it already (admit_one): one process cannot take every
 * tenant's room. A tid the kernel gave to another process since its entry was
 * made (the old thread exited, its entry not yet collected by the agent)
 * starts again from zero, admitted as the new process's: counters never cross
 * processes. Slow path only (a thread going to sleep or waking). */
static __always_inline void *thread_counters(void *map, const __u32 *tid, __u32 tgid,
					     const void *zero, void *made, __u32 limit,
					     void *full)
{
	__u32 *owner = bpf_map_lookup_elem(map, tid);
	if (owner && *owner == tgid)
		return owner;
	__u32 *admitted = admit_one(made, tgid, limit);
	if (!admitted) {
		count_full(full, FULL_THREAD_WAITS);
		return 0;
	}
	if (owner)
		/* Another process's entry: this thread starts from zero. */
		owner = bpf_map_update_elem(map, tid, zero, BPF_EXIST) ? 0 :
									 bpf_map_lookup_elem(map, tid);
	else
		owner = lookup_or_init(map, tid, zero);
	if (!owner) {
		__sync_fetch_and_add(admitted, -1);
		count_full(full, FULL_THREAD_WAITS);
		return 0;
	}
	*owner = tgid;
	return owner;
}

/* The blocked_by entry of `bk`, created from zero; `pairs` counts the entries
 * the waiter created (its thread counters' blocked_pairs). Past
 * GILSCOPE_HOLDERS_PER_WAITER the wait goes to holder 0 (unknown), whose entry
 * is still made once. NULL when the map is full (counted in `full`). */
static __always_inline struct blocked_val *blocked_entry(void *map, void *full, __u32 *pairs,
							 struct blocked_key *bk)
{
	struct blocked_val *b = bpf_map_lookup_elem(map, bk);
	if (b)
		return b;
	if (*pairs >= GILSCOPE_HOLDERS_PER_WAITER) {
		bk->holder_tstate = 0;
		b = bpf_map_lookup_elem(map, bk);
		if (b)
			return b;
	}
	struct blocked_val zero = {};
	b = lookup_or_count(map, bk, &zero, full, FULL_BLOCKED_BY);
	if (b)
		(*pairs)++;
	return b;
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
	__u64 holder_stack;
};

/* A long take wait ended at `end`: one record for user space in `ringbuf`,
 * within the process's share of it (`made` against `limit`, admit_one: one
 * process with many long waits cannot fill the ring for every tenant between
 * two drains). A full buffer or a spent share is counted in slot 0 of the
 * `lost` array instead. */
static __always_inline void emit_episode_to(void *ringbuf, void *lost, void *made, __u32 limit,
					    __u32 tgid, __u32 tid, const struct episode_wait *w,
					    __u64 end)
{
	__u32 zero = 0;
	__u32 *admitted = admit_one(made, tgid, limit);
	struct gil_episode *e = admitted ? bpf_ringbuf_reserve(ringbuf, sizeof(*e), 0) : 0;
	if (!e) {
		if (admitted)
			__sync_fetch_and_add(admitted, -1);
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
	e->holder_stack = w->holder_stack;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

#endif
