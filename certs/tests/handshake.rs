//! Real QUIC handshakes on loopback, and concurrent CA creation.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use tsn_certs::{peer_is_node, CertError, ClientAuth, ClusterCa, TrustRoot, SERVER_NAME};

const T: Duration = Duration::from_secs(5);

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(5)).unwrap(),
    ));
    Arc::new(t)
}

struct Server {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    /// For each accepted connection: whether the peer is a node.
    accepted: tokio::sync::mpsc::Receiver<bool>,
}

fn server(ca: &ClusterCa, auth: ClientAuth) -> Server {
    let id = ca.issue_leaf(&[]).unwrap();
    let endpoint = quinn::Endpoint::server(
        id.server_config(auth, transport()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, accepted) = tokio::sync::mpsc::channel(8);
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                // Echo one stream, so the client can prove the connection works.
                if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let _ = tx.send(peer_is_node(&conn)).await;
                    let data = recv.read_to_end(1024).await.unwrap_or_default();
                    let _ = send.write_all(&data).await;
                    let _ = send.finish();
                    let _ = conn.closed().await;
                }
            });
        }
    });
    Server {
        endpoint,
        addr,
        accepted,
    }
}

impl Server {
    /// Stops accepting and waits until every connection is gone.
    async fn shut_down(self) {
        self.endpoint.close(0u32.into(), b"");
        timeout(T, self.endpoint.wait_idle()).await.unwrap();
    }
}

/// Connects and echoes a message; Ok only if the whole exchange worked.
async fn exchange(client_cfg: quinn::ClientConfig, addr: SocketAddr) -> anyhow::Result<()> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap())?;
    ep.set_default_client_config(client_cfg);
    let result = timeout(T, async {
        let conn = ep.connect(addr, SERVER_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"ping").await?;
        send.finish()?;
        let back = recv.read_to_end(1024).await?;
        anyhow::ensure!(back == b"ping", "echo mismatch");
        conn.close(0u32.into(), b"done");
        Ok(())
    })
    .await;
    ep.close(0u32.into(), b"done");
    timeout(T, ep.wait_idle()).await?;
    result?
}

#[tokio::test]
async fn same_ca_leaf_connects_with_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::load_or_create(dir.path()).unwrap();
    let mut srv = server(&ca, ClientAuth::Required);
    let client = ca.issue_leaf(&[]).unwrap();
    exchange(client.client_config(transport()).unwrap(), srv.addr)
        .await
        .unwrap();
    assert_eq!(timeout(T, srv.accepted.recv()).await.unwrap(), Some(true));
    srv.shut_down().await;
}

#[tokio::test]
async fn leaf_from_another_ca_is_refused() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = ClusterCa::load_or_create(d1.path()).unwrap();
    let other = ClusterCa::load_or_create(d2.path()).unwrap();
    let mut srv = server(&ca, ClientAuth::Required);
    // A node of another cluster: its leaf comes from its own CA, and it trusts only that
    // CA. Neither side accepts the other. (The unit test in src/tls.rs covers an intruder
    // that trusts our CA, where only the server's check stands in the way.)
    let intruder = other.issue_leaf(&[]).unwrap();
    assert!(
        exchange(intruder.client_config(transport()).unwrap(), srv.addr)
            .await
            .is_err()
    );
    assert!(
        timeout(Duration::from_millis(500), srv.accepted.recv())
            .await
            .is_err(),
        "no stream was served"
    );
    srv.shut_down().await;
}

#[tokio::test]
async fn anonymous_client_refused_when_required_accepted_when_optional() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::load_or_create(dir.path()).unwrap();
    let root = TrustRoot::load(dir.path()).unwrap();

    let mut strict = server(&ca, ClientAuth::Required);
    assert!(
        exchange(root.client_config(transport()).unwrap(), strict.addr)
            .await
            .is_err()
    );
    assert!(timeout(Duration::from_millis(500), strict.accepted.recv())
        .await
        .is_err());
    strict.shut_down().await;

    let mut open = server(&ca, ClientAuth::Optional);
    exchange(root.client_config(transport()).unwrap(), open.addr)
        .await
        .unwrap();
    assert_eq!(
        timeout(T, open.accepted.recv()).await.unwrap(),
        Some(false),
        "anonymous peer is not a node"
    );
    open.shut_down().await;
}

#[tokio::test]
async fn client_trusting_another_ca_refuses_our_server() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = ClusterCa::load_or_create(d1.path()).unwrap();
    let other = ClusterCa::load_or_create(d2.path()).unwrap();
    let srv = server(&ca, ClientAuth::Optional);
    let wrong_root = TrustRoot::from_ca(&other);
    assert!(
        exchange(wrong_root.client_config(transport()).unwrap(), srv.addr)
            .await
            .is_err()
    );
    srv.shut_down().await;
}

#[test]
fn concurrent_starters_create_exactly_one_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs");
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                ClusterCa::load_or_create(&path)
                    .unwrap()
                    .cert_der()
                    .to_vec()
            })
        })
        .collect();
    let certs: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        certs.windows(2).all(|w| w[0] == w[1]),
        "all starters load the same CA"
    );
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.pem"], "no temporary files left");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.join("ca.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");
    }
    // Leaves from the loaded CA still verify against it after a reload.
    let reloaded = ClusterCa::load(&path).unwrap();
    assert_eq!(reloaded.cert_der().to_vec(), certs[0]);
}

#[test]
fn missing_ca_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = TrustRoot::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no cluster CA"), "{err}");
    ClusterCa::load_or_create(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
    TrustRoot::load(dir.path()).expect("ca.crt alone suffices for a client");
}

#[test]
fn public_cert_alone_does_not_start_a_second_ca() {
    let dir = tempfile::tempdir().unwrap();
    ClusterCa::load_or_create(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
    // A client-only host where someone starts a node: refusing beats splitting the cluster.
    let err = ClusterCa::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, CertError::NoCaKey(_)), "{err}");
    assert!(!dir.path().join("ca.pem").exists());
    TrustRoot::load(dir.path()).expect("clients still work from ca.crt");
}

#[test]
fn ca_file_with_a_foreign_key_is_refused() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ClusterCa::load_or_create(d1.path()).unwrap();
    ClusterCa::load_or_create(d2.path()).unwrap();
    let a = std::fs::read_to_string(d1.path().join("ca.pem")).unwrap();
    let b = std::fs::read_to_string(d2.path().join("ca.pem")).unwrap();
    let cert_a = &a[..a.find("-----BEGIN PRIVATE KEY-----").unwrap()];
    let key_b = &b[b.find("-----BEGIN PRIVATE KEY-----").unwrap()..];
    std::fs::write(d1.path().join("ca.pem"), format!("{cert_a}{key_b}")).unwrap();
    let err = ClusterCa::load(d1.path()).unwrap_err();
    assert!(matches!(err, CertError::BadFile { .. }), "{err}");
}
