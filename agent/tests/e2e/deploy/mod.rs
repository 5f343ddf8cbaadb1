//! The Kubernetes manifests (and the pod spec run in runc), the Helm chart, the dashboards and alert rules.

mod dashboards;
mod deploy_manifests;
mod runc_pod;
