// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * TCP-ENO (RFC 8547) in the SYN, on an unmodified Linux kernel: a sock_ops
 * program attached to a cgroup v2 directory by `tcpcrypt kernel enable`.
 *
 * The program only carries bytes; user space decides what they say:
 *
 *  - A connecting socket's storage holds the SYN-form ENO option that the
 *    library built (state OFFER), written before connect(). The program
 *    writes it into the SYN, records the SYN-ACK's ENO option when it
 *    established, and writes the non-SYN-form option (kind 69, length 2)
 *    into every segment until the peer sends a non-SYN one (RFC 8547 4.3).
 *  - A listening socket's storage holds an answer template (state LISTEN):
 *    B's global suboption byte and its TEPs, most preferred first. On
 *    listen() the program copies it into a map keyed by (network namespace,
 *    port), where the SYN-ACK callback, which runs on a request socket
 *    without storage, finds it. The answer is the global suboption and the
 *    most preferred TEP that A offered exactly once; the accepted socket's
 *    storage receives A's option and the answer (state ACCEPTED).
 *
 *  - Resumption (RFC 8548 3.5): user space gives the map tcpcrypt_resume
 *    the identifier halves its cached secrets answer to (A's half, the
 *    listener it belongs to, B's half, B's nonce, an expiry). A SYN whose
 *    last suboption names one gets B's resumption suboption in the
 *    SYN-ACK, and the entry is deleted: single use. Any other resumption
 *    offer is answered as a fresh one for its TEP.
 *
 * What it leaves alone: sockets with no storage (programs that did not
 * ask), listeners with no template (plain servers: their SYN-ACKs carry no
 * ENO), SYNs with data (TCP Fast Open: RFC 8547 4.7), SYN cookies (the
 * answer could not be recovered with the connection), offers with length
 * bytes (a suboption with data before another), which the in-band
 * carriage handles, and SYNs or SYN-ACKs with two ENO options (RFC 8547
 * 4.1: as though they had none).
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define ENO_KIND 69
#define TFO_KIND 34
#define MAX_OPTION 20 /* Linux's own SYN options take the other 20 bytes */
#define MAX_PREFS 8
#define TCP_LISTEN_STATE 10
#define MAX_TCP_HEADER 60
#define SOL_TCP_ 6
#define TCP_BPF_SYN_ 1005 /* bpf_getsockopt: the SYN's TCP header */

/* errno values (Linux), as the helpers return them negated. */
#define ENOENT_ 2
#define EINVAL_ 22

#define TCPHDR_SYN 0x02
#define TCPHDR_ACK 0x10

/* Per-socket storage; user space reads and writes it by descriptor. */
enum { STATE_NONE, STATE_OFFER, STATE_LISTEN, STATE_ACCEPTED };
enum {
	OUTCOME_PENDING,
	OUTCOME_ENO,        /* the peer's option is in `synack` (or A's in `syn`) */
	OUTCOME_NO_ENO,     /* the peer sent no ENO option */
	OUTCOME_NO_SPACE,   /* the SYN had no room for the offer */
	OUTCOME_FAST_OPEN,  /* a SYN with data: ENO left out */
	OUTCOME_UNANSWERED, /* accepted: A's ACK carried ENO, but no answer of
			     * ours is known (lost, evicted): never plain */
	OUTCOME_REJECTED,   /* the SYN-ACK's option is not a valid answer (no
			     * b bit, no TEP, a v bit): ENO disabled */
};

struct eno_sk {
	__u8 state;
	__u8 outcome;
	__u8 syn_len;    /* A's SYN-form option, kind and length included */
	__u8 synack_len; /* B's SYN-ACK option */
	__u8 tmpl_len;   /* listener: global byte, then TEPs by preference */
	__u8 ack_eno;    /* accepted: A's third segment carried ENO */
	__u8 dual_stack; /* listener: an IPv6 one that takes IPv4 too */
	__u8 pad;
	__u8 syn[40];
	__u8 synack[40];
	__u8 tmpl[16];
	__u64 listener; /* accepted: the listener's socket cookie */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct eno_sk);
} tcpcrypt_sk SEC(".maps");

/* A listener's address; the wildcard (all zero) answers for any. IPv4
 * addresses, mapped or not, are kept as IPv4. */
