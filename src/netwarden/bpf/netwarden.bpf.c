// SPDX-License-Identifier: GPL-2.0
/*
 * netwarden: exact process attribution at the socket hooks.
 *
 * Programs (attached by src/netwarden/capture/ebpf.py; cgroup ones on the cgroup v2 root):
 *
 *  sockops              TCP_CONNECT_CB: an outbound TCP flow, identity of the connecting task.
 *                       TCP_LISTEN_CB: remember the listener's process (by netns, address, port).
 *                       PASSIVE_ESTABLISHED_CB: an accepted TCP flow, owned by the listener's
 *                       process; a loopback one is the initiator's (already reported): ignored.
 *  cgroup/connect4/6,   UDP: remember the process using the socket (process context; the
 *  cgroup/sendmsg4/6,   packet hooks below may run elsewhere and must not trust `current`).
 *  cgroup/post_bind4/6
 *  cgroup/sock_create   raw IP and ICMP (ping) sockets: remember their creator.
 *  cgroup_skb/egress,   per-socket IP-layer bytes and packets (a GSO packet counts as its
 *  cgroup_skb/ingress   segments); datagram flows (UDP, raw, ICMP) are created here, one per
 *                       (socket, remote[, echo id]).
 *  tp_btf/inet_sock_set_state  a TCP socket closed: `end` with the final counters.
 *  cgroup/sock_release  a datagram socket released: its flows end.
 *  tp_btf/net_dev_queue      packet (AF_PACKET) sockets bypass the IP stack and the cgroup
 *  tp_btf/netif_receive_skb  hooks: their IP packets are seen as a device queues them (in the
 *                       sender's context) and the replies as a device receives them.
 *  tp_btf/tcp_send_reset, tp_btf/kfree_skb  inbound TCP SYN / UDP datagram to a closed port.
 *  iter/bpf_sk_storage_map  the TCP flows still open (at stop, or for a snapshot).
 *
 * Every record carries the socket's network namespace; with nw_netns set, other namespaces
 * are skipped before any work.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "netwarden.h"

#define AF_INET 2
#define AF_INET6 10
#define AF_PACKET 17
#define IPPROTO_ICMPV6 58
#define IFF_LOOPBACK 0x8
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

char LICENSE[] SEC("license") = "GPL";

/* Tests only: -DNW_TEST_REFUSE=1 makes the kernel refuse tcp_send_reset's program, =2 the
 * sockops one (an out-of-bounds context read), to check how a refused hook is reported. */
#ifndef NW_TEST_REFUSE
#define NW_TEST_REFUSE 0
#endif

/* set by user space before loading: the namespace to watch (0: all) */
const volatile __u32 nw_netns = 0;

/* when a packet socket last sent an IP packet (ns): replies are looked for only for a while
 * after, so that hosts without such senders pay one comparison per received packet */
__u64 nw_pkt_last = 0;
#define NW_PKT_WINDOW (120ULL * 1000000000ULL)

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by user space */
} nw_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_NHOOKS * NW_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} nw_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NW_CTL_N);
	__type(key, __u32);
	__type(value, __u64);
} nw_ctl SEC(".maps"); /* NW_CTL_MODE, NW_CTL_FLOWS, NW_CTL_WAKEUP */

/* per socket: its process, and for TCP the flow's counters */
struct nw_sock {
	struct nw_ident owner;
	struct nw_counters c;
	__u64 flow; /* TCP: this socket's flow, 0 when none */
	__u8 laddr[16]; /* the (first) flow's addresses and ports (gone from the socket at close) */
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u32 netns;
	__u8 state; /* NW_SK_* */
	__u8 dir;
	__u8 has_owner;
	__u8 flags;
	__u8 af;
	__u8 proto; /* datagram sockets: the first flow's IP protocol */
	__u8 _pad[2];
	__u32 nflows; /* datagram sockets: flows made on it (the first one's key is above) */
};
#define NW_SK_NONE 0
#define NW_SK_OPEN 1  /* a TCP flow is being counted and will be ended */
#define NW_SK_ENDED 2 /* its end was reported (by the state change or a flush) */

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct nw_sock);
} nw_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nw_flow_key);
	__type(value, struct nw_flow);
} nw_flows SEC(".maps");

/* processes that records were written for lately (the reader has them cached) */
struct nw_proc_key {
	__u32 tgid;
	__u32 _pad;
	__u64 start_boottime;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct nw_proc_key);
	__type(value, __u8);
} nw_seen SEC(".maps");

/* packet sockets' flows by their tuple seen from the local end: the flow's key (to count
 * the replies, which reach no socket of the flow) */
struct nw_tuple_key {
	__u32 netns;
	__u16 lport;
	__u16 rport;
	__u8 laddr[16];
	__u8 raddr[16];
	__u8 proto;
	__u8 _pad[7];
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct nw_tuple_key);
	__type(value, struct nw_flow_key);
} nw_pkt_tuples SEC(".maps");

/* listening TCP sockets: whose they are */
struct nw_listen_key {
	__u32 netns;
	__u16 port;
	__u16 _pad;
	__u8 addr[16];
};
struct nw_listener {
	struct nw_ident who;
	__u64 cookie;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nw_listen_key);
	__type(value, struct nw_listener);
} nw_listeners SEC(".maps");

/* the handshake of a connection being accepted, counted on the listener and the request
 * socket, until the accepted socket exists */
struct nw_hs_key {
	__u32 netns;
	__u16 lport;
	__u16 rport;
	__u8 laddr[16];
	__u8 raddr[16];
};
struct nw_hs {
	__u64 tx_bytes, rx_bytes, tx_pkts, rx_pkts, first_ns;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nw_hs_key);
	__type(value, struct nw_hs);
} nw_handshakes SEC(".maps");

/* UDP flows between two sockets of the same namespace, by the initiator's tuple (netns,
 * its address and port, the responder's): the initiator's socket cookie. The responder's
 * side of such a flow is neither reported nor counted (the initiator's flow has it all). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nw_hs_key);
	__type(value, __u64);
} nw_local_udp SEC(".maps");

/* ------------------------------------------------------------------ small helpers */

