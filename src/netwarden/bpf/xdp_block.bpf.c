// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * netwarden's XDP fast path: drop new connections from blocked sources before the stack,
 * and drop a port scanner at its threshold probe with no user-space round trip.
 *
 * One program, `netwarden`, attached to an interface (src/netwarden/act/xdp.py loads it
 * through capture/libbpf.py and attaches it with a BPF link, so it goes away with the
 * process that attached it). Built by scripts/build-bpf.sh, which compiles every *.bpf.c
 * here, into build/bpf/xdp_block.bpf.o.
 *
 * What "new" means at XDP (there is no conntrack this early):
 *
 *   TCP     a segment with neither ACK nor RST: a SYN, or a FIN/NULL/Xmas probe. Every
 *           segment of an established connection carries ACK (or is a RST), so established
 *           TCP always passes: the same rule as the nftables `prerouting` chain.
 *   UDP     a datagram that no *connected* UDP socket of this namespace would receive
 *           (bpf_sk_lookup_udp on the packet's 4-tuple). A reply to a flow this host opened
 *           with connect() passes; a datagram to a server socket or a closed port is new.
 *           (The lookup runs only for datagrams of blocked sources or while the threshold
 *           counts: other traffic pays nothing for it.)
 *           Limit: replies to an *unconnected* client socket look new (nftables' conntrack
 *           rule lets them pass); so does an established UDP flow towards a local server.
 *   ICMP    requests only: echo, timestamp, information, address mask (ICMPv6: echo
 *           request, node information query). Replies and errors pass; neighbour discovery
 *           and MLD pass; ARP is not IP and always passes.
 *   other   protocols without a notion of "new" here always pass (nftables still sees them).
 *   IP fragments after the first have no transport header: they pass.
 *
 * Maps (user space writes or reads them all; layouts mirrored in act/xdp.py):
 *
 *   nw_xdp_cfg      array[1]  the in-kernel threshold: ports (0 = off), window, block length
 *   nw_blocked      hash      source address -> block (until, since, drops, flags)
 *   nw_blocknets    lpm trie  source network -> block (CIDRs blocked by hand)
 *   nw_allow        lpm trie  networks never counted nor blocked by the kernel threshold
 *   nw_first        array     (source, destination) hashed -> its first port (see below)
 *   nw_scan         lru hash  (source, destination) -> the last NW_XDP_SLOTS distinct ports
 *                             and when each was last seen (from its second port on)
 *   nw_xdp_events   ringbuf   a record per in-kernel block (so user space can report it)
 *   nw_xdp_stats    percpu    counters (NW_XS_*)
 *
 * Addresses are 16 bytes everywhere, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so one code
 * path serves both families. Times are CLOCK_BOOTTIME nanoseconds (bpf_ktime_get_boot_ns).
 *
 * The threshold rule is netwarden's port-scan rule without the scoring: a source that sends
 * new-connection packets to more than `scan_ports` distinct ports of one destination address
 * within `window_ns` is blocked, and the packet that crossed the threshold is dropped. Only
 * TCP and UDP count (they have ports); allowlisted sources are never counted.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define NW_ETH_P_IP 0x0800
#define NW_ETH_P_IPV6 0x86DD
#define NW_ETH_P_8021Q 0x8100
#define NW_ETH_P_8021AD 0x88A8

#define NW_TCP_FIN 0x01
#define NW_TCP_SYN 0x02
#define NW_TCP_RST 0x04
#define NW_TCP_ACK 0x10

#define NW_IPPROTO_ICMPV6 58
#define NW_UDP_CONNECTED 1 /* TCP_ESTABLISHED: what a connected UDP socket's state reads */

/* distinct ports remembered per (source, destination); the threshold is at most SLOTS - 1 */
#define NW_XDP_SLOTS 16

/* nw_xdp_cfg.flags */
#define NW_XDP_CFG_BLOCK 0x1 /* block and drop at the threshold (else only report it) */

/* nw_xdp_block.flags */
#define NW_XDP_BLOCK_AUTO 0x1 /* made by the in-kernel threshold */

/* nw_xdp_stats indexes */
enum {
	NW_XS_PACKETS = 0,	  /* IP packets seen */
	NW_XS_NEW,		  /* new-connection packets judged: of blocked or counted sources */
	NW_XS_DROP_BLOCKED,	  /* dropped: the source is blocked */
	NW_XS_DROP_THRESHOLD,	  /* dropped: the packet that crossed the threshold */
	NW_XS_AUTO_BLOCKS,	  /* sources blocked by the threshold */
	NW_XS_DETECTED,		  /* threshold crossings (blocking or not) */
	NW_XS_EVENTS_LOST,	  /* ring buffer full: an in-kernel block not reported */
	NW_XS_ALLOWED,		  /* new-connection packets of allowlisted sources */
	NW_XS_ATTEMPTS,		  /* TCP/UDP new-connection packets counted for the threshold */
	NW_XS_TRACK_FAILED,	  /* the scan map refused an update */
	NW_XS_EXPIRED,		  /* blocks found past their time and removed */
	NW_XS_UNPARSED,		  /* truncated or unusual headers: passed */
	NW_XS_MAX,
};

struct nw_xdp_cfg {
	__u32 scan_ports; /* 0: no in-kernel threshold */
	__u32 flags;	  /* NW_XDP_CFG_* */
	__u64 window_ns;
	__u64 block_ns; /* length of an in-kernel block; 0: no timeout */
};

struct nw_xdp_block {
	__u64 until_ns; /* 0: no timeout */
	__u64 since_ns;
	__u64 drops; /* packets dropped because of this entry */
	__u32 flags; /* NW_XDP_BLOCK_* */
	__u32 _pad;
};

struct nw_lpm_key {
	__u32 prefixlen; /* IPv4 networks: 96 + their prefix length */
	__u8 addr[16];
};

struct nw_scan_key {
	__u8 src[16];
	__u8 dst[16];
};

struct nw_scan_state {
	__u64 ts[NW_XDP_SLOTS]; /* when each port was last seen; 0: free slot */
	__u16 port[NW_XDP_SLOTS];
};

struct nw_xdp_event {
	__u8 src[16];
	__u8 dst[16];
	__u64 at_ns;
	__u64 until_ns; /* 0: no timeout, or not blocked (flags) */
	__u16 ports[NW_XDP_SLOTS]; /* the slots; `live` says which hold a port in the window */
	__u32 live;		   /* bit i: ports[i] is one of the distinct ports */
	__u8 proto;  /* of the packet that crossed the threshold */
	__u8 flags;  /* NW_XDP_CFG_BLOCK if the source was blocked */
	__u16 _pad;
};

/* the slot loop's results, laundered through memory (see nw_threshold) */
struct nw_scan_result {
	__u32 live;
	__u32 found;
	__u32 hasfree;
	__u32 freeslot;
	__u32 oldest;
	__u32 _pad;
};

struct nw_xdp_counters {
	__u64 v[NW_XS_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_xdp_cfg);
} nw_xdp_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u8[16]);
	__type(value, struct nw_xdp_block);
} nw_blocked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nw_lpm_key);
	__type(value, struct nw_xdp_block);
} nw_blocknets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nw_lpm_key);
	__type(value, __u8);
} nw_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nw_scan_key);
	__type(value, struct nw_scan_state);
} nw_scan SEC(".maps");

