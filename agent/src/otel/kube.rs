//! Kubernetes metadata for the processes `gilscope run` watches: which pod,
//! container, namespace, workload and node a container id belongs to.
//!
//! A watched process's container id comes from its cgroup (the resource
//! module reads it, and asks [`KubeMetadata::lookup`]); here the pods of this node
//! (`spec.nodeName=<node>` field selector, so a node agent never lists the whole
//! cluster) are watched through the Kubernetes API with `kube`'s watcher, and each
//! `status.containerStatuses[].containerID` (`containerd://…`, `cri-o://…`,
//! `docker://…`) is mapped to that pod's attributes. A ReplicaSet owner is
//! resolved to its Deployment with one cached GET; namespace labels are read only
//! when `tenant.id` is taken from one (then `get namespaces` is needed).
//!
//! The client runs on its own thread and tokio runtime; the daemon's loop only
//! reads the shared map ([`KubeMetadata::lookup`]). The API being unreachable
//! never stops measurement: the metadata is absent, one warning says why, and the
//! watcher keeps retrying with backoff.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};

/// Annotation a pod sets to name its service (OpenTelemetry's convention).
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// Recommended label naming the application.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Default namespace label read for `tenant.id` (when that is switched on).
pub const DEFAULT_TENANT_LABEL: &str = "tenant";
/// How long a namespace's labels are trusted before they are read again.
const NAMESPACE_TTL: Duration = Duration::from_secs(300);
/// How often pods whose owner or namespace could not be read are tried again.
const RETRY: Duration = Duration::from_secs(30);

/// What the Kubernetes metadata source needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// This node's name (`spec.nodeName` of its pods; NODE_NAME from the downward API).
    pub node_name: String,
    /// Namespace label whose value becomes `tenant.id`; `None`: no tenant from Kubernetes.
    pub tenant_label: Option<String>,
    /// API server URL; `None`: in-cluster service account, else the kubeconfig.
    pub api_url: Option<String>,
}

/// What Kubernetes says about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMetadata {
    /// `k8s.*` resource attributes in a stable order.
    pub attributes: Vec<(String, String)>,
    /// The annotation, else the `app.kubernetes.io/name` label, else the owner's name.
    pub service_name: Option<String>,
    /// The configured namespace label's value.
    pub tenant: Option<String>,
}

/// The container id in a `containerStatuses[].containerID` (`<runtime>://<id>`).
pub fn container_id_of(status_id: &str) -> Option<String> {
    let (_, id) = status_id.split_once("://")?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// The controlling owner of an object (else its first owner).
fn controller(owners: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    let owners = owners?;
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
}

/// Every (container id, container name) of a pod: regular, init and ephemeral containers.
pub fn pod_containers(pod: &Pod) -> Vec<(String, String)> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    [
        &status.container_statuses,
        &status.init_container_statuses,
        &status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .filter_map(|c| Some((container_id_of(c.container_id.as_deref()?)?, c.name.clone())))
    .collect()
}

/// The attributes of one container of `pod`. `deployment`: the Deployment owning
/// the pod's ReplicaSet, if any; `namespace_labels`: read only for a tenant label.
pub fn pod_metadata(
    pod: &Pod,
    container: &str,
    deployment: Option<&str>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    tenant_label: Option<&str>,
) -> PodMetadata {
    let meta = &pod.metadata;
    let mut attributes = Vec::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            attributes.push((k.to_string(), v.to_string()));
        }
    };
    put("k8s.namespace.name", meta.namespace.as_deref());
    put("k8s.pod.name", meta.name.as_deref());
    put("k8s.pod.uid", meta.uid.as_deref());
    put("k8s.container.name", Some(container));
    put(
        "k8s.node.name",
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
    );
    let owner = controller(meta.owner_references.as_ref());
    if let Some(o) = owner {
        let key = match o.kind.as_str() {
            "ReplicaSet" => Some("k8s.replicaset.name"),
            "DaemonSet" => Some("k8s.daemonset.name"),
            "StatefulSet" => Some("k8s.statefulset.name"),
            "Job" => Some("k8s.job.name"),
            _ => None,
        };
        if let Some(key) = key {
            put(key, Some(&o.name));
        }
    }
    put("k8s.deployment.name", deployment);
    let owner_name = deployment.map(str::to_string).or_else(|| {
        owner
            .filter(|o| o.kind != "Node") // static pods are "owned" by their node
            .map(|o| o.name.clone())
    });
    let service_name = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_NAME_ANNOTATION))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(APP_NAME_LABEL)))
        .cloned()
        .or(owner_name)
        .filter(|s| !s.is_empty());
    let tenant = tenant_label
        .and_then(|label| namespace_labels?.get(label).cloned())
        .filter(|t| !t.is_empty());
    PodMetadata {
        attributes,
        service_name,
        tenant,
    }
}