struct listen_key {
	__u64 netns;
	__u32 family;
	__u32 port;
	__u32 ip[4];
};

struct listen_tmpl {
	__u64 owner; /* the listener's socket cookie: only it removes the entry */
	__u8 len;
	__u8 dual_stack; /* [::] without IPV6_V6ONLY: answers IPv4 SYNs too */
	__u8 bytes[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listen_key);
	__type(value, struct listen_tmpl);
} tcpcrypt_listen SEC(".maps");

/* A connection between its SYN-ACK and its acceptance. */
struct conn_key {
	__u64 netns;
	__u32 family;
	__u32 local_port;
	__u32 remote_port;
	__u32 local_ip[4];
	__u32 remote_ip[4];
};

struct pending {
	__u64 listener;
	__u8 syn_len;
	__u8 answer_len;
	__u8 syn[40];
	__u8 answer[20];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct pending);
} tcpcrypt_pending SEC(".maps");

/* Resumption: A's identifier half (RFC 8548 3.5), zero-padded. */
struct resume_key {
	__u8 half[9];
	__u8 pad[7];
};

#define RESUME_NONCE 7 /* B's nonce: what the SYN-ACK's 20 bytes leave */

struct resume_val {
	__u64 owner;      /* the listener's socket cookie */
	__u64 expires_ns; /* CLOCK_MONOTONIC */
	__u8 tep;         /* the TEP identifier, v = 0 */
	__u8 half[9];     /* B's identifier half */
	__u8 nonce[RESUME_NONCE];
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct resume_key);
	__type(value, struct resume_val);
} tcpcrypt_resume SEC(".maps");

enum {
	STAT_SYN_SENT,
	STAT_SYNACK_SENT,
	STAT_ACTIVE_ENABLED,
	STAT_ACTIVE_NO_ENO,
	STAT_PASSIVE_ENABLED,
	STAT_PASSIVE_NO_ENO,
	STAT_PASSIVE_NO_COMMON_TEP,
	STAT_PASSIVE_UNSUPPORTED_OFFER,
	STAT_NO_SPACE,
	STAT_SYN_COOKIE,
	STAT_FAST_OPEN,
	STAT_DUPLICATE_ENO,
	STAT_SIMULTANEOUS_OPEN,
	STAT_RESUMED,
	STAT_COUNT,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} tcpcrypt_stats SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *v = bpf_map_lookup_elem(&tcpcrypt_stats, &what);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline struct eno_sk *storage(struct bpf_sock_ops *skops, __u64 flags)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 0;
	return bpf_sk_storage_get(&tcpcrypt_sk, sk, 0, flags);
}

#define AF_INET_ 2
#define AF_INET6_ 10

/* An address as (family, 4 words): IPv4-mapped IPv6 becomes IPv4, so that
 * a dual-stack socket and its IPv4 request agree. */
static __always_inline __u32 addr_of(struct bpf_sock_ops *skops, int local, __u32 *ip)
{
	__u32 w0, w1, w2, w3;
	if (skops->family == AF_INET_) {
		ip[0] = local ? skops->local_ip4 : skops->remote_ip4;
		return AF_INET_;
	}
	if (local) {
		w0 = skops->local_ip6[0];
		w1 = skops->local_ip6[1];
		w2 = skops->local_ip6[2];
		w3 = skops->local_ip6[3];
	} else {
		w0 = skops->remote_ip6[0];
		w1 = skops->remote_ip6[1];
		w2 = skops->remote_ip6[2];
		w3 = skops->remote_ip6[3];
	}
	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
		ip[0] = w3;
		return AF_INET_;
	}
	ip[0] = w0;
	ip[1] = w1;
	ip[2] = w2;
	ip[3] = w3;
	return AF_INET6_;
}

static __always_inline void conn_key_of(struct bpf_sock_ops *skops, struct conn_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = bpf_get_netns_cookie(skops);
	k->family = addr_of(skops, 1, k->local_ip);
	addr_of(skops, 0, k->remote_ip);
	k->local_port = skops->local_port;
	k->remote_port = skops->remote_port;
}

/* The listener's own key (its bound address, maybe the wildcard). */
static __always_inline void listen_key_of(struct bpf_sock_ops *skops, struct listen_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = bpf_get_netns_cookie(skops);
	k->family = addr_of(skops, 1, k->ip);
	k->port = skops->local_port;
}