/*
 * A source's first port is kept here, not in nw_scan: a direct-mapped table indexed by a
 * hash of (source, destination), so that a flood of one-packet (spoofed) sources costs an
 * array write per packet instead of an LRU insertion (measured: ~0.25 us instead of ~1 us
 * per packet). A source enters nw_scan with its second distinct port. Two sources sharing
 * a slot overwrite each other's first port: the later one then needs one more port; an LRU
 * of the same size would forget an idle source under such a flood just as fast.
 */
#define NW_FIRST_SLOTS 65536

struct nw_first {
	__u32 tag; /* the upper half of the hash (never 0); 0: empty */
	__u16 port;
	__u16 _pad;
	__u64 ts;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NW_FIRST_SLOTS);
	__type(key, __u32);
	__type(value, struct nw_first);
} nw_first SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} nw_xdp_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_xdp_counters);
} nw_xdp_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_scan_result);
} nw_scratch SEC(".maps");

#ifndef barrier
#define barrier() asm volatile("" ::: "memory")
#endif

/* what the parser found out about one packet */
struct nw_pkt {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport; /* host order */
	__u16 dport;
	__u8 proto;
	__u8 is_new;	/* UDP: not yet known to be a reply (see udp_to_connected) */
	__u8 has_ports;
	__u8 v6;
};

static __always_inline void count(__u32 idx)
{
	__u32 zero = 0;
	struct nw_xdp_counters *c = bpf_map_lookup_elem(&nw_xdp_stats, &zero);

	if (c && idx < NW_XS_MAX)
		c->v[idx]++;
}

static __always_inline void copy16(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 16);
}

