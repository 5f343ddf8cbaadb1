//! A stand-in Kubernetes API server for tests: answers on 127.0.0.1 with the
//! RECORDED REAL API responses in `tests/fixtures/kube/` (see the README there).
//! No cluster can run on the test machines; this serves the list of one node's
//! pods, a watch stream whose events the test pushes, a ReplicaSet owned by a
//! Deployment, a missing ReplicaSet (404 Status) and a namespace.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The node the recorded pods run on.
pub const NODE: &str = "gke-dwertent-syft-default-pool-d4e9ae18-b0tw";
/// The container id of the recorded nginx pod (containerd).
pub const NGINX_ID: &str = "b0416f7a782e62badf28e03fc9b82305cd02e9749dc24435d8592fab66349c78";
/// The container id of the recorded queue pod (docker).
pub const QUEUE_ID: &str = "d8e1e33309272b4a4267e15f995ff7b6612532240cb61dc03a118659620226f2";

pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Watch events waiting to be streamed, and whether the test is over.
#[derive(Default)]
pub struct Events {
    queue: Mutex<(VecDeque<String>, bool)>,
    ready: Condvar,
}

impl Events {
    pub fn push(&self, line: String) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.0.push_back(line);
        self.ready.notify_all();
    }

    fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.ready.notify_all();
    }

    /// The next event; `None` once closed.
    fn next(&self) -> Option<String> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(line) = q.0.pop_front() {
                return Some(line);
            }
            if q.1 {
                return None;
            }
            q = self
                .ready
                .wait_timeout(q, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A stand-in API server on 127.0.0.1 serving the recorded responses.
pub struct ApiServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub events: Arc<Events>,
    /// The nginx pod's container id as served (a test may give it its own container's).
    nginx_id: String,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.events.close();
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<String>>>,
    events: Arc<Events>,
    nginx_id: &str,
) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers (the client sends no body on GET).
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let on_node = query.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}"));
    match path {
        "/api/v1/pods" if on_node && query.contains("watch=true") => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            // One event per line, as the API server streams them.
            while let Some(event) = events.next() {
                let line = format!("{}\n", event.trim_end());
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if stream
                    .write_all(chunk.as_bytes())
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    return;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
        "/api/v1/pods" if on_node => respond(
            &mut stream,
            "200 OK",
            &fixture("pods-on-node.json").replace(NGINX_ID, nginx_id),
        ),
        "/apis/apps/v1/namespaces/default/replicasets/nginx-77b4fdf86c" => respond(
            &mut stream,
            "200 OK",
            &fixture("replicaset-nginx-77b4fdf86c.json"),
        ),
        "/apis/apps/v1/namespaces/default/replicasets/queue" => respond(
            &mut stream,
            "404 Not Found",
            &fixture("status-replicaset-queue-not-found.json"),
        ),
        "/api/v1/namespaces/default" => {
            respond(&mut stream, "200 OK", &fixture("namespace-default.json"))
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#,
        ),
    }
}

/// Serves the fixtures; `nginx_id`: the container id the nginx pod's status names.
pub fn serve(nginx_id: &str) -> ApiServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(Events::default());
    let (r, e) = (Arc::clone(&requests), Arc::clone(&events));
    let id = nginx_id.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (r, e, id) = (Arc::clone(&r), Arc::clone(&e), id.clone());
            std::thread::spawn(move || handle(stream, r, e, &id));
        }
    });
    ApiServer {
        url,
        requests,
        events,
        nginx_id: nginx_id.to_string(),
    }
}

impl ApiServer {
    /// A kubeconfig file naming this server (for `gilscope run --kubernetes`).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: recorded\n  cluster:\n    server: {}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: recorded\n  context:\n    cluster: recorded\n    user: test\n\
             current-context: recorded\n",
            self.url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}
