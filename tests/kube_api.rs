//! The Kubernetes API double driven by the real clients: kube-rs (exactly
//! the crate and features the router uses) and kubectl.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use weft_tests::kube_api::{rfc3339, NAMESPACE};
use weft_tests::preflight::find_in_path;
use weft_tests::{require_env, run_bounded_input, wait_until, Cluster, Endpoint, KubeApi, ManagedChild};

const EVENT_WAIT: Duration = Duration::from_secs(20);

async fn client(api: &KubeApi) -> Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig_path()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, last)
}

fn internal_ip(n: &Node) -> Option<String> {
    let addrs = n.status.as_ref()?.addresses.as_ref()?;
    addrs.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone())
}

/// A watcher event as a short string: `InitApply(n1@192.0.2.1)`, `Err(410)`.
fn describe(ev: Result<Event<Node>, watcher::Error>) -> String {
    let obj = |n: &Node| {
        let name = n.metadata.name.clone().unwrap_or_default();
        internal_ip(n).map_or(name.clone(), |ip| format!("{name}@{ip}"))
    };
    match ev {
        Ok(Event::Init) => "Init".into(),
        Ok(Event::InitApply(n)) => format!("InitApply({})", obj(&n)),
        Ok(Event::InitDone) => "InitDone".into(),
        Ok(Event::Apply(n)) => format!("Apply({})", obj(&n)),
        Ok(Event::Delete(n)) => format!("Delete({})", obj(&n)),
        Err(watcher::Error::WatchError(s)) => format!("Err({})", s.code),
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(s))) => format!("StartErr({})", s.code),
        Err(e) => format!("Err({e})"),
    }
}

/// Drives a watcher on a task (it only makes progress while polled) and
/// forwards its events as strings.
struct Watch(mpsc::UnboundedReceiver<String>);

impl Watch {
    fn spawn(stream: impl Stream<Item = Result<Event<Node>, watcher::Error>> + Send + 'static) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if tx.send(describe(ev)).is_err() {
                    return;
                }
            }
        });
        Watch(rx)
    }

    async fn next(&mut self) -> String {
        match tokio::time::timeout(EVENT_WAIT, self.0.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("watcher ended"),
            Err(_) => panic!("no watcher event within {EVENT_WAIT:?}"),
        }
    }

    /// The next `n` events that are not errors.
    async fn take(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = self.next().await;
            if !ev.starts_with("Err") && !ev.starts_with("StartErr") {
                out.push(ev);
            }
        }
        out
    }

    /// Events received so far, without waiting.
    fn pending(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.0.try_recv().ok()).collect()
    }
}

fn node_watch(client: Client, config: watcher::Config) -> Watch {
    Watch::spawn(watcher(Api::<Node>::all(client), config))
}

