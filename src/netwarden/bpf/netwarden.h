/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * netwarden: the records the kernel side writes into the ring buffer, and the map layouts
 * user space reads. src/netwarden/wire/ebpf_records.py mirrors this file: change both.
 * All integers are in host byte order (ports too); addresses are 16 bytes, IPv4 as
 * IPv4-mapped IPv6 (::ffff:a.b.c.d).
 */
#ifndef NETWARDEN_H
#define NETWARDEN_H

#define NW_TASK_COMM_LEN 16

/* record types */
#define NW_REC_NEW 1     /* a flow was seen: identity and counters so far */
#define NW_REC_END 2     /* a flow ended (TCP close, datagram socket release): final counters */
#define NW_REC_PROBE 3   /* an inbound attempt to a closed port */
#define NW_REC_RELEASE 4 /* a datagram socket with several flows went: user space ends the others */

/* directions */
#define NW_DIR_OUT 0
#define NW_DIR_IN 1
#define NW_DIR_LOCAL 2

/* record flags */
#define NW_F_HIDDEN 0x01   /* bookkeeping only: the responder's side of a local flow */
#define NW_F_NO_OWNER 0x02 /* no process known for the socket (only uid is filled) */
#define NW_F_LISTENER 0x04 /* identity is the listening socket's process */
#define NW_F_FINAL 0x08    /* written by the flush iterator: the flow is still open */
#define NW_F_RAW 0x10      /* a raw IP socket's or an ICMP (ping) socket's flow */
#define NW_F_PACKET 0x20   /* a packet (AF_PACKET) socket's flow */
#define NW_F_ECHO 0x40     /* an ICMP echo flow (its initiator sent echo requests) */

/* hooks: the index of each program's counters in nw_stats */
#define NW_H_TCP_CONNECT 0 /* sockops TCP_CONNECT_CB */
#define NW_H_TCP_ACCEPT 1  /* sockops PASSIVE_ESTABLISHED_CB */
#define NW_H_TCP_LISTEN 2  /* sockops TCP_LISTEN_CB */
#define NW_H_TCP_STATE 3   /* tp_btf/inet_sock_set_state */
#define NW_H_CONNECT4 4    /* cgroup/connect4 */
#define NW_H_CONNECT6 5    /* cgroup/connect6 */
#define NW_H_SENDMSG4 6    /* cgroup/sendmsg4 */
#define NW_H_SENDMSG6 7    /* cgroup/sendmsg6 */
#define NW_H_BIND4 8       /* cgroup/post_bind4 */
#define NW_H_BIND6 9       /* cgroup/post_bind6 */
#define NW_H_EGRESS 10     /* cgroup_skb/egress */
#define NW_H_INGRESS 11    /* cgroup_skb/ingress */
#define NW_H_RELEASE 12    /* cgroup/sock_release */
#define NW_H_TCP_RESET 13  /* tp_btf/tcp_send_reset */
#define NW_H_SKB_DROP 14   /* tp_btf/kfree_skb */
#define NW_H_FLUSH 15      /* iter/bpf_sk_storage_map */
#define NW_H_SOCK_CREATE 16 /* cgroup/sock_create */
#define NW_H_DEV_QUEUE 17  /* tp_btf/net_dev_queue (packet sockets' sends) */
#define NW_H_DEV_RECV 18   /* tp_btf/netif_receive_skb (replies to packet sockets' flows) */
#define NW_NHOOKS 19

/* counters per hook */
#define NW_S_CALLS 0  /* times the program ran (past the namespace filter) */
#define NW_S_EVENTS 1 /* records written */
#define NW_S_LOST 2   /* records lost: the ring buffer was full */
#define NW_S_ERRORS 3 /* storage or map updates that failed (state not kept) */
#define NW_NSTATS 4

/* nw_ctl: the control array's slots */
#define NW_CTL_MODE 0   /* what the flush iterator does: */
#define NW_CTL_SNAPSHOT 0 /* report open flows, leave them open */
#define NW_CTL_FLUSH 1    /* report open flows and mark them ended */
#define NW_CTL_FLOWS 1  /* the flow counter */
#define NW_CTL_WAKEUP 2 /* wake the reader once this many bytes of records wait (0: always) */
#define NW_CTL_N 3

struct nw_ident {
	__u32 tgid;  /* process id */
	__u32 tid;   /* thread id */
	__u32 ppid;  /* parent's process id */
	__u32 uid;   /* effective uid */
	__u32 gid;   /* effective gid */
	__u32 _pad;
	__u64 cgroup_id;      /* cgroup v2 id */
	__u64 start_boottime; /* process start, ns since boot (as /proc/PID/stat, in ns) */
	char comm[NW_TASK_COMM_LEN];  /* the thread's name */
	char pcomm[NW_TASK_COMM_LEN]; /* the main thread's name */
};

struct nw_counters {
	__u64 tx_bytes; /* IP-layer bytes sent by the local socket */
	__u64 rx_bytes;
	__u64 tx_pkts;
	__u64 rx_pkts;
	__u64 first_ns; /* bpf_ktime_get_ns() at the flow's start */
	__u64 last_ns;  /* ... at its last packet */
};

struct nw_record {
	__u8 type;
	__u8 proto; /* the IP protocol (of the packets, for raw and packet sockets) */
	__u8 af;    /* the socket's family: AF_INET or AF_INET6 */
	__u8 dir;
	__u8 hook;
	__u8 flags;
	__u16 lport;
	__u16 rport;
	__u16 _pad;
	__u32 netns; /* network namespace inode of the local socket */
	__u64 ts_ns; /* bpf_ktime_get_ns() */
	__u64 cookie;
	__u64 flow; /* flow number, unique for the loaded object; 0 for probes and releases */
	__u8 laddr[16];
	__u8 raddr[16];
	struct nw_ident id;
	struct nw_counters c;
};

/* The datagram flow table: UDP, raw IP, ICMP (ping) and packet sockets' flows, one per
 * socket and remote (user space reads and deletes entries when a flow ends). For ICMP,
 * `rport` is the echo identifier of an echo flow, else the message type; 0 for protocols
 * without ports. */
struct nw_flow_key {
	__u64 cookie;
	__u8 raddr[16];
	__u16 rport;
	__u8 proto;
	__u8 _pad[5];
};

struct nw_flow {
	struct nw_ident who;
	struct nw_counters c;
	__u64 flow;
	__u8 dir;
	__u8 flags;
	__u8 _pad[6];
};

#endif