static __always_inline void stat_add(__u32 hook, __u32 what)
{
	__u32 k = hook * NW_NSTATS + what;
	__u64 *v = bpf_map_lookup_elem(&nw_stats, &k);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline __u64 next_flow(void)
{
	__u32 k = NW_CTL_FLOWS;
	__u64 *v = bpf_map_lookup_elem(&nw_ctl, &k);

	if (!v)
		return 0;
	return __sync_fetch_and_add(v, 1) + 1;
}

static __always_inline int netns_wanted(__u32 netns)
{
	return nw_netns == 0 || netns == nw_netns;
}

static __always_inline __u32 sk_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void set_v4(__u8 *a, __u32 addr)
{
	__u32 *w = (__u32 *)a;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = addr;
}

/* The identity of a task. */
static __always_inline void fill_ident_of(struct nw_ident *id, struct task_struct *t)
{
	struct task_struct *leader = BPF_CORE_READ(t, group_leader);

	id->tid = BPF_CORE_READ(t, pid);
	id->tgid = BPF_CORE_READ(t, tgid);
	id->ppid = BPF_CORE_READ(t, real_parent, tgid);
	id->uid = BPF_CORE_READ(t, cred, euid.val);
	id->gid = BPF_CORE_READ(t, cred, egid.val);
	id->_pad = 0;
	id->cgroup_id = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
	id->start_boottime = BPF_CORE_READ(leader, start_boottime);
	BPF_CORE_READ_STR_INTO(&id->comm, t, comm);
	BPF_CORE_READ_STR_INTO(&id->pcomm, leader, comm);
}

/* The identity of the running task. Only meaningful in process context. */
static __always_inline void fill_ident(struct nw_ident *id)
{
	fill_ident_of(id, (struct task_struct *)bpf_get_current_task());
}

/* No process known: only the socket's uid. */
static __always_inline void fill_uid_only(struct nw_ident *id, const struct sock *sk)
{
	__builtin_memset(id, 0, sizeof(*id));
	id->uid = BPF_CORE_READ(sk, sk_uid.val);
	id->gid = (__u32)-1;
}

/* The socket's addresses and ports (local and remote). */
static __always_inline __u16 sk_tuple(const struct sock *sk, __u8 *laddr, __u8 *raddr,
				      __u16 *lport, __u16 *rport)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family == AF_INET6) {
		bpf_probe_read_kernel(laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(raddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		set_v4(laddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		set_v4(raddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	}
	*lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	*rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return family;
}

/* Is the socket's route through a loopback device (the peer is on this host)? */
static __always_inline int sk_route_is_loopback(const struct sock *sk)
{
	struct dst_entry *dst = BPF_CORE_READ(sk, sk_dst_cache);
	unsigned int flags;

	if (!dst)
		return 0;
	flags = BPF_CORE_READ(dst, dev, flags);
	return (flags & IFF_LOOPBACK) != 0;
}

static __always_inline struct nw_record *reserve(__u32 hook)
{
	struct nw_record *r = bpf_ringbuf_reserve(&nw_events, sizeof(*r), 0);

	if (!r) {
		stat_add(hook, NW_S_LOST);
		return 0;
	}
	__builtin_memset(r, 0, sizeof(*r));
	r->hook = hook;
	r->ts_ns = bpf_ktime_get_ns();
	return r;
}

/* The reader is woken once NW_CTL_WAKEUP bytes wait (0: for every record); below that it
 * finds the records when it next looks (it looks every poll interval). A process's first
 * record wakes it at once, so that it reads /proc while a short-lived process is there. */
static __always_inline void submit(struct nw_record *r, __u32 hook)
{
	__u32 k = NW_CTL_WAKEUP;
	__u64 *wake = bpf_map_lookup_elem(&nw_ctl, &k);
	__u64 flags = 0;

	if (wake && *wake && bpf_ringbuf_query(&nw_events, BPF_RB_AVAIL_DATA) < *wake) {
		flags = BPF_RB_NO_WAKEUP;
		if (r->id.tgid) {
			struct nw_proc_key pk = {.tgid = r->id.tgid,
						 .start_boottime = r->id.start_boottime};
			__u8 one = 1;

			if (!bpf_map_lookup_elem(&nw_seen, &pk)) {
				bpf_map_update_elem(&nw_seen, &pk, &one, BPF_ANY);
				flags = BPF_RB_FORCE_WAKEUP;
			}
		}
	}
	bpf_ringbuf_submit(r, flags);
	stat_add(hook, NW_S_EVENTS);
}

/* A GSO packet counts as its segments, each with its own headers. */
static __always_inline void count(struct nw_counters *c, int egress, __u64 len, __u32 segs,
				  __u32 hdrlen, __u64 now)
{
	__u64 bytes = len;

	if (segs > 1)
		bytes += (__u64)(segs - 1) * hdrlen;
	else
		segs = 1;
	if (egress) {
		__sync_fetch_and_add(&c->tx_bytes, bytes);
		__sync_fetch_and_add(&c->tx_pkts, segs);
	} else {
		__sync_fetch_and_add(&c->rx_bytes, bytes);
		__sync_fetch_and_add(&c->rx_pkts, segs);
	}
	c->last_ns = now;
}

/* ------------------------------------------------------------------ TCP */

static __always_inline void tcp_connect(struct bpf_sock_ops *ctx)
{
	struct bpf_sock_ops_kern *k = bpf_cast_to_kern_ctx(ctx);
	struct sock *sk = k->sk;
	struct bpf_sock *bsk = ctx->sk;
	struct nw_sock *s;
	struct nw_record *r;
	__u32 netns;
	__u64 now;

	if (!sk || !bsk)
		return;
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return;
	stat_add(NW_H_TCP_CONNECT, NW_S_CALLS);
	s = bpf_sk_storage_get(&nw_socks, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		stat_add(NW_H_TCP_CONNECT, NW_S_ERRORS);
		return;
	}
	now = bpf_ktime_get_ns();
	fill_ident(&s->owner);
	s->has_owner = 1;
	__builtin_memset(&s->c, 0, sizeof(s->c));
	s->c.first_ns = now;
	s->c.last_ns = now;
	s->flow = next_flow();
	s->netns = netns;
	s->dir = sk_route_is_loopback(sk) ? NW_DIR_LOCAL : NW_DIR_OUT;
	s->flags = 0;
	s->af = sk_tuple(sk, s->laddr, s->raddr, &s->lport, &s->rport);
	s->state = NW_SK_OPEN;

	r = reserve(NW_H_TCP_CONNECT);
	if (!r)
		return;
	r->type = NW_REC_NEW;
	r->proto = IPPROTO_TCP;
	r->af = s->af;
	__builtin_memcpy(r->laddr, s->laddr, 16);
	__builtin_memcpy(r->raddr, s->raddr, 16);
	r->lport = s->lport;
	r->rport = s->rport;
	r->dir = s->dir;
	r->netns = netns;
	r->cookie = bpf_get_socket_cookie(ctx);
	r->flow = s->flow;
	r->id = s->owner;
	r->c = s->c;
	submit(r, NW_H_TCP_CONNECT);
}

static __always_inline void listen_key(const struct sock *sk, struct nw_listen_key *key,
				       __u32 netns)
{
	__u8 raddr[16];
	__u16 rport;

	__builtin_memset(key, 0, sizeof(*key));
	key->netns = netns;
	sk_tuple(sk, key->addr, raddr, &key->port, &rport);
}

static __always_inline void tcp_listen(struct bpf_sock_ops *ctx)
{
	struct bpf_sock_ops_kern *k = bpf_cast_to_kern_ctx(ctx);
	struct sock *sk = k->sk;
	struct nw_listen_key key;
	struct nw_listener l;
	__u32 netns;

	if (!sk)
		return;
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return;
	stat_add(NW_H_TCP_LISTEN, NW_S_CALLS);
	listen_key(sk, &key, netns);
	fill_ident(&l.who);
	l.cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&nw_listeners, &key, &l, BPF_ANY))
		stat_add(NW_H_TCP_LISTEN, NW_S_ERRORS);
}

static __always_inline struct nw_listener *find_listener(struct nw_listen_key *key)
{
	struct nw_listener *l = bpf_map_lookup_elem(&nw_listeners, key);
	__u32 *w = (__u32 *)key->addr;
	int v4 = w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);

	if (l)
		return l;
	if (v4) {
		/* 0.0.0.0 */
		w[3] = 0;
		l = bpf_map_lookup_elem(&nw_listeners, key);
		if (l)
			return l;
	}
	/* :: (also takes IPv4 on a dual-stack socket) */
	w[0] = 0;
	w[1] = 0;
	w[2] = 0;
	w[3] = 0;
	return bpf_map_lookup_elem(&nw_listeners, key);
}