/* The template answering a SYN to this address: the exact one, else the
 * wildcard of its family, else (an IPv4 SYN) a dual-stack IPv6 wildcard:
 * only a listener that can accept the connection answers for it. */
static __always_inline struct listen_tmpl *template_for(struct bpf_sock_ops *skops)
{
	struct listen_key k;
	struct listen_tmpl *t;
	listen_key_of(skops, &k);
	t = bpf_map_lookup_elem(&tcpcrypt_listen, &k);
	if (t)
		return t;
	k.ip[0] = 0;
	k.ip[1] = 0;
	k.ip[2] = 0;
	k.ip[3] = 0;
	t = bpf_map_lookup_elem(&tcpcrypt_listen, &k);
	if (t)
		return t;
	if (k.family != AF_INET_)
		return 0;
	k.family = AF_INET6_;
	t = bpf_map_lookup_elem(&tcpcrypt_listen, &k);
	return t && t->dual_stack ? t : 0;
}

/* 1 when x (a byte) is at least 2, else 0. */
static __always_inline __u32 at_least_2(__u32 x)
{
	return ((x + 254) >> 8) & 1;
}

/* 1 when x == 0, else 0, for x in 0..255, without a branch. */

static __always_inline __u32 is_zero(__u32 x)
{
	return ((x - 1) >> 8) & 1;
}

/*
 * B's resumption answer, if A's suboption at `r` (TEP byte with v = 1,
 * then data to the option's end) names an identifier half that user space
 * gave for this listener and that has not expired: the global byte, the
 * TEP with v = 1, B's half and nonce (20 bytes). The entry is deleted:
 * single use.
 */
static __attribute__((noinline)) int resume_answer(const __u8 *a, int a_len, __u32 r,
						    const struct listen_tmpl *t, __u8 *out)
{
	struct resume_key k = {};
	struct resume_val *v;
	__u32 data_len, i;

	if (r < 2 || r >= MAX_OPTION)
		return 0;
	data_len = a_len - r - 1;
	if (data_len < 9 || data_len > 17)
		return 0;
#pragma clang loop unroll(disable)
	for (i = 0; i < 9; i++) {
		__u32 at = r + 1 + i;
		if (at >= MAX_OPTION)
			return 0;
		k.half[i] = a[at];
	}
	v = bpf_map_lookup_elem(&tcpcrypt_resume, &k);
	if (!v)
		return 0;
	if (v->owner != t->owner || v->expires_ns < bpf_ktime_get_ns() ||
	    (v->tep | 0x80) != a[r]) {
		return 0;
	}
	out[0] = ENO_KIND;
	out[1] = 20;
	out[2] = (t->bytes[0] & 0x1e) | 0x01;
	out[3] = v->tep | 0x80;
	__builtin_memcpy(out + 4, v->half, 9);
	__builtin_memcpy(out + 13, v->nonce, RESUME_NONCE);
	bpf_map_delete_elem(&tcpcrypt_resume, &k);
	count(STAT_RESUMED);
	return 20;
}

/*
 * B's answer to A's option `a` (a_len bytes, kind and length included,
 * zero beyond): a resumption it holds (resume_answer), else the template's
 * global byte and its most preferred TEP that A offered exactly once (a
 * resumption suboption offers its TEP too, RFC 8548 3.5). Returns the
 * answer's length, or 0 for no answer. Branch-free over the option's
 * bytes, so that the verifier walks one path, not one per byte value.
 */
