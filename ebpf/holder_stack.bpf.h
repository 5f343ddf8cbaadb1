/* The GIL holder's Python stack, captured by the two GIL wait probes
 * (gil_wait.bpf.c, gil_condwait.bpf.c) when a take wait (slice) begins.
 *
 * Only on the slow path: a waiter found the GIL held and is about to sleep.
 * The waiter runs in the holder's address space, so the holder's frames are
 * read with bpf_probe_read_user from its thread state (gil->last_holder),
 * following the process's struct frame_walk. The holder runs on while it is
 * read: a chain that changes under the walk ends it (STACK_BROKEN), never
 * more than HOLDER_WALK_STEPS reads. Each distinct stack is stored once per
 * process, keyed by its hash; the segment remembers the id, and when it ends
 * its duration is added to the (process, stack) wait.
 *
 * Each program declares its own maps (walks, stacks, waits, the map-full
 * array) and passes them in; the per-CPU scratch stack is declared here.
 */
#ifndef GILSCOPE_HOLDER_STACK_BPF_H
#define GILSCOPE_HOLDER_STACK_BPF_H

#include "gil_shared.bpf.h"

#define HOLDER_EEXIST 17

/* Frames visited per capture, the skipped non-Python ones included: 3.12+
 * put one entry frame per C-to-Python call on the chain, so at most about
 * one per Python frame. */
#define HOLDER_WALK_STEPS (2 * GILSCOPE_STACK_DEPTH)

/* Where a stack is built before it is hashed and stored (too large for the
 * BPF stack). `busy` guards against a program preempted mid-capture on this
 * CPU (uprobes run preemptible): the second capture gives up instead. */
struct holder_scratch {
	__u32 busy;
	__u32 _pad;
	struct holder_stack stack;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct holder_scratch);
} holder_scratch SEC(".maps");

/* Put the stack enums into each object's BTF, for the layout test. */
const enum stack_flag *stack_flag_btf __attribute__((unused));
const enum stack_id_special *stack_id_special_btf __attribute__((unused));

/* One step of the stack hash: the value mixed in, then a 64-bit finalizer
 * round (splitmix64's), so nearby addresses give unrelated ids. */
static __always_inline __u64 hash_step(__u64 h, __u64 v)
{
	h ^= v;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 31;
	h *= 0x94d049bb133111ebULL;
	return h ^ (h >> 29);
}

/* *(addr), or sets *failed. */
static __always_inline __u64 holder_read_u64(__u64 addr, int *failed)
{
	__u64 v = 0;
	if (bpf_probe_read_user(&v, sizeof(v), (const void *)addr))
		*failed = 1;
	return v;
}

/* The innermost frame of thread state `tstate`; 0 if none or unreadable. */
static __always_inline __u64 innermost_frame(const struct frame_walk *w, __u64 tstate)
{
	int failed = 0;
	__u64 frame = holder_read_u64(tstate + w->tstate_frame, &failed);
	if (w->two_loads && frame && !failed)
		frame = holder_read_u64(frame + w->cframe_frame, &failed);
	return failed ? 0 : frame;
}

/* The position in frame `frame`: a pointer, or an int (f_lasti) sign-extended. */
static __always_inline __u64 frame_position(const struct frame_walk *w, __u64 frame, int *failed)
{
	if (!w->instr_is_int)
		return holder_read_u64(frame + w->frame_instr, failed);
	__s32 lasti = 0;
	if (bpf_probe_read_user(&lasti, sizeof(lasti), (const void *)(frame + w->frame_instr)))
		*failed = 1;
	return (__u64)(__s64)lasti;
}

/* Whether frame `frame` is not Python code (an entry shim of the C stack). */
static __always_inline int skipped_frame(const struct frame_walk *w, __u64 frame, int *failed)
{
	if (!w->has_owner)
		return 0;
	__u8 owner = 0;
	if (bpf_probe_read_user(&owner, sizeof(owner), (const void *)(frame + w->frame_owner)))
		*failed = 1;
	return owner >= w->owner_skip_from;
}

/* The state of one walk, carried through bpf_loop (one call per frame keeps
 * the verifier's work to one step, whatever the depth). */
struct walk_state {
	struct frame_walk w;  /* a copy: the callback sees plain numbers */
	__u64 frame;          /* next frame to visit; 0 = past the root */
	__u64 hash;
	__u32 n;              /* frames captured */
	__u32 flags;
};

