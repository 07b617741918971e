//! Property tests: every message survives encode -> decode, and arbitrary bytes never
//! make a decoder panic.

use proptest::prelude::*;
use tsn_protocol::client::*;
use tsn_protocol::coord::*;
use tsn_protocol::mirror::*;
use tsn_protocol::sync::*;
use tsn_protocol::*;

fn post() -> impl Strategy<Value = Post> {
    (any::<u32>(), any::<u64>(), any::<i64>(), ".{0,64}").prop_map(
        |(author, nonce, ts_us, text)| Post {
            id: PostId { author, nonce },
            ts_us,
            text,
        },
    )
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        any::<u32>().prop_map(|user| Change::User { user }),
        (any::<u32>(), any::<u32>(), any::<i64>(), any::<bool>()).prop_map(
            |(follower, followee, ts_us, active)| Change::Follow {
                follower,
                followee,
                ts_us,
                active
            }
        ),
        post().prop_map(Change::Post),
    ]
}

fn command_error() -> impl Strategy<Value = CommandError> {
    prop_oneof![
        Just(CommandError::AlreadyExists),
        Just(CommandError::NoSuchUser),
        Just(CommandError::InvalidUser),
        Just(CommandError::InvalidCommand),
        Just(CommandError::NotActive),
        (any::<usize>(), any::<usize>())
            .prop_map(|(len, max)| CommandError::PostTooLong { len, max }),
        ".{0,32}".prop_map(CommandError::Storage),
        any::<u32>().prop_map(|code| CommandError::ControlChar { code }),
    ]
}

fn node_kind() -> impl Strategy<Value = NodeKind> {
    prop_oneof![
        Just(NodeKind::Primary),
        Just(NodeKind::Secondary),
        Just(NodeKind::Sync)
    ]
}

fn client_request() -> impl Strategy<Value = ClientRequest> {
    prop_oneof![
        Just(ClientRequest::Challenge),
        (
            any::<u32>(),
            proptest::option::of((
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 0..70)
            ))
        )
            .prop_map(|(user, proof)| ClientRequest::Login {
                user,
                proof: proof.map(|(key, signature)| LoginProof { key, signature }),
            }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(user, target)| ClientRequest::Follow { user, target }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(user, target)| ClientRequest::Unfollow { user, target }),
        any::<u32>().prop_map(|user| ClientRequest::List { user }),
        (any::<u32>(), proptest::option::of(timeline_pos()))
            .prop_map(|(user, since)| ClientRequest::Timeline { user, since }),
    ]
}

fn timeline_pos() -> impl Strategy<Value = TimelinePos> {
    (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(log, seq, ts_us)| TimelinePos {
        log,
        seq,
        ts_us,
    })
}

fn client_reply() -> impl Strategy<Value = ClientReply> {
    prop_oneof![
        Just(ClientReply::Ok),
        (
            proptest::collection::vec(any::<u32>(), 0..20),
            proptest::collection::vec(any::<u32>(), 0..20)
        )
            .prop_map(|(all_users, followers)| ClientReply::List {
                all_users,
                followers
            }),
        command_error().prop_map(ClientReply::Failed),
    ]
}

fn timeline_up() -> impl Strategy<Value = TimelineUp> {
    (any::<u64>(), ".{0,64}").prop_map(|(nonce, text)| TimelineUp::Post { nonce, text })
}

fn timeline_down() -> impl Strategy<Value = TimelineDown> {
    prop_oneof![
        (post(), any::<u64>()).prop_map(|(post, seq)| TimelineDown::Entry { post, seq }),
        timeline_pos().prop_map(TimelineDown::Position),
        Just(TimelineDown::Reopen),
        any::<u64>().prop_map(|nonce| TimelineDown::Ack { nonce }),
        (any::<u64>(), command_error())
            .prop_map(|(nonce, reason)| TimelineDown::Refused { nonce, reason }),
        Just(TimelineDown::NotActive),
    ]
}

