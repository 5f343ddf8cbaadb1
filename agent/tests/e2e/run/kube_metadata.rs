//! Kubernetes pod metadata for `gilscope run`, through the real `kube` client.
//!
//! No Kubernetes cluster can run on the test machines, so the API server is
//! replaced by a small HTTP server in this test that answers with RECORDED REAL
//! API responses (`tests/fixtures/kube/`, see the README there for where each
//! comes from): the list of this node's pods, a watch stream (ADDED, then
//! DELETED when the test says so), a ReplicaSet owned by a Deployment, a
//! missing ReplicaSet (404 Status) and a namespace with a `tenant` label. The
//! client is gilscope's own ([`KubeMetadata`]), pointed at the server by URL;
//! everything from the HTTP request to the resource attributes is the code that
//! runs in a cluster. What this cannot show: authentication, TLS, and RBAC
//! answers of a real API server.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::kube_api::{fixture, serve, NGINX_ID, NODE, QUEUE_ID};

use gilscope::otel::kube::{KubeMetadata, KubeSettings, PodMetadata};
use gilscope::otel::resource::{self, Host, ProcessFacts, TargetOtelEnv, TenantRule};

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn pods_of_this_node_give_their_containers_k8s_attributes() {
    let server = serve(NGINX_ID);
    server
        .events
        .push(fixture("watch-added-queue.jsonl").trim().to_string());
    let kube = KubeMetadata::start(KubeSettings {
        node_name: NODE.into(),
        tenant_label: Some("tenant".into()),
        api_url: Some(server.url.clone()),
    });

    // The listed pod: a Deployment's, containerd.
    wait_for("the listed nginx pod", || kube.lookup(NGINX_ID).is_some());
    assert!(kube.synced());
    let nginx: PodMetadata = kube.lookup(NGINX_ID).unwrap_or_default();
    let a = &nginx.attributes;
    assert_eq!(get(a, "k8s.namespace.name"), Some("default"));
    assert_eq!(get(a, "k8s.pod.name"), Some("nginx-77b4fdf86c-hp4x5"));
    assert_eq!(
        get(a, "k8s.pod.uid"),
        Some("5f1c2b6e-3a47-4d0f-9b8e-2c6d7a1e4f30")
    );
    assert_eq!(get(a, "k8s.container.name"), Some("nginx"));
    assert_eq!(get(a, "k8s.replicaset.name"), Some("nginx-77b4fdf86c"));
    assert_eq!(
        get(a, "k8s.deployment.name"),
        Some("nginx"),
        "via the ReplicaSet's owner"
    );
    assert_eq!(get(a, "k8s.node.name"), Some(NODE));
    assert_eq!(nginx.service_name.as_deref(), Some("nginx"));
    assert_eq!(
        nginx.tenant.as_deref(),
        Some("acme"),
        "the namespace's label"
    );

    // The watched pod: a bare ReplicaSet's (no Deployment), docker, with the annotation.
    wait_for("the watched queue pod", || kube.lookup(QUEUE_ID).is_some());
    let queue = kube.lookup(QUEUE_ID).unwrap_or_default();
    assert_eq!(get(&queue.attributes, "k8s.pod.name"), Some("queue-l4dv8"));
    assert_eq!(get(&queue.attributes, "k8s.replicaset.name"), Some("queue"));
    assert_eq!(get(&queue.attributes, "k8s.deployment.name"), None);
    assert_eq!(queue.service_name.as_deref(), Some("work-queue"));

    // A process in the nginx container: its cgroup gives container.id, the pod the rest.
    let facts = ProcessFacts {
        pid: 4242,
        start_ticks: 1,
        exe: "/usr/local/bin/python3.11".into(),
        args: vec!["python3".into(), "/app/server.py".into()],
        runtime_version: "3.11.7".into(),
        env: TargetOtelEnv::default(),
        cgroup: format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5f1c2b6e.slice/cri-containerd-{NGINX_ID}.scope\n"
        ),
    };
    let id = resource::container_id_from_cgroup(&facts.cgroup).unwrap_or_default();
    let host = Host {
        name: NODE.into(),
        arch: "amd64".into(),
    };
    let rule = TenantRule::NamespaceLabel("tenant".into());
    let r = resource::process_resource(&facts, &host, Some(&rule), kube.lookup(&id).as_ref());
    assert_eq!(get(&r, "container.id"), Some(NGINX_ID));
    assert_eq!(get(&r, "service.name"), Some("nginx"));
    assert_eq!(get(&r, "k8s.pod.name"), Some("nginx-77b4fdf86c-hp4x5"));
    assert_eq!(get(&r, "tenant.id"), Some("acme"));

    // DELETED in the watch stream: the container is forgotten.
    server
        .events
        .push(fixture("watch-deleted-nginx.jsonl").trim().to_string());
    wait_for("the deleted pod to be forgotten", || {
        kube.lookup(NGINX_ID).is_none()
    });
    assert!(kube.lookup(QUEUE_ID).is_some());

    // Only this node's pods were ever asked for.
    let requests = server
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let pod_requests: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods"))
        .collect();
    assert!(pod_requests.len() >= 2, "a list and a watch: {requests:?}");
    for r in pod_requests {
        assert!(
            r.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}")),
            "{r}"
        );
    }
}

#[test]
fn an_unreachable_api_leaves_metadata_absent_without_blocking() {
    // A port nobody listens on (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let started = Instant::now();
    let kube = KubeMetadata::start(KubeSettings {
        node_name: NODE.into(),
        tenant_label: None,
        api_url: Some(format!("http://127.0.0.1:{port}")),
    });
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "starting does not wait for the API"
    );
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    assert_eq!(kube.lookup(NGINX_ID), None);
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "a lookup never waits on the network"
    );
    assert!(!kube.synced());
}