fn api_code<T: std::fmt::Debug>(r: kube::Result<T>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn wait(what: &str, f: impl FnMut() -> bool) {
    let mut f = f;
    wait_until(EVENT_WAIT, Duration::from_millis(20), || Ok(f())).unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_then_streams_adds_modifies_deletes() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("n1", Some(ip(1)), &[]).unwrap();
    api.add_node("n2", None, &[]).unwrap();
    let mut w = node_watch(client(&api).await, watcher::Config::default());
    assert_eq!(w.take(4).await, ["Init", "InitApply(n1@192.0.2.1)", "InitApply(n2)", "InitDone"]);
    api.add_node("n3", Some(ip(3)), &[]).unwrap();
    assert_eq!(w.next().await, "Apply(n3@192.0.2.3)");
    api.set_node_address("n2", Some(ip(2))).unwrap();
    assert_eq!(w.next().await, "Apply(n2@192.0.2.2)");
    api.delete_node("n1").unwrap();
    assert_eq!(w.next().await, "Delete(n1@192.0.2.1)");

    // One LIST, then one WATCH from its resourceVersion, as §2.2 describes.
    let reqs = api.requests();
    let lists: Vec<_> = reqs.iter().filter(|r| r.verb == "list").collect();
    let watches: Vec<_> = reqs.iter().filter(|r| r.verb == "watch").collect();
    assert_eq!((lists.len(), watches.len()), (1, 1), "{reqs:#?}");
    assert_eq!(lists[0].path, "/api/v1/nodes");
    assert!(lists[0].query.contains("limit=500"), "{:?}", lists[0].query);
    assert!(watches[0].query.contains("allowWatchBookmarks=true"), "{:?}", watches[0].query);
    assert!(watches[0].query.contains("timeoutSeconds=290"), "{:?}", watches[0].query);
    assert!(watches[0].query.contains(&format!("resourceVersion={}", api.revision() - 3)), "{:?}", watches[0].query);
    assert_eq!(api.open_watches(), 1);
    assert!(reqs.iter().all(|r| r.client.ip() == std::net::Ipv4Addr::LOCALHOST), "{reqs:#?}");
    let deleted = api.node("n1");
    assert!(deleted.is_none(), "{deleted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_stream_410_makes_the_watcher_relist() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("a", Some(ip(1)), &[]).unwrap();
    let mut w = node_watch(client(&api).await, watcher::Config::default());
    assert_eq!(w.take(3).await, ["Init", "InitApply(a@192.0.2.1)", "InitDone"]);
    api.wait_watches(1, EVENT_WAIT).unwrap();
    api.expire_watches();
    assert_eq!(w.next().await, "Err(410)");
    assert_eq!(w.take(3).await, ["Init", "InitApply(a@192.0.2.1)", "InitDone"]);
    assert_eq!(api.count("list", "/api/v1/nodes"), 2);

    // A watch from a resourceVersion the bounded history no longer holds
    // gets the same in-stream ERROR, with the real Status shape.
    api.set_history_limit(2);
    let old = api.revision();
    for i in 0..3 {
        api.add_node(&format!("h{i}"), None, &[]).unwrap();
    }
    let nodes: Api<Node> = Api::all(client(&api).await);
    let stream = nodes.watch(&WatchParams::default().timeout(5), &old.to_string()).await.unwrap();
    let events: Vec<_> = stream.collect().await;
    assert_eq!(events.len(), 1, "{events:?}");
    match &events[0] {
        Ok(WatchEvent::Error(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert_eq!(s.message, format!("too old resource version: {old} ({})", old + 1));
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ends_the_watch_and_kube_rewatches_without_relisting() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("t1", None, &[]).unwrap();
    let mut w = node_watch(client(&api).await, watcher::Config::default().timeout(1));
    assert_eq!(w.take(3).await, ["Init", "InitApply(t1)", "InitDone"]);
    wait("three watches after 1 s timeouts", || api.count("watch", "/api/v1/nodes") >= 3);
    api.add_node("t2", None, &[]).unwrap();
    assert_eq!(w.take(1).await, ["Apply(t2)"]);
    assert_eq!(api.count("list", "/api/v1/nodes"), 1, "{:#?}", api.requests());
    let watches: Vec<_> = api.requests().into_iter().filter(|r| r.verb == "watch").collect();
    assert!(watches.iter().all(|r| r.query.contains("timeoutSeconds=1") && r.status == Some(200)), "{watches:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_are_consistent_and_selectors_filter() {
    let api = KubeApi::start_local().unwrap();
    for i in 0..7 {
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        api.add_node(&format!("p{i}"), None, &[("weft.io/parity", parity)]).unwrap();
    }
    let c = client(&api).await;
    let nodes: Api<Node> = Api::all(c.clone());
    let names = |l: &kube::core::ObjectList<Node>| -> Vec<String> {
        l.items.iter().map(|n| n.metadata.name.clone().unwrap()).collect()
    };
    let first = nodes.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(names(&first), ["p0", "p1", "p2"]);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let rv = first.metadata.resource_version.clone().unwrap();
    // Writes between pages do not show: the pages are one snapshot.
    api.add_node("p7", None, &[]).unwrap();
    api.delete_node("p5").unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    let second = nodes.list(&ListParams::default().limit(3).continue_token(&token)).await.unwrap();
    assert_eq!(names(&second), ["p3", "p4", "p5"]);
    let token = second.metadata.continue_.clone().unwrap();
    let third = nodes.list(&ListParams::default().limit(3).continue_token(&token)).await.unwrap();
    assert_eq!(names(&third), ["p6"]);
    assert_eq!(third.metadata.continue_, None);
    assert_eq!(third.metadata.resource_version.as_ref(), Some(&rv));

    let sel = |l: &str| ListParams::default().labels(l);
    assert_eq!(names(&nodes.list(&sel("weft.io/parity=odd")).await.unwrap()), ["p1", "p3"]);
    assert_eq!(names(&nodes.list(&sel("weft.io/parity!=odd")).await.unwrap()), ["p0", "p2", "p4", "p6", "p7"]);
    assert_eq!(names(&nodes.list(&sel("!weft.io/parity")).await.unwrap()), ["p7"]);
    assert_eq!(names(&nodes.list(&sel("weft.io/parity,kubernetes.io/os=linux")).await.unwrap()).len(), 6);
    assert_eq!(names(&nodes.list(&sel("weft.io/parity in (odd, x)")).await.unwrap()), ["p1", "p3"]);
    let by_name = nodes.list(&ListParams::default().fields("metadata.name=p2")).await.unwrap();
    assert_eq!(names(&by_name), ["p2"]);
    let bad = api_code(nodes.list(&ListParams::default().fields("spec.foo=1")).await);
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));

    // The watcher pages its initial list too.
    let mut w = node_watch(c.clone(), watcher::Config::default().page_size(2));
    let init = w.take(9).await;
    assert_eq!(init[0], "Init");
    assert_eq!(init[8], "InitDone");
    let applied = [
        "InitApply(p0)",
        "InitApply(p1)",
        "InitApply(p2)",
        "InitApply(p3)",
        "InitApply(p4)",
        "InitApply(p6)",
        "InitApply(p7)",
    ];
    assert_eq!(init[1..8], applied);

    // A continue token whose snapshot left the history has expired.
    let first = nodes.list(&ListParams::default().limit(2)).await.unwrap();
    api.set_history_limit(1);
    api.add_node("p8", None, &[]).unwrap();
    api.add_node("p9", None, &[]).unwrap();
    let token = first.metadata.continue_.unwrap();
    let gone = api_code(nodes.list(&ListParams::default().limit(2).continue_token(&token)).await);
    assert_eq!((gone.code, gone.reason.as_str()), (410, "Expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_watch_reports_objects_entering_and_leaving() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("in", None, &[("weft.io/run", "yes")]).unwrap();
    api.add_node("out", None, &[]).unwrap();
    let mut w = node_watch(client(&api).await, watcher::Config::default().labels("weft.io/run=yes"));
    assert_eq!(w.take(3).await, ["Init", "InitApply(in)", "InitDone"]);
    api.modify_object("v1", "Node", "", "out", |n| n["metadata"]["labels"]["weft.io/run"] = json!("yes")).unwrap();
    assert_eq!(w.next().await, "Apply(out)");
    let unlabel = |n: &mut Value| _ = n["metadata"]["labels"].as_object_mut().unwrap().remove("weft.io/run");
    api.modify_object("v1", "Node", "", "in", unlabel).unwrap();
    assert_eq!(w.next().await, "Delete(in)");
    api.delete_node("in").unwrap();
    api.delete_node("out").unwrap();
    assert_eq!(w.next().await, "Delete(out)");

    // Streaming lists (sendInitialEvents) end their initial events with the
    // annotated BOOKMARK the watcher waits for.
    let mut s = node_watch(client(&api).await, watcher::Config::default().streaming_lists());
    api.add_node("late", None, &[]).unwrap();
    let got = s.take(3).await;
    assert_eq!(got[0], "Init");
    assert!(got[1..].contains(&"InitDone".to_string()), "{got:?}");
    let q = api.requests().into_iter().rfind(|r| r.verb == "watch").unwrap().query;
    assert!(q.contains("sendInitialEvents=true"), "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_carry_the_current_revision_and_the_stream_ends_cleanly() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("b1", None, &[]).unwrap();
    api.set_bookmark_interval(Duration::from_millis(200));
    let nodes: Api<Node> = Api::all(client(&api).await);
    let stream = nodes.watch(&WatchParams::default().timeout(2), "0").await.unwrap();
    let events: Vec<_> = stream.try_collect().await.unwrap();
    assert!(matches!(&events[0], WatchEvent::Added(n) if n.metadata.name.as_deref() == Some("b1")), "{events:?}");
    let bookmarks: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
            _ => None,
        })
        .collect();
    assert!(!bookmarks.is_empty(), "{events:?}");
    assert!(bookmarks.iter().all(|rv| *rv == api.revision().to_string()), "{bookmarks:?}");
    // Without allowWatchBookmarks there are none.
    let plain = nodes.watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0").await.unwrap();
    let events: Vec<_> = plain.try_collect().await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_and_leases_have_optimistic_concurrency() {
    let api = KubeApi::start_local().unwrap();
    let c = client(&api).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), NAMESPACE);
    let pp = PostParams::default();
    assert!(cms.get_opt("weft-peer-map").await.unwrap().is_none());
    let missing = api_code(cms.get("weft-peer-map").await);
    assert!(missing.is_not_found());
    assert_eq!(missing.message, "configmaps \"weft-peer-map\" not found");

    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some("weft-peer-map".into()), ..Default::default() },
        data: Some(BTreeMap::from([("a".to_string(), "1".to_string())])),
        ..Default::default()
    };
    let created = cms.create(&pp, &cm).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some(NAMESPACE));
    let again = api_code(cms.create(&pp, &cm).await);
    assert!(again.is_already_exists() && again.code == 409, "{again:?}");

    let merged =
        cms.patch("weft-peer-map", &PatchParams::default(), &Patch::Merge(json!({"data": {"b": "2"}}))).await.unwrap();
    assert_eq!(merged.data.as_ref().unwrap().len(), 2);
    let mut stale = created.clone();
    stale.data.as_mut().unwrap().insert("c".into(), "3".into());
    let conflict = api_code(cms.replace("weft-peer-map", &pp, &stale).await);
    assert!(conflict.is_conflict(), "{conflict:?}");
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on configmaps \"weft-peer-map\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );
    let mut fresh = cms.get("weft-peer-map").await.unwrap();
    fresh.data.as_mut().unwrap().insert("c".into(), "3".into());
    let replaced = cms.replace("weft-peer-map", &pp, &fresh).await.unwrap();
    assert_ne!(replaced.metadata.resource_version, fresh.metadata.resource_version);
    // No resourceVersion in the body: unconditional.
    stale.metadata.resource_version = None;
    cms.replace("weft-peer-map", &pp, &stale).await.unwrap();
    // Strategic merge on a map: null deletes a key.
    let patched = cms
        .patch("weft-peer-map", &PatchParams::default(), &Patch::Strategic(json!({"data": {"a": null}})))
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap().keys().collect::<Vec<_>>(), ["c"]);
    // A patch that changes nothing keeps the revision.
    let noop =
        cms.patch("weft-peer-map", &PatchParams::default(), &Patch::Merge(json!({"data": {"c": "3"}}))).await.unwrap();
    assert_eq!(noop.metadata.resource_version, patched.metadata.resource_version);
    // A merge patch carrying a stale resourceVersion is a precondition.
    let stale_patch = json!({"metadata": {"resourceVersion": created.metadata.resource_version}, "data": {"d": "4"}});
    assert!(
        api_code(cms.patch("weft-peer-map", &PatchParams::default(), &Patch::Merge(stale_patch)).await).is_conflict()
    );
    assert_eq!(api.configmap(NAMESPACE, "weft-peer-map").unwrap()["data"], json!({"c": "3"}));

    // A watch on one ConfigMap by name sees only that one, in its namespace.
    api.put_object(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other", "namespace": NAMESPACE}}),
    )
    .unwrap();
    let same_name =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "weft-peer-map", "namespace": "default"}});
    api.put_object(same_name).unwrap();
    let wp = WatchParams::default().fields("metadata.name=weft-peer-map").timeout(1);
    let events: Vec<_> = cms.watch(&wp, "0").await.unwrap().try_collect().await.unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(cm) => (cm.metadata.namespace.clone().unwrap(), cm.metadata.name.clone().unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seen, [(NAMESPACE.to_string(), "weft-peer-map".to_string())]);

    let deleted = cms.delete("weft-peer-map", &DeleteParams::default()).await.unwrap();
    let status = deleted.right().expect("a Status for a deleted ConfigMap");
    assert!(status.is_success(), "{status:?}");
    assert!(cms.get_opt("weft-peer-map").await.unwrap().is_none());

    let leases: Api<Lease> = Api::namespaced(c, NAMESPACE);
    let lease = Lease {
        metadata: ObjectMeta { name: Some("weft-reclaimer".into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("peer-a@n1".into()),
            lease_duration_seconds: Some(30),
            ..Default::default()
        }),
    };
    let held = leases.create(&pp, &lease).await.unwrap();
    assert!(api_code(leases.create(&pp, &lease).await).is_already_exists());
    let mut mine = held.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("peer-b@n2".into());
    leases.replace("weft-reclaimer", &pp, &mine).await.unwrap();
    // The loser of the race still holds the old resourceVersion.
    let mut theirs = held;
    theirs.spec.as_mut().unwrap().holder_identity = Some("peer-c@n3".into());
    let lost = api_code(leases.replace("weft-reclaimer", &pp, &theirs).await);
    assert!(lost.is_conflict());
    assert!(lost.message.starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io \"weft-reclaimer\""));
    assert_eq!(api.lease(NAMESPACE, "weft-reclaimer").unwrap()["spec"]["holderIdentity"], "peer-b@n2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_status_patches_merge_conditions_by_type() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("s1", Some(ip(1)), &[]).unwrap();
    let nodes: Api<Node> = Api::all(client(&api).await);
    let pp = PatchParams::default();
    let now = rfc3339(std::time::SystemTime::now());
    let condition = |status: &str| {
        json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": status, "reason": "WeftIsUp",
            "message": "weft router is running", "lastTransitionTime": now, "lastHeartbeatTime": now}]}})
    };
    let conditions = |n: &Node| -> Vec<(String, String)> {
        let cs = n.status.as_ref().unwrap().conditions.as_ref().unwrap();
        cs.iter().map(|c| (c.type_.clone(), c.status.clone())).collect()
    };
    let pair = |t: &str, s: &str| (t.to_string(), s.to_string());
    let n = nodes.patch_status("s1", &pp, &Patch::Strategic(condition("False"))).await.unwrap();
    assert_eq!(conditions(&n), [pair("Ready", "True"), pair("NetworkUnavailable", "False")]);
    let n = nodes.patch_status("s1", &pp, &Patch::Strategic(condition("True"))).await.unwrap();
    assert_eq!(conditions(&n), [pair("Ready", "True"), pair("NetworkUnavailable", "True")]);
    assert_eq!(internal_ip(&n).as_deref(), Some("192.0.2.1"), "addresses untouched");
    let req = api.requests().into_iter().rfind(|r| r.verb == "patch").unwrap();
    assert_eq!(
        (req.path.as_str(), req.content_type.as_str()),
        ("/api/v1/nodes/s1/status", "application/strategic-merge-patch+json")
    );

    // A merge patch replaces the list; /status ignores spec.
    let merge =
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}, "spec": {"unschedulable": true}});
    let n = nodes.patch_status("s1", &pp, &Patch::Merge(merge)).await.unwrap();
    assert_eq!(conditions(&n), [pair("Ready", "False")]);
    assert_eq!(n.spec.as_ref().and_then(|s| s.unschedulable), None);
    // The main resource ignores status.
    let main = json!({"metadata": {"labels": {"x": "y"}}, "status": {"conditions": []}});
    let n = nodes.patch("s1", &pp, &Patch::Merge(main)).await.unwrap();
    assert_eq!(n.metadata.labels.as_ref().unwrap()["x"], "y");
    assert_eq!(conditions(&n), [pair("Ready", "False")]);
    // Server-side apply is not modelled: a clear 415, not a silent success.
    let apply = api_code(nodes.patch("s1", &PatchParams::apply("weft"), &Patch::Apply(json!({}))).await);
    assert_eq!(apply.code, 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_checked() {
    let api = KubeApi::start_local().unwrap();
    let nodes: Api<Node> = Api::all(client(&api).await);
    nodes.list(&ListParams::default()).await.unwrap();
    api.set_token("rotated");
    let denied = api_code(nodes.list(&ListParams::default()).await);
    assert_eq!((denied.code, denied.reason.as_str(), denied.message.as_str()), (401, "Unauthorized", "Unauthorized"));
    api.write_client_token("rotated").unwrap();
    let sa = api.service_account_dir();
    assert_eq!(std::fs::read_to_string(sa.join("token")).unwrap(), "rotated");
    assert_eq!(std::fs::read_to_string(sa.join("namespace")).unwrap(), NAMESPACE);
    assert_eq!(std::fs::read_to_string(sa.join("ca.crt")).unwrap(), api.ca_pem());
    Api::<Node>::all(client(&api).await).list(&ListParams::default()).await.unwrap();
    let env = api.in_cluster_env();
    assert_eq!(env[0], ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()));
    assert_eq!(env[1], ("KUBERNETES_SERVICE_PORT".into(), api.addr().port().to_string()));
}

