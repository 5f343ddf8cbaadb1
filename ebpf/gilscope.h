/* Limits every BPF program and the agent share.
 *
 * Each program's own structs (what crosses its boundary with the agent) are in
 * its header: gil_wait.h, gil_condwait.h (both on gil_shared.h), gil_precise.h,
 * lock_park.h. The Rust side mirrors them in agent/src/probes/layout/, one
 * module per header, with tests that check sizes and offsets against the BTF of
 * the compiled objects; change both together.
 */
#ifndef GILSCOPE_H
#define GILSCOPE_H

#include <linux/types.h>

/* log2(ns) buckets: slot i counts waits in [2^i, 2^(i+1)) ns, the same
 * boundaries as an OpenTelemetry exponential histogram at scale 0. */
#define GILSCOPE_HIST_SLOTS 64

/* GILs watched per process: the main interpreter's, plus those of
 * subinterpreters with their own GIL (3.12+). */
#define GILSCOPE_MAX_GILS 8

/* Distinct GIL holders remembered per wait for its episode record: a wait of
 * many slices behind many threads names the first four. */
#define GILSCOPE_EPISODE_HOLDERS 4

/* Python frames captured of a GIL holder's stack, innermost first: a deeper
 * stack keeps its innermost frames and is marked truncated. */
#define GILSCOPE_STACK_DEPTH 64

#endif