static __always_inline void mapped4(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/* A datagram a connected UDP socket of this namespace would receive: a reply, not new. */
static __always_inline int udp_to_connected(struct xdp_md *ctx, struct bpf_sock_tuple *t, int v6)
{
	struct bpf_sock *sk;
	int connected;

	if (v6)
		sk = bpf_sk_lookup_udp(ctx, t, sizeof(t->ipv6), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(ctx, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	connected = sk->state == NW_UDP_CONNECTED;
	bpf_sk_release(sk);
	return connected;
}

static __always_inline int icmp_request(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 8 || type == 13 || type == 15 || type == 17;
	return type == 128 || type == 139; /* ICMPv6 echo request, node information query */
}

/* parse() and transport() return one of these */
#define NW_PARSED 0	/* p is filled in */
#define NW_SKIP 1	/* not for us: not IP, another protocol, a later fragment */
#define NW_TRUNCATED 2 /* headers cut short or unusual: passed, counted */

/*
 * Parse the transport header at `off`; decide whether the packet opens a connection.
 * A global function: the verifier checks it once, not once per path through the IPv6
 * extension headers.
 */
__noinline int nw_transport(struct xdp_md *ctx, struct nw_pkt *p, __u32 off,
			    struct bpf_sock_tuple *t, int v6)
{
	void *data, *end;
	__u8 *l4;

	if (!ctx || !p || !t)
		return NW_SKIP;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (off > 512)
		return NW_TRUNCATED;
	l4 = data + off;
	if (p->proto == IPPROTO_TCP) {
		if ((void *)(l4 + 20) > end)
			return NW_TRUNCATED;
		p->sport = ((__u16)l4[0] << 8) | l4[1];
		p->dport = ((__u16)l4[2] << 8) | l4[3];
		p->has_ports = 1;
		p->is_new = !(l4[13] & (NW_TCP_ACK | NW_TCP_RST));
		return NW_PARSED;
	}
	if (p->proto == IPPROTO_UDP) {
		if ((void *)(l4 + 8) > end)
			return NW_TRUNCATED;
		p->sport = ((__u16)l4[0] << 8) | l4[1];
		p->dport = ((__u16)l4[2] << 8) | l4[3];
		p->has_ports = 1;
		if (v6) {
			t->ipv6.sport = bpf_htons(p->sport);
			t->ipv6.dport = bpf_htons(p->dport);
		} else {
			t->ipv4.sport = bpf_htons(p->sport);
			t->ipv4.dport = bpf_htons(p->dport);
		}
		/* the socket lookup is left to the caller, for the packets that need it */
		p->is_new = 1;
		return NW_PARSED;
	}
	if (p->proto == IPPROTO_ICMP || p->proto == NW_IPPROTO_ICMPV6) {
		if ((void *)(l4 + 4) > end)
			return NW_TRUNCATED;
		p->is_new = icmp_request(p->proto, l4[0]);
		return NW_PARSED;
	}
	return NW_SKIP;
}

static __always_inline int parse(struct xdp_md *ctx, struct nw_pkt *p,
				 struct bpf_sock_tuple *tp)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u16 type;
	int i;

	if ((void *)(eth + 1) > end)
		return NW_SKIP;
	type = bpf_ntohs(eth->h_proto);
	for (i = 0; i < 2; i++) {
		if (type != NW_ETH_P_8021Q && type != NW_ETH_P_8021AD)
			break;
		__u8 *vlan = data + off;
		if ((void *)(vlan + 4) > end)
			return NW_SKIP;
		type = ((__u16)vlan[2] << 8) | vlan[3];
		off += 4;
	}

	if (type == NW_ETH_P_IP) {
		struct iphdr *ip = data + off;
		__u32 ihl;

		if ((void *)(ip + 1) > end)
			return NW_TRUNCATED;
		count(NW_XS_PACKETS);
		ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return NW_TRUNCATED;
		if (ip->frag_off & bpf_htons(0x1fff))
			return NW_SKIP; /* a later fragment: no transport header */
		mapped4(p->src, ip->saddr);
		mapped4(p->dst, ip->daddr);
		p->proto = ip->protocol;
		tp->ipv4.saddr = ip->saddr;
		tp->ipv4.daddr = ip->daddr;
		return nw_transport(ctx, p, off + ihl, tp, 0);
	}
	if (type == NW_ETH_P_IPV6) {
		struct ipv6hdr *ip6 = data + off;
		__u8 nh;

		if ((void *)(ip6 + 1) > end)
			return NW_TRUNCATED;
		count(NW_XS_PACKETS);
		copy16(p->src, (const __u8 *)&ip6->saddr);
		copy16(p->dst, (const __u8 *)&ip6->daddr);
		__builtin_memcpy(tp->ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(tp->ipv6.daddr, &ip6->daddr, 16);
		nh = ip6->nexthdr;
		off += sizeof(*ip6);
		for (i = 0; i < 6; i++) {
			__u8 *h;

			if (off > 512)
				return NW_TRUNCATED;
			h = data + off;
			if ((void *)(h + 8) > end)
				return NW_TRUNCATED;
			if (nh == 0 || nh == 43 || nh == 60) { /* hop-by-hop, routing, destination */
				nh = h[0];
				off += ((__u32)h[1] + 1) * 8;
			} else if (nh == 51) { /* authentication header */
				nh = h[0];
				off += ((__u32)h[1] + 2) * 4;
			} else if (nh == 44) { /* fragment */
				if ((((__u16)h[2] << 8) | h[3]) & 0xfff8)
					return NW_SKIP; /* a later fragment */
				nh = h[0];
				off += 8;
			} else {
				break;
			}
		}
		p->proto = nh;
		p->v6 = 1;
		return nw_transport(ctx, p, off, tp, 1);
	}
	return NW_SKIP;
}

static __always_inline struct nw_xdp_block *find_block(const __u8 *src, __u64 now)
{
	struct nw_xdp_block *b = bpf_map_lookup_elem(&nw_blocked, src);
	struct nw_lpm_key k = { .prefixlen = 128 };

	if (b) {
		if (!b->until_ns || now < b->until_ns)
			return b;
		bpf_map_delete_elem(&nw_blocked, src);
		count(NW_XS_EXPIRED);
	}
	copy16(k.addr, src);
	b = bpf_map_lookup_elem(&nw_blocknets, &k);
	if (b && b->until_ns && now >= b->until_ns)
		return 0; /* user space removes expired networks */
	return b;
}

static __always_inline int allowed(const __u8 *src)
{
	struct nw_lpm_key k = { .prefixlen = 128 };

	copy16(k.addr, src);
	return bpf_map_lookup_elem(&nw_allow, &k) != 0;
}

/* A 64-bit hash of (source, destination) for nw_first: multiply-xorshift over the words. */
static __always_inline __u64 key_hash(const struct nw_scan_key *k)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = 0x9e3779b97f4a7c15ULL;
	int i;

	for (i = 0; i < 4; i++) {
		h ^= w[i];
		h *= 0xff51afd7ed558ccdULL;
		h ^= h >> 33;
	}
	return h;
}

/*
 * The threshold: returns 1 when this packet crossed it and the source is now blocked.
 *
 * A global function (checked once by the verifier). The slot loop only assigns the values
 * it computes (live count, a free slot, the oldest slot) and never branches on them; they go
 * through the per-CPU scratch map before anything is decided on them, so the verifier sees
 * them as unknown there and can merge the paths through the loop instead of following
 * every combination of live and free slots.
 */
__noinline int nw_threshold(struct nw_pkt *p, __u64 now)
{
	struct nw_scan_key key;
	struct nw_scan_state *s;
	struct nw_scan_result *r;
	struct nw_xdp_event *ev;
	struct nw_xdp_cfg *cfg;
	__u32 zero = 0, live = 0, found = 0, hasfree = 0, freeslot = 0, oldest = 0, slot, i;
	__u32 mask = 0;
	__u64 oldest_ts = ~0ULL, window;

	if (!p)
		return 0;
	cfg = bpf_map_lookup_elem(&nw_xdp_cfg, &zero);
	r = bpf_map_lookup_elem(&nw_scratch, &zero);
	if (!cfg || !r || !cfg->scan_ports)
		return 0;
	if (allowed(p->src)) {
		count(NW_XS_ALLOWED);
		return 0;
	}
	count(NW_XS_ATTEMPTS);
	window = cfg->window_ns;
	copy16(key.src, p->src);
	copy16(key.dst, p->dst);
	s = bpf_map_lookup_elem(&nw_scan, &key);
	if (!s) {
		struct nw_scan_state init = {};
		struct nw_first *f;
		__u64 h = key_hash(&key);
		__u32 idx = h & (NW_FIRST_SLOTS - 1), tag = (h >> 32) | 1;

		f = bpf_map_lookup_elem(&nw_first, &idx);
		if (!f)
			return 0;
		if (f->tag != tag || (__s64)(now - f->ts) > (__s64)window || f->port == p->dport) {
			/* a first port (or the same one again) */
			f->tag = tag;
			f->port = p->dport;
			f->ts = now;
			return 0; /* one port: never a scan (scan_ports >= 1) */
		}
		/* a second distinct port: the source gets its slots, the first port in one */
		init.ts[0] = f->ts;
		init.port[0] = f->port;
		f->tag = 0;
		if (bpf_map_update_elem(&nw_scan, &key, &init, BPF_ANY)) {
			count(NW_XS_TRACK_FAILED);
			return 0;
		}
		s = bpf_map_lookup_elem(&nw_scan, &key);
		if (!s)
			return 0;
	}
	for (i = 0; i < NW_XDP_SLOTS; i++) {
		__u64 t = s->ts[i];

		if (t && (__s64)(now - t) <= (__s64)window) {
			live++;
			if (s->port[i] == p->dport) {
				s->ts[i] = now;
				found = 1;
			}
			if (t < oldest_ts) {
				oldest_ts = t;
				oldest = i;
			}
		} else {
			hasfree = 1;
			freeslot = i;
		}
	}
	r->live = live;
	r->found = found;
	r->hasfree = hasfree;
	r->freeslot = freeslot;
	r->oldest = oldest;
	barrier();
	if (r->found)
		return 0; /* a port already seen within the window */
	/* all slots live happens only when scan_ports >= SLOTS, which user space refuses */
	slot = (r->hasfree ? r->freeslot : r->oldest) & (NW_XDP_SLOTS - 1);
	s->ts[slot] = now;
	s->port[slot] = p->dport;
	if (r->live + r->hasfree <= cfg->scan_ports)
		return 0;

	/* crossed: block (unless only reporting), tell user space, start over */
	count(NW_XS_DETECTED);
	if (cfg->flags & NW_XDP_CFG_BLOCK) {
		struct nw_xdp_block nb = {
			.until_ns = cfg->block_ns ? now + cfg->block_ns : 0,
			.since_ns = now,
			.drops = 1,
			.flags = NW_XDP_BLOCK_AUTO,
		};

		bpf_map_update_elem(&nw_blocked, p->src, &nb, BPF_NOEXIST);
		count(NW_XS_AUTO_BLOCKS);
	}
	ev = bpf_ringbuf_reserve(&nw_xdp_events, sizeof(*ev), 0);
	if (ev) {
		copy16(ev->src, p->src);
		copy16(ev->dst, p->dst);
		ev->at_ns = now;
		ev->until_ns = (cfg->flags & NW_XDP_CFG_BLOCK) && cfg->block_ns ? now + cfg->block_ns : 0;
		ev->proto = p->proto;
		ev->flags = cfg->flags & NW_XDP_CFG_BLOCK;
		ev->_pad = 0;
		for (i = 0; i < NW_XDP_SLOTS; i++) {
			__u64 t = s->ts[i];

			ev->ports[i] = s->port[i];
			if (t && (__s64)(now - t) <= (__s64)window)
				mask |= 1U << i;
		}
		ev->live = mask;
		bpf_ringbuf_submit(ev, 0);
	} else {
		count(NW_XS_EVENTS_LOST);
	}
	bpf_map_delete_elem(&nw_scan, &key);
	return (cfg->flags & NW_XDP_CFG_BLOCK) ? 1 : 0;
}

SEC("xdp")
int netwarden(struct xdp_md *ctx)
{
	struct nw_pkt p = {};
	struct bpf_sock_tuple t = {};
	struct nw_xdp_block *b;
	struct nw_xdp_cfg *cfg;
	__u32 zero = 0;
	__u64 now;
	int r = parse(ctx, &p, &t), counted;

	if (r != NW_PARSED) {
		if (r == NW_TRUNCATED)
			count(NW_XS_UNPARSED);
		return XDP_PASS;
	}
	if (!p.is_new)
		return XDP_PASS;
	now = bpf_ktime_get_boot_ns();
	b = find_block(p.src, now);
	cfg = bpf_map_lookup_elem(&nw_xdp_cfg, &zero);
	counted = p.has_ports && cfg && cfg->scan_ports;
	if (!b && !counted)
		return XDP_PASS;
	/* UDP: only now, for a blocked or counted source, ask whether it is a reply */
	if (p.proto == IPPROTO_UDP && udp_to_connected(ctx, &t, p.v6))
		return XDP_PASS;
	count(NW_XS_NEW);
	if (b) {
		__sync_fetch_and_add(&b->drops, 1);
		count(NW_XS_DROP_BLOCKED);
		return XDP_DROP;
	}
	if (nw_threshold(&p, now)) {
		count(NW_XS_DROP_THRESHOLD);
		return XDP_DROP;
	}
	return XDP_PASS;
}
