//! Replays every saved fuzz input (protocol/fuzz/corpus/<target>/*) through the same
//! checks the fuzz targets run, so CI exercises the corpus without a fuzzer.
//!
//! `cargo test -p tsn-tests --test fuzz_corpus -- --ignored write_seed_corpus` rewrites
//! the hand-made seeds (valid encodings of every message kind and record kind).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use tsn_protocol::client::*;
use tsn_protocol::coord::*;
use tsn_protocol::mirror::*;
use tsn_protocol::sync::*;
use tsn_protocol::{encode, Change, Post, PostId, Record};

#[path = "../../protocol/fuzz/replay.rs"]
mod replay;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../protocol/fuzz/corpus")
}

#[test]
fn every_saved_fuzz_input_passes_its_target() {
    let mut total = 0;
    for target in replay::TARGETS {
        let dir = corpus().join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let ok = std::panic::catch_unwind(|| replay::replay(target, &data));
            assert!(ok.is_ok(), "{target}: {} fails", path.display());
            n += 1;
        }
        assert!(n > 0, "{target} has no corpus");
        total += n;
    }
    println!("replayed {total} inputs");
}

fn post(n: u64, text: &str) -> Post {
    Post {
        id: PostId {
            author: 7,
            nonce: n,
        },
        ts_us: 1_700_000_000_000_000 + n as i64,
        text: text.into(),
    }
}