/* One frame: captured (or skipped), then on to its caller. 1 ends the walk. */
static long walk_step(__u64 index, void *ctx)
{
	struct walk_state *st = ctx;
	__u32 zero = 0;
	struct holder_scratch *sc = bpf_map_lookup_elem(&holder_scratch, &zero);
	__u64 frame = st->frame;
	__u32 n = st->n;
	if (!sc || !frame)
		return 1;
	if (n >= GILSCOPE_STACK_DEPTH) {
		st->flags |= STACK_TRUNCATED;
		return 1;
	}
	int failed = 0;
	int skip = skipped_frame(&st->w, frame, &failed);
	__u64 code = 0, instr = 0;
	if (!skip && !failed) {
		code = holder_read_u64(frame + st->w.frame_code, &failed) & ~st->w.code_tag_mask;
		instr = frame_position(&st->w, frame, &failed);
	}
	__u64 previous = failed ? 0 : holder_read_u64(frame + st->w.frame_previous, &failed);
	if (failed || (!skip && !code)) {
		st->flags |= STACK_BROKEN;
		return 1;
	}
	st->frame = previous;
	if (skip)
		return 0;
	sc->stack.frames[n].code = code;
	sc->stack.frames[n].instr = instr;
	st->hash = hash_step(hash_step(st->hash, code), instr);
	st->n = n + 1;
	return 0;
}

/* Walks the chain from `frame` outwards into the scratch stack `s`
 * (innermost first) and returns its hash; s->depth 0 when no frame could be
 * read. */
static __always_inline __u64 walk_frames(const struct frame_walk *w, __u64 frame,
					 struct holder_stack *s)
{
	struct walk_state st = {
		.w = *w,
		.frame = frame,
		.hash = 0xcbf29ce484222325ULL,
	};
	bpf_loop(HOLDER_WALK_STEPS, walk_step, &st, 0);
	if (st.frame && !st.flags)
		st.flags |= STACK_TRUNCATED; /* steps ran out on skipped frames */
	s->depth = st.n;
	s->flags = st.flags;
	return hash_step(hash_step(st.hash, st.n), st.flags);
}

/* Captures the Python stack of GIL holder `holder` (its PyThreadState *) of
 * process `tgid`, stores it in `stacks` if new, and returns its id:
 * STACK_NONE when the process has no frame_walk in `walks` (nothing is
 * captured), STACK_UNKNOWN when nothing could be (a full `stacks` is counted
 * in slot FULL_HOLDER_STACKS of `full`). */
static __always_inline __u64 capture_holder(void *walks, void *stacks, void *full, __u32 tgid,
					    __u64 holder)
{
	const struct frame_walk *w = bpf_map_lookup_elem(walks, &tgid);
	if (!w)
		return STACK_NONE;
	__u32 zero = 0;
	struct holder_scratch *sc = bpf_map_lookup_elem(&holder_scratch, &zero);
	if (!holder || !sc || sc->busy)
		return STACK_UNKNOWN;
	sc->busy = 1;
	__u64 id = STACK_UNKNOWN;
	__u64 frame = innermost_frame(w, holder);
	if (frame) {
		__u64 h = walk_frames(w, frame, &sc->stack);
		if (sc->stack.depth)
			id = h > STACK_UNKNOWN ? h : h + 2;
	}
	if (id != STACK_UNKNOWN) {
		struct holder_key key = { .tgid = tgid, .stack_id = id };
		if (!bpf_map_lookup_elem(stacks, &key)) {
			long err = bpf_map_update_elem(stacks, &key, &sc->stack, BPF_NOEXIST);
			if (err && err != -HOLDER_EEXIST) {
				count_full(full, FULL_HOLDER_STACKS);
				id = STACK_UNKNOWN;
			}
		}
	}
	sc->busy = 0;
	return id;
}

/* A take segment of process `tgid` that began behind stack `id` ended after
 * `d` ns: added to its entry in `waits` (nothing for STACK_NONE). */
static __always_inline void count_holder_wait(void *waits, void *full, __u32 tgid, __u64 id,
					      __u64 d)
{
	if (id == STACK_NONE)
		return;
	struct holder_key key = { .tgid = tgid, .stack_id = id };
	struct holder_wait zero = {};
	struct holder_wait *hw = lookup_or_count(waits, &key, &zero, full, FULL_HOLDER_WAITS);
	if (hw) {
		/* One entry per stack, closed by waiters on every CPU at once. */
		__sync_fetch_and_add(&hw->wait_ns, d);
		__sync_fetch_and_add(&hw->segments, 1);
	}
}

#endif
