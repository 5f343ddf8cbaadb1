//! Who a watched process is to the outside world: its OpenTelemetry resource
//! (service, tenant, host, container, pod), made once when it joins and
//! completed once its pod is known.

use crate::otel::kube::KubeMetadata;
use crate::otel::resource::{self, Host, ProcessFacts, TenantRule};
use crate::watch::discover::Identity;
use crate::watch::session::Session;

/// What the daemon keeps with every watched process.
pub struct Watched {
    pub resource: Vec<(String, String)>,
    pub facts: ProcessFacts,
    /// In a container whose pod was not known yet: look again each interval.
    pub pod_pending: bool,
}

/// Where a resource's parts come from.
pub struct ResourceSources<'a> {
    pub host: &'a Host,
    pub tenant: Option<&'a TenantRule>,
    pub kube: Option<&'a KubeMetadata>,
}

impl ResourceSources<'_> {
    /// The resource of a process, and whether it waits for its pod's metadata
    /// (in a container, Kubernetes on, pod not seen yet).
    fn resource_of(&self, facts: &ProcessFacts) -> (Vec<(String, String)>, bool) {
        let container = resource::container_id_from_cgroup(&facts.cgroup);
        let pod = match (self.kube, &container) {
            (Some(kube), Some(id)) => kube.lookup(id),
            _ => None,
        };
        let pending = self.kube.is_some() && container.is_some() && pod.is_none();
        let resource = resource::process_resource(facts, self.host, self.tenant, pod.as_ref());
        (resource, pending)
    }

    /// What the daemon keeps for a process that just joined.
    pub fn joined(&self, session: &Session, identity: &Identity) -> Watched {
        let pid = session.pid();
        let version = session.interp.file.version.to_string();
        let facts = super::lookup::process_facts(pid, identity.start_ticks, version.clone());
        let (resource, pod_pending) = self.resource_of(&facts);
        // The executable, not the command line: arguments may hold secrets
        // (SECURITY.md), so they are logged at debug level only.
        tracing::info!(
            "watching process {pid} (CPython {version}, {}) as {}",
            session.interp.executable.display(),
            resource::identifying(&resource)
        );
        tracing::debug!("process {pid} runs {}", session.command);
        Watched {
            resource,
            facts,
            pod_pending,
        }
    }

    /// Gives a process whose pod was not known at attach time its pod metadata.
    pub fn complete(&self, pid: u32, w: &mut Watched) {
        if !w.pod_pending {
            return;
        }
        let (resource, still) = self.resource_of(&w.facts);
        if !still {
            tracing::info!("process {pid} is {}", resource::identifying(&resource));
            w.resource = resource;
        }
        w.pod_pending = still;
    }
}