fn coord_request() -> impl Strategy<Value = CoordRequest> {
    prop_oneof![
        (
            any::<u32>(),
            node_kind(),
            ".{0,24}",
            any::<bool>(),
            any::<u64>(),
            any::<i64>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..3)
        )
            .prop_map(
                |(cluster, kind, addr, active, epoch, clock_offset_ms, web_hashes)| {
                    CoordRequest::Heartbeat(Heartbeat {
                        cluster,
                        kind,
                        addr,
                        active,
                        epoch,
                        clock_offset_ms,
                        web_hashes,
                    })
                }
            ),
        any::<u32>().prop_map(|client| CoordRequest::AssignClient { client }),
        Just(CoordRequest::SyncPeers),
        Just(CoordRequest::Status),
        Just(CoordRequest::Watch),
        Just(CoordRequest::Group),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| CoordRequest::Raft(RaftRpc::Append(b))),
        (any::<u64>(), ".{0,24}").prop_map(|(id, addr)| CoordRequest::ChangeMembers(
            MemberChange::Add(Member { id, addr })
        )),
        any::<u64>().prop_map(|id| CoordRequest::ChangeMembers(MemberChange::Remove { id })),
    ]
}

fn coord_reply() -> impl Strategy<Value = CoordReply> {
    let entry = (
        any::<u32>(),
        node_kind(),
        ".{0,24}",
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
    )
        .prop_map(
            |(cluster, kind, addr, alive, active, ms_since_beat, epoch, clock_offset_ms)| {
                RouteEntry {
                    cluster,
                    kind,
                    addr,
                    alive,
                    active,
                    ms_since_beat,
                    epoch,
                    clock_offset_ms,
                }
            },
        );
    prop_oneof![
        (
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(".{0,24}"),
            any::<u32>(),
            any::<u64>(),
            any::<i64>()
        )
            .prop_map(|(epoch, active, peer, clusters, heartbeat_ms, now_us)| {
                let received_us = now_us.wrapping_sub(1);
                CoordReply::Beat(BeatReply {
                    epoch,
                    active,
                    peer,
                    clusters,
                    heartbeat_ms,
                    received_us,
                    now_us,
                })
            }),
        (any::<u32>(), ".{0,24}")
            .prop_map(|(cluster, addr)| CoordReply::Assigned { cluster, addr }),
        (
            any::<u32>(),
            proptest::collection::vec(
                (any::<u32>(), ".{0,24}").prop_map(|(cluster, addr)| SyncPeer { cluster, addr }),
                0..5
            )
        )
            .prop_map(|(clusters, peers)| CoordReply::SyncPeers { clusters, peers }),
        (
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(entry, 0..6)
        )
            .prop_map(|(clusters, heartbeat_ms, entries)| CoordReply::Status(
                RoutingTables {
                    revision: heartbeat_ms / 2,
                    liveness: clusters % 2 == 0,
                    clusters,
                    heartbeat_ms,
                    entries
                }
            )),
        prop_oneof![
            any::<u32>().prop_map(|cluster| CoordError::NoLiveServer { cluster }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(cluster, clusters)| CoordError::NoSuchCluster { cluster, clusters }),
            Just(CoordError::NotANode),
            ".{0,24}".prop_map(CoordError::BadAddress),
            Just(CoordError::NoLeader),
            ".{0,24}".prop_map(CoordError::Group),
        ]
        .prop_map(CoordReply::Failed),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(CoordReply::Raft),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            ".{0,24}"
        )
            .prop_map(|(id, term, last, addr)| CoordReply::Group(GroupView {
                id,
                state: MemberState::Follower,
                term,
                last_log_index: last,
                applied_index: last,
                leader: Some(id),
                members: vec![Member { id, addr }],
            })),
    ]
}

fn cursor() -> impl Strategy<Value = Cursor> {
    (any::<u64>(), any::<u64>()).prop_map(|(log_id, offset)| Cursor { log_id, offset })
}

fn mirror_msg() -> impl Strategy<Value = MirrorMsg> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), any::<u64>(), cursor()).prop_map(
            |(cluster, epoch, journal, have)| MirrorMsg::Hello {
                cluster,
                epoch,
                journal,
                have
            }
        ),
        subscribe().prop_map(MirrorMsg::Subscribe),
        (
            any::<u64>(),
            proptest::collection::vec(change(), 0..8),
            any::<u64>()
        )
            .prop_map(|(seq, changes, upto)| MirrorMsg::Changes { seq, changes, upto }),
    ]
}