static __attribute__((noinline)) int answer(const __u8 *a, int a_len,
					     const struct listen_tmpl *t, __u8 *out)
{
	__u32 claims_b = 0, seen_global = 0, length_byte = 0;
	__u32 r = MAX_OPTION, found = 0, rtep = 0;
	int i, j, n;

	if (a_len < 2 || a_len > MAX_OPTION || t->len < 2 || t->len > 1 + MAX_PREFS)
		return 0;
	/* Bytes past the option are zero: a harmless global suboption. */
#pragma clang loop unroll(disable)
	for (i = 2; i < MAX_OPTION; i++) {
		__u32 c = a[i];
		__u32 before = found ^ 1;
		__u32 global = is_zero(c & 0xe0) & before;
		__u32 high = (c >> 7) & 1;
		__u32 first = high & before;
		/* A's first global suboption (RFC 8547 4.2: only the first
		 * counts) must not claim role B. */
		claims_b |= global & (seen_global ^ 1) & c & 0x01;
		seen_global |= global;
		/* The first byte with the high bit: a length byte (0x80 to
		 * 0x9f, not supported here) or a TEP with v = 1, whose data
		 * runs to the end of the option. */
		length_byte |= first & is_zero((c & 0xe0) ^ 0x80);
		r = (r & ~(-first)) | (i & -first);
		rtep = (rtep & ~(-first)) | ((c & 0x7f) & -first);
		found |= high;
	}
	if (length_byte) {
		count(STAT_PASSIVE_UNSUPPORTED_OFFER);
		return 0;
	}
	if (claims_b)
		return 0;
	if (found) {
		n = resume_answer(a, a_len, r, t, out);
		if (n)
			return n;
	}
#pragma clang loop unroll(disable)
	for (j = 1; j <= MAX_PREFS; j++) {
		__u32 p, m = 0;
		if (j >= t->len)
			break;
		p = t->bytes[j];
#pragma clang loop unroll(disable)
		for (i = 2; i < MAX_OPTION; i++)
			m += is_zero(a[i] ^ p) & (((__u32)i - r) >> 31);
		m += found & is_zero(rtep ^ p);
		if (m == 1) {
			if (p < 0x20 || p > 0x7f)
				return 0;
			out[0] = ENO_KIND;
			out[1] = 4;
			/* B's global suboption: b = 1 whatever the template. */
			out[2] = (t->bytes[0] & 0x1e) | 0x01;
			out[3] = p;
			return 4;
		}
	}
	count(STAT_PASSIVE_NO_COMMON_TEP);
	return 0;
}

