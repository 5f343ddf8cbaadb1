//! The Kubernetes manifests, the Helm chart, the dashboards and alert rules.

mod dashboards;
mod deploy_manifests;