/// Container id -> metadata, written by the watcher thread, read by the daemon.
type SharedMap = Arc<RwLock<HashMap<String, PodMetadata>>>;

/// A running Kubernetes metadata source (its thread lives as long as the process).
#[derive(Debug, Clone)]
pub struct KubeMetadata {
    map: SharedMap,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl KubeMetadata {
    /// Starts watching this node's pods on a thread of its own.
    pub fn start(settings: KubeSettings) -> Self {
        let map: SharedMap = Arc::default();
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let source = Self {
            map: Arc::clone(&map),
            synced: Arc::clone(&synced),
        };
        let spawned = std::thread::Builder::new()
            .name("kube-metadata".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!("Kubernetes metadata is off: cannot start its runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(watch_pods(settings, map, synced));
            });
        if let Err(e) = spawned {
            tracing::warn!("Kubernetes metadata is off: cannot start its thread: {e}");
        }
        source
    }

    /// The metadata of a container, if its pod has been seen.
    pub fn lookup(&self, container_id: &str) -> Option<PodMetadata> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(&container_id.to_ascii_lowercase()).cloned()
    }

    /// Whether the first list of this node's pods has arrived.
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn client_for(settings: &KubeSettings) -> Result<Client, String> {
    let config = match &settings.api_url {
        Some(url) => Config::new(
            url.parse()
                .map_err(|e| format!("API URL {url:?} is not a URL: {e}"))?,
        ),
        None => Config::infer()
            .await
            .map_err(|e| format!("no in-cluster service account and no usable kubeconfig ({e})"))?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build the API client: {e}"))
}

/// Caches of the lookups pods need.
struct Resolver {
    client: Client,
    tenant_label: Option<String>,
    /// (namespace, ReplicaSet) -> its Deployment (None: not owned by one).
    deployments: HashMap<(String, String), Option<String>>,
    namespaces: HashMap<String, (BTreeMap<String, String>, Instant)>,
    /// Says a failing lookup once, not per pod.
    warned: HashSet<&'static str>,
}

impl Resolver {
    fn warn_once(&mut self, what: &'static str, detail: String) {
        if self.warned.insert(what) {
            tracing::warn!("Kubernetes metadata: {detail}; attributes that need it are left out");
        } else {
            tracing::debug!("Kubernetes metadata: {detail}");
        }
    }

    /// The Deployment owning a ReplicaSet; `Err` when the API did not say.
    async fn deployment_of(
        &mut self,
        namespace: &str,
        replicaset: &str,
    ) -> Result<Option<String>, ()> {
        let key = (namespace.to_string(), replicaset.to_string());
        if let Some(known) = self.deployments.get(&key) {
            return Ok(known.clone());
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(replicaset).await {
            Ok(rs) => {
                let deployment = rs.and_then(|rs| {
                    controller(rs.metadata.owner_references.as_ref())
                        .filter(|o| o.kind == "Deployment")
                        .map(|o| o.name.clone())
                });
                self.deployments.insert(key, deployment.clone());
                Ok(deployment)
            }
            Err(e) => {
                self.warn_once(
                    "replicasets",
                    format!("cannot read ReplicaSet {namespace}/{replicaset} (RBAC: get replicasets.apps): {e}"),
                );
                Err(())
            }
        }
    }

    /// A namespace's labels; `Err` (with the last known ones) when the API did not say.
    async fn namespace_labels(
        &mut self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, Option<BTreeMap<String, String>>> {
        if let Some((labels, at)) = self.namespaces.get(namespace) {
            if at.elapsed() < NAMESPACE_TTL {
                return Ok(labels.clone());
            }
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.get_opt(namespace).await {
            Ok(ns) => {
                let labels = ns.and_then(|n| n.metadata.labels).unwrap_or_default();
                self.namespaces
                    .insert(namespace.to_string(), (labels.clone(), Instant::now()));
                Ok(labels)
            }
            Err(e) => {
                self.warn_once(
                    "namespaces",
                    format!("cannot read namespace {namespace} (RBAC: get namespaces): {e}"),
                );
                Err(self.namespaces.get(namespace).map(|(l, _)| l.clone()))
            }
        }
    }

    /// Every container of `pod` with its metadata, and whether every lookup
    /// succeeded (else the pod is tried again later).
    async fn resolve(&mut self, pod: &Pod) -> (Vec<(String, PodMetadata)>, bool) {
        let containers = pod_containers(pod);
        if containers.is_empty() {
            return (Vec::new(), true);
        }
        let mut complete = true;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let deployment = match controller(pod.metadata.owner_references.as_ref()) {
            Some(o) if o.kind == "ReplicaSet" => self
                .deployment_of(&namespace, &o.name)
                .await
                .unwrap_or_else(|()| {
                    complete = false;
                    None
                }),
            _ => None,
        };
        let labels = match &self.tenant_label {
            Some(_) => match self.namespace_labels(&namespace).await {
                Ok(labels) => Some(labels),
                Err(last) => {
                    complete = false;
                    last
                }
            },
            None => None,
        };
        let entries = containers
            .into_iter()
            .map(|(id, name)| {
                let meta = pod_metadata(
                    pod,
                    &name,
                    deployment.as_deref(),
                    labels.as_ref(),
                    self.tenant_label.as_deref(),
                );
                (id, meta)
            })
            .collect();
        (entries, complete)
    }
}

/// The watcher loop: keeps `map` equal to the containers of this node's pods.
async fn watch_pods(
    settings: KubeSettings,
    map: SharedMap,
    synced: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = match client_for(&settings).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("Kubernetes metadata is off: {e}");
            return;
        }
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node_name));
    let mut index = PodIndex {
        resolver: Resolver {
            client,
            tenant_label: settings.tenant_label.clone(),
            deployments: HashMap::new(),
            namespaces: HashMap::new(),
            warned: HashSet::new(),
        },
        map,
        by_pod: HashMap::new(),
        stale: HashSet::new(),
        incomplete: HashMap::new(),
    };
    let mut failing = false;
    let mut stream = watcher::watcher(pods, config).default_backoff().boxed();
    loop {
        let event = match tokio::time::timeout(RETRY, stream.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_) => {
                index.retry_incomplete().await;
                continue;
            }
        };
        match event {
            Ok(event) => {
                if failing {
                    tracing::info!("Kubernetes metadata: the API answers again");
                    failing = false;
                }
                if index.handle(event).await && !synced.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "Kubernetes metadata: {} pods on node {}",
                        index.by_pod.len(),
                        settings.node_name
                    );
                }
            }
            Err(e) if !failing => {
                tracing::warn!(
                    "Kubernetes metadata: watching pods of node {} failed ({e}); \
                     retrying with backoff, processes are exported without k8s.* meanwhile",
                    settings.node_name
                );
                failing = true;
            }
            Err(e) => tracing::debug!("Kubernetes metadata: still failing: {e}"),
        }
    }
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The map's side of the watch: which containers each pod put in the map, and
/// the pods to look at again.
struct PodIndex {
    resolver: Resolver,
    map: SharedMap,
    /// Pod uid -> its container ids in the map.
    by_pod: HashMap<String, Vec<String>>,
    /// Uids not seen again during a re-list (dropped when it is done).
    stale: HashSet<String>,
    /// Pods whose owner or namespace lookup failed, tried again every [`RETRY`].
    incomplete: HashMap<String, Pod>,
}

