//! `gilscope run`, the node daemon, against real receivers and stores.

mod churn;
mod collector_faults;
mod discovery;
mod endpoints;
mod event_loop;
mod export;
mod hostile;
mod kube_metadata;
mod outage;
mod restarts;
mod spans;
mod tls;