static __always_inline void tcp_accept(struct bpf_sock_ops *ctx)
{
	struct bpf_sock_ops_kern *k = bpf_cast_to_kern_ctx(ctx);
	struct sock *sk = k->sk;
	struct bpf_sock *bsk = ctx->sk;
	struct nw_listen_key lkey;
	struct nw_hs_key hkey;
	struct nw_listener *l;
	struct nw_hs *hs;
	struct nw_sock *s;
	struct nw_record *r;
	__u32 netns;
	__u64 now;

	if (!sk || !bsk)
		return;
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return;
	stat_add(NW_H_TCP_ACCEPT, NW_S_CALLS);

	__builtin_memset(&hkey, 0, sizeof(hkey));
	hkey.netns = netns;
	sk_tuple(sk, hkey.laddr, hkey.raddr, &hkey.lport, &hkey.rport);
	hs = bpf_map_lookup_elem(&nw_handshakes, &hkey);

	/* Both ends on this host: the initiator's socket reports the flow. */
	if (sk_route_is_loopback(sk)) {
		if (hs)
			bpf_map_delete_elem(&nw_handshakes, &hkey);
		return;
	}

	s = bpf_sk_storage_get(&nw_socks, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		stat_add(NW_H_TCP_ACCEPT, NW_S_ERRORS);
		return;
	}
	now = bpf_ktime_get_ns();
	__builtin_memset(&s->c, 0, sizeof(s->c));
	s->c.first_ns = now;
	s->c.last_ns = now;
	if (hs) {
		s->c.tx_bytes = hs->tx_bytes;
		s->c.rx_bytes = hs->rx_bytes;
		s->c.tx_pkts = hs->tx_pkts;
		s->c.rx_pkts = hs->rx_pkts;
		if (hs->first_ns)
			s->c.first_ns = hs->first_ns;
		bpf_map_delete_elem(&nw_handshakes, &hkey);
	}
	__builtin_memset(&lkey, 0, sizeof(lkey));
	lkey.netns = netns;
	lkey.port = hkey.lport;
	__builtin_memcpy(lkey.addr, hkey.laddr, 16);
	l = find_listener(&lkey);
	if (l) {
		s->owner = l->who;
		s->flags = NW_F_LISTENER;
		s->has_owner = 1;
	} else {
		fill_uid_only(&s->owner, sk);
		s->flags = NW_F_NO_OWNER;
		s->has_owner = 0;
	}
	s->flow = next_flow();
	s->netns = netns;
	s->dir = NW_DIR_IN;
	s->af = BPF_CORE_READ(sk, __sk_common.skc_family);
	__builtin_memcpy(s->laddr, hkey.laddr, 16);
	__builtin_memcpy(s->raddr, hkey.raddr, 16);
	s->lport = hkey.lport;
	s->rport = hkey.rport;
	s->state = NW_SK_OPEN;

	r = reserve(NW_H_TCP_ACCEPT);
	if (!r)
		return;
	r->type = NW_REC_NEW;
	r->proto = IPPROTO_TCP;
	r->af = s->af;
	__builtin_memcpy(r->laddr, hkey.laddr, 16);
	__builtin_memcpy(r->raddr, hkey.raddr, 16);
	r->lport = hkey.lport;
	r->rport = hkey.rport;
	r->dir = NW_DIR_IN;
	r->flags = s->flags;
	r->netns = netns;
	r->cookie = bpf_get_socket_cookie(ctx);
	r->flow = s->flow;
	r->id = s->owner;
	r->c = s->c;
	submit(r, NW_H_TCP_ACCEPT);
}

SEC("sockops")
int nw_sockops(struct bpf_sock_ops *ctx)
{
	if (NW_TEST_REFUSE == 2)
		return ((volatile __u32 *)ctx)[1000];
	switch (ctx->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		tcp_connect(ctx);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		tcp_accept(ctx);
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		tcp_listen(ctx);
		break;
	}
	return 1;
}

