//! Namespace cluster harness for weft's multi-node tests.
//!
//! Everything lives in network namespaces this process creates, named
//! `wt{pid}x{n}...` so parallel tests (and other test processes) never
//! collide; traffic only flows inside them or on their loopbacks.
//!
//! * [`Cluster`]: an underlay "wire" namespace with bridge `br0`, one
//!   namespace per node with `eth0` = 172.31.0.(i+1)/24; routers started per
//!   node (`weft router ...` with a per-node data dir and log file); pods
//!   plugged into each node's `weft` bridge; nftables partitions on the wire.
//! * [`Pod`] / [`UnderlayHost`] implement [`Endpoint`]: ping, wait for
//!   reachability, byte-exact TCP transfers.
//! * [`in_netns`] runs Rust code (sockets) inside a namespace on a scoped thread.
//! * [`wait_until`] / [`wait_for`]: every wait is bounded in time and count.
//! * [`Capture`]: the underlay as an eavesdropper sees it (`AF_PACKET`,
//!   parsed to UDP/TCP payloads); [`PatternIndex`] looks for known
//!   plaintext in it; [`send_udp_from`] replays or forges datagrams.
//! * [`CniRuntime`] runs CNI plugins exactly as a container runtime does
//!   (environment, stdin, conflist chaining) inside a node's namespace;
//!   [`CniPod`]s are namespaces it set up, checked against the router's IPAM
//!   ([`ipam_lookup`]); [`PodmanNode`] is a real podman per node.
//! * [`Manifest`] is `deploy/weft.yaml` typed; [`DaemonSetPod`] runs its
//!   DaemonSet's pod on a node under podman exactly as a kubelet would.
//! * [`KubeApi`]: a Kubernetes API server double (HTTPS, list/watch, CRUD,
//!   fault switches, request log) for routers' Kubernetes support.
//!
//! Cleanup is by RAII: dropping a `Cluster`, `Pod` or `UnderlayHost` deletes
//! its namespaces; routers are SIGTERMed then SIGKILLed by PID, and are
//! spawned with a parent-death signal so even a killed test leaves none
//! behind. A `Cluster` dropped during a panic prints every node's log tail
//! and keeps its temp dir (also with `WEFT_TEST_LOGS` / `WEFT_TEST_KEEP`).
//! Tests should therefore panic (e.g. `.unwrap()` a scenario's `Result`)
//! while the cluster is still alive.

pub mod capture;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod cni_pod;
pub mod cni_result;
pub mod daemonset;
pub mod endpoint;
pub mod fastdp;
pub mod http;
pub mod ipam;
pub mod kube_api;
pub mod kube_cluster;
pub mod manifest;
pub mod metrics;
pub mod netns;
pub mod peer_echo;
pub mod ping;
pub mod podman;
pub mod port_mapping;
pub mod preflight;
pub mod report;
pub mod router;
pub mod scenario;
pub mod transfer;
pub mod underlay_block;
pub mod wait;

pub use capture::{
    contains_pattern, parse_frame, send_udp_all_from, send_udp_from, Capture, CaptureLimits, CaptureOutput, Captured,
    PatternIndex, PatternMatch, Proto, MIN_MATCH,
};
pub use cluster::{node_ip, pod_ip, Cluster, ClusterBuilder, Node, BRIDGE, POD_PREFIX_LEN, WIRE_BRIDGE};
pub use cmd::{run_bounded, run_bounded_input, run_ok, spawn_guarded, ManagedChild};
pub use cni::{
    code as cni_code, weft_net_bin, Attachment, CniBinDir, CniEnv, CniError, CniOutput, CniRuntime, NetworkConfig,
};
pub use cni_pod::{CniPod, POD_IFNAME};
pub use cni_result::CniResult;
pub use daemonset::{container_run, ContainerRun, DaemonSetPod, InClusterApi, PodContext, SERVICE_ACCOUNT_MOUNT};
pub use endpoint::{Endpoint, Pod, PodSpec, UnderlayHost};
pub use http::http_request;
pub use ipam::{
    ipalloc_range, ipam_lookup, ipam_status, start_ipam_routers, wait_ipam_ready, wait_ipam_ready_all, IpamStatus,
    Ipv4Net, Lease, IPALLOC_RANGE, IPAM_CONVERGE,
};
pub use kube_api::{ApiRequest, KubeApi};
pub use manifest::{weft_manifest_path, workspace_version, Manifest};
pub use metrics::{metric_sum, metric_sum_labels, metric_sum_matching};
pub use netns::{enter_netns, in_netns, spawn_in_netns, Netns};
pub use peer_echo::{peer_seen, peer_seen_once, PeerEcho};
pub use ping::{ping, PingStats};
pub use podman::PodmanNode;
pub use port_mapping::{add_pod_with_ports, PortMapping};
pub use preflight::require_env;
pub use report::{ConnectionInfo, Report};
pub use router::{target_bin, weft_bin, DEFAULT_HTTP_ADDR, DEFAULT_PORT};
pub use transfer::{payload, payload_fill, tcp_transfer, transfer_seed, TransferStats};
pub use underlay_block::{BlockId, Traffic};
pub use wait::{stop_waiting, wait_for, wait_until, StopWaiting};