fn mirror_reply() -> impl Strategy<Value = MirrorReply> {
    prop_oneof![
        proptest::collection::vec(change(), 0..8).prop_map(MirrorReply::Changes),
        (cursor(), cursor()).prop_map(|(journal, have)| MirrorReply::EndOfState { journal, have }),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, end)| MirrorReply::Ack { seq, end }),
        ".{0,24}".prop_map(MirrorReply::Refused),
    ]
}

fn subscribe() -> impl Strategy<Value = Subscribe> {
    (
        any::<u32>(),
        any::<u32>(),
        prop_oneof![
            Just(FeedLog::ServerJournal),
            Just(FeedLog::SyncOutbox),
            Just(FeedLog::SyncJournal)
        ],
        any::<u64>(),
        any::<u64>(),
        node_kind(),
    )
        .prop_map(|(cluster, reader, log, log_id, offset, node)| Subscribe {
            cluster,
            reader,
            node,
            log,
            from: Cursor { log_id, offset },
        })
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        change().prop_map(Record::Change),
        (any::<u32>(), any::<u64>(), post()).prop_map(|(to, seq, post)| Record::Deliver {
            to,
            seq,
            post
        }),
    ]
}

fn sync_request() -> impl Strategy<Value = SyncRequest> {
    subscribe().prop_map(SyncRequest::Subscribe)
}

fn sync_reply() -> impl Strategy<Value = SyncReply> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(record(), 0..8)
        )
            .prop_map(|(log_id, next, len, records)| SyncReply::Records {
                log_id,
                next,
                len,
                records
            }),
        ".{0,24}".prop_map(SyncReply::Refused),
    ]
}

macro_rules! round_trip {
    ($name:ident, $strategy:expr, $ty:ty) => {
        proptest! {
            #[test]
            fn $name(msg in $strategy) {
                let bytes = encode(&msg).unwrap();
                prop_assert!(bytes.len() <= MAX_FRAME_LEN);
                let back: $ty = decode(&bytes).unwrap();
                prop_assert_eq!(back, msg);
            }
        }
    };
}

round_trip!(client_request_round_trips, client_request(), ClientRequest);
round_trip!(client_reply_round_trips, client_reply(), ClientReply);
round_trip!(timeline_up_round_trips, timeline_up(), TimelineUp);
round_trip!(timeline_down_round_trips, timeline_down(), TimelineDown);
round_trip!(coord_request_round_trips, coord_request(), CoordRequest);
round_trip!(coord_reply_round_trips, coord_reply(), CoordReply);
round_trip!(mirror_msg_round_trips, mirror_msg(), MirrorMsg);
round_trip!(mirror_reply_round_trips, mirror_reply(), MirrorReply);
round_trip!(sync_request_round_trips, sync_request(), SyncRequest);
round_trip!(sync_reply_round_trips, sync_reply(), SyncReply);

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<ClientRequest>(&bytes);
        let _ = decode::<ClientReply>(&bytes);
        let _ = decode::<TimelineUp>(&bytes);
        let _ = decode::<TimelineDown>(&bytes);
        let _ = decode::<CoordRequest>(&bytes);
        let _ = decode::<CoordReply>(&bytes);
        let _ = decode::<MirrorMsg>(&bytes);
        let _ = decode::<MirrorReply>(&bytes);
        let _ = decode::<SyncRequest>(&bytes);
        let _ = decode::<SyncReply>(&bytes);
    }

    #[test]
    fn full_batch_fits_one_frame(n in 0usize..=MAX_BATCH_CHANGES) {
        let post = Post {
            id: PostId { author: u32::MAX, nonce: u64::MAX },
            ts_us: i64::MIN,
            text: "x".repeat(MAX_POST_BYTES),
        };
        let changes = vec![Change::Post(post.clone()); n];
        let msg = MirrorMsg::Changes {
            seq: u64::MAX,
            changes,
            upto: u64::MAX,
        };
        prop_assert!(encode(&msg).unwrap().len() <= MAX_FRAME_LEN);
        let records = vec![Record::Deliver { to: u32::MAX, seq: u64::MAX, post }; n];
        let msg = SyncReply::Records { log_id: u64::MAX, next: u64::MAX, len: u64::MAX, records };
        prop_assert!(encode(&msg).unwrap().len() <= MAX_FRAME_LEN);
    }
}