static __attribute__((noinline)) void on_connect(struct bpf_sock_ops *skops)
{
	struct eno_sk *st = storage(skops, 0);
	if (!st || st->state != STATE_OFFER)
		return;
	st->outcome = OUTCOME_PENDING;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
					 BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

static __attribute__((noinline)) void on_listen(struct bpf_sock_ops *skops)
{
	struct listen_key k;
	struct listen_tmpl t = {};
	struct eno_sk *st = storage(skops, 0);
	__u8 len;

	if (!st || st->state != STATE_LISTEN)
		return;
	len = st->tmpl_len;
	if (len < 2 || len > sizeof(t.bytes))
		return;
	t.len = len;
	t.owner = bpf_get_socket_cookie(skops);
	t.dual_stack = st->dual_stack;
	__builtin_memcpy(t.bytes, st->tmpl, sizeof(t.bytes));
	listen_key_of(skops, &k);
	/* A listener bound to the same address and port (SO_REUSEPORT)
	 * replaces the entry; it is removed by whichever owns it. A full
	 * table (the machine's other listeners, perhaps another user's) is
	 * told to this one's owner, in its record. */
	if (bpf_map_update_elem(&tcpcrypt_listen, &k, &t, BPF_ANY)) {
		st->outcome = OUTCOME_NO_SPACE;
		return;
	}
	st->outcome = OUTCOME_ENO;
	/* Answer SYNs with options; notice when the listener closes. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
					 BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG |
					 BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __attribute__((noinline)) void on_state(struct bpf_sock_ops *skops)
{
	struct listen_key k;
	struct listen_tmpl *t;
	if (skops->args[0] != TCP_LISTEN_STATE)
		return;
	listen_key_of(skops, &k);
	t = bpf_map_lookup_elem(&tcpcrypt_listen, &k);
	if (t && t->owner == bpf_get_socket_cookie(skops))
		bpf_map_delete_elem(&tcpcrypt_listen, &k);
}

/* How many ENO options a TCP header holds: `h` is the header, zero-padded
 * past its end. The option list is walked byte by byte (a count of bytes
 * still to skip), up to an end-of-list or an impossible length. */
static __attribute__((noinline)) __u32 eno_options_in(const __u8 *h)
{
	__u32 skip = 0, done = 0, n = 0;
	int i;
	/* Arithmetic only, no branch on the bytes: every path through the
	 * loop is the same one for the verifier. The bytes past the header
	 * are zero, an end-of-list: no need to read its data offset. */
#pragma clang loop unroll(disable)
	for (i = 20; i < MAX_TCP_HEADER; i++) {
		__u32 c = h[i], len = h[i + 1];
		__u32 at = (done ^ 1) & is_zero(skip);
		__u32 multi = at_least_2(c);
		__u32 next = (len - 1) & -multi;
		__u32 left = skip - 1 + is_zero(skip);
		done |= at & (is_zero(c) | (multi & (at_least_2(len) ^ 1)));
		n += at & is_zero(c ^ ENO_KIND) & at_least_2(len);
		skip = (next & -at) | (left & ~(-at));
	}
	return n;
}

/* RFC 8547 4.1: a SYN segment with more than one ENO option counts as one
 * with none. The received SYN's header, on the passive side. */
static __attribute__((noinline)) int syn_repeats_eno(struct bpf_sock_ops *skops)
{
	__u8 h[64] = {};
	if (bpf_getsockopt(skops, SOL_TCP_, TCP_BPF_SYN_, h, MAX_TCP_HEADER) <= 0)
		return 0;
	return eno_options_in(h) > 1;
}

/* The same for the segment at hand (A's received SYN-ACK). */
static __attribute__((noinline)) int segment_repeats_eno(struct bpf_sock_ops *skops)
{
	__u8 h[64] = {};
	__u8 *data = (__u8 *)(long)skops->skb_data;
	__u8 *end = (__u8 *)(long)skops->skb_data_end;
	int i;
#pragma clang loop unroll(disable)
	for (i = 0; i < MAX_TCP_HEADER; i++) {
		if (data + i + 1 > end)
			break;
		h[i] = data[i];
	}
	return eno_options_in(h) > 1;
}

/* The SYN-ACK's answer: computed from the SYN, kept for the accept and
 * for retransmitted SYN-ACKs (which no longer see the SYN: the same
 * answer again, RFC 8547 4.6). */
static __attribute__((noinline)) struct pending *synack_answer(struct bpf_sock_ops *skops)
{
	struct conn_key ck;
	struct listen_tmpl *t;
	struct pending p = {};
	struct pending *known;
	__u8 buf[40] = {};
	__u8 tfo[4] = {};
	int n;

	t = template_for(skops);
	if (!t)
		return 0;
	conn_key_of(skops, &ck);
	buf[0] = ENO_KIND;
	buf[1] = 0;
	n = bpf_load_hdr_opt(skops, buf, sizeof(buf), BPF_LOAD_HDR_OPT_TCP_SYN);
	if (n == -ENOENT_ || n == -EINVAL_) {
		/* No SYN at hand (a retransmission): what was answered. */
		known = bpf_map_lookup_elem(&tcpcrypt_pending, &ck);
		if (known)
			return known;
	}
	if (n <= 0) {
		count(STAT_PASSIVE_NO_ENO);
		goto none;
	}
	if (n > MAX_OPTION)
		goto none;
	if (syn_repeats_eno(skops)) {
		count(STAT_DUPLICATE_ENO);
		goto none;
	}
	/* SYN data (Fast Open) and ENO must not meet (RFC 8547 4.7): a SYN
	 * with a cookie may carry data; a cookie request (the empty option)
	 * carries none and is answered. */
	tfo[0] = TFO_KIND;
	if (bpf_load_hdr_opt(skops, tfo, sizeof(tfo), BPF_LOAD_HDR_OPT_TCP_SYN) > 2) {
		count(STAT_FAST_OPEN);
		goto none;
	}
	p.syn_len = n;
	p.listener = t->owner;
	__builtin_memcpy(p.syn, buf, sizeof(p.syn));
	p.answer_len = answer(buf, n, t, p.answer);
	if (!p.answer_len)
		goto none;
	bpf_map_update_elem(&tcpcrypt_pending, &ck, &p, BPF_ANY);
	return bpf_map_lookup_elem(&tcpcrypt_pending, &ck);
none:
	/* Nothing of an earlier connection on this 4-tuple may stay. */
	bpf_map_delete_elem(&tcpcrypt_pending, &ck);
	return 0;
}

static __attribute__((noinline)) void on_hdr_len(struct bpf_sock_ops *skops)
{
	__u8 flags = skops->skb_tcp_flags;
	struct eno_sk *st;

	if ((flags & (TCPHDR_SYN | TCPHDR_ACK)) == (TCPHDR_SYN | TCPHDR_ACK)) {
		struct pending *p;
		if (skops->args[0] & BPF_WRITE_HDR_TCP_SYNACK_COOKIE) {
			count(STAT_SYN_COOKIE);
			return;
		}
		p = synack_answer(skops);
		if (p && (p->answer_len == 4 || p->answer_len == 20))
			bpf_reserve_hdr_opt(skops, p->answer_len, 0);
		return;
	}
	st = storage(skops, 0);
	if (!st)
		return;
	if (flags & TCPHDR_SYN) {
		__u8 len = st->syn_len;
		if (st->state != STATE_OFFER || len < 2 || len > MAX_OPTION)
			return;
		if (skops->skb_len > 0) {
			st->outcome = OUTCOME_FAST_OPEN;
			count(STAT_FAST_OPEN);
			bpf_sock_ops_cb_flags_set(skops, 0);
			return;
		}
		if (bpf_reserve_hdr_opt(skops, len, 0)) {
			st->outcome = OUTCOME_NO_SPACE;
			count(STAT_NO_SPACE);
			bpf_sock_ops_cb_flags_set(skops, 0);
		}
		return;
	}
	/* A's segments after the SYN, until B sends a non-SYN one. */
	if (st->state == STATE_OFFER && st->outcome == OUTCOME_ENO)
		bpf_reserve_hdr_opt(skops, 2, 0);
}

static __attribute__((noinline)) void on_hdr_write(struct bpf_sock_ops *skops)
{
	__u8 flags = skops->skb_tcp_flags;
	struct eno_sk *st;

	if ((flags & (TCPHDR_SYN | TCPHDR_ACK)) == (TCPHDR_SYN | TCPHDR_ACK)) {
		struct conn_key ck;
		struct pending *p;
		if (skops->args[0] & BPF_WRITE_HDR_TCP_SYNACK_COOKIE)
			return;
		conn_key_of(skops, &ck);
		p = bpf_map_lookup_elem(&tcpcrypt_pending, &ck);
		if (!p)
			return;
		if (p->answer_len == 4 && !bpf_store_hdr_opt(skops, p->answer, 4, 0))
			count(STAT_SYNACK_SENT);
		if (p->answer_len == 20 && !bpf_store_hdr_opt(skops, p->answer, 20, 0))
			count(STAT_SYNACK_SENT);
		return;
	}
	st = storage(skops, 0);
	if (!st)
		return;
	if (flags & TCPHDR_SYN) {
		__u8 len = st->syn_len;
		if (st->state != STATE_OFFER || st->outcome != OUTCOME_PENDING)
			return;
		if (len < 2 || len > MAX_OPTION)
			return;
		if (!bpf_store_hdr_opt(skops, st->syn, len, 0))
			count(STAT_SYN_SENT);
		return;
	}
	if (st->state == STATE_OFFER && st->outcome == OUTCOME_ENO) {
		__u8 opt[2] = { ENO_KIND, 2 };
		bpf_store_hdr_opt(skops, opt, 2, 0);
	}
}

/* B's SYN-ACK option can enable ENO: its first global suboption has
 * b = 1, and it names a TEP (with v = 1 for a resumption). The library
 * judges the rest (which TEP, whether A offered it, the identifier half). */
static __attribute__((noinline)) int valid_answer(const __u8 *b)
{
	__u32 seen_global = 0, b_bit = 0, teps = 0;
	int i;
	/* Bytes past the option are zero: they change nothing below. */
#pragma clang loop unroll(disable)
	for (i = 2; i < MAX_OPTION; i++) {
		__u32 c = b[i];
		__u32 global = is_zero(c & 0xe0);
		b_bit |= global & (seen_global ^ 1) & c & 0x01;
		seen_global |= global;
		teps += (c >= 0x20);
	}
	return b_bit && teps > 0;
}

static __attribute__((noinline)) void on_active_established(struct bpf_sock_ops *skops)
{
	struct eno_sk *st = storage(skops, 0);
	__u8 buf[40] = {};
	int n;

	if (!st || st->state != STATE_OFFER || st->outcome != OUTCOME_PENDING)
		return;
	buf[0] = ENO_KIND;
	buf[1] = 0;
	n = bpf_load_hdr_opt(skops, buf, sizeof(buf), 0);
	if (n >= 2 && segment_repeats_eno(skops)) {
		/* As though the SYN-ACK had none (RFC 8547 4.1). */
		st->outcome = OUTCOME_NO_ENO;
		count(STAT_DUPLICATE_ENO);
		bpf_sock_ops_cb_flags_set(skops, 0);
		return;
	}
	if (n >= 2 && n <= 40) {
		st->synack_len = n;
		__builtin_memcpy(st->synack, buf, sizeof(st->synack));
		if (!valid_answer(buf)) {
			/* ENO disabled: no further option (RFC 8547 4.6). */
			st->outcome = OUTCOME_REJECTED;
			count(STAT_ACTIVE_NO_ENO);
			bpf_sock_ops_cb_flags_set(skops, 0);
			return;
		}
		st->outcome = OUTCOME_ENO;
		count(STAT_ACTIVE_ENABLED);
		/* Keep writing the non-SYN form; watch for B's first
		 * non-SYN segment. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
	} else {
		st->outcome = OUTCOME_NO_ENO;
		count(STAT_ACTIVE_NO_ENO);
		bpf_sock_ops_cb_flags_set(skops, 0);
	}
}

static __attribute__((noinline)) void on_parse(struct bpf_sock_ops *skops)
{
	/* B's first non-SYN segment: A's duty to repeat the option ends. */
	if (!(skops->skb_tcp_flags & TCPHDR_SYN))
		bpf_sock_ops_cb_flags_set(skops, 0);
}

static __attribute__((noinline)) void on_passive_established(struct bpf_sock_ops *skops)
{
	struct conn_key ck;
	struct pending *p;
	struct eno_sk *st;
	__u8 buf[4] = {};
	__u8 syn_len, answer_len;
	int ack_eno;

	/* The accepted socket inherited the listener's callbacks. */
	bpf_sock_ops_cb_flags_set(skops, 0);
	st = storage(skops, 0);
	if (st && st->state == STATE_OFFER) {
		/* A connecting socket established as a passive one: a
		 * simultaneous open. Its SYN-ACK carried no ENO (allowed to an
		 * active opener, RFC 8547 4.6), so ENO is off at both ends, as
		 * the b bits of two active openers require anyway (3.1). */
		if (st->outcome == OUTCOME_PENDING) {
			st->outcome = OUTCOME_NO_ENO;
			count(STAT_SIMULTANEOUS_OPEN);
		}
		return;
	}
	conn_key_of(skops, &ck);
	buf[0] = ENO_KIND;
	buf[1] = 0;
	ack_eno = bpf_load_hdr_opt(skops, buf, sizeof(buf), 0) > 0;
	p = bpf_map_lookup_elem(&tcpcrypt_pending, &ck);
	if (!p) {
		/* A believes ENO is on, and we know no answer of ours: the
		 * library must not take this connection for a plain one. */
		if (ack_eno) {
			st = storage(skops, BPF_SK_STORAGE_GET_F_CREATE);
			if (st) {
				st->state = STATE_ACCEPTED;
				st->outcome = OUTCOME_UNANSWERED;
				st->ack_eno = 1;
			}
		}
		return;
	}
	st = storage(skops, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		goto out;
	syn_len = p->syn_len;
	answer_len = p->answer_len;
	if (syn_len > 40 || answer_len > 20)
		goto out;
	st->state = STATE_ACCEPTED;
	st->outcome = OUTCOME_ENO;
	st->listener = p->listener;
	st->syn_len = syn_len;
	st->synack_len = answer_len;
	__builtin_memcpy(st->syn, p->syn, sizeof(st->syn));
	__builtin_memcpy(st->synack, p->answer, sizeof(p->answer));
	st->ack_eno = ack_eno;
	count(STAT_PASSIVE_ENABLED);
out:
	bpf_map_delete_elem(&tcpcrypt_pending, &ck);
}

SEC("sockops")
int tcpcrypt_eno(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_connect(skops);
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		on_listen(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		on_state(skops);
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		on_hdr_len(skops);
		break;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		on_hdr_write(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_active_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_passive_established(skops);
		break;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		on_parse(skops);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