const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: weft}
rules:
  - {apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}
  - {apiGroups: [""], resources: [nodes/status], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: weft}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: weft}
subjects: [{kind: ServiceAccount, name: weft, namespace: weft}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: weft, namespace: weft}
rules:
  - {apiGroups: [""], resources: [configmaps], verbs: [create]}
  - {apiGroups: [""], resources: [configmaps], resourceNames: [weft-peer-map], verbs: [get, update, patch]}
  - {apiGroups: [coordination.k8s.io], resources: [leases], resourceNames: [weft-reclaimer], verbs: [get, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: weft, namespace: weft}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: weft}
subjects: [{kind: ServiceAccount, name: weft, namespace: weft}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denies_what_the_roles_do_not_grant() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("r1", None, &[]).unwrap();
    api.enforce_rbac(RBAC).unwrap();
    let c = client(&api).await;
    let nodes: Api<Node> = Api::all(c.clone());
    let mut w = node_watch(c.clone(), watcher::Config::default());
    assert_eq!(w.take(3).await, ["Init", "InitApply(r1)", "InitDone"]);
    nodes.patch_status("r1", &PatchParams::default(), &Patch::Merge(json!({"status": {}}))).await.unwrap();
    let denied = api_code(nodes.delete("r1", &DeleteParams::default()).await);
    assert!(denied.is_forbidden());
    assert_eq!(
        denied.message,
        "nodes \"r1\" is forbidden: User \"system:serviceaccount:weft:weft\" cannot delete resource \"nodes\" \
         in API group \"\" at the cluster scope"
    );
    let denied = api_code(nodes.patch("r1", &PatchParams::default(), &Patch::Merge(json!({}))).await);
    assert!(denied.is_forbidden(), "patch on the main resource is not granted: {denied:?}");

    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), NAMESPACE);
    assert!(cms.get_opt("weft-peer-map").await.unwrap().is_none(), "allowed by resourceNames, then 404");
    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some("weft-peer-map".into()), ..Default::default() },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.patch("weft-peer-map", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    let other = api_code(cms.get("other").await);
    assert_eq!(
        other.message,
        "configmaps \"other\" is forbidden: User \"system:serviceaccount:weft:weft\" cannot get resource \
         \"configmaps\" in API group \"\" in the namespace \"weft\""
    );
    assert!(api_code(cms.list(&ListParams::default()).await).is_forbidden());
    let elsewhere: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    assert!(api_code(elsewhere.create(&PostParams::default(), &cm).await).is_forbidden());
    let leases: Api<Lease> = Api::namespaced(c.clone(), NAMESPACE);
    assert!(leases.get_opt("weft-reclaimer").await.unwrap().is_none());
    let denied = api_code(leases.get("other").await);
    assert!(denied.is_forbidden() && denied.message.starts_with("leases.coordination.k8s.io \"other\" is forbidden"));

    // The project's manifest parses; whatever it grants, deleting Nodes is
    // never among it.
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/weft.yaml");
    api.enforce_rbac_file(&manifest).unwrap();
    nodes.list(&ListParams::default()).await.unwrap();
    assert!(api_code(nodes.delete("r1", &DeleteParams::default()).await).is_forbidden());
    api.disable_rbac();
    nodes.delete("r1", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_down_drop_hang_fail() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("f1", None, &[]).unwrap();
    let c = client(&api).await;
    let nodes: Api<Node> = Api::all(c.clone());
    let mut w = node_watch(c.clone(), watcher::Config::default());
    assert_eq!(w.take(3).await, ["Init", "InitApply(f1)", "InitDone"]);

    // A cut watch resumes from its resourceVersion: no new LIST (kube-rs
    // takes a truncated body for an end, so it reports no error either).
    api.wait_watches(1, EVENT_WAIT).unwrap();
    api.drop_watches();
    wait("a second watch after the cut", || api.count("watch", "/api/v1/nodes") >= 2);
    api.add_node("f2", None, &[]).unwrap();
    assert_eq!(w.take(1).await, ["Apply(f2)"]);
    assert_eq!(api.count("list", "/api/v1/nodes"), 1);

    // An HTTP-level 410 on the watch request is only a stream error to
    // kube-rs: it watches again from the same resourceVersion (§2.2).
    api.http_410_next_watches(1);
    api.wait_watches(1, EVENT_WAIT).unwrap();
    api.drop_watches();
    assert_eq!(w.next().await, "StartErr(410)");
    wait("the 410 answered", || api.requests().iter().any(|r| r.verb == "watch" && r.status == Some(410)));
    api.add_node("f3", None, &[]).unwrap();
    assert_eq!(w.take(1).await, ["Apply(f3)"]);
    assert_eq!(api.count("list", "/api/v1/nodes"), 1);

    // Failing requests: a Status with the matching reason.
    api.fail_requests(Some(500));
    let failed = api_code(nodes.get("f1").await);
    assert_eq!((failed.code, failed.reason.as_str()), (500, "InternalError"));
    api.fail_requests(None);

    // Hung requests are answered once released.
    api.hang_requests(true);
    let pending = tokio::spawn({
        let nodes = nodes.clone();
        async move { nodes.get("f1").await }
    });
    wait("the hung GET logged", || api.requests().iter().any(|r| r.verb == "get" && r.status.is_none()));
    assert!(!pending.is_finished());
    api.hang_requests(false);
    assert_eq!(pending.await.unwrap().unwrap().metadata.name.as_deref(), Some("f1"));

    // Down: connections refused, open watches cut; up again: the watcher
    // (with its backoff) picks up what happened meanwhile.
    drop(w);
    let mut w = Watch::spawn(watcher(nodes.clone(), watcher::Config::default()).default_backoff());
    assert_eq!(w.take(5).await, ["Init", "InitApply(f1)", "InitApply(f2)", "InitApply(f3)", "InitDone"]);
    api.wait_watches(1, EVENT_WAIT).unwrap();
    api.set_down(true).unwrap();
    assert_eq!(api.open_watches(), 0);
    assert!(nodes.get("f1").await.is_err());
    api.add_node("f4", None, &[]).unwrap();
    api.set_down(false).unwrap();
    assert_eq!(w.take(1).await, ["Apply(f4)"]);
    nodes.get("f4").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_watch_is_abandoned_by_the_idle_timeout() {
    let api = KubeApi::start_local().unwrap();
    api.add_node("bh0", None, &[]).unwrap();
    let mut w = node_watch(client(&api).await, watcher::Config::default().timeout(1));
    assert_eq!(w.take(3).await, ["Init", "InitApply(bh0)", "InitDone"]);
    api.wait_watches(1, EVENT_WAIT).unwrap();
    let before = api.count("watch", "/api/v1/nodes");
    api.black_hole_watches(true);
    api.add_node("bh1", None, &[]).unwrap();
    // kube-rs gives up a silent stream after timeout + 5 s and watches again.
    wait("a new watch after the idle timeout", || api.count("watch", "/api/v1/nodes") > before);
    let seen = w.pending();
    assert!(!seen.iter().any(|e| e.contains("bh1")), "nothing passes a black hole: {seen:?}");
    api.black_hole_watches(false);
    assert_eq!(w.take(1).await, ["Apply(bh1)"]);
    assert_eq!(api.count("list", "/api/v1/nodes"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
    let api = KubeApi::start_local().unwrap();
    let recorder = Recorder::new(client(&api).await, "weft".into());
    let node = ObjectReference {
        kind: Some("Node".into()),
        name: Some("n1".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    };
    let ev = KubeEvent {
        type_: EventType::Normal,
        reason: "PeerAdded".into(),
        note: None,
        action: "Connect".into(),
        secondary: None,
    };
    recorder.publish(&ev, &node).await.unwrap();
    recorder.publish(&ev, &node).await.unwrap(); // the second is a PATCH of the series
    let stored = api.objects("events.k8s.io/v1", "Event", "");
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(stored[0]["reason"], "PeerAdded");
    assert_eq!(stored[0]["series"]["count"], 2);
}

/// The lead's setup: the double on an underlay host, a client in another
/// namespace on the same wire; down/up rebinds inside the namespace.
#[test]
fn reachable_across_namespaces_and_rebinds_after_down() {
    require_env();
    let cluster = Cluster::new(0).unwrap();
    let server = cluster.add_underlay_host().unwrap();
    let client_host = cluster.add_underlay_host().unwrap();
    let api = KubeApi::start_in(server.netns(), SocketAddrV4::new(server.ip(), 6443)).unwrap();
    assert_eq!(api.url(), format!("https://{}:6443", server.ip()));
    api.add_node("x1", Some(ip(1)), &[]).unwrap();
    let list_from_client = || {
        let kubeconfig = api.kubeconfig_path();
        client_host
            .enter(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
                    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
                    let nodes: Api<Node> = Api::all(Client::try_from(config).unwrap());
                    let listed =
                        tokio::time::timeout(Duration::from_secs(10), nodes.list(&ListParams::default())).await;
                    listed.map_err(|_| "timed out".to_string())?.map(|l| l.items.len()).map_err(|e| e.to_string())
                })
            })
            .unwrap()
    };
    assert_eq!(list_from_client(), Ok(1));
    let clients: Vec<_> = api.requests().iter().map(|r| r.client.ip()).collect();
    assert_eq!(clients, [client_host.ip()]);
    api.set_down(true).unwrap();
    let down = list_from_client();
    assert!(down.as_ref().is_err_and(|e| e.contains("onnect")), "{down:?}");
    api.set_down(false).unwrap();
    assert_eq!(list_from_client(), Ok(1));
}

/// Debian's/Google's kubectl (a Go client) against the double.
#[test]
fn kubectl_cross_check() {
    let kubectl = find_in_path("kubectl").unwrap_or_else(|| {
        panic!("kubectl not found in PATH: install Debian's `kubernetes-client` package (apt-get install -y kubernetes-client)")
    });
    let api = KubeApi::start_local().unwrap();
    api.add_node("k1", Some(ip(1)), &[]).unwrap();
    let cache = TempDir::new();
    let cache = &cache.0;
    let run_with = |args: &[&str], input: Option<&str>| -> String {
        let mut cmd = std::process::Command::new(&kubectl);
        cmd.arg("--kubeconfig").arg(api.kubeconfig_path()).arg("--cache-dir").arg(cache).args(args);
        cmd.env("HOME", cache).env_remove("KUBECONFIG");
        let out = run_bounded_input(cmd, input.map(str::as_bytes), Duration::from_secs(60)).unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\nstdout: {stdout}\nstderr: {stderr}\nrequests: {:#?}",
            out.status,
            api.requests()
        );
        stdout.into_owned()
    };
    let run = |args: &[&str]| run_with(args, None);
    let list: Value = serde_json::from_str(&run(&["get", "nodes", "-o", "json"])).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "k1");
    let table = run(&["get", "nodes"]);
    // No server-side Table: kubectl falls back to NAME and AGE.
    assert!(table.starts_with("NAME") && table.contains("k1"), "{table}");
    let watch = run(&["get", "--raw", "/api/v1/nodes?watch=1&timeoutSeconds=1"]);
    let first: Value = serde_json::from_str(watch.lines().next().unwrap()).unwrap();
    assert_eq!((first["type"].as_str(), first["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("k1")));
    // A dropped watch is a truncated chunked body to Go (an error), an
    // expired one ends cleanly after its ERROR event.
    let watch_until_cut = |cut: &dyn Fn()| {
        let mut cmd = std::process::Command::new(&kubectl);
        cmd.arg("--kubeconfig").arg(api.kubeconfig_path()).arg("--cache-dir").arg(cache);
        cmd.args(["get", "--raw", "/api/v1/nodes?watch=1&timeoutSeconds=60"]).env("HOME", cache);
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = ManagedChild::spawn(cmd).unwrap();
        let before = api.open_watches();
        api.wait_watches(before + 1, EVENT_WAIT).unwrap();
        cut();
        child.wait_timeout(EVENT_WAIT).expect("kubectl ends when its watch does")
    };
    assert!(!watch_until_cut(&|| api.drop_watches()).success());
    assert!(watch_until_cut(&|| api.expire_watches()).success());
    run(&["label", "node", "k1", "weft.io/checked=yes"]);
    assert_eq!(api.node("k1").unwrap()["metadata"]["labels"]["weft.io/checked"], "yes");
    // From a manifest, kubectl sends JSON (`create configmap` would send
    // protobuf, which the double refuses with a 415); client-side
    // validation would need /openapi, which the double does not serve.
    let manifest =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "weft-config"}, "data": {"a": "b"}});
    run_with(&["-n", NAMESPACE, "create", "--validate=false", "-f", "-"], Some(&manifest.to_string()));
    assert_eq!(api.configmap(NAMESPACE, "weft-config").unwrap()["data"]["a"], "b");
    let cm = run(&["-n", NAMESPACE, "get", "configmap", "weft-config", "-o", "jsonpath={.data.a}"]);
    assert_eq!(cm, "b");
    run(&["-n", NAMESPACE, "delete", "configmap", "weft-config"]);
    assert!(api.configmap(NAMESPACE, "weft-config").is_none());

    // The in-cluster path: no kubeconfig, the service-account dir mounted
    // where pods have it (in a private mount namespace with its own /run)
    // and the Service env. Also checks the certificate's IP SAN.
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p {mount} && mount --bind \"$0\" {mount} && exec \"$1\" get nodes -o name",
        mount = weft_tests::kube_api::SERVICE_ACCOUNT_MOUNT
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    cmd.arg(api.service_account_dir()).arg(&kubectl);
    cmd.env("HOME", cache).env_remove("KUBECONFIG").envs(api.in_cluster_env());
    let out = run_bounded_input(cmd, None, Duration::from_secs(60)).unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "in-cluster kubectl: {}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    assert_eq!(stdout.trim(), "node/k1");
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("{}kubectl", weft_tests::netns::unique_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