#[test]
#[ignore = "writes the seed corpus into the source tree"]
fn write_seed_corpus() {
    let changes = vec![
        Change::User { user: 1 },
        Change::Follow {
            follower: 1,
            followee: 2,
            ts_us: 5,
            active: true,
        },
        Change::Post(post(1, "hello world")),
    ];
    let mut seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "client_request",
            [
                ClientRequest::Challenge,
                ClientRequest::Login {
                    user: 1,
                    proof: Some(LoginProof {
                        key: vec![7; 32],
                        signature: vec![9; 64],
                    }),
                },
                ClientRequest::Follow { user: 1, target: 2 },
                ClientRequest::Unfollow { user: 1, target: 2 },
                ClientRequest::List { user: 1 },
                ClientRequest::Timeline {
                    user: 1,
                    since: None,
                },
                ClientRequest::Timeline {
                    user: 1,
                    since: Some(TimelinePos {
                        log: 5,
                        seq: 40,
                        ts_us: 1_700_000_000_000_000,
                    }),
                },
            ]
            .iter()
            .map(|m| encode(m).unwrap())
            .collect(),
        ),
        (
            "client_reply",
            [
                ClientReply::Ok,
                ClientReply::List {
                    all_users: vec![1, 2, 3],
                    followers: vec![2],
                },
                ClientReply::Failed(CommandError::NoSuchUser),
                ClientReply::Failed(CommandError::PostTooLong { len: 300, max: 256 }),
            ]
            .iter()
            .map(|m| encode(m).unwrap())
            .collect(),
        ),
        (
            "timeline_up",
            vec![encode(&TimelineUp::Post {
                nonce: 9,
                text: "hi".into(),
            })
            .unwrap()],
        ),
        (
            "timeline_down",
            [
                TimelineDown::Entry {
                    post: post(2, "x"),
                    seq: 7,
                },
                TimelineDown::Position(TimelinePos {
                    log: 5,
                    seq: 7,
                    ts_us: 1_700_000_000_000_000,
                }),
                TimelineDown::Reopen,
                TimelineDown::Ack { nonce: 3 },
                TimelineDown::Refused {
                    nonce: 3,
                    reason: CommandError::Storage("disk full".into()),
                },
                TimelineDown::NotActive,
            ]
            .iter()
            .map(|m| encode(m).unwrap())
            .collect(),
        ),
        (
            "coord_request",
            [
                CoordRequest::Heartbeat(Heartbeat {
                    cluster: 1,
                    kind: NodeKind::Primary,
                    addr: "127.0.0.1:5000".into(),
                    active: true,
                    epoch: 2,
                    clock_offset_ms: -3,
                    web_hashes: Vec::new(),
                }),
                CoordRequest::AssignClient { client: 4 },
                CoordRequest::SyncPeers,
                CoordRequest::Status,
            ]
            .iter()
            .map(|m| encode(m).unwrap())
            .collect(),
        ),
        (
            "coord_reply",
            [
                CoordReply::Beat(BeatReply {
                    epoch: 1,
                    active: true,
                    peer: Some("127.0.0.1:1".into()),
                    clusters: 3,
                    heartbeat_ms: 200,
                    received_us: 1_763_999_999_990_000,
                    now_us: 1_764_000_000_000_000,
                }),
                CoordReply::Assigned {
                    cluster: 2,
                    addr: "127.0.0.1:2".into(),
                },
                CoordReply::SyncPeers {
                    clusters: 3,
                    peers: vec![SyncPeer {
                        cluster: 1,
                        addr: "127.0.0.1:3".into(),
                    }],
                },
                CoordReply::Status(RoutingTables {
                    revision: 7,
                    liveness: true,
                    clusters: 3,
                    heartbeat_ms: 100,
                    entries: vec![RouteEntry {
                        cluster: 1,
                        kind: NodeKind::Sync,
                        addr: "a:1".into(),
                        alive: true,
                        active: false,
                        ms_since_beat: 5,
                        epoch: 1,
                        clock_offset_ms: 12,
                    }],
                }),
                CoordReply::Failed(CoordError::NoLiveServer { cluster: 2 }),
            ]
            .iter()
            .map(|m| encode(m).unwrap())
            .collect(),
        ),
        (
            "mirror_msg",
            vec![
                encode(&MirrorMsg::Hello {
                    cluster: 1,
                    epoch: 2,
                    journal: 5,
                    have: Cursor {
                        log_id: 6,
                        offset: 70,
                    },
                })
                .unwrap(),
                encode(&MirrorMsg::Changes {
                    seq: 1,
                    changes: changes.clone(),
                    upto: 300,
                })
                .unwrap(),
            ],
        ),
        (
            "mirror_reply",
            vec![
                encode(&MirrorReply::Changes(changes.clone())).unwrap(),
                encode(&MirrorReply::EndOfState {
                    journal: Cursor {
                        log_id: 3,
                        offset: 900,
                    },
                    have: Cursor {
                        log_id: 4,
                        offset: 120,
                    },
                })
                .unwrap(),
                encode(&MirrorReply::Ack { seq: 4, end: 77 }).unwrap(),
                encode(&MirrorReply::Refused("no".into())).unwrap(),
            ],
        ),
        (
            "sync_request",
            vec![encode(&SyncRequest::Subscribe(Subscribe {
                cluster: 1,
                reader: 2,
                node: tsn_protocol::coord::NodeKind::Sync,
                log: FeedLog::SyncOutbox,
                from: Cursor {
                    log_id: 7,
                    offset: 42,
                },
            }))
            .unwrap()],
        ),
        (
            "sync_reply",
            vec![
                encode(&SyncReply::Records {
                    log_id: 7,
                    next: 99,
                    len: 120,
                    records: changes.iter().cloned().map(Record::Change).collect(),
                })
                .unwrap(),
                encode(&SyncReply::Refused("x".into())).unwrap(),
            ],
        ),
        (
            "record",
            [
                "user 1",
                "follow 1 2 1700000000000000",
                "unfollow 1 2 1700000000000001",
                "post 7 1 1700000000000000 hello \\\\ world\\n",
                "deliver 3 12 7 1 1700000000000000 tab\there",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        ),
    ];
    let mut framed = Vec::new();
    for m in &seeds[0].1 {
        framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
        framed.extend_from_slice(m);
    }
    seeds.push((
        "frame",
        vec![framed, vec![0, 0, 0, 0], vec![0xff, 0xff, 0xff, 0xff]],
    ));
    for (target, inputs) in seeds {
        let dir = corpus().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, data) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), data).unwrap();
        }
    }
}