static __always_inline void fill_end(struct nw_record *r, struct nw_sock *s, __u64 cookie)
{
	r->type = NW_REC_END;
	r->proto = IPPROTO_TCP;
	r->af = s->af;
	__builtin_memcpy(r->laddr, s->laddr, 16);
	__builtin_memcpy(r->raddr, s->raddr, 16);
	r->lport = s->lport;
	r->rport = s->rport;
	r->dir = s->dir;
	r->flags = s->flags;
	r->netns = s->netns;
	r->cookie = cookie;
	r->flow = s->flow;
	r->id = s->owner;
	r->c = s->c;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(nw_tcp_state, const struct sock *sk, const int oldstate, const int newstate)
{
	struct nw_sock *s;
	struct nw_record *r;
	__u32 netns;

	if (newstate != TCP_CLOSE || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return 0;
	stat_add(NW_H_TCP_STATE, NW_S_CALLS);
	if (oldstate == TCP_LISTEN) {
		struct nw_listen_key key;
		struct nw_listener *l;

		listen_key(sk, &key, netns);
		l = bpf_map_lookup_elem(&nw_listeners, &key);
		if (l && l->cookie == bpf_get_socket_cookie((void *)sk))
			bpf_map_delete_elem(&nw_listeners, &key);
		return 0;
	}
	s = bpf_sk_storage_get(&nw_socks, (void *)sk, 0, 0);
	if (!s || s->state != NW_SK_OPEN)
		return 0;
	s->state = NW_SK_ENDED;
	r = reserve(NW_H_TCP_STATE);
	if (!r)
		return 0;
	fill_end(r, s, bpf_get_socket_cookie((void *)sk));
	submit(r, NW_H_TCP_STATE);
	return 0;
}

/* ------------------------------------------------------------------ UDP identity */

static __always_inline int note_owner(struct bpf_sock_addr *ctx, __u32 hook)
{
	struct bpf_sock_addr_kern *k;
	struct bpf_sock *bsk = ctx->sk;
	struct nw_sock *s;
	__u64 pidtgid;
	__u32 netns;

	if (!bsk || ctx->protocol != IPPROTO_UDP)
		return 1;
	k = bpf_cast_to_kern_ctx(ctx);
	if (!k->sk)
		return 1;
	netns = sk_netns(k->sk);
	if (!netns_wanted(netns))
		return 1;
	stat_add(hook, NW_S_CALLS);
	s = bpf_sk_storage_get(&nw_socks, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		stat_add(hook, NW_S_ERRORS);
		return 1;
	}
	pidtgid = bpf_get_current_pid_tgid();
	if (s->has_owner && s->owner.tgid == (__u32)(pidtgid >> 32) &&
	    s->owner.tid == (__u32)pidtgid)
		return 1;
	fill_ident(&s->owner);
	s->has_owner = 1;
	s->netns = netns;
	return 1;
}

SEC("cgroup/connect4")
int nw_connect4(struct bpf_sock_addr *ctx)
{
	return note_owner(ctx, NW_H_CONNECT4);
}

SEC("cgroup/connect6")
int nw_connect6(struct bpf_sock_addr *ctx)
{
	return note_owner(ctx, NW_H_CONNECT6);
}

SEC("cgroup/sendmsg4")
int nw_sendmsg4(struct bpf_sock_addr *ctx)
{
	return note_owner(ctx, NW_H_SENDMSG4);
}

SEC("cgroup/sendmsg6")
int nw_sendmsg6(struct bpf_sock_addr *ctx)
{
	return note_owner(ctx, NW_H_SENDMSG6);
}

static __always_inline int note_bind(struct bpf_sock *ctx, __u32 hook)
{
	struct sock *sk;
	struct nw_sock *s;
	__u32 netns;

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	sk = bpf_cast_to_kern_ctx(ctx);
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return 1;
	stat_add(hook, NW_S_CALLS);
	s = bpf_sk_storage_get(&nw_socks, ctx, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		stat_add(hook, NW_S_ERRORS);
		return 1;
	}
	fill_ident(&s->owner);
	s->has_owner = 1;
	s->netns = netns;
	return 1;
}

SEC("cgroup/post_bind4")
int nw_bind4(struct bpf_sock *ctx)
{
	return note_bind(ctx, NW_H_BIND4);
}

SEC("cgroup/post_bind6")
int nw_bind6(struct bpf_sock *ctx)
{
	return note_bind(ctx, NW_H_BIND6);
}

/* raw IP and ICMP (ping) sockets: their creator (process context) */
static __always_inline int is_raw_or_ping(__u32 type, __u32 protocol)
{
	return type == SOCK_RAW ||
	       (type == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6));
}

SEC("cgroup/sock_create")
int nw_sock_create(struct bpf_sock *ctx)
{
	struct nw_sock *s;
	__u32 netns;

	if (!is_raw_or_ping(ctx->type, ctx->protocol))
		return 1;
	netns = sk_netns(bpf_cast_to_kern_ctx(ctx));
	if (!netns_wanted(netns))
		return 1;
	stat_add(NW_H_SOCK_CREATE, NW_S_CALLS);
	s = bpf_sk_storage_get(&nw_socks, ctx, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		stat_add(NW_H_SOCK_CREATE, NW_S_ERRORS);
		return 1;
	}
	fill_ident(&s->owner);
	s->has_owner = 1;
	s->netns = netns;
	return 1;
}

/* ------------------------------------------------------------------ datagram flows */

/* A datagram flow's record (a `new`, or an `end` at the socket's release). */
static __always_inline void fill_flow(struct nw_record *r, __u8 type, const struct nw_flow_key *key,
				      const struct nw_flow *f, __u8 af, __u32 netns,
				      const __u8 *laddr, __u16 lport)
{
	r->type = type;
	r->proto = key->proto;
	r->af = af;
	r->dir = f->dir;
	r->flags = f->flags;
	r->netns = netns;
	r->cookie = key->cookie;
	r->flow = f->flow;
	__builtin_memcpy(r->laddr, laddr, 16);
	__builtin_memcpy(r->raddr, key->raddr, 16);
	r->lport = lport;
	r->rport = key->rport;
	r->id = f->who;
	r->c = f->c;
}

/* A datagram socket (UDP, raw, ICMP) goes: its first flow ends here (most sockets have only
 * one); when it had more, user space is told to end the others (it knows them from their
 * `new` records). */
SEC("cgroup/sock_release")
int nw_release(struct bpf_sock *ctx)
{
	struct nw_flow_key key;
	struct nw_flow *f;
	struct nw_sock *s;
	struct nw_record *r;
	__u64 cookie;

	if (ctx->type == SOCK_STREAM)
		return 1;
	s = bpf_sk_storage_get(&nw_socks, ctx, 0, 0);
	if (!s || !s->nflows || !netns_wanted(s->netns))
		return 1;
	stat_add(NW_H_RELEASE, NW_S_CALLS);
	cookie = bpf_get_socket_cookie(ctx);
	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = cookie;
	__builtin_memcpy(key.raddr, s->raddr, 16);
	key.rport = s->rport;
	key.proto = s->proto;
	f = bpf_map_lookup_elem(&nw_flows, &key);
	if (f) {
		r = reserve(NW_H_RELEASE);
		if (r) {
			fill_flow(r, NW_REC_END, &key, f, s->af, s->netns, s->laddr, s->lport);
			submit(r, NW_H_RELEASE);
		}
		if (f->dir == NW_DIR_LOCAL && key.proto == IPPROTO_UDP) {
			struct nw_hs_key lt;

			__builtin_memset(&lt, 0, sizeof(lt));
			lt.netns = s->netns;
			__builtin_memcpy(lt.laddr, s->laddr, 16);
			__builtin_memcpy(lt.raddr, s->raddr, 16);
			lt.lport = s->lport;
			lt.rport = s->rport;
			bpf_map_delete_elem(&nw_local_udp, &lt);
		}
		bpf_map_delete_elem(&nw_flows, &key);
	}
	if (s->nflows < 2)
		return 1;
	r = reserve(NW_H_RELEASE);
	if (!r)
		return 1;
	r->type = NW_REC_RELEASE;
	r->proto = s->proto;
	r->af = ctx->family;
	r->netns = s->netns;
	r->cookie = cookie;
	submit(r, NW_H_RELEASE);
	return 1;
}

/* ------------------------------------------------------------------ packets */

#define NW_ECHO_REQUEST 1
#define NW_ECHO_REPLY 2

struct nw_pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* ports; ICMP: the echo identifier of an echo, else the message type */
	__u16 dport;
	__u32 hdrlen; /* IP + transport header */
	__u8 proto;
	__u8 tcpflags;
	__u8 echo; /* NW_ECHO_* for an ICMP echo request or reply */
	__u8 af;
};

static __always_inline int has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE ||
	       proto == IPPROTO_SCTP;
}

/* How many bytes of the transport header parse_l4 wants: 14 for TCP (flags, header
 * length), 8 for the others it knows, 0 for protocols it leaves alone. */