impl PodIndex {
    /// Applies one watch event; true when it ends a (re-)list.
    async fn handle(&mut self, event: Event<Pod>) -> bool {
        match event {
            Event::Init => self.stale = self.by_pod.keys().cloned().collect(),
            Event::InitApply(pod) | Event::Apply(pod) => {
                self.stale.remove(&uid_of(&pod));
                self.apply(pod).await;
            }
            Event::Delete(pod) => self.forget(&uid_of(&pod)),
            Event::InitDone => {
                for uid in std::mem::take(&mut self.stale) {
                    self.forget(&uid);
                }
                return true;
            }
        }
        false
    }

    /// Looks up the pods whose metadata was incomplete again.
    async fn retry_incomplete(&mut self) {
        for pod in std::mem::take(&mut self.incomplete).into_values() {
            self.apply(pod).await;
        }
    }

    /// Drops a pod's containers from the map.
    fn forget(&mut self, uid: &str) {
        self.incomplete.remove(uid);
        let mut shared = self.map.write().unwrap_or_else(|p| p.into_inner());
        for old in self.by_pod.remove(uid).unwrap_or_default() {
            shared.remove(&old);
        }
    }

    /// Puts a pod's containers in the map (replacing what it had), remembering it
    /// for a retry when a lookup failed.
    async fn apply(&mut self, pod: Pod) {
        let uid = uid_of(&pod);
        let (entries, complete) = self.resolver.resolve(&pod).await;
        // One write: a lookup never sees the pod half replaced.
        let mut shared = self.map.write().unwrap_or_else(|p| p.into_inner());
        for old in self.by_pod.remove(&uid).unwrap_or_default() {
            shared.remove(&old);
        }
        self.by_pod.insert(
            uid.clone(),
            entries.iter().map(|(id, _)| id.clone()).collect(),
        );
        shared.extend(entries);
        drop(shared);
        if complete {
            self.incomplete.remove(&uid);
        } else {
            self.incomplete.insert(uid, pod);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    #[test]
    fn container_ids_of_every_runtime_are_taken() {
        let id = "b0416f7a782e62badf28e03fc9b82305cd02e9749dc24435d8592fab66349c78";
        for scheme in ["containerd", "cri-o", "docker"] {
            assert_eq!(
                container_id_of(&format!("{scheme}://{id}")).as_deref(),
                Some(id)
            );
        }
        assert_eq!(container_id_of(""), None);
        assert_eq!(container_id_of("containerd://"), None);
    }

    #[test]
    fn service_name_prefers_annotation_then_label_then_owner() {
        let base = serde_json::json!({
            "metadata": {"name": "web-7d9f-abcde", "namespace": "shop", "uid": "u1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-7d9f", "uid": "r1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": []}
        });
        let p = pod(base.clone());
        let m = pod_metadata(&p, "app", Some("web"), None, None);
        assert_eq!(m.service_name.as_deref(), Some("web"));
        let m = pod_metadata(&p, "app", None, None, None);
        assert_eq!(
            m.service_name.as_deref(),
            Some("web-7d9f"),
            "a ReplicaSet without a Deployment names the service"
        );
        let mut labelled = base.clone();
        labelled["metadata"]["labels"] = serde_json::json!({APP_NAME_LABEL: "storefront"});
        let m = pod_metadata(&pod(labelled.clone()), "app", Some("web"), None, None);
        assert_eq!(m.service_name.as_deref(), Some("storefront"));
        labelled["metadata"]["annotations"] =
            serde_json::json!({SERVICE_NAME_ANNOTATION: "checkout"});
        let m = pod_metadata(&pod(labelled), "app", Some("web"), None, None);
        assert_eq!(m.service_name.as_deref(), Some("checkout"));
    }

    #[test]
    fn tenant_comes_only_from_the_configured_namespace_label() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "team-a", "uid": "u",
                "labels": {"tenant": "from-the-pod"}},
        }));
        let labels: BTreeMap<String, String> = [("tenant".to_string(), "acme".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            pod_metadata(&p, "c", None, Some(&labels), None).tenant,
            None
        );
        assert_eq!(
            pod_metadata(&p, "c", None, Some(&labels), Some("tenant"))
                .tenant
                .as_deref(),
            Some("acme")
        );
        assert_eq!(
            pod_metadata(&p, "c", None, None, Some("tenant")).tenant,
            None,
            "never the pod's own label"
        );
    }
}