static __always_inline __u32 l4_want(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return 14;
	if (has_ports(proto) || proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
		return 8;
	return 0;
}

/* The transport header's start `t` (l4_want bytes) at offset `thoff`: ports, or ICMP's echo
 * identifier or message type. */
static __always_inline void parse_l4(struct nw_pkt *p, const __u8 *t, __u32 thoff)
{
	if (has_ports(p->proto)) {
		p->sport = ((__u16)t[0] << 8) | t[1];
		p->dport = ((__u16)t[2] << 8) | t[3];
		p->hdrlen = thoff + 8;
		if (p->proto == IPPROTO_TCP) {
			p->hdrlen = thoff + (t[12] >> 4) * 4;
			p->tcpflags = t[13];
		}
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		__u8 req = p->proto == IPPROTO_ICMP ? 8 : 128;
		__u8 rep = p->proto == IPPROTO_ICMP ? 0 : 129;

		p->hdrlen = thoff + 8;
		if (t[0] == req || t[0] == rep) {
			p->echo = t[0] == req ? NW_ECHO_REQUEST : NW_ECHO_REPLY;
			p->sport = ((__u16)t[4] << 8) | t[5];
		} else {
			p->sport = t[0];
		}
		p->dport = p->sport;
	}
}

/* Parse the IP and transport headers of a packet at the cgroup hooks (data = IP header). */
static __always_inline int parse_skb(struct __sk_buff *skb, struct sk_buff *kskb,
				     struct nw_pkt *p)
{
	__u8 vihl;
	__u32 thoff, want;
	__u8 t[14];

	if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
		return -1;
	if (vihl >> 4 == 4) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		p->proto = ip.protocol;
		set_v4(p->saddr, ip.saddr);
		set_v4(p->daddr, ip.daddr);
		thoff = ip.ihl * 4;
		p->af = AF_INET;
	} else if (vihl >> 4 == 6) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		p->proto = ip6.nexthdr;
		thoff = (__u32)BPF_CORE_READ(kskb, transport_header) -
			(__u32)BPF_CORE_READ(kskb, network_header);
		if (thoff < 40 || thoff > 512)
			thoff = 40;
		p->af = AF_INET6;
	} else {
		return -1;
	}
	p->hdrlen = thoff;
	want = l4_want(p->proto);
	if (want == 14) {
		if (bpf_skb_load_bytes(skb, thoff, t, 14))
			return -1;
	} else if (want == 8) {
		if (bpf_skb_load_bytes(skb, thoff, t, 8))
			return -1;
	} else {
		return 0;
	}
	parse_l4(p, t, thoff);
	return 0;
}

/* The same from kernel memory (tracing programs): `ip` points at the IP header. */
static __always_inline int parse_ptr(const unsigned char *ip, struct nw_pkt *p)
{
	__u8 vihl;
	__u32 thoff, want;
	__u8 t[14];

	if (bpf_probe_read_kernel(&vihl, 1, ip))
		return -1;
	if (vihl >> 4 == 4) {
		struct iphdr h;

		if (bpf_probe_read_kernel(&h, sizeof(h), ip))
			return -1;
		p->proto = h.protocol;
		set_v4(p->saddr, h.saddr);
		set_v4(p->daddr, h.daddr);
		thoff = h.ihl * 4;
		p->af = AF_INET;
	} else if (vihl >> 4 == 6) {
		struct ipv6hdr h6;

		if (bpf_probe_read_kernel(&h6, sizeof(h6), ip))
			return -1;
		__builtin_memcpy(p->saddr, &h6.saddr, 16);
		__builtin_memcpy(p->daddr, &h6.daddr, 16);
		p->proto = h6.nexthdr;
		thoff = 40;
		p->af = AF_INET6;
	} else {
		return -1;
	}
	p->hdrlen = thoff;
	want = l4_want(p->proto);
	if (want == 14) {
		if (bpf_probe_read_kernel(t, 14, ip + thoff))
			return -1;
	} else if (want == 8) {
		if (bpf_probe_read_kernel(t, 8, ip + thoff))
			return -1;
	} else {
		return 0;
	}
	parse_l4(p, t, thoff);
	return 0;
}

static __always_inline __u32 skb_segs(struct __sk_buff *skb)
{
	__u32 segs = skb->gso_segs;

	return segs ? segs : 1;
}

/* A packet of a connection being accepted (on the listener or the request socket). */
static __always_inline void handshake(struct __sk_buff *skb, struct sk_buff *kskb,
				      __u32 netns, int egress)
{
	struct nw_hs_key key;
	struct nw_pkt p;
	struct nw_hs *hs;

	__builtin_memset(&p, 0, sizeof(p));
	if (parse_skb(skb, kskb, &p) || p.proto != IPPROTO_TCP)
		return;
	__builtin_memset(&key, 0, sizeof(key));
	key.netns = netns;
	if (egress) {
		__builtin_memcpy(key.laddr, p.saddr, 16);
		__builtin_memcpy(key.raddr, p.daddr, 16);
		key.lport = p.sport;
		key.rport = p.dport;
	} else {
		__builtin_memcpy(key.laddr, p.daddr, 16);
		__builtin_memcpy(key.raddr, p.saddr, 16);
		key.lport = p.dport;
		key.rport = p.sport;
	}
	hs = bpf_map_lookup_elem(&nw_handshakes, &key);
	if (!hs) {
		struct nw_hs zero = {};

		/* only a SYN starts one */
		if (egress || (p.tcpflags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
			return;
		zero.first_ns = bpf_ktime_get_ns();
		bpf_map_update_elem(&nw_handshakes, &key, &zero, BPF_ANY);
		hs = bpf_map_lookup_elem(&nw_handshakes, &key);
		if (!hs)
			return;
	}
	if (egress) {
		__sync_fetch_and_add(&hs->tx_bytes, skb->len);
		__sync_fetch_and_add(&hs->tx_pkts, 1);
	} else {
		__sync_fetch_and_add(&hs->rx_bytes, skb->len);
		__sync_fetch_and_add(&hs->rx_pkts, 1);
	}
}

/* Put a new flow in the table and report it; 0 when it is in (or another CPU made it first:
 * counted there), -1 on failure. The socket's storage `s`, when given, remembers the
 * socket's first flow (its release ends it). */
static __always_inline int add_flow(struct nw_flow_key *key, struct nw_flow *nf,
				    struct nw_sock *s, const struct nw_pkt *p, __u32 netns,
				    int egress, __u64 len, __u32 segs, __u32 hook)
{
	struct nw_flow *f;
	struct nw_record *r;
	const __u8 *laddr = egress ? p->saddr : p->daddr;
	__u16 lport = egress ? p->sport : p->dport;

	nf->flow = next_flow();
	if (bpf_map_update_elem(&nw_flows, key, nf, BPF_NOEXIST)) {
		f = bpf_map_lookup_elem(&nw_flows, key);
		if (!f)
			return -1;
		count(&f->c, egress, len, segs, p->hdrlen, nf->c.last_ns);
		return 0;
	}
	if (s && __sync_fetch_and_add(&s->nflows, 1) == 0) {
		s->af = p->af;
		s->proto = key->proto;
		__builtin_memcpy(s->raddr, key->raddr, 16);
		__builtin_memcpy(s->laddr, laddr, 16);
		s->rport = key->rport;
		s->lport = lport;
	}
	r = reserve(hook);
	if (!r)
		return 0;
	fill_flow(r, NW_REC_NEW, key, nf, p->af, netns, laddr, lport);
	submit(r, hook);
	return 0;
}

static __always_inline void udp_packet(struct __sk_buff *skb, struct sk_buff *kskb,
				       struct bpf_sock *bsk, const struct sock *sk, __u32 netns,
				       int egress, __u32 hook)
{
	struct nw_flow_key key;
	struct nw_flow *f;
	struct nw_flow nf;
	struct nw_sock *s;
	struct nw_pkt p;
	struct nw_hs_key lt;
	unsigned int devflags;
	__u64 now = bpf_ktime_get_ns();
	int lo;

	__builtin_memset(&p, 0, sizeof(p));
	if (parse_skb(skb, kskb, &p) || p.proto != IPPROTO_UDP)
		return;
	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = bpf_get_socket_cookie(skb);
	__builtin_memcpy(key.raddr, egress ? p.daddr : p.saddr, 16);
	key.rport = egress ? p.dport : p.sport;
	key.proto = IPPROTO_UDP;
	f = bpf_map_lookup_elem(&nw_flows, &key);
	if (f) {
		count(&f->c, egress, skb->len, skb_segs(skb), p.hdrlen, now);
		return;
	}
	devflags = BPF_CORE_READ(kskb, dev, flags);
	lo = (devflags & IFF_LOOPBACK) != 0;
	if (lo) {
		/* the responder's side of a flow whose initiator is in this namespace? */
		__u64 *ic;

		__builtin_memset(&lt, 0, sizeof(lt));
		lt.netns = netns;
		__builtin_memcpy(lt.laddr, egress ? p.daddr : p.saddr, 16);
		__builtin_memcpy(lt.raddr, egress ? p.saddr : p.daddr, 16);
		lt.lport = egress ? p.dport : p.sport;
		lt.rport = egress ? p.sport : p.dport;
		ic = bpf_map_lookup_elem(&nw_local_udp, &lt);
		if (ic) {
			struct nw_flow_key ik;

			__builtin_memset(&ik, 0, sizeof(ik));
			ik.cookie = *ic;
			__builtin_memcpy(ik.raddr, lt.raddr, 16);
			ik.rport = lt.rport;
			ik.proto = IPPROTO_UDP;
			if (bpf_map_lookup_elem(&nw_flows, &ik))
				return;
		}
	}
	__builtin_memset(&nf, 0, sizeof(nf));
	s = bpf_sk_storage_get(&nw_socks, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		stat_add(hook, NW_S_ERRORS);
		return;
	}
	if (s->has_owner) {
		nf.who = s->owner;
	} else if (egress) {
		/* a UDP send runs in the sender's context */
		fill_ident(&nf.who);
	} else {
		fill_uid_only(&nf.who, sk);
		nf.flags = NW_F_NO_OWNER;
	}
	s->netns = netns;
	if (lo)
		nf.dir = egress ? NW_DIR_LOCAL : NW_DIR_IN;
	else
		nf.dir = egress ? NW_DIR_OUT : NW_DIR_IN;
	if (!egress && lo)
		nf.flags |= NW_F_HIDDEN; /* from a local socket we do not know: not reported */
	nf.c.first_ns = now;
	count(&nf.c, egress, skb->len, skb_segs(skb), p.hdrlen, now);
	if (add_flow(&key, &nf, s, &p, netns, egress, skb->len, skb_segs(skb), hook))
		return;
	if (egress && lo) {
		__builtin_memset(&lt, 0, sizeof(lt));
		lt.netns = netns;
		__builtin_memcpy(lt.laddr, p.saddr, 16);
		__builtin_memcpy(lt.raddr, p.daddr, 16);
		lt.lport = p.sport;
		lt.rport = p.dport;
		bpf_map_update_elem(&nw_local_udp, &lt, &key.cookie, BPF_ANY);
	}
}

/* A raw IP or ICMP (ping) socket's packet. Such a socket receives a copy of every packet of
 * its protocol: flows start at a send only, and a received packet counts toward the flow
 * of this socket with that remote (and echo identifier); an echo flow counts replies only.
 * Sockets without an owner are the kernel's own (ICMP replies, resets): not flows. */
static __always_inline void raw_packet(struct __sk_buff *skb, struct sk_buff *kskb,
				       struct bpf_sock *bsk, __u32 netns, int egress, __u32 hook)
{
	struct nw_flow_key key;
	struct nw_flow *f;
	struct nw_flow nf;
	struct nw_sock *s;
	struct nw_pkt p;
	__u64 now;

	s = bpf_sk_storage_get(&nw_socks, bsk, 0, 0);
	if (!s || !s->has_owner)
		return;
	__builtin_memset(&p, 0, sizeof(p));
	if (parse_skb(skb, kskb, &p))
		return;
	now = bpf_ktime_get_ns();
	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = bpf_get_socket_cookie(skb);
	__builtin_memcpy(key.raddr, egress ? p.daddr : p.saddr, 16);
	key.rport = egress ? p.dport : p.sport;
	key.proto = p.proto;
	f = bpf_map_lookup_elem(&nw_flows, &key);
	if (f) {
		if (!egress && (f->flags & NW_F_ECHO) && p.echo != NW_ECHO_REPLY)
			return;
		count(&f->c, egress, skb->len, skb_segs(skb), p.hdrlen, now);
		return;
	}
	if (!egress)
		return;
	__builtin_memset(&nf, 0, sizeof(nf));
	nf.who = s->owner;
	nf.dir = (BPF_CORE_READ(kskb, dev, flags) & IFF_LOOPBACK) ? NW_DIR_LOCAL : NW_DIR_OUT;
	nf.flags = NW_F_RAW | (p.echo == NW_ECHO_REQUEST ? NW_F_ECHO : 0);
	nf.c.first_ns = now;
	count(&nf.c, 1, skb->len, skb_segs(skb), p.hdrlen, now);
	add_flow(&key, &nf, s, &p, netns, 1, skb->len, skb_segs(skb), hook);
}

static __always_inline int on_packet(struct __sk_buff *skb, int egress)
{
	__u32 hook = egress ? NW_H_EGRESS : NW_H_INGRESS;
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct sock *sk = kskb->sk;
	struct bpf_sock *bsk;
	struct nw_sock *s;
	__u32 netns;
	__u16 proto;

	if (!sk)
		return 1;
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return 1;
	stat_add(hook, NW_S_CALLS);
	bsk = skb->sk;
	if (!bsk)
		return 1;
	proto = BPF_CORE_READ(sk, sk_protocol);
	bsk = bpf_sk_fullsock(bsk);
	if (!bsk)
		return 1;
	if (is_raw_or_ping(bsk->type, proto)) {
		raw_packet(skb, kskb, bsk, netns, egress, hook);
	} else if (proto == IPPROTO_TCP) {
		__u32 hdrlen;

		if (bsk->state == BPF_TCP_LISTEN) {
			/* the SYN and the handshake's last ACK in, the SYN-ACK out (the program
			 * runs with the listener as the socket of a request socket's packet) */
			handshake(skb, kskb, netns, egress);
			return 1;
		}
		s = bpf_sk_storage_get(&nw_socks, bsk, 0, 0);
		if (!s || s->state != NW_SK_OPEN)
			return 1;
		hdrlen = 0;
		if (skb->gso_segs > 1) {
			struct nw_pkt p;

			__builtin_memset(&p, 0, sizeof(p));
			if (parse_skb(skb, kskb, &p) == 0)
				hdrlen = p.hdrlen;
		}
		count(&s->c, egress, skb->len, skb_segs(skb), hdrlen, bpf_ktime_get_ns());
	} else if (proto == IPPROTO_UDP) {
		udp_packet(skb, kskb, bsk, sk, netns, egress, hook);
	}
	return 1;
}

SEC("cgroup_skb/egress")
int nw_egress(struct __sk_buff *skb)
{
	return on_packet(skb, 1);
}

SEC("cgroup_skb/ingress")
int nw_ingress(struct __sk_buff *skb)
{
	return on_packet(skb, 0);
}

/* ------------------------------------------------------------------ packet sockets */

/* A GSO packet's segment count from a kernel sk_buff (1 for others). */
static __always_inline __u32 kskb_segs(const struct sk_buff *skb)
{
	struct skb_shared_info *sh;
	__u16 segs;

	sh = (struct skb_shared_info *)(BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, end));
	segs = BPF_CORE_READ(sh, gso_segs);
	return segs ? segs : 1;
}

/* A packet socket's identity in place of its cookie (the cookie helper does not take the
 * socket of a traced sk_buff): its inode number (as in /proc/PID/fd), with the top bit set
 * so that it never equals a cookie. */
static __always_inline __u64 packet_sock_id(const struct sock *sk)
{
	struct socket_alloc *sa = (struct socket_alloc *)BPF_CORE_READ(sk, sk_socket);

	if (!sa)
		return 1ULL << 63;
	return (1ULL << 63) | BPF_CORE_READ(sa, vfs_inode.i_ino);
}

/* An IP packet a packet socket sends, as a device queues it: the sender's process is
 * running (packet sockets transmit in the sending call). */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(nw_dev_queue, struct sk_buff *skb)
{
	struct sock *sk = skb->sk;
	struct net_device *dev;
	unsigned char *data;
	struct nw_flow_key key;
	struct nw_tuple_key tk;
	struct nw_flow *f;
	struct nw_flow nf;
	struct nw_pkt p;
	__u32 netns, l2, len, segs;
	__u16 etype;
	__u64 now;

	if (!sk || sk->__sk_common.skc_family != AF_PACKET)
		return 0;
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return 0;
	stat_add(NW_H_DEV_QUEUE, NW_S_CALLS);
	dev = skb->dev;
	if (!dev)
		return 0;
	data = skb->data;
	len = skb->len;
	/* the link-layer header the packet starts with */
	if (dev->hard_header_len == ETH_HLEN) {
		l2 = ETH_HLEN;
		if (bpf_probe_read_kernel(&etype, 2, data + 12))
			return 0;
		if (etype == bpf_htons(ETH_P_8021Q) || etype == bpf_htons(ETH_P_8021AD)) {
			l2 += 4;
			if (bpf_probe_read_kernel(&etype, 2, data + 16))
				return 0;
		}
	} else if (dev->hard_header_len == 0) {
		l2 = 0;
		etype = skb->protocol;
	} else {
		return 0;
	}
	if ((etype != bpf_htons(ETH_P_IP) && etype != bpf_htons(ETH_P_IPV6)) || len <= l2)
		return 0;
	__builtin_memset(&p, 0, sizeof(p));
	if (parse_ptr(data + l2, &p))
		return 0;
	now = bpf_ktime_get_ns();
	nw_pkt_last = now;
	len -= l2;
	segs = kskb_segs(skb);
	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = packet_sock_id(sk);
	__builtin_memcpy(key.raddr, p.daddr, 16);
	key.rport = p.dport;
	key.proto = p.proto;
	f = bpf_map_lookup_elem(&nw_flows, &key);
	if (f) {
		count(&f->c, 1, len, segs, p.hdrlen, now);
		return 0;
	}
	__builtin_memset(&nf, 0, sizeof(nf));
	fill_ident(&nf.who);
	nf.dir = (dev->flags & IFF_LOOPBACK) ? NW_DIR_LOCAL : NW_DIR_OUT;
	nf.flags = NW_F_PACKET | (p.echo == NW_ECHO_REQUEST ? NW_F_ECHO : 0);
	nf.c.first_ns = now;
	count(&nf.c, 1, len, segs, p.hdrlen, now);
	if (add_flow(&key, &nf, 0, &p, netns, 1, len, segs, NW_H_DEV_QUEUE))
		return 0;
	__builtin_memset(&tk, 0, sizeof(tk));
	tk.netns = netns;
	__builtin_memcpy(tk.laddr, p.saddr, 16);
	__builtin_memcpy(tk.raddr, p.daddr, 16);
	tk.lport = p.sport;
	tk.rport = p.dport;
	tk.proto = p.proto;
	if (bpf_map_update_elem(&nw_pkt_tuples, &tk, &key, BPF_ANY))
		stat_add(NW_H_DEV_QUEUE, NW_S_ERRORS);
	return 0;
}

/* A received IP packet that answers a packet socket's flow (it reaches no socket of the
 * flow: the IP stack takes it, or drops it). Looked for only while such senders are active. */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(nw_dev_recv, struct sk_buff *skb)
{
	struct nw_flow_key *key;
	struct nw_tuple_key tk;
	struct net_device *dev;
	struct nw_flow *f;
	struct nw_pkt p;
	__u64 last = nw_pkt_last, now;
	__u16 etype;
	__u32 netns;

	if (!last)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - last > NW_PKT_WINDOW)
		return 0;
	etype = skb->protocol;
	if (etype != bpf_htons(ETH_P_IP) && etype != bpf_htons(ETH_P_IPV6))
		return 0;
	dev = skb->dev;
	if (!dev)
		return 0;
	netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	if (!netns_wanted(netns))
		return 0;
	__builtin_memset(&p, 0, sizeof(p));
	if (parse_ptr(skb->data, &p))
		return 0;
	__builtin_memset(&tk, 0, sizeof(tk));
	tk.netns = netns;
	__builtin_memcpy(tk.laddr, p.daddr, 16);
	__builtin_memcpy(tk.raddr, p.saddr, 16);
	tk.lport = p.dport;
	tk.rport = p.sport;
	tk.proto = p.proto;
	key = bpf_map_lookup_elem(&nw_pkt_tuples, &tk);
	if (!key)
		return 0;
	stat_add(NW_H_DEV_RECV, NW_S_CALLS);
	f = bpf_map_lookup_elem(&nw_flows, key);
	if (!f) {
		bpf_map_delete_elem(&nw_pkt_tuples, &tk);
		return 0;
	}
	if ((f->flags & NW_F_ECHO) && p.echo != NW_ECHO_REPLY)
		return 0;
	count(&f->c, 0, skb->len, kskb_segs(skb), p.hdrlen, now);
	return 0;
}

/* Is a received packet a reply to a packet socket's flow (counted there, not a probe)? */
static __always_inline int is_packet_reply(__u32 netns, __u8 proto, const __u8 *saddr,
					   const __u8 *daddr, __u16 sport, __u16 dport)
{
	struct nw_tuple_key tk;
	__u64 last = nw_pkt_last;

	if (!last || bpf_ktime_get_ns() - last > NW_PKT_WINDOW)
		return 0;
	__builtin_memset(&tk, 0, sizeof(tk));
	tk.netns = netns;
	__builtin_memcpy(tk.laddr, daddr, 16);
	__builtin_memcpy(tk.raddr, saddr, 16);
	tk.lport = dport;
	tk.rport = sport;
	tk.proto = proto;
	return bpf_map_lookup_elem(&nw_pkt_tuples, &tk) != 0;
}

/* ------------------------------------------------------------------ probes */

/* An inbound packet to a closed port, read from a kernel sk_buff (tracing context). */
static __always_inline void probe(const struct sk_buff *skb, __u8 want_proto, __u32 hook)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	struct nw_record *r;
	__u8 saddr[16], daddr[16];
	__u16 ports[2];
	__u8 vihl, proto, flags = 0;
	__u32 netns, len;
	__u8 af;

	if (!head || !dev)
		return;
	netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	if (!netns_wanted(netns))
		return;
	if (bpf_probe_read_kernel(&vihl, 1, head + nh))
		return;
	if (vihl >> 4 == 4) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return;
		proto = ip.protocol;
		set_v4(saddr, ip.saddr);
		set_v4(daddr, ip.daddr);
		th = nh + ip.ihl * 4;
		len = bpf_ntohs(ip.tot_len);
		af = AF_INET;
	} else if (vihl >> 4 == 6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		proto = ip6.nexthdr;
		__builtin_memcpy(saddr, &ip6.saddr, 16);
		__builtin_memcpy(daddr, &ip6.daddr, 16);
		if (th <= nh)
			th = nh + 40;
		len = 40 + bpf_ntohs(ip6.payload_len);
		af = AF_INET6;
	} else {
		return;
	}
	if (proto != want_proto)
		return;
	if (bpf_probe_read_kernel(ports, 4, head + th))
		return;
	if (proto == IPPROTO_TCP) {
		if (bpf_probe_read_kernel(&flags, 1, head + th + 13))
			return;
		/* a connection attempt: SYN without ACK */
		if ((flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
			return;
	}
	if (is_packet_reply(netns, proto, saddr, daddr, bpf_ntohs(ports[0]), bpf_ntohs(ports[1])))
		return;
	stat_add(hook, NW_S_CALLS);
	r = reserve(hook);
	if (!r)
		return;
	r->type = NW_REC_PROBE;
	r->proto = proto;
	r->af = af;
	r->dir = (BPF_CORE_READ(dev, flags) & IFF_LOOPBACK) ? NW_DIR_LOCAL : NW_DIR_IN;
	r->netns = netns;
	__builtin_memcpy(r->laddr, daddr, 16);
	__builtin_memcpy(r->raddr, saddr, 16);
	r->lport = bpf_ntohs(ports[1]);
	r->rport = bpf_ntohs(ports[0]);
	r->c.rx_pkts = 1;
	r->c.rx_bytes = len;
	r->c.first_ns = r->ts_ns;
	r->c.last_ns = r->ts_ns;
	submit(r, hook);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(nw_tcp_reset, const struct sock *sk, const struct sk_buff *skb)
{
	if (NW_TEST_REFUSE == 1)
		return ((volatile __u64 *)ctx)[63];
	/* with a socket it is a reset of an existing connection, not a probe */
	if (sk || !skb)
		return 0;
	probe(skb, IPPROTO_TCP, NW_H_TCP_RESET);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(nw_skb_drop, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	if (reason != SKB_DROP_REASON_NO_SOCKET || !skb)
		return 0;
	probe(skb, IPPROTO_UDP, NW_H_SKB_DROP);
	return 0;
}

/* ------------------------------------------------------------------ open flows */

SEC("iter/bpf_sk_storage_map")
int nw_flush(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock *sk = ctx->sk;
	struct nw_sock *s = ctx->value;
	struct nw_record r;
	__u32 k = NW_CTL_MODE;
	__u64 *mode;

	if (!sk || !s || s->state != NW_SK_OPEN)
		return 0;
	__builtin_memset(&r, 0, sizeof(r));
	fill_end(&r, s, bpf_get_socket_cookie(sk));
	r.hook = NW_H_FLUSH;
	r.flags |= NW_F_FINAL;
	r.ts_ns = bpf_ktime_get_ns();
	mode = bpf_map_lookup_elem(&nw_ctl, &k);
	if (mode && *mode == NW_CTL_FLUSH)
		s->state = NW_SK_ENDED;
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

/* Run once at start: the owners of sockets made before netwarden (listeners, UDP, raw and
 * ICMP sockets), from the processes holding them. What the hooks recorded since wins. */
SEC("iter/task_file")
int nw_prime(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct socket *sock;
	struct sock *sk;
	__u16 family, proto;
	__u32 netns;

	if (!task || !file)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	sk = sock->sk;
	if (!sk)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return 0;
	proto = BPF_CORE_READ(sk, sk_protocol);
	if (proto == IPPROTO_TCP && BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_LISTEN) {
		struct nw_listen_key key;
		struct nw_listener l;

		listen_key(sk, &key, netns);
		if (bpf_map_lookup_elem(&nw_listeners, &key))
			return 0;
		fill_ident_of(&l.who, task);
		l.cookie = bpf_get_socket_cookie(sk);
		bpf_map_update_elem(&nw_listeners, &key, &l, BPF_NOEXIST);
	} else if (proto == IPPROTO_UDP || is_raw_or_ping(BPF_CORE_READ(sk, sk_type), proto)) {
		struct nw_sock *s = bpf_sk_storage_get(&nw_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

		if (!s || s->has_owner)
			return 0;
		fill_ident_of(&s->owner, task);
		s->has_owner = 1;
		s->netns = netns;
	}
	return 0;
}
